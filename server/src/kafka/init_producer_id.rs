//! `InitProducerId`: a producer id for an idempotent producer, from the data directory's
//! never-reused sequence (`Shard::allocate_producer_id`), epoch 0. A request that names
//! its current id and epoch (KIP-360, after an unknown-sequence error) keeps the id and
//! gets the next epoch, or a new id once the epoch is exhausted.
//!
//! Transactions are not supported. A transactional producer is answered
//! TRANSACTIONAL_ID_AUTHORIZATION_FAILED: every client treats it as fatal and says plainly
//! that the transactional id is refused, whereas the "not available" codes
//! (COORDINATOR_NOT_AVAILABLE, NOT_COORDINATOR) make clients retry for ever, and
//! UNSUPPORTED_VERSION would blame the protocol version.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use super::codes;
use crate::context::ShardContext;

pub(super) fn serve(
    context: &ShardContext,
    request: &InitProducerIdRequest,
    _version: i16,
) -> InitProducerIdResponse {
    let refused = |error: ResponseError| {
        InitProducerIdResponse::default()
            .with_error_code(codes::code(error))
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
    };
    if request.transactional_id.is_some() {
        return refused(ResponseError::TransactionalIdAuthorizationFailed);
    }
    if context.is_stopping.get() {
        return refused(ResponseError::CoordinatorNotAvailable);
    }
    refused(ResponseError::UnsupportedVersion)
}
