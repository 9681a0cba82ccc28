//! `Heartbeat`: keeps a member's session, and tells it of a rebalance
//! (REBALANCE_IN_PROGRESS) or that it is no longer a member.

use std::time::Instant;

use kafka_protocol::messages::{HeartbeatRequest, HeartbeatResponse};

use super::codes;
use super::find_coordinator::coordinates;
use crate::context::ShardContext;
use crate::group::GroupError;

pub(super) fn serve(context: &ShardContext, request: &HeartbeatRequest) -> HeartbeatResponse {
    let group_id = request.group_id.0.as_str();
    let outcome = coordinates(context, group_id).and_then(|()| {
        let Some(cell) = context.groups.get(group_id) else {
            return Err(codes::group_error_code(GroupError::UnknownMemberId));
        };
        let instance_id = request
            .group_instance_id
            .as_ref()
            .map(|id| id.as_str())
            .filter(|id| !id.is_empty());
        cell.update(|group| {
            group.heartbeat(
                request.member_id.as_str(),
                instance_id,
                request.generation_id,
                Instant::now(),
            )
        })
        .map_err(codes::group_error_code)
    });
    HeartbeatResponse::default().with_error_code(outcome.err().unwrap_or(codes::NONE))
}
