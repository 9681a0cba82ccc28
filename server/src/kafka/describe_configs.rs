//! `DescribeConfigs`: a topic's configs as Cairn applies them, and a fixed set for brokers.
//!
//! A topic reports `retention.ms` and `retention.bytes` (settable: `alter_configs`; source
//! DYNAMIC_TOPIC_CONFIG when the topic sets a limit, else DEFAULT_CONFIG with -1, since
//! Cairn keeps history forever unless told otherwise) and, read-only at their defaults,
//! what Cairn does anyway: no compaction, timestamps are the producer's, one replica per
//! partition, batches stored uncompressed. A broker reports the matching `log.*` defaults,
//! read-only. The topic's settings come from the catalog copy of the shard the client
//! reached, which every change reaches before it is acknowledged.

use cairn_engine::RetentionPolicy;
use cairn_engine::core::limits::BATCH_SIZE_BYTES_MAX;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};
use kafka_protocol::protocol::StrBytes;

use super::codes;
use super::topic_configs::{
    ConfigEntry, SOURCE_DEFAULT, TYPE_BOOLEAN, TYPE_INT, TYPE_LONG, TYPE_STRING, fixed_entries,
    retention_entries,
};
use crate::context::ShardContext;

pub(super) const RESOURCE_TOPIC: i8 = 2;
pub(super) const RESOURCE_BROKER: i8 = 4;

/// A read-only config at Cairn's value.
fn fixed(name: &'static str, value: String, config_type: i8) -> ConfigEntry {
    ConfigEntry {
        name,
        value,
        config_type,
        read_only: true,
        source: SOURCE_DEFAULT,
    }
}

fn topic_configs(context: &ShardContext, retention: RetentionPolicy) -> Vec<ConfigEntry> {
    let mut configs: Vec<ConfigEntry> = retention_entries(retention).into_iter().collect();
    configs.extend(fixed_entries());
    configs.extend([
        fixed(
            "max.message.bytes",
            max_message_bytes(context).to_string(),
            TYPE_INT,
        ),
        // Batches are decompressed and stored as records.
        fixed("compression.type", "uncompressed".into(), TYPE_STRING),
        fixed(
            "segment.bytes",
            context.config.segment_size_bytes.to_string(),
            TYPE_LONG,
        ),
        fixed(
            "unclean.leader.election.enable",
            "false".into(),
            TYPE_BOOLEAN,
        ),
    ]);
    configs
}

fn broker_configs(context: &ShardContext) -> Vec<ConfigEntry> {
    vec![
        // A topic's own retention overrides these; Cairn has no broker-wide setting.
        fixed("log.retention.ms", "-1".into(), TYPE_LONG),
        fixed("log.retention.bytes", "-1".into(), TYPE_LONG),
        fixed("log.cleanup.policy", "delete".into(), TYPE_STRING),
        fixed(
            "log.segment.bytes",
            context.config.segment_size_bytes.to_string(),
            TYPE_INT,
        ),
        fixed(
            "message.max.bytes",
            max_message_bytes(context).to_string(),
            TYPE_INT,
        ),
        fixed("min.insync.replicas", "1".into(), TYPE_INT),
        fixed("compression.type", "producer".into(), TYPE_STRING),
        fixed("num.partitions", "1".into(), TYPE_INT),
        fixed("default.replication.factor", "1".into(), TYPE_INT),
        fixed("auto.create.topics.enable", "false".into(), TYPE_BOOLEAN),
    ]
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
                RESOURCE_TOPIC => match context.shard.topic(&name) {
                    Some(topic) => topic_configs(context, topic.retention),
                    None => {
                        return result
                            .with_error_code(codes::code(ResponseError::UnknownTopicOrPartition))
                            .with_error_message(Some(StrBytes::from_string(format!(
                                "no topic named {name:?}"
                            ))));
                    }
                },
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
                .filter(|entry| {
                    resource
                        .configuration_keys
                        .as_ref()
                        .is_none_or(|keys| keys.iter().any(|key| key.as_str() == entry.name))
                })
                .map(|entry| {
                    let mut config = DescribeConfigsResourceResult::default()
                        .with_name(StrBytes::from_static_str(entry.name))
                        .with_value(Some(StrBytes::from_string(entry.value)))
                        .with_read_only(entry.read_only)
                        .with_config_source(entry.source);
                    if version >= 3 {
                        config.config_type = entry.config_type;
                    }
                    config
                })
                .collect();
            result.with_configs(configs)
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}
