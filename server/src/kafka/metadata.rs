//! `Metadata`: the brokers (one per shard) and, for each topic asked about (or all), its
//! partitions with the owning shard as leader, sole replica and in-sync replica. Topics
//! are never created by a Metadata request: an unknown one is UNKNOWN_TOPIC_OR_PARTITION,
//! and so is an internal one (`offsets::is_internal`), which no listing shows.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::codes;
use crate::context::ShardContext;
use crate::offsets;
use crate::operation::{TopicPlacement, placement};

/// Every shard as a broker: node id = shard index, the advertised host, its Kafka port.
pub(super) fn brokers(context: &ShardContext) -> Vec<(i32, StrBytes, i32)> {
    let host = context
        .config
        .kafka
        .as_ref()
        .and_then(|kafka| kafka.advertised_host())
        .unwrap_or_default();
    context
        .listening
        .kafka_ports
        .iter()
        .enumerate()
        .map(|(shard, &port)| {
            (
                i32::try_from(shard).unwrap_or(i32::MAX),
                StrBytes::from_string(host.clone()),
                i32::from(port),
            )
        })
        .collect()
}

pub(super) fn serve(
    context: &ShardContext,
    request: &MetadataRequest,
    version: i16,
) -> MetadataResponse {
    let catalog = context.shard.catalog();
    let shard_ports = &context.listening.shard_ports;
    let shard_count = context.config.shard_count;
    // v0: an empty list means every topic; v1 and later: null does.
    let asked: Option<Vec<Option<String>>> = match &request.topics {
        None => None,
        Some(topics) if topics.is_empty() && version == 0 => None,
        Some(topics) => Some(
            topics
                .iter()
                .map(|topic| topic.name.as_ref().map(|name| name.0.to_string()))
                .collect(),
        ),
    };
    let topics = match asked {
        None => catalog
            .topics()
            .iter()
            .filter(|topic| !offsets::is_internal(&topic.name))
            .map(|topic| topic_metadata(&placement(topic, shard_ports, shard_count), version))
            .collect(),
        Some(names) => names
            .into_iter()
            .map(|name| match name {
                Some(name) => match catalog
                    .topic(&name)
                    .filter(|topic| !offsets::is_internal(&topic.name))
                {
                    Some(topic) => {
                        topic_metadata(&placement(topic, shard_ports, shard_count), version)
                    }
                    None => MetadataResponseTopic::default()
                        .with_error_code(codes::code(ResponseError::UnknownTopicOrPartition))
                        .with_name(Some(TopicName(StrBytes::from_string(name)))),
                },
                // Asked by topic id (v10 and later): Cairn assigns none.
                None => MetadataResponseTopic::default()
                    .with_error_code(codes::code(ResponseError::UnknownTopicId)),
            })
            .collect(),
    };
    let brokers = brokers(context)
        .into_iter()
        .map(|(node_id, host, port)| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(node_id))
                .with_host(host)
                .with_port(port)
        })
        .collect();
    let mut response = MetadataResponse::default()
        .with_brokers(brokers)
        .with_topics(topics);
    if version >= 1 {
        response.controller_id = BrokerId(0);
    }
    if version >= 2 {
        response.cluster_id = Some(StrBytes::from_string(context.cluster_id.clone()));
    }
    response
}

fn topic_metadata(placement: &TopicPlacement, version: i16) -> MetadataResponseTopic {
    let partitions = placement
        .partitions
        .iter()
        .map(|partition| {
            let owner = BrokerId(i32::from(partition.shard.0));
            let mut metadata = MetadataResponsePartition::default()
                .with_partition_index(i32::try_from(partition.partition).unwrap_or(i32::MAX))
                .with_leader_id(owner)
                .with_replica_nodes(vec![owner])
                .with_isr_nodes(vec![owner]);
            if version >= 7 {
                metadata.leader_epoch = 0;
            }
            metadata
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(
            placement.name.clone(),
        ))))
        .with_partitions(partitions)
}
