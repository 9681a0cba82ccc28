//! `DeleteGroups`: forgets groups that have no members, their committed offsets included
//! (tombstones in the coordinator's partition of the offsets topic, synced before the
//! answer): NON_EMPTY_GROUP while a group has members, GROUP_ID_NOT_FOUND for a group
//! with neither membership state nor committed offsets.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::{DeleteGroupsRequest, DeleteGroupsResponse};

use super::codes;
use super::find_coordinator::coordinates;
use super::offset_fetch::group_failure_code;
use crate::context::ShardContext;
use crate::service;

pub(super) async fn serve(
    context: &ShardContext,
    request: &DeleteGroupsRequest,
) -> DeleteGroupsResponse {
    let mut results = Vec::with_capacity(request.groups_names.len());
    for group_id in &request.groups_names {
        let error_code = match delete(context, group_id.0.as_str()).await {
            Ok(()) => codes::NONE,
            Err(code) => code,
        };
        results.push(
            DeletableGroupResult::default()
                .with_group_id(group_id.clone())
                .with_error_code(error_code),
        );
    }
    DeleteGroupsResponse::default().with_results(results)
}

async fn delete(context: &ShardContext, group_id: &str) -> Result<(), i16> {
    coordinates(context, group_id)?;
    // Membership first: a member that joins meanwhile starts a new group, whose commits
    // come after these tombstones.
    let had_members_state = match context.groups.delete(group_id) {
        Ok(()) => true,
        Err(true) => return Err(codes::code(ResponseError::NonEmptyGroup)),
        Err(false) => false,
    };
    let deleted_count = service::delete_group_offsets(context, group_id)
        .await
        .map_err(|failure| group_failure_code(&failure))?;
    if deleted_count == 0 && !had_members_state {
        return Err(codes::code(ResponseError::GroupIdNotFound));
    }
    Ok(())
}
