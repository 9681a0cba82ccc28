//! `ListOffsets`: per partition this shard owns, the offset for a timestamp: -1 (latest)
//! is the synced end, -2 (earliest) the first kept offset (`Shard::log_start`), any other timestamp the first
//! offset whose record's timestamp is at least it (`Shard::offset_for_timestamp`), or the
//! synced end when there is none, as Kafka answers.

use cairn_engine::{Offset, ReadError};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::list_offsets_request::ListOffsetsPartition;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};

use super::codes;
use crate::context::ShardContext;
use crate::routing;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;

pub(super) async fn serve(
    context: &ShardContext,
    request: ListOffsetsRequest,
    version: i16,
) -> ListOffsetsResponse {
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in &request.topics {
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for partition in &topic.partitions {
            let response = match list_one(context, topic.name.0.as_str(), partition).await {
                Ok((timestamp, offset)) => {
                    let offset = offset.map_or(UNKNOWN_OFFSET, |offset| {
                        i64::try_from(offset.0).unwrap_or(i64::MAX)
                    });
                    let mut response = ListOffsetsPartitionResponse::default()
                        .with_timestamp(timestamp)
                        .with_offset(offset);
                    if version >= 4 {
                        response.leader_epoch = 0;
                    }
                    response
                }
                Err(error_code) => {
                    ListOffsetsPartitionResponse::default().with_error_code(error_code)
                }
            };
            partitions.push(response.with_partition_index(partition.partition_index));
        }
        topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(topic.name.clone())
                .with_partitions(partitions),
        );
    }
    ListOffsetsResponse::default().with_topics(topics)
}

/// Kafka's answer for "no such offset": no record at or after the timestamp asked for.
/// Java's `offsetsForTimes` turns it into null, kafka-python's into None.
const UNKNOWN_OFFSET: i64 = -1;

/// The (timestamp, offset) answer for one partition (`None`: no offset matches), or its
/// error code.
async fn list_one(
    context: &ShardContext,
    topic_name: &str,
    partition: &ListOffsetsPartition,
) -> Result<(i64, Option<Offset>), i16> {
    let unknown = codes::code(ResponseError::UnknownTopicOrPartition);
    let topic = routing::topic(&context.shard, topic_name).map_err(|_| unknown)?;
    let index = u32::try_from(partition.partition_index).map_err(|_| unknown)?;
    let located =
        routing::locate(&topic, index, context.config.shard_count).map_err(|_| unknown)?;
    if located.owner != context.shard_id {
        return Err(codes::code(ResponseError::NotLeaderOrFollower));
    }
    if context.is_stopping.get() {
        return Err(codes::code(ResponseError::NotLeaderOrFollower));
    }
    let (_, synced_end) = context
        .shard
        .end_offsets(located.partition_id)
        .map_err(|_| unknown)?;
    match partition.timestamp {
        LATEST => Ok((-1, Some(synced_end))),
        EARLIEST => {
            let log_start = context
                .shard
                .log_start(located.partition_id)
                .map_err(|_| unknown)?;
            Ok((-1, Some(log_start)))
        }
        timestamp if timestamp >= 0 => by_timestamp(context, &located, timestamp).await,
        _ => Err(codes::code(ResponseError::InvalidRequest)),
    }
}

async fn by_timestamp(
    context: &ShardContext,
    located: &crate::operation::Located,
    timestamp: i64,
) -> Result<(i64, Option<Offset>), i16> {
    match context
        .shard
        .offset_for_timestamp(located.partition_id, timestamp)
        .await
    {
        Ok(Some((offset, record_timestamp))) => Ok((record_timestamp, Some(offset))),
        // No record that recent: Kafka answers offset -1 with timestamp -1.
        Ok(None) => Ok((-1, None)),
        Err(ReadError::Storage(_)) => Err(codes::code(ResponseError::KafkaStorageError)),
        Err(_) => Err(codes::code(ResponseError::UnknownTopicOrPartition)),
    }
}
