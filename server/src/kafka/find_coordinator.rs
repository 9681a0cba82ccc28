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

/// Where one key's coordinator is, or why there is none.
struct Found {
    error_code: i16,
    /// For a refusal: what the client shows (v1 and later).
    error_message: Option<StrBytes>,
    node_id: i32,
    host: StrBytes,
    port: i32,
}

/// The coordinator of `key`.
fn find(context: &ShardContext, key_type: i8, key: &str) -> Found {
    let refused = |error: ResponseError, message: &'static str| Found {
        error_code: codes::code(error),
        error_message: Some(StrBytes::from_static_str(message)),
        node_id: -1,
        host: StrBytes::default(),
        port: -1,
    };
    match key_type {
        KEY_TYPE_GROUP => {}
        KEY_TYPE_TRANSACTION => {
            return refused(
                ResponseError::TransactionalIdAuthorizationFailed,
                "transactions are not supported",
            );
        }
        _ => return refused(ResponseError::InvalidRequest, "unknown key type"),
    }
    if key.is_empty() {
        return refused(ResponseError::InvalidGroupId, "the group id is empty");
    }
    if context.is_stopping.get() {
        return refused(
            ResponseError::CoordinatorNotAvailable,
            "the server is shutting down",
        );
    }
    let shard = routing::coordinator_shard(key, context.config.shard_count);
    match brokers(context).into_iter().nth(usize::from(shard.0)) {
        Some((node_id, host, port)) => Found {
            error_code: codes::NONE,
            error_message: None,
            node_id,
            host,
            port,
        },
        None => refused(ResponseError::CoordinatorNotAvailable, "no such broker"),
    }
}

pub(super) fn serve(
    context: &ShardContext,
    request: &FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    if version < 4 {
        let found = find(context, request.key_type, &request.key);
        let mut response = FindCoordinatorResponse::default()
            .with_error_code(found.error_code)
            .with_node_id(BrokerId(found.node_id))
            .with_host(found.host)
            .with_port(found.port);
        if version >= 1 {
            response.error_message = found.error_message;
        }
        return response;
    }
    let coordinators = request
        .coordinator_keys
        .iter()
        .map(|key| {
            let found = find(context, request.key_type, key);
            Coordinator::default()
                .with_key(key.clone())
                .with_error_code(found.error_code)
                .with_error_message(found.error_message)
                .with_node_id(BrokerId(found.node_id))
                .with_host(found.host)
                .with_port(found.port)
        })
        .collect();
    FindCoordinatorResponse::default().with_coordinators(coordinators)
}
