//! `CommitOffsets`: a consumer group's offsets of one topic's partitions, stored through
//! the service's `commit_offsets` (on the group's coordinator shard, in one atomic batch),
//! answered `OffsetsCommitted` once synced. The same store as Kafka's OffsetCommit.
//! Native commits have no membership to check: a native consumer is a "simple consumer".

use cairn_wire::{CommitOffsetsRequest, ResponseBody};

use super::session::Session;
use crate::context::ShardContext;
use crate::operation::{OffsetCommitEntry, OffsetToCommit};
use crate::service;

pub(super) async fn serve(
    context: &ShardContext,
    session: &Session,
    correlation_id: u64,
    request: CommitOffsetsRequest<'_>,
) {
    let entries = request
        .partitions
        .iter()
        .map(|entry| OffsetCommitEntry {
            topic: request.topic.to_owned(),
            partition: entry.partition,
            commit: Some(OffsetToCommit {
                offset: entry.offset,
                leader_epoch: -1,
                metadata: entry.metadata.to_owned(),
            }),
        })
        .collect();
    match service::commit_offsets(context, request.group, entries).await {
        Ok(()) => {
            session
                .respond(correlation_id, ResponseBody::OffsetsCommitted)
                .await;
        }
        Err(failure) => session.fail(correlation_id, &failure).await,
    }
}
