//! Real Kafka clients against a real `cairn serve`: kcat, confluent-kafka (librdkafka),
//! kafka-python and kafkajs, each as its own process (scripts in tests/kafka/), checked
//! through what they print and, where it proves more, through the native client. The clients
//! are installed by .ci/run from their registries, at pinned versions.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use cairn_client::{AppendResult, BlockingClient, ClientConfig, FetchedRecord};
use cairn_engine::{KeyCondition, Offset, RecordInput};
use cairn_wire::{ConflictInfo, partition_for_key};
use serde_json::{Value, json};

use crate::support::client_process::{
    ClientProcess, json_lines, kafka_script, node, python, run_to_end,
};
use crate::support::server::TestServer;

/// The header the Kafka listener reads a record's key condition from.
const EXPECT_HEADER: &str = "cairn.expect";
/// The header the Kafka listener adds on fetch: the key's previous offset.
const PREV_KEY_OFFSET_HEADER: &str = "cairn.prev-key-offset";

fn native(server: &TestServer) -> BlockingClient {
    BlockingClient::connect(ClientConfig::new(server.address)).expect("native client connects")
}

fn create_topic(server: &TestServer, topic: &str, partition_count: u32) {
    native(server)
        .create_topic(topic, partition_count)
        .expect("topic created");
}

/// Every synced record of one partition, through the native client.
fn fetch_all(client: &mut BlockingClient, topic: &str, partition: u32) -> Vec<FetchedRecord> {
    let mut records = Vec::new();
    let mut next = Offset(0);
    loop {
        let fetched = client
            .fetch(topic, partition, next, 1 << 20, Duration::ZERO)
            .expect("native fetch");
        if let Some(last) = fetched.records.last() {
            next = last.offset.plus(1);
        }
        let caught_up = fetched.records.is_empty() || next >= fetched.synced_end;
        records.extend(fetched.records);
        if caught_up {
            return records;
        }
    }
}

/// key -> (partition, offset, value) of every record of `topic`, read natively; a key must
/// appear once.
fn native_placement(
    server: &TestServer,
    topic: &str,
    partition_count: u32,
) -> BTreeMap<String, (u32, Offset, String)> {
    let mut client = native(server);
    let mut placement = BTreeMap::new();
    for partition in 0..partition_count {
        for record in fetch_all(&mut client, topic, partition) {
            let key = String::from_utf8(record.key).expect("utf-8 key");
            let value = String::from_utf8(record.value).expect("utf-8 value");
            let earlier = placement.insert(key.clone(), (partition, record.offset, value));
            assert!(earlier.is_none(), "key {key} written twice: {earlier:?}");
        }
    }
    placement
}

/// Keys of 1 to 12 bytes, so every murmur2 tail length (0 to 3 bytes) is routed.
fn routing_keys() -> Vec<String> {
    (0..50)
        .map(|index| format!("k{index}{}", "-".repeat(index % 7)))
        .collect()
}

const ROUTING_PARTITION_COUNT: u32 = 8;

/// Every key landed where `partition_for_key` says, and the native client, routing by key
/// alone, finds it there.
fn assert_routed_by_murmur2(server: &TestServer, topic: &str, keys: &[String]) {
    let placement = native_placement(server, topic, ROUTING_PARTITION_COUNT);
    assert_eq!(placement.len(), keys.len(), "{placement:?}");
    let partitions_used: BTreeSet<u32> = placement.values().map(|place| place.0).collect();
    assert!(
        partitions_used.len() > 4,
        "keys spread: {partitions_used:?}"
    );
    let mut client = native(server);
    for key in keys {
        let (partition, offset, value) = &placement[key];
        assert_eq!(
            *partition,
            partition_for_key(key.as_bytes(), ROUTING_PARTITION_COUNT),
            "key {key}"
        );
        assert_eq!(value, &format!("value-of-{key}"));
        let found = client
            .read_key(topic, None, key.as_bytes(), false)
            .expect("native read_key")
            .unwrap_or_else(|| panic!("native client finds no {key}"));
        assert_eq!(found.offset, *offset, "key {key}");
    }
}

/// A port `p` with `p + 1` free too: shard `i`'s Kafka listener takes `--kafka-listen`'s
/// port + `i`. Free when probed; another process could take them before the server does,
/// which on a test machine is rare enough.
fn free_kafka_ports() -> u16 {
    for _ in 0..100 {
        let first = TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = first
            .local_addr()
            .map(|address: SocketAddr| address.port())
            .expect("port");
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no two consecutive free ports")
}

/// A connection the broker on `port` has accepted and answered once (ApiVersions v0), then
/// left idle.
fn idle_kafka_connection(port: u16) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    // Length 10; api key 18 (ApiVersions), version 0, correlation id 1, null client id.
    let request = [0, 0, 0, 10, 0, 18, 0, 0, 0, 0, 0, 1, 0xff, 0xff];
    stream.write_all(&request).expect("request sent");
    let mut length = [0; 4];
    stream.read_exact(&mut length).expect("response length");
    let mut response = vec![0; usize::try_from(u32::from_be_bytes(length)).expect("usize")];
    stream.read_exact(&mut response).expect("response");
    stream
}

fn kcat(server: &TestServer, args: &[&str]) -> Command {
    let mut command = Command::new("kcat");
    command
        .args(["-b", &server.kafka_bootstrap()])
        .args(["-X", "socket.timeout.ms=15000"])
        .args(args);
    command
}

/// kcat -J's headers, `["name", "value", ...]`, as pairs.
fn kcat_headers(message: &Value) -> Vec<(String, String)> {
    let Some(flat) = message["headers"].as_array() else {
        return Vec::new();
    };
    flat.chunks(2)
        .map(|pair| {
            (
                pair[0].as_str().expect("header name").to_owned(),
                pair[1].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn kcat_consume(server: &TestServer, topic: &str, from: &str) -> Vec<Value> {
    let stdout = run_to_end(
        kcat(
            server,
            &["-C", "-t", topic, "-p", "0", "-o", from, "-e", "-J", "-q"],
        ),
        "",
    );
    json_lines(&stdout)
}

#[test]
fn kcat_produces_keys_and_headers_and_consumes_them_from_chosen_offsets() {
    let server = TestServer::start();
    create_topic(&server, "kcat", 1);
    let lines = [
        "order-1:v0",
        "order-2:v1",
        "order-1:v2",
        "order-3:v3",
        "order-1:v4",
    ];
    run_to_end(
        kcat(
            &server,
            &[
                "-P",
                "-t",
                "kcat",
                "-K",
                ":",
                "-H",
                "type=booked",
                "-H",
                "source=kcat",
            ],
        ),
        &(lines.join("\n") + "\n"),
    );

    // What the engine holds, natively: the keys, values and headers kcat sent, and each
    // key's chain.
    let records = fetch_all(&mut native(&server), "kcat", 0);
    let native_view: Vec<(String, String, Option<u64>)> = records
        .iter()
        .map(|record| {
            (
                String::from_utf8_lossy(&record.key).into_owned(),
                String::from_utf8_lossy(&record.value).into_owned(),
                record.prev_key_offset.map(|offset| offset.0),
            )
        })
        .collect();
    let expected: Vec<(String, String, Option<u64>)> = [
        ("order-1", "v0", None),
        ("order-2", "v1", None),
        ("order-1", "v2", Some(0)),
        ("order-3", "v3", None),
        ("order-1", "v4", Some(2)),
    ]
    .iter()
    .map(|&(key, value, prev)| (key.to_owned(), value.to_owned(), prev))
    .collect();
    assert_eq!(native_view, expected);
    for record in &records {
        let headers: Vec<(&[u8], &[u8])> = record
            .headers
            .iter()
            .map(|(name, value)| (name.as_slice(), value.as_slice()))
            .collect();
        assert_eq!(
            headers,
            [(&b"type"[..], &b"booked"[..]), (b"source", b"kcat")]
        );
    }

    // And what kcat reads back: the same, with the server's prev-key-offset header on the
    // records that have a previous one.
    let consumed = kcat_consume(&server, "kcat", "beginning");
    assert_eq!(consumed.len(), 5, "{consumed:?}");
    for (message, (key, value, prev)) in consumed.iter().zip(&expected) {
        assert_eq!(message["key"], key.as_str(), "{message}");
        assert_eq!(message["payload"], value.as_str(), "{message}");
        let headers = kcat_headers(message);
        assert!(
            headers.contains(&("type".to_owned(), "booked".to_owned()))
                && headers.contains(&("source".to_owned(), "kcat".to_owned())),
            "{message}"
        );
        let prev_header: Vec<&String> = headers
            .iter()
            .filter(|(name, _)| name == PREV_KEY_OFFSET_HEADER)
            .map(|(_, value)| value)
            .collect();
        match prev {
            Some(prev) => assert_eq!(prev_header, [&prev.to_string()], "{message}"),
            None => assert!(prev_header.is_empty(), "{message}"),
        }
    }
    let offsets = |from: &str| -> Vec<u64> {
        kcat_consume(&server, "kcat", from)
            .iter()
            .map(|message| message["offset"].as_u64().expect("offset"))
            .collect()
    };
    assert_eq!(offsets("beginning"), [0, 1, 2, 3, 4]);
    assert_eq!(offsets("3"), [3, 4]);
    assert_eq!(offsets("-2"), [3, 4]);
    assert_eq!(offsets("end"), Vec::<u64>::new());
}

#[test]
fn kcat_metadata_lists_one_broker_per_shard_and_each_partitions_leader() {
    let server = TestServer::start();
    create_topic(&server, "meta", 6);
    let metadata = native(&server).metadata().expect("native metadata");
    let stdout = run_to_end(kcat(&server, &["-L", "-J", "-t", "meta"]), "");
    let listing: Value = serde_json::from_str(&stdout).expect("kcat -L -J prints JSON");

    let mut brokers: Vec<(u64, String)> = listing["brokers"]
        .as_array()
        .expect("brokers")
        .iter()
        .map(|broker| {
            (
                broker["id"].as_u64().expect("broker id"),
                broker["name"].as_str().expect("broker name").to_owned(),
            )
        })
        .collect();
    brokers.sort();
    let expected_brokers: Vec<(u64, String)> = server
        .kafka_ports
        .iter()
        .enumerate()
        .map(|(shard, port)| (shard as u64, format!("127.0.0.1:{port}")))
        .collect();
    assert_eq!(brokers, expected_brokers, "{stdout}");
    assert_eq!(brokers.len(), metadata.shard_ports.len());

    let topic = listing["topics"]
        .as_array()
        .expect("topics")
        .iter()
        .find(|topic| topic["topic"] == "meta")
        .expect("topic meta listed");
    let leaders: BTreeMap<u64, u64> = topic["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .map(|partition| {
            (
                partition["partition"].as_u64().expect("partition"),
                partition["leader"].as_u64().expect("leader"),
            )
        })
        .collect();
    let native_topic = metadata
        .topics
        .iter()
        .find(|topic| topic.name == "meta")
        .expect("native metadata lists meta");
    let native_leaders: BTreeMap<u64, u64> = native_topic
        .partitions
        .iter()
        .map(|partition| (u64::from(partition.partition), u64::from(partition.shard)))
        .collect();
    assert_eq!(leaders, native_leaders, "{stdout}");
}

/// confluent_idempotent.py producing a numbered sequence, and what its delivery reports
/// said.
struct IdempotentProducer {
    process: ClientProcess,
    /// seq -> (partition, offset) of every acknowledged record.
    acknowledged: BTreeMap<u64, (u32, u64)>,
    failed: Vec<Value>,
    /// The client errors librdkafka reported on the way (timeouts, lost connections).
    errors: Vec<Value>,
}

impl IdempotentProducer {
    fn spawn(server: &TestServer, topic: &str, settings: &[&str]) -> IdempotentProducer {
        let bootstrap = server.kafka_bootstrap();
        let mut args = vec![bootstrap.as_str(), topic, "16"];
        args.extend_from_slice(settings);
        IdempotentProducer {
            process: ClientProcess::spawn(python("confluent_idempotent.py", &args)),
            acknowledged: BTreeMap::new(),
            failed: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// Handles one line; `false` if it was the last (`done`).
    fn handle(&mut self, line: &Value) -> bool {
        if line["event"] == "error" {
            self.errors.push(line.clone());
            return true;
        }
        if line["event"] == "done" {
            assert_eq!(line["unflushed"], 0, "{line}");
            return false;
        }
        let seq = line["seq"].as_u64().unwrap_or_else(|| panic!("{line}"));
        if line["ok"] == true {
            let place = (
                u32::try_from(line["partition"].as_u64().expect("partition")).expect("u32"),
                line["offset"].as_u64().expect("offset"),
            );
            assert!(
                self.acknowledged.insert(seq, place).is_none(),
                "two reports for {seq}"
            );
        } else {
            self.failed.push(line.clone());
        }
        true
    }

    /// Reads until `count` more records are acknowledged.
    fn wait_for_acknowledged(&mut self, count: usize) {
        let target = self.acknowledged.len() + count;
        while self.acknowledged.len() < target {
            let line = self.process.next();
            assert!(self.handle(&line), "done before {target} acknowledgements");
        }
    }

    /// Reads until librdkafka reports an error: with a short socket.timeout.ms, a paused
    /// server's connections time out and are dropped ("2/2 brokers are down").
    fn wait_for_error(&mut self) {
        let errors = self.errors.len();
        while self.errors.len() == errors {
            let line = self.process.next();
            assert!(self.handle(&line), "done before an error");
        }
    }

    /// Stops producing, waits for every outstanding delivery report, and checks the log:
    /// every acknowledged record once, where its report said, no record twice, each
    /// partition in production order.
    fn finish_and_check(mut self, server: &TestServer, topic: &str, partition_count: u32) {
        self.process.close_stdin();
        // librdkafka may still be resending; message.timeout.ms (60 s) bounds that.
        loop {
            let line = self.process.next_within(Duration::from_secs(70));
            if !self.handle(&line) {
                break;
            }
        }
        self.process.finish();
        assert!(
            self.failed.is_empty(),
            "failed deliveries: {:?}",
            self.failed
        );

        let mut client = native(server);
        let mut seen = BTreeSet::new();
        for partition in 0..partition_count {
            let mut last_seq = None;
            for record in fetch_all(&mut client, topic, partition) {
                let seq: u64 = String::from_utf8_lossy(&record.value)
                    .parse()
                    .expect("numbered value");
                assert!(seen.insert(seq), "{seq} is in the log twice");
                assert!(
                    last_seq < Some(seq),
                    "partition {partition}: {seq} after {last_seq:?}"
                );
                last_seq = Some(seq);
                if let Some(&place) = self.acknowledged.get(&seq) {
                    assert_eq!(place, (partition, record.offset.0), "seq {seq}");
                }
            }
        }
        let missing: Vec<&u64> = self
            .acknowledged
            .keys()
            .filter(|seq| !seen.contains(seq))
            .collect();
        assert!(
            missing.is_empty(),
            "acknowledged but not in the log: {missing:?}"
        );
    }
}

#[test]
fn confluent_kafka_idempotent_producer_loses_and_repeats_nothing_across_a_server_kill() {
    let temp_dir = tempfile::tempdir().expect("temp dir");
    let data_dir = temp_dir.path().join("data");
    // The restarted server listens where the first one did, so the producer's bootstrap
    // and broker addresses stay valid.
    let kafka_port = free_kafka_ports();
    let kafka_listen = format!("127.0.0.1:{kafka_port}");
    let args = ["--kafka-listen", kafka_listen.as_str()];
    let mut server = TestServer::start_on(&data_dir, &args);
    create_topic(&server, "idem", 4);

    let mut producer = IdempotentProducer::spawn(&server, "idem", &[]);
    producer.wait_for_acknowledged(300);
    // SIGKILL: whatever is in flight is neither answered nor, unless synced, kept. With an
    // idle client connected to each broker as well (a consumer waiting for records, say):
    // the kernel closes the server's side of those first, so their TIME_WAIT stays on the
    // broker ports, and a restart must not count it as another process holding them.
    let idle: Vec<TcpStream> = [kafka_port, kafka_port + 1]
        .iter()
        .map(|&port| idle_kafka_connection(port))
        .collect();
    server.stop_with(9, Duration::from_secs(10));
    drop(idle);
    let server = TestServer::start_on(&data_dir, &args);
    // Enough acknowledgements after the restart to know the producer carried on.
    producer.wait_for_acknowledged(600);
    producer.finish_and_check(&server, "idem", 4);
}

#[test]
fn confluent_kafka_idempotent_producer_resends_are_not_appended_twice() {
    let server = TestServer::start();
    create_topic(&server, "resend", 4);
    // Requests time out quickly, so a paused server makes librdkafka resend batches whose
    // first copies are still waiting, unread, in the server's sockets.
    let mut producer = IdempotentProducer::spawn(&server, "resend", &["socket.timeout.ms=1000"]);
    producer.wait_for_acknowledged(300);
    let pid = server.pid().to_string();
    let signal = |name: &str| {
        let status = Command::new("kill")
            .args([name, pid.as_str()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {name} {pid}");
    };
    signal("-STOP");
    producer.wait_for_error();
    signal("-CONT");
    producer.wait_for_acknowledged(600);
    producer.finish_and_check(&server, "resend", 4);
}

/// librdkafka's default batch limits (batch.size 1 MB, up to 10,000 records) with the
/// linger a throughput-minded producer sets: every batch it fills must fit one Cairn
/// batch. With a 1 MiB limit all 30,000 records of 85 bytes failed with
/// MSG_SIZE_TOO_LARGE (DESIGN, the Kafka front end).
#[test]
fn confluent_kafka_default_batches_of_small_records_fit_one_cairn_batch() {
    const RECORD_COUNT: u64 = 30_000;
    let server = TestServer::start();
    create_topic(&server, "bulk", 1);
    let bootstrap = server.kafka_bootstrap();
    let count = RECORD_COUNT.to_string();
    let stdout = run_to_end(
        python(
            "confluent_bulk.py",
            &[&bootstrap, "bulk", &count, "85", "linger.ms=200"],
        ),
        "",
    );
    let outcome = &json_lines(&stdout)[0];
    assert_eq!(outcome["failed"], 0, "{outcome}");
    assert_eq!(outcome["delivered"], RECORD_COUNT, "{outcome}");
    let synced_end = native(&server)
        .fetch("bulk", 0, Offset(0), 1, Duration::ZERO)
        .expect("native fetch")
        .synced_end;
    assert_eq!(synced_end, Offset(RECORD_COUNT));
}

/// A confluent-kafka producer that waits for `{"event": "ready"}`.
fn confluent_producer(server: &TestServer, topic: &str, settings: &[&str]) -> ClientProcess {
    let bootstrap = server.kafka_bootstrap();
    let mut args = vec![bootstrap.as_str(), topic];
    args.extend_from_slice(settings);
    let mut producer = ClientProcess::spawn(python("confluent_produce.py", &args));
    producer.expect_event("ready");
    producer
}

/// The decimal numbers in `text`.
fn numbers_in(text: &str) -> Vec<u64> {
    text.split(|c: char| !c.is_ascii_digit())
        .filter_map(|word| word.parse().ok())
        .collect()
}

#[test]
fn confluent_kafka_conditional_produce_race_has_one_winner_per_key() {
    let server = TestServer::start();
    create_topic(&server, "race", 4);
    let keys: Vec<String> = (0..20).map(|index| format!("seat-{index}")).collect();
    let mut producers = [
        confluent_producer(&server, "race", &["partitioner=murmur2_random"]),
        confluent_producer(&server, "race", &["partitioner=murmur2_random"]),
    ];
    // Both are connected before either writes, and take the keys in the same order.
    for (index, producer) in producers.iter_mut().enumerate() {
        for key in &keys {
            producer.send(&json!({
                "key": key,
                "value": format!("producer-{index}"),
                "headers": { EXPECT_HEADER: "no-key" },
            }));
        }
    }
    let results: Vec<Vec<Value>> = producers
        .iter_mut()
        .map(|producer| keys.iter().map(|_| producer.next()).collect())
        .collect();
    for producer in producers {
        producer.finish();
    }

    let mut client = native(&server);
    for (index, key) in keys.iter().enumerate() {
        let outcomes = [&results[0][index], &results[1][index]];
        assert!(
            outcomes
                .iter()
                .all(|outcome| outcome["key"] == key.as_str())
        );
        let winners: Vec<usize> = (0..2).filter(|&p| outcomes[p]["ok"] == true).collect();
        assert_eq!(winners.len(), 1, "key {key}: {outcomes:?}");
        let winner = winners[0];
        let loser = outcomes[1 - winner];
        let winner_offset = outcomes[winner]["offset"].as_u64().expect("offset");
        // librdkafka's delivery report carries the code but not the broker's message
        // (it reports its own text for the code), so the message is checked below.
        assert_eq!(loser["error_code"], "INVALID_RECORD", "key {key}: {loser}");
        let stored = client
            .read_key("race", None, key.as_bytes(), false)
            .expect("native read_key")
            .expect("the winner's record");
        assert_eq!(stored.offset.0, winner_offset, "key {key}");
        assert_eq!(stored.value, format!("producer-{winner}").as_bytes());
        assert_eq!(stored.prev_key_offset, None, "key {key}: only one record");
    }

    // A third contender, through a client that shows the broker's message: refused, and
    // told where each key now is.
    let late = kafka_python_conditional(&server, "race", &keys, "no-key");
    assert_eq!(late.len(), keys.len(), "{late:?}");
    for (index, outcome) in late.iter().enumerate() {
        let winner_offset = [&results[0][index], &results[1][index]]
            .iter()
            .find(|outcome| outcome["ok"] == true)
            .and_then(|outcome| outcome["offset"].as_u64())
            .expect("a winner");
        assert_eq!(outcome["key"], keys[index].as_str());
        assert_conflict_names(outcome, winner_offset);
    }
}

/// kafka-python writes one record per key, value "late", conditional on `expect`; one
/// outcome per key.
fn kafka_python_conditional(
    server: &TestServer,
    topic: &str,
    keys: &[String],
    expect: &str,
) -> Vec<Value> {
    let input: String = keys
        .iter()
        .map(|key| {
            let request =
                json!({ "key": key, "value": "late", "headers": { EXPECT_HEADER: expect } });
            format!("{request}\n")
        })
        .collect();
    let stdout = run_to_end(
        python(
            "kafka_python_client.py",
            &["conditional", &server.kafka_bootstrap(), topic],
        ),
        &input,
    );
    json_lines(&stdout)
}

/// A Kafka-side conflict: INVALID_RECORD (87), and the broker's message names the offset
/// the key is at.
fn assert_conflict_names(outcome: &Value, current_offset: u64) {
    assert_eq!(outcome["ok"], false, "{outcome}");
    assert_eq!(outcome["error_code"], 87, "INVALID_RECORD: {outcome}");
    let message = outcome["error"].as_str().expect("error message");
    assert!(
        numbers_in(message).contains(&current_offset),
        "the conflict names offset {current_offset}: {outcome}"
    );
}

#[test]
fn native_and_kafka_conditional_appends_interleave_on_one_key() {
    let server = TestServer::start();
    create_topic(&server, "ledger", 4);
    let key = b"account-7";
    let mut client = native(&server);
    let mut kafka = confluent_producer(&server, "ledger", &["partitioner=murmur2_random"]);
    let mut kafka_append = |expect: &str, value: &str| -> Value {
        kafka.send(&json!({
            "key": "account-7",
            "value": value,
            "headers": { EXPECT_HEADER: expect },
        }));
        kafka.next()
    };
    let native_append = |client: &mut BlockingClient, condition: KeyCondition, value: &[u8]| {
        let record = RecordInput {
            key,
            value,
            condition,
            ..RecordInput::default()
        };
        client
            .append("ledger", None, None, &[record])
            .expect("native append")
    };
    let appended = |result: AppendResult| match result {
        AppendResult::Appended { base_offset, .. } => base_offset,
        AppendResult::Conflict { info, message } => panic!("conflict {info:?}: {message}"),
    };
    let kafka_appended = |outcome: Value| -> Offset {
        assert_eq!(outcome["ok"], true, "{outcome}");
        Offset(outcome["offset"].as_u64().expect("offset"))
    };

    let first = appended(native_append(&mut client, KeyCondition::NoKey, b"native-0"));
    let second = kafka_appended(kafka_append(&first.0.to_string(), "kafka-1"));
    let third = appended(native_append(
        &mut client,
        KeyCondition::At(second),
        b"native-2",
    ));
    let fourth = kafka_appended(kafka_append(&third.0.to_string(), "kafka-3"));

    // Stale conditions, one from each side, naming a record the other side has since
    // superseded.
    match native_append(&mut client, KeyCondition::At(third), b"stale") {
        AppendResult::Conflict {
            info: ConflictInfo::Key { current_offset, .. },
            ..
        } => assert_eq!(current_offset, Some(fourth)),
        other => panic!("a stale native condition was not refused: {other:?}"),
    }
    let stale = kafka_append(&second.0.to_string(), "stale");
    assert_eq!(stale["error_code"], "INVALID_RECORD", "{stale}");
    let stale_no_key = kafka_append("no-key", "stale");
    assert_eq!(
        stale_no_key["error_code"], "INVALID_RECORD",
        "{stale_no_key}"
    );
    kafka.finish();
    // The same stale condition through kafka-python, which shows the broker's message.
    let stale = kafka_python_conditional(
        &server,
        "ledger",
        &["account-7".to_owned()],
        &second.0.to_string(),
    );
    assert_eq!(stale.len(), 1, "{stale:?}");
    assert_conflict_names(&stale[0], fourth.0);

    let history = client
        .key_history("ledger", None, key, 100)
        .expect("native history");
    let chain: Vec<(Offset, Option<Offset>, Vec<u8>)> = history
        .into_iter()
        .map(|record| (record.offset, record.prev_key_offset, record.value))
        .collect();
    assert_eq!(
        chain,
        [
            (fourth, Some(third), b"kafka-3".to_vec()),
            (third, Some(second), b"native-2".to_vec()),
            (second, Some(first), b"kafka-1".to_vec()),
            (first, None, b"native-0".to_vec()),
        ]
    );
}

fn routing_requests(keys: &[String]) -> Vec<Value> {
    keys.iter()
        .map(|key| json!({ "key": key, "value": format!("value-of-{key}") }))
        .collect()
}

/// The partitions a client reported for each key agree with `partition_for_key`.
fn assert_reported_partitions(reports: &[Value], keys: &[String]) {
    assert_eq!(reports.len(), keys.len(), "{reports:?}");
    for (report, key) in reports.iter().zip(keys) {
        assert_eq!(report["key"], key.as_str(), "{report}");
        assert_eq!(
            report["partition"].as_u64(),
            Some(u64::from(partition_for_key(
                key.as_bytes(),
                ROUTING_PARTITION_COUNT
            ))),
            "{report}"
        );
    }
}

fn routing_input(keys: &[String]) -> String {
    routing_requests(keys)
        .iter()
        .map(|request| format!("{request}\n"))
        .collect()
}

#[test]
fn confluent_kafka_murmur2_random_routes_keys_like_partition_for_key() {
    let server = TestServer::start();
    create_topic(&server, "routing", ROUTING_PARTITION_COUNT);
    let keys = routing_keys();
    let mut producer = confluent_producer(&server, "routing", &["partitioner=murmur2_random"]);
    let reports: Vec<Value> = routing_requests(&keys)
        .iter()
        .map(|request| {
            producer.send(request);
            producer.next()
        })
        .collect();
    producer.finish();
    assert_reported_partitions(&reports, &keys);
    assert_routed_by_murmur2(&server, "routing", &keys);
}

#[test]
fn kcat_murmur2_random_routes_keys_like_partition_for_key() {
    let server = TestServer::start();
    create_topic(&server, "routing", ROUTING_PARTITION_COUNT);
    let keys = routing_keys();
    let input: String = keys
        .iter()
        .map(|key| format!("{key}\tvalue-of-{key}\n"))
        .collect();
    run_to_end(
        kcat(
            &server,
            &[
                "-P",
                "-t",
                "routing",
                "-K",
                "\t",
                "-X",
                "partitioner=murmur2_random",
            ],
        ),
        &input,
    );
    assert_routed_by_murmur2(&server, "routing", &keys);
}

#[test]
fn kafka_python_default_partitioner_routes_keys_like_partition_for_key() {
    let server = TestServer::start();
    create_topic(&server, "routing", ROUTING_PARTITION_COUNT);
    let keys = routing_keys();
    let stdout = run_to_end(
        python(
            "kafka_python_client.py",
            &["produce", &server.kafka_bootstrap(), "routing"],
        ),
        &routing_input(&keys),
    );
    assert_reported_partitions(&json_lines(&stdout), &keys);
    assert_routed_by_murmur2(&server, "routing", &keys);
}

#[test]
fn kafkajs_default_partitioner_routes_keys_like_partition_for_key() {
    let server = TestServer::start();
    create_topic(&server, "routing", ROUTING_PARTITION_COUNT);
    let keys = routing_keys();
    let stdout = run_to_end(
        node(
            "kafkajs_client.js",
            &["produce", &server.kafka_bootstrap(), "routing"],
        ),
        &routing_input(&keys),
    );
    assert_reported_partitions(&json_lines(&stdout), &keys);
    assert_routed_by_murmur2(&server, "routing", &keys);
}

/// How long an idle fetch may be held; long enough that a fetch woken by a new record
/// (within milliseconds) cannot be mistaken for one that ran out its wait.
const FETCH_WAIT_MAX_MS: u32 = 3000;

/// A client waiting at a partition's end: an idle fetch is held for the wait the client
/// asked for and comes back empty, and a record appended while the next fetch waits ends
/// that fetch at once.
fn assert_long_poll(server: &TestServer, mut waiting: ClientProcess) {
    let idle = waiting.expect_event("idle_fetch");
    let latency_ms = idle["latency_ms"].as_f64().expect("latency_ms");
    assert_eq!(idle["records"], 0, "{idle}");
    let wait_ms = f64::from(FETCH_WAIT_MAX_MS);
    assert!(
        latency_ms >= wait_ms * 0.9 && latency_ms < wait_ms + 5000.0,
        "an idle fetch took {latency_ms} ms, asked to wait {FETCH_WAIT_MAX_MS} ms"
    );
    waiting.expect_event("waiting");
    let record = RecordInput {
        key: b"wake",
        value: b"wake-up",
        ..RecordInput::default()
    };
    let offset = match native(server)
        .append("poll", Some(0), None, &[record])
        .expect("native append")
    {
        AppendResult::Appended { base_offset, .. } => base_offset,
        other => panic!("{other:?}"),
    };
    let received = waiting.expect_event("received");
    assert_eq!(received["offset"].as_u64(), Some(offset.0), "{received}");
    assert_eq!(received["value"], "wake-up", "{received}");
    let waited_ms = received["waited_ms"].as_f64().expect("waited_ms");
    assert!(
        waited_ms < wait_ms / 2.0,
        "the record reached the waiting client after {waited_ms} ms: the fetch was not woken"
    );
    waiting.finish();
}

/// A partition holding one record, so the waiting client starts past an existing one.
fn long_poll_topic(server: &TestServer) {
    create_topic(server, "poll", 1);
    let record = RecordInput {
        key: b"before",
        value: b"before",
        ..RecordInput::default()
    };
    native(server)
        .append("poll", Some(0), None, &[record])
        .expect("native append");
}

#[test]
fn kafka_python_long_poll_waits_at_the_end_and_wakes_for_a_new_record() {
    let server = TestServer::start();
    long_poll_topic(&server);
    let wait = FETCH_WAIT_MAX_MS.to_string();
    let waiting = ClientProcess::spawn(python(
        "kafka_python_client.py",
        &["long-poll", &server.kafka_bootstrap(), "poll", "0", &wait],
    ));
    assert_long_poll(&server, waiting);
}

#[test]
fn kafkajs_long_poll_waits_at_the_end_and_wakes_for_a_new_record() {
    let server = TestServer::start();
    long_poll_topic(&server);
    let wait = FETCH_WAIT_MAX_MS.to_string();
    let waiting = ClientProcess::spawn(node(
        "kafkajs_client.js",
        &["long-poll", &server.kafka_bootstrap(), "poll", "0", &wait],
    ));
    assert_long_poll(&server, waiting);
}

/// Record timestamps, 1 s apart from an arbitrary past instant, in offset order. Only the
/// Kafka side shows them: the native RecordOut.timestamp_ms is the server's append time by
/// the schema's definition, so these tests read them through ListOffsets.
const TIMESTAMP_BASE_MS: i64 = 1_700_000_000_000;
const TIMESTAMPED_RECORD_COUNT: i64 = 5;

fn timestamped_input() -> String {
    (0..TIMESTAMPED_RECORD_COUNT)
        .map(|index| {
            let request = json!({
                "key": format!("event-{index}"),
                "value": format!("at-{index}"),
                "partition": 0,
                "timestamp_ms": TIMESTAMP_BASE_MS + index * 1000,
            });
            format!("{request}\n")
        })
        .collect()
}

/// Targets and the offset ListOffsets must answer for each: the first record whose
/// timestamp is at or after the target; none after the last (a Kafka broker answers offset
/// -1 and timestamp -1, which Java's offsetsForTimes reports as null and kafka-python as
/// None).
fn timestamp_targets() -> Vec<(i64, Option<u64>)> {
    vec![
        (TIMESTAMP_BASE_MS - 60_000, Some(0)),
        (TIMESTAMP_BASE_MS, Some(0)),
        (TIMESTAMP_BASE_MS + 1, Some(1)),
        (TIMESTAMP_BASE_MS + 2000, Some(2)),
        (TIMESTAMP_BASE_MS + 3500, Some(4)),
        (TIMESTAMP_BASE_MS + 4000, Some(4)),
        (TIMESTAMP_BASE_MS + 4001, None),
    ]
}

/// The lookups found the first record at or after each target; `past_the_end` is what the
/// client reports for a target later than every record.
fn assert_offsets_for_times(lookups: &[Value], past_the_end: Option<u64>) {
    let found: Vec<(i64, Option<u64>)> = lookups
        .iter()
        .map(|lookup| {
            (
                lookup["timestamp_ms"].as_i64().expect("timestamp_ms"),
                lookup["offset"].as_u64(),
            )
        })
        .collect();
    let expected: Vec<(i64, Option<u64>)> = timestamp_targets()
        .into_iter()
        .map(|(target, offset)| (target, offset.or(past_the_end)))
        .collect();
    assert_eq!(found, expected, "{lookups:?}");
}

/// Produces the timestamped records with `make`'s client (`python3 kafka_python_client.py`
/// or `node kafkajs_client.js` with the arguments given), checks they got offsets 0..,
/// and returns the client's lookups of every target.
fn produce_timestamped_then_look_up(
    make: impl Fn(&[&str]) -> Command,
    bootstrap: &str,
) -> Vec<Value> {
    let produced = json_lines(&run_to_end(
        make(&["produce", bootstrap, "times"]),
        &timestamped_input(),
    ));
    let offsets: Vec<u64> = produced
        .iter()
        .map(|report| report["offset"].as_u64().expect("offset"))
        .collect();
    assert_eq!(offsets, [0, 1, 2, 3, 4]);
    let targets = target_args();
    let mut args = vec!["times", bootstrap, "times", "0"];
    args.extend(targets.iter().map(String::as_str));
    json_lines(&run_to_end(make(&args), ""))
}

fn target_args() -> Vec<String> {
    timestamp_targets()
        .iter()
        .map(|(target, _)| target.to_string())
        .collect()
}

#[test]
fn kafka_python_offsets_for_times_finds_the_first_record_at_or_after_a_timestamp() {
    let server = TestServer::start();
    create_topic(&server, "times", 1);
    let lookups = produce_timestamped_then_look_up(
        |args| python("kafka_python_client.py", args),
        &server.kafka_bootstrap(),
    );
    assert_offsets_for_times(&lookups, None);
    for (lookup, (_, expected)) in lookups.iter().zip(timestamp_targets()) {
        let record_timestamp = lookup["record_timestamp_ms"].as_i64();
        let expected_timestamp =
            expected.map(|offset| TIMESTAMP_BASE_MS + i64::try_from(offset).expect("small") * 1000);
        assert_eq!(record_timestamp, expected_timestamp, "{lookup}");
    }
}

#[test]
fn kafkajs_offsets_by_timestamp_finds_the_first_record_at_or_after_a_timestamp() {
    let server = TestServer::start();
    create_topic(&server, "times", 1);
    let lookups = produce_timestamped_then_look_up(
        |args| node("kafkajs_client.js", args),
        &server.kafka_bootstrap(),
    );
    // kafkajs turns the broker's "none" (-1) into the partition's end offset.
    let end_offset = u64::try_from(TIMESTAMPED_RECORD_COUNT).expect("positive");
    assert_offsets_for_times(&lookups, Some(end_offset));
}

/// The README's Kafka examples, run as a reader of the README would: the first booking of
/// a seat wins, the second is told it is taken (exit status 3), from confluent-kafka and
/// from kafkajs alike, and the log holds the winner only.
#[test]
fn the_readme_conditional_produce_examples_book_a_seat_once() {
    let server = TestServer::start();
    create_topic(&server, "seats", 4);
    let bootstrap = server.kafka_bootstrap();
    let example = |file: &str| {
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("examples/kafka")
            .join(file)
    };
    let run = |mut command: Command| {
        let output = command.output().expect("example runs");
        let stdout = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        (
            output.status.code(),
            stdout,
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let book = |tool: &str, seat: &str, passenger: &str| {
        let mut command = if tool == "python" {
            let mut command = Command::new("python3");
            command.arg(example("conditional_produce.py"));
            command
        } else {
            let mut command = Command::new("node");
            command
                .env("NODE_PATH", kafka_script("js/node_modules"))
                .arg(example("conditional_produce.js"));
            command
        };
        command.args([bootstrap.as_str(), "seats", seat, passenger]);
        run(command)
    };
    let partition = partition_for_key(b"12A", 4);
    for (first, second, seat) in [("python", "node", "12A"), ("node", "python", "14C")] {
        let (code, stdout, stderr) = book(first, seat, "alice");
        assert_eq!(code, Some(0), "{first}: {stdout} {stderr}");
        let partition_seat = partition_for_key(seat.as_bytes(), 4);
        assert_eq!(
            stdout,
            format!("booked {seat} at {partition_seat}/0"),
            "{stderr}"
        );
        let (code, stdout, stderr) = book(second, seat, "bob");
        assert_eq!(code, Some(3), "{second}: {stdout} {stderr}");
        assert_eq!(stdout, format!("taken {seat}"), "{stderr}");
    }
    let booked = native(&server)
        .read_key("seats", Some(partition), b"12A", false)
        .expect("native read_key")
        .expect("12A is booked");
    assert_eq!(booked.value, b"alice");
}
