//! Committed offsets of consumer groups against a real `cairn serve`: native
//! CommitOffsets/FetchOffsets, `cairn fetch --group`, Kafka's OffsetCommit/OffsetFetch/
//! OffsetDelete over raw TCP and through real clients (confluent-kafka and kafka-python
//! consumers that assign() their partitions, tests/kafka/python/group_offsets.py). They
//! share one store, the internal topic `__cairn_offsets`, which survives SIGKILL, is
//! hidden from clients' topic lists and refuses their writes, and appears in a data
//! directory created before it on the next start.
//!
//! kafkajs only reads committed offsets here (its admin client's fetchOffsets): its
//! consumer commits only as a member of a group it joined (subscribe + run), which needs
//! the group membership APIs.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cairn_client::{BlockingClient, ClientConfig, ClientError, PartitionOffset};
use cairn_engine::{RecordInput, ShardId};
use cairn_wire::{ErrorCode, partition_for_key};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_delete_request::{
    OffsetDeleteRequestPartition, OffsetDeleteRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, CreateTopicsResponse, FindCoordinatorResponse, GroupId,
    MetadataRequest, MetadataResponse, OffsetCommitRequest, OffsetCommitResponse,
    OffsetDeleteRequest, OffsetDeleteResponse, OffsetFetchRequest, OffsetFetchResponse,
};
use kafka_protocol::protocol::StrBytes;
use serde_json::Value;

use crate::kafka_protocol::{KafkaConnection, batch, fetch, produce, record, topic_name};
use crate::support::client_process::{json_lines, node, python, run_to_end};
use crate::support::server::{CAIRN_BIN, TestServer};

const OFFSETS_TOPIC: &str = "__cairn_offsets";
const NOT_COORDINATOR: i16 = 16;
const ILLEGAL_GENERATION: i16 = 22;
const UNKNOWN_MEMBER_ID: i16 = 25;
const INVALID_TOPIC_EXCEPTION: i16 = 17;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const SHARD_COUNT: u32 = 2;

fn native(server: &TestServer) -> BlockingClient {
    BlockingClient::connect(ClientConfig::new(server.address)).expect("native client connects")
}

/// A group id whose coordinator is `shard` (of the test servers' two), named after `base`.
fn group_on(base: &str, shard: u32) -> String {
    (0..)
        .map(|index| format!("{base}-{index}"))
        .find(|group| partition_for_key(group.as_bytes(), SHARD_COUNT) == shard)
        .expect("some suffix hashes to each shard")
}

/// Appends `count` records to `partition` of `topic`, one batch each.
fn append_records(client: &mut BlockingClient, topic: &str, partition: u32, count: usize) {
    for index in 0..count {
        let value = format!("value-{index}");
        let records = [RecordInput {
            key: b"k",
            value: value.as_bytes(),
            ..RecordInput::default()
        }];
        client
            .append(topic, Some(partition), None, &records)
            .expect("append");
    }
}

fn commit(client: &mut BlockingClient, group: &str, topic: &str, offsets: &[(u32, i64, &str)]) {
    let partitions: Vec<PartitionOffset<'_>> = offsets
        .iter()
        .map(|&(partition, offset, metadata)| PartitionOffset {
            partition,
            offset,
            metadata,
        })
        .collect();
    client
        .commit_offsets(group, topic, &partitions)
        .expect("native commit");
}

/// (offset, metadata) per partition, natively.
fn committed(
    client: &mut BlockingClient,
    group: &str,
    topic: &str,
    partitions: &[u32],
) -> Vec<(Option<i64>, String)> {
    client
        .fetch_offsets(group, topic, partitions)
        .expect("native fetch of offsets")
        .into_iter()
        .zip(partitions)
        .map(|(entry, &partition)| {
            assert_eq!(entry.partition, partition);
            (entry.offset, entry.metadata)
        })
        .collect()
}

/// Runs tests/kafka/python/group_offsets.py once and returns its one JSON line.
fn python_offsets(client: &str, server: &TestServer, args: &[&str]) -> Value {
    let bootstrap = server.kafka_bootstrap();
    let mut all = vec![client, args[0], bootstrap.as_str()];
    all.extend_from_slice(&args[1..]);
    let stdout = run_to_end(python("group_offsets.py", &all), "");
    let mut lines = json_lines(&stdout);
    assert_eq!(lines.len(), 1, "one line from group_offsets.py: {stdout}");
    lines.remove(0)
}

/// `cairn fetch TOPIC --group GROUP --json`: the offsets it printed.
fn cli_fetch_group(server: &TestServer, topic: &str, group: &str) -> Vec<u64> {
    let output = Command::new(CAIRN_BIN)
        .args([
            "--addr",
            &server.address.to_string(),
            "--json",
            "fetch",
            topic,
        ])
        .args(["--group", group])
        .output()
        .expect("cairn fetch runs");
    assert!(
        output.status.success(),
        "cairn fetch --group: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    json_lines(&String::from_utf8_lossy(&output.stdout))
        .iter()
        .map(|line| line["offset"].as_u64().expect("offset"))
        .collect()
}

fn restart_after_sigkill(server: TestServer, data_dir: &Path) -> TestServer {
    let mut server = server;
    server.stop_with(9, Duration::from_secs(10));
    drop(server);
    TestServer::start_on(data_dir, &[])
}

#[test]
fn committed_offsets_survive_sigkill_with_metadata_intact_and_the_latest_wins() {
    let temp = tempfile::tempdir().unwrap();
    let data_dir = temp.path().join("data");
    let server = TestServer::start_on(&data_dir, &[]);
    let mut client = native(&server);
    client.create_topic("ledger", 4).unwrap();
    // One group on each coordinator shard, committed through a shard that is not always
    // theirs (the native client goes to the configured address; the server forwards).
    let native_groups = [group_on("native", 0), group_on("native", 1)];
    for group in &native_groups {
        commit(&mut client, group, "ledger", &[(0, 5, "first"), (3, 9, "")]);
        // The latest commit of a partition wins; the other partition keeps its own.
        commit(&mut client, group, "ledger", &[(0, 7, "checkpoint ✓ 7")]);
    }
    let kafka_group = group_on("kafka", 1);
    let answer = python_offsets(
        "kafka-python",
        &server,
        &[
            "commit",
            &kafka_group,
            "ledger",
            "2",
            "42",
            "kafka metadata",
        ],
    );
    assert_eq!(answer["committed"], 42);

    let server = restart_after_sigkill(server, &data_dir);
    let mut client = native(&server);
    for group in &native_groups {
        assert_eq!(
            committed(&mut client, group, "ledger", &[0, 1, 3]),
            vec![
                (Some(7), "checkpoint ✓ 7".to_owned()),
                (None, String::new()),
                (Some(9), String::new()),
            ]
        );
    }
    assert_eq!(
        committed(&mut client, &kafka_group, "ledger", &[2]),
        vec![(Some(42), "kafka metadata".to_owned())]
    );
    // And Kafka reads the native commits back, metadata included.
    let answer = python_offsets(
        "confluent",
        &server,
        &["committed", &native_groups[1], "ledger", "0"],
    );
    assert_eq!(answer["committed"], 7);
    assert_eq!(answer["metadata"], "checkpoint ✓ 7");
}

/// A consumer of `client` (confluent or kafka-python) that assign()s partition 0 of a
/// fresh topic, reads 4 records and commits; a new one in the same group resumes at 4.
fn assign_consumer_resumes(client_name: &str) {
    let server = TestServer::start();
    let mut client = native(&server);
    client.create_topic("events", 2).unwrap();
    append_records(&mut client, "events", 0, 10);
    let group = format!("{client_name}-assigners");

    let first = python_offsets(
        client_name,
        &server,
        &["consume", &group, "events", "0", "4"],
    );
    assert_eq!(first["offsets"], serde_json::json!([0, 1, 2, 3]), "{first}");
    assert_eq!(first["committed"], 4, "{first}");

    let second = python_offsets(
        client_name,
        &server,
        &["consume", &group, "events", "0", "3"],
    );
    assert_eq!(second["offsets"], serde_json::json!([4, 5, 6]), "{second}");
    assert_eq!(second["committed"], 7, "{second}");
    assert_eq!(
        committed(&mut client, &group, "events", &[0, 1]),
        vec![(Some(7), String::new()), (None, String::new())]
    );
}

#[test]
fn confluent_kafka_assign_consumer_resumes_from_its_committed_offset() {
    assign_consumer_resumes("confluent");
}

#[test]
fn kafka_python_assign_consumer_resumes_from_its_committed_offset() {
    assign_consumer_resumes("kafka-python");
}

#[test]
fn cairn_fetch_group_and_a_kafka_consumer_share_committed_offsets() {
    let server = TestServer::start();
    let mut client = native(&server);
    client.create_topic("shared", 1).unwrap();
    append_records(&mut client, "shared", 0, 6);
    let group = "mixed-readers";

    // Native first: the CLI prints everything, commits, and a second run prints nothing.
    assert_eq!(
        cli_fetch_group(&server, "shared", group),
        vec![0, 1, 2, 3, 4, 5]
    );
    assert_eq!(cli_fetch_group(&server, "shared", group), Vec::<u64>::new());
    let answer = python_offsets("confluent", &server, &["committed", group, "shared", "0"]);
    assert_eq!(answer["committed"], 6);
    assert_eq!(answer["metadata"], "cairn fetch");

    // Then Kafka resumes where the CLI stopped and commits; the CLI resumes from that.
    append_records(&mut client, "shared", 0, 4);
    let answer = python_offsets(
        "confluent",
        &server,
        &["consume", group, "shared", "0", "2"],
    );
    assert_eq!(answer["offsets"], serde_json::json!([6, 7]), "{answer}");
    assert_eq!(cli_fetch_group(&server, "shared", group), vec![8, 9]);
    assert_eq!(cli_fetch_group(&server, "shared", group), Vec::<u64>::new());
}

pub(crate) fn offset_commit(
    group: &str,
    topic: &str,
    partition: i32,
    offset: i64,
) -> OffsetCommitRequest {
    OffsetCommitRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.to_owned())))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![
            OffsetCommitRequestTopic::default()
                .with_name(topic_name(topic))
                .with_partitions(vec![
                    OffsetCommitRequestPartition::default()
                        .with_partition_index(partition)
                        .with_committed_offset(offset)
                        .with_committed_leader_epoch(-1)
                        .with_committed_metadata(Some(StrBytes::from_static_str("raw"))),
                ]),
        ])
}

fn offset_fetch_v5(group: &str, topic: &str, partitions: Vec<i32>) -> OffsetFetchRequest {
    OffsetFetchRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.to_owned())))
        .with_topics(Some(vec![
            OffsetFetchRequestTopic::default()
                .with_name(topic_name(topic))
                .with_partition_indexes(partitions),
        ]))
}

pub(crate) fn commit_codes(response: &OffsetCommitResponse) -> Vec<i16> {
    response
        .topics
        .iter()
        .flat_map(|topic| {
            topic
                .partitions
                .iter()
                .map(|partition| partition.error_code)
        })
        .collect()
}

#[test]
fn kafka_offset_apis_answer_on_the_coordinator_only_and_minus_one_for_no_commit() {
    let server = TestServer::start();
    native(&server).create_topic("orders", 3).unwrap();
    let group = group_on("raw", 1);
    let (coordinator_port, other_port) = (server.kafka_ports[1], server.kafka_ports[0]);

    // FindCoordinator (v3, single key; v4, batched) names shard 1's broker.
    let mut other = KafkaConnection::connect(other_port);
    let found: FindCoordinatorResponse = other.call(
        ApiKey::FindCoordinator,
        3,
        &FindCoordinatorRequest::default().with_key(StrBytes::from_string(group.clone())),
    );
    assert_eq!((found.error_code, found.node_id.0), (0, 1));
    assert_eq!(found.port, i32::from(coordinator_port));
    let found: FindCoordinatorResponse = other.call(
        ApiKey::FindCoordinator,
        4,
        &FindCoordinatorRequest::default()
            .with_coordinator_keys(vec![StrBytes::from_string(group_on("raw", 0))]),
    );
    assert_eq!(found.coordinators[0].node_id.0, 0);

    // The other shard refuses every group API for the group.
    let response: OffsetCommitResponse = other.call(
        ApiKey::OffsetCommit,
        8,
        &offset_commit(&group, "orders", 0, 3),
    );
    assert_eq!(commit_codes(&response), vec![NOT_COORDINATOR]);
    let response: OffsetFetchResponse = other.call(
        ApiKey::OffsetFetch,
        5,
        &offset_fetch_v5(&group, "orders", vec![0]),
    );
    assert_eq!(response.error_code, NOT_COORDINATOR);
    let multi_group = OffsetFetchRequest::default().with_groups(vec![
        OffsetFetchRequestGroup::default()
            .with_group_id(GroupId(StrBytes::from_string(group.clone())))
            .with_topics(Some(vec![
                OffsetFetchRequestTopics::default()
                    .with_name(topic_name("orders"))
                    .with_partition_indexes(vec![0]),
            ])),
    ]);
    let response: OffsetFetchResponse = other.call(ApiKey::OffsetFetch, 8, &multi_group);
    assert_eq!(response.groups[0].error_code, NOT_COORDINATOR);

    // The coordinator: nothing committed is -1 with no error; then a commit is read back.
    let mut coordinator = KafkaConnection::connect(coordinator_port);
    let response: OffsetFetchResponse = coordinator.call(
        ApiKey::OffsetFetch,
        5,
        &offset_fetch_v5(&group, "orders", vec![0, 2]),
    );
    assert_eq!(response.error_code, 0);
    for partition in &response.topics[0].partitions {
        assert_eq!(
            (
                partition.committed_offset,
                partition.committed_leader_epoch,
                partition.error_code
            ),
            (-1, -1, 0)
        );
        assert_eq!(partition.metadata.as_deref(), Some(""));
    }
    let response: OffsetCommitResponse = coordinator.call(
        ApiKey::OffsetCommit,
        8,
        &offset_commit(&group, "orders", 2, 11),
    );
    assert_eq!(commit_codes(&response), vec![0]);
    let response: OffsetFetchResponse = coordinator.call(ApiKey::OffsetFetch, 8, &multi_group);
    assert_eq!(response.groups[0].error_code, 0);
    let response: OffsetFetchResponse = coordinator.call(
        ApiKey::OffsetFetch,
        5,
        &offset_fetch_v5(&group, "orders", vec![2]),
    );
    let partition = &response.topics[0].partitions[0];
    assert_eq!(partition.committed_offset, 11);
    assert_eq!(partition.metadata.as_deref(), Some("raw"));

    // A group with no members: a member id or a generation is refused, nothing stored.
    let as_member = offset_commit(&group, "orders", 2, 99)
        .with_member_id(StrBytes::from_static_str("member-1"))
        .with_generation_id_or_member_epoch(3);
    let response: OffsetCommitResponse = coordinator.call(ApiKey::OffsetCommit, 8, &as_member);
    assert_eq!(commit_codes(&response), vec![UNKNOWN_MEMBER_ID]);
    let as_generation =
        offset_commit(&group, "orders", 2, 99).with_generation_id_or_member_epoch(3);
    let response: OffsetCommitResponse = coordinator.call(ApiKey::OffsetCommit, 8, &as_generation);
    assert_eq!(commit_codes(&response), vec![ILLEGAL_GENERATION]);
    // An unknown partition is refused alone.
    let response: OffsetCommitResponse = coordinator.call(
        ApiKey::OffsetCommit,
        8,
        &offset_commit(&group, "orders", 7, 1),
    );
    assert_eq!(commit_codes(&response), vec![UNKNOWN_TOPIC_OR_PARTITION]);
    assert_eq!(
        committed(&mut native(&server), &group, "orders", &[2]),
        vec![(Some(11), "raw".to_owned())]
    );

    // OffsetDelete writes a tombstone: no committed offset any more.
    let delete = OffsetDeleteRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.clone())))
        .with_topics(vec![
            OffsetDeleteRequestTopic::default()
                .with_name(topic_name("orders"))
                .with_partitions(vec![
                    OffsetDeleteRequestPartition::default().with_partition_index(2),
                ]),
        ]);
    let response: OffsetDeleteResponse = coordinator.call(ApiKey::OffsetDelete, 0, &delete);
    assert_eq!(response.error_code, 0);
    assert_eq!(response.topics[0].partitions[0].error_code, 0);
    assert_eq!(
        committed(&mut native(&server), &group, "orders", &[2]),
        vec![(None, String::new())]
    );
}

#[test]
fn offsets_topic_is_hidden_from_clients_and_refuses_their_writes() {
    let server = TestServer::start();
    let mut client = native(&server);
    client.create_topic("visible", 1).unwrap();
    let metadata = client.metadata().unwrap();
    let names: Vec<&str> = metadata
        .topics
        .iter()
        .map(|topic| topic.name.as_str())
        .collect();
    assert_eq!(names, vec!["visible"]);
    let records = [RecordInput {
        key: b"k",
        value: b"v",
        ..RecordInput::default()
    }];
    // Not shard-aware, so that the client sends the append without its (hidden) metadata
    // and the server is the one that refuses.
    let mut direct = BlockingClient::connect(ClientConfig {
        shard_aware: false,
        ..ClientConfig::new(server.address)
    })
    .unwrap();
    for result in [
        direct
            .append(OFFSETS_TOPIC, Some(0), None, &records)
            .map(|_| ()),
        client.create_topic("__cairn_mine", 1).map(|_| ()),
    ] {
        match result {
            Err(ClientError::Server { code, .. }) => assert_eq!(code, ErrorCode::BadRequest),
            other => panic!("expected BadRequest, got {other:?}"),
        }
    }

    let mut kafka = KafkaConnection::connect(server.kafka_ports[0]);
    let all: MetadataResponse = kafka.call(
        ApiKey::Metadata,
        12,
        &MetadataRequest::default().with_topics(None),
    );
    let names: Vec<String> = all
        .topics
        .iter()
        .filter_map(|topic| topic.name.as_ref().map(|name| name.0.to_string()))
        .collect();
    assert_eq!(names, vec!["visible".to_owned()]);
    let named: MetadataResponse = kafka.call(
        ApiKey::Metadata,
        12,
        &MetadataRequest::default().with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(topic_name(OFFSETS_TOPIC))),
        ])),
    );
    assert_eq!(named.topics[0].error_code, UNKNOWN_TOPIC_OR_PARTITION);
    let produced = produce(
        &mut kafka,
        OFFSETS_TOPIC,
        0,
        batch(vec![record(Some("k"), Some("v"), &[])]),
    );
    assert_eq!(produced.error_code, INVALID_TOPIC_EXCEPTION);
    let created: CreateTopicsResponse = kafka.call(
        ApiKey::CreateTopics,
        7,
        &CreateTopicsRequest::default()
            .with_topics(vec![
                CreatableTopic::default()
                    .with_name(topic_name("__cairn_other"))
                    .with_num_partitions(1)
                    .with_replication_factor(-1),
            ])
            .with_timeout_ms(10_000),
    );
    assert_eq!(created.topics[0].error_code, INVALID_TOPIC_EXCEPTION);
    // Nothing reached the store. (Clients may read it, by name: it is only unlisted.)
    let (code, high_watermark, _) = fetch(&mut kafka, OFFSETS_TOPIC, 0, 0);
    assert_eq!((code, high_watermark), (0, 0));
}

#[test]
fn a_data_dir_from_before_committed_offsets_gets_the_offsets_topic_on_restart() {
    let temp = tempfile::tempdir().unwrap();
    let data_dir = temp.path().join("data");
    // A data directory as an older server left it: two shards, one topic of three
    // partitions (ids 0..3), no internal topic.
    let dir = data_dir.clone();
    crate::support::engine::run_local(move || async move {
        let mut config = crate::support::engine::test_config(&dir);
        config.shard_count = 2;
        let engine = crate::support::engine::open_engine(config);
        let shard = engine.open_shard(ShardId(0)).await.unwrap();
        shard.create_topic("orders", 3).unwrap();
        shard.close().await;
    });
    let catalog = std::fs::read_to_string(data_dir.join("topics.meta")).unwrap();
    assert!(!catalog.contains(OFFSETS_TOPIC), "{catalog}");

    let server = TestServer::start_on(&data_dir, &[]);
    let catalog = std::fs::read_to_string(data_dir.join("topics.meta")).unwrap();
    // Aligned to the shard count: partition i on shard i.
    assert!(
        catalog.contains(&format!("topic {OFFSETS_TOPIC} 2 4\n")),
        "{catalog}"
    );
    let mut client = native(&server);
    let groups = [group_on("old-dir", 0), group_on("old-dir", 1)];
    for (index, group) in groups.iter().enumerate() {
        commit(
            &mut client,
            group,
            "orders",
            &[(2, 100 + index as i64, "m")],
        );
    }
    // Each group's commit is in its coordinator's partition of the internal topic, which
    // that shard's broker leads.
    for (shard, &port) in server.kafka_ports.iter().enumerate() {
        let mut kafka = KafkaConnection::connect(port);
        let (code, _, records) = fetch(&mut kafka, OFFSETS_TOPIC, shard as i32, 0);
        assert_eq!((code, records.len()), (0, 1), "partition {shard}");
    }

    // Restarting again changes nothing: the topic is created once.
    let server = restart_after_sigkill(server, &data_dir);
    let again = std::fs::read_to_string(data_dir.join("topics.meta")).unwrap();
    assert_eq!(again, catalog);
    let mut client = native(&server);
    for (index, group) in groups.iter().enumerate() {
        assert_eq!(
            committed(&mut client, group, "orders", &[2]),
            vec![(Some(100 + index as i64), "m".to_owned())]
        );
    }
}

/// OffsetFetch with topics null, as admin tools send it: every committed partition of the
/// group, `(topic, partition, offset)` in order.
fn every_committed(server: &TestServer, group: &str) -> Vec<(String, i32, i64)> {
    let coordinator = partition_for_key(group.as_bytes(), SHARD_COUNT) as usize;
    let mut kafka = KafkaConnection::connect(server.kafka_ports[coordinator]);
    let request = OffsetFetchRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.to_owned())))
        .with_topics(None);
    let response: OffsetFetchResponse = kafka.call(ApiKey::OffsetFetch, 7, &request);
    assert_eq!(response.error_code, 0);
    response
        .topics
        .iter()
        .flat_map(|topic| {
            topic.partitions.iter().map(|partition| {
                (
                    topic.name.0.to_string(),
                    partition.partition_index,
                    partition.committed_offset,
                )
            })
        })
        .collect()
}

#[test]
fn kafka_offset_fetch_of_every_topic_lists_the_groups_commits_also_after_sigkill() {
    let temp = tempfile::tempdir().unwrap();
    let data_dir = temp.path().join("data");
    let server = TestServer::start_on(&data_dir, &[]);
    let mut client = native(&server);
    client.create_topic("alpha", 3).unwrap();
    client.create_topic("beta", 1).unwrap();
    let group = group_on("listed", 1);
    commit(&mut client, &group, "beta", &[(0, 4, "")]);
    commit(&mut client, &group, "alpha", &[(2, 8, ""), (0, 1, "")]);
    commit(&mut client, &group_on("other", 1), "alpha", &[(1, 5, "")]);
    let expected = vec![
        ("alpha".to_owned(), 0, 1),
        ("alpha".to_owned(), 2, 8),
        ("beta".to_owned(), 0, 4),
    ];
    assert_eq!(every_committed(&server, &group), expected);

    // The index is rebuilt from the log; a deleted offset stays deleted.
    let server = restart_after_sigkill(server, &data_dir);
    assert_eq!(every_committed(&server, &group), expected);
    let delete = OffsetDeleteRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.clone())))
        .with_topics(vec![
            OffsetDeleteRequestTopic::default()
                .with_name(topic_name("alpha"))
                .with_partitions(vec![
                    OffsetDeleteRequestPartition::default().with_partition_index(0),
                ]),
        ]);
    let mut kafka = KafkaConnection::connect(server.kafka_ports[1]);
    let response: OffsetDeleteResponse = kafka.call(ApiKey::OffsetDelete, 0, &delete);
    assert_eq!(response.error_code, 0);
    let server = restart_after_sigkill(server, &data_dir);
    assert_eq!(every_committed(&server, &group), expected[1..].to_vec());
}

#[test]
fn kafkajs_admin_reads_offsets_committed_by_cairn_fetch_group() {
    let server = TestServer::start();
    let mut client = native(&server);
    client.create_topic("tracked", 3).unwrap();
    append_records(&mut client, "tracked", 1, 3);
    assert_eq!(
        cli_fetch_group(&server, "tracked", "js-readers"),
        vec![0, 1, 2]
    );
    let bootstrap = server.kafka_bootstrap();
    let stdout = run_to_end(
        node(
            "kafkajs_client.js",
            &["committed", &bootstrap, "tracked", "js-readers"],
        ),
        "",
    );
    let lines = json_lines(&stdout);
    assert_eq!(
        lines,
        vec![serde_json::json!({"partitions": [
            {"partition": 0, "offset": -1, "metadata": null},
            {"partition": 1, "offset": 3, "metadata": "cairn fetch"},
            {"partition": 2, "offset": -1, "metadata": null},
        ]})]
    );
}

/// `cairn fetch --group` over several partitions says which partition each record is from
/// (`--json`: a `partition` field; text: `partition/offset`): offsets alone repeat across
/// partitions.
#[test]
fn cli_fetch_group_names_each_records_partition() {
    let server = TestServer::start();
    let mut client = BlockingClient::connect(ClientConfig::new(server.address)).unwrap();
    client.create_topic("split", 2).unwrap();
    let mut expected = Vec::new();
    for partition in 0..2 {
        for index in 0..2 {
            let value = format!("p{partition}-{index}");
            let records = [RecordInput {
                key: b"k",
                value: value.as_bytes(),
                ..RecordInput::default()
            }];
            client
                .append("split", Some(partition), None, &records)
                .unwrap();
            expected.push((u64::from(partition), index, value));
        }
    }
    let run = |json: bool| {
        let mut command = Command::new(CAIRN_BIN);
        command.args(["--addr", &server.address.to_string()]);
        if json {
            command.arg("--json");
        }
        let output = command
            .args(["fetch", "split", "--group", if json { "j" } else { "t" }])
            .output()
            .unwrap();
        assert!(output.status.success());
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let mut seen: Vec<(u64, u64, String)> = json_lines(&run(true))
        .iter()
        .map(|line| {
            (
                line["partition"].as_u64().expect("partition"),
                line["offset"].as_u64().expect("offset"),
                line["value"].as_str().expect("value").to_owned(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(seen, expected);
    let mut positions: Vec<String> = run(false)
        .lines()
        .map(|line| line.split('\t').next().unwrap().to_owned())
        .collect();
    positions.sort();
    assert_eq!(positions, ["0/0", "0/1", "1/0", "1/1"]);
}
