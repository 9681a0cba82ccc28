//! `DescribeGroups`: each asked group's state, protocol and members (their metadata and
//! assignment only while Stable, as Kafka). A group this shard coordinates but does not
//! know is "Dead" with no error before v6, and GROUP_ID_NOT_FOUND from v6.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::{DescribeGroupsRequest, DescribeGroupsResponse};
use kafka_protocol::protocol::StrBytes;

use super::codes;
use super::find_coordinator::coordinates;
use crate::context::ShardContext;

/// Kafka's "no authorized operations asked for".
const AUTHORIZED_OPERATIONS_OMITTED: i32 = i32::MIN;

pub(super) fn serve(
    context: &ShardContext,
    request: &DescribeGroupsRequest,
    version: i16,
) -> DescribeGroupsResponse {
    let groups = request
        .groups
        .iter()
        .map(|group_id| {
            let described = DescribedGroup::default()
                .with_group_id(group_id.clone())
                .with_authorized_operations(AUTHORIZED_OPERATIONS_OMITTED);
            if let Err(code) = coordinates(context, group_id.0.as_str()) {
                return described.with_error_code(code);
            }
            let Some(cell) = context.groups.get(group_id.0.as_str()) else {
                let described = described.with_group_state(StrBytes::from_static_str("Dead"));
                return if version >= 6 {
                    described.with_error_code(codes::code(ResponseError::GroupIdNotFound))
                } else {
                    described
                };
            };
            let group = cell.group.borrow();
            let members = group
                .members()
                .into_iter()
                .map(|member| {
                    let mut described = DescribedGroupMember::default()
                        .with_member_id(StrBytes::from_string(member.member_id))
                        .with_client_id(StrBytes::from_string(member.client_id))
                        .with_client_host(StrBytes::from_string(member.client_host))
                        .with_member_metadata(member.metadata)
                        .with_member_assignment(member.assignment);
                    if version >= 4 {
                        described.group_instance_id = member.instance_id.map(StrBytes::from_string);
                    }
                    described
                })
                .collect();
            described
                .with_group_state(StrBytes::from_static_str(group.state().name()))
                .with_protocol_type(StrBytes::from_string(
                    group.protocol_type().unwrap_or_default().to_owned(),
                ))
                .with_protocol_data(StrBytes::from_string(
                    group.protocol_name().unwrap_or_default().to_owned(),
                ))
                .with_members(members)
        })
        .collect();
    DescribeGroupsResponse::default().with_groups(groups)
}
