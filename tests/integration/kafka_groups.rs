//! Kafka's classic consumer-group protocol over real TCP against a real `cairn serve`,
//! every request encoded with the `kafka-protocol` crate as a client would:
//! FindCoordinator, the join/sync/heartbeat flow of two members over generations, the
//! member id round trip, REBALANCE_IN_PROGRESS, ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID,
//! session expiry, static members, concurrent joins, NOT_COORDINATOR from the wrong shard,
//! LeaveGroup, DescribeGroups, ListGroups, DeleteGroups (which deletes the committed
//! offsets too), the OffsetCommit gate through a rebalance, and a parked join at shutdown.
//!
//! Waits are the protocol's own: a join long-polls until its rebalance completes; a test
//! learns that a request was taken by asking DescribeGroups, never by sleeping.

use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    ApiKey, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest,
    DescribeGroupsResponse, FindCoordinatorRequest, FindCoordinatorResponse, GroupId,
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, SyncGroupRequest,
    SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::support::kafka_connection::KafkaConnection;
use crate::support::server::TestServer;

const NONE: i16 = 0;
const COORDINATOR_NOT_AVAILABLE: i16 = 15;
const NOT_COORDINATOR: i16 = 16;
const ILLEGAL_GENERATION: i16 = 22;
const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
const UNKNOWN_MEMBER_ID: i16 = 25;
const REBALANCE_IN_PROGRESS: i16 = 27;
const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;
const NON_EMPTY_GROUP: i16 = 68;
const GROUP_ID_NOT_FOUND: i16 = 69;
const MEMBER_ID_REQUIRED: i16 = 79;
const FENCED_INSTANCE_ID: i16 = 82;

/// The JoinGroup version most tests speak: member id round trip and static members.
const JOIN_VERSION: i16 = 5;

fn group_id(name: &str) -> GroupId {
    GroupId(StrBytes::from_string(name.to_owned()))
}

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_owned())
}

/// The shard coordinating `group` on a two-shard server: the hash FindCoordinator uses.
fn coordinator(group: &str) -> usize {
    cairn_wire::partition_for_key(group.as_bytes(), 2) as usize
}

/// A group id coordinated by shard `shard` (of two).
fn group_on_shard(prefix: &str, shard: usize) -> String {
    (0..)
        .map(|index| format!("{prefix}-{index}"))
        .find(|group| coordinator(group) == shard)
        .unwrap()
}

/// A member of one group, on its own connection to the coordinator.
struct Member {
    connection: KafkaConnection,
    group: String,
    member_id: String,
    instance_id: Option<String>,
    session_timeout_ms: i32,
    rebalance_timeout_ms: i32,
    metadata: Bytes,
    /// The JoinGroup version it speaks.
    join_version: i16,
    generation_id: i32,
    /// The correlation id of a join sent and not yet received.
    join_in_flight: Option<i32>,
    sync_in_flight: Option<i32>,
}

impl Member {
    fn new(server: &TestServer, group: &str) -> Member {
        Member {
            connection: KafkaConnection::connect(server.kafka_ports[coordinator(group)]),
            group: group.to_owned(),
            member_id: String::new(),
            instance_id: None,
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 15_000,
            metadata: Bytes::from_static(b"subscription"),
            join_version: JOIN_VERSION,
            generation_id: -1,
            join_in_flight: None,
            sync_in_flight: None,
        }
    }

    fn join_request(&self) -> JoinGroupRequest {
        JoinGroupRequest::default()
            .with_group_id(group_id(&self.group))
            .with_session_timeout_ms(self.session_timeout_ms)
            .with_rebalance_timeout_ms(self.rebalance_timeout_ms)
            .with_member_id(text(&self.member_id))
            .with_group_instance_id(self.instance_id.as_deref().map(text))
            .with_protocol_type(text("consumer"))
            .with_protocols(vec![
                JoinGroupRequestProtocol::default()
                    .with_name(text("range"))
                    .with_metadata(self.metadata.clone()),
            ])
    }

    /// Sends a JoinGroup; a dynamic member without an id first makes the
    /// MEMBER_ID_REQUIRED round trip.
    fn send_join(&mut self) {
        if self.member_id.is_empty() && self.instance_id.is_none() && self.join_version >= 4 {
            let response: JoinGroupResponse =
                self.connection
                    .call(ApiKey::JoinGroup, self.join_version, &self.join_request());
            assert_eq!(response.error_code, MEMBER_ID_REQUIRED, "{response:?}");
            assert!(!response.member_id.is_empty());
            self.member_id = response.member_id.to_string();
        }
        let request = self.join_request();
        self.join_in_flight = Some(self.connection.send(
            ApiKey::JoinGroup,
            self.join_version,
            &request,
        ));
    }

    /// Receives the JoinGroup sent; adopts its member id and generation.
    fn receive_join(&mut self) -> JoinGroupResponse {
        let correlation_id = self.join_in_flight.take().expect("a join was sent");
        let response: JoinGroupResponse =
            self.connection
                .receive(ApiKey::JoinGroup, self.join_version, correlation_id);
        if response.error_code == NONE {
            self.member_id = response.member_id.to_string();
            self.generation_id = response.generation_id;
        }
        response
    }

    fn join(&mut self) -> JoinGroupResponse {
        self.send_join();
        self.receive_join()
    }

    fn send_sync(&mut self, assignments: &[(&str, &[u8])]) {
        let request = SyncGroupRequest::default()
            .with_group_id(group_id(&self.group))
            .with_generation_id(self.generation_id)
            .with_member_id(text(&self.member_id))
            .with_group_instance_id(self.instance_id.as_deref().map(text))
            .with_protocol_type(Some(text("consumer")))
            .with_protocol_name(Some(text("range")))
            .with_assignments(
                assignments
                    .iter()
                    .map(|(member_id, assignment)| {
                        SyncGroupRequestAssignment::default()
                            .with_member_id(text(member_id))
                            .with_assignment(Bytes::copy_from_slice(assignment))
                    })
                    .collect(),
            );
        self.sync_in_flight = Some(self.connection.send(ApiKey::SyncGroup, 5, &request));
    }

    fn receive_sync(&mut self) -> SyncGroupResponse {
        let correlation_id = self.sync_in_flight.take().expect("a sync was sent");
        self.connection
            .receive(ApiKey::SyncGroup, 5, correlation_id)
    }

    fn heartbeat_as(&mut self, generation_id: i32, member_id: &str) -> i16 {
        let request = HeartbeatRequest::default()
            .with_group_id(group_id(&self.group))
            .with_generation_id(generation_id)
            .with_member_id(text(member_id))
            .with_group_instance_id(self.instance_id.as_deref().map(text));
        let response: HeartbeatResponse = self.connection.call(ApiKey::Heartbeat, 4, &request);
        response.error_code
    }

    fn heartbeat(&mut self) -> i16 {
        let member_id = self.member_id.clone();
        self.heartbeat_as(self.generation_id, &member_id)
    }

    /// Commits `offset` for partition 0 of `topic` as this member with `generation_id`;
    /// the partition's error code.
    fn commit_as(&mut self, topic: &str, generation_id: i32, member_id: &str, offset: i64) -> i16 {
        let request = OffsetCommitRequest::default()
            .with_group_id(group_id(&self.group))
            .with_generation_id_or_member_epoch(generation_id)
            .with_member_id(text(member_id))
            .with_group_instance_id(self.instance_id.as_deref().map(text))
            .with_topics(vec![
                OffsetCommitRequestTopic::default()
                    .with_name(TopicName(text(topic)))
                    .with_partitions(vec![
                        OffsetCommitRequestPartition::default()
                            .with_partition_index(0)
                            .with_committed_offset(offset),
                    ]),
            ]);
        let response: OffsetCommitResponse =
            self.connection.call(ApiKey::OffsetCommit, 8, &request);
        response.topics[0].partitions[0].error_code
    }

    fn commit(&mut self, topic: &str, offset: i64) -> i16 {
        let member_id = self.member_id.clone();
        self.commit_as(topic, self.generation_id, &member_id, offset)
    }

    /// The group's committed offset of partition 0 of `topic` (-1: none).
    fn committed(&mut self, topic: &str) -> i64 {
        let request = OffsetFetchRequest::default()
            .with_group_id(group_id(&self.group))
            .with_topics(Some(vec![
                OffsetFetchRequestTopic::default()
                    .with_name(TopicName(text(topic)))
                    .with_partition_indexes(vec![0]),
            ]));
        let response: OffsetFetchResponse = self.connection.call(ApiKey::OffsetFetch, 7, &request);
        assert_eq!(response.error_code, NONE);
        response.topics[0].partitions[0].committed_offset
    }

    fn leave(&mut self) -> LeaveGroupResponse {
        let request = LeaveGroupRequest::default()
            .with_group_id(group_id(&self.group))
            .with_members(vec![
                MemberIdentity::default()
                    .with_member_id(text(&self.member_id))
                    .with_group_instance_id(self.instance_id.as_deref().map(text)),
            ]);
        self.connection.call(ApiKey::LeaveGroup, 5, &request)
    }
}

/// One member through join and sync into a Stable generation of its own.
fn stable_alone(member: &mut Member, assignment: &[u8]) {
    let joined = member.join();
    assert_eq!(joined.error_code, NONE, "{joined:?}");
    assert_eq!(joined.leader, joined.member_id);
    let member_id = member.member_id.clone();
    member.send_sync(&[(&member_id, assignment)]);
    let synced = member.receive_sync();
    assert_eq!(synced.error_code, NONE);
    assert_eq!(synced.assignment, assignment);
}

fn describe(connection: &mut KafkaConnection, group: &str, version: i16) -> DescribeGroupsResponse {
    let request = DescribeGroupsRequest::default().with_groups(vec![group_id(group)]);
    connection.call(ApiKey::DescribeGroups, version, &request)
}

/// Asks DescribeGroups until `ready` holds (each answer is immediate; this is how a test
/// learns that another connection's request was taken), within 10 s.
fn until_described(
    connection: &mut KafkaConnection,
    group: &str,
    ready: impl Fn(&DescribeGroupsResponse) -> bool,
) -> DescribeGroupsResponse {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = describe(connection, group, 5);
        if ready(&response) {
            return response;
        }
        assert!(Instant::now() < deadline, "never got there: {response:?}");
        std::thread::yield_now();
    }
}

fn state_and_members(response: &DescribeGroupsResponse) -> (String, usize) {
    let group = &response.groups[0];
    (group.group_state.to_string(), group.members.len())
}

#[test]
fn kafka_groups_find_coordinator_names_the_hashed_shard_and_refuses_transactions() {
    let server = TestServer::start();
    let mut connection = KafkaConnection::connect(server.kafka_ports[0]);
    for shard in 0..2 {
        let group = group_on_shard("find", shard);
        let request = FindCoordinatorRequest::default().with_key(text(&group));
        let response: FindCoordinatorResponse =
            connection.call(ApiKey::FindCoordinator, 3, &request);
        assert_eq!(response.error_code, NONE);
        assert_eq!(response.node_id.0, shard as i32);
        assert_eq!(response.port, i32::from(server.kafka_ports[shard]));
    }
    let groups = [group_on_shard("batch", 0), group_on_shard("batch", 1)];
    let request = FindCoordinatorRequest::default()
        .with_coordinator_keys(groups.iter().map(|group| text(group)).collect());
    let response: FindCoordinatorResponse = connection.call(ApiKey::FindCoordinator, 4, &request);
    let nodes: Vec<(i16, i32)> = response
        .coordinators
        .iter()
        .map(|coordinator| (coordinator.error_code, coordinator.node_id.0))
        .collect();
    assert_eq!(nodes, vec![(NONE, 0), (NONE, 1)]);
    let request = FindCoordinatorRequest::default()
        .with_key(text("a-transactional-id"))
        .with_key_type(1);
    let response: FindCoordinatorResponse = connection.call(ApiKey::FindCoordinator, 3, &request);
    assert_eq!(response.error_code, TRANSACTIONAL_ID_AUTHORIZATION_FAILED);
    assert_eq!(
        response.error_message.as_deref(),
        Some("transactions are not supported")
    );
    // v0 has no error message.
    let request = FindCoordinatorRequest::default().with_key(text(&groups[1]));
    let response: FindCoordinatorResponse = connection.call(ApiKey::FindCoordinator, 0, &request);
    assert_eq!((response.error_code, response.node_id.0), (NONE, 1));
}

#[test]
fn kafka_groups_two_members_rebalance_through_generations() {
    let server = TestServer::start();
    let group = group_on_shard("flow", 1);
    let mut first = Member::new(&server, &group);
    stable_alone(&mut first, b"all-for-first");
    assert_eq!(first.generation_id, 1);
    assert_eq!(first.heartbeat(), NONE);

    // A second member: its join parks until the first one rejoins.
    let mut second = Member::new(&server, &group);
    second.send_join();
    let mut observer = KafkaConnection::connect(server.kafka_ports[1]);
    until_described(&mut observer, &group, |response| {
        state_and_members(response) == ("PreparingRebalance".into(), 2)
    });
    assert_eq!(first.heartbeat(), REBALANCE_IN_PROGRESS);
    let first_joined = first.join();
    let second_joined = second.receive_join();
    assert_eq!(
        (first_joined.error_code, second_joined.error_code),
        (NONE, NONE)
    );
    assert_eq!(first_joined.generation_id, 2);
    assert_eq!(second_joined.generation_id, 2);
    // The first member stays leader and alone gets the members' metadata.
    assert_eq!(first_joined.leader.to_string(), first.member_id);
    assert_eq!(second_joined.leader.to_string(), first.member_id);
    assert_eq!(first_joined.members.len(), 2);
    assert!(second_joined.members.is_empty());
    assert_eq!(first_joined.protocol_name.as_deref(), Some("range"));

    // The follower's sync waits for the leader's assignment.
    second.send_sync(&[]);
    let first_id = first.member_id.clone();
    let second_id = second.member_id.clone();
    first.send_sync(&[(&first_id, b"p0"), (&second_id, b"p1")]);
    assert_eq!(first.receive_sync().assignment, &b"p0"[..]);
    assert_eq!(second.receive_sync().assignment, &b"p1"[..]);

    assert_eq!(first.heartbeat(), NONE);
    assert_eq!(second.heartbeat(), NONE);
    assert_eq!(second.heartbeat_as(1, &second_id), ILLEGAL_GENERATION);
    assert_eq!(second.heartbeat_as(2, "nobody"), UNKNOWN_MEMBER_ID);
    let described = describe(&mut observer, &group, 5);
    assert_eq!(state_and_members(&described), ("Stable".into(), 2));
    assert_eq!(described.groups[0].protocol_data.as_str(), "range");
    let member = described.groups[0]
        .members
        .iter()
        .find(|member| member.member_id.as_str() == second_id)
        .unwrap();
    assert_eq!(member.member_assignment, &b"p1"[..]);
    assert_eq!(member.client_id.as_str(), "cairn-test");
    assert_eq!(member.client_host.as_str(), "/127.0.0.1");

    // A member whose protocol the group does not share is refused.
    let mut stranger = Member::new(&server, &group);
    let request = stranger.join_request().with_protocols(vec![
        JoinGroupRequestProtocol::default().with_name(text("sticky")),
    ]);
    let response: JoinGroupResponse =
        stranger
            .connection
            .call(ApiKey::JoinGroup, JOIN_VERSION, &request);
    assert_eq!(response.error_code, INCONSISTENT_GROUP_PROTOCOL);
}

#[test]
fn kafka_groups_concurrent_joins_during_a_rebalance_form_one_generation() {
    let server = TestServer::start();
    let group = group_on_shard("crowd", 0);
    let mut leader = Member::new(&server, &group);
    stable_alone(&mut leader, b"everything");
    // Four more members join at once, each from its own thread and connection.
    let joiners: Vec<_> = (0..4)
        .map(|_| {
            let mut member = Member::new(&server, &group);
            std::thread::spawn(move || {
                let response = member.join();
                (member, response)
            })
        })
        .collect();
    let mut observer = KafkaConnection::connect(server.kafka_ports[0]);
    until_described(&mut observer, &group, |response| {
        state_and_members(response) == ("PreparingRebalance".into(), 5)
    });
    let leader_joined = leader.join();
    assert_eq!(leader_joined.error_code, NONE);
    assert_eq!(leader_joined.members.len(), 5);
    let mut members: Vec<Member> = Vec::new();
    for joiner in joiners {
        let (member, response) = joiner.join().unwrap();
        assert_eq!(response.error_code, NONE, "{response:?}");
        assert_eq!(response.generation_id, leader_joined.generation_id);
        assert_eq!(response.leader, leader_joined.leader);
        members.push(member);
    }
    let mut ids: Vec<String> = members
        .iter()
        .map(|member| member.member_id.clone())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4, "every joiner got its own member id");
    for member in &mut members {
        member.send_sync(&[]);
    }
    let assignments: Vec<(String, Vec<u8>)> = ids
        .iter()
        .map(|id| (id.clone(), id.as_bytes().to_vec()))
        .collect();
    let borrowed: Vec<(&str, &[u8])> = assignments
        .iter()
        .map(|(id, assignment)| (id.as_str(), assignment.as_slice()))
        .collect();
    leader.send_sync(&borrowed);
    assert_eq!(leader.receive_sync().error_code, NONE);
    for member in &mut members {
        let synced = member.receive_sync();
        assert_eq!(synced.error_code, NONE);
        assert_eq!(synced.assignment, member.member_id.as_bytes());
    }
}

#[test]
fn kafka_groups_an_expired_session_rebalances_the_others() {
    let server = TestServer::start();
    let group = group_on_shard("expiry", 1);
    let mut staying = Member::new(&server, &group);
    staying.session_timeout_ms = 10_000;
    stable_alone(&mut staying, b"a");
    let mut leaving = Member::new(&server, &group);
    leaving.session_timeout_ms = 1_000;
    leaving.send_join();
    let mut observer = KafkaConnection::connect(server.kafka_ports[1]);
    until_described(&mut observer, &group, |response| {
        state_and_members(response).1 == 2
    });
    assert_eq!(staying.join().error_code, NONE);
    assert_eq!(leaving.receive_join().error_code, NONE);
    let generation = staying.generation_id;
    let staying_id = staying.member_id.clone();
    staying.send_sync(&[(&staying_id, b"a")]);
    assert_eq!(staying.receive_sync().error_code, NONE);
    // `leaving` never syncs nor heartbeats: its 1 s session expires, and the group
    // rebalances without it. `staying` heartbeats (as a client does) until told.
    let started = Instant::now();
    loop {
        let code = staying.heartbeat();
        if code == REBALANCE_IN_PROGRESS {
            break;
        }
        assert_eq!(code, NONE);
        assert!(started.elapsed() < Duration::from_secs(10), "no rebalance");
        std::thread::sleep(Duration::from_millis(100)); // the heartbeat interval
    }
    let rejoined = staying.join();
    assert_eq!(rejoined.error_code, NONE);
    assert_eq!(rejoined.generation_id, generation + 1);
    assert_eq!(rejoined.members.len(), 1);
    let leaving_id = leaving.member_id.clone();
    assert_eq!(
        leaving.heartbeat_as(generation, &leaving_id),
        UNKNOWN_MEMBER_ID
    );
}

#[test]
fn kafka_groups_a_static_member_rejoins_without_a_rebalance_and_fences_its_old_id() {
    let server = TestServer::start();
    let group = group_on_shard("static", 0);
    let mut first = Member::new(&server, &group);
    first.instance_id = Some("instance-1".into());
    stable_alone(&mut first, b"mine");
    let old_member_id = first.member_id.clone();
    let generation = first.generation_id;

    // The same instance restarts: a new connection, no member id (no MEMBER_ID_REQUIRED
    // for a static member), the same metadata.
    let mut restarted = Member::new(&server, &group);
    restarted.instance_id = Some("instance-1".into());
    let joined = restarted.join();
    assert_eq!(joined.error_code, NONE, "{joined:?}");
    assert_eq!(joined.generation_id, generation, "no rebalance");
    assert_ne!(restarted.member_id, old_member_id);
    restarted.send_sync(&[]);
    let synced = restarted.receive_sync();
    assert_eq!(synced.error_code, NONE);
    assert_eq!(synced.assignment, &b"mine"[..], "it keeps its assignment");
    let mut observer = KafkaConnection::connect(server.kafka_ports[0]);
    assert_eq!(
        state_and_members(&describe(&mut observer, &group, 5)),
        ("Stable".into(), 1)
    );
    assert_eq!(
        first.heartbeat_as(generation, &old_member_id),
        FENCED_INSTANCE_ID
    );
    assert_eq!(restarted.heartbeat(), NONE);
}

#[test]
fn kafka_groups_the_wrong_shard_answers_not_coordinator() {
    let server = TestServer::start();
    let group = group_on_shard("elsewhere", 0);
    let mut member = Member::new(&server, &group);
    member.connection = KafkaConnection::connect(server.kafka_ports[1]);
    let request = member.join_request();
    let response: JoinGroupResponse =
        member
            .connection
            .call(ApiKey::JoinGroup, JOIN_VERSION, &request);
    assert_eq!(response.error_code, NOT_COORDINATOR);
    assert_eq!(member.heartbeat_as(1, "someone"), NOT_COORDINATOR);
    let described = describe(&mut member.connection, &group, 5);
    assert_eq!(described.groups[0].error_code, NOT_COORDINATOR);
    let request = DeleteGroupsRequest::default().with_groups_names(vec![group_id(&group)]);
    let response: DeleteGroupsResponse = member.connection.call(ApiKey::DeleteGroups, 2, &request);
    assert_eq!(response.results[0].error_code, NOT_COORDINATOR);
}

#[test]
fn kafka_groups_leave_describe_list_and_delete() {
    let server = TestServer::start();
    let group = group_on_shard("lifecycle", 1);
    let mut member = Member::new(&server, &group);
    stable_alone(&mut member, b"x");
    let mut admin = KafkaConnection::connect(server.kafka_ports[1]);
    let delete = |admin: &mut KafkaConnection| -> i16 {
        let request = DeleteGroupsRequest::default().with_groups_names(vec![group_id(&group)]);
        let response: DeleteGroupsResponse = admin.call(ApiKey::DeleteGroups, 2, &request);
        response.results[0].error_code
    };
    assert_eq!(delete(&mut admin), NON_EMPTY_GROUP);
    let listed: ListGroupsResponse =
        admin.call(ApiKey::ListGroups, 5, &ListGroupsRequest::default());
    let found: Vec<(String, String, String)> = listed
        .groups
        .iter()
        .map(|listed| {
            (
                listed.group_id.0.to_string(),
                listed.group_state.to_string(),
                listed.protocol_type.to_string(),
            )
        })
        .collect();
    assert_eq!(
        found,
        vec![(group.clone(), "Stable".into(), "consumer".into())]
    );
    let filtered: ListGroupsResponse = admin.call(
        ApiKey::ListGroups,
        4,
        &ListGroupsRequest::default().with_states_filter(vec![text("Empty")]),
    );
    assert!(filtered.groups.is_empty());
    let other_shard: ListGroupsResponse = KafkaConnection::connect(server.kafka_ports[0]).call(
        ApiKey::ListGroups,
        3,
        &ListGroupsRequest::default(),
    );
    assert!(
        other_shard.groups.is_empty(),
        "each shard lists its own groups"
    );

    let left = member.leave();
    assert_eq!(left.error_code, NONE);
    assert_eq!(left.members[0].error_code, NONE);
    assert_eq!(member.leave().members[0].error_code, UNKNOWN_MEMBER_ID);
    assert_eq!(
        state_and_members(&describe(&mut admin, &group, 5)),
        ("Empty".into(), 0)
    );
    assert_eq!(delete(&mut admin), NONE);
    assert_eq!(delete(&mut admin), GROUP_ID_NOT_FOUND);
    let described = describe(&mut admin, &group, 5);
    assert_eq!(
        (
            described.groups[0].error_code,
            described.groups[0].group_state.as_str()
        ),
        (NONE, "Dead")
    );
    // A member of the deleted group is unknown.
    assert_eq!(member.heartbeat(), UNKNOWN_MEMBER_ID);
}

#[test]
fn kafka_groups_a_parked_join_ends_at_shutdown() {
    let mut server = TestServer::start();
    let group = group_on_shard("shutdown", 0);
    let mut first = Member::new(&server, &group);
    first.rebalance_timeout_ms = 60_000;
    stable_alone(&mut first, b"x");
    // The second member's join parks: the first never rejoins within the test.
    let mut second = Member::new(&server, &group);
    second.send_join();
    let mut observer = KafkaConnection::connect(server.kafka_ports[0]);
    until_described(&mut observer, &group, |response| {
        state_and_members(response).1 == 2
    });
    drop(observer);
    let started = Instant::now();
    let status = server.stop_with(15, Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(second.receive_join().error_code, COORDINATOR_NOT_AVAILABLE);
}

fn create_topic(server: &TestServer, topic: &str) {
    cairn_client::BlockingClient::connect(cairn_client::ClientConfig::new(server.address))
        .expect("native client connects")
        .create_topic(topic, 1)
        .expect("topic created");
}

#[test]
fn kafka_groups_commits_are_gated_by_membership_through_a_rebalance() {
    let server = TestServer::start();
    create_topic(&server, "progress");
    let group = group_on_shard("gate", 1);
    let mut first = Member::new(&server, &group);
    stable_alone(&mut first, b"x");
    assert_eq!(first.commit("progress", 1), NONE);
    assert_eq!(
        first.commit_as("progress", 1, "nobody", 2),
        UNKNOWN_MEMBER_ID
    );
    assert_eq!(
        first.commit_as("progress", -1, "", 2),
        UNKNOWN_MEMBER_ID,
        "the group has members"
    );

    // PreparingRebalance: the current generation still commits (what it consumed before
    // its partitions are revoked).
    let mut second = Member::new(&server, &group);
    second.send_join();
    let mut observer = KafkaConnection::connect(server.kafka_ports[1]);
    until_described(&mut observer, &group, |response| {
        state_and_members(response) == ("PreparingRebalance".into(), 2)
    });
    assert_eq!(first.commit("progress", 3), NONE);

    // CompletingRebalance: the new generation and the previous one are told to wait.
    let old_generation = first.generation_id;
    assert_eq!(first.join().error_code, NONE);
    assert_eq!(second.receive_join().error_code, NONE);
    let member_id = first.member_id.clone();
    assert_eq!(first.commit("progress", 4), REBALANCE_IN_PROGRESS);
    assert_eq!(
        first.commit_as("progress", old_generation, &member_id, 4),
        REBALANCE_IN_PROGRESS
    );

    // Stable again: only the current generation.
    let second_id = second.member_id.clone();
    second.send_sync(&[]);
    first.send_sync(&[(&member_id, b"p0"), (&second_id, b"")]);
    assert_eq!(first.receive_sync().error_code, NONE);
    assert_eq!(second.receive_sync().error_code, NONE);
    assert_eq!(first.commit("progress", 5), NONE);
    assert_eq!(
        first.commit_as("progress", old_generation, &member_id, 6),
        ILLEGAL_GENERATION
    );
    assert_eq!(first.committed("progress"), 5);
}

#[test]
fn kafka_groups_delete_groups_deletes_the_committed_offsets() {
    let server = TestServer::start();
    create_topic(&server, "progress");
    let group = group_on_shard("forget", 0);
    let mut member = Member::new(&server, &group);
    stable_alone(&mut member, b"x");
    assert_eq!(member.commit("progress", 42), NONE);
    assert_eq!(member.leave().members[0].error_code, NONE);
    assert_eq!(
        member.committed("progress"),
        42,
        "leaving keeps the commits"
    );
    let request = DeleteGroupsRequest::default().with_groups_names(vec![group_id(&group)]);
    let response: DeleteGroupsResponse = member.connection.call(ApiKey::DeleteGroups, 2, &request);
    assert_eq!(response.results[0].error_code, NONE);
    assert_eq!(member.committed("progress"), -1);

    // A group known only by its commits (as after a restart) is deleted too.
    let group = group_on_shard("commits-only", 0);
    let mut tool = Member::new(&server, &group);
    assert_eq!(tool.commit_as("progress", -1, "", 7), NONE);
    let request = DeleteGroupsRequest::default().with_groups_names(vec![group_id(&group)]);
    let response: DeleteGroupsResponse = tool.connection.call(ApiKey::DeleteGroups, 2, &request);
    assert_eq!(response.results[0].error_code, NONE);
    assert_eq!(tool.committed("progress"), -1);
    let response: DeleteGroupsResponse = tool.connection.call(ApiKey::DeleteGroups, 2, &request);
    assert_eq!(response.results[0].error_code, GROUP_ID_NOT_FOUND);
}

#[test]
fn kafka_groups_the_oldest_and_newest_join_versions_share_a_group() {
    let server = TestServer::start();
    let group = group_on_shard("versions", 1);
    // v9 (Java 4.x: flexible, protocol type and name in the response) forms the group;
    // a v2 member (no member id round trip) joins it.
    let mut newest = Member::new(&server, &group);
    newest.join_version = 9;
    let joined = newest.join();
    assert_eq!(joined.error_code, NONE, "{joined:?}");
    assert_eq!(joined.protocol_type.as_deref(), Some("consumer"));
    assert_eq!(joined.protocol_name.as_deref(), Some("range"));
    assert!(!joined.skip_assignment);
    let newest_id = newest.member_id.clone();
    newest.send_sync(&[(&newest_id, b"all")]);
    assert_eq!(newest.receive_sync().assignment, &b"all"[..]);

    let mut oldest = Member::new(&server, &group);
    oldest.join_version = 2;
    oldest.send_join();
    let mut observer = KafkaConnection::connect(server.kafka_ports[1]);
    until_described(&mut observer, &group, |response| {
        state_and_members(response).1 == 2
    });
    assert_eq!(newest.heartbeat(), REBALANCE_IN_PROGRESS);
    assert_eq!(newest.join().error_code, NONE);
    let joined = oldest.receive_join();
    assert_eq!(joined.error_code, NONE, "{joined:?}");
    assert_eq!(joined.protocol_name.as_deref(), Some("range"));
    assert_eq!(joined.generation_id, newest.generation_id);
    let oldest_id = oldest.member_id.clone();
    oldest.send_sync(&[]);
    newest.send_sync(&[(&newest_id, b"a"), (&oldest_id, b"b")]);
    assert_eq!(newest.receive_sync().assignment, &b"a"[..]);
    assert_eq!(oldest.receive_sync().assignment, &b"b"[..]);
    // LeaveGroup v0 (one member id) and v5 (a batch).
    let request = LeaveGroupRequest::default()
        .with_group_id(group_id(&group))
        .with_member_id(text(&oldest_id));
    let left: LeaveGroupResponse = oldest.connection.call(ApiKey::LeaveGroup, 0, &request);
    assert_eq!(left.error_code, NONE);
    assert_eq!(newest.leave().members[0].error_code, NONE);
    assert_eq!(
        state_and_members(&describe(&mut observer, &group, 0)),
        ("Empty".into(), 0)
    );
}
