//! `CreateTopics`: through the service's `create_topic` (run on shard 0, which owns the
//! catalog, and answered once every shard knows the topic). One replica per partition:
//! replication factor -1 (the default) or 1; `num_partitions` -1 means
//! [`DEFAULT_PARTITION_COUNT`]. Manual replica assignments and configs other than the
//! values Cairn has anyway (see `describe_configs`) are refused.

use cairn_engine::io::data_dir::{TOPIC_NAME_SIZE_BYTES_MAX, TOPIC_PARTITION_COUNT_MAX};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};
use kafka_protocol::protocol::StrBytes;

use super::codes;
use crate::context::ShardContext;
use crate::offsets;
use crate::operation::FailureKind;
use crate::service;

/// Partitions of a topic created with `num_partitions` -1 (Kafka's `num.partitions`
/// default, too).
pub(super) const DEFAULT_PARTITION_COUNT: u32 = 1;

/// Configs a request may set, with the only value each may have here.
const FIXED_CONFIGS: &[(&str, &str)] = &[
    ("cleanup.policy", "delete"),
    ("retention.ms", "-1"),
    ("retention.bytes", "-1"),
    ("message.timestamp.type", "CreateTime"),
    ("min.insync.replicas", "1"),
];

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
            Ok(partition_count) => {
                if version >= 5 {
                    result.num_partitions = i32::try_from(partition_count).unwrap_or(i32::MAX);
                    result.replication_factor = 1;
                    result.configs = Some(
                        FIXED_CONFIGS
                            .iter()
                            .map(|(name, value)| {
                                CreatableTopicConfigs::default()
                                    .with_name(StrBytes::from_static_str(name))
                                    .with_value(Some(StrBytes::from_static_str(value)))
                                    .with_read_only(true)
                                    .with_config_source(5)
                            })
                            .collect(),
                    );
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

/// Creates one topic (or only checks it, `validate_only`); its partition count, or the
/// error code and message.
async fn create(
    context: &ShardContext,
    topic: &CreatableTopic,
    name: &str,
    validate_only: bool,
) -> Result<u32, (i16, String)> {
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
    for config in &topic.configs {
        let value = config.value.as_deref().unwrap_or_default();
        let allowed = FIXED_CONFIGS.iter().any(|(fixed_name, fixed_value)| {
            config.name.as_str() == *fixed_name && value == *fixed_value
        });
        if !allowed {
            return fail(
                ResponseError::InvalidConfig,
                format!("config {}={value} is not supported", config.name.as_str()),
            );
        }
    }
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
        return Ok(partition_count);
    }
    match service::create_topic(context, name, partition_count).await {
        Ok(placement) => Ok(u32::try_from(placement.partitions.len()).unwrap_or(u32::MAX)),
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
