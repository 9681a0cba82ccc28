//! Idempotent appends over the native protocol, against a real `cairn serve`: a resent
//! stamped batch is answered with its original offsets, before and after a SIGKILL; the
//! sequence rules refuse gaps and fenced epochs; and a producer appending through kill -9
//! and restart leaves every batch in the log exactly once.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::thread;
use std::time::Duration;

use cairn_client::{AppendResult, BlockingClient, ClientConfig, IdempotentProducer, RetryPolicy};
use cairn_engine::{KeyCondition, Offset, ProducerStamp, RecordInput};
use cairn_wire::ErrorCode;

use crate::support::server::TestServer;

const TOPIC: &str = "orders";

/// A free port for `--listen`, so that a restarted server is found where the first was.
/// Free when probed; another process could take it first, which on a test machine is rare.
fn free_listen_address() -> String {
    let probe = TcpListener::bind("127.0.0.1:0").expect("a free port");
    let address = probe.local_addr().expect("bound address");
    format!("127.0.0.1:{}", address.port())
}

fn connect(server: &TestServer) -> BlockingClient {
    BlockingClient::connect(ClientConfig::new(server.address)).expect("client connects")
}

fn record(value: &[u8]) -> RecordInput<'_> {
    RecordInput {
        key: b"order-1",
        value,
        ..RecordInput::default()
    }
}

fn appended(result: AppendResult) -> (Offset, bool) {
    match result {
        AppendResult::Appended {
            base_offset,
            duplicate,
            ..
        } => (base_offset, duplicate),
        AppendResult::Conflict { message, .. } => panic!("unexpected conflict: {message}"),
    }
}

#[test]
fn a_resent_batch_gets_its_original_offsets_even_after_kill_9() {
    let temp_dir = tempfile::tempdir().unwrap();
    let data_dir = temp_dir.path().join("data");
    let listen = free_listen_address();
    let mut server = TestServer::start_on(&data_dir, &["--listen", &listen, "--port-base", "0"]);
    let mut client = connect(&server);
    client.create_topic(TOPIC, 2).unwrap();
    let producer = client.init_producer().unwrap();
    let stamp = |base_sequence| ProducerStamp {
        producer_id: producer.producer_id,
        epoch: producer.epoch,
        base_sequence,
    };
    let first = [record(b"a"), record(b"b")];
    let (offset_first, duplicate) = appended(
        client
            .append_as(TOPIC, Some(0), None, &first, Some(stamp(0)))
            .unwrap(),
    );
    assert!(!duplicate);
    // Another writer moves the key on; the resend must not conflict with it, nor append.
    client
        .append(TOPIC, Some(0), None, &[record(b"other")])
        .unwrap();
    let resent = client
        .append_as(TOPIC, Some(0), Some(Offset(0)), &first, Some(stamp(0)))
        .unwrap();
    assert_eq!(appended(resent), (offset_first, true));

    // The producer state is in the log, so a restarted server knows the batch too.
    server.stop_with(9, Duration::from_secs(20));
    let server = TestServer::start_on(&data_dir, &["--listen", &listen, "--port-base", "0"]);
    let mut client = connect(&server);
    let resent = client
        .append_as(TOPIC, Some(0), None, &first, Some(stamp(0)))
        .unwrap();
    assert_eq!(appended(resent), (offset_first, true));
    // The next sequence continues where the batch of two ended.
    let next = client
        .append_as(TOPIC, Some(0), None, &[record(b"c")], Some(stamp(2)))
        .unwrap();
    assert_eq!(appended(next), (Offset(3), false));
    let values: Vec<Vec<u8>> = client
        .fetch(TOPIC, 0, Offset(0), 1 << 20, Duration::ZERO)
        .unwrap()
        .records
        .into_iter()
        .map(|record| record.value)
        .collect();
    assert_eq!(values, [&b"a"[..], b"b", b"other", b"c"]);

    // Ids are never handed out twice, across the restart included.
    let after_restart = client.init_producer().unwrap();
    assert_ne!(after_restart.producer_id, producer.producer_id);
}

#[test]
fn gaps_and_fenced_epochs_are_refused_and_append_nothing() {
    let server = TestServer::start();
    let mut client = connect(&server);
    client.create_topic(TOPIC, 1).unwrap();
    let producer = client.init_producer().unwrap();
    let stamp = |epoch, base_sequence| {
        Some(ProducerStamp {
            producer_id: producer.producer_id,
            epoch,
            base_sequence,
        })
    };
    let refused = |client: &mut BlockingClient, stamp| {
        client
            .append_as(TOPIC, Some(0), None, &[record(b"x")], stamp)
            .expect_err("refused")
            .server_code()
    };
    // A producer's first batch to a partition starts at sequence 0.
    assert_eq!(
        refused(&mut client, stamp(0, 5)),
        Some(ErrorCode::OutOfOrderSequence)
    );
    client
        .append_as(TOPIC, Some(0), None, &[record(b"x")], stamp(0, 0))
        .unwrap();
    // A gap after it.
    assert_eq!(
        refused(&mut client, stamp(0, 2)),
        Some(ErrorCode::OutOfOrderSequence)
    );
    // A newer epoch starts again at 0 and fences the older one.
    client
        .append_as(TOPIC, Some(0), None, &[record(b"y")], stamp(1, 0))
        .unwrap();
    assert_eq!(
        refused(&mut client, stamp(0, 1)),
        Some(ErrorCode::ProducerFenced)
    );
    // A conditional stamped append that conflicts leaves its sequence unused.
    let conflicting = [RecordInput {
        condition: KeyCondition::NoKey,
        ..record(b"z")
    }];
    let conflict = client
        .append_as(TOPIC, Some(0), None, &conflicting, stamp(1, 1))
        .unwrap();
    assert!(
        matches!(conflict, AppendResult::Conflict { .. }),
        "{conflict:?}"
    );
    let next = client
        .append_as(TOPIC, Some(0), None, &[record(b"z")], stamp(1, 1))
        .unwrap();
    assert_eq!(appended(next), (Offset(2), false));
    let fetched = client
        .fetch(TOPIC, 0, Offset(0), 1 << 20, Duration::ZERO)
        .unwrap();
    assert_eq!(fetched.synced_end, Offset(3));
}

/// The Rust client's retries: a producer appends numbered batches while the server is
/// killed and restarted under it; afterwards every number is in the log exactly once,
/// in the order it was sent, at the offset it was acknowledged with.
#[test]
fn an_idempotent_producer_appends_through_kill_9_exactly_once() {
    const BATCH_COUNT: usize = 300;
    let temp_dir = tempfile::tempdir().unwrap();
    let data_dir = temp_dir.path().join("data");
    let listen = free_listen_address();
    let mut server = TestServer::start_on(&data_dir, &["--listen", &listen, "--port-base", "0"]);
    connect(&server).create_topic(TOPIC, 2).unwrap();

    let (acknowledged_sender, acknowledged) = std::sync::mpsc::channel();
    let address = server.address;
    let producing = thread::spawn(move || {
        let config = ClientConfig {
            request_timeout: Duration::from_secs(5),
            ..ClientConfig::new(address)
        };
        let mut client = BlockingClient::connect(config).unwrap();
        let mut producer = IdempotentProducer::new(&mut client, RetryPolicy::default()).unwrap();
        for number in 0..BATCH_COUNT {
            let value = number.to_string();
            let records = [RecordInput {
                key: b"",
                value: value.as_bytes(),
                ..RecordInput::default()
            }];
            let partition = u32::try_from(number % 2).unwrap();
            let result = producer
                .append(&mut client, TOPIC, Some(partition), None, &records)
                .unwrap_or_else(|error| panic!("batch {number}: {error}"));
            let (offset, _) = appended(result);
            acknowledged_sender
                .send((number, partition, offset))
                .unwrap();
        }
    });
    // Kill it twice, each time once the producer is well under way.
    let mut seen = BTreeMap::new();
    for kill_after in [60, 160] {
        while seen.len() < kill_after {
            let (number, partition, offset) = acknowledged
                .recv_timeout(Duration::from_secs(60))
                .expect("the producer makes progress");
            seen.insert(number, (partition, offset));
        }
        server.stop_with(9, Duration::from_secs(20));
        server = TestServer::start_on(&data_dir, &["--listen", &listen, "--port-base", "0"]);
    }
    producing.join().expect("the producer finished");
    seen.extend(acknowledged.try_iter().map(|(n, p, o)| (n, (p, o))));
    assert_eq!(seen.len(), BATCH_COUNT);

    let mut client = connect(&server);
    for partition in 0..2 {
        let records = client
            .fetch(TOPIC, partition, Offset(0), 1 << 20, Duration::ZERO)
            .unwrap()
            .records;
        let numbers: Vec<usize> = records
            .iter()
            .map(|record| String::from_utf8_lossy(&record.value).parse().unwrap())
            .collect();
        let expected: Vec<usize> = (0..BATCH_COUNT)
            .filter(|number| number % 2 == partition as usize)
            .collect();
        assert_eq!(
            numbers, expected,
            "partition {partition}: once each, in order"
        );
        for record in &records {
            let number: usize = String::from_utf8_lossy(&record.value).parse().unwrap();
            assert_eq!(seen[&number], (partition, record.offset), "batch {number}");
        }
    }
}
