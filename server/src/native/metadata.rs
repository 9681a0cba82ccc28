//! `Metadata`: every topic, its partitions' owning shards, and each shard's port.

use cairn_wire::{MetadataResult, PartitionMetadata, ResponseBody, TopicMetadata};

use super::session::Session;
use crate::context::ShardContext;
use crate::operation::TopicPlacement;
use crate::service;

pub(super) async fn serve(context: &ShardContext, session: &Session, correlation_id: u64) {
    match service::metadata(context) {
        Ok(metadata) => {
            let topics = metadata.topics.iter().map(topic_metadata).collect();
            let body = ResponseBody::Metadata(MetadataResult {
                shard_ports: metadata.shard_ports,
                topics,
            });
            session.respond(correlation_id, body).await;
        }
        Err(failure) => session.fail(correlation_id, &failure).await,
    }
}

/// A topic's placement as the wire carries it (also in `TopicCreated`).
pub(super) fn topic_metadata(topic: &TopicPlacement) -> TopicMetadata<'_> {
    TopicMetadata {
        name: &topic.name,
        partitions: topic
            .partitions
            .iter()
            .map(|partition| PartitionMetadata {
                partition: partition.partition,
                partition_id: partition.partition_id,
                shard: partition.shard,
                port: partition.port,
            })
            .collect(),
        retention: topic.retention,
    }
}
