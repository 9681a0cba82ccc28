//! `SyncGroup`: the leader hands in the assignment, every member long-polls for its own
//! (`group::state` decides; `group::wait_for` parks).

use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::{SyncGroupRequest, SyncGroupResponse};
use kafka_protocol::protocol::StrBytes;

use super::codes;
use super::find_coordinator::coordinates;
use crate::context::ShardContext;
use crate::group::{self, GroupError, SyncRequest, SyncResult, SyncStart};

fn refused(code: i16) -> SyncGroupResponse {
    SyncGroupResponse::default()
        .with_error_code(code)
        .with_assignment(Bytes::new())
}

pub(super) async fn serve(
    context: &ShardContext,
    request: SyncGroupRequest,
    version: i16,
) -> SyncGroupResponse {
    let group_id = request.group_id.0.to_string();
    if let Err(code) = coordinates(context, &group_id) {
        return refused(code);
    }
    let Some(cell) = context.groups.get(&group_id) else {
        return refused(codes::group_error_code(GroupError::UnknownMemberId));
    };
    let sync = SyncRequest {
        member_id: request.member_id.to_string(),
        instance_id: request
            .group_instance_id
            .as_ref()
            .map(ToString::to_string)
            .filter(|id| !id.is_empty()),
        generation_id: request.generation_id,
        protocol_type: request.protocol_type.as_ref().map(ToString::to_string),
        protocol_name: request.protocol_name.as_ref().map(ToString::to_string),
        assignments: request
            .assignments
            .iter()
            .map(|assignment| {
                (
                    assignment.member_id.to_string(),
                    assignment.assignment.clone(),
                )
            })
            .collect(),
    };
    let start = cell.update(|group| group.sync(sync, Instant::now()));
    let result = match start {
        SyncStart::Done(result) => result,
        SyncStart::Wait(ticket) => {
            // The sync deadline (the rebalance timeout) answers it by then.
            let bound = group::state::REBALANCE_TIMEOUT_MAX + Duration::from_secs(5);
            let waited = group::wait_for(
                &cell,
                &context.stopping,
                &context.is_stopping,
                bound,
                |group| group.take_sync_result(ticket),
            )
            .await;
            match waited {
                Some(result) => result,
                None => {
                    cell.update(|group| group.abandon(ticket));
                    return refused(codes::group_error_code(GroupError::CoordinatorNotAvailable));
                }
            }
        }
    };
    let SyncResult {
        error,
        protocol_type,
        protocol_name,
        assignment,
    } = result;
    let mut response = SyncGroupResponse::default()
        .with_error_code(error.map_or(codes::NONE, codes::group_error_code))
        .with_assignment(assignment);
    if version >= 5 {
        response.protocol_type = protocol_type.map(StrBytes::from_string);
        response.protocol_name = protocol_name.map(StrBytes::from_string);
    }
    response
}
