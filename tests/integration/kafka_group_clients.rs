//! Real Kafka clients in consumer groups against a real `cairn serve` (scripts in
//! tests/kafka/): confluent-kafka consumers share a topic's partitions and take over a
//! leaver's; kafka-python, kafkajs and kcat -G group consumers commit and the group's next
//! consumer resumes there. Records are written with the native client at moments the test chooses:
//! only once every consumer reports a settled assignment, so that "each record read
//! exactly once" is a fact about the group protocol, not about timing.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use cairn_client::{BlockingClient, ClientConfig};
use cairn_engine::RecordInput;
use serde_json::{Value, json};

use crate::support::client_process::{ClientProcess, json_lines, node, python, run_to_end};
use crate::support::server::TestServer;

/// Longest the group may take to settle after a change, or the consumers to read what was
/// written: generous for a loaded 2-core machine.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(20);

/// How long to listen to one consumer before looking at the next.
const LISTEN_SLICE: Duration = Duration::from_millis(20);

fn native(server: &TestServer) -> BlockingClient {
    BlockingClient::connect(ClientConfig::new(server.address)).expect("native client connects")
}

/// A consumer process and what it has reported.
struct GroupConsumer {
    process: ClientProcess,
    assigned: BTreeSet<u32>,
    /// (partition, offset, key) of every record it read.
    records: Vec<(u32, u64, String)>,
    closed: bool,
    /// "committed" events seen.
    commit_count: usize,
}

impl GroupConsumer {
    /// `start`: "end" or "committed" (the script's START); `settings`: librdkafka's.
    fn spawn_from(
        server: &TestServer,
        group: &str,
        topic: &str,
        start: &str,
        settings: &[&str],
    ) -> GroupConsumer {
        let bootstrap = server.kafka_bootstrap();
        let mut args = vec![bootstrap.as_str(), group, topic, start];
        args.extend_from_slice(settings);
        let process = ClientProcess::spawn(python("confluent_group.py", &args));
        GroupConsumer {
            process,
            assigned: BTreeSet::new(),
            records: Vec::new(),
            closed: false,
            commit_count: 0,
        }
    }

    /// Takes in one reported line, if one comes within `LISTEN_SLICE`.
    fn listen(&mut self) {
        let Some(line) = self.process.try_next_within(LISTEN_SLICE) else {
            return;
        };
        let partitions = |line: &Value| -> BTreeSet<u32> {
            line["partitions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| u32::try_from(p.as_u64().unwrap()).unwrap())
                .collect()
        };
        match line["event"].as_str() {
            Some("assigned") => self.assigned = partitions(&line),
            Some("record") => self.records.push((
                u32::try_from(line["partition"].as_u64().unwrap()).unwrap(),
                line["offset"].as_u64().unwrap(),
                line["key"].as_str().unwrap().to_owned(),
            )),
            Some("closed") => self.closed = true,
            Some("committed") => self.commit_count += 1,
            // Transient errors (a broker connection closing) are the client's to retry.
            Some("error") => eprintln!("consumer error: {line}"),
            _ => panic!("unexpected line {line}"),
        }
    }
}

/// Listens to every consumer until `done` holds, within `SETTLE_TIMEOUT`.
fn listen_until(
    consumers: &mut [GroupConsumer],
    what: &str,
    done: impl Fn(&[GroupConsumer]) -> bool,
) {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while !done(consumers) {
        assert!(
            Instant::now() < deadline,
            "{what} within {SETTLE_TIMEOUT:?}: assignments {:?}",
            consumers
                .iter()
                .map(|consumer| &consumer.assigned)
                .collect::<Vec<_>>()
        );
        for consumer in consumers.iter_mut().filter(|consumer| !consumer.closed) {
            consumer.listen();
        }
    }
}

/// Whether the open consumers' assignments are non-empty, disjoint, and cover
/// `0..partition_count`.
fn settled(consumers: &[GroupConsumer], partition_count: u32) -> bool {
    let open: Vec<&GroupConsumer> = consumers
        .iter()
        .filter(|consumer| !consumer.closed)
        .collect();
    let total: usize = open.iter().map(|consumer| consumer.assigned.len()).sum();
    let union: BTreeSet<u32> = open
        .iter()
        .flat_map(|consumer| consumer.assigned.iter().copied())
        .collect();
    open.iter().all(|consumer| !consumer.assigned.is_empty())
        && total == union.len()
        && union == (0..partition_count).collect()
}

/// Writes `count` records with keys `{prefix}-{i}`, record i to partition i % partitions.
fn write(
    server: &TestServer,
    topic: &str,
    partition_count: u32,
    prefix: &str,
    count: u32,
) -> Vec<String> {
    let mut client = native(server);
    (0..count)
        .map(|index| {
            let key = format!("{prefix}-{index}");
            let record = RecordInput {
                key: key.as_bytes(),
                value: b"v",
                ..RecordInput::default()
            };
            client
                .append(topic, Some(index % partition_count), None, &[record])
                .expect("native append");
            key
        })
        .collect()
}

/// Every key read by any consumer, with how often.
fn read_counts(consumers: &[GroupConsumer]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for consumer in consumers {
        for (_, _, key) in &consumer.records {
            *counts.entry(key.clone()).or_default() += 1;
        }
    }
    counts
}

#[test]
fn confluent_kafka_three_consumers_share_partitions_and_take_over_a_leavers() {
    three_consumers_share_and_take_over(&["partition.assignment.strategy=range"]);
}

/// The same with incremental cooperative rebalancing (KIP-429), which runs on the classic
/// protocol: the broker sees only more rebalances, with opaque metadata.
#[test]
fn confluent_kafka_cooperative_sticky_consumers_share_partitions_and_take_over_a_leavers() {
    three_consumers_share_and_take_over(&["partition.assignment.strategy=cooperative-sticky"]);
}

fn three_consumers_share_and_take_over(settings: &[&str]) {
    const PARTITIONS: u32 = 8;
    const PER_PHASE: u32 = 64;
    let server = TestServer::start();
    native(&server)
        .create_topic("shared", PARTITIONS)
        .expect("topic created");
    let mut consumers: Vec<GroupConsumer> = (0..3)
        .map(|_| GroupConsumer::spawn_from(&server, "sharers", "shared", "end", settings))
        .collect();
    listen_until(&mut consumers, "three consumers settle", |consumers| {
        settled(consumers, PARTITIONS)
    });

    // Phase 1: every record is read once, by the consumer its partition is assigned to.
    let first = write(&server, "shared", PARTITIONS, "first", PER_PHASE);
    listen_until(&mut consumers, "phase 1 read", |consumers| {
        read_counts(consumers).len() == first.len()
    });
    let counts = read_counts(&consumers);
    assert!(counts.values().all(|&count| count == 1), "{counts:?}");
    for consumer in &consumers {
        assert!(
            !consumer.records.is_empty(),
            "each of the three reads its share"
        );
        for (partition, _, _) in &consumer.records {
            assert!(consumer.assigned.contains(partition));
        }
    }

    // One leaves (close: LeaveGroup); the other two take over its partitions.
    let leaver_partitions = consumers[1].assigned.clone();
    consumers[1].process.send(&json!({"op": "close"}));
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while !consumers[1].closed {
        assert!(Instant::now() < deadline, "close returns");
        consumers[1].listen();
    }
    let read_before = consumers[1].records.len();
    listen_until(&mut consumers, "two consumers settle", |consumers| {
        settled(consumers, PARTITIONS)
    });
    for partition in &leaver_partitions {
        assert!(
            consumers[0].assigned.contains(partition) || consumers[2].assigned.contains(partition)
        );
    }

    // Phase 2: the survivors read everything, the leaver's partitions included, once.
    let second = write(&server, "shared", PARTITIONS, "second", PER_PHASE);
    listen_until(&mut consumers, "phase 2 read", |consumers| {
        read_counts(consumers).len() == first.len() + second.len()
    });
    let counts = read_counts(&consumers);
    assert!(counts.values().all(|&count| count == 1), "{counts:?}");
    assert_eq!(
        consumers[1].records.len(),
        read_before,
        "the leaver reads nothing more"
    );
    let taken_over: usize = [&consumers[0], &consumers[2]]
        .iter()
        .flat_map(|consumer| consumer.records.iter())
        .filter(|(partition, _, key)| {
            key.starts_with("second-") && leaver_partitions.contains(partition)
        })
        .count();
    assert_eq!(
        taken_over,
        second.len() / PARTITIONS as usize * leaver_partitions.len()
    );
    for consumer in consumers {
        let mut process = consumer.process;
        if !consumer.closed {
            process.send(&json!({"op": "close"}));
            while process.next()["event"] != "closed" {}
        }
        process.finish();
    }
}

#[test]
fn confluent_kafka_group_commits_survive_a_kill_and_the_group_resumes_with_nothing_lost() {
    const PARTITIONS: u32 = 8;
    let temp_dir = tempfile::tempdir().unwrap();
    let data_dir = temp_dir.path().join("data");
    let mut server = TestServer::start_on(&data_dir, &[]);
    native(&server)
        .create_topic("durable", PARTITIONS)
        .expect("topic created");
    let spawn_three = |server: &TestServer| -> Vec<GroupConsumer> {
        (0..3)
            .map(|_| GroupConsumer::spawn_from(server, "resumers", "durable", "committed", &[]))
            .collect()
    };
    let mut consumers = spawn_three(&server);
    listen_until(&mut consumers, "three consumers settle", |consumers| {
        settled(consumers, PARTITIONS)
    });
    let committed = write(&server, "durable", PARTITIONS, "committed", 96);
    listen_until(&mut consumers, "the first records read", |consumers| {
        read_counts(consumers).len() == committed.len()
    });
    for consumer in &mut consumers {
        consumer.process.send(&json!({"op": "commit"}));
    }
    listen_until(&mut consumers, "every consumer commits", |consumers| {
        consumers.iter().all(|consumer| consumer.commit_count == 1)
    });
    // A tail that is read but never committed.
    let tail = write(&server, "durable", PARTITIONS, "tail", 32);
    listen_until(&mut consumers, "the tail read", |consumers| {
        read_counts(consumers).len() == committed.len() + tail.len()
    });
    let status = server.stop_with(9, Duration::from_secs(10));
    assert!(!status.success(), "SIGKILL: {status:?}");
    drop(consumers);

    // After the restart the group forms again (membership was soft state) and resumes at
    // the commits: the committed records are not read again; the tail is, perhaps more
    // than once while the group forms (at least once).
    let server = TestServer::start_on(&data_dir, &[]);
    let mut consumers = spawn_three(&server);
    let tail_keys: BTreeSet<String> = tail.iter().cloned().collect();
    listen_until(&mut consumers, "the tail read again", |consumers| {
        let read: BTreeSet<String> = read_counts(consumers).into_keys().collect();
        settled(consumers, PARTITIONS) && tail_keys.is_subset(&read)
    });
    let after = write(&server, "durable", PARTITIONS, "after", 16);
    listen_until(&mut consumers, "new records read", |consumers| {
        let read = read_counts(consumers);
        after.iter().all(|key| read.contains_key(key))
    });
    let read = read_counts(&consumers);
    let committed_again: Vec<&String> = committed
        .iter()
        .filter(|key| read.contains_key(*key))
        .collect();
    assert!(
        committed_again.is_empty(),
        "read again after their commit: {committed_again:?}"
    );
    assert!(
        read.keys()
            .all(|key| tail_keys.contains(key) || after.contains(key))
    );
    for consumer in consumers {
        let mut process = consumer.process;
        process.send(&json!({"op": "close"}));
        while process.next()["event"] != "closed" {}
        process.finish();
    }
}

/// The keys of `{"records": [[partition, offset, key], ...]}`.
fn keys_of(stdout: &str) -> Vec<String> {
    let lines = json_lines(stdout);
    assert_eq!(lines.len(), 1, "{stdout}");
    lines[0]["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|record| record[2].as_str().unwrap().to_owned())
        .collect()
}

/// Two consumers of one group in turn (`consume(count)` runs one to its end): the second
/// resumes at the first one's commits, so together they read every record once.
fn commits_and_resumes(server: &TestServer, topic: &str, consume: impl Fn(&str) -> Command) {
    const PARTITIONS: u32 = 2;
    native(server)
        .create_topic(topic, PARTITIONS)
        .expect("topic created");
    let written = write(server, topic, PARTITIONS, "r", 20);
    let first = keys_of(&run_to_end(consume("8"), ""));
    let second = keys_of(&run_to_end(consume("12"), ""));
    let mut read: Vec<String> = first.iter().chain(&second).cloned().collect();
    read.sort();
    let mut expected = written;
    expected.sort();
    assert_eq!(read, expected, "first {first:?}, second {second:?}");
}

#[test]
fn kafka_python_group_consumer_commits_and_a_new_one_resumes() {
    let server = TestServer::start();
    let bootstrap = server.kafka_bootstrap();
    commits_and_resumes(&server, "resume-python", |count| {
        python(
            "kafka_python_group.py",
            &[&bootstrap, "python-readers", "resume-python", count],
        )
    });
}

#[test]
fn kafkajs_group_consumer_commits_and_a_new_one_resumes() {
    let server = TestServer::start();
    let bootstrap = server.kafka_bootstrap();
    commits_and_resumes(&server, "resume-js", |count| {
        node(
            "kafkajs_group.js",
            &[&bootstrap, "js-readers", "resume-js", count],
        )
    });
}

#[test]
fn kcat_balanced_consumer_reads_a_topic_and_resumes_after_its_commits() {
    const PARTITIONS: u32 = 3;
    let server = TestServer::start();
    native(&server)
        .create_topic("balanced", PARTITIONS)
        .expect("topic created");
    let bootstrap = server.kafka_bootstrap();
    let kcat = |count: &str| {
        let mut command = Command::new("kcat");
        command.args([
            "-b",
            &bootstrap,
            "-G",
            "kcat-readers",
            "-X",
            "auto.offset.reset=earliest",
            "-X",
            "heartbeat.interval.ms=200",
            "-c",
            count,
            "-q",
            "-f",
            "%k\\n",
            "balanced",
        ]);
        command
    };
    let keys =
        |stdout: String| -> BTreeSet<String> { stdout.lines().map(ToOwned::to_owned).collect() };
    let first = write(&server, "balanced", PARTITIONS, "a", 12);
    assert_eq!(
        keys(run_to_end(kcat("12"), "")),
        first.into_iter().collect()
    );
    // kcat commits (auto commit, and on close): the group's next consumer reads only what
    // is new.
    let second = write(&server, "balanced", PARTITIONS, "b", 6);
    assert_eq!(
        keys(run_to_end(kcat("6"), "")),
        second.into_iter().collect()
    );
}
