//! `Fetch`: whole batches from each asked partition this shard owns, only synced ones,
//! each Cairn batch as one Kafka RecordBatch v2 (`record_batch::encode_fetched`).
//!
//! Long-polls: while the response holds fewer than `min_bytes`, it waits for any asked
//! partition's synced end to move, up to `max_wait_ms` (at most `fetch_wait_max`), and no
//! longer than until the server starts shutting down; then it answers with what there is.
//! Sizes: at most `partition_max_bytes` per partition, `max_bytes` in all, and at most
//! `FETCH_SIZE_BYTES_MAX` per partition and `FETCH_RESPONSE_SIZE_BYTES_MAX` in all whatever
//! the client asks; but the first batch of
//! the response is sent whole even when it is larger than the limits (KIP-74), so that a
//! consumer always gets past it. Sessionless: `session_id` is always 0, so clients send
//! full fetch requests. `high_watermark` = `last_stable_offset` = the synced end;
//! `log_start_offset` = the partition's first kept offset (`Shard::log_start`), below which
//! retention removed the records: a fetch from there is OFFSET_OUT_OF_RANGE, and the
//! consumer resets by its `auto.offset.reset`.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use cairn_engine::Offset;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::fetch_request::FetchPartition;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchRequest, FetchResponse};

use super::codes;
use super::record_batch;
use crate::context::ShardContext;
use crate::metrics::ShardMetrics;
use crate::operation::{FetchedRecords, Located};
use crate::routing;
use crate::service::{self, FETCH_SIZE_BYTES_MAX};

/// Most bytes of records one Fetch response holds, whatever `max_bytes` says (clients ask
/// for 50 MiB by default): four partitions' worth, so a connection holds a bounded
/// response; a consumer simply fetches again.
const FETCH_RESPONSE_SIZE_BYTES_MAX: usize = 4 * FETCH_SIZE_BYTES_MAX;

/// One asked partition, once resolved.
enum Target {
    Readable { located: Located, from: Offset },
    Failed(i16),
}

/// What one pass read from one partition.
struct Read {
    error_code: i16,
    synced_end: Option<Offset>,
    /// The partition's first kept offset, with `synced_end`.
    log_start: Offset,
    records: BytesMut,
}

pub(super) async fn serve(
    context: &ShardContext,
    request: FetchRequest,
    version: i16,
) -> FetchResponse {
    let targets: Vec<Vec<Target>> = request
        .topics
        .iter()
        .map(|topic| {
            topic
                .partitions
                .iter()
                .map(|partition| resolve(context, topic.topic.0.as_str(), partition))
                .collect()
        })
        .collect();
    let wait = Duration::from_millis(u64::try_from(request.max_wait_ms).unwrap_or(0))
        .min(context.config.fetch_wait_max);
    let deadline = Instant::now() + wait;
    let min_bytes = usize::try_from(request.min_bytes).unwrap_or(0);
    let max_bytes = usize::try_from(request.max_bytes)
        .ok()
        .filter(|&max_bytes| max_bytes > 0)
        .unwrap_or(usize::MAX)
        .min(FETCH_RESPONSE_SIZE_BYTES_MAX);
    let reads = loop {
        let reads = read_all(context, &request, &targets, max_bytes).await;
        let size_bytes: usize = reads.iter().flatten().map(|read| read.records.len()).sum();
        let failed = reads
            .iter()
            .flatten()
            .any(|read| read.error_code != codes::NONE);
        let now = Instant::now();
        if size_bytes >= min_bytes.max(1) || failed || now >= deadline || context.is_stopping.get()
        {
            break reads;
        }
        wait_for_records(context, &targets, &reads, deadline - now).await;
        if Instant::now() >= deadline || context.is_stopping.get() {
            break read_all(context, &request, &targets, max_bytes).await;
        }
    };
    let fetched_bytes: usize = reads.iter().flatten().map(|read| read.records.len()).sum();
    ShardMetrics::add(
        &context.metrics.kafka_fetch_bytes,
        u64::try_from(fetched_bytes).unwrap_or(u64::MAX),
    );
    let responses = request
        .topics
        .iter()
        .zip(reads)
        .map(|(topic, reads)| {
            let partitions = topic
                .partitions
                .iter()
                .zip(reads)
                .map(|(partition, read)| partition_data(partition, read, version))
                .collect();
            FetchableTopicResponse::default()
                .with_topic(topic.topic.clone())
                .with_partitions(partitions)
        })
        .collect();
    FetchResponse::default().with_responses(responses)
}

fn resolve(context: &ShardContext, topic_name: &str, partition: &FetchPartition) -> Target {
    let unknown = Target::Failed(codes::code(ResponseError::UnknownTopicOrPartition));
    let Ok(topic) = routing::topic(&context.shard, topic_name) else {
        return unknown;
    };
    let Ok(index) = u32::try_from(partition.partition) else {
        return unknown;
    };
    let Ok(located) = routing::locate(&topic, index, context.config.shard_count) else {
        return unknown;
    };
    if located.owner != context.shard_id {
        return Target::Failed(codes::code(ResponseError::NotLeaderOrFollower));
    }
    let Ok(from) = u64::try_from(partition.fetch_offset) else {
        return Target::Failed(codes::code(ResponseError::OffsetOutOfRange));
    };
    Target::Readable {
        located,
        from: Offset(from),
    }
}

/// One pass over every target: what is synced now, within the size limits.
async fn read_all(
    context: &ShardContext,
    request: &FetchRequest,
    targets: &[Vec<Target>],
    max_bytes: usize,
) -> Vec<Vec<Read>> {
    let mut size_bytes = 0;
    let mut reads = Vec::with_capacity(targets.len());
    for (topic, targets) in request.topics.iter().zip(targets) {
        let mut topic_reads = Vec::with_capacity(targets.len());
        for (partition, target) in topic.partitions.iter().zip(targets) {
            let partition_max_bytes = usize::try_from(partition.partition_max_bytes)
                .unwrap_or(0)
                .min(FETCH_SIZE_BYTES_MAX);
            let room_bytes = partition_max_bytes.min(max_bytes.saturating_sub(size_bytes));
            let read = read_one(context, target, room_bytes, size_bytes == 0).await;
            size_bytes += read.records.len();
            topic_reads.push(read);
        }
        reads.push(topic_reads);
    }
    reads
}

/// Reads one partition: whole batches of at most `room_bytes` encoded, or the first batch
/// whatever its size when `first_in_response`.
async fn read_one(
    context: &ShardContext,
    target: &Target,
    room_bytes: usize,
    first_in_response: bool,
) -> Read {
    let failed = |error_code| Read {
        error_code,
        synced_end: None,
        log_start: Offset(0),
        records: BytesMut::new(),
    };
    let (located, from) = match target {
        Target::Failed(error_code) => return failed(*error_code),
        Target::Readable { located, from } => (located, *from),
    };
    let synced_end = match context.shard.end_offsets(located.partition_id) {
        Ok((_, synced_end)) => synced_end,
        Err(_) => return failed(codes::code(ResponseError::UnknownTopicOrPartition)),
    };
    let log_start = match context.shard.log_start(located.partition_id) {
        Ok(log_start) => log_start,
        Err(_) => return failed(codes::code(ResponseError::UnknownTopicOrPartition)),
    };
    if from > synced_end || from < log_start {
        return failed(codes::code(ResponseError::OffsetOutOfRange));
    }
    let mut records = BytesMut::new();
    if from == synced_end || (room_bytes == 0 && !first_in_response) {
        return Read {
            error_code: codes::NONE,
            synced_end: Some(synced_end),
            log_start,
            records,
        };
    }
    let asked_bytes = u32::try_from(room_bytes.max(1)).unwrap_or(u32::MAX);
    let fetched = service::fetch_located(
        context,
        located,
        from,
        asked_bytes,
        Duration::ZERO,
        std::future::ready(()),
    )
    .await;
    let fetched = match fetched {
        Ok(fetched) => fetched,
        Err(failure) => return failed(codes::failure_code(&failure)),
    };
    let FetchedRecords::Batches(batches) = &fetched.records else {
        // Only a forwarded fetch has owned records, and this one was local.
        return failed(codes::code(ResponseError::UnknownServerError));
    };
    for batch in &batches.batches {
        let size_before = records.len();
        if let Err(error) = record_batch::encode_fetched(&batch.view(), &mut records) {
            tracing::error!(%error, "could not encode a fetched batch");
            records.truncate(size_before);
            break;
        }
        let over = records.len() > room_bytes;
        if over && !(first_in_response && size_before == 0) {
            records.truncate(size_before);
            break;
        }
        if over {
            break;
        }
    }
    Read {
        error_code: codes::NONE,
        synced_end: Some(fetched.synced_end.max(synced_end)),
        log_start,
        records,
    }
}

/// Waits until any readable target's synced end passes what the last pass saw, `timeout`
/// passes, or the server starts shutting down.
async fn wait_for_records(
    context: &ShardContext,
    targets: &[Vec<Target>],
    reads: &[Vec<Read>],
    timeout: Duration,
) {
    let waits: Vec<_> = targets
        .iter()
        .flatten()
        .zip(reads.iter().flatten())
        .filter_map(|(target, read)| match (target, read.synced_end) {
            (Target::Readable { located, .. }, Some(synced_end)) => Some(Box::pin(async move {
                let _ = context
                    .shard
                    .wait_synced_beyond(located.partition_id, synced_end, timeout)
                    .await;
            })),
            _ => None,
        })
        .collect();
    let stopping = context.stopping.listen();
    if context.is_stopping.get() {
        return;
    }
    let mut waits = waits;
    let any = std::future::poll_fn(|cx| {
        if waits.is_empty() {
            return std::task::Poll::Pending;
        }
        for wait in &mut waits {
            if wait.as_mut().poll(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    });
    futures_lite::future::or(
        futures_lite::future::or(any, stopping),
        glommio::timer::sleep(timeout),
    )
    .await;
}

fn partition_data(partition: &FetchPartition, read: Read, version: i16) -> PartitionData {
    let mut data = PartitionData::default()
        .with_partition_index(partition.partition)
        .with_error_code(read.error_code);
    match read.synced_end {
        Some(synced_end) => {
            let synced_end = i64::try_from(synced_end.0).unwrap_or(i64::MAX);
            data.high_watermark = synced_end;
            if version >= 4 {
                data.last_stable_offset = synced_end;
            }
            if version >= 5 {
                data.log_start_offset = i64::try_from(read.log_start.0).unwrap_or(i64::MAX);
            }
        }
        None => data.high_watermark = -1,
    }
    data.records = Some(read.records.freeze());
    data
}
