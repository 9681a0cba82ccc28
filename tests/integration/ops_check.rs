//! Running it for real, part two: `cairn check` and `cairn dump` on data directories a real
//! `cairn serve` wrote: clean, with a byte flipped in the middle of a segment, with a
//! truncated segment, and while the server still holds the directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use cairn_client::{AppendResult, BlockingClient, ClientConfig};
use cairn_engine::{RecordHeader, RecordInput};
use serde_json::Value;

use crate::support::server::{CAIRN_BIN, TestServer};

/// `cairn check`'s exit status on damage.
const EXIT_DAMAGED: i32 = 65;

fn cairn(args: &[&str]) -> Output {
    Command::new(CAIRN_BIN)
        .args(args)
        .output()
        .expect("cairn runs")
}

fn client(address: SocketAddr) -> BlockingClient {
    BlockingClient::connect(ClientConfig::new(address)).expect("client connects")
}

fn append(client: &mut BlockingClient, partition: u32, records: &[RecordInput<'_>]) {
    match client
        .append("events", Some(partition), None, records)
        .unwrap()
    {
        AppendResult::Appended { .. } => {}
        AppendResult::Conflict { info, message } => panic!("conflict {info:?}: {message}"),
    }
}

fn stop(mut server: TestServer) {
    let status = server.stop_with(15, Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
}

/// A two-shard server's data directory holding `batch_count` batches of 16 records of
/// `value_len_bytes` each in partition 0 of topic `events` (keys `key-0`..`key-31`), and one
/// record in partition 1. The server is stopped.
fn written_data_dir(root: &Path, batch_count: usize, value_len_bytes: usize) -> PathBuf {
    let data_dir = root.join("data");
    let server = TestServer::start_on(&data_dir, &[]);
    let mut client = client(server.address);
    client.create_topic("events", 2).unwrap();
    let value = vec![b'v'; value_len_bytes];
    let keys: Vec<String> = (0..32).map(|index| format!("key-{index}")).collect();
    for batch in 0..batch_count {
        let records: Vec<RecordInput<'_>> = (0..16)
            .map(|index| RecordInput {
                key: keys[(batch * 16 + index) % 32].as_bytes(),
                value: &value,
                ..RecordInput::default()
            })
            .collect();
        append(&mut client, 0, &records);
    }
    append(
        &mut client,
        1,
        &[RecordInput {
            key: b"other",
            value: b"one",
            ..RecordInput::default()
        }],
    );
    drop(client);
    stop(server);
    data_dir
}

fn check_json(data_dir: &Path) -> (Option<i32>, Value) {
    let output = cairn(&["--json", "check", data_dir.to_str().unwrap()]);
    let report = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("check --json prints JSON ({error}): {output:?}"));
    (output.status.code(), report)
}

/// The shard and partition entry of topic `events` partition `partition` in a report.
fn partition_entry(report: &Value, partition: u64) -> (Value, Value) {
    for shard in report["shards"].as_array().unwrap() {
        for entry in shard["partitions"].as_array().unwrap() {
            if entry["topic"] == "events" && entry["partition"] == partition {
                return (shard.clone(), entry.clone());
            }
        }
    }
    panic!("no events/{partition} in {report}");
}

#[test]
fn check_passes_a_clean_directory_and_refuses_one_a_server_holds() {
    let temp = tempfile::tempdir().unwrap();
    let data_dir = written_data_dir(temp.path(), 10, 100);
    let path = data_dir.to_str().unwrap();

    let output = cairn(&["check", path]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("clean"), "{stdout}");
    assert!(
        stdout.contains("(topic events partition 0): offsets 0..160, 32 key(s), 10 batch(es)"),
        "{stdout}"
    );

    let (code, report) = check_json(&data_dir);
    assert_eq!(code, Some(0));
    assert_eq!(report["clean"], true);
    let (shard, entry) = partition_entry(&report, 0);
    assert_eq!(entry["offsets_start"], 0);
    assert_eq!(entry["offsets_end"], 160);
    assert_eq!(entry["key_count"], 32);
    assert!(shard["damage"].is_null());
    assert_eq!(shard["end"]["segment"], 0);
    assert!(shard["end"]["position"].as_u64().unwrap() > 4096);
    let (_, other) = partition_entry(&report, 1);
    assert_eq!(other["offsets_end"], 1);
    assert_eq!(other["key_count"], 1);

    // While a server runs on it, check refuses (and changes nothing).
    let server = TestServer::start_on(&data_dir, &[]);
    let output = cairn(&["check", path]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("in use by another cairn process"),
        "{stderr}"
    );
    stop(server);
    assert_eq!(check_json(&data_dir).0, Some(0));
}

/// Enough data in partition 0 for three 2 MiB segments of shard 0: damage in the first is
/// then beyond what a torn write can explain (the valid data in the third proves it).
fn three_segments(root: &Path) -> PathBuf {
    written_data_dir(root, 40, 8 * 1024)
}

/// The `--json` dump of a segment file: (position, len_bytes) of each batch.
fn segment_batches(segment: &Path) -> Vec<(u64, u64)> {
    let output = cairn(&["--json", "dump", "--segment", segment.to_str().unwrap()]);
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|object| object.get("position").is_some())
        .map(|batch| {
            (
                batch["position"].as_u64().unwrap(),
                batch["len_bytes"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn check_locates_a_flipped_byte_in_the_middle_of_a_segment() {
    let temp = tempfile::tempdir().unwrap();
    let data_dir = three_segments(temp.path());
    let (_, report) = check_json(&data_dir);
    let (shard, _) = partition_entry(&report, 0);
    let shard_dir = data_dir.join(format!("core-{}", shard["shard"]));
    assert!(shard["segment_count"].as_u64().unwrap() >= 3, "{shard}");
    assert!(shard["end"]["segment"].as_u64().unwrap() >= 2, "{shard}");

    let segment = shard_dir.join("00000000000000000000.seg");
    let batches = segment_batches(&segment);
    assert!(batches.len() > 4, "{batches:?}");
    let (position, len_bytes) = batches[batches.len() / 2];
    let mut bytes = std::fs::read(&segment).unwrap();
    let flipped = usize::try_from(position + len_bytes / 2).unwrap();
    bytes[flipped] ^= 0x01;
    std::fs::write(&segment, &bytes).unwrap();

    let (code, report) = check_json(&data_dir);
    assert_eq!(code, Some(EXIT_DAMAGED), "{report}");
    assert_eq!(report["clean"], false);
    let (shard, _) = partition_entry(&report, 0);
    let damage = &shard["damage"];
    assert_eq!(damage["path"], segment.to_str().unwrap(), "{damage}");
    assert_eq!(damage["position"], position, "{damage}");

    let output = cairn(&["check", data_dir.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(EXIT_DAMAGED));
    assert!(
        stdout.contains(&format!(
            "DAMAGE at {} position {position}",
            segment.display()
        )),
        "{stdout}"
    );
}

#[test]
fn check_finds_a_truncated_segment() {
    let temp = tempfile::tempdir().unwrap();
    let data_dir = three_segments(temp.path());
    let (_, report) = check_json(&data_dir);
    let (shard, _) = partition_entry(&report, 0);
    let segment = data_dir
        .join(format!("core-{}", shard["shard"]))
        .join("00000000000000000001.seg");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap();
    let len_bytes = file.metadata().unwrap().len();
    file.set_len(len_bytes / 2).unwrap();
    drop(file);

    let (code, report) = check_json(&data_dir);
    assert_eq!(code, Some(EXIT_DAMAGED), "{report}");
    let (shard, _) = partition_entry(&report, 0);
    let damage = &shard["damage"];
    assert_eq!(damage["path"], segment.to_str().unwrap(), "{damage}");
    assert!(
        damage["message"].as_str().unwrap().contains("bytes"),
        "the message says how short: {damage}"
    );
}

#[test]
fn dump_shows_the_records_a_server_wrote() {
    let temp = tempfile::tempdir().unwrap();
    let data_dir = temp.path().join("data");
    let server = TestServer::start_on(&data_dir, &[]);
    let mut client = client(server.address);
    client.create_topic("events", 2).unwrap();
    let headers = [RecordHeader {
        name: b"trace",
        value: b"t-1",
    }];
    for (key, value) in [
        ("k0", &b"first"[..]),
        ("k1", b"bin\x00\xff"),
        ("k0", b"third"),
    ] {
        append(
            &mut client,
            0,
            &[RecordInput {
                key: key.as_bytes(),
                value,
                headers: &headers,
                ..RecordInput::default()
            }],
        );
    }
    drop(client);
    stop(server);
    let path = data_dir.to_str().unwrap();

    let output = cairn(&["dump", path, "--topic", "events", "--partition", "0"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(
        stdout.contains("key=\"k0\" prev_key=- headers=[trace=t-1] value=\"first\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("value=\"bin\\x00\\xff\""),
        "escaped: {stdout}"
    );
    assert!(
        stdout.contains("offset 2 ") && stdout.contains("prev_key=0"),
        "{stdout}"
    );
    assert!(stdout.contains("prev_batch_crc=") && stdout.contains("3 batch(es)"));

    let output = cairn(&[
        "--json",
        "dump",
        path,
        "--topic",
        "events",
        "--partition",
        "0",
        "--from",
        "1",
        "--to",
        "2",
        "--hex",
    ]);
    let batches: Vec<Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(batches.len(), 1, "{batches:?}");
    let records = batches[0]["records"].as_array().unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["offset"], 1);
    assert_eq!(records[0]["key"], "6b31");
    assert_eq!(records[0]["value"], "62696e00ff");

    // The same batches, straight from the segment file they are in.
    let place = batches[0]["place"].as_str().unwrap();
    let segment = data_dir.join(place.split(' ').next().unwrap());
    let output = cairn(&["dump", "--segment", segment.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("value=\"third\"") && stdout.contains("3 valid batch(es)"),
        "{stdout}"
    );
}
