//! `AlterConfigs` and `IncrementalAlterConfigs` for topics: retention, through the
//! service's `alter_topic_retention` (run on shard 0, which owns the catalog, and answered
//! once every shard applies it).
//!
//! `AlterConfigs` replaces a topic's whole config, as Kafka does: a retention limit it does
//! not name returns to no limit. `IncrementalAlterConfigs` SETs or DELETEs (back to no
//! limit) one key at a time; APPEND and SUBTRACT are for list configs, which Cairn has
//! none of. Keys and values follow `topic_configs` (INVALID_CONFIG with a message
//! otherwise). `validate_only` checks everything shard 0 would, and changes nothing.
//! Broker resources are refused: Cairn has no broker-wide setting to change.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse as IncrementalResourceResponse;
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, IncrementalAlterConfigsRequest,
    IncrementalAlterConfigsResponse,
};
use kafka_protocol::protocol::StrBytes;

use super::codes;
use super::describe_configs::RESOURCE_TOPIC;
use super::topic_configs;
use crate::context::ShardContext;
use crate::operation::{FailureKind, RetentionChange};
use crate::service;

/// `IncrementalAlterConfigs` operations (Kafka's `AlterConfigOp.OpType`).
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;

/// An error code and its message, for one resource.
type Refusal = (i16, String);

pub(super) async fn serve(
    context: &ShardContext,
    request: AlterConfigsRequest,
) -> AlterConfigsResponse {
    let mut responses = Vec::with_capacity(request.resources.len());
    for resource in &request.resources {
        let outcome = async {
            check_topic_resource(resource.resource_type)?;
            // Everything not named returns to its default: a whole-config replace.
            let mut change = RetentionChange::replace_with(cairn_engine::RetentionPolicy::FOREVER);
            for config in &resource.configs {
                topic_configs::set(&mut change, config.name.as_str(), config.value.as_deref())
                    .map_err(invalid_config)?;
            }
            alter(
                context,
                &resource.resource_name,
                change,
                request.validate_only,
            )
            .await
        }
        .await;
        let (error_code, error_message) = split(outcome);
        responses.push(
            AlterConfigsResourceResponse::default()
                .with_error_code(error_code)
                .with_error_message(error_message)
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone()),
        );
    }
    AlterConfigsResponse::default().with_responses(responses)
}

pub(super) async fn serve_incremental(
    context: &ShardContext,
    request: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let mut responses = Vec::with_capacity(request.resources.len());
    for resource in &request.resources {
        let outcome = async {
            check_topic_resource(resource.resource_type)?;
            let mut change = RetentionChange::default();
            for config in &resource.configs {
                let name = config.name.as_str();
                match config.config_operation {
                    OP_SET => topic_configs::set(&mut change, name, config.value.as_deref()),
                    OP_DELETE => topic_configs::delete(&mut change, name),
                    operation => Err(format!(
                        "operation {operation} on {name}: only SET (0) and DELETE (1) apply to \
                         Cairn's configs, none of which is a list"
                    )),
                }
                .map_err(invalid_config)?;
            }
            alter(
                context,
                &resource.resource_name,
                change,
                request.validate_only,
            )
            .await
        }
        .await;
        let (error_code, error_message) = split(outcome);
        responses.push(
            IncrementalResourceResponse::default()
                .with_error_code(error_code)
                .with_error_message(error_message)
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone()),
        );
    }
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}

fn check_topic_resource(resource_type: i8) -> Result<(), Refusal> {
    if resource_type == RESOURCE_TOPIC {
        return Ok(());
    }
    Err((
        codes::code(ResponseError::InvalidRequest),
        format!(
            "resource type {resource_type} has no settable configs here: only topics' \
             retention.ms and retention.bytes change"
        ),
    ))
}

fn invalid_config(message: String) -> Refusal {
    (codes::code(ResponseError::InvalidConfig), message)
}

async fn alter(
    context: &ShardContext,
    name: &StrBytes,
    change: RetentionChange,
    validate_only: bool,
) -> Result<(), Refusal> {
    service::alter_topic_retention(context, name.as_str(), change, validate_only)
        .await
        .map(|_| ())
        .map_err(|failure| {
            let code = match failure.kind {
                FailureKind::UnknownTopic => codes::code(ResponseError::UnknownTopicOrPartition),
                // Kafka's answer to changing one of its internal topics' configs this way.
                FailureKind::InternalTopic => codes::code(ResponseError::InvalidRequest),
                _ => codes::failure_code(&failure),
            };
            (code, failure.message)
        })
}

fn split(outcome: Result<(), Refusal>) -> (i16, Option<StrBytes>) {
    match outcome {
        Ok(()) => (codes::NONE, None),
        Err((code, message)) => (code, Some(StrBytes::from_string(message))),
    }
}
