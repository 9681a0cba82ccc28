//! `InitProducer`: a producer id for idempotent appends, answered `ProducerInitialized`
//! once the id is durable.

use cairn_wire::{ProducerInitialized, ResponseBody};

use super::session::Session;
use crate::context::ShardContext;
use crate::service;

pub(super) async fn serve(context: &ShardContext, session: &Session, correlation_id: u64) {
    match service::init_producer(context).await {
        Ok((producer_id, epoch)) => {
            let body =
                ResponseBody::ProducerInitialized(ProducerInitialized { producer_id, epoch });
            session.respond(correlation_id, body).await;
        }
        Err(failure) => session.fail(correlation_id, &failure).await,
    }
}
