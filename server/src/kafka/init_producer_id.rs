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

pub(super) async fn serve(
    context: &ShardContext,
    request: &InitProducerIdRequest,
    version: i16,
) -> InitProducerIdResponse {
    let refused = |error: ResponseError| {
        InitProducerIdResponse::default()
            .with_error_code(codes::code(error))
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
    };
    // An empty id is no id: clients that cannot send null send "".
    if request
        .transactional_id
        .as_ref()
        .is_some_and(|id| !id.0.is_empty())
    {
        return refused(ResponseError::TransactionalIdAuthorizationFailed);
    }
    if context.is_stopping.get() {
        // Retriable: the producer asks again, by when a server is back.
        return refused(ResponseError::CoordinatorNotAvailable);
    }
    // KIP-360 (v3 and later): the producer names its id and epoch to keep its id with the
    // next epoch. Each partition fences batches of older epochs (the engine's producer
    // state), so a zombie with the old epoch is refused wherever it writes next.
    let current = (version >= 3 && request.producer_id.0 >= 0 && request.producer_epoch >= 0)
        .then_some((request.producer_id.0, request.producer_epoch));
    if let Some((producer_id, epoch)) = current
        && epoch < i16::MAX
    {
        return InitProducerIdResponse::default()
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(epoch + 1);
    }
    // A new producer, or one whose epochs are exhausted: a new id.
    match context.shard.allocate_producer_id().await {
        Ok(producer_id) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(0),
        Err(error) => {
            tracing::warn!(%error, "could not allocate a producer id");
            refused(ResponseError::KafkaStorageError)
        }
    }
}
