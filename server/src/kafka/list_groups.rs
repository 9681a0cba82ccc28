//! `ListGroups`: the groups this shard coordinates (clients ask every broker and merge),
//! filtered by state (v4) and type (v5: every group here is "classic").

use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{GroupId, ListGroupsRequest, ListGroupsResponse};
use kafka_protocol::protocol::StrBytes;

use crate::context::ShardContext;

const GROUP_TYPE: &str = "classic";

pub(super) fn serve(
    context: &ShardContext,
    request: &ListGroupsRequest,
    version: i16,
) -> ListGroupsResponse {
    let groups = context
        .groups
        .list()
        .into_iter()
        .filter(|(_, state, _)| {
            request.states_filter.is_empty()
                || request
                    .states_filter
                    .iter()
                    .any(|filter| filter.eq_ignore_ascii_case(state.name()))
        })
        .filter(|_| {
            request.types_filter.is_empty()
                || request
                    .types_filter
                    .iter()
                    .any(|filter| filter.eq_ignore_ascii_case(GROUP_TYPE))
        })
        .map(|(group_id, state, protocol_type)| {
            let mut listed = ListedGroup::default()
                .with_group_id(GroupId(StrBytes::from_string(group_id)))
                .with_protocol_type(StrBytes::from_string(protocol_type));
            if version >= 4 {
                listed.group_state = StrBytes::from_static_str(state.name());
            }
            if version >= 5 {
                listed.group_type = StrBytes::from_static_str(GROUP_TYPE);
            }
            listed
        })
        .collect();
    ListGroupsResponse::default().with_groups(groups)
}
