//! Online backup against real servers: `cairn backup` copies a running `cairn serve`
//! under load, a second server on the copy serves every record acknowledged before the
//! backup began (same offsets, keys, values, conditions, committed group offsets,
//! producer-id reservations); a server killed during a backup leaves a copy no server
//! opens; BackupRead refuses ranges outside the synced log.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_client::{AppendResult, BlockingClient, ClientConfig, ClientError, PartitionOffset};
use cairn_engine::core::Offset;
use cairn_engine::{KeyCondition, RecordInput, ShardId};
use cairn_wire::{BackupReadRequest, ErrorCode, partition_for_key};
use kafka_protocol::messages::{ApiKey, OffsetCommitResponse};
use serde_json::Value;

use crate::group_offsets::{commit_codes, offset_commit};
use crate::kafka_protocol::KafkaConnection;
use crate::support::server::{CAIRN_BIN, TestServer, serve_until_exit};

const TOPIC: &str = "accounts";
const PARTITION_COUNT: u32 = 4;
const KEY_COUNT: usize = 40;

fn native(server: &TestServer) -> BlockingClient {
    BlockingClient::connect(ClientConfig::new(server.address)).expect("native client connects")
}

fn run_backup(server: &TestServer, dest: &Path) -> Output {
    Command::new(CAIRN_BIN)
        .args(["--addr", &server.address.to_string(), "--json", "backup"])
        .arg(dest)
        .output()
        .expect("cairn backup runs")
}

/// One acknowledged append, and whether it was acknowledged before the backup began.
#[derive(Clone, Debug)]
struct Acknowledged {
    partition: u32,
    offset: Offset,
    key: Vec<u8>,
    value: Vec<u8>,
    before_backup: bool,
}

/// Appends to random keys, each conditional on the key's latest offset as this writer
/// last saw it, until `stop`; returns every acknowledged append.
fn write_until(
    server_address: std::net::SocketAddr,
    stop: &AtomicBool,
    backup_started: &AtomicBool,
    acknowledged: &Mutex<Vec<Acknowledged>>,
) {
    let mut client =
        BlockingClient::connect(ClientConfig::new(server_address)).expect("writer connects");
    let mut latest: HashMap<usize, Offset> = HashMap::new();
    let mut sequence = 0u64;
    // The value is padded so that segments (2 MiB in tests) roll during the backup.
    let padding = vec![b'.'; 900];
    while !stop.load(Ordering::SeqCst) {
        sequence += 1;
        let key_index = usize::try_from(sequence.wrapping_mul(7919) % KEY_COUNT as u64).unwrap();
        let key = format!("account-{key_index}").into_bytes();
        let mut value = format!("v{sequence}-").into_bytes();
        value.extend_from_slice(&padding);
        let condition = latest
            .get(&key_index)
            .map_or(KeyCondition::NoKey, |offset| KeyCondition::At(*offset));
        let record = RecordInput {
            key: &key,
            value: &value,
            headers: &[],
            condition,
            ..RecordInput::default()
        };
        match client.append(TOPIC, None, None, &[record]) {
            Ok(AppendResult::Appended {
                partition,
                base_offset,
                ..
            }) => {
                // Read after the acknowledgement arrived: false means the backup had not
                // begun when it did.
                let before_backup = !backup_started.load(Ordering::SeqCst);
                latest.insert(key_index, base_offset);
                acknowledged.lock().unwrap().push(Acknowledged {
                    partition,
                    offset: base_offset,
                    key,
                    value,
                    before_backup,
                });
            }
            Ok(AppendResult::Conflict { message, .. }) => {
                panic!("the only writer's condition failed: {message}")
            }
            Err(error) => panic!("append failed: {error}"),
        }
    }
}

fn all_records(client: &mut BlockingClient, partition: u32) -> Vec<cairn_client::FetchedRecord> {
    let mut records = Vec::new();
    let mut from = Offset(0);
    loop {
        let fetched = client
            .fetch(TOPIC, partition, from, 1024 * 1024, Duration::ZERO)
            .expect("fetch");
        if fetched.records.is_empty() {
            return records;
        }
        from = fetched.records.last().unwrap().offset.plus(1);
        records.extend(fetched.records);
    }
}

#[test]
fn backup_under_load_restores_every_record_acknowledged_before_it() {
    let temp = tempfile::tempdir().unwrap();
    let source = TestServer::start_on(&temp.path().join("source"), &[]);
    let mut client = native(&source);
    client.create_topic(TOPIC, PARTITION_COUNT).unwrap();
    let producer_before = client.init_producer().unwrap();
    let group = "billing";
    let commits = [
        PartitionOffset {
            partition: 0,
            offset: 17,
            metadata: "m0",
        },
        PartitionOffset {
            partition: 3,
            offset: 5,
            metadata: "",
        },
    ];
    client.commit_offsets(group, TOPIC, &commits).unwrap();
    // And one through Kafka's OffsetCommit, on the group's coordinator broker.
    let kafka_group = "kafka-billing";
    let coordinator = partition_for_key(kafka_group.as_bytes(), 2) as usize;
    let mut kafka = KafkaConnection::connect(source.kafka_ports[coordinator]);
    let response: OffsetCommitResponse = kafka.call(
        ApiKey::OffsetCommit,
        8,
        &offset_commit(kafka_group, TOPIC, 2, 42),
    );
    assert_eq!(commit_codes(&response), [0]);

    let stop = Arc::new(AtomicBool::new(false));
    let backup_started = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let writer = {
        let (stop, started, acknowledged) =
            (stop.clone(), backup_started.clone(), acknowledged.clone());
        let address = source.address;
        std::thread::spawn(move || write_until(address, &stop, &started, &acknowledged))
    };
    // Enough before the backup for several segment rolls per shard.
    while acknowledged.lock().unwrap().len() < 3000 {
        std::thread::sleep(Duration::from_millis(20));
    }
    backup_started.store(true, Ordering::SeqCst);
    let dest = temp.path().join("backup");
    let output = run_backup(&source, &dest);
    assert!(
        output.status.success(),
        "cairn backup failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Appends went on during the backup; a few more after it.
    let count_after_backup = acknowledged.lock().unwrap().len();
    while acknowledged.lock().unwrap().len() < count_after_backup + 200 {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.iter().any(|ack| !ack.before_backup),
        "the writer kept appending during the backup"
    );

    let report: Value = serde_json::from_slice(&output.stdout).expect("backup prints JSON");
    let mut backup_point: HashMap<u32, u64> = HashMap::new();
    for entry in report["partitions"].as_array().unwrap() {
        if entry["topic"] == TOPIC {
            let partition = u32::try_from(entry["partition"].as_u64().unwrap()).unwrap();
            backup_point.insert(partition, entry["end_offset"].as_u64().unwrap());
        }
    }
    assert_eq!(backup_point.len(), PARTITION_COUNT as usize, "{report}");
    assert!(!dest.join("backup-incomplete").exists());

    let restored = TestServer::start_on(&dest, &[]);
    let mut restored_client = native(&restored);
    for partition in 0..PARTITION_COUNT {
        let original = all_records(&mut client, partition);
        let copy = all_records(&mut restored_client, partition);
        let point = backup_point[&partition];
        // Recovery on the copy ends exactly at the backup point, and the copy is the
        // original's prefix up to it: nothing torn, nothing reordered.
        assert_eq!(copy.len() as u64, point, "partition {partition}");
        assert_eq!(
            copy.as_slice(),
            &original[..copy.len()],
            "partition {partition}"
        );
        let end = restored_client
            .fetch(TOPIC, partition, Offset(point), 1024, Duration::ZERO)
            .unwrap()
            .synced_end;
        assert_eq!(end, Offset(point), "partition {partition}");
    }
    let mut copies: HashMap<(u32, u64), (Vec<u8>, Vec<u8>)> = HashMap::new();
    for partition in 0..PARTITION_COUNT {
        for record in all_records(&mut restored_client, partition) {
            copies.insert((partition, record.offset.0), (record.key, record.value));
        }
    }
    let before: Vec<&Acknowledged> = acknowledged
        .iter()
        .filter(|ack| ack.before_backup)
        .collect();
    assert!(before.len() >= 3000);
    for ack in &before {
        let copy = copies
            .get(&(ack.partition, ack.offset.0))
            .unwrap_or_else(|| panic!("acknowledged before the backup, missing: {ack:?}"));
        assert_eq!((&copy.0, &copy.1), (&ack.key, &ack.value), "{ack:?}");
    }

    // Conditions behave as on the original at the backup point: each key's latest record
    // is the latest of it below the point, and a condition on that offset holds.
    for key_index in 0..KEY_COUNT {
        let key = format!("account-{key_index}").into_bytes();
        let partition = client.partition_for(TOPIC, None, &key).unwrap();
        let expected = acknowledged
            .iter()
            .filter(|ack| ack.key == key && ack.offset.0 < backup_point[&partition])
            .map(|ack| ack.offset)
            .max();
        let latest = restored_client
            .read_key(TOPIC, None, &key, false)
            .unwrap()
            .map(|record| record.offset);
        assert_eq!(latest, expected, "key {key_index}");
        let condition = latest.map_or(KeyCondition::NoKey, KeyCondition::At);
        let record = RecordInput {
            key: &key,
            value: b"after restore",
            headers: &[],
            condition,
            ..RecordInput::default()
        };
        let appended = restored_client
            .append(TOPIC, None, None, &[record])
            .unwrap();
        assert!(
            matches!(appended, AppendResult::Appended { base_offset, .. } if base_offset.0 >= backup_point[&partition]),
            "key {key_index}: {appended:?}"
        );
        // And a stale one fails, as it would have on the original.
        let stale = RecordInput {
            key: &key,
            value: b"stale",
            headers: &[],
            condition: KeyCondition::NoKey,
            ..RecordInput::default()
        };
        let refused = restored_client.append(TOPIC, None, None, &[stale]).unwrap();
        assert!(
            matches!(refused, AppendResult::Conflict { .. }),
            "key {key_index}"
        );
    }

    // Committed group offsets live in the log and came along.
    let committed = restored_client
        .fetch_offsets(group, TOPIC, &[0, 1, 3])
        .unwrap();
    let offsets: Vec<Option<i64>> = committed.iter().map(|entry| entry.offset).collect();
    assert_eq!(offsets, [Some(17), None, Some(5)]);
    let committed = restored_client
        .fetch_offsets(kafka_group, TOPIC, &[2])
        .unwrap();
    assert_eq!(
        (committed[0].offset, committed[0].metadata.as_str()),
        (Some(42), "raw")
    );
    // The producer-id reservation came along: the copy never hands out an id again.
    let producer_after = restored_client.init_producer().unwrap();
    assert_ne!(producer_after.producer_id, producer_before.producer_id);
    assert!(
        producer_after.producer_id > producer_before.producer_id
            || producer_after.producer_id % 65_536 != producer_before.producer_id % 65_536
    );
}

#[test]
fn a_server_killed_during_a_backup_leaves_it_unservable() {
    let temp = tempfile::tempdir().unwrap();
    let mut source = TestServer::start_on(&temp.path().join("source"), &[]);
    let mut client = native(&source);
    client.create_topic(TOPIC, PARTITION_COUNT).unwrap();
    // About 40 MiB over both shards: far more than one BackupRead.
    let value = vec![b'x'; 512 * 1024];
    for index in 0..80u32 {
        let key = format!("k{index}").into_bytes();
        let record = RecordInput {
            key: &key,
            value: &value,
            headers: &[],
            condition: KeyCondition::Any,
            ..RecordInput::default()
        };
        client.append(TOPIC, None, None, &[record]).unwrap();
    }
    let dest = temp.path().join("backup");
    let mut backup = Command::new(CAIRN_BIN)
        .args(["--addr", &source.address.to_string(), "backup"])
        .arg(&dest)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Stop the server still while the copy is under way (the marker is the first file
    // the backup writes), then kill it.
    let marker = dest.join("backup-incomplete");
    while !marker.exists() {
        assert!(
            backup.try_wait().unwrap().is_none(),
            "backup ended before it began"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let paused = Command::new("kill")
        .args(["-STOP", &source.pid().to_string()])
        .status()
        .unwrap();
    assert!(paused.success());
    source.stop_with(9, Duration::from_secs(10));
    let output = backup.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "backup succeeded against a killed server"
    );
    assert!(stderr.contains("incomplete"), "{stderr}");
    assert!(marker.exists());

    let outcome = serve_until_exit(&dest, &[], Duration::from_secs(30));
    assert!(
        outcome.status.is_some_and(|status| !status.success()),
        "{outcome:?}"
    );
    assert!(
        outcome.stderr.contains("incomplete backup"),
        "{}",
        outcome.stderr
    );
}

#[test]
fn backup_reads_outside_the_synced_log_are_refused() {
    let server = TestServer::start();
    let mut client = native(&server);
    client.create_topic(TOPIC, 2).unwrap();
    let record = RecordInput {
        key: b"k",
        value: b"v",
        headers: &[],
        condition: KeyCondition::Any,
        ..RecordInput::default()
    };
    client.append(TOPIC, Some(0), None, &[record]).unwrap();
    let manifest = client.backup_begin().unwrap();
    assert_eq!(manifest.shard_count, 2);
    let shard = &manifest.shards[0];
    let current = *shard.segments.last().unwrap();
    assert!(current.length_bytes >= 8192, "{current:?}");
    let read = |client: &mut BlockingClient,
                shard: u16,
                segment_index: u64,
                position: u64,
                length_bytes: u32| {
        client.backup_read(BackupReadRequest {
            shard: ShardId(shard),
            segment_index,
            position,
            length_bytes,
        })
    };
    let header = read(&mut client, 0, current.segment_index, 0, 4096).unwrap();
    assert_eq!(&header[..8], b"CAIRNSEG");
    let code = |result: Result<Vec<u8>, ClientError>| match result {
        Err(ClientError::Server { code, .. }) => code,
        other => panic!("expected an error response, got {other:?}"),
    };
    // Past the synced end of the current segment.
    let past_end = read(
        &mut client,
        0,
        current.segment_index,
        current.length_bytes - 4096,
        8192,
    );
    assert_eq!(code(past_end), ErrorCode::BackupRangeUnavailable);
    // A segment beyond the current one (perhaps prepared, never synced into).
    let beyond = read(&mut client, 0, current.segment_index + 1, 0, 4096);
    assert_eq!(code(beyond), ErrorCode::BackupRangeUnavailable);
    let far = read(&mut client, 1, u64::MAX, u64::MAX - 1, 4096);
    assert_eq!(code(far), ErrorCode::BackupRangeUnavailable);
    assert_eq!(
        code(read(&mut client, 7, 0, 0, 4096)),
        ErrorCode::BadRequest
    );
    assert_eq!(code(read(&mut client, 0, 0, 0, 0)), ErrorCode::BadRequest);
    assert_eq!(
        code(read(&mut client, 0, 0, 0, 2 * 1024 * 1024)),
        ErrorCode::BadRequest
    );
    // The server still serves after the refusals.
    client.ping().unwrap();

    // A backup refuses a target that holds anything.
    let temp = tempfile::tempdir().unwrap();
    std::fs::write(temp.path().join("precious"), b"keep").unwrap();
    let output = run_backup(&server, temp.path());
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not empty"), "{stderr}");
    assert_eq!(
        std::fs::read(temp.path().join("precious")).unwrap(),
        b"keep"
    );
}
