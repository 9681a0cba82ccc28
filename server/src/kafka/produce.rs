//! `Produce`: each partition's one RecordBatch becomes one Cairn batch (atomic), appended
//! on this shard, which must own the partition, and answered once synced (acks -1 and 1
//! alike: Cairn acknowledges nothing before it is synced; acks 0 appends and answers
//! nothing). The partitions of one request are appended concurrently.
//!
//! A failed condition rejects the batch with INVALID_RECORD, `record_errors` naming the
//! record, and a message in the grammar of `codes`. An idempotent producer's batch (producer
//! id >= 0) carries its stamp to the engine: a retry of a batch appended before answers
//! the original base offset.

use cairn_engine::core::condition::Conflict;
use cairn_engine::{RecordHeader, RecordInput};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::produce_request::PartitionProduceData;
use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, LeaderIdAndEpoch, NodeEndpoint, PartitionProduceResponse,
    TopicProduceResponse,
};
use kafka_protocol::messages::{BrokerId, ProduceRequest, ProduceResponse};
use kafka_protocol::protocol::StrBytes;

use super::join_all;
use super::record_batch::{self, BatchError, ProducedBatch};
use super::{codes, metadata};
use crate::context::ShardContext;
use crate::operation::{AppendResult, FailureKind};
use crate::{offsets, routing, service};

/// How one partition's batch ended.
struct Outcome {
    error_code: i16,
    base_offset: i64,
    /// For a failed condition or a bad record: which record (`batch_index`).
    record_index: Option<u32>,
    message: Option<String>,
    /// For NOT_LEADER_OR_FOLLOWER: the broker that leads the partition (KIP-951), so the
    /// client can go there without refreshing its metadata.
    leader: Option<i32>,
}

impl Outcome {
    fn error(error_code: i16, message: impl Into<String>) -> Outcome {
        Outcome {
            error_code,
            base_offset: -1,
            record_index: None,
            message: Some(message.into()),
            leader: None,
        }
    }
}

impl From<BatchError> for Outcome {
    fn from(batch_error: BatchError) -> Outcome {
        Outcome {
            error_code: batch_error.code,
            base_offset: -1,
            record_index: batch_error.record_index,
            message: Some(batch_error.message),
            leader: None,
        }
    }
}

/// The response, or `None` for acks=0.
pub(super) async fn serve(
    context: &ShardContext,
    request: ProduceRequest,
    version: i16,
) -> Option<ProduceResponse> {
    let acks = request.acks;
    let transactional = request
        .transactional_id
        .as_ref()
        .is_some_and(|id| !id.0.is_empty());
    let refusal = if transactional {
        // The code InitProducerId gives a transactional producer too (see there).
        Some(Outcome::error(
            codes::code(ResponseError::TransactionalIdAuthorizationFailed),
            "transactions are not supported",
        ))
    } else if !matches!(acks, -1..=1) {
        Some(Outcome::error(
            codes::code(ResponseError::InvalidRequiredAcks),
            format!("acks must be -1, 0 or 1, not {acks}"),
        ))
    } else {
        None
    };
    let mut work = Vec::new();
    for topic in &request.topic_data {
        for partition in &topic.partition_data {
            work.push((topic.name.0.as_str(), partition));
        }
    }
    let outcomes = match refusal {
        Some(refusal) => work
            .iter()
            .map(|_| {
                Outcome::error(
                    refusal.error_code,
                    refusal.message.clone().unwrap_or_default(),
                )
            })
            .collect(),
        None => {
            join_all(
                work.iter()
                    .map(|&(topic, partition)| produce_partition(context, topic, partition))
                    .collect(),
            )
            .await
        }
    };
    if acks == 0 {
        return None;
    }
    let mut leaders: Vec<i32> = outcomes
        .iter()
        .filter_map(|outcome| outcome.leader)
        .collect();
    leaders.sort_unstable();
    leaders.dedup();
    let mut outcomes = outcomes.into_iter();
    let responses = request
        .topic_data
        .iter()
        .map(|topic| {
            let partition_responses = topic
                .partition_data
                .iter()
                .zip(outcomes.by_ref())
                .map(|(partition, outcome)| partition_response(partition.index, outcome, version))
                .collect();
            TopicProduceResponse::default()
                .with_name(topic.name.clone())
                .with_partition_responses(partition_responses)
        })
        .collect();
    let mut response = ProduceResponse::default().with_responses(responses);
    if version >= 10 {
        response.node_endpoints = metadata::brokers(context)
            .into_iter()
            .filter(|(node_id, _, _)| leaders.contains(node_id))
            .map(|(node_id, host, port)| {
                NodeEndpoint::default()
                    .with_node_id(BrokerId(node_id))
                    .with_host(host)
                    .with_port(port)
            })
            .collect();
    }
    Some(response)
}

fn partition_response(index: i32, outcome: Outcome, version: i16) -> PartitionProduceResponse {
    let mut response = PartitionProduceResponse::default()
        .with_index(index)
        .with_error_code(outcome.error_code)
        .with_base_offset(outcome.base_offset);
    if version >= 5 {
        // Retention is future work: every log starts at 0.
        response.log_start_offset = if outcome.error_code == codes::NONE {
            0
        } else {
            -1
        };
    }
    if version >= 10
        && let Some(leader) = outcome.leader
    {
        response.current_leader = LeaderIdAndEpoch::default()
            .with_leader_id(BrokerId(leader))
            .with_leader_epoch(0);
    }
    if version >= 8 {
        if let Some(record_index) = outcome.record_index {
            response.record_errors = vec![
                BatchIndexAndErrorMessage::default()
                    .with_batch_index(i32::try_from(record_index).unwrap_or(i32::MAX))
                    .with_batch_index_error_message(
                        outcome.message.clone().map(StrBytes::from_string),
                    ),
            ];
        }
        response.error_message = outcome.message.map(StrBytes::from_string);
    }
    response
}

async fn produce_partition(
    context: &ShardContext,
    topic_name: &str,
    partition: &PartitionProduceData,
) -> Outcome {
    let unknown = |message: String| {
        Outcome::error(codes::code(ResponseError::UnknownTopicOrPartition), message)
    };
    if offsets::is_internal(topic_name) {
        // Kafka's answer to a client producing to one of its internal topics.
        return Outcome::error(
            codes::code(ResponseError::InvalidTopicException),
            format!("{topic_name} is internal: clients cannot write it"),
        );
    }
    let topic = match routing::topic(&context.shard, topic_name) {
        Ok(topic) => topic,
        Err(failure) => return unknown(failure.message),
    };
    let Ok(partition_index) = u32::try_from(partition.index) else {
        return unknown(format!("no partition {}", partition.index));
    };
    let located = match routing::locate(&topic, partition_index, context.config.shard_count) {
        Ok(located) => located,
        Err(failure) => return unknown(failure.message),
    };
    if located.owner != context.shard_id {
        return Outcome {
            leader: Some(i32::from(located.owner.0)),
            ..Outcome::error(
                codes::code(ResponseError::NotLeaderOrFollower),
                format!(
                    "broker {} leads partition {partition_index}",
                    located.owner.0
                ),
            )
        };
    }
    let Some(records) = partition.records.clone() else {
        return Outcome::error(codes::code(ResponseError::CorruptMessage), "no records");
    };
    let batch = match record_batch::decode_produced(records) {
        Ok(batch) => batch,
        Err(batch_error) => return batch_error.into(),
    };
    append(context, &located, &batch).await
}

async fn append(
    context: &ShardContext,
    located: &crate::operation::Located,
    batch: &ProducedBatch,
) -> Outcome {
    let headers: Vec<Vec<RecordHeader<'_>>> = batch
        .records
        .iter()
        .map(|record| {
            record
                .headers
                .iter()
                .filter(|(name, _)| !record_batch::is_condition_header(name))
                .map(|(name, value)| RecordHeader {
                    name: name.as_bytes(),
                    // Cairn's headers have no null value: a null one is stored empty.
                    value: value.as_deref().unwrap_or_default(),
                })
                .collect()
        })
        .collect();
    let inputs: Vec<RecordInput<'_>> = batch
        .records
        .iter()
        .zip(&headers)
        .zip(&batch.conditions)
        .map(|((record, headers), &condition)| RecordInput {
            key: record.key.as_deref().unwrap_or_default(),
            value: record.value.as_deref().unwrap_or_default(),
            headers,
            condition,
            timestamp_ms: (record.timestamp >= 0).then_some(record.timestamp),
            null_key: record.key.is_none(),
            null_value: record.value.is_none(),
        })
        .collect();
    let result = service::append_located(
        context,
        located,
        batch.expected_end,
        &inputs,
        batch.producer,
    )
    .await;
    match result {
        Ok(AppendResult::Appended { base_offset, .. }) => Outcome {
            error_code: codes::NONE,
            base_offset: i64::try_from(base_offset.0).unwrap_or(i64::MAX),
            record_index: None,
            message: None,
            leader: None,
        },
        Ok(AppendResult::ConditionFailed { conflict, .. }) => conflict_outcome(&conflict, &inputs),
        // The engine refused a record (a key too long, too many headers): a bad record.
        Err(failure) if failure.kind == FailureKind::BadRequest => {
            Outcome::error(codes::code(ResponseError::InvalidRecord), failure.message)
        }
        Err(failure) => Outcome::error(codes::failure_code(&failure), failure.message),
    }
}

fn conflict_outcome(conflict: &Conflict, inputs: &[RecordInput<'_>]) -> Outcome {
    let key_of = |index: u32| {
        usize::try_from(index)
            .ok()
            .and_then(|index| inputs.get(index))
            .map(|input| input.key)
    };
    Outcome {
        error_code: codes::code(ResponseError::InvalidRecord),
        base_offset: -1,
        record_index: Some(codes::conflict_record_index(conflict)),
        message: Some(codes::conflict_message(conflict, key_of)),
        leader: None,
    }
}
