//! Kafka consumers against a partition whose oldest records retention removed: ListOffsets
//! EARLIEST answers the log start, a fetch below it answers OFFSET_OUT_OF_RANGE, and real
//! consumers (confluent-kafka, kafka-python) told to reset to the earliest offset resume
//! exactly there; the native client is told `BeforeLogStart` with the same log start.

use std::time::{Duration, Instant};

use cairn_client::{AppendResult, ClientError};
use cairn_engine::{Offset, RecordInput, RetentionPolicy};
use serde_json::Value;

use crate::support::client_process::{python, run_to_end};
use crate::support::server::TestServer;
use crate::support::workload::connect;

const SERVER_ARGS: &[&str] = &[
    "--segment-size",
    "2101248",
    "--checkpoint-interval",
    "65536",
    "--retention-check-interval-ms",
    "20",
];

#[test]
fn kafka_consumers_below_the_log_start_are_told_out_of_range_and_reset_to_it() {
    let temp = tempfile::tempdir().unwrap();
    let server = TestServer::start_on(&temp.path().join("data"), SERVER_ARGS);
    let mut client = connect(server.address).unwrap();
    let retention = RetentionPolicy {
        ms: None,
        bytes: Some(1024 * 1024),
    };
    client.create_topic_with("retained", 1, retention).unwrap();
    let value = vec![b'v'; 1_000];
    for index in 0..6_000u32 {
        let key = format!("key-{}", index % 8).into_bytes();
        let records = [RecordInput {
            key: &key,
            value: &value,
            ..RecordInput::default()
        }];
        let outcome = client.append("retained", Some(0), None, &records).unwrap();
        assert!(matches!(outcome, AppendResult::Appended { .. }));
    }
    // Retention works through what it may remove, then the log start stays put.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = None;
    let log_start = loop {
        assert!(
            Instant::now() < deadline,
            "the log start never settled above 0"
        );
        let start = match client.fetch("retained", 0, Offset(0), 1024, Duration::ZERO) {
            Err(ClientError::BeforeLogStart { log_start, .. }) => Some(log_start),
            Ok(_) => None,
            Err(error) => panic!("fetch from 0: {error}"),
        };
        if let Some(start) = start
            && last == Some(start)
        {
            break start;
        }
        last = start;
        std::thread::sleep(Duration::from_millis(300));
    };
    let output = run_to_end(
        python(
            "retention_reads.py",
            &[&server.kafka_bootstrap(), "retained", "0"],
        ),
        "",
    );
    let answer: Value = serde_json::from_str(output.trim()).unwrap();
    let expected = Value::from(log_start.0);
    assert_eq!(answer["beginning"], expected, "{answer}");
    assert_eq!(answer["reset_first"]["offset"], expected, "{answer}");
    assert_eq!(answer["kafka_python_first"], expected, "{answer}");
    assert_eq!(
        answer["strict_error"]["error"], "_AUTO_OFFSET_RESET",
        "a consumer that may not reset is told: {answer}"
    );
}
