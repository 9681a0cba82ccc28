//! `CreateTopics`: through the service's `create_topic` (run on shard 0, which owns the
//! catalog, and answered once every shard knows the topic). One replica per partition:
//! replication factor -1 (the default) or 1; `num_partitions` -1 means
//! [`DEFAULT_PARTITION_COUNT`]. Manual replica assignments are refused. Configs follow
//! `topic_configs`: `retention.ms` and `retention.bytes` set the topic's retention (-1 or
//! absent: no limit); the fixed ones are taken only at Cairn's value; any other key, and
//! any value that does not parse, is INVALID_CONFIG with a message.

use cairn_engine::RetentionPolicy;
use cairn_engine::io::data_dir::{TOPIC_NAME_SIZE_BYTES_MAX, TOPIC_PARTITION_COUNT_MAX};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};
use kafka_protocol::protocol::StrBytes;

use super::codes;
use super::topic_configs::{self, ConfigEntry};
use crate::context::ShardContext;
use crate::offsets;
use crate::operation::{FailureKind, RetentionChange};
use crate::service;

/// Partitions of a topic created with `num_partitions` -1 (Kafka's `num.partitions`
/// default, too).
pub(super) const DEFAULT_PARTITION_COUNT: u32 = 1;

pub(super) async fn serve(
    context: &ShardContext,
    request: CreateTopicsRequest,
    version: i16,
) -> CreateTopicsResponse {
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in &request.topics {
        let name = topic.name.0.to_string();
        let outcome = create(context, topic, &name, request.validate_only).await;
        let mut result = CreatableTopicResult::default().with_name(topic.name.clone());
        match outcome {
            Ok((partition_count, retention)) => {
                if version >= 5 {
                    result.num_partitions = i32::try_from(partition_count).unwrap_or(i32::MAX);
                    result.replication_factor = 1;
                    let entries = topic_configs::retention_entries(retention)
                        .into_iter()
                        .chain(topic_configs::fixed_entries());
                    result.configs = Some(entries.map(created_config).collect());
                }
            }
            Err((code, message)) => {
                result.error_code = code;
                result.error_message = Some(StrBytes::from_string(message));
            }
        }
        results.push(result);
    }
    CreateTopicsResponse::default().with_topics(results)
}

fn created_config(entry: ConfigEntry) -> CreatableTopicConfigs {
    CreatableTopicConfigs::default()
        .with_name(StrBytes::from_static_str(entry.name))
        .with_value(Some(StrBytes::from_string(entry.value)))
        .with_read_only(entry.read_only)
        .with_config_source(entry.source)
}

/// Creates one topic (or only checks it, `validate_only`); its partition count and
/// retention, or the error code and message.
async fn create(
    context: &ShardContext,
    topic: &CreatableTopic,
    name: &str,
    validate_only: bool,
) -> Result<(u32, RetentionPolicy), (i16, String)> {
    let fail = |error: ResponseError, message: String| Err((error.code(), message));
    if !matches!(topic.replication_factor, -1 | 1) {
        return fail(
            ResponseError::InvalidReplicationFactor,
            format!(
                "replication factor {} is not possible: each partition has one replica, on \
                 its shard",
                topic.replication_factor
            ),
        );
    }
    if !topic.assignments.is_empty() {
        return fail(
            ResponseError::InvalidReplicaAssignment,
            "partitions are placed by Cairn (partition id modulo shard count)".into(),
        );
    }
    let mut change = RetentionChange::default();
    for config in &topic.configs {
        if let Err(message) =
            topic_configs::set(&mut change, config.name.as_str(), config.value.as_deref())
        {
            return fail(ResponseError::InvalidConfig, message);
        }
    }
    let retention = change.apply(RetentionPolicy::FOREVER);
    let partition_count = match topic.num_partitions {
        -1 => DEFAULT_PARTITION_COUNT,
        count => match u32::try_from(count) {
            Ok(count) if (1..=TOPIC_PARTITION_COUNT_MAX).contains(&count) => count,
            _ => {
                return fail(
                    ResponseError::InvalidPartitions,
                    format!("{count} partitions: a topic has 1 to {TOPIC_PARTITION_COUNT_MAX}"),
                );
            }
        },
    };
    if offsets::is_internal(name) {
        return fail(
            ResponseError::InvalidTopicException,
            format!("{name:?} is an internal name: clients cannot create such topics"),
        );
    }
    if validate_only {
        if context.shard.topic(name).is_some() {
            return fail(
                ResponseError::TopicAlreadyExists,
                format!("topic {name:?} exists"),
            );
        }
        if !is_valid_name(name) {
            return fail(
                ResponseError::InvalidTopicException,
                format!("{name:?} is not a valid topic name"),
            );
        }
        return Ok((partition_count, retention));
    }
    match service::create_topic(context, name, partition_count, retention).await {
        Ok(placement) => Ok((
            u32::try_from(placement.partitions.len()).unwrap_or(u32::MAX),
            placement.retention,
        )),
        Err(failure) => {
            let code = match failure.kind {
                FailureKind::TopicExists => ResponseError::TopicAlreadyExists.code(),
                FailureKind::BadRequest if !is_valid_name(name) => {
                    ResponseError::InvalidTopicException.code()
                }
                // The name is fine, so the engine refused the partition count.
                FailureKind::BadRequest => ResponseError::InvalidPartitions.code(),
                _ => codes::failure_code(&failure),
            };
            Err((code, failure.message))
        }
    }
}

/// The engine's rule for topic names (checked again there when the topic is created):
/// 1 to 249 bytes of A-Z a-z 0-9 . _ -, and not `.` or `..`
fn is_valid_name(name: &str) -> bool {
    (1..=TOPIC_NAME_SIZE_BYTES_MAX).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"._-".contains(&byte))
}
