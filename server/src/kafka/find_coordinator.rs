//! `FindCoordinator`: the broker (shard) that coordinates a consumer group,
//! `routing::coordinator_shard` of its id; it keeps the group's committed offsets. v4 and
//! later ask for several groups at once (`coordinator_keys`). Transactions are not
//! supported: a transactional id is answered COORDINATOR_NOT_AVAILABLE.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;

use super::codes;
use super::metadata::brokers;
use crate::context::ShardContext;
use crate::routing;

/// `key_type` of a consumer group (1 is a transactional id).
const KEY_TYPE_GROUP: i8 = 0;

pub(super) fn serve(
    context: &ShardContext,
    request: &FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    if version >= 4 {
        let coordinators = request
            .coordinator_keys
            .iter()
            .map(|key| coordinator(context, key, request.key_type))
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    let found = coordinator(context, &request.key, request.key_type);
    let mut response = FindCoordinatorResponse::default()
        .with_error_code(found.error_code)
        .with_node_id(found.node_id)
        .with_host(found.host)
        .with_port(found.port);
    if version >= 1 {
        response.error_message = found.error_message;
    }
    response
}

fn coordinator(context: &ShardContext, key: &StrBytes, key_type: i8) -> Coordinator {
    let refuse = |error: ResponseError, message: &str| {
        Coordinator::default()
            .with_key(key.clone())
            .with_node_id(BrokerId(-1))
            .with_host(StrBytes::default())
            .with_port(-1)
            .with_error_code(codes::code(error))
            .with_error_message(Some(StrBytes::from_string(message.to_owned())))
    };
    if key_type != KEY_TYPE_GROUP {
        return refuse(
            ResponseError::CoordinatorNotAvailable,
            "transactions are not supported",
        );
    }
    if context.is_stopping.get() {
        return refuse(
            ResponseError::CoordinatorNotAvailable,
            "the server is shutting down",
        );
    }
    let shard = routing::coordinator_shard(key.as_str(), context.config.shard_count);
    let Some((node_id, host, port)) = brokers(context).into_iter().nth(usize::from(shard.0)) else {
        return refuse(ResponseError::CoordinatorNotAvailable, "no such broker");
    };
    Coordinator::default()
        .with_key(key.clone())
        .with_node_id(BrokerId(node_id))
        .with_host(host)
        .with_port(port)
        .with_error_code(codes::NONE)
}
