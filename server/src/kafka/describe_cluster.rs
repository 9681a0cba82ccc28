//! `DescribeCluster`: the cluster id, controller 0 and every shard as a broker.

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};
use kafka_protocol::protocol::StrBytes;

use super::metadata::brokers;
use crate::context::ShardContext;

pub(super) fn serve(
    context: &ShardContext,
    request: &DescribeClusterRequest,
    version: i16,
) -> DescribeClusterResponse {
    let brokers = brokers(context)
        .into_iter()
        .map(|(node_id, host, port)| {
            DescribeClusterBroker::default()
                .with_broker_id(BrokerId(node_id))
                .with_host(host)
                .with_port(port)
        })
        .collect();
    let mut response = DescribeClusterResponse::default()
        .with_cluster_id(StrBytes::from_string(context.cluster_id.clone()))
        .with_controller_id(BrokerId(0))
        .with_brokers(brokers);
    if version >= 1 {
        // Brokers answer for both endpoint types: every shard is broker and controller.
        response.endpoint_type = request.endpoint_type;
    }
    response
}
