//! `CreateTopic`: answered `TopicCreated` once every shard knows the topic.

use cairn_wire::{CreateTopicRequest, ResponseBody};

use super::metadata::topic_metadata;
use super::session::Session;
use crate::context::ShardContext;
use crate::service;

pub(super) async fn serve(
    context: &ShardContext,
    session: &Session,
    correlation_id: u64,
    request: CreateTopicRequest<'_>,
) {
    match service::create_topic(context, request.name, request.partition_count).await {
        Ok(topic) => {
            let body = ResponseBody::TopicCreated(topic_metadata(&topic));
            session.respond(correlation_id, body).await;
        }
        Err(failure) => session.fail(correlation_id, &failure).await,
    }
}
