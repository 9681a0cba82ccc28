//! Hostile Kafka clients against a live server, for a bounded time: valid requests of every
//! API the listener advertises (groups and offsets included), encoded with the
//! `kafka-protocol` crate, then mutated (bit flips, byte edits, interesting 32-bit values,
//! cuts, garbage tails, length prefixes that promise more or less than follows) and
//! pipelined at both brokers. Afterwards the server must still run, answer well-formed
//! requests on both brokers, and hold every record written before the fuzzing unchanged.
//! A mutation may still be a valid request (a produce to another partition, a new topic):
//! what was there before must stay, and nothing may crash.
//!
//! `CAIRN_FUZZ_SECONDS` sets the duration (CI: 5); `TEST_SEED` replays the frames.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use kafka_protocol::messages::delete_groups_request::DeleteGroupsRequest;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::{
    AlterConfigsRequest, ApiKey, ApiVersionsRequest, ApiVersionsResponse, DescribeClusterRequest,
    DescribeConfigsRequest, DescribeGroupsRequest, FindCoordinatorRequest, GroupId,
    HeartbeatRequest, IncrementalAlterConfigsRequest, InitProducerIdRequest, JoinGroupRequest,
    LeaveGroupRequest, ListGroupsRequest, MetadataRequest, OffsetCommitRequest, OffsetFetchRequest,
    RequestHeader, SyncGroupRequest,
};
use kafka_protocol::messages::{alter_configs_request, incremental_alter_configs_request};
use kafka_protocol::protocol::{Encodable, StrBytes};

use crate::kafka_protocol::{KafkaConnection, batch, fetch, produce, record, topic_name};
use crate::support::server::TestServer;
use crate::support::{TestRng, test_seed};

const SEED_TOPIC: &str = "kept";
const SEED_RECORD_COUNT: usize = 20;

fn fuzz_duration() -> Duration {
    let seconds = std::env::var("CAIRN_FUZZ_SECONDS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(5);
    Duration::from_secs(seconds)
}

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_owned())
}

/// One request (header and body, without the size prefix) as a client would send it.
fn encode<T: Encodable>(api_key: ApiKey, version: i16, body: &T) -> Vec<u8> {
    let mut header = RequestHeader::default();
    header.request_api_key = api_key as i16;
    header.request_api_version = version;
    header.correlation_id = 7;
    header.client_id = Some(text("fuzzer"));
    let mut buf = BytesMut::new();
    header
        .encode(&mut buf, api_key.request_header_version(version))
        .unwrap();
    body.encode(&mut buf, version).unwrap();
    buf.to_vec()
}

/// A valid request of each API the listener advertises, at a version clients send.
fn corpus() -> Vec<Vec<u8>> {
    let group = || GroupId(text("fuzz-group"));
    let records = batch(vec![record(
        Some("k"),
        Some("v"),
        &[("cairn.expect", "no-key")],
    )]);
    let produce = crate::kafka_protocol::produce_request("fuzzed", 0, records);
    vec![
        encode(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default()),
        encode(
            ApiKey::Metadata,
            12,
            &MetadataRequest::default().with_topics(None),
        ),
        encode(ApiKey::Produce, 9, &produce),
        encode(
            ApiKey::Fetch,
            12,
            &crate::kafka_protocol::fetch_request(SEED_TOPIC, 0, 0, 0),
        ),
        encode(ApiKey::InitProducerId, 4, &InitProducerIdRequest::default()),
        encode(
            ApiKey::DescribeConfigs,
            4,
            &DescribeConfigsRequest::default().with_resources(vec![
                DescribeConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(text(SEED_TOPIC)),
            ]),
        ),
        // At a topic that does not exist, named unlike the seed topic, so that no mutation
        // gives the seed topic a retention that would remove its records.
        encode(
            ApiKey::IncrementalAlterConfigs,
            1,
            &IncrementalAlterConfigsRequest::default()
                .with_validate_only(true)
                .with_resources(vec![
                    incremental_alter_configs_request::AlterConfigsResource::default()
                        .with_resource_type(2)
                        .with_resource_name(text("no-such-topic-here"))
                        .with_configs(vec![
                            incremental_alter_configs_request::AlterableConfig::default()
                                .with_name(text("retention.ms"))
                                .with_value(Some(text("60000"))),
                        ]),
                ]),
        ),
        encode(
            ApiKey::AlterConfigs,
            2,
            &AlterConfigsRequest::default()
                .with_validate_only(true)
                .with_resources(vec![
                    alter_configs_request::AlterConfigsResource::default()
                        .with_resource_type(2)
                        .with_resource_name(text("no-such-topic-here"))
                        .with_configs(vec![
                            alter_configs_request::AlterableConfig::default()
                                .with_name(text("retention.bytes"))
                                .with_value(Some(text("-1"))),
                        ]),
                ]),
        ),
        encode(
            ApiKey::DescribeCluster,
            1,
            &DescribeClusterRequest::default(),
        ),
        encode(
            ApiKey::FindCoordinator,
            4,
            &FindCoordinatorRequest::default().with_coordinator_keys(vec![text("fuzz-group")]),
        ),
        encode(
            ApiKey::JoinGroup,
            5,
            &JoinGroupRequest::default()
                .with_group_id(group())
                .with_session_timeout_ms(10_000)
                .with_rebalance_timeout_ms(1_000)
                .with_protocol_type(text("consumer"))
                .with_protocols(vec![
                    JoinGroupRequestProtocol::default()
                        .with_name(text("range"))
                        .with_metadata(bytes::Bytes::from_static(b"\0\0\0\0\0\x01\0\x04kept")),
                ]),
        ),
        encode(
            ApiKey::SyncGroup,
            5,
            &SyncGroupRequest::default().with_group_id(group()),
        ),
        encode(
            ApiKey::Heartbeat,
            4,
            &HeartbeatRequest::default().with_group_id(group()),
        ),
        encode(
            ApiKey::LeaveGroup,
            5,
            &LeaveGroupRequest::default().with_group_id(group()),
        ),
        encode(
            ApiKey::OffsetCommit,
            8,
            &OffsetCommitRequest::default()
                .with_group_id(group())
                .with_generation_id_or_member_epoch(-1)
                .with_topics(vec![
                    OffsetCommitRequestTopic::default()
                        .with_name(topic_name(SEED_TOPIC))
                        .with_partitions(vec![
                            OffsetCommitRequestPartition::default()
                                .with_partition_index(0)
                                .with_committed_offset(3),
                        ]),
                ]),
        ),
        encode(ApiKey::OffsetFetch, 7, &OffsetFetchRequest::default()),
        encode(
            ApiKey::DescribeGroups,
            5,
            &DescribeGroupsRequest::default().with_groups(vec![group()]),
        ),
        encode(ApiKey::ListGroups, 4, &ListGroupsRequest::default()),
        encode(
            ApiKey::DeleteGroups,
            2,
            &DeleteGroupsRequest::default().with_groups_names(vec![group()]),
        ),
    ]
}

/// A mutation of `frame`: what a broken or hostile client might send.
fn mutate(rng: &mut TestRng, frame: &[u8]) -> Vec<u8> {
    let mut out = frame.to_vec();
    let len = out.len().max(1) as u64;
    match rng.below(6) {
        0 => {
            for _ in 0..=rng.below(4) {
                let bit = rng.below(len * 8);
                if let Some(byte) = out.get_mut((bit / 8) as usize) {
                    *byte ^= 1 << (bit % 8);
                }
            }
        }
        1 => {
            let at = rng.below(len) as usize;
            if let Some(byte) = out.get_mut(at) {
                *byte = rng.below(256) as u8;
            }
        }
        2 => {
            // A count or length field becoming huge, negative, or zero.
            let values = [u32::MAX, 0x7FFF_FFFF, 0x8000_0000, 0, 1, 0xFFFF];
            let value = values[rng.below(values.len() as u64) as usize].to_be_bytes();
            let at = rng.below(len) as usize;
            for (offset, byte) in value.iter().enumerate() {
                if let Some(slot) = out.get_mut(at + offset) {
                    *slot = *byte;
                }
            }
        }
        3 => out.truncate(rng.below(len) as usize),
        4 => out.extend((0..rng.below(64)).map(|_| rng.below(256) as u8)),
        _ => {}
    }
    out
}

/// Sends `frames` pipelined on one new connection, with their size prefixes (sometimes a
/// wrong one), and reads what comes back for a moment. Returns the responses read.
fn hostile_connection(rng: &mut TestRng, port: u16, frames: &[Vec<u8>]) -> u64 {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let _ = stream.set_write_timeout(Some(Duration::from_millis(500)));
    let mut wire = Vec::new();
    for frame in frames {
        let mut size = u32::try_from(frame.len()).unwrap();
        if rng.below(20) == 0 {
            size = size.wrapping_add(rng.below(100) as u32).wrapping_sub(50);
        }
        wire.extend_from_slice(&size.to_be_bytes());
        wire.extend_from_slice(frame);
    }
    if stream.write_all(&wire).is_err() {
        return 0;
    }
    let mut responses = 0;
    let mut size = [0u8; 4];
    while stream.read_exact(&mut size).is_ok() {
        let mut body = vec![0u8; u32::from_be_bytes(size).min(64 << 20) as usize];
        if stream.read_exact(&mut body).is_err() {
            break;
        }
        responses += 1;
    }
    responses
}

#[test]
fn hostile_kafka_frames_neither_crash_the_server_nor_touch_what_it_holds() {
    let mut rng = TestRng::new(test_seed("hostile_kafka_frames"));
    let mut server = TestServer::start();
    let ports = server.kafka_ports.clone();
    // The records that must survive: one partition on each broker.
    let native =
        cairn_client::BlockingClient::connect(cairn_client::ClientConfig::new(server.address));
    let mut native = native.unwrap();
    native.create_topic(SEED_TOPIC, 2).unwrap();
    native.create_topic("fuzzed", 2).unwrap();
    let mut before = Vec::new();
    for (partition, port) in ports.iter().enumerate() {
        let mut connection = KafkaConnection::connect(*port);
        for index in 0..SEED_RECORD_COUNT / 2 {
            let value = format!("value-{partition}-{index}");
            let records = batch(vec![record(Some("key"), Some(&value), &[])]);
            let answer = produce(&mut connection, SEED_TOPIC, partition as i32, records);
            assert_eq!(answer.error_code, 0);
        }
        before.push(fetch(&mut connection, SEED_TOPIC, partition as i32, 0).2);
    }

    let corpus = corpus();
    let deadline = Instant::now() + fuzz_duration();
    let (mut connections, mut frames_sent, mut responses) = (0u64, 0u64, 0u64);
    while Instant::now() < deadline {
        let count = 1 + rng.below(12) as usize;
        let frames: Vec<Vec<u8>> = (0..count)
            .map(|_| {
                let valid = &corpus[rng.below(corpus.len() as u64) as usize];
                if rng.below(8) == 0 {
                    valid.clone()
                } else {
                    mutate(&mut rng, valid)
                }
            })
            .collect();
        let port = ports[rng.below(ports.len() as u64) as usize];
        responses += hostile_connection(&mut rng, port, &frames);
        frames_sent += count as u64;
        connections += 1;
        assert!(
            server.try_exit_status().is_none(),
            "the server died after {frames_sent} frames"
        );
    }
    eprintln!(
        "kafka fuzz: {frames_sent} frames on {connections} connections, {responses} responses"
    );
    assert!(
        responses > 0,
        "valid frames were sent, so some answers came back"
    );

    // Every broker still answers, and what it held is there, unchanged.
    for (partition, port) in ports.iter().enumerate() {
        let mut connection = KafkaConnection::connect(*port);
        let versions: ApiVersionsResponse =
            connection.call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
        assert_eq!(versions.error_code, 0);
        let (error_code, _, records) = fetch(&mut connection, SEED_TOPIC, partition as i32, 0);
        assert_eq!(error_code, 0);
        let kept: Vec<_> = records
            .iter()
            .take(before[partition].len())
            .map(|record| (record.offset, record.key.clone(), record.value.clone()))
            .collect();
        let expected: Vec<_> = before[partition]
            .iter()
            .map(|record| (record.offset, record.key.clone(), record.value.clone()))
            .collect();
        assert_eq!(kept, expected, "partition {partition}");
    }
    native.ping().unwrap();
}
