//! `FetchOffsets`: a consumer group's committed offsets of one topic's partitions (the
//! latest synced commit of each, native or Kafka), through the service's
//! `fetch_offsets`, answered `CommittedOffsets` in the order asked.

use cairn_wire::{CommittedOffset, FetchOffsetsRequest, ResponseBody};

use super::session::Session;
use crate::context::ShardContext;
use crate::service;

pub(super) async fn serve(
    context: &ShardContext,
    session: &Session,
    correlation_id: u64,
    request: FetchOffsetsRequest<'_>,
) {
    let partitions = request
        .partitions
        .iter()
        .map(|&partition| (request.topic.to_owned(), partition))
        .collect();
    match service::fetch_offsets(context, request.group, partitions).await {
        Ok(committed) => {
            let entries = request
                .partitions
                .iter()
                .zip(&committed)
                .map(|(&partition, committed)| CommittedOffset {
                    partition,
                    offset: committed.as_ref().map(|committed| committed.offset),
                    metadata: committed
                        .as_ref()
                        .map_or("", |committed| committed.metadata.as_str()),
                })
                .collect();
            session
                .respond(correlation_id, ResponseBody::CommittedOffsets(entries))
                .await;
        }
        Err(failure) => session.fail(correlation_id, &failure).await,
    }
}
