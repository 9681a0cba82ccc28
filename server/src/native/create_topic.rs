//! `CreateTopic`: answered `TopicCreated` once every shard knows the topic; `AlterTopic`:
//! answered `TopicAltered` once every shard applies the change.

use cairn_wire::{AlterTopicRequest, CreateTopicRequest, ResponseBody};

use super::metadata::topic_metadata;
use super::session::Session;
use crate::context::ShardContext;
use crate::operation::RetentionChange;
use crate::service;

pub(super) async fn serve(
    context: &ShardContext,
    session: &Session,
    correlation_id: u64,
    request: CreateTopicRequest<'_>,
) {
    let created = service::create_topic(
        context,
        request.name,
        request.partition_count,
        request.retention,
    )
    .await;
    match created {
        Ok(topic) => {
            let body = ResponseBody::TopicCreated(topic_metadata(&topic));
            session.respond(correlation_id, body).await;
        }
        Err(failure) => session.fail(correlation_id, &failure).await,
    }
}

pub(super) async fn serve_alter(
    context: &ShardContext,
    session: &Session,
    correlation_id: u64,
    request: AlterTopicRequest<'_>,
) {
    let change = RetentionChange {
        ms: request.retention_ms,
        bytes: request.retention_bytes,
    };
    match service::alter_topic_retention(context, request.name, change, false).await {
        Ok(topic) => {
            let body = ResponseBody::TopicAltered(topic_metadata(&topic));
            session.respond(correlation_id, body).await;
        }
        Err(failure) => session.fail(correlation_id, &failure).await,
    }
}
