//! Retention under load and kill -9 (docs/DESIGN.md, "Retention"): a real two-shard
//! `cairn serve` whose shards each hold a partition that keeps everything and one whose
//! `retention.bytes` lets its oldest records go. Writers append to both, a reader fetches
//! both the whole time (through the rewrites and removals, and jumping to the log start
//! when told to), and the server is killed with SIGKILL at a random moment, so kills land
//! while segments are copied, swapped in and removed. After every restart: every
//! acknowledged record of the forever topic is there, byte for byte; the retained topic
//! holds every acknowledged record from its log start on, which never moves back; a
//! reader never saw a record other than the one acknowledged at its offset; and a key
//! whose records retention removed still fails `no_key`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_client::{AppendResult, BlockingClient, ClientError};
use cairn_engine::{KeyCondition, Offset, RecordInput, RetentionPolicy};

use crate::support::server::TestServer;
use crate::support::workload::connect;
use crate::support::{TestRng, test_seed};

const KEPT: &str = "kept";
const SHORT: &str = "short";
/// Two partitions each: with two shards, every shard's log interleaves both topics.
const PARTITION_COUNT: u32 = 2;
const SHORT_RETENTION_BYTES: u64 = 1024 * 1024;
const VALUE_BYTES: usize = 1_000;
const SERVER_ARGS: &[&str] = &[
    "--segment-size",
    "2101248",
    "--checkpoint-interval",
    "65536",
    "--retention-check-interval-ms",
    "20",
    "--retention-bytes-per-second",
    "0",
];

/// What the server acknowledged: (topic, partition, offset) -> value.
type Ledger = Arc<Mutex<HashMap<(&'static str, u32, u64), Vec<u8>>>>;

/// A partition as read: its log start and its records (offset, value) from there.
type PartitionRead = (Offset, Vec<(u64, Vec<u8>)>);

fn value(topic: &str, partition: u32, writer: u64, sequence: u64) -> Vec<u8> {
    let mut value = format!("{topic}/{partition}/{writer}/{sequence}/").into_bytes();
    value.resize(VALUE_BYTES, b'.');
    value
}

/// Every record of `topic`'s `partition` from its log start: the log start and the
/// records, or the connection's failure.
fn read_partition(
    client: &mut BlockingClient,
    topic: &str,
    partition: u32,
) -> Result<PartitionRead, ClientError> {
    let mut next = Offset(0);
    let mut start = Offset(0);
    let mut records = Vec::new();
    loop {
        match client.fetch(topic, partition, next, 1 << 20, Duration::ZERO) {
            Ok(fetched) => {
                if fetched.records.is_empty() {
                    return Ok((start, records));
                }
                for record in fetched.records {
                    records.push((record.offset.0, record.value));
                    next = record.offset.plus(1);
                }
            }
            Err(ClientError::BeforeLogStart { log_start, .. }) if records.is_empty() => {
                start = log_start;
                next = log_start;
            }
            Err(error) => return Err(error),
        }
    }
}

fn run_writer(
    address: std::net::SocketAddr,
    writer: u64,
    ledger: &Ledger,
    stop: &AtomicBool,
    round: u64,
) {
    let Ok(mut client) = connect(address) else {
        return;
    };
    let mut sequence = round * 1_000_000;
    while !stop.load(Ordering::SeqCst) {
        for topic in [KEPT, SHORT] {
            let partition = (writer % u64::from(PARTITION_COUNT)) as u32;
            let record_value = value(topic, partition, writer, sequence);
            let key = format!("key-{}", sequence % 16).into_bytes();
            let records = [RecordInput {
                key: &key,
                value: &record_value,
                ..RecordInput::default()
            }];
            match client.append(topic, Some(partition), None, &records) {
                Ok(AppendResult::Appended { base_offset, .. }) => {
                    ledger
                        .lock()
                        .unwrap()
                        .insert((topic, partition, base_offset.0), record_value);
                }
                Ok(other) => panic!("an unconditional append was refused: {other:?}"),
                // The server was killed: whatever this append did is not acknowledged.
                Err(_) => return,
            }
            sequence += 1;
        }
    }
}

/// Fetches every partition round and round while the server rewrites segments: what it
/// sees must be what was acknowledged at that offset. Returns how many records it checked.
fn run_reader(address: std::net::SocketAddr, ledger: &Ledger, stop: &AtomicBool) -> u64 {
    let Ok(mut client) = connect(address) else {
        return 0;
    };
    let mut next: HashMap<(&str, u32), Offset> = HashMap::new();
    let mut checked = 0;
    while !stop.load(Ordering::SeqCst) {
        for topic in [KEPT, SHORT] {
            for partition in 0..PARTITION_COUNT {
                let from = *next.get(&(topic, partition)).unwrap_or(&Offset(0));
                match client.fetch(topic, partition, from, 256 * 1024, Duration::ZERO) {
                    Ok(fetched) => {
                        let ledger = ledger.lock().unwrap();
                        for record in fetched.records {
                            if let Some(acknowledged) =
                                ledger.get(&(topic, partition, record.offset.0))
                            {
                                assert_eq!(
                                    &record.value, acknowledged,
                                    "{topic}/{partition} offset {} read other bytes than \
                                     were acknowledged there",
                                    record.offset
                                );
                                checked += 1;
                            }
                            next.insert((topic, partition), record.offset.plus(1));
                        }
                    }
                    Err(ClientError::BeforeLogStart { log_start, .. }) => {
                        assert_eq!(topic, SHORT, "the forever topic lost its start");
                        assert!(log_start > from);
                        next.insert((topic, partition), log_start);
                    }
                    // Killed under it.
                    Err(_) => return checked,
                }
            }
        }
    }
    checked
}

#[test]
fn kill_9_while_retention_rewrites_under_load_keeps_every_acknowledged_record_it_should() {
    let seed = test_seed("reliability_retention::kill_9_while_retention_rewrites");
    let mut rng = TestRng::new(seed);
    let temp = tempfile::tempdir().unwrap();
    let data_dir = temp.path().join("data");
    let ledger: Ledger = Arc::default();
    let mut log_starts = [Offset(0); PARTITION_COUNT as usize];
    let mut old_offsets = [0u64; PARTITION_COUNT as usize];
    let mut checked_by_readers = 0;
    let started = Instant::now();
    let round_count = 5;
    for round in 0..round_count {
        let mut server = TestServer::start_on(&data_dir, SERVER_ARGS);
        let mut client = connect(server.address).unwrap();
        if round == 0 {
            client.create_topic(KEPT, PARTITION_COUNT).unwrap();
            let retention = RetentionPolicy {
                ms: None,
                bytes: Some(SHORT_RETENTION_BYTES),
            };
            client
                .create_topic_with(SHORT, PARTITION_COUNT, retention)
                .unwrap();
            for partition in 0..PARTITION_COUNT {
                let record = [RecordInput {
                    key: b"old",
                    value: b"written once, first",
                    condition: KeyCondition::NoKey,
                    ..RecordInput::default()
                }];
                let Ok(AppendResult::Appended { base_offset, .. }) =
                    client.append(SHORT, Some(partition), None, &record)
                else {
                    panic!("the first append failed");
                };
                old_offsets[partition as usize] = base_offset.0;
            }
        }
        check(
            &mut client,
            &ledger,
            &mut log_starts,
            &format!("round {round} (seed {seed})"),
        );
        drop(client);

        let stop = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        for writer in 0..4 {
            let (ledger, stop) = (ledger.clone(), stop.clone());
            let address = server.address;
            writers.push(std::thread::spawn(move || {
                run_writer(address, writer, &ledger, &stop, round);
            }));
        }
        let reader = {
            let (ledger, stop) = (ledger.clone(), stop.clone());
            let address = server.address;
            std::thread::spawn(move || run_reader(address, &ledger, &stop))
        };
        std::thread::sleep(Duration::from_millis(600 + rng.below(1_200)));
        server.stop_with(9, Duration::from_secs(20));
        stop.store(true, Ordering::SeqCst);
        for writer in writers {
            writer.join().expect("writer thread");
        }
        checked_by_readers += reader.join().expect("reader thread");
    }

    let server = TestServer::start_on(&data_dir, SERVER_ARGS);
    let mut client = connect(server.address).unwrap();
    check(
        &mut client,
        &ledger,
        &mut log_starts,
        &format!("final (seed {seed})"),
    );
    assert!(
        log_starts.iter().any(|start| *start > Offset(0)),
        "retention removed nothing in {round_count} rounds"
    );
    assert!(checked_by_readers > 0, "the readers checked nothing");
    for partition in 0..PARTITION_COUNT {
        if log_starts[partition as usize].0 <= old_offsets[partition as usize] {
            continue;
        }
        let again = [RecordInput {
            key: b"old",
            value: b"again",
            condition: KeyCondition::NoKey,
            ..RecordInput::default()
        }];
        let outcome = client.append(SHORT, Some(partition), None, &again).unwrap();
        assert!(
            matches!(outcome, AppendResult::Conflict { .. }),
            "no_key passed for a key retention removed the records of: {outcome:?}"
        );
    }
    eprintln!(
        "{round_count} rounds in {:?}: log starts {log_starts:?}, {checked_by_readers} records \
         checked by readers during rewrites",
        started.elapsed()
    );
}

/// The recovered log against the ledger; moves `log_starts` (which must not go back).
fn check(client: &mut BlockingClient, ledger: &Ledger, log_starts: &mut [Offset], context: &str) {
    let ledger = ledger.lock().unwrap();
    for topic in [KEPT, SHORT] {
        for partition in 0..PARTITION_COUNT {
            let (start, records) = read_partition(client, topic, partition).unwrap();
            if topic == KEPT {
                assert_eq!(
                    start,
                    Offset(0),
                    "{context}: the forever topic lost its start"
                );
            } else {
                let previous = &mut log_starts[partition as usize];
                assert!(
                    start >= *previous,
                    "{context}: {topic}/{partition}'s log start went back from {previous} to \
                     {start}"
                );
                *previous = start;
            }
            let held: HashMap<u64, &Vec<u8>> = records
                .iter()
                .map(|(offset, value)| (*offset, value))
                .collect();
            for (expected, (offset, _)) in (start.0..).zip(&records) {
                assert_eq!(
                    *offset, expected,
                    "{context}: {topic}/{partition} has a gap"
                );
            }
            for ((acknowledged_topic, acknowledged_partition, offset), value) in ledger.iter() {
                if *acknowledged_topic != topic
                    || *acknowledged_partition != partition
                    || *offset < start.0
                {
                    continue;
                }
                assert_eq!(
                    held.get(offset).copied(),
                    Some(value),
                    "{context}: acknowledged record {topic}/{partition}@{offset} is lost or changed"
                );
            }
        }
    }
}
