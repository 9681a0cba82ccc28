//! The Kafka front end over real TCP against a real `cairn serve`, every request and
//! response encoded with the `kafka-protocol` crate as a client would: ApiVersions (and
//! its v0 answer to an unsupported version), Metadata leaders, CreateTopics, Produce and
//! Fetch round trips, conditional produces that conflict, long-polling fetches,
//! ListOffsets; and bad input (truncated and oversized frames, unknown API keys and
//! versions, a flipped CRC byte, garbage bodies): the connection is closed or answered
//! with a Kafka error, the log is untouched, and other clients are still served.

use std::io::Write;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::produce_response::PartitionProduceResponse;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, BrokerId, CreateTopicsRequest,
    CreateTopicsResponse, FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse,
    MetadataRequest, MetadataResponse, ProduceRequest, ProduceResponse, RequestHeader, TopicName,
};
use kafka_protocol::protocol::{Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

pub(crate) use crate::support::kafka_connection::KafkaConnection;
use crate::support::server::TestServer;

const UNSUPPORTED_VERSION: i16 = 35;
const INVALID_RECORD: i16 = 87;
const NOT_LEADER_OR_FOLLOWER: i16 = 6;
const CORRUPT_MESSAGE: i16 = 2;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const TOPIC_ALREADY_EXISTS: i16 = 36;
const INVALID_REPLICATION_FACTOR: i16 = 38;

pub(crate) fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_owned()))
}

fn create_topic(connection: &mut KafkaConnection, name: &str, partitions: i32) {
    let request = CreateTopicsRequest::default()
        .with_topics(vec![
            CreatableTopic::default()
                .with_name(topic_name(name))
                .with_num_partitions(partitions)
                .with_replication_factor(-1),
        ])
        .with_timeout_ms(10_000);
    let response: CreateTopicsResponse = connection.call(ApiKey::CreateTopics, 7, &request);
    assert_eq!(response.topics[0].error_code, 0, "{:?}", response.topics[0]);
}

/// A record for a produce batch.
pub(crate) fn record(key: Option<&str>, value: Option<&str>, headers: &[(&str, &str)]) -> Record {
    let mut header_map = IndexMap::new();
    for (name, value) in headers {
        header_map.insert(
            StrBytes::from_string((*name).to_owned()),
            Some(Bytes::from(value.to_string())),
        );
    }
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp: 1_700_000_000_000,
        key: key.map(|key| Bytes::from(key.to_owned())),
        value: value.map(|value| Bytes::from(value.to_owned())),
        headers: header_map,
    }
}

/// One RecordBatch v2 of `records`, offsets and sequences numbered from 0.
pub(crate) fn batch(mut records: Vec<Record>) -> Bytes {
    for (index, record) in records.iter_mut().enumerate() {
        record.offset = index as i64;
        if record.producer_id >= 0 {
            record.sequence = index as i32;
        } else {
            record.sequence = -1 + index as i32;
        }
    }
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut buf, &records, &options).unwrap();
    buf.freeze()
}

pub(crate) fn produce_request(topic: &str, partition: i32, records: Bytes) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(topic_name(topic))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(partition)
                        .with_records(Some(records)),
                ]),
        ])
}

pub(crate) fn produce(
    connection: &mut KafkaConnection,
    topic: &str,
    partition: i32,
    records: Bytes,
) -> PartitionProduceResponse {
    let response: ProduceResponse = connection.call(
        ApiKey::Produce,
        9,
        &produce_request(topic, partition, records),
    );
    response.responses[0].partition_responses[0].clone()
}

pub(crate) fn fetch_request(
    topic: &str,
    partition: i32,
    offset: i64,
    max_wait_ms: i32,
) -> FetchRequest {
    FetchRequest::default()
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(1024 * 1024)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(topic_name(topic))
                .with_partitions(vec![
                    FetchPartition::default()
                        .with_partition(partition)
                        .with_fetch_offset(offset)
                        .with_partition_max_bytes(1024 * 1024),
                ]),
        ])
}

/// Fetches `partition` from `offset` without waiting: (error code, high watermark, records).
pub(crate) fn fetch(
    connection: &mut KafkaConnection,
    topic: &str,
    partition: i32,
    offset: i64,
) -> (i16, i64, Vec<Record>) {
    let response: FetchResponse = connection.call(
        ApiKey::Fetch,
        12,
        &fetch_request(topic, partition, offset, 0),
    );
    fetched(&response)
}

fn fetched(response: &FetchResponse) -> (i16, i64, Vec<Record>) {
    let data = &response.responses[0].partitions[0];
    let mut records_bytes = data.records.clone().unwrap_or_default();
    let mut records = Vec::new();
    for set in RecordBatchDecoder::decode_all(&mut records_bytes).unwrap() {
        records.extend(set.records);
    }
    (data.error_code, data.high_watermark, records)
}

/// ListOffsets for one partition and timestamp: (error code, offset).
pub(crate) fn list_offset(
    connection: &mut KafkaConnection,
    topic: &str,
    partition: i32,
    timestamp: i64,
) -> (i16, i64) {
    let request = ListOffsetsRequest::default()
        .with_replica_id((-1).into())
        .with_topics(vec![
            ListOffsetsTopic::default()
                .with_name(topic_name(topic))
                .with_partitions(vec![
                    ListOffsetsPartition::default()
                        .with_partition_index(partition)
                        .with_timestamp(timestamp),
                ]),
        ]);
    let response: ListOffsetsResponse = connection.call(ApiKey::ListOffsets, 6, &request);
    let partition = &response.topics[0].partitions[0];
    (partition.error_code, partition.offset)
}

fn header<'a>(record: &'a Record, name: &str) -> Option<&'a [u8]> {
    record
        .headers
        .get(&StrBytes::from_string(name.to_owned()))
        .and_then(|value| value.as_deref())
}

#[test]
fn kafka_api_versions_advertises_and_answers_unsupported_versions_with_v0() {
    let server = TestServer::start();
    let mut connection = KafkaConnection::connect(server.kafka_ports[0]);
    let request = ApiVersionsRequest::default()
        .with_client_software_name(StrBytes::from_static_str("cairn-test"))
        .with_client_software_version(StrBytes::from_static_str("1"));
    let response: ApiVersionsResponse = connection.call(ApiKey::ApiVersions, 3, &request);
    assert_eq!(response.error_code, 0);
    let produce = response
        .api_keys
        .iter()
        .find(|api| api.api_key == ApiKey::Produce as i16)
        .expect("Produce is advertised");
    assert_eq!((produce.min_version, produce.max_version), (3, 12));
    let fetch = response
        .api_keys
        .iter()
        .find(|api| api.api_key == ApiKey::Fetch as i16)
        .expect("Fetch is advertised");
    assert!(fetch.max_version < 13, "no topic-id fetches");
    for (api_key, max_version) in [
        (ApiKey::AlterConfigs, 2),
        (ApiKey::IncrementalAlterConfigs, 1),
    ] {
        let api = response
            .api_keys
            .iter()
            .find(|api| api.api_key == api_key as i16)
            .unwrap_or_else(|| panic!("{api_key:?} is advertised"));
        assert_eq!((api.min_version, api.max_version), (0, max_version));
    }

    // A newer ApiVersions than the server speaks: a v0 answer, whatever was asked, and
    // the connection stays usable.
    // (Its header is v2, with a tagged-field count after the client id.)
    let correlation_id = connection.send_unencodable(ApiKey::ApiVersions as i16, 99, &[0, 0, 0]);
    let response: ApiVersionsResponse = connection.receive(ApiKey::ApiVersions, 0, correlation_id);
    assert_eq!(response.error_code, UNSUPPORTED_VERSION);
    assert!(!response.api_keys.is_empty());
    let response: ApiVersionsResponse = connection.call(ApiKey::ApiVersions, 0, &request);
    assert_eq!(response.error_code, 0);
}

#[test]
fn kafka_metadata_names_the_owning_shard_as_leader() {
    let server = TestServer::start();
    assert_eq!(server.kafka_ports.len(), 2);
    assert_eq!(
        server.kafka_bootstrap(),
        format!("127.0.0.1:{}", server.kafka_ports[0])
    );
    let mut connection = KafkaConnection::connect(server.kafka_ports[1]);
    create_topic(&mut connection, "placed", 4);

    // Creating it again, or with more than one replica, is refused.
    let again = CreateTopicsRequest::default().with_topics(vec![
        CreatableTopic::default()
            .with_name(topic_name("placed"))
            .with_num_partitions(1)
            .with_replication_factor(1),
        CreatableTopic::default()
            .with_name(topic_name("replicated"))
            .with_num_partitions(1)
            .with_replication_factor(3),
    ]);
    let response: CreateTopicsResponse = connection.call(ApiKey::CreateTopics, 4, &again);
    assert_eq!(response.topics[0].error_code, TOPIC_ALREADY_EXISTS);
    assert_eq!(response.topics[1].error_code, INVALID_REPLICATION_FACTOR);

    for version in [1, 9, 12] {
        let request = MetadataRequest::default().with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(topic_name("placed"))),
            MetadataRequestTopic::default().with_name(Some(topic_name("absent"))),
        ]));
        let response: MetadataResponse = connection.call(ApiKey::Metadata, version, &request);
        assert_eq!(response.brokers.len(), 2, "v{version}");
        for broker in &response.brokers {
            let shard = usize::try_from(broker.node_id.0).unwrap();
            assert_eq!(broker.port, i32::from(server.kafka_ports[shard]));
            assert_eq!(broker.host.as_str(), "127.0.0.1");
        }
        assert_eq!(response.controller_id.0, 0);
        let placed = &response.topics[0];
        assert_eq!(placed.error_code, 0);
        assert_eq!(placed.partitions.len(), 4);
        for partition in &placed.partitions {
            // A fresh directory's first topic has partition ids 0.., owned by id % 2.
            let owner = partition.partition_index % 2;
            assert_eq!(partition.leader_id.0, owner, "v{version}");
            assert_eq!(partition.replica_nodes, vec![BrokerId(owner)]);
            assert_eq!(partition.isr_nodes, vec![BrokerId(owner)]);
        }
        // Never auto-created.
        assert_eq!(response.topics[1].error_code, UNKNOWN_TOPIC_OR_PARTITION);
        if version >= 2 {
            let cluster_id = response.cluster_id.clone().expect("a cluster id");
            assert_eq!(cluster_id.len(), 22);
        }
    }
}

#[test]
fn kafka_produce_then_fetch_round_trips_records() {
    let server = TestServer::start();
    let mut connection = KafkaConnection::connect(server.kafka_ports[0]);
    create_topic(&mut connection, "events", 2);
    let records = batch(vec![
        record(Some("k1"), Some("v1"), &[("event-type", "created")]),
        record(Some("k2"), None, &[]),
        record(Some("k1"), Some("v3"), &[]),
        record(None, Some("keyless"), &[]),
    ]);
    let response = produce(&mut connection, "events", 0, records);
    assert_eq!(response.error_code, 0, "{response:?}");
    assert_eq!(response.base_offset, 0);

    let (error_code, high_watermark, fetched) = fetch(&mut connection, "events", 0, 0);
    assert_eq!(error_code, 0);
    assert_eq!(high_watermark, 4);
    assert_eq!(fetched.len(), 4);
    let offsets: Vec<i64> = fetched.iter().map(|record| record.offset).collect();
    assert_eq!(offsets, [0, 1, 2, 3]);
    // The producer's timestamps, nulls kept.
    assert!(
        fetched
            .iter()
            .all(|record| record.timestamp == 1_700_000_000_000)
    );
    assert_eq!(fetched[1].value, None);
    assert_eq!(fetched[3].key, None);
    assert_eq!(fetched[3].value.as_deref(), Some(&b"keyless"[..]));
    assert_eq!(header(&fetched[3], "cairn.prev-key-offset"), None);
    assert_eq!(fetched[0].key.as_deref(), Some(&b"k1"[..]));
    assert_eq!(fetched[0].value.as_deref(), Some(&b"v1"[..]));
    assert_eq!(header(&fetched[0], "event-type"), Some(&b"created"[..]));
    assert_eq!(header(&fetched[0], "cairn.prev-key-offset"), None);
    assert_eq!(fetched[1].key.as_deref(), Some(&b"k2"[..]));
    assert_eq!(
        header(&fetched[2], "cairn.prev-key-offset"),
        Some(&b"0"[..])
    );

    // The partition another shard owns is not served here.
    let response = produce(
        &mut connection,
        "events",
        1,
        batch(vec![record(Some("x"), Some("y"), &[])]),
    );
    assert_eq!(response.error_code, NOT_LEADER_OR_FOLLOWER);
    let (error_code, _, _) = fetch(&mut connection, "events", 1, 0);
    assert_eq!(error_code, NOT_LEADER_OR_FOLLOWER);
    // v10 and later name the leader (KIP-951), so clients need no metadata round trip.
    let request = produce_request("events", 1, batch(vec![record(Some("x"), Some("y"), &[])]));
    let response: ProduceResponse = connection.call(ApiKey::Produce, 12, &request);
    let partition = &response.responses[0].partition_responses[0];
    assert_eq!(partition.error_code, NOT_LEADER_OR_FOLLOWER);
    assert_eq!(partition.current_leader.leader_id, BrokerId(1));
    assert_eq!(response.node_endpoints.len(), 1);
    assert_eq!(
        response.node_endpoints[0].port,
        i32::from(server.kafka_ports[1])
    );
    // Its leader serves it.
    let mut leader = KafkaConnection::connect(server.kafka_ports[1]);
    let response = produce(
        &mut leader,
        "events",
        1,
        batch(vec![record(Some("x"), Some("y"), &[])]),
    );
    assert_eq!(response.error_code, 0);
}

#[test]
fn kafka_conditional_produce_conflicts_are_invalid_record_with_a_parseable_message() {
    let server = TestServer::start();
    let mut connection = KafkaConnection::connect(server.kafka_ports[0]);
    create_topic(&mut connection, "accounts", 1);
    let first = produce(
        &mut connection,
        "accounts",
        0,
        batch(vec![record(
            Some("12A"),
            Some("open"),
            &[("cairn.expect", "no-key")],
        )]),
    );
    assert_eq!(first.error_code, 0, "{first:?}");

    let conflict = produce(
        &mut connection,
        "accounts",
        0,
        batch(vec![
            record(Some("other"), Some("x"), &[]),
            record(Some("12A"), Some("again"), &[("cairn.expect", "no-key")]),
        ]),
    );
    assert_eq!(conflict.error_code, INVALID_RECORD);
    let message = "conflict: record 1 expected no key, key is at offset 0";
    assert_eq!(conflict.error_message.as_deref(), Some(message));
    assert_eq!(conflict.record_errors.len(), 1);
    assert_eq!(conflict.record_errors[0].batch_index, 1);
    assert_eq!(
        conflict.record_errors[0]
            .batch_index_error_message
            .as_deref(),
        Some(message)
    );

    let at = produce(
        &mut connection,
        "accounts",
        0,
        batch(vec![record(
            Some("12A"),
            Some("x"),
            &[("cairn.expect", "5")],
        )]),
    );
    assert_eq!(
        at.error_message.as_deref(),
        Some("conflict: record 0 expected key 12A at offset 5, key is at offset 0")
    );
    let end = produce(
        &mut connection,
        "accounts",
        0,
        batch(vec![record(
            Some("12A"),
            Some("x"),
            &[("cairn.expect-end-offset", "5")],
        )]),
    );
    assert_eq!(end.error_code, INVALID_RECORD);
    assert_eq!(
        end.error_message.as_deref(),
        Some("conflict: expected end offset 5, end offset is 1")
    );
    let malformed = produce(
        &mut connection,
        "accounts",
        0,
        batch(vec![
            record(Some("a"), Some("x"), &[]),
            record(Some("b"), Some("x"), &[("cairn.expect", "maybe")]),
        ]),
    );
    assert_eq!(malformed.error_code, INVALID_RECORD);
    assert_eq!(malformed.record_errors[0].batch_index, 1);
    assert!(
        malformed
            .error_message
            .as_deref()
            .unwrap()
            .starts_with("invalid condition: record 1"),
        "{malformed:?}"
    );

    // Nothing of the rejected batches reached the log; conditions that hold append, and
    // their headers are not stored.
    assert_eq!(list_offset(&mut connection, "accounts", 0, -1), (0, 1));
    let ok = produce(
        &mut connection,
        "accounts",
        0,
        batch(vec![record(
            Some("12A"),
            Some("closed"),
            &[("cairn.expect", "0"), ("cairn.expect-end-offset", "1")],
        )]),
    );
    assert_eq!((ok.error_code, ok.base_offset), (0, 1));
    let (_, _, fetched) = fetch(&mut connection, "accounts", 0, 1);
    assert_eq!(header(&fetched[0], "cairn.expect"), None);
    assert_eq!(header(&fetched[0], "cairn.expect-end-offset"), None);
    assert_eq!(
        header(&fetched[0], "cairn.prev-key-offset"),
        Some(&b"0"[..])
    );
}

#[test]
fn kafka_fetch_long_polls_until_a_record_arrives() {
    let server = TestServer::start();
    let mut connection = KafkaConnection::connect(server.kafka_ports[0]);
    create_topic(&mut connection, "waits", 1);
    let port = server.kafka_ports[0];
    let producer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        let mut connection = KafkaConnection::connect(port);
        produce(
            &mut connection,
            "waits",
            0,
            batch(vec![record(Some("k"), Some("v"), &[])]),
        )
    });
    let started = Instant::now();
    let response: FetchResponse =
        connection.call(ApiKey::Fetch, 12, &fetch_request("waits", 0, 0, 10_000));
    let waited = started.elapsed();
    let (error_code, high_watermark, records) = fetched(&response);
    assert_eq!(producer.join().unwrap().error_code, 0);
    assert_eq!((error_code, high_watermark, records.len()), (0, 1, 1));
    assert!(waited < Duration::from_secs(5), "answered after {waited:?}");

    // Nothing arrives: answered after max_wait_ms, empty.
    let started = Instant::now();
    let response: FetchResponse =
        connection.call(ApiKey::Fetch, 4, &fetch_request("waits", 0, 1, 200));
    assert!(started.elapsed() >= Duration::from_millis(150));
    let (error_code, _, records) = fetched(&response);
    assert_eq!((error_code, records.len()), (0, 0));
    // Beyond the end: out of range.
    let (error_code, _, _) = fetch(&mut connection, "waits", 0, 5);
    assert_eq!(error_code, 1);
}

#[test]
fn kafka_list_offsets_earliest_and_latest() {
    let server = TestServer::start();
    let mut connection = KafkaConnection::connect(server.kafka_ports[0]);
    create_topic(&mut connection, "offsets", 1);
    assert_eq!(list_offset(&mut connection, "offsets", 0, -1), (0, 0));
    let records = batch(vec![
        record(Some("a"), Some("1"), &[]),
        record(Some("b"), Some("2"), &[]),
    ]);
    assert_eq!(
        produce(&mut connection, "offsets", 0, records).error_code,
        0
    );
    assert_eq!(list_offset(&mut connection, "offsets", 0, -2), (0, 0));
    assert_eq!(list_offset(&mut connection, "offsets", 0, -1), (0, 2));
    assert_eq!(
        list_offset(&mut connection, "nope", 0, -1).0,
        UNKNOWN_TOPIC_OR_PARTITION
    );

    // By timestamp: the first record at or after it; none that recent: the end.
    let timed: Vec<Record> = [1_000, 2_000, 3_000]
        .into_iter()
        .map(|timestamp| Record {
            timestamp,
            ..record(Some("t"), Some("x"), &[])
        })
        .collect();
    create_topic(&mut connection, "timed", 1);
    // The second topic's partition 0 has id 1: shard 1 leads it.
    let mut connection = KafkaConnection::connect(server.kafka_ports[1]);
    assert_eq!(
        produce(&mut connection, "timed", 0, batch(timed)).error_code,
        0
    );
    assert_eq!(list_offset(&mut connection, "timed", 0, 1_500), (0, 1));
    assert_eq!(list_offset(&mut connection, "timed", 0, 0), (0, 0));
    // Later than every record: Kafka's "no such offset", -1 (not the end offset).
    assert_eq!(
        list_offset(&mut connection, "timed", 0, 4_000_000_000_000),
        (0, -1)
    );
}

/// After bad input on one connection: the partition still ends at `end`, and a fresh
/// connection is served.
fn assert_untouched_and_serving(server: &TestServer, end: i64) {
    let mut fresh = KafkaConnection::connect(server.kafka_ports[0]);
    assert_eq!(list_offset(&mut fresh, "guarded", 0, -1), (0, end));
    let (error_code, _, records) = fetch(&mut fresh, "guarded", 0, 0);
    assert_eq!(error_code, 0);
    assert_eq!(records.len() as i64, end);
}

#[test]
fn kafka_bad_input_closes_or_errors_and_leaves_the_log_untouched() {
    let server = TestServer::start();
    let port = server.kafka_ports[0];
    let mut setup = KafkaConnection::connect(port);
    create_topic(&mut setup, "guarded", 1);
    assert_eq!(
        produce(
            &mut setup,
            "guarded",
            0,
            batch(vec![record(Some("k"), Some("v"), &[])])
        )
        .error_code,
        0
    );

    // A flipped CRC byte: CORRUPT_MESSAGE, on a connection that stays usable.
    let mut records = BytesMut::from(&batch(vec![record(Some("k"), Some("w"), &[])])[..]);
    records[17] ^= 0xff; // the first byte of the CRC (after base offset, length, epoch, magic)
    let response = produce(&mut setup, "guarded", 0, records.freeze());
    assert_eq!(response.error_code, CORRUPT_MESSAGE, "{response:?}");
    assert_untouched_and_serving(&server, 1);
    // A corrupted record inside a batch with a valid CRC is caught by the CRC too; a batch
    // whose length runs past the records is corrupt.
    let mut records = BytesMut::from(&batch(vec![record(Some("k"), Some("w"), &[])])[..]);
    records.truncate(records.len() - 3);
    let response = produce(&mut setup, "guarded", 0, records.freeze());
    assert_eq!(response.error_code, CORRUPT_MESSAGE, "{response:?}");
    assert_untouched_and_serving(&server, 1);

    // A truncated frame: the client leaves mid-frame.
    let mut truncated = KafkaConnection::connect(port);
    truncated.stream.write_all(&100u32.to_be_bytes()).unwrap();
    truncated.stream.write_all(&[0, 0, 0, 9]).unwrap();
    truncated
        .stream
        .shutdown(std::net::Shutdown::Write)
        .unwrap();
    assert!(truncated.is_closed_by_server());
    assert_untouched_and_serving(&server, 1);

    // An oversized length prefix: closed before anything is buffered.
    let mut oversized = KafkaConnection::connect(port);
    oversized
        .stream
        .write_all(&0x7fff_ffffu32.to_be_bytes())
        .unwrap();
    assert!(oversized.is_closed_by_server());
    let mut negative = KafkaConnection::connect(port);
    negative.stream.write_all(&(-5i32).to_be_bytes()).unwrap();
    assert!(negative.is_closed_by_server());
    assert_untouched_and_serving(&server, 1);

    // An unknown API key.
    let mut unknown = KafkaConnection::connect(port);
    unknown.send_unencodable(999, 0, &[]);
    assert!(unknown.is_closed_by_server());
    // A version we do not speak: Produce v2, Fetch v13 (topic ids).
    let mut old = KafkaConnection::connect(port);
    let records = batch(vec![record(Some("k"), Some("old"), &[])]);
    old.send_unencodable(ApiKey::Produce as i16, 2, &[0xff, 0xff, 0, 1]);
    assert!(old.is_closed_by_server());
    let mut new = KafkaConnection::connect(port);
    new.send_unencodable(ApiKey::Fetch as i16, 13, &[0; 16]);
    assert!(new.is_closed_by_server());
    assert_untouched_and_serving(&server, 1);

    // A garbage body after a valid header; a produce cut short.
    let mut garbage = KafkaConnection::connect(port);
    let mut frame = BytesMut::new();
    let mut header = RequestHeader::default();
    header.request_api_key = ApiKey::Metadata as i16;
    header.request_api_version = 12;
    header.correlation_id = 7;
    header.encode(&mut frame, 2).unwrap();
    frame.extend_from_slice(&[0xff; 9]);
    garbage.send_frame(&frame);
    assert!(garbage.is_closed_by_server());
    let mut cut = KafkaConnection::connect(port);
    let mut frame = BytesMut::new();
    let mut header = RequestHeader::default();
    header.request_api_key = ApiKey::Produce as i16;
    header.request_api_version = 9;
    header.correlation_id = 8;
    header.encode(&mut frame, 2).unwrap();
    produce_request("guarded", 0, records)
        .encode(&mut frame, 9)
        .unwrap();
    let cut_at = frame.len() - 20;
    cut.send_frame(&frame[..cut_at]);
    assert!(cut.is_closed_by_server());
    // A frame too short to hold a request header.
    let mut short = KafkaConnection::connect(port);
    short.send_frame(&[0, 3]);
    assert!(short.is_closed_by_server());
    assert_untouched_and_serving(&server, 1);

    // The first connection was never disturbed.
    let (error_code, high_watermark, _) = fetch(&mut setup, "guarded", 0, 0);
    assert_eq!((error_code, high_watermark), (0, 1));
}

#[test]
fn kafka_long_poll_ends_at_shutdown_and_the_server_exits_at_once() {
    let mut server = TestServer::start();
    let mut connection = KafkaConnection::connect(server.kafka_ports[0]);
    create_topic(&mut connection, "quiet", 1);
    let correlation_id = connection.send(ApiKey::Fetch, 12, &fetch_request("quiet", 0, 0, 30_000));
    // Give the fetch time to start waiting; then SIGTERM must not wait out its 30 s.
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let status = server.stop_with(15, Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // It was answered (empty) before the connection closed.
    let response: FetchResponse = connection.receive(ApiKey::Fetch, 12, correlation_id);
    let (error_code, _, records) = fetched(&response);
    assert_eq!((error_code, records.len()), (0, 0));
}

#[test]
fn kafka_needs_an_advertised_host_on_an_unspecified_address_and_can_be_off() {
    let temp_dir = tempfile::tempdir().unwrap();
    let outcome = crate::support::server::serve_until_exit(
        &temp_dir.path().join("data"),
        &["--kafka-listen", "0.0.0.0:0"],
        Duration::from_secs(20),
    );
    assert_eq!(outcome.status.and_then(|status| status.code()), Some(1));
    assert!(
        outcome.stderr.contains("--kafka-advertised-host"),
        "{}",
        outcome.stderr
    );
    // Kafka ports that overlap the native ones are refused, not shared.
    let free_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let port_base = free_port.to_string();
    let kafka_listen = format!("127.0.0.1:{}", free_port + 1);
    let outcome = crate::support::server::serve_until_exit(
        &temp_dir.path().join("data"),
        &["--port-base", &port_base, "--kafka-listen", &kafka_listen],
        Duration::from_secs(20),
    );
    assert_eq!(outcome.status.and_then(|status| status.code()), Some(1));
    assert!(
        outcome.stderr.contains("asked for twice"),
        "{}",
        outcome.stderr
    );
    // With one, brokers are advertised by that name.
    let server = TestServer::start_on(
        &temp_dir.path().join("data"),
        &[
            "--kafka-listen",
            "0.0.0.0:0",
            "--kafka-advertised-host",
            "localhost",
        ],
    );
    let mut connection = KafkaConnection::connect(server.kafka_ports[0]);
    let response: MetadataResponse =
        connection.call(ApiKey::Metadata, 12, &MetadataRequest::default());
    assert!(
        response
            .brokers
            .iter()
            .all(|broker| broker.host.as_str() == "localhost")
    );
    let cluster_id = response.cluster_id.clone().unwrap();
    drop(connection);
    drop(server);
    // Off: no Kafka ports. The cluster id is the data directory's: the same after a restart.
    let off = TestServer::start_on(&temp_dir.path().join("data"), &["--no-kafka"]);
    assert!(off.kafka_ports.is_empty());
    drop(off);
    let again = TestServer::start_on(&temp_dir.path().join("data"), &[]);
    let mut connection = KafkaConnection::connect(again.kafka_ports[0]);
    let response: MetadataResponse =
        connection.call(ApiKey::Metadata, 12, &MetadataRequest::default());
    assert_eq!(response.cluster_id, Some(cluster_id));
}

#[test]
fn kafka_idempotent_producers_get_ids_and_retries_answer_the_original_offset() {
    use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
    let server = TestServer::start();
    let mut connection = KafkaConnection::connect(server.kafka_ports[0]);
    create_topic(&mut connection, "idem", 1);
    let init = InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_transaction_timeout_ms(60_000)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    let first: InitProducerIdResponse = connection.call(ApiKey::InitProducerId, 4, &init);
    assert_eq!(first.error_code, 0);
    assert!(first.producer_id.0 >= 0);
    assert_eq!(first.producer_epoch, 0);
    let other: InitProducerIdResponse = connection.call(ApiKey::InitProducerId, 1, &init);
    assert_ne!(
        other.producer_id, first.producer_id,
        "never handed out twice"
    );
    // KIP-360: the same id with the next epoch.
    let bump = init
        .clone()
        .with_producer_id(first.producer_id)
        .with_producer_epoch(0);
    let bumped: InitProducerIdResponse = connection.call(ApiKey::InitProducerId, 4, &bump);
    assert_eq!(
        (bumped.producer_id, bumped.producer_epoch),
        (first.producer_id, 1)
    );
    // Transactions are refused, fatally.
    let transactional = init
        .clone()
        .with_transactional_id(Some(StrBytes::from_static_str("tx").into()));
    let refused: InitProducerIdResponse =
        connection.call(ApiKey::InitProducerId, 4, &transactional);
    assert_eq!(refused.error_code, 53);

    let stamped = |sequence_base: i32, epoch: i16| {
        let mut records = vec![
            record(Some("a"), Some("1"), &[]),
            record(Some("b"), Some("2"), &[]),
        ];
        for (index, record) in records.iter_mut().enumerate() {
            record.producer_id = bumped.producer_id.0;
            record.producer_epoch = epoch;
            record.offset = index as i64;
            record.sequence = sequence_base + index as i32;
        }
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &records,
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            },
        )
        .unwrap();
        buf.freeze()
    };
    let appended = produce(&mut connection, "idem", 0, stamped(0, 1));
    assert_eq!((appended.error_code, appended.base_offset), (0, 0));
    // A retry of the same batch: not appended again, its original offset answered.
    let retried = produce(&mut connection, "idem", 0, stamped(0, 1));
    assert_eq!((retried.error_code, retried.base_offset), (0, 0));
    assert_eq!(list_offset(&mut connection, "idem", 0, -1), (0, 2));
    // A gap in the sequence, and an older epoch.
    let gap = produce(&mut connection, "idem", 0, stamped(7, 1));
    assert_eq!(gap.error_code, 45, "OUT_OF_ORDER_SEQUENCE_NUMBER");
    let fenced = produce(&mut connection, "idem", 0, stamped(2, 0));
    assert_eq!(fenced.error_code, 47, "INVALID_PRODUCER_EPOCH");
    let next = produce(&mut connection, "idem", 0, stamped(2, 1));
    assert_eq!((next.error_code, next.base_offset), (0, 2));
    // Fetched batches carry the producer's stamp.
    let response: FetchResponse =
        connection.call(ApiKey::Fetch, 12, &fetch_request("idem", 0, 0, 0));
    let (_, _, records) = fetched(&response);
    assert_eq!(records.len(), 4);
    assert!(
        records
            .iter()
            .all(|record| record.producer_id == bumped.producer_id.0)
    );
    let sequences: Vec<i32> = records.iter().map(|record| record.sequence).collect();
    assert_eq!(sequences, [0, 1, 2, 3]);
}

#[test]
fn kafka_fetch_sizes_keep_whole_batches_and_acks_zero_answers_nothing() {
    let server = TestServer::start();
    let mut connection = KafkaConnection::connect(server.kafka_ports[0]);
    create_topic(&mut connection, "sized", 1);
    for value in ["first-batch", "second-batch"] {
        let records = batch(vec![
            record(Some("k"), Some(value), &[]),
            record(Some("k"), Some(value), &[]),
        ]);
        assert_eq!(produce(&mut connection, "sized", 0, records).error_code, 0);
    }
    // One byte allowed: still the first batch, whole (KIP-74), and nothing more.
    let mut request = fetch_request("sized", 0, 0, 0);
    request.topics[0].partitions[0].partition_max_bytes = 1;
    let response: FetchResponse = connection.call(ApiKey::Fetch, 12, &request);
    let (error_code, high_watermark, records) = fetched(&response);
    assert_eq!((error_code, high_watermark), (0, 4));
    let offsets: Vec<i64> = records.iter().map(|record| record.offset).collect();
    assert_eq!(offsets, [0, 1]);
    // From inside a batch: the whole batch, as Kafka brokers send it.
    let (_, _, records) = fetch(&mut connection, "sized", 0, 3);
    let offsets: Vec<i64> = records.iter().map(|record| record.offset).collect();
    assert_eq!(offsets, [2, 3]);

    // acks=0: appended, never answered; the next request's answer comes next.
    let records = batch(vec![record(Some("k"), Some("fire-and-forget"), &[])]);
    connection.send(
        ApiKey::Produce,
        9,
        &produce_request("sized", 0, records).with_acks(0),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (error_code, offset) = list_offset(&mut connection, "sized", 0, -1);
        assert_eq!(error_code, 0);
        if offset == 5 {
            break;
        }
        assert!(Instant::now() < deadline, "the acks=0 batch never appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn kafka_describe_configs_and_cluster_answer_the_fixed_set_and_every_shard() {
    use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
    use kafka_protocol::messages::{
        DescribeClusterRequest, DescribeClusterResponse, DescribeConfigsRequest,
        DescribeConfigsResponse,
    };
    let server = TestServer::start();
    let mut connection = KafkaConnection::connect(server.kafka_ports[0]);
    create_topic(&mut connection, "configured", 1);
    let resource = |resource_type: i8, name: &str| {
        DescribeConfigsResource::default()
            .with_resource_type(resource_type)
            .with_resource_name(StrBytes::from_string(name.to_owned()))
            .with_configuration_keys(None)
    };
    for version in [1, 4] {
        let request = DescribeConfigsRequest::default().with_resources(vec![
            resource(2, "configured"),
            resource(2, "absent"),
            resource(4, "0"),
        ]);
        let response: DescribeConfigsResponse =
            connection.call(ApiKey::DescribeConfigs, version, &request);
        let topic = &response.results[0];
        assert_eq!(topic.error_code, 0);
        let value = |name: &str| {
            topic
                .configs
                .iter()
                .find(|config| config.name.as_str() == name)
                .and_then(|config| config.value.as_ref().map(|value| value.to_string()))
        };
        assert_eq!(value("cleanup.policy").as_deref(), Some("delete"));
        assert_eq!(value("retention.ms").as_deref(), Some("-1"));
        assert_eq!(value("min.insync.replicas").as_deref(), Some("1"));
        assert_eq!(
            value("message.timestamp.type").as_deref(),
            Some("CreateTime")
        );
        // Only retention changes (AlterConfigs); the rest is what Cairn is.
        for config in &topic.configs {
            let settable = config.name.starts_with("retention.");
            assert_eq!(config.read_only, !settable, "{:?}", config.name);
        }
        assert_eq!(response.results[1].error_code, UNKNOWN_TOPIC_OR_PARTITION);
        assert_eq!(response.results[2].error_code, 0);
        assert!(!response.results[2].configs.is_empty());
    }
    let response: DescribeClusterResponse = connection.call(
        ApiKey::DescribeCluster,
        1,
        &DescribeClusterRequest::default().with_endpoint_type(1),
    );
    assert_eq!(response.error_code, 0);
    assert_eq!(response.controller_id, BrokerId(0));
    assert_eq!(response.cluster_id.len(), 22);
    let ports: Vec<i32> = response.brokers.iter().map(|broker| broker.port).collect();
    let expected: Vec<i32> = server
        .kafka_ports
        .iter()
        .map(|&port| i32::from(port))
        .collect();
    assert_eq!(ports, expected);
}

/// A topic's (retention.ms, retention.bytes) as DescribeConfigs v4 reports them, with their
/// config sources.
fn described_retention(connection: &mut KafkaConnection, topic: &str) -> [(String, i8); 2] {
    use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
    use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};
    let request = DescribeConfigsRequest::default().with_resources(vec![
        DescribeConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(StrBytes::from_string(topic.to_owned()))
            .with_configuration_keys(Some(vec![
                StrBytes::from_static_str("retention.ms"),
                StrBytes::from_static_str("retention.bytes"),
            ])),
    ]);
    let response: DescribeConfigsResponse = connection.call(ApiKey::DescribeConfigs, 4, &request);
    let result = &response.results[0];
    assert_eq!(result.error_code, 0, "{result:?}");
    assert_eq!(
        result.configs.len(),
        2,
        "only the keys asked for: {result:?}"
    );
    ["retention.ms", "retention.bytes"].map(|name| {
        let config = result
            .configs
            .iter()
            .find(|config| config.name.as_str() == name)
            .unwrap_or_else(|| panic!("{name} described"));
        let value = config.value.as_ref().map(ToString::to_string);
        (value.unwrap_or_default(), config.config_source)
    })
}

#[test]
fn kafka_alter_configs_replaces_the_whole_config_and_incremental_changes_one_key() {
    use kafka_protocol::messages::alter_configs_request::{AlterConfigsResource, AlterableConfig};
    use kafka_protocol::messages::incremental_alter_configs_request as incremental;
    use kafka_protocol::messages::{
        AlterConfigsRequest, AlterConfigsResponse, IncrementalAlterConfigsRequest,
        IncrementalAlterConfigsResponse,
    };
    const DYNAMIC_TOPIC_CONFIG: i8 = 1;
    const DEFAULT_CONFIG: i8 = 5;
    let server = TestServer::start();
    let mut connection = KafkaConnection::connect(server.kafka_ports[1]);
    create_topic(&mut connection, "replaced", 2);
    let default = || ("-1".to_owned(), DEFAULT_CONFIG);
    assert_eq!(
        described_retention(&mut connection, "replaced"),
        [default(), default()]
    );

    let alter = |configs: &[(&str, Option<&str>)], validate_only: bool| {
        let configs = configs
            .iter()
            .map(|(name, value)| {
                AlterableConfig::default()
                    .with_name(StrBytes::from_string((*name).to_owned()))
                    .with_value(value.map(|value| StrBytes::from_string(value.to_owned())))
            })
            .collect();
        AlterConfigsRequest::default()
            .with_resources(vec![
                AlterConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(StrBytes::from_static_str("replaced"))
                    .with_configs(configs),
            ])
            .with_validate_only(validate_only)
    };
    for version in [0, 2] {
        let response: AlterConfigsResponse = connection.call(
            ApiKey::AlterConfigs,
            version,
            &alter(
                &[
                    ("retention.ms", Some("60000")),
                    ("retention.bytes", Some("4096")),
                ],
                false,
            ),
        );
        assert_eq!(response.responses[0].error_code, 0, "{response:?}");
        // Not named: back to its default.
        let response: AlterConfigsResponse = connection.call(
            ApiKey::AlterConfigs,
            version,
            &alter(&[("retention.bytes", Some("8192"))], false),
        );
        assert_eq!(response.responses[0].error_code, 0, "{response:?}");
        assert_eq!(
            described_retention(&mut connection, "replaced"),
            [default(), ("8192".to_owned(), DYNAMIC_TOPIC_CONFIG)]
        );
    }
    let response: AlterConfigsResponse = connection.call(
        ApiKey::AlterConfigs,
        2,
        &alter(&[("retention.ms", Some("1"))], true),
    );
    assert_eq!(response.responses[0].error_code, 0, "{response:?}");
    let response: AlterConfigsResponse = connection.call(
        ApiKey::AlterConfigs,
        2,
        &alter(&[("retention.ms", None)], false),
    );
    assert_eq!(
        response.responses[0].error_code, 40,
        "a missing value: {response:?}"
    );
    assert_eq!(
        described_retention(&mut connection, "replaced"),
        [default(), ("8192".to_owned(), DYNAMIC_TOPIC_CONFIG)],
        "validate_only and refused changes leave it"
    );

    let incremental_request = |operations: &[(&str, i8, Option<&str>)]| {
        let configs = operations
            .iter()
            .map(|(name, operation, value)| {
                incremental::AlterableConfig::default()
                    .with_name(StrBytes::from_string((*name).to_owned()))
                    .with_config_operation(*operation)
                    .with_value(value.map(|value| StrBytes::from_string(value.to_owned())))
            })
            .collect();
        IncrementalAlterConfigsRequest::default().with_resources(vec![
            incremental::AlterConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(StrBytes::from_static_str("replaced"))
                .with_configs(configs),
        ])
    };
    let response: IncrementalAlterConfigsResponse = connection.call(
        ApiKey::IncrementalAlterConfigs,
        1,
        &incremental_request(&[("retention.ms", 0, Some("120000"))]),
    );
    assert_eq!(response.responses[0].error_code, 0, "{response:?}");
    assert_eq!(
        described_retention(&mut connection, "replaced"),
        [
            ("120000".to_owned(), DYNAMIC_TOPIC_CONFIG),
            ("8192".to_owned(), DYNAMIC_TOPIC_CONFIG)
        ]
    );
    // APPEND (2) is for list configs: INVALID_CONFIG. A broker resource: INVALID_REQUEST.
    let response: IncrementalAlterConfigsResponse = connection.call(
        ApiKey::IncrementalAlterConfigs,
        0,
        &incremental_request(&[("retention.ms", 2, Some("1"))]),
    );
    assert_eq!(response.responses[0].error_code, 40, "{response:?}");
    let mut broker = incremental_request(&[("log.retention.ms", 0, Some("1"))]);
    broker.resources[0].resource_type = 4;
    broker.resources[0].resource_name = StrBytes::from_static_str("0");
    let response: IncrementalAlterConfigsResponse =
        connection.call(ApiKey::IncrementalAlterConfigs, 1, &broker);
    assert_eq!(response.responses[0].error_code, 42, "{response:?}");
    let response: IncrementalAlterConfigsResponse = connection.call(
        ApiKey::IncrementalAlterConfigs,
        1,
        &incremental_request(&[("retention.ms", 1, None), ("retention.bytes", 1, None)]),
    );
    assert_eq!(response.responses[0].error_code, 0, "{response:?}");
    assert_eq!(
        described_retention(&mut connection, "replaced"),
        [default(), default()]
    );
}
