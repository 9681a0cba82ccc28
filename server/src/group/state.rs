//! One consumer group's membership as a sans-I/O state machine: Kafka's classic group
//! protocol (its `GroupCoordinator` and `GroupMetadata`), requests and the time in,
//! outcomes out. It never awaits and reads no clock: the shell (`group::Groups`) passes
//! `now`, parks the long-polling joins and syncs on the tickets this hands out, and calls
//! [`Group::tick`] at [`Group::next_deadline`].
//!
//! States, as Kafka names them (DescribeGroups answers these strings):
//!
//! ```text
//! Empty ──join──> PreparingRebalance ──all known members joined, or the rebalance
//!   ^                 ^      │          deadline (absent members evicted)──> CompletingRebalance
//!   │                 │      └── no member left: generation+1 ──> Empty          │
//!   │                 │                                                         │ leader's SyncGroup
//!   │                 └── join of a new member / changed metadata / leader ──  Stable
//!   │                     rejoins, a member leaves or its session expires,      │
//!   │                     sync deadline passes in CompletingRebalance           │
//!   └─────────────────────────────── (via PreparingRebalance) ──────────────────┘
//! ```
//!
//! Member metadata and assignments are opaque bytes; the leader client assigns. The
//! protocol is chosen among those every member supports, by vote of each member's first
//! such choice, ties going to the leader's order (Kafka's `selectProtocol`).

use std::time::{Duration, Instant};

use bytes::Bytes;
use hashbrown::HashMap;

/// Shortest and longest session timeout a member may ask for. Kafka's broker defaults are
/// 6 s and 30 min (`group.min/max.session.timeout.ms`); the minimum is lower here so that
/// tests of session expiry stay short. Anything outside is INVALID_SESSION_TIMEOUT.
pub(crate) const SESSION_TIMEOUT_MIN: Duration = Duration::from_secs(1);
pub(crate) const SESSION_TIMEOUT_MAX: Duration = Duration::from_secs(30 * 60);

/// A rebalance timeout above this is taken as this: it bounds how long a JoinGroup or
/// SyncGroup long-polls (Kafka clients ask for 5 min by default, `max.poll.interval.ms`).
pub(crate) const REBALANCE_TIMEOUT_MAX: Duration = Duration::from_secs(5 * 60);

/// How long the first rebalance of an empty group waits for more members (Kafka's
/// `group.initial.rebalance.delay.ms`, 3 s there), extended by the same again for each
/// member that joins meanwhile, up to the rebalance timeout: several consumers started
/// together form one generation instead of one each. Short, so that clients' tests are.
pub(crate) const INITIAL_REBALANCE_DELAY: Duration = Duration::from_millis(300);

/// Most members (and members yet to confirm their id) in one group: a bound on the memory
/// joins from the network can take. Beyond it a join is GROUP_MAX_SIZE_REACHED.
pub(crate) const GROUP_MEMBER_COUNT_MAX: usize = 1000;

/// Most bytes of protocol metadata one member may send (all protocols together, each
/// counted with `PROTOCOL_OVERHEAD_BYTES`), and of one assignment; beyond them a join or
/// sync is refused as INVALID_REQUEST. Consumers send a few hundred bytes to a few KiB.
pub(crate) const MEMBER_METADATA_SIZE_BYTES_MAX: usize = 1 << 20;

/// What one protocol entry costs in memory beyond its name and metadata, so that a join of
/// many empty protocols is bounded too.
const PROTOCOL_OVERHEAD_BYTES: usize = 64;

/// Most bytes of protocol metadata (as counted for one member) all of a group's members
/// may hold together: beyond it a joining member is GROUP_MAX_SIZE_REACHED. Without it a
/// group's metadata could reach `GROUP_MEMBER_COUNT_MAX` times the member's maximum.
pub(crate) const GROUP_METADATA_SIZE_BYTES_MAX: usize = 32 << 20;

const _: () = assert!(MEMBER_METADATA_SIZE_BYTES_MAX <= GROUP_METADATA_SIZE_BYTES_MAX);

/// Why a group request was refused: each is one Kafka error code (`kafka::codes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GroupError {
    UnknownMemberId,
    IllegalGeneration,
    RebalanceInProgress,
    FencedInstanceId,
    InconsistentGroupProtocol,
    InvalidSessionTimeout,
    GroupMaxSizeReached,
    /// JoinGroup v4+: the member must join again with the id the response names.
    MemberIdRequired,
    InvalidRequest,
    /// The server is stopping; the client finds the coordinator again.
    CoordinatorNotAvailable,
}

/// Kafka's group states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl GroupState {
    /// The name DescribeGroups and ListGroups answer.
    pub(crate) fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
        }
    }
}

/// Names one parked JoinGroup or SyncGroup, so the shell can collect its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Ticket(u64);

/// A JoinGroup, decoded.
pub(crate) struct JoinRequest {
    /// Empty for a member without an id yet.
    pub(crate) member_id: String,
    pub(crate) instance_id: Option<String>,
    pub(crate) client_id: String,
    pub(crate) client_host: String,
    pub(crate) session_timeout: Duration,
    pub(crate) rebalance_timeout: Duration,
    pub(crate) protocol_type: String,
    /// (name, metadata) in the member's order of preference.
    pub(crate) protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4 and later: a member without an id gets one with MEMBER_ID_REQUIRED and
    /// must come back with it (KIP-394), so that a retried join does not add a member.
    pub(crate) require_known_member_id: bool,
    /// The id to give the member if it needs one (the shell makes it unique).
    pub(crate) new_member_id: String,
}

/// What a JoinGroup is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JoinResult {
    pub(crate) error: Option<GroupError>,
    pub(crate) generation_id: i32,
    pub(crate) protocol_type: Option<String>,
    pub(crate) protocol_name: Option<String>,
    pub(crate) leader_id: String,
    pub(crate) member_id: String,
    /// For the leader: every member's (id, instance id, metadata of the chosen protocol).
    pub(crate) members: Vec<(String, Option<String>, Bytes)>,
    /// JoinGroup v9: the leader need not assign (a static leader rejoined unchanged).
    pub(crate) skip_assignment: bool,
}

impl JoinResult {
    fn failed(error: GroupError, member_id: String) -> JoinResult {
        JoinResult {
            error: Some(error),
            generation_id: -1,
            protocol_type: None,
            protocol_name: None,
            leader_id: String::new(),
            member_id,
            members: Vec::new(),
            skip_assignment: false,
        }
    }
}

/// A JoinGroup's outcome: now, or when the rebalance completes.
#[derive(Debug)]
pub(crate) enum JoinStart {
    Done(JoinResult),
    Wait(Ticket),
}

/// A SyncGroup, decoded.
pub(crate) struct SyncRequest {
    pub(crate) member_id: String,
    pub(crate) instance_id: Option<String>,
    pub(crate) generation_id: i32,
    pub(crate) protocol_type: Option<String>,
    pub(crate) protocol_name: Option<String>,
    /// The leader's assignment, by member id; empty from followers.
    pub(crate) assignments: Vec<(String, Bytes)>,
}

/// What a SyncGroup is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyncResult {
    pub(crate) error: Option<GroupError>,
    pub(crate) protocol_type: Option<String>,
    pub(crate) protocol_name: Option<String>,
    pub(crate) assignment: Bytes,
}

impl SyncResult {
    fn failed(error: GroupError) -> SyncResult {
        SyncResult {
            error: Some(error),
            protocol_type: None,
            protocol_name: None,
            assignment: Bytes::new(),
        }
    }
}

/// A SyncGroup's outcome: now, or when the leader has assigned.
#[derive(Debug)]
pub(crate) enum SyncStart {
    Done(SyncResult),
    Wait(Ticket),
}

/// One member as DescribeGroups shows it.
pub(crate) struct MemberDescription {
    pub(crate) member_id: String,
    pub(crate) instance_id: Option<String>,
    pub(crate) client_id: String,
    pub(crate) client_host: String,
    /// Empty unless the group is Stable.
    pub(crate) metadata: Bytes,
    pub(crate) assignment: Bytes,
}

struct Member {
    member_id: String,
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    /// Its parked JoinGroup, while it waits for the rebalance to complete.
    join_ticket: Option<Ticket>,
    /// Its parked SyncGroup, while it waits for the leader's assignment.
    sync_ticket: Option<Ticket>,
    /// When it is evicted unless it heartbeats (not while a join or sync is parked).
    session_deadline: Instant,
}

/// What a member's protocols count against the metadata bounds.
fn metadata_size_bytes(protocols: &[(String, Bytes)]) -> usize {
    protocols
        .iter()
        .map(|(name, metadata)| name.len() + metadata.len() + PROTOCOL_OVERHEAD_BYTES)
        .sum()
}

fn metadata_size_bytes_of(member: &Member) -> usize {
    metadata_size_bytes(&member.protocols) + member.assignment.len()
}

impl Member {
    fn metadata_of(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, metadata)| metadata.clone())
            .unwrap_or_default()
    }
}

/// One consumer group's membership (see the module docs).
pub(crate) struct Group {
    state: GroupState,
    generation_id: i32,
    protocol_type: Option<String>,
    protocol_name: Option<String>,
    leader_id: Option<String>,
    /// In join order (the first becomes leader when there is none).
    members: Vec<Member>,
    /// Ids handed out with MEMBER_ID_REQUIRED, until the member joins with it or the
    /// deadline (its session timeout) passes.
    pending_members: Vec<(String, Instant)>,
    /// PreparingRebalance: when the join phase ends whoever has rejoined.
    rebalance_deadline: Option<Instant>,
    /// PreparingRebalance from Empty: the initial delay runs until `rebalance_deadline`,
    /// and may be extended up to this.
    initial_delay_end_max: Option<Instant>,
    /// CompletingRebalance: when members that have not sent SyncGroup are evicted (a
    /// leader that never assigns must not stall the group).
    sync_deadline: Option<Instant>,
    join_results: HashMap<Ticket, JoinResult>,
    sync_results: HashMap<Ticket, SyncResult>,
    ticket_next: u64,
}

impl Default for Group {
    fn default() -> Self {
        Group::new()
    }
}

impl Group {
    pub(crate) fn new() -> Group {
        Group {
            state: GroupState::Empty,
            generation_id: 0,
            protocol_type: None,
            protocol_name: None,
            leader_id: None,
            members: Vec::new(),
            pending_members: Vec::new(),
            rebalance_deadline: None,
            initial_delay_end_max: None,
            sync_deadline: None,
            join_results: HashMap::new(),
            sync_results: HashMap::new(),
            ticket_next: 0,
        }
    }

    pub(crate) fn state(&self) -> GroupState {
        self.state
    }

    #[cfg(test)]
    pub(crate) fn generation_id(&self) -> i32 {
        self.generation_id
    }

    pub(crate) fn protocol_type(&self) -> Option<&str> {
        self.protocol_type.as_deref()
    }

    pub(crate) fn protocol_name(&self) -> Option<&str> {
        self.protocol_name.as_deref()
    }

    pub(crate) fn member_count(&self) -> usize {
        self.members.len()
    }

    pub(crate) fn members(&self) -> Vec<MemberDescription> {
        let stable = self.state == GroupState::Stable;
        let protocol = self.protocol_name.as_deref().unwrap_or_default();
        self.members
            .iter()
            .map(|member| MemberDescription {
                member_id: member.member_id.clone(),
                instance_id: member.instance_id.clone(),
                client_id: member.client_id.clone(),
                client_host: member.client_host.clone(),
                metadata: if stable {
                    member.metadata_of(protocol)
                } else {
                    Bytes::new()
                },
                assignment: if stable {
                    member.assignment.clone()
                } else {
                    Bytes::new()
                },
            })
            .collect()
    }

    fn ticket(&mut self) -> Ticket {
        self.ticket_next += 1;
        Ticket(self.ticket_next)
    }

    fn index_of(&self, member_id: &str) -> Option<usize> {
        self.members
            .iter()
            .position(|member| member.member_id == member_id)
    }

    /// Kafka's `isStaticMemberFenced`: the instance id belongs to another member id.
    fn is_fenced(&self, instance_id: Option<&str>, member_id: &str) -> bool {
        instance_id.is_some_and(|instance_id| {
            self.members.iter().any(|member| {
                member.instance_id.as_deref() == Some(instance_id) && member.member_id != member_id
            })
        })
    }

    /// Protocols every member supports.
    fn candidate_protocols(&self) -> Vec<String> {
        let Some(first) = self.members.first() else {
            return Vec::new();
        };
        first
            .protocols
            .iter()
            .map(|(name, _)| name.clone())
            .filter(|name| {
                self.members
                    .iter()
                    .all(|member| member.protocols.iter().any(|(other, _)| other == name))
            })
            .collect()
    }

    /// Whether a member of `protocol_type` with `protocols` may join (Kafka's
    /// `supportsProtocols`).
    fn supports(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if self.members.is_empty() {
            return !protocol_type.is_empty() && !protocols.is_empty();
        }
        let candidates = self.candidate_protocols();
        self.protocol_type.as_deref() == Some(protocol_type)
            && protocols.iter().any(|(name, _)| candidates.contains(name))
    }

    /// Kafka's `selectProtocol`: each member votes for its first candidate; most votes
    /// wins, ties to the leader's order.
    fn select_protocol(&self) -> Option<String> {
        let candidates = self.candidate_protocols();
        let votes = |candidate: &String| {
            self.members
                .iter()
                .filter(|member| {
                    member
                        .protocols
                        .iter()
                        .find(|(name, _)| candidates.contains(name))
                        .is_some_and(|(name, _)| name == candidate)
                })
                .count()
        };
        let leader_order: Vec<String> = self
            .leader_id
            .as_deref()
            .and_then(|leader| self.index_of(leader))
            .and_then(|index| self.members.get(index))
            .map(|leader| {
                leader
                    .protocols
                    .iter()
                    .map(|(name, _)| name.clone())
                    .filter(|name| candidates.contains(name))
                    .collect()
            })
            .unwrap_or_else(|| candidates.clone());
        let mut best: Option<(usize, String)> = None;
        for candidate in leader_order {
            let count = votes(&candidate);
            if best
                .as_ref()
                .is_none_or(|(best_count, _)| count > *best_count)
            {
                best = Some((count, candidate));
            }
        }
        best.map(|(_, name)| name)
    }

    fn rebalance_timeout(&self) -> Duration {
        self.members
            .iter()
            .map(|member| member.rebalance_timeout)
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// A JoinGroup. The shell checked that this shard coordinates the group, and that a
    /// group it had to create is joined by a member without an id.
    pub(crate) fn join(&mut self, request: JoinRequest, now: Instant) -> JoinStart {
        let member_id = request.member_id.clone();
        let fail = |error| JoinStart::Done(JoinResult::failed(error, member_id.clone()));
        if !(SESSION_TIMEOUT_MIN..=SESSION_TIMEOUT_MAX).contains(&request.session_timeout) {
            return fail(GroupError::InvalidSessionTimeout);
        }
        let metadata_size_bytes = metadata_size_bytes(&request.protocols);
        if metadata_size_bytes > MEMBER_METADATA_SIZE_BYTES_MAX {
            return fail(GroupError::InvalidRequest);
        }
        // The group's metadata once this member's replaces its own (if it has any).
        let others_size_bytes: usize = self
            .members
            .iter()
            .filter(|member| member.member_id != request.member_id || request.member_id.is_empty())
            .map(metadata_size_bytes_of)
            .sum();
        if others_size_bytes + metadata_size_bytes > GROUP_METADATA_SIZE_BYTES_MAX {
            return fail(GroupError::GroupMaxSizeReached);
        }
        if !self.supports(&request.protocol_type, &request.protocols) {
            return fail(GroupError::InconsistentGroupProtocol);
        }
        if request.member_id.is_empty() {
            self.join_unknown_member(request, now)
        } else {
            self.join_known_member(request, now)
        }
    }

    fn join_unknown_member(&mut self, request: JoinRequest, now: Instant) -> JoinStart {
        let static_index = request.instance_id.as_deref().and_then(|instance_id| {
            self.members
                .iter()
                .position(|member| member.instance_id.as_deref() == Some(instance_id))
        });
        if let Some(index) = static_index {
            return self.replace_static_member(index, request, now);
        }
        if self.members.len() + self.pending_members.len() >= GROUP_MEMBER_COUNT_MAX {
            return JoinStart::Done(JoinResult::failed(
                GroupError::GroupMaxSizeReached,
                String::new(),
            ));
        }
        if request.instance_id.is_none() && request.require_known_member_id {
            self.pending_members
                .push((request.new_member_id.clone(), now + request.session_timeout));
            return JoinStart::Done(JoinResult::failed(
                GroupError::MemberIdRequired,
                request.new_member_id,
            ));
        }
        let member_id = request.new_member_id.clone();
        self.add_member_and_rebalance(member_id, request, now)
    }

    fn join_known_member(&mut self, request: JoinRequest, now: Instant) -> JoinStart {
        let member_id = request.member_id.clone();
        if let Some(position) = self
            .pending_members
            .iter()
            .position(|(id, _)| *id == member_id)
        {
            self.pending_members.remove(position);
            return self.add_member_and_rebalance(member_id, request, now);
        }
        if self.is_fenced(request.instance_id.as_deref(), &member_id) {
            return JoinStart::Done(JoinResult::failed(GroupError::FencedInstanceId, member_id));
        }
        let Some(index) = self.index_of(&member_id) else {
            return JoinStart::Done(JoinResult::failed(GroupError::UnknownMemberId, member_id));
        };
        let unchanged = self
            .members
            .get(index)
            .is_some_and(|member| member.protocols == request.protocols);
        let is_leader = self.leader_id.as_deref() == Some(member_id.as_str());
        match self.state {
            GroupState::Empty => {
                JoinStart::Done(JoinResult::failed(GroupError::UnknownMemberId, member_id))
            }
            GroupState::PreparingRebalance => self.update_member_and_rebalance(index, request, now),
            GroupState::CompletingRebalance if unchanged => {
                // It lost the join response: the same again, members for the leader.
                JoinStart::Done(self.current_join_result(&member_id, is_leader, false))
            }
            GroupState::Stable if unchanged && !is_leader => {
                JoinStart::Done(self.current_join_result(&member_id, false, false))
            }
            GroupState::CompletingRebalance | GroupState::Stable => {
                self.update_member_and_rebalance(index, request, now)
            }
        }
    }

    /// A static member (its instance id known) joined without a member id: it takes a new
    /// id, and the old id is fenced. Kafka's `updateStaticMemberAndRebalance`: when the
    /// group is Stable and the member's protocols are unchanged there is no rebalance (a
    /// restarted static consumer gets its old assignment back); otherwise there is one.
    fn replace_static_member(
        &mut self,
        index: usize,
        request: JoinRequest,
        now: Instant,
    ) -> JoinStart {
        let new_member_id = request.new_member_id.clone();
        let Some(member) = self.members.get_mut(index) else {
            return JoinStart::Done(JoinResult::failed(
                GroupError::UnknownMemberId,
                new_member_id,
            ));
        };
        let old_member_id = std::mem::replace(&mut member.member_id, new_member_id.clone());
        let unchanged = member.protocols == request.protocols;
        // Whatever the old incarnation has parked is answered FENCED_INSTANCE_ID.
        if let Some(ticket) = member.join_ticket.take() {
            self.join_results.insert(
                ticket,
                JoinResult::failed(GroupError::FencedInstanceId, old_member_id.clone()),
            );
        }
        if let Some(member) = self.members.get_mut(index)
            && let Some(ticket) = member.sync_ticket.take()
        {
            self.sync_results
                .insert(ticket, SyncResult::failed(GroupError::FencedInstanceId));
        }
        if self.leader_id.as_deref() == Some(old_member_id.as_str()) {
            self.leader_id = Some(new_member_id.clone());
        }
        match self.state {
            GroupState::Stable if unchanged => {
                if let Some(member) = self.members.get_mut(index) {
                    member.client_id = request.client_id;
                    member.client_host = request.client_host;
                    member.session_timeout = request.session_timeout;
                    member.rebalance_timeout = request.rebalance_timeout.min(REBALANCE_TIMEOUT_MAX);
                    member.session_deadline = now + request.session_timeout;
                }
                let is_leader = self.leader_id.as_deref() == Some(new_member_id.as_str());
                JoinStart::Done(self.current_join_result(&new_member_id, is_leader, is_leader))
            }
            _ => self.update_member_and_rebalance(index, request, now),
        }
    }

    /// The join result of the current generation for `member_id`.
    fn current_join_result(
        &self,
        member_id: &str,
        with_members: bool,
        skip_assignment: bool,
    ) -> JoinResult {
        let protocol = self.protocol_name.clone().unwrap_or_default();
        JoinResult {
            error: None,
            generation_id: self.generation_id,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            leader_id: self.leader_id.clone().unwrap_or_default(),
            member_id: member_id.to_owned(),
            members: if with_members {
                self.members
                    .iter()
                    .map(|member| {
                        (
                            member.member_id.clone(),
                            member.instance_id.clone(),
                            member.metadata_of(&protocol),
                        )
                    })
                    .collect()
            } else {
                Vec::new()
            },
            skip_assignment,
        }
    }

    fn add_member_and_rebalance(
        &mut self,
        member_id: String,
        request: JoinRequest,
        now: Instant,
    ) -> JoinStart {
        let ticket = self.ticket();
        if self.members.is_empty() {
            self.protocol_type = Some(request.protocol_type.clone());
        }
        self.members.push(Member {
            member_id,
            instance_id: request.instance_id,
            client_id: request.client_id,
            client_host: request.client_host,
            session_timeout: request.session_timeout,
            rebalance_timeout: request.rebalance_timeout.min(REBALANCE_TIMEOUT_MAX),
            protocols: request.protocols,
            assignment: Bytes::new(),
            join_ticket: Some(ticket),
            sync_ticket: None,
            session_deadline: now + request.session_timeout,
        });
        if self.leader_id.is_none() {
            self.leader_id = self.members.first().map(|member| member.member_id.clone());
        }
        if self.state == GroupState::PreparingRebalance
            && let (Some(deadline), Some(end_max)) =
                (self.rebalance_deadline, self.initial_delay_end_max)
        {
            // Another member during the initial delay: wait for more, within bounds.
            self.rebalance_deadline =
                Some((now + INITIAL_REBALANCE_DELAY).min(end_max).max(deadline));
        }
        self.prepare_rebalance(now);
        self.try_complete_join(now);
        JoinStart::Wait(ticket)
    }

    fn update_member_and_rebalance(
        &mut self,
        index: usize,
        request: JoinRequest,
        now: Instant,
    ) -> JoinStart {
        let ticket = self.ticket();
        let Some(member) = self.members.get_mut(index) else {
            return JoinStart::Done(JoinResult::failed(
                GroupError::UnknownMemberId,
                request.member_id,
            ));
        };
        member.protocols = request.protocols;
        member.client_id = request.client_id;
        member.client_host = request.client_host;
        member.session_timeout = request.session_timeout;
        member.rebalance_timeout = request.rebalance_timeout.min(REBALANCE_TIMEOUT_MAX);
        member.session_deadline = now + request.session_timeout;
        let replaced = member.join_ticket.replace(ticket);
        let member_id = member.member_id.clone();
        if let Some(replaced) = replaced {
            // A second join of the same member (a retry on another connection): the
            // earlier one is answered, the newer one waits.
            self.join_results.insert(
                replaced,
                JoinResult::failed(GroupError::RebalanceInProgress, member_id),
            );
        }
        self.prepare_rebalance(now);
        self.try_complete_join(now);
        JoinStart::Wait(ticket)
    }

    /// Enters PreparingRebalance (if not there already).
    fn prepare_rebalance(&mut self, now: Instant) {
        match self.state {
            GroupState::PreparingRebalance => return,
            GroupState::CompletingRebalance => {
                // Syncs parked for the assignment that will not come: rejoin.
                for member in &mut self.members {
                    member.assignment = Bytes::new();
                    if let Some(ticket) = member.sync_ticket.take() {
                        // Its session restarts with the answer, as after any response.
                        member.session_deadline = now + member.session_timeout;
                        self.sync_results
                            .insert(ticket, SyncResult::failed(GroupError::RebalanceInProgress));
                    }
                }
            }
            GroupState::Empty => {
                self.initial_delay_end_max = Some(now + self.rebalance_timeout());
                self.rebalance_deadline = Some(now + INITIAL_REBALANCE_DELAY);
                self.sync_deadline = None;
                self.state = GroupState::PreparingRebalance;
                return;
            }
            GroupState::Stable => {}
        }
        self.sync_deadline = None;
        self.initial_delay_end_max = None;
        self.rebalance_deadline = Some(now + self.rebalance_timeout());
        self.state = GroupState::PreparingRebalance;
    }

    /// Completes the join phase if every known member has rejoined (and no id handed out
    /// with MEMBER_ID_REQUIRED is outstanding), unless the initial delay still runs.
    fn try_complete_join(&mut self, now: Instant) {
        if self.state != GroupState::PreparingRebalance || self.initial_delay_end_max.is_some() {
            return;
        }
        let all_joined = self.pending_members.is_empty()
            && self
                .members
                .iter()
                .all(|member| member.join_ticket.is_some());
        if all_joined {
            self.complete_join(now);
        }
    }

    /// Ends the join phase: members that did not rejoin are evicted, the generation
    /// advances, and every parked join is answered (the leader with the members).
    fn complete_join(&mut self, now: Instant) {
        self.members.retain(|member| member.join_ticket.is_some());
        self.pending_members.clear();
        self.rebalance_deadline = None;
        self.initial_delay_end_max = None;
        self.generation_id = self.generation_id.wrapping_add(1).max(1);
        if self
            .leader_id
            .as_deref()
            .is_none_or(|leader| self.index_of(leader).is_none())
        {
            self.leader_id = self.members.first().map(|member| member.member_id.clone());
        }
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.protocol_name = None;
            self.leader_id = None;
            return;
        }
        self.protocol_name = self.select_protocol();
        self.state = GroupState::CompletingRebalance;
        self.sync_deadline = Some(now + self.rebalance_timeout());
        let leader_id = self.leader_id.clone().unwrap_or_default();
        let leader_result = self.current_join_result(&leader_id, true, false);
        for member in &mut self.members {
            member.session_deadline = now + member.session_timeout;
            if let Some(ticket) = member.join_ticket.take() {
                let result = if member.member_id == leader_id {
                    leader_result.clone()
                } else {
                    JoinResult {
                        member_id: member.member_id.clone(),
                        members: Vec::new(),
                        ..leader_result.clone()
                    }
                };
                self.join_results.insert(ticket, result);
            }
        }
    }

    /// A SyncGroup (Kafka's `doSyncGroup`).
    pub(crate) fn sync(&mut self, request: SyncRequest, now: Instant) -> SyncStart {
        let fail = |error| SyncStart::Done(SyncResult::failed(error));
        if self.is_fenced(request.instance_id.as_deref(), &request.member_id) {
            return fail(GroupError::FencedInstanceId);
        }
        let Some(index) = self.index_of(&request.member_id) else {
            return fail(GroupError::UnknownMemberId);
        };
        if request.generation_id != self.generation_id {
            return fail(GroupError::IllegalGeneration);
        }
        let mismatched = |asked: &Option<String>, actual: &Option<String>| {
            asked
                .as_ref()
                .is_some_and(|asked| Some(asked) != actual.as_ref())
        };
        if mismatched(&request.protocol_type, &self.protocol_type)
            || mismatched(&request.protocol_name, &self.protocol_name)
        {
            return fail(GroupError::InconsistentGroupProtocol);
        }
        match self.state {
            GroupState::Empty => fail(GroupError::UnknownMemberId),
            GroupState::PreparingRebalance => fail(GroupError::RebalanceInProgress),
            GroupState::Stable => {
                if let Some(member) = self.members.get_mut(index) {
                    member.session_deadline = now + member.session_timeout;
                }
                SyncStart::Done(self.sync_result(index))
            }
            GroupState::CompletingRebalance => {
                if request
                    .assignments
                    .iter()
                    .any(|(_, assignment)| assignment.len() > MEMBER_METADATA_SIZE_BYTES_MAX)
                {
                    return fail(GroupError::InvalidRequest);
                }
                let ticket = self.ticket();
                let is_leader = self.leader_id.as_deref() == Some(request.member_id.as_str());
                if let Some(member) = self.members.get_mut(index)
                    && let Some(replaced) = member.sync_ticket.replace(ticket)
                {
                    self.sync_results.insert(
                        replaced,
                        SyncResult::failed(GroupError::RebalanceInProgress),
                    );
                }
                if is_leader {
                    for member in &mut self.members {
                        member.assignment = request
                            .assignments
                            .iter()
                            .find(|(id, _)| *id == member.member_id)
                            .map(|(_, assignment)| assignment.clone())
                            .unwrap_or_default();
                    }
                    self.state = GroupState::Stable;
                    self.sync_deadline = None;
                    for index in 0..self.members.len() {
                        let result = self.sync_result(index);
                        if let Some(member) = self.members.get_mut(index) {
                            member.session_deadline = now + member.session_timeout;
                            if let Some(ticket) = member.sync_ticket.take() {
                                self.sync_results.insert(ticket, result);
                            }
                        }
                    }
                }
                SyncStart::Wait(ticket)
            }
        }
    }

    fn sync_result(&self, index: usize) -> SyncResult {
        SyncResult {
            error: None,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            assignment: self
                .members
                .get(index)
                .map(|member| member.assignment.clone())
                .unwrap_or_default(),
        }
    }

    /// A Heartbeat (Kafka's `handleHeartbeat`): it keeps the member's session, and tells
    /// it of a rebalance.
    pub(crate) fn heartbeat(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation_id: i32,
        now: Instant,
    ) -> Result<(), GroupError> {
        if self.is_fenced(instance_id, member_id) {
            return Err(GroupError::FencedInstanceId);
        }
        let Some(index) = self.index_of(member_id) else {
            return Err(GroupError::UnknownMemberId);
        };
        if generation_id != self.generation_id {
            return Err(GroupError::IllegalGeneration);
        }
        if self.state == GroupState::Empty {
            return Err(GroupError::UnknownMemberId);
        }
        if let Some(member) = self.members.get_mut(index) {
            member.session_deadline = now + member.session_timeout;
        }
        match self.state {
            GroupState::PreparingRebalance => Err(GroupError::RebalanceInProgress),
            _ => Ok(()),
        }
    }

    /// One member of a LeaveGroup (Kafka's `handleLeaveGroup`); an empty `member_id` with
    /// an instance id names the static member of that instance.
    pub(crate) fn leave(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        now: Instant,
    ) -> Result<(), GroupError> {
        let index = if member_id.is_empty() {
            let index = instance_id.and_then(|instance_id| {
                self.members
                    .iter()
                    .position(|member| member.instance_id.as_deref() == Some(instance_id))
            });
            index.ok_or(GroupError::UnknownMemberId)?
        } else if let Some(position) = self
            .pending_members
            .iter()
            .position(|(id, _)| id == member_id)
        {
            self.pending_members.remove(position);
            self.try_complete_join(now);
            return Ok(());
        } else if self.is_fenced(instance_id, member_id) {
            return Err(GroupError::FencedInstanceId);
        } else {
            self.index_of(member_id)
                .ok_or(GroupError::UnknownMemberId)?
        };
        self.remove_member(index, now);
        Ok(())
    }

    /// Removes a member (left, or its session expired) and rebalances the rest.
    fn remove_member(&mut self, index: usize, now: Instant) {
        if index >= self.members.len() {
            return;
        }
        let member = self.members.remove(index);
        if let Some(ticket) = member.join_ticket {
            self.join_results.insert(
                ticket,
                JoinResult::failed(GroupError::UnknownMemberId, member.member_id.clone()),
            );
        }
        if let Some(ticket) = member.sync_ticket {
            self.sync_results
                .insert(ticket, SyncResult::failed(GroupError::UnknownMemberId));
        }
        if self.leader_id.as_deref() == Some(member.member_id.as_str()) {
            self.leader_id = self.members.first().map(|member| member.member_id.clone());
        }
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                self.prepare_rebalance(now);
                self.try_complete_join(now);
            }
            GroupState::PreparingRebalance => self.try_complete_join(now),
            GroupState::Empty => {}
        }
    }

    /// Whether an OffsetCommit with this identity may commit now (Kafka's
    /// `doCommitOffsets` and `validateOffsetCommit`). A commit without a generation (-1,
    /// no member id: a consumer that assigns itself partitions, or a tool) is accepted
    /// while the group has no members.
    pub(crate) fn validate_commit(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
        generation_id: i32,
    ) -> Result<(), GroupError> {
        if generation_id < 0 && member_id.is_empty() && instance_id.is_none() {
            return if self.state == GroupState::Empty {
                Ok(())
            } else {
                Err(GroupError::UnknownMemberId)
            };
        }
        if self.is_fenced(instance_id, member_id) {
            return Err(GroupError::FencedInstanceId);
        }
        if self.index_of(member_id).is_none() {
            return Err(GroupError::UnknownMemberId);
        }
        match self.state {
            // The generation already advanced and the member has not synced yet: it
            // retries once it has its assignment (a member of the previous generation
            // committing what it consumed before the rebalance is told the same, rather
            // than ILLEGAL_GENERATION, which would make it drop its position).
            GroupState::CompletingRebalance
                if generation_id == self.generation_id
                    || generation_id == self.generation_id.wrapping_sub(1) =>
            {
                Err(GroupError::RebalanceInProgress)
            }
            _ if generation_id != self.generation_id => Err(GroupError::IllegalGeneration),
            GroupState::Empty => Err(GroupError::UnknownMemberId),
            _ => Ok(()),
        }
    }

    /// The outcome of a parked join, once there is one.
    pub(crate) fn take_join_result(&mut self, ticket: Ticket) -> Option<JoinResult> {
        self.join_results.remove(&ticket)
    }

    /// The outcome of a parked sync, once there is one.
    pub(crate) fn take_sync_result(&mut self, ticket: Ticket) -> Option<SyncResult> {
        self.sync_results.remove(&ticket)
    }

    /// The shell stopped waiting for `ticket` (the server is stopping): forget it. The
    /// member stays, as a member whose connection dropped does, until it rejoins or its
    /// session or the rebalance deadline evicts it.
    pub(crate) fn abandon(&mut self, ticket: Ticket) {
        self.join_results.remove(&ticket);
        self.sync_results.remove(&ticket);
        for member in &mut self.members {
            if member.join_ticket == Some(ticket) {
                member.join_ticket = None;
            }
            if member.sync_ticket == Some(ticket) {
                member.sync_ticket = None;
            }
        }
    }

    /// When [`Group::tick`] next has something to do.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let sessions = self
            .members
            .iter()
            .filter(|member| member.join_ticket.is_none() && member.sync_ticket.is_none())
            .map(|member| member.session_deadline);
        let pending = self.pending_members.iter().map(|(_, deadline)| *deadline);
        sessions
            .chain(pending)
            .chain(self.rebalance_deadline)
            .chain(self.sync_deadline)
            .min()
    }

    /// Acts on every deadline that has passed by `now`: the end of the initial delay or
    /// of the join phase, the sync deadline, expired sessions and pending member ids.
    pub(crate) fn tick(&mut self, now: Instant) {
        // Ids handed out with MEMBER_ID_REQUIRED that never came back.
        let pending_count = self.pending_members.len();
        self.pending_members.retain(|(_, deadline)| *deadline > now);
        if self.pending_members.len() != pending_count {
            self.try_complete_join(now);
        }
        // Members that stopped heartbeating (a parked join or sync keeps a member alive:
        // it is waiting on us).
        while let Some(index) = self.members.iter().position(|member| {
            member.join_ticket.is_none()
                && member.sync_ticket.is_none()
                && member.session_deadline <= now
        }) {
            self.remove_member(index, now);
        }
        if self.state == GroupState::PreparingRebalance
            && self
                .rebalance_deadline
                .is_some_and(|deadline| deadline <= now)
        {
            if let Some(end_max) = self.initial_delay_end_max.take() {
                // The initial delay is over; from now on the group completes as soon as
                // every member has joined, and at the latest at the rebalance timeout.
                self.rebalance_deadline = Some(end_max.max(now));
                self.try_complete_join(now);
            } else {
                self.complete_join(now);
            }
        }
        if self.state == GroupState::CompletingRebalance
            && self.sync_deadline.is_some_and(|deadline| deadline <= now)
        {
            // The leader never assigned: evict whoever has not synced (the leader among
            // them) and rebalance the rest.
            self.members.retain(|member| member.sync_ticket.is_some());
            if self
                .leader_id
                .as_deref()
                .is_some_and(|leader| self.index_of(leader).is_none())
            {
                self.leader_id = self.members.first().map(|member| member.member_id.clone());
            }
            self.prepare_rebalance(now);
            self.try_complete_join(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SESSION: Duration = Duration::from_secs(10);
    const REBALANCE: Duration = Duration::from_secs(20);

    fn join_request(member_id: &str, new_member_id: &str, metadata: &'static [u8]) -> JoinRequest {
        JoinRequest {
            member_id: member_id.into(),
            instance_id: None,
            client_id: "client".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout: SESSION,
            rebalance_timeout: REBALANCE,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from_static(metadata))],
            require_known_member_id: false,
            new_member_id: new_member_id.into(),
        }
    }

    fn wait(start: JoinStart) -> Ticket {
        match start {
            JoinStart::Wait(ticket) => ticket,
            JoinStart::Done(result) => panic!("joined at once: {result:?}"),
        }
    }

    fn sync_request(
        member_id: &str,
        generation_id: i32,
        assignments: Vec<(String, Bytes)>,
    ) -> SyncRequest {
        SyncRequest {
            member_id: member_id.into(),
            instance_id: None,
            generation_id,
            protocol_type: None,
            protocol_name: None,
            assignments,
        }
    }

    /// Two members through the initial delay into a Stable generation 1.
    fn stable_pair(now: Instant) -> Group {
        let mut group = Group::new();
        let a = wait(group.join(join_request("", "a", b"ma"), now));
        let b = wait(group.join(join_request("", "b", b"mb"), now));
        group.tick(now + INITIAL_REBALANCE_DELAY);
        assert_eq!(group.state(), GroupState::CompletingRebalance);
        let a = group.take_join_result(a).unwrap();
        let b = group.take_join_result(b).unwrap();
        assert_eq!((a.generation_id, a.leader_id.as_str()), (1, "a"));
        assert_eq!(a.members.len(), 2);
        assert!(b.members.is_empty());
        let b_sync = match group.sync(sync_request("b", 1, vec![]), now) {
            SyncStart::Wait(ticket) => ticket,
            SyncStart::Done(result) => panic!("{result:?}"),
        };
        let assignments = vec![
            ("a".into(), Bytes::from_static(b"1")),
            ("b".into(), Bytes::from_static(b"2")),
        ];
        let a_sync = match group.sync(sync_request("a", 1, assignments), now) {
            SyncStart::Wait(ticket) => ticket,
            SyncStart::Done(result) => panic!("{result:?}"),
        };
        assert_eq!(group.state(), GroupState::Stable);
        assert_eq!(
            group.take_sync_result(a_sync).unwrap().assignment,
            &b"1"[..]
        );
        assert_eq!(
            group.take_sync_result(b_sync).unwrap().assignment,
            &b"2"[..]
        );
        group
    }

    #[test]
    fn two_members_form_a_generation_and_a_third_rebalances_it() {
        let now = Instant::now();
        let mut group = stable_pair(now);
        assert_eq!(group.heartbeat("a", None, 1, now), Ok(()));
        let c = wait(group.join(join_request("", "c", b"mc"), now));
        assert_eq!(group.state(), GroupState::PreparingRebalance);
        assert_eq!(
            group.heartbeat("a", None, 1, now),
            Err(GroupError::RebalanceInProgress)
        );
        let a = wait(group.join(join_request("a", "x", b"ma"), now));
        let b = wait(group.join(join_request("b", "x", b"mb"), now));
        assert_eq!(group.state(), GroupState::CompletingRebalance);
        for ticket in [a, b, c] {
            assert_eq!(group.take_join_result(ticket).unwrap().generation_id, 2);
        }
        assert_eq!(
            group.heartbeat("a", None, 1, now),
            Err(GroupError::IllegalGeneration)
        );
        assert_eq!(
            group.heartbeat("zz", None, 2, now),
            Err(GroupError::UnknownMemberId)
        );
    }

    #[test]
    fn member_id_required_then_join_with_it() {
        let now = Instant::now();
        let mut group = Group::new();
        let mut request = join_request("", "m1", b"m");
        request.require_known_member_id = true;
        let JoinStart::Done(result) = group.join(request, now) else {
            panic!()
        };
        assert_eq!(result.error, Some(GroupError::MemberIdRequired));
        assert_eq!(result.member_id, "m1");
        let ticket = wait(group.join(join_request("m1", "unused", b"m"), now));
        group.tick(now + INITIAL_REBALANCE_DELAY);
        let result = group.take_join_result(ticket).unwrap();
        assert_eq!((result.error, result.member_id.as_str()), (None, "m1"));
    }

    #[test]
    fn absent_members_are_evicted_at_the_rebalance_deadline() {
        let now = Instant::now();
        let mut group = stable_pair(now);
        let a = wait(group.join(join_request("a", "x", b"ma2"), now));
        // b keeps heartbeating but never rejoins.
        assert_eq!(
            group.heartbeat("b", None, 1, now),
            Err(GroupError::RebalanceInProgress)
        );
        assert!(group.take_join_result(a).is_none());
        group.tick(now + REBALANCE);
        let result = group.take_join_result(a).unwrap();
        assert_eq!((result.generation_id, result.members.len()), (2, 1));
        assert_eq!(
            group.heartbeat("b", None, 2, now),
            Err(GroupError::UnknownMemberId)
        );
    }

    #[test]
    fn an_expired_session_rebalances_the_rest() {
        let now = Instant::now();
        let mut group = stable_pair(now);
        assert_eq!(group.heartbeat("a", None, 1, now + SESSION / 2), Ok(()));
        group.tick(now + SESSION);
        assert_eq!(group.state(), GroupState::PreparingRebalance);
        assert_eq!(group.member_count(), 1);
    }

    #[test]
    fn a_static_member_rejoining_unchanged_keeps_the_generation_and_fences_the_old_id() {
        let now = Instant::now();
        let mut group = Group::new();
        let mut request = join_request("", "s1", b"m");
        request.instance_id = Some("i".into());
        let ticket = wait(group.join(request, now));
        group.tick(now + INITIAL_REBALANCE_DELAY);
        assert!(group.take_join_result(ticket).is_some());
        let SyncStart::Wait(_) = group.sync(
            sync_request("s1", 1, vec![("s1".into(), Bytes::from_static(b"p"))]),
            now,
        ) else {
            panic!()
        };
        let mut request = join_request("", "s2", b"m");
        request.instance_id = Some("i".into());
        let JoinStart::Done(result) = group.join(request, now) else {
            panic!()
        };
        assert_eq!(
            (
                result.error,
                result.generation_id,
                result.member_id.as_str()
            ),
            (None, 1, "s2")
        );
        assert_eq!(group.state(), GroupState::Stable);
        assert_eq!(
            group.heartbeat("s1", Some("i"), 1, now),
            Err(GroupError::FencedInstanceId)
        );
        assert_eq!(group.heartbeat("s2", Some("i"), 1, now), Ok(()));
    }

    #[test]
    fn commits_follow_kafkas_rules() {
        let now = Instant::now();
        let mut group = Group::new();
        assert_eq!(group.validate_commit("", None, -1), Ok(()));
        let a = wait(group.join(join_request("", "a", b"m"), now));
        group.tick(now + INITIAL_REBALANCE_DELAY);
        group.take_join_result(a);
        assert_eq!(
            group.validate_commit("a", None, 1),
            Err(GroupError::RebalanceInProgress)
        );
        let _ = group.sync(sync_request("a", 1, vec![]), now);
        assert_eq!(group.validate_commit("a", None, 1), Ok(()));
        assert_eq!(
            group.validate_commit("a", None, 0),
            Err(GroupError::IllegalGeneration)
        );
        assert_eq!(
            group.validate_commit("b", None, 1),
            Err(GroupError::UnknownMemberId)
        );
        assert_eq!(
            group.validate_commit("", None, -1),
            Err(GroupError::UnknownMemberId)
        );
    }

    #[test]
    fn the_last_member_leaving_empties_the_group() {
        let now = Instant::now();
        let mut group = stable_pair(now);
        assert_eq!(group.leave("a", None, now), Ok(()));
        assert_eq!(
            group.leave("a", None, now),
            Err(GroupError::UnknownMemberId)
        );
        assert_eq!(group.state(), GroupState::PreparingRebalance);
        assert_eq!(group.leave("b", None, now), Ok(()));
        assert_eq!(group.state(), GroupState::Empty);
        assert_eq!(group.generation_id(), 2);
    }

    #[test]
    fn the_initial_delay_waits_for_more_members_and_is_extended_by_each() {
        let now = Instant::now();
        let mut group = Group::new();
        let a = wait(group.join(join_request("", "a", b"m"), now));
        let half = INITIAL_REBALANCE_DELAY / 2;
        let b = wait(group.join(join_request("", "b", b"m"), now + half));
        group.tick(now + INITIAL_REBALANCE_DELAY);
        assert_eq!(
            group.state(),
            GroupState::PreparingRebalance,
            "extended by b"
        );
        group.tick(now + half + INITIAL_REBALANCE_DELAY);
        assert_eq!(group.state(), GroupState::CompletingRebalance);
        let a = group.take_join_result(a).unwrap();
        assert_eq!((a.generation_id, a.members.len()), (1, 2));
        assert!(group.take_join_result(b).is_some());
    }

    #[test]
    fn a_leader_that_never_syncs_is_evicted_at_the_sync_deadline() {
        let now = Instant::now();
        let mut group = Group::new();
        let a = wait(group.join(join_request("", "a", b"m"), now));
        let b = wait(group.join(join_request("", "b", b"m"), now));
        group.tick(now + INITIAL_REBALANCE_DELAY);
        group.take_join_result(a);
        group.take_join_result(b);
        let SyncStart::Wait(b_sync) = group.sync(sync_request("b", 1, vec![]), now) else {
            panic!()
        };
        group.tick(now + INITIAL_REBALANCE_DELAY + REBALANCE);
        assert_eq!(
            group.take_sync_result(b_sync).unwrap().error,
            Some(GroupError::RebalanceInProgress)
        );
        assert_eq!(group.state(), GroupState::PreparingRebalance);
        assert_eq!(group.member_count(), 1, "the leader is gone");
        let b = wait(group.join(join_request("b", "x", b"m"), now + REBALANCE));
        let result = group.take_join_result(b).unwrap();
        assert_eq!((result.generation_id, result.leader_id.as_str()), (2, "b"));
    }

    #[test]
    fn an_id_handed_out_but_never_used_expires() {
        let now = Instant::now();
        let mut group = stable_pair(now);
        let mut request = join_request("", "c", b"m");
        request.require_known_member_id = true;
        let JoinStart::Done(_) = group.join(request, now) else {
            panic!()
        };
        let a = wait(group.join(join_request("a", "x", b"ma2"), now));
        let b = wait(group.join(join_request("b", "x", b"mb"), now));
        assert!(
            group.take_join_result(a).is_none(),
            "waits for c's id to come back"
        );
        group.tick(now + SESSION);
        assert_eq!(group.take_join_result(a).unwrap().generation_id, 2);
        assert!(group.take_join_result(b).is_some());
    }

    #[test]
    fn a_second_join_of_one_member_answers_the_first() {
        let now = Instant::now();
        let mut group = stable_pair(now);
        let first = wait(group.join(join_request("a", "x", b"ma2"), now));
        let second = wait(group.join(join_request("a", "x", b"ma2"), now));
        assert_eq!(
            group.take_join_result(first).unwrap().error,
            Some(GroupError::RebalanceInProgress)
        );
        let _ = wait(group.join(join_request("b", "x", b"mb"), now));
        assert_eq!(group.take_join_result(second).unwrap().generation_id, 2);
    }

    #[test]
    fn metadata_is_bounded_per_member_and_per_group() {
        let now = Instant::now();
        let mut group = Group::new();
        let mut request = join_request("", "a", b"");
        request.protocols = vec![("range".into(), Bytes::new()); 20_000];
        let JoinStart::Done(result) = group.join(request, now) else {
            panic!()
        };
        assert_eq!(result.error, Some(GroupError::InvalidRequest));
        let big = Bytes::from(vec![0u8; MEMBER_METADATA_SIZE_BYTES_MAX - 1000]);
        let joins = GROUP_METADATA_SIZE_BYTES_MAX / big.len();
        for index in 0..joins {
            let mut request = join_request("", &format!("m{index}"), b"");
            request.protocols = vec![("range".into(), big.clone())];
            let _ = wait(group.join(request, now));
        }
        let mut request = join_request("", "one-too-many", b"");
        request.protocols = vec![("range".into(), big)];
        let JoinStart::Done(result) = group.join(request, now) else {
            panic!()
        };
        assert_eq!(result.error, Some(GroupError::GroupMaxSizeReached));
    }

    #[test]
    fn an_inconsistent_protocol_is_refused() {
        let now = Instant::now();
        let mut group = stable_pair(now);
        let mut request = join_request("", "c", b"m");
        request.protocols = vec![("roundrobin".into(), Bytes::new())];
        let JoinStart::Done(result) = group.join(request, now) else {
            panic!()
        };
        assert_eq!(result.error, Some(GroupError::InconsistentGroupProtocol));
    }
}
