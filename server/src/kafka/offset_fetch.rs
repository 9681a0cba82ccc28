//! `OffsetFetch`: a group's committed offsets, through the service's `fetch_offsets` (the
//! latest synced commit of each (group, topic, partition) in the coordinator's partition of
//! the committed-offsets topic). v8 and later ask for several groups at once.
//!
//! Only the group's coordinator answers; any other shard answers NOT_COORDINATOR (at the
//! top, from v2; per partition in v1; per group from v8). A partition never committed
//! (or whose commit was deleted) is offset -1, leader epoch -1, empty metadata and no
//! error, as Kafka answers; so is a topic Cairn does not have. `require_stable` needs no
//! handling: without transactions no commit is ever pending. Asking for every topic of a
//! group (topics null, what admin tools send) answers every partition the group has a
//! committed offset for (`offsets::GroupOffsetsIndex`).

use kafka_protocol::ResponseError;
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{OffsetFetchRequest, OffsetFetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::codes;
use crate::context::ShardContext;
use crate::offsets::{self, CommittedOffset};
use crate::operation::{Failure, FailureKind};
use crate::{routing, service};

/// Kafka's "no committed offset" (and "no leader epoch").
const NO_OFFSET: i64 = -1;
const NO_LEADER_EPOCH: i32 = -1;

/// Whether this shard coordinates `group`, and the group id is one Kafka accepts.
pub(super) fn check_coordinator(context: &ShardContext, group: &str) -> Result<(), ResponseError> {
    if group.is_empty() || group.len() > offsets::GROUP_ID_SIZE_BYTES_MAX {
        return Err(ResponseError::InvalidGroupId);
    }
    if context.is_stopping.get() {
        return Err(ResponseError::CoordinatorNotAvailable);
    }
    if routing::coordinator_shard(group, context.config.shard_count) != context.shard_id {
        return Err(ResponseError::NotCoordinator);
    }
    Ok(())
}

/// The code of a failed commit or fetch of a group's offsets: the coordinator's codes,
/// which clients retry, where a partition's would send them to refresh metadata.
pub(super) fn group_failure_code(failure: &Failure) -> i16 {
    match failure.kind {
        FailureKind::ShuttingDown => codes::code(ResponseError::CoordinatorNotAvailable),
        FailureKind::TooLarge => codes::code(ResponseError::InvalidCommitOffsetSize),
        _ => codes::failure_code(failure),
    }
}

/// One topic's answer: (name, [(partition index, committed or not, error code)]).
type TopicOffsets = (TopicName, Vec<(i32, Option<CommittedOffset>, i16)>);

pub(super) async fn serve(
    context: &ShardContext,
    request: OffsetFetchRequest,
    version: i16,
) -> OffsetFetchResponse {
    if version >= 8 {
        let mut groups = Vec::with_capacity(request.groups.len());
        for group in &request.groups {
            let asked: Option<Vec<(TopicName, Vec<i32>)>> = group.topics.as_ref().map(|topics| {
                topics
                    .iter()
                    .map(|topic| (topic.name.clone(), topic.partition_indexes.clone()))
                    .collect()
            });
            let (error_code, topics) = fetch_group(context, group.group_id.0.as_str(), asked).await;
            let topics = topics
                .into_iter()
                .map(|(name, partitions)| {
                    let partitions = partitions
                        .into_iter()
                        .map(|(index, committed, code)| {
                            let (offset, leader_epoch, metadata) = answer(committed);
                            OffsetFetchResponsePartitions::default()
                                .with_partition_index(index)
                                .with_committed_offset(offset)
                                .with_committed_leader_epoch(leader_epoch)
                                .with_metadata(Some(metadata))
                                .with_error_code(code)
                        })
                        .collect();
                    OffsetFetchResponseTopics::default()
                        .with_name(name)
                        .with_partitions(partitions)
                })
                .collect();
            groups.push(
                OffsetFetchResponseGroup::default()
                    .with_group_id(group.group_id.clone())
                    .with_topics(topics)
                    .with_error_code(error_code),
            );
        }
        return OffsetFetchResponse::default().with_groups(groups);
    }
    let asked = request.topics.as_ref().map(|topics| {
        topics
            .iter()
            .map(|topic| (topic.name.clone(), topic.partition_indexes.clone()))
            .collect()
    });
    let (error_code, topics) = fetch_group(context, request.group_id.0.as_str(), asked).await;
    let topics = topics
        .into_iter()
        .map(|(name, partitions)| {
            let partitions = partitions
                .into_iter()
                .map(|(index, committed, code)| {
                    let (offset, leader_epoch, metadata) = answer(committed);
                    let mut partition = OffsetFetchResponsePartition::default()
                        .with_partition_index(index)
                        .with_committed_offset(offset)
                        .with_metadata(Some(metadata))
                        // v1 has no top-level code: each partition carries the group's.
                        .with_error_code(if version < 2 && code == codes::NONE {
                            error_code
                        } else {
                            code
                        });
                    if version >= 5 {
                        partition.committed_leader_epoch = leader_epoch;
                    }
                    partition
                })
                .collect();
            OffsetFetchResponseTopic::default()
                .with_name(name)
                .with_partitions(partitions)
        })
        .collect();
    let mut response = OffsetFetchResponse::default().with_topics(topics);
    if version >= 2 {
        response.error_code = error_code;
    }
    response
}

/// Topics null: every partition the group has a committed offset for, by topic.
async fn every_offset_of(context: &ShardContext, group: &str) -> (i16, Vec<TopicOffsets>) {
    let committed = match service::fetch_group_offsets(context, group).await {
        Ok(committed) => committed,
        Err(failure) => return (group_failure_code(&failure), Vec::new()),
    };
    let mut topics: Vec<TopicOffsets> = Vec::new();
    // In (topic, partition) order, so a topic's partitions are adjacent.
    for ((topic, partition), offset) in committed {
        let index = i32::try_from(partition).unwrap_or(i32::MAX);
        match topics.last_mut() {
            Some((name, partitions)) if name.0.as_str() == topic => {
                partitions.push((index, Some(offset), codes::NONE));
            }
            _ => topics.push((
                TopicName(StrBytes::from_string(topic)),
                vec![(index, Some(offset), codes::NONE)],
            )),
        }
    }
    (codes::NONE, topics)
}

fn answer(committed: Option<CommittedOffset>) -> (i64, i32, kafka_protocol::protocol::StrBytes) {
    match committed {
        Some(committed) => (
            committed.offset,
            committed.leader_epoch,
            kafka_protocol::protocol::StrBytes::from_string(committed.metadata),
        ),
        None => (
            NO_OFFSET,
            NO_LEADER_EPOCH,
            kafka_protocol::protocol::StrBytes::default(),
        ),
    }
}

/// The group's error code and, per topic asked, each partition's committed offset and
/// code. With a group error, every partition is answered -1.
async fn fetch_group(
    context: &ShardContext,
    group: &str,
    asked: Option<Vec<(TopicName, Vec<i32>)>>,
) -> (i16, Vec<TopicOffsets>) {
    let blank = |asked: Vec<(TopicName, Vec<i32>)>| -> Vec<TopicOffsets> {
        asked
            .into_iter()
            .map(|(name, indexes)| {
                let partitions = indexes
                    .into_iter()
                    .map(|index| (index, None, codes::NONE))
                    .collect();
                (name, partitions)
            })
            .collect()
    };
    if let Err(error) = check_coordinator(context, group) {
        return (codes::code(error), blank(asked.unwrap_or_default()));
    }
    let Some(asked) = asked else {
        return every_offset_of(context, group).await;
    };
    // Negative partition indexes name nothing: answered -1 without a lookup.
    let keys: Vec<(String, u32)> = asked
        .iter()
        .flat_map(|(name, indexes)| {
            indexes.iter().filter_map(|&index| {
                let index = u32::try_from(index).ok()?;
                Some((name.0.to_string(), index))
            })
        })
        .collect();
    let mut committed = match service::fetch_offsets(context, group, keys).await {
        Ok(committed) => committed.into_iter(),
        Err(failure) => return (group_failure_code(&failure), blank(asked)),
    };
    let topics = asked
        .into_iter()
        .map(|(name, indexes)| {
            let partitions = indexes
                .into_iter()
                .map(|index| {
                    let offset = if index >= 0 {
                        committed.next().flatten()
                    } else {
                        None
                    };
                    (index, offset, codes::NONE)
                })
                .collect();
            (name, partitions)
        })
        .collect();
    (codes::NONE, topics)
}
