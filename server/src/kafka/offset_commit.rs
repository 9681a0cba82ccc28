//! `OffsetCommit`: stores a group's offsets through the service's `commit_offsets`, one
//! atomic batch in the coordinator's partition of the committed-offsets topic, answered
//! once synced (docs/DESIGN.md, "Committed offsets").
//!
//! Only the group's coordinator (`routing::coordinator_shard`) answers; any other shard
//! answers NOT_COORDINATOR, and the client asks FindCoordinator again. The committer is
//! checked by `group_gate::check_commit` first: a refusal answers every partition with its
//! code and stores nothing. Then each partition is checked on its own (an unknown topic or
//! partition, metadata over `METADATA_SIZE_BYTES_MAX`) and answered its error, and all the
//! others are committed together. A null metadata string is stored as the empty one, as
//! Kafka does.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::{OffsetCommitRequest, OffsetCommitResponse};

use super::{codes, group_gate, offset_fetch};
use crate::context::ShardContext;
use crate::offsets;
use crate::operation::{OffsetCommitEntry, OffsetToCommit};
use crate::{routing, service};

pub(super) async fn serve(
    context: &ShardContext,
    request: OffsetCommitRequest,
    version: i16,
) -> OffsetCommitResponse {
    let group = request.group_id.0.as_str();
    // One code for the whole request, or per partition: `Ok(None)` = to be committed.
    let refused = match offset_fetch::check_coordinator(context, group) {
        Err(error) => Some(error),
        Ok(()) => group_gate::check_commit(
            context,
            group,
            request.generation_id_or_member_epoch,
            request.member_id.as_str(),
            request.group_instance_id.as_deref(),
        )
        .err(),
    };
    let mut codes_by_partition: Vec<Vec<i16>> = Vec::with_capacity(request.topics.len());
    let mut entries = Vec::new();
    // (topic index, partition index) of each entry, to answer the batch's outcome.
    let mut entry_positions = Vec::new();
    for (topic_index, topic) in request.topics.iter().enumerate() {
        let mut topic_codes = Vec::with_capacity(topic.partitions.len());
        for (partition_index, partition) in topic.partitions.iter().enumerate() {
            let outcome = match refused {
                Some(error) => Err(error),
                None => check_partition(context, topic.name.0.as_str(), partition, version),
            };
            match outcome {
                Ok(entry) => {
                    entries.push(entry);
                    entry_positions.push((topic_index, partition_index));
                    topic_codes.push(codes::NONE);
                }
                Err(error) => topic_codes.push(codes::code(error)),
            }
        }
        codes_by_partition.push(topic_codes);
    }
    if !entries.is_empty()
        && let Err(failure) = service::commit_offsets(context, group, entries).await
    {
        let code = offset_fetch::group_failure_code(&failure);
        for (topic_index, partition_index) in entry_positions {
            if let Some(slot) = codes_by_partition
                .get_mut(topic_index)
                .and_then(|codes| codes.get_mut(partition_index))
            {
                *slot = code;
            }
        }
    }
    let topics = request
        .topics
        .iter()
        .zip(codes_by_partition)
        .map(|(topic, topic_codes)| {
            let partitions = topic
                .partitions
                .iter()
                .zip(topic_codes)
                .map(|(partition, code)| {
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(partition.partition_index)
                        .with_error_code(code)
                })
                .collect();
            OffsetCommitResponseTopic::default()
                .with_name(topic.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}

fn check_partition(
    context: &ShardContext,
    topic_name: &str,
    partition: &kafka_protocol::messages::offset_commit_request::OffsetCommitRequestPartition,
    version: i16,
) -> Result<OffsetCommitEntry, ResponseError> {
    let unknown = ResponseError::UnknownTopicOrPartition;
    if offsets::is_internal(topic_name) {
        return Err(unknown);
    }
    let topic = routing::topic(&context.shard, topic_name).map_err(|_| unknown)?;
    let index = u32::try_from(partition.partition_index).map_err(|_| unknown)?;
    routing::locate(&topic, index, context.config.shard_count).map_err(|_| unknown)?;
    let metadata = partition
        .committed_metadata
        .as_deref()
        .unwrap_or_default()
        .to_owned();
    if metadata.len() > offsets::METADATA_SIZE_BYTES_MAX {
        return Err(ResponseError::OffsetMetadataTooLarge);
    }
    Ok(OffsetCommitEntry {
        topic: topic_name.to_owned(),
        partition: index,
        commit: Some(OffsetToCommit {
            offset: partition.committed_offset,
            leader_epoch: if version >= 6 {
                partition.committed_leader_epoch
            } else {
                -1
            },
            metadata,
        }),
    })
}
