//! `DeleteGroups`: forgets groups that have no members: NON_EMPTY_GROUP while one has,
//! GROUP_ID_NOT_FOUND for a group this shard does not know.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::{DeleteGroupsRequest, DeleteGroupsResponse};

use super::codes;
use super::find_coordinator::coordinates;
use crate::context::ShardContext;

pub(super) fn serve(context: &ShardContext, request: &DeleteGroupsRequest) -> DeleteGroupsResponse {
    let results = request
        .groups_names
        .iter()
        .map(|group_id| {
            let outcome = coordinates(context, group_id.0.as_str()).and_then(|()| {
                context
                    .groups
                    .delete(group_id.0.as_str())
                    .map_err(|has_members| {
                        codes::code(if has_members {
                            ResponseError::NonEmptyGroup
                        } else {
                            ResponseError::GroupIdNotFound
                        })
                    })
            });
            DeletableGroupResult::default()
                .with_group_id(group_id.clone())
                .with_error_code(outcome.err().unwrap_or(codes::NONE))
        })
        .collect();
    DeleteGroupsResponse::default().with_results(results)
}
