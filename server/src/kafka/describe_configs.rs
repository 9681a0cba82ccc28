//! `DescribeConfigs`: a fixed, honest set of configs for topics and brokers. Cairn has no
//! per-topic configuration, so every value is what Cairn does, read-only, reported as the
//! default: records are kept for ever, stored uncompressed, timestamps are the producer's,
//! and each partition has one replica.

use cairn_engine::core::limits::BATCH_SIZE_BYTES_MAX;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};
use kafka_protocol::protocol::StrBytes;

use super::codes;
use crate::context::ShardContext;

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;

/// Kafka's `ConfigSource.DEFAULT_CONFIG`.
const SOURCE_DEFAULT: i8 = 5;

/// Kafka's `ConfigType` codes (DescribeConfigs v3 and later).
const TYPE_BOOLEAN: i8 = 1;
const TYPE_STRING: i8 = 2;
const TYPE_INT: i8 = 3;
const TYPE_LONG: i8 = 5;

/// Topic configs: name, value, type.
fn topic_configs(context: &ShardContext) -> Vec<(&'static str, String, i8)> {
    vec![
        ("cleanup.policy", "delete".into(), TYPE_STRING),
        // Retention is future work: nothing is deleted.
        ("retention.ms", "-1".into(), TYPE_LONG),
        ("retention.bytes", "-1".into(), TYPE_LONG),
        (
            "max.message.bytes",
            max_message_bytes(context).to_string(),
            TYPE_INT,
        ),
        ("message.timestamp.type", "CreateTime".into(), TYPE_STRING),
        ("min.insync.replicas", "1".into(), TYPE_INT),
        // Batches are decompressed and stored as records.
        ("compression.type", "uncompressed".into(), TYPE_STRING),
        (
            "segment.bytes",
            context.config.segment_size_bytes.to_string(),
            TYPE_LONG,
        ),
        (
            "unclean.leader.election.enable",
            "false".into(),
            TYPE_BOOLEAN,
        ),
    ]
}

fn broker_configs(context: &ShardContext) -> Vec<(&'static str, String, i8)> {
    let mut configs = topic_configs(context);
    configs.retain(|(name, _, _)| *name != "max.message.bytes");
    configs.extend([
        (
            "message.max.bytes",
            max_message_bytes(context).to_string(),
            TYPE_INT,
        ),
        ("num.partitions", "1".into(), TYPE_INT),
        ("default.replication.factor", "1".into(), TYPE_INT),
        ("auto.create.topics.enable", "false".into(), TYPE_BOOLEAN),
    ]);
    configs
}

/// The largest record batch a produce may carry: one Cairn batch, within one frame.
pub(super) fn max_message_bytes(context: &ShardContext) -> usize {
    BATCH_SIZE_BYTES_MAX.min(usize::try_from(context.config.frame_size_bytes_max).unwrap_or(0))
}

pub(super) fn serve(
    context: &ShardContext,
    request: &DescribeConfigsRequest,
    version: i16,
) -> DescribeConfigsResponse {
    let results = request
        .resources
        .iter()
        .map(|resource| {
            let name = resource.resource_name.to_string();
            let result = DescribeConfigsResult::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone());
            let configs = match resource.resource_type {
                RESOURCE_TOPIC if context.shard.topic(&name).is_some() => topic_configs(context),
                RESOURCE_TOPIC => {
                    return result
                        .with_error_code(codes::code(ResponseError::UnknownTopicOrPartition))
                        .with_error_message(Some(StrBytes::from_string(format!(
                            "no topic named {name:?}"
                        ))));
                }
                RESOURCE_BROKER => broker_configs(context),
                other => {
                    return result
                        .with_error_code(codes::code(ResponseError::InvalidRequest))
                        .with_error_message(Some(StrBytes::from_string(format!(
                            "resource type {other} has no configs here"
                        ))));
                }
            };
            let configs = configs
                .into_iter()
                .filter(|(config_name, _, _)| {
                    resource
                        .configuration_keys
                        .as_ref()
                        .is_none_or(|keys| keys.iter().any(|key| key.as_str() == *config_name))
                })
                .map(|(config_name, value, config_type)| {
                    let mut config = DescribeConfigsResourceResult::default()
                        .with_name(StrBytes::from_static_str(config_name))
                        .with_value(Some(StrBytes::from_string(value)))
                        .with_read_only(true)
                        .with_config_source(SOURCE_DEFAULT);
                    if version >= 3 {
                        config.config_type = config_type;
                    }
                    config
                })
                .collect();
            result.with_configs(configs)
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}
