//! `OffsetDelete`: removes a group's committed offsets for the partitions named, as
//! tombstones (one atomic batch, synced before the answer) in the coordinator's partition
//! of the committed-offsets topic; a later OffsetFetch answers -1 for them. Only the
//! coordinator answers (NOT_COORDINATOR otherwise); `group_gate::check_delete` may refuse
//! a topic the group's members are subscribed to.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::{OffsetDeleteRequest, OffsetDeleteResponse};

use super::{codes, group_gate, offset_fetch};
use crate::context::ShardContext;
use crate::offsets;
use crate::operation::OffsetCommitEntry;
use crate::service;

pub(super) async fn serve(
    context: &ShardContext,
    request: &OffsetDeleteRequest,
) -> OffsetDeleteResponse {
    let group = request.group_id.0.as_str();
    if let Err(error) = offset_fetch::check_coordinator(context, group) {
        return OffsetDeleteResponse::default().with_error_code(codes::code(error));
    }
    let mut codes_by_topic = Vec::with_capacity(request.topics.len());
    let mut entries = Vec::new();
    for topic in &request.topics {
        let name = topic.name.0.as_str();
        let refused = if offsets::is_internal(name) {
            Some(ResponseError::UnknownTopicOrPartition)
        } else {
            group_gate::check_delete(context, group, name).err()
        };
        let mut topic_codes = Vec::with_capacity(topic.partitions.len());
        for partition in &topic.partitions {
            match (refused, u32::try_from(partition.partition_index)) {
                (Some(error), _) => topic_codes.push(codes::code(error)),
                (None, Err(_)) => {
                    topic_codes.push(codes::code(ResponseError::UnknownTopicOrPartition));
                }
                (None, Ok(index)) => {
                    entries.push(OffsetCommitEntry {
                        topic: name.to_owned(),
                        partition: index,
                        commit: None,
                    });
                    topic_codes.push(codes::NONE);
                }
            }
        }
        codes_by_topic.push(topic_codes);
    }
    if !entries.is_empty()
        && let Err(failure) = service::commit_offsets(context, group, entries).await
    {
        return OffsetDeleteResponse::default()
            .with_error_code(offset_fetch::group_failure_code(&failure));
    }
    let topics = request
        .topics
        .iter()
        .zip(codes_by_topic)
        .map(|(topic, topic_codes)| {
            let partitions = topic
                .partitions
                .iter()
                .zip(topic_codes)
                .map(|(partition, code)| {
                    OffsetDeleteResponsePartition::default()
                        .with_partition_index(partition.partition_index)
                        .with_error_code(code)
                })
                .collect();
            OffsetDeleteResponseTopic::default()
                .with_name(topic.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    OffsetDeleteResponse::default().with_topics(topics)
}
