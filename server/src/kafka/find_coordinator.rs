//! `FindCoordinator`: the broker of the shard that coordinates a consumer group
//! (`routing::coordinator_shard`, murmur2 of the group id over the shard count), for the
//! single `key` of v0-v3 or each of v4's batched `coordinator_keys`. Also
//! [`coordinates`], the check every group API makes first.
//!
//! Transactions are not supported: a TRANSACTION key is answered
//! TRANSACTIONAL_ID_AUTHORIZATION_FAILED, as InitProducerId answers a transactional id
//! (`init_producer_id`: clients give up with a clear message instead of retrying for ever).

use kafka_protocol::ResponseError;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;

use super::codes;
use super::metadata::brokers;
use crate::context::ShardContext;
use crate::routing;

/// FindCoordinator's key types.
const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;

/// Whether this shard serves requests for group `group_id` now: `Err` with the code to
/// answer if not (INVALID_GROUP_ID, NOT_COORDINATOR for another shard's group, and
/// COORDINATOR_NOT_AVAILABLE while stopping; the client then finds the coordinator again).
pub(super) fn coordinates(context: &ShardContext, group_id: &str) -> Result<(), i16> {
    if group_id.is_empty() {
        return Err(codes::code(ResponseError::InvalidGroupId));
    }
    if routing::coordinator_shard(group_id, context.config.shard_count) != context.shard_id {
        return Err(codes::code(ResponseError::NotCoordinator));
    }
    if context.is_stopping.get() {
        return Err(codes::code(ResponseError::CoordinatorNotAvailable));
    }
    Ok(())
}

/// The coordinator of `key`: (error code, node id, host, port).
fn find(context: &ShardContext, key_type: i8, key: &str) -> (i16, i32, StrBytes, i32) {
    let refused = |error: ResponseError| (codes::code(error), -1, StrBytes::default(), -1);
    match key_type {
        KEY_TYPE_GROUP => {}
        KEY_TYPE_TRANSACTION => return refused(ResponseError::TransactionalIdAuthorizationFailed),
        _ => return refused(ResponseError::InvalidRequest),
    }
    if key.is_empty() {
        return refused(ResponseError::InvalidGroupId);
    }
    if context.is_stopping.get() {
        return refused(ResponseError::CoordinatorNotAvailable);
    }
    let shard = routing::coordinator_shard(key, context.config.shard_count);
    match brokers(context).into_iter().nth(usize::from(shard.0)) {
        Some((node_id, host, port)) => (codes::NONE, node_id, host, port),
        None => refused(ResponseError::CoordinatorNotAvailable),
    }
}

pub(super) fn serve(
    context: &ShardContext,
    request: &FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    if version < 4 {
        let (error_code, node_id, host, port) = find(context, request.key_type, &request.key);
        return FindCoordinatorResponse::default()
            .with_error_code(error_code)
            .with_node_id(BrokerId(node_id))
            .with_host(host)
            .with_port(port);
    }
    let coordinators = request
        .coordinator_keys
        .iter()
        .map(|key| {
            let (error_code, node_id, host, port) = find(context, request.key_type, key);
            Coordinator::default()
                .with_key(key.clone())
                .with_error_code(error_code)
                .with_node_id(BrokerId(node_id))
                .with_host(host)
                .with_port(port)
        })
        .collect();
    FindCoordinatorResponse::default().with_coordinators(coordinators)
}
