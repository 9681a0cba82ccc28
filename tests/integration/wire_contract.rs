//! The rules wire/schema/cairn.fbs states, checked against the real server wherever a client
//! can observe them: topic names and partition counts, the batch limits and the size
//! formula at their exact boundaries, fetch past the synced end, which conflict is reported,
//! explicit partitions, stable shard ports, and KeyHistory continuation (local and
//! forwarded).

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use cairn_client::{AppendResult, BlockingClient, ClientConfig, ClientError};
use cairn_engine::{KeyCondition, Offset, RecordHeader, RecordInput};
use cairn_wire::{ConflictInfo, ErrorCode};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::{ApiKey, CreateTopicsRequest, CreateTopicsResponse};

use crate::kafka_protocol::{KafkaConnection, topic_name};
use crate::support::server::{CAIRN_BIN, TestServer, serve_until_exit};

/// Kafka's INVALID_TOPIC_EXCEPTION.
const INVALID_TOPIC_EXCEPTION: i16 = 17;

/// The schema's batch size formula: 64 bytes, per record 31 + key + value, per header
/// 6 + name + value.
const BATCH_OVERHEAD_SIZE_BYTES: usize = 64;
const RECORD_OVERHEAD_SIZE_BYTES: usize = 31;
const HEADER_OVERHEAD_SIZE_BYTES: usize = 6;
const BATCH_SIZE_BYTES_MAX: usize = 2 * 1024 * 1024;

/// A client that sends every request to `address`, whichever shard owns its partition.
fn client_at(address: SocketAddr) -> BlockingClient {
    let mut config = ClientConfig::new(address);
    config.shard_aware = false;
    config.request_timeout = Duration::from_secs(20);
    BlockingClient::connect(config).expect("client connects")
}

fn record<'a>(key: &'a [u8], value: &'a [u8]) -> RecordInput<'a> {
    RecordInput {
        key,
        value,
        headers: &[],
        condition: KeyCondition::Any,
        ..RecordInput::default()
    }
}

fn server_code<T: std::fmt::Debug>(result: Result<T, ClientError>) -> (ErrorCode, String) {
    match result {
        Err(ClientError::Server { code, message, .. }) => (code, message),
        other => panic!("expected an error response, got {other:?}"),
    }
}

fn appended(result: AppendResult) -> (u32, Offset) {
    match result {
        AppendResult::Appended {
            partition,
            base_offset,
            ..
        } => (partition, base_offset),
        AppendResult::Conflict { info, message } => panic!("conflict {info:?}: {message}"),
    }
}

#[test]
fn topic_names_follow_the_schema_in_both_protocols() {
    let server = TestServer::start();
    let mut client = client_at(server.address);
    for name in ["a".repeat(249), "...".to_owned(), "a.b_c-D9".to_owned()] {
        client
            .create_topic(&name, 1)
            .unwrap_or_else(|error| panic!("{name:?} is valid: {error}"));
    }
    let refused = [
        String::new(),
        "a".repeat(250),
        "a".repeat(256),
        ".".to_owned(),
        "..".to_owned(),
        "a/b".to_owned(),
        "a b".to_owned(),
        "a:b".to_owned(),
        "a\\b".to_owned(),
        "a\0b".to_owned(),
        "caf\u{e9}".to_owned(),
    ];
    for name in &refused {
        let (code, message) = server_code(client.create_topic(name, 1));
        assert_eq!(code, ErrorCode::BadRequest, "{name:?}: {message}");
    }

    let mut kafka = KafkaConnection::connect(server.kafka_ports[0]);
    let request = CreateTopicsRequest::default()
        .with_topics(
            [".", "..", "kafka.ok"]
                .into_iter()
                .map(|name| {
                    CreatableTopic::default()
                        .with_name(topic_name(name))
                        .with_num_partitions(1)
                        .with_replication_factor(-1)
                })
                .collect(),
        )
        .with_timeout_ms(10_000);
    let response: CreateTopicsResponse = kafka.call(ApiKey::CreateTopics, 7, &request);
    let codes: Vec<i16> = response
        .topics
        .iter()
        .map(|topic| topic.error_code)
        .collect();
    assert_eq!(
        codes,
        [INVALID_TOPIC_EXCEPTION, INVALID_TOPIC_EXCEPTION, 0],
        "{response:?}"
    );
}

#[test]
fn a_topic_has_1_to_4096_partitions() {
    let server = TestServer::start();
    let mut client = client_at(server.address);
    assert_eq!(
        client
            .create_topic("widest", 4096)
            .unwrap()
            .partitions
            .len(),
        4096
    );
    for count in [0, 4097] {
        let (code, message) = server_code(client.create_topic("too-wide", count));
        assert_eq!(code, ErrorCode::BadRequest, "{count}: {message}");
    }
}

#[test]
fn batch_limits_hold_at_their_exact_boundaries() {
    let server = TestServer::start();
    let mut client = client_at(server.address);
    client.create_topic("limits", 1).unwrap();

    // 65,536 empty records: 64 + 65,536 * 31 bytes by the formula, under 2 MiB.
    let empties = vec![record(b"", b""); 65_536];
    let (_, base) = appended(client.append("limits", Some(0), None, &empties).unwrap());
    assert_eq!(base, Offset(0));
    let too_many = vec![record(b"", b""); 65_537];
    let (code, message) = server_code(client.append("limits", Some(0), None, &too_many));
    assert_eq!(code, ErrorCode::TooLarge, "{message}");

    // One record whose batch is exactly 2 MiB by the formula, then one byte more.
    let value_size_bytes =
        BATCH_SIZE_BYTES_MAX - BATCH_OVERHEAD_SIZE_BYTES - RECORD_OVERHEAD_SIZE_BYTES;
    let value = vec![7u8; value_size_bytes + 1];
    let exact = [record(b"", &value[..value_size_bytes])];
    client.append("limits", Some(0), None, &exact).unwrap();
    let (code, message) =
        server_code(client.append("limits", Some(0), None, &[record(b"", &value)]));
    assert_eq!(code, ErrorCode::TooLarge, "{message}");

    // The same with a key and a header counted in.
    let headers = [RecordHeader {
        name: b"type",
        value: b"bulk",
    }];
    let key = b"entity-1";
    let value_size_bytes = BATCH_SIZE_BYTES_MAX
        - BATCH_OVERHEAD_SIZE_BYTES
        - RECORD_OVERHEAD_SIZE_BYTES
        - key.len()
        - (HEADER_OVERHEAD_SIZE_BYTES + 4 + 4);
    let exact = [RecordInput {
        headers: &headers,
        ..record(key, &value[..value_size_bytes])
    }];
    client.append("limits", Some(0), None, &exact).unwrap();
    let over = [RecordInput {
        headers: &headers,
        ..record(key, &value[..=value_size_bytes])
    }];
    let (code, message) = server_code(client.append("limits", Some(0), None, &over));
    assert_eq!(code, ErrorCode::TooLarge, "{message}");
}

#[test]
fn a_fetch_past_the_synced_end_is_offset_out_of_range_naming_the_end() {
    let server = TestServer::start();
    let mut client = client_at(server.address);
    client.create_topic("ends", 1).unwrap();
    let records = [record(b"k", b"1"), record(b"k", b"2"), record(b"k", b"3")];
    client.append("ends", Some(0), None, &records).unwrap();

    // At the synced end: no error, no records (a long poll when wait_max is given).
    let at_end = client
        .fetch("ends", 0, Offset(3), 1 << 20, Duration::ZERO)
        .unwrap();
    assert!(at_end.records.is_empty());
    assert_eq!(at_end.synced_end, Offset(3));

    // Past it: at once, however long the client would wait.
    let (code, message) =
        server_code(client.fetch("ends", 0, Offset(4), 1 << 20, Duration::from_secs(60)));
    assert_eq!(code, ErrorCode::OffsetOutOfRange, "{message}");
    assert!(message.contains("synced end is 3"), "{message}");
}

#[test]
fn when_both_the_end_offset_and_a_key_condition_fail_the_end_offset_is_reported() {
    let server = TestServer::start();
    let mut client = client_at(server.address);
    client.create_topic("both", 1).unwrap();
    client
        .append("both", Some(0), None, &[record(b"seat", b"booked")])
        .unwrap();
    let again = RecordInput {
        condition: KeyCondition::NoKey,
        ..record(b"seat", b"booked again")
    };
    match client
        .append("both", Some(0), Some(Offset(7)), &[again])
        .unwrap()
    {
        AppendResult::Conflict {
            info: ConflictInfo::EndOffset { current_end_offset },
            ..
        } => assert_eq!(current_end_offset, Offset(1)),
        other => panic!("expected an EndOffset conflict, got {other:?}"),
    }
    // With the end offset right, the key condition is the one that fails.
    match client
        .append("both", Some(0), Some(Offset(1)), &[again])
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
            assert_eq!(current_offset, Some(Offset(0)));
        }
        other => panic!("expected a Key conflict, got {other:?}"),
    }
}

#[test]
fn an_explicit_partition_takes_a_key_that_routes_elsewhere() {
    let server = TestServer::start();
    let mut client = client_at(server.address);
    client.create_topic("placed", 4).unwrap();
    let key = (0..)
        .map(|index| format!("key-{index}"))
        .find(|key| cairn_wire::partition_for_key(key.as_bytes(), 4) != 0)
        .unwrap();
    let (partition, offset) = appended(
        client
            .append("placed", Some(0), None, &[record(key.as_bytes(), b"v")])
            .unwrap(),
    );
    assert_eq!((partition, offset), (0, Offset(0)));
    let found = client
        .read_key("placed", Some(0), key.as_bytes(), false)
        .unwrap();
    assert_eq!(found.map(|record| record.value), Some(b"v".to_vec()));
    // Routed by the key, the read goes to the key's own partition, which has no record.
    assert_eq!(
        client
            .read_key("placed", None, key.as_bytes(), false)
            .unwrap(),
        None
    );
}

/// Appends `count` records of `key` to partition 0 of `topic`, with a record of another key
/// after every tenth, in batches of 100; returns the key's offsets, newest first.
fn append_history(
    client: &mut BlockingClient,
    topic: &str,
    key: &[u8],
    count: usize,
) -> Vec<Offset> {
    let values: Vec<String> = (0..count).map(|index| format!("v{index}")).collect();
    let mut offsets = Vec::with_capacity(count);
    for chunk in values.chunks(100) {
        let mut batch = Vec::new();
        let mut positions = Vec::new();
        for (index, value) in chunk.iter().enumerate() {
            positions.push(batch.len());
            batch.push(record(key, value.as_bytes()));
            if index % 10 == 9 {
                batch.push(record(b"other", b"noise"));
            }
        }
        let (_, base) = appended(client.append(topic, Some(0), None, &batch).unwrap());
        offsets.extend(positions.iter().map(|position| base.plus(*position as u64)));
    }
    offsets.reverse();
    offsets
}

/// Reads `key`'s whole history in pages of `page_size`, following `next_offset`.
fn read_in_pages(
    client: &mut BlockingClient,
    topic: &str,
    key: &[u8],
    page_size: u32,
) -> Vec<Offset> {
    let mut offsets = Vec::new();
    let mut from = None;
    loop {
        let page = client
            .key_history_from(topic, Some(0), key, from, page_size)
            .unwrap();
        assert!(page.records.len() <= page_size.min(1024) as usize);
        assert!(!page.records.is_empty());
        assert!(page.records.iter().all(|record| record.key == key));
        offsets.extend(page.records.iter().map(|record| record.offset));
        match page.next_offset {
            Some(next) => {
                assert_eq!(page.records.last().unwrap().prev_key_offset, Some(next));
                from = Some(next);
            }
            None => return offsets,
        }
    }
}

#[test]
fn a_long_key_history_reads_in_pages_locally_and_forwarded() {
    let server = TestServer::start();
    let mut owner_client = client_at(server.address);
    let topic = owner_client.create_topic("ledger", 1).unwrap();
    let owner = usize::from(topic.partitions[0].shard);
    let owner_port = server.shard_ports[owner];
    let other_port = server.shard_ports[1 - owner];
    let mut owner_client = client_at(SocketAddr::new(server.address.ip(), owner_port));
    let expected = append_history(&mut owner_client, "ledger", b"entity", 2500);

    let mut forwarding_client = client_at(SocketAddr::new(server.address.ip(), other_port));
    for client in [&mut owner_client, &mut forwarding_client] {
        for page_size in [1024, 100, 5000] {
            assert_eq!(
                read_in_pages(client, "ledger", b"entity", page_size),
                expected,
                "pages of {page_size}"
            );
        }
        // The first page is capped at 1024 whatever the client asks.
        let page = client
            .key_history_from("ledger", Some(0), b"entity", None, 5000)
            .unwrap();
        assert_eq!(page.records.len(), 1024);
        assert_eq!(page.next_offset, Some(expected[1024]));

        // A record of another key is no place to continue from; nor is the synced end.
        let noise_offset = Offset(10);
        let (code, message) = server_code(client.key_history_from(
            "ledger",
            Some(0),
            b"entity",
            Some(noise_offset),
            10,
        ));
        assert_eq!(code, ErrorCode::BadRequest, "{message}");
        let synced_end = expected[0].plus(1).plus(1); // the noise record after the last
        let (code, message) = server_code(client.key_history_from(
            "ledger",
            Some(0),
            b"entity",
            Some(synced_end),
            10,
        ));
        assert_eq!(code, ErrorCode::OffsetOutOfRange, "{message}");
    }

    // The CLI prints a page and how to continue it.
    let output = Command::new(CAIRN_BIN)
        .arg("--addr")
        .arg(server.address.to_string())
        .args(["history", "ledger", "entity", "--limit", "3", "--from"])
        .arg(expected[2496].0.to_string())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 3, "{stdout}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains(&format!("--from {}", expected[2499].0)),
        "{stderr}"
    );
}

/// An address on 127.0.0.1 whose port and the `count - 1` after it are free when probed,
/// below the kernel's ephemeral range (32768 and up by default), where ports bound to 0 by
/// tests running alongside cannot land on them.
fn free_port_run(count: u16) -> SocketAddr {
    let mut rng = crate::support::TestRng::new(crate::support::test_seed("free_port_run"));
    loop {
        let port = 20_000 + u16::try_from(rng.below(10_000)).unwrap();
        let probes: Result<Vec<_>, _> = (port..port + count)
            .map(|port| std::net::TcpListener::bind(("127.0.0.1", port)))
            .collect();
        if probes.is_ok() {
            return SocketAddr::from(([127, 0, 0, 1], port));
        }
    }
}

#[test]
fn shard_ports_follow_the_listen_port_and_survive_a_restart() {
    let temp_dir = tempfile::tempdir().unwrap();
    let data_dir = temp_dir.path().join("data");
    let listen = free_port_run(3);
    let expected = vec![listen.port() + 1, listen.port() + 2];
    let listen = listen.to_string();
    let mut server = TestServer::start_on(&data_dir, &["--listen", &listen]);
    assert_eq!(server.shard_ports, expected);
    client_at(server.address).create_topic("kept", 2).unwrap();
    server.stop_with(15, Duration::from_secs(20));

    let server = TestServer::start_on(&data_dir, &["--listen", &listen]);
    assert_eq!(server.shard_ports, expected);
    let metadata = client_at(server.address).metadata().unwrap();
    assert_eq!(metadata.shard_ports, expected);
    for partition in &metadata.topics[0].partitions {
        assert_eq!(partition.port, expected[usize::from(partition.shard)]);
    }

    // Another server listening just below: its shard 0 would take this one's main port,
    // and it must refuse to start, naming that port.
    let below = SocketAddr::new(server.address.ip(), server.address.port() - 1);
    drop(std::net::TcpListener::bind(below).expect("the port below is free"));
    let other_dir = temp_dir.path().join("other");
    let outcome = serve_until_exit(
        &other_dir,
        &["--listen", &below.to_string()],
        Duration::from_secs(20),
    );
    assert!(
        outcome.status.is_some_and(|status| !status.success()),
        "{outcome:?}"
    );
    assert!(
        outcome
            .stderr
            .contains(&format!("address {} is already in use", server.address)),
        "{}",
        outcome.stderr
    );
}
