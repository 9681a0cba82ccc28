//! `JoinGroup`: a member joins (or rejoins) a consumer group and long-polls until the
//! rebalance completes (`group::state` decides; `group::wait_for` parks). v4 and later
//! get the member id round trip (MEMBER_ID_REQUIRED, KIP-394), v5 and later static
//! membership (`group_instance_id`, KIP-345).

use std::time::{Duration, Instant};

use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::{JoinGroupRequest, JoinGroupResponse};
use kafka_protocol::protocol::StrBytes;

use super::find_coordinator::coordinates;
use super::{RequestSource, codes};
use crate::context::ShardContext;
use crate::group::{self, GroupError, JoinRequest, JoinResult, JoinStart};

/// A parked join waits at most this beyond the longest rebalance timeout (the state
/// machine answers by then; this only bounds a bug).
const JOIN_WAIT_SLACK: Duration = Duration::from_secs(5);

fn millis(ms: i32) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

fn refused(code: i16, member_id: StrBytes) -> JoinGroupResponse {
    JoinGroupResponse::default()
        .with_error_code(code)
        .with_generation_id(-1)
        .with_member_id(member_id)
}

pub(super) async fn serve(
    context: &ShardContext,
    request: JoinGroupRequest,
    version: i16,
    source: &RequestSource,
) -> JoinGroupResponse {
    let group_id = request.group_id.0.to_string();
    if let Err(code) = coordinates(context, &group_id) {
        return refused(code, request.member_id);
    }
    let member_id = request.member_id.to_string();
    let cell = if member_id.is_empty() {
        context.groups.get_or_create(&group_id)
    } else {
        // A member id for a group we do not know (e.g. from before a restart): it joins
        // again without one.
        match context.groups.get(&group_id) {
            Some(cell) => Some(cell),
            None => {
                return refused(
                    codes::group_error_code(GroupError::UnknownMemberId),
                    request.member_id,
                );
            }
        }
    };
    let Some(cell) = cell else {
        return refused(
            codes::group_error_code(GroupError::CoordinatorNotAvailable),
            request.member_id,
        );
    };
    // v0 has no rebalance timeout: it is the session timeout.
    let rebalance_timeout = if version >= 1 {
        millis(request.rebalance_timeout_ms)
    } else {
        millis(request.session_timeout_ms)
    };
    let join = JoinRequest {
        member_id,
        instance_id: request
            .group_instance_id
            .as_ref()
            .map(ToString::to_string)
            .filter(|id| !id.is_empty()),
        client_id: source.client_id.clone(),
        client_host: source.client_host.clone(),
        session_timeout: millis(request.session_timeout_ms),
        rebalance_timeout,
        protocol_type: request.protocol_type.to_string(),
        protocols: request
            .protocols
            .iter()
            .map(|protocol| (protocol.name.to_string(), protocol.metadata.clone()))
            .collect(),
        require_known_member_id: version >= 4,
        new_member_id: context.groups.new_member_id(&source.client_id),
    };
    // The rebalance may run to another member's (longer) rebalance timeout: only the
    // longest there can be bounds this wait.
    let bound = group::state::REBALANCE_TIMEOUT_MAX + JOIN_WAIT_SLACK;
    let start = cell.update(|group| group.join(join, Instant::now()));
    let result = match start {
        JoinStart::Done(result) => result,
        JoinStart::Wait(ticket) => {
            let waited = group::wait_for(
                &cell,
                &context.stopping,
                &context.is_stopping,
                bound,
                |group| group.take_join_result(ticket),
            )
            .await;
            match waited {
                Some(result) => result,
                None => {
                    cell.update(|group| group.abandon(ticket));
                    return refused(
                        codes::group_error_code(GroupError::CoordinatorNotAvailable),
                        request.member_id,
                    );
                }
            }
        }
    };
    response(result, version)
}

fn response(result: JoinResult, version: i16) -> JoinGroupResponse {
    let JoinResult {
        error,
        generation_id,
        protocol_type,
        protocol_name,
        leader_id,
        member_id,
        members,
        skip_assignment,
    } = result;
    let error_code = error.map_or(codes::NONE, codes::group_error_code);
    let mut response = JoinGroupResponse::default()
        .with_error_code(error_code)
        .with_generation_id(generation_id)
        .with_leader(StrBytes::from_string(leader_id))
        .with_member_id(StrBytes::from_string(member_id))
        .with_members(
            members
                .into_iter()
                .map(|(member_id, instance_id, metadata)| {
                    let mut member = JoinGroupResponseMember::default()
                        .with_member_id(StrBytes::from_string(member_id))
                        .with_metadata(metadata);
                    if version >= 5 {
                        member.group_instance_id = instance_id.map(StrBytes::from_string);
                    }
                    member
                })
                .collect(),
        );
    // Before v7 the protocol name is a non-null string; from v7 it (and the type) may be
    // null, as for a failed join.
    response.protocol_name = match protocol_name {
        Some(name) => Some(StrBytes::from_string(name)),
        None if version < 7 => Some(StrBytes::default()),
        None => None,
    };
    if version >= 7 {
        response.protocol_type = protocol_type.map(StrBytes::from_string);
    }
    if version >= 9 {
        response.skip_assignment = skip_assignment;
    }
    response
}
