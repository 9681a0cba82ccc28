//! `LeaveGroup`: members leave (v0-v2 one member id; v3 and later a batch, each by member
//! id or by static instance id), and the rest rebalance at once rather than at the end of
//! the leaver's session.

use std::time::Instant;

use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{LeaveGroupRequest, LeaveGroupResponse};

use super::codes;
use super::find_coordinator::coordinates;
use crate::context::ShardContext;
use crate::group::GroupError;

pub(super) fn serve(
    context: &ShardContext,
    request: &LeaveGroupRequest,
    version: i16,
) -> LeaveGroupResponse {
    let group_id = request.group_id.0.as_str();
    let refused = |code| LeaveGroupResponse::default().with_error_code(code);
    if let Err(code) = coordinates(context, group_id) {
        return refused(code);
    }
    let Some(cell) = context.groups.get(group_id) else {
        return refused(codes::group_error_code(GroupError::UnknownMemberId));
    };
    let now = Instant::now();
    if version < 3 {
        let outcome = cell.update(|group| group.leave(request.member_id.as_str(), None, now));
        return refused(outcome.err().map_or(codes::NONE, codes::group_error_code));
    }
    let members = request
        .members
        .iter()
        .map(|member| {
            let instance_id = member
                .group_instance_id
                .as_ref()
                .map(|id| id.as_str())
                .filter(|id| !id.is_empty());
            let outcome =
                cell.update(|group| group.leave(member.member_id.as_str(), instance_id, now));
            MemberResponse::default()
                .with_member_id(member.member_id.clone())
                .with_group_instance_id(member.group_instance_id.clone())
                .with_error_code(outcome.err().map_or(codes::NONE, codes::group_error_code))
        })
        .collect();
    LeaveGroupResponse::default().with_members(members)
}
