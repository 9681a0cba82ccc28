//! `BackupBegin` and `BackupRead`: an online backup (`cairn backup`). BackupBegin answers
//! every shard's backup point (`service::backup_begin`) as a `BackupManifest`; BackupRead
//! answers a range of one shard's synced log as a `BackupChunk`, read on that shard.

use cairn_wire::{
    BackupManifest, BackupPartitionEnd, BackupReadRequest, BackupSegment, BackupShard, ResponseBody,
};

use super::session::Session;
use crate::context::ShardContext;
use crate::service;

pub(super) async fn serve_begin(context: &ShardContext, session: &Session, correlation_id: u64) {
    let points = match service::backup_begin(context).await {
        Ok(points) => points,
        Err(failure) => return session.fail(correlation_id, &failure).await,
    };
    // Shard 0's catalog is the data directory's (see `service::backup_begin`).
    let topics_meta = points
        .iter()
        .find(|point| point.shard_id.0 == 0)
        .map(|point| point.catalog.to_meta_body())
        .unwrap_or_default();
    let shards = points
        .iter()
        .map(|point| BackupShard {
            shard: point.shard_id,
            segments: point
                .segments
                .iter()
                .map(|segment| BackupSegment {
                    segment_index: segment.segment_index,
                    length_bytes: segment.length_bytes,
                    size_bytes: segment.size_bytes,
                })
                .collect(),
            producer_id_counter_end: point.producer_id_counter_end,
            partitions: point
                .partitions
                .iter()
                .map(|&(partition_id, end_offset)| BackupPartitionEnd {
                    partition_id,
                    end_offset,
                })
                .collect(),
        })
        .collect();
    let manifest = BackupManifest {
        shard_count: context.config.shard_count,
        shards,
        topics_meta: &topics_meta,
    };
    session
        .respond(correlation_id, ResponseBody::BackupManifest(manifest))
        .await;
}

pub(super) async fn serve_read(
    context: &ShardContext,
    session: &Session,
    correlation_id: u64,
    request: BackupReadRequest,
) {
    let result = service::backup_read(
        context,
        request.shard,
        request.segment_index,
        request.position,
        request.length_bytes,
    )
    .await;
    match result {
        Ok(bytes) => {
            session
                .respond(correlation_id, ResponseBody::BackupChunk(&bytes))
                .await;
        }
        Err(failure) => session.fail(correlation_id, &failure).await,
    }
}
