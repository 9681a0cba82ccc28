//! The real server process over real TCP: every request kind through the client, conditional
//! races across connections, long-poll, restart, forwarding and shard-aware routing, the CLI.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_client::{AppendResult, BlockingClient, ClientConfig, ClientError};
use cairn_engine::{KeyCondition, Offset, RecordHeader, RecordInput};
use cairn_wire::{
    ConflictInfo, Encoder, ErrorCode, FetchRequest, Request, RequestBody, Response, ResponseBody,
    decode_response,
};

use crate::support::server::{CAIRN_BIN, TestServer};

fn client(address: SocketAddr) -> BlockingClient {
    BlockingClient::connect(ClientConfig::new(address)).expect("client connects")
}

fn record<'a>(key: &'a [u8], value: &'a [u8], condition: KeyCondition) -> RecordInput<'a> {
    RecordInput {
        key,
        value,
        headers: &[],
        condition,
        ..RecordInput::default()
    }
}

fn appended_offset(result: AppendResult) -> Offset {
    match result {
        AppendResult::Appended { base_offset, .. } => base_offset,
        AppendResult::Conflict { info, message } => {
            panic!("unexpected conflict {info:?}: {message}")
        }
    }
}

#[test]
fn every_request_kind_round_trips_through_the_client() {
    let server = TestServer::start();
    let mut client = client(server.address);
    client.ping().unwrap();
    let topic = client.create_topic("orders", 4).unwrap();
    assert_eq!(topic.partitions.len(), 4);
    assert!(matches!(
        client.create_topic("orders", 4),
        Err(ClientError::Server {
            code: ErrorCode::TopicExists,
            ..
        })
    ));
    let metadata = client.metadata().unwrap();
    assert_eq!(metadata.shard_ports, server.shard_ports);
    let shards: BTreeSet<u16> = metadata.topics[0]
        .partitions
        .iter()
        .map(|partition| partition.shard)
        .collect();
    assert_eq!(shards.len(), 2, "partitions are spread over both shards");

    let headers = [RecordHeader {
        name: b"type",
        value: b"created",
    }];
    let first = RecordInput {
        headers: &headers,
        ..record(b"order-1", b"v0", KeyCondition::NoKey)
    };
    let base = appended_offset(client.append("orders", None, None, &[first]).unwrap());
    let second = record(b"order-1", b"v1", KeyCondition::At(base));
    let next = appended_offset(client.append("orders", None, None, &[second]).unwrap());
    assert_eq!(next, base.plus(1));

    // A stale condition is a conflict value carrying the current offset.
    match client
        .append(
            "orders",
            None,
            None,
            &[record(b"order-1", b"v2", KeyCondition::At(base))],
        )
        .unwrap()
    {
        AppendResult::Conflict {
            info:
                ConflictInfo::Key {
                    record_index,
                    current_offset,
                    ..
                },
            ..
        } => {
            assert_eq!(record_index, 0);
            assert_eq!(current_offset, Some(next));
        }
        other => panic!("expected a key conflict, got {other:?}"),
    }
    let partition = cairn_wire::partition_for_key(b"order-1", 4);
    match client
        .append(
            "orders",
            Some(partition),
            Some(Offset(7)),
            &[record(b"x", b"y", KeyCondition::Any)],
        )
        .unwrap()
    {
        AppendResult::Conflict {
            info: ConflictInfo::EndOffset { current_end_offset },
            ..
        } => {
            assert_eq!(current_end_offset, next.plus(1));
        }
        other => panic!("expected an end-offset conflict, got {other:?}"),
    }

    let fetched = client
        .fetch("orders", partition, Offset(0), 1 << 20, Duration::ZERO)
        .unwrap();
    assert_eq!(fetched.synced_end, next.plus(1));
    let values: Vec<&[u8]> = fetched.records.iter().map(|r| r.value.as_slice()).collect();
    assert_eq!(values, vec![b"v0".as_slice(), b"v1".as_slice()]);
    assert_eq!(
        fetched.records[0].headers,
        vec![(b"type".to_vec(), b"created".to_vec())]
    );
    assert_eq!(fetched.records[1].prev_key_offset, Some(base));

    let latest = client
        .read_key("orders", None, b"order-1", false)
        .unwrap()
        .unwrap();
    assert_eq!(
        (latest.offset, latest.value.as_slice()),
        (next, b"v1".as_slice())
    );
    assert!(
        client
            .read_key("orders", None, b"nobody", true)
            .unwrap()
            .is_none()
    );
    let history = client.key_history("orders", None, b"order-1", 10).unwrap();
    let offsets: Vec<Offset> = history.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, vec![next, base]);

    assert!(matches!(
        client.fetch("nope", 0, Offset(0), 1024, Duration::ZERO),
        Err(ClientError::UnknownTopic(_))
            | Err(ClientError::Server {
                code: ErrorCode::UnknownTopic,
                ..
            })
    ));
    assert!(matches!(
        client.fetch("orders", 9, Offset(0), 1024, Duration::ZERO),
        Err(ClientError::Server {
            code: ErrorCode::UnknownPartition,
            ..
        })
    ));
}

#[test]
fn concurrent_connections_racing_on_one_key_have_one_winner_per_expected_offset() {
    let server = TestServer::start();
    client(server.address).create_topic("seats", 2).unwrap();
    let winners = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..16)
        .map(|writer| {
            let winners = winners.clone();
            let address = server.address;
            std::thread::spawn(move || {
                let mut client = client(address);
                for attempt in 0..15 {
                    let expected = client
                        .read_key("seats", None, b"12A", false)
                        .unwrap()
                        .map(|record| record.offset);
                    let value = format!("writer {writer} attempt {attempt}");
                    let condition = expected.map_or(KeyCondition::NoKey, KeyCondition::At);
                    let result = client.append(
                        "seats",
                        None,
                        None,
                        &[record(b"12A", value.as_bytes(), condition)],
                    );
                    if let AppendResult::Appended { base_offset, .. } = result.unwrap() {
                        winners.lock().unwrap().push((expected, base_offset));
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let mut winners = winners.lock().unwrap().clone();
    winners.sort_by_key(|(_, offset)| *offset);
    assert!(winners.len() >= 2);
    let mut previous = None;
    for (expected, offset) in &winners {
        assert_eq!(
            *expected, previous,
            "the winner at {offset:?} expected the previous winner"
        );
        previous = Some(*offset);
    }
    let history = client(server.address)
        .key_history("seats", None, b"12A", 1000)
        .unwrap();
    assert_eq!(history.len(), winners.len());
}

#[test]
fn a_long_poll_fetch_wakes_when_a_record_is_appended() {
    let server = TestServer::start();
    let mut writer = client(server.address);
    writer.create_topic("feed", 1).unwrap();
    let address = server.address;
    let reader = std::thread::spawn(move || {
        let mut reader = client(address);
        reader
            .fetch("feed", 0, Offset(0), 1 << 20, Duration::from_secs(20))
            .unwrap()
    });
    // The reader is parked (nothing to return yet) or not yet connected; either way the
    // append below is what ends its wait, long before the 20 s limit.
    std::thread::sleep(Duration::from_millis(100));
    appended_offset(
        writer
            .append(
                "feed",
                Some(0),
                None,
                &[record(b"k", b"hello", KeyCondition::Any)],
            )
            .unwrap(),
    );
    let fetched = reader.join().unwrap();
    assert_eq!(fetched.records.len(), 1);
    assert_eq!(fetched.records[0].value, b"hello");
}

#[test]
fn a_long_poll_ends_when_its_client_stops_sending() {
    // A client that shuts down its sending side has left or will send nothing more: its
    // long polls answer at once (with no records) rather than keep their memory for 30 s.
    let server = TestServer::start();
    let topic = client(server.address).create_topic("idle", 1).unwrap();
    let owner = SocketAddr::new(server.address.ip(), topic.partitions[0].port);
    let mut stream = std::net::TcpStream::connect(owner).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut frame = Vec::new();
    Encoder::new().write_request_frame(
        &Request {
            correlation_id: 5,
            body: RequestBody::Fetch(FetchRequest {
                topic: "idle",
                partition: 0,
                offset: Offset(0),
                size_bytes_max: 1024,
                wait_max: Duration::from_secs(30),
            }),
        },
        &mut frame,
    );
    stream.write_all(&frame).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let started = Instant::now();
    let mut length = [0u8; 4];
    stream
        .read_exact(&mut length)
        .expect("answered before the read timeout");
    let mut response = vec![0u8; u32::from_le_bytes(length) as usize];
    stream.read_exact(&mut response).unwrap();
    let answered_after = started.elapsed();
    match decode_response(&response).unwrap() {
        Response {
            correlation_id: 5,
            body: ResponseBody::Fetched(fetched),
        } => assert!(fetched.records.is_empty()),
        other => panic!("expected an empty Fetched, got {other:?}"),
    }
    assert!(
        answered_after < Duration::from_secs(5),
        "answered after {answered_after:?}"
    );
}

#[test]
fn acknowledged_appends_survive_a_restart_and_a_kill() {
    let temp = tempfile::tempdir().unwrap();
    let data_dir = temp.path().join("data");
    let mut acknowledged = Vec::new();
    for round in 0..3 {
        let mut server = TestServer::start_on(&data_dir, &[]);
        let mut client = client(server.address);
        if round == 0 {
            client.create_topic("ledger", 3).unwrap();
        }
        for partition in 0..3u32 {
            let fetched = client
                .fetch("ledger", partition, Offset(0), 1 << 20, Duration::ZERO)
                .unwrap();
            let mut expected: Vec<&(u32, Offset, Vec<u8>)> = acknowledged
                .iter()
                .filter(|(p, _, _)| *p == partition)
                .collect();
            expected.sort_by_key(|(_, offset, _)| *offset);
            let actual: Vec<(Offset, &[u8])> = fetched
                .records
                .iter()
                .map(|r| (r.offset, r.value.as_slice()))
                .collect();
            let expected: Vec<(Offset, &[u8])> = expected
                .iter()
                .map(|(_, offset, value)| (*offset, value.as_slice()))
                .collect();
            assert_eq!(actual, expected, "round {round} partition {partition}");
        }
        for index in 0..30u32 {
            let partition = index % 3;
            let value = format!("round {round} record {index}").into_bytes();
            let offset = appended_offset(
                client
                    .append(
                        "ledger",
                        Some(partition),
                        None,
                        &[record(b"k", &value, KeyCondition::Any)],
                    )
                    .unwrap(),
            );
            acknowledged.push((partition, offset, value));
        }
        drop(client);
        // Alternate a clean stop (SIGTERM, exit 0) with a crash (SIGKILL).
        if round % 2 == 0 {
            let status = server.stop_with(15, Duration::from_secs(20));
            assert!(
                status.success(),
                "SIGTERM stops the server cleanly: {status:?}"
            );
        } else {
            server.stop_with(9, Duration::from_secs(20));
        }
    }
}

#[test]
fn forwarded_and_shard_aware_requests_agree() {
    let server = TestServer::start();
    client(server.address).create_topic("spread", 8).unwrap();
    let mut forwarding = {
        let mut config = ClientConfig::new(server.address);
        config.shard_aware = false;
        BlockingClient::connect(config).unwrap()
    };
    let mut direct = client(server.address);
    // Through one shard's own port, every partition: half of them live on the other shard.
    let mut one_port = {
        let mut config =
            ClientConfig::new(SocketAddr::new(server.address.ip(), server.shard_ports[0]));
        config.shard_aware = false;
        BlockingClient::connect(config).unwrap()
    };
    for partition in 0..8u32 {
        let value = format!("p{partition}");
        let first = appended_offset(
            forwarding
                .append(
                    "spread",
                    Some(partition),
                    Some(Offset(0)),
                    &[record(b"a", value.as_bytes(), KeyCondition::NoKey)],
                )
                .unwrap(),
        );
        let second = appended_offset(
            direct
                .append(
                    "spread",
                    Some(partition),
                    Some(Offset(1)),
                    &[record(b"a", value.as_bytes(), KeyCondition::At(first))],
                )
                .unwrap(),
        );
        let third = appended_offset(
            one_port
                .append(
                    "spread",
                    Some(partition),
                    Some(Offset(2)),
                    &[record(b"a", value.as_bytes(), KeyCondition::At(second))],
                )
                .unwrap(),
        );
        assert_eq!((first, second, third), (Offset(0), Offset(1), Offset(2)));
        for reader in [&mut forwarding, &mut direct, &mut one_port] {
            let fetched = reader
                .fetch("spread", partition, Offset(0), 1 << 20, Duration::ZERO)
                .unwrap();
            assert_eq!(fetched.records.len(), 3, "partition {partition}");
            assert!(fetched.records.iter().all(|r| r.value == value.as_bytes()));
        }
    }
}

fn cairn_cli(server: &TestServer, args: &[&str]) -> std::process::Output {
    Command::new(CAIRN_BIN)
        .arg("--addr")
        .arg(server.address.to_string())
        .args(args)
        .output()
        .expect("cairn CLI runs")
}

#[test]
fn the_cli_books_a_seat_once_and_reports_the_conflict_with_exit_status_3() {
    let server = TestServer::start();
    let created = cairn_cli(&server, &["topic", "create", "seats", "--partitions", "4"]);
    assert!(created.status.success(), "{created:?}");
    let book = |who: &str| {
        cairn_cli(
            &server,
            &[
                "append",
                "seats",
                "--key",
                "12A",
                "--expect",
                "no-key",
                "--header",
                "type=booked",
                who,
            ],
        )
    };
    let alice = book("alice");
    assert!(alice.status.success(), "{alice:?}");
    assert!(String::from_utf8_lossy(&alice.stdout).contains("offset 0"));
    let bob = book("bob");
    assert_eq!(bob.status.code(), Some(3), "{bob:?}");
    let complaint = String::from_utf8_lossy(&bob.stderr);
    assert!(
        complaint.contains("no-key") && complaint.contains("offset 0"),
        "{complaint}"
    );

    let partition = cairn_cli(&server, &["partition-of", "seats", "12A"]);
    let partition = String::from_utf8_lossy(&partition.stdout).trim().to_owned();
    let fetched = cairn_cli(
        &server,
        &[
            "--json",
            "fetch",
            "seats",
            "--partition",
            &partition,
            "--from",
            "0",
        ],
    );
    assert!(fetched.status.success(), "{fetched:?}");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&fetched.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["value"], "alice");
    assert_eq!(lines[0]["headers"]["type"], "booked");

    let listed = cairn_cli(&server, &["topic", "list"]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("seats\t4 partitions"));
    let read = cairn_cli(&server, &["--json", "read-key", "seats", "12A"]);
    let read: serde_json::Value = serde_json::from_slice(&read.stdout).unwrap();
    assert_eq!(read["offset"], 0);
}

/// Fetches every record of `topic`'s partition 0 with the bundled client, `size_bytes_max`
/// at a time, and returns their offsets and the largest number in one response.
fn fetch_every_offset(
    client: &mut BlockingClient,
    topic: &str,
    size_bytes_max: u32,
    end: Offset,
) -> (Vec<Offset>, usize) {
    let mut offsets = Vec::new();
    let mut response_record_count_max = 0;
    let mut next = Offset(0);
    // Bounded: every answer carries at least one record until the end is reached.
    while next < end {
        let fetched = client
            .fetch(topic, 0, next, size_bytes_max, Duration::ZERO)
            .unwrap_or_else(|error| panic!("fetch from {next:?}: {error}"));
        assert!(
            !fetched.records.is_empty(),
            "a fetch from {next:?} made progress"
        );
        response_record_count_max = response_record_count_max.max(fetched.records.len());
        for record in &fetched.records {
            assert_eq!(record.offset, next, "records come in offset order, densely");
            offsets.push(record.offset);
            next = next.plus(1);
        }
    }
    (offsets, response_record_count_max)
}

#[test]
fn a_fetch_of_tiny_records_fits_the_clients_frame_limit() {
    // 80,000 records of 1-byte keys and values take ~2 MiB of batches on disk, but ~60
    // bytes each as a flatbuffer: a fetch bounded by on-disk bytes was a 4.8 MB response,
    // which the bundled client (4 MiB frame limit) refused on every retry.
    let server = TestServer::start();
    let mut client = client(server.address);
    client.create_topic("tiny", 1).unwrap();
    let records = vec![record(b"k", b"v", KeyCondition::Any); 20_000];
    for _ in 0..4 {
        client.append("tiny", Some(0), None, &records).unwrap();
    }
    let end = Offset(80_000);
    // Not much smaller limits: each fetch reads whole batches (20,000 records here), so a
    // reader asking for a few records at a time re-reads a batch per answer.
    for size_bytes_max in [2 * 1024 * 1024, u32::MAX, 256 * 1024] {
        let (offsets, response_record_count_max) =
            fetch_every_offset(&mut client, "tiny", size_bytes_max, end);
        assert_eq!(offsets.len(), 80_000);
        eprintln!(
            "size_bytes_max {size_bytes_max}: at most {response_record_count_max} records \
             per fetch"
        );
    }
}

#[test]
fn a_key_history_of_records_with_many_headers_fits_the_clients_frame_limit() {
    // 1024 records (the server's count limit) of one key, each with 1 KiB of value and 64
    // headers: ~1 MiB of keys and values, the engine's measure, but over 5 MB as a
    // flatbuffer once the headers are counted.
    let server = TestServer::start();
    let mut client = client(server.address);
    client.create_topic("audited", 1).unwrap();
    let header_value = [b'h'; 30];
    let headers: Vec<RecordHeader<'_>> = (0..64)
        .map(|_| RecordHeader {
            name: b"n",
            value: &header_value,
        })
        .collect();
    let value = [b'v'; 1024];
    let records = vec![
        RecordInput {
            key: b"entity",
            value: &value,
            headers: &headers,
            condition: KeyCondition::Any,
            ..RecordInput::default()
        };
        64
    ];
    for _ in 0..16 {
        client.append("audited", Some(0), None, &records).unwrap();
    }
    let history = client
        .key_history("audited", Some(0), b"entity", 1024)
        .expect("the bundled client accepts the key history");
    assert!(!history.is_empty());
    for (newer, older) in history.iter().zip(history.iter().skip(1)) {
        assert_eq!(
            newer.prev_key_offset,
            Some(older.offset),
            "newest first, linked"
        );
    }
    assert_eq!(history[0].offset, Offset(1023));
    eprintln!(
        "key history: {} of 1024 records in one response",
        history.len()
    );
}

/// Reads that cross to the owning shard come back as typed results the origin encodes; they
/// must say exactly what the owner says to a client connected to it: records mid-batch,
/// headers, size cuts, key reads and histories.
#[test]
fn forwarded_reads_agree_with_direct_ones() {
    let server = TestServer::start();
    let mut direct = client(server.address);
    direct.create_topic("reads", 8).unwrap();
    let mut one_port = {
        let mut config =
            ClientConfig::new(SocketAddr::new(server.address.ip(), server.shard_ports[0]));
        config.shard_aware = false;
        BlockingClient::connect(config).unwrap()
    };
    let headers = [RecordHeader {
        name: b"trace",
        value: b"abc",
    }];
    for partition in 0..8u32 {
        for round in 0..3u8 {
            let records = [
                RecordInput {
                    key: b"k",
                    value: &[round; 100],
                    headers: &headers,
                    condition: KeyCondition::Any,
                    ..RecordInput::default()
                },
                RecordInput {
                    key: b"other",
                    value: &[round; 10],
                    headers: &[],
                    condition: KeyCondition::Any,
                    ..RecordInput::default()
                },
            ];
            appended_offset(
                direct
                    .append("reads", Some(partition), None, &records)
                    .unwrap(),
            );
        }
        let mut answers = Vec::new();
        for reader in [&mut direct, &mut one_port] {
            let from_mid_batch = reader
                .fetch("reads", partition, Offset(1), 1 << 20, Duration::ZERO)
                .unwrap();
            let one_record = reader
                .fetch("reads", partition, Offset(0), 1, Duration::ZERO)
                .unwrap();
            let latest = reader
                .read_key("reads", Some(partition), b"k", false)
                .unwrap();
            let latest_appended = reader
                .read_key("reads", Some(partition), b"k", true)
                .unwrap();
            let missing = reader
                .read_key("reads", Some(partition), b"nobody", false)
                .unwrap();
            let history = reader
                .key_history("reads", Some(partition), b"k", 10)
                .unwrap();
            assert_eq!(from_mid_batch.records.len(), 5, "partition {partition}");
            assert_eq!(from_mid_batch.records[0].offset, Offset(1));
            assert_eq!(
                one_record.records.len(),
                1,
                "at least one record, however small the limit"
            );
            assert_eq!(history.len(), 3);
            assert_eq!(
                history[0].headers,
                vec![(b"trace".to_vec(), b"abc".to_vec())]
            );
            assert!(missing.is_none());
            answers.push((
                from_mid_batch.records,
                from_mid_batch.synced_end,
                one_record.records,
                latest,
                latest_appended,
                history,
            ));
        }
        assert_eq!(answers[0], answers[1], "partition {partition}");
    }
}

/// The file flags of every descriptor `pid` holds on a segment file, by path.
fn segment_descriptor_flags(pid: u32) -> Vec<(std::path::PathBuf, u32)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let entry = entry.unwrap();
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if target
            .extension()
            .is_none_or(|extension| extension != "seg")
        {
            continue;
        }
        let fd = entry.file_name();
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.to_string_lossy()))
            .unwrap();
        let flags = info
            .lines()
            .find_map(|line| line.strip_prefix("flags:"))
            .map(|octal| u32::from_str_radix(octal.trim(), 8).unwrap())
            .unwrap();
        found.push((target, flags));
    }
    found
}

#[test]
fn groups_are_written_through_an_o_direct_o_dsync_descriptor_of_the_current_segment() {
    // A group is acknowledged when its write returns, with no fdatasync after it: that is
    // durable only if the descriptor it went through has O_DSYNC (docs/DESIGN.md, Group
    // commit). Without it every acknowledgement would be a lie on power loss.
    const O_DSYNC: u32 = 0o10000;
    const O_DIRECT: u32 = 0o40000;
    let server = TestServer::start();
    let mut client = client(server.address);
    client.create_topic("dsync", 1).unwrap();
    let appended = client
        .append(
            "dsync",
            Some(0),
            None,
            &[record(b"k", b"v", KeyCondition::Any)],
        )
        .unwrap();
    assert!(
        matches!(appended, AppendResult::Appended { .. }),
        "{appended:?}"
    );
    let descriptors = segment_descriptor_flags(server.pid());
    let durable: Vec<_> = descriptors
        .iter()
        .filter(|(_, flags)| flags & O_DSYNC != 0 && flags & O_DIRECT != 0)
        .collect();
    // Nothing rolled: each core's first segment is the one its groups go to (its next
    // one may still be in preparation, opened only for zero-filling).
    let current: BTreeSet<_> = descriptors
        .iter()
        .map(|(path, _)| path.clone())
        .filter(|path| {
            path.file_name()
                .is_some_and(|name| name == "00000000000000000000.seg")
        })
        .collect();
    let durable_segments: BTreeSet<_> = durable.iter().map(|(path, _)| path.clone()).collect();
    assert_eq!(
        current.len(),
        2,
        "two cores, each with its current segment: {descriptors:?}"
    );
    assert!(
        current.is_subset(&durable_segments),
        "a current segment without an O_DIRECT|O_DSYNC descriptor: {descriptors:?}"
    );
}
