//! Request -> engine call -> response, for one decoded frame.
//!
//! Every request that names a partition is routed here: the topic's partition id gives the
//! owning shard; if that is not this shard, the original frame is forwarded and the owner's
//! encoded response returned unchanged (or `ShuttingDown`, should the owner have stopped).
//! A fetch long-polls for at most `fetch_wait_max`, and no longer than until the server
//! starts shutting down: then it answers with what is synced, often nothing. Engine
//! outcomes map to typed wire errors: a failed condition is a `Conflict` carrying the
//! current value, a storage failure is `StorageFailure`, and nothing here panics on what a
//! client sent.

use std::cell::RefCell;
use std::ops::Range;
use std::rc::Rc;
use std::time::Duration;

use cairn_engine::core::condition::Conflict;
use cairn_engine::{
    AppendError, AppendOutcome, OwnedRecord, PartitionId, ReadError, RecordHeader, RecordInput,
    ShardId, Topic, TopicError,
};

use glommio::sync::StaticPermit;

use crate::connection::ClientConnection;
use crate::routing::{MeshError, ShardContext};
use cairn_wire::{
    self as wire, Appended, ConflictInfo, Encoder, ErrorCode, ErrorResponse, FrameError,
    HeaderList, KeyHistoryResult, KeyRecord, MetadataResult, PartitionMetadata, RecordOut,
    RecordOutList, Request, RequestBody, Response, ResponseBody, TopicMetadata, decode_request,
};

/// Most bytes of records one fetch or key history returns, whatever the client asks,
/// counted as they are encoded (`wire::record_out_size_bytes_max`: keys, values, headers
/// and the flatbuffer's overhead per record and header), not as they are stored: a 1-byte
/// record takes ~26 bytes in a batch but ~60 in a response. A response holds at least one
/// record when one is available, even a larger one, so that a reader always gets past it.
const FETCH_SIZE_BYTES_MAX: usize = 2 * 1024 * 1024;

// Either way the response fits in a client's default frame limit: records up to the limit,
// or a single record of any size (which `wire` checks against the same frame limit).
const _: () = assert!(
    FETCH_SIZE_BYTES_MAX + wire::RECORDS_RESPONSE_OVERHEAD_SIZE_BYTES_MAX
        <= wire::FRAME_SIZE_BYTES_MAX_DEFAULT as usize
);
const _: () = assert!(
    wire::RECORD_OUT_SIZE_BYTES_MAX + wire::RECORDS_RESPONSE_OVERHEAD_SIZE_BYTES_MAX
        <= wire::FRAME_SIZE_BYTES_MAX_DEFAULT as usize
);

/// Most records one key-history response carries.
const KEY_HISTORY_RECORD_COUNT_MAX: u32 = 1024;

thread_local! {
    // One encoder per shard thread: its buffers keep their capacity between responses.
    static ENCODER: RefCell<Encoder> = RefCell::new(Encoder::new());
}

fn encode(correlation_id: u64, body: ResponseBody<'_>) -> Vec<u8> {
    ENCODER.with(|encoder| {
        encoder
            .borrow_mut()
            .encode_response(&Response {
                correlation_id,
                body,
            })
            .to_vec()
    })
}

fn error(correlation_id: u64, code: ErrorCode, message: &str) -> Vec<u8> {
    encode(
        correlation_id,
        ResponseBody::Error(ErrorResponse {
            code,
            message,
            conflict: None,
        }),
    )
}

/// The response to a frame that broke the framing (sent just before closing).
pub(crate) fn framing_error_response(frame_error: &FrameError) -> Vec<u8> {
    let code = match frame_error {
        FrameError::TooLarge { .. } => ErrorCode::TooLarge,
        FrameError::Truncated { .. } => ErrorCode::BadRequest,
    };
    error(0, code, &frame_error.to_string())
}

/// The response to a connection refused because its shard serves
/// `shard_connection_count_max` connections already (sent just before closing).
pub(crate) fn connection_refused_response(open_count_max: usize) -> Vec<u8> {
    let message = format!(
        "this shard serves its most connections ({open_count_max}); retry later or elsewhere"
    );
    error(0, ErrorCode::Overloaded, &message)
}

/// The response to one frame, and whether the connection must close after it.
pub(crate) struct HandledFrame {
    /// The encoded response (without its length).
    pub(crate) response: Vec<u8>,
    /// The frame was not a flatbuffer at all: nothing in it, not even its correlation id,
    /// can be trusted, so the schema says the connection closes.
    pub(crate) close_connection: bool,
    /// Held while a response that can be large (records) waits to be queued for writing;
    /// see `connection`, memory bounds.
    pub(crate) large_response_permit: Option<StaticPermit>,
}

/// Handles one request frame of `client`, or forwarded from another shard (`None`).
/// Requests whose responses carry records first take a permit from the client's
/// `large_responses` (forwarded requests are bounded by the connection they came from).
pub(crate) async fn handle_frame(
    context: &Rc<ShardContext>,
    frame: &[u8],
    client: Option<&ClientConnection>,
) -> HandledFrame {
    let request = match decode_request(frame) {
        Ok(request) => request,
        Err(wire_error) => {
            tracing::debug!(%wire_error, "bad request");
            let correlation_id = wire_error.correlation_id();
            let response = error(
                correlation_id.unwrap_or(0),
                wire_error.error_code(),
                &wire_error.to_string(),
            );
            return HandledFrame {
                response,
                close_connection: correlation_id.is_none(),
                large_response_permit: None,
            };
        }
    };
    let carries_records = matches!(
        request.body,
        RequestBody::Fetch(_) | RequestBody::ReadKey(_) | RequestBody::KeyHistory(_)
    );
    let large_response_permit = match client {
        Some(client) if carries_records => {
            match client.large_responses.acquire_static_permit(1).await {
                Ok(permit) => Some(permit),
                // Closed: the connection is abandoned and nobody will read the records, so
                // do not read and encode them (see `connection`).
                Err(_) => {
                    return HandledFrame {
                        response: error(
                            request.correlation_id,
                            ErrorCode::Internal,
                            "connection abandoned",
                        ),
                        close_connection: true,
                        large_response_permit: None,
                    };
                }
            }
        }
        _ => None,
    };
    HandledFrame {
        response: handle(context, request, frame, client).await,
        close_connection: false,
        large_response_permit,
    }
}

/// Where a partition lives: its id and owning shard.
struct Located {
    partition_index: u32,
    partition_id: PartitionId,
    owner: ShardId,
}

fn locate(
    context: &ShardContext,
    topic: &Topic,
    partition_index: u32,
) -> Result<Located, (ErrorCode, String)> {
    let partition_id = topic.partition_id(partition_index).ok_or_else(|| {
        (
            ErrorCode::UnknownPartition,
            format!(
                "topic {} has {} partitions, not {partition_index}",
                topic.name, topic.partition_count
            ),
        )
    })?;
    let owner = ShardId::owner_of(partition_id, context.config.shard_count);
    Ok(Located {
        partition_index,
        partition_id,
        owner,
    })
}

fn topic(context: &ShardContext, name: &str) -> Result<Topic, (ErrorCode, String)> {
    context
        .shard
        .topic(name)
        .ok_or_else(|| (ErrorCode::UnknownTopic, format!("no topic named {name:?}")))
}

/// The partition a request names (directly or through a key), if it names one.
fn target_partition(
    context: &ShardContext,
    body: &RequestBody<'_>,
) -> Option<Result<Located, (ErrorCode, String)>> {
    let by_key = |topic_name: &str, partition: Option<u32>, key: &[u8]| {
        topic(context, topic_name).and_then(|topic| {
            let index = wire::route(partition, key, topic.partition_count)
                .map_err(|route_error| (route_error.error_code(), route_error.to_string()))?;
            locate(context, &topic, index)
        })
    };
    Some(match body {
        RequestBody::Ping | RequestBody::Metadata | RequestBody::CreateTopic(_) => return None,
        RequestBody::Append(append) => topic(context, append.topic).and_then(|topic| {
            let index = append
                .route(topic.partition_count)
                .map_err(|route_error| (route_error.error_code(), route_error.to_string()))?;
            locate(context, &topic, index)
        }),
        RequestBody::Fetch(fetch) => {
            topic(context, fetch.topic).and_then(|topic| locate(context, &topic, fetch.partition))
        }
        RequestBody::ReadKey(read) => by_key(read.topic, read.partition, read.key),
        RequestBody::KeyHistory(history) => by_key(history.topic, history.partition, history.key),
    })
}

async fn handle(
    context: &Rc<ShardContext>,
    request: Request<'_>,
    frame: &[u8],
    client: Option<&ClientConnection>,
) -> Vec<u8> {
    let correlation_id = request.correlation_id;
    if context.is_stopping.get() {
        return error(
            correlation_id,
            ErrorCode::ShuttingDown,
            "the server is shutting down",
        );
    }
    // Requests for a partition go to its owning shard: forward the frame unchanged and
    // return the owner's response, or go on here.
    let located = match target_partition(context, &request.body) {
        None => None,
        Some(Err((code, message))) => return error(correlation_id, code, &message),
        Some(Ok(located)) if located.owner != context.shard_id => {
            return forward(context, located.owner, frame)
                .await
                .unwrap_or_else(|(code, message)| error(correlation_id, code, &message));
        }
        Some(Ok(located)) => Some(located),
    };
    let outcome = match (request.body, located) {
        (RequestBody::Ping, _) => Ok(encode(correlation_id, ResponseBody::Pong)),
        (RequestBody::Metadata, _) => Ok(metadata(context, correlation_id)),
        (RequestBody::CreateTopic(create), _) => {
            if context.shard_id != ShardId(0) {
                forward(context, ShardId(0), frame).await
            } else {
                create_topic(context, correlation_id, create.name, create.partition_count).await
            }
        }
        (RequestBody::Append(append), Some(located)) => {
            let records: Vec<RecordInput<'_>> = append.records.iter().collect();
            append_local(
                context,
                correlation_id,
                &located,
                append.expected_end_offset,
                &records,
            )
            .await
        }
        (RequestBody::Fetch(fetch), Some(located)) => {
            fetch_local(
                context,
                correlation_id,
                &located,
                fetch.offset,
                fetch.size_bytes_max,
                fetch.wait_max,
                client,
            )
            .await
        }
        (RequestBody::ReadKey(read), Some(located)) => {
            match context
                .shard
                .read_key(located.partition_id, read.key, read.include_pending)
                .await
            {
                Ok(record) => {
                    let headers = record.as_ref().map(header_list).unwrap_or_default();
                    let record_out = record.as_ref().map(|record| record_out(record, &headers));
                    Ok(encode(
                        correlation_id,
                        ResponseBody::KeyRecord(KeyRecord {
                            partition: located.partition_index,
                            record: record_out,
                        }),
                    ))
                }
                Err(read_error) => Err(read_error_code(&read_error)),
            }
        }
        (RequestBody::KeyHistory(history), Some(located)) => {
            let limit = history.record_count_max.min(KEY_HISTORY_RECORD_COUNT_MAX);
            // The engine's size limit counts keys and values only, which is never more than
            // the encoded size: it returns at least what fits, and the loop below cuts.
            let history = context
                .shard
                .key_history(
                    located.partition_id,
                    history.key,
                    limit as usize,
                    FETCH_SIZE_BYTES_MAX,
                )
                .await;
            match history {
                Ok(records) => {
                    let headers: Vec<Vec<RecordHeader<'_>>> =
                        records.iter().map(header_list).collect();
                    let mut outs: Vec<RecordOut<'_>> = Vec::with_capacity(records.len());
                    let mut size_bytes = 0;
                    for (record, headers) in records.iter().zip(&headers) {
                        let out = record_out(record, headers);
                        // At least one record, however large, as for a fetch.
                        size_bytes += out.encoded_size_bytes_max();
                        if !outs.is_empty() && size_bytes > FETCH_SIZE_BYTES_MAX {
                            break;
                        }
                        outs.push(out);
                    }
                    Ok(encode(
                        correlation_id,
                        ResponseBody::KeyHistory(KeyHistoryResult {
                            partition: located.partition_index,
                            records: RecordOutList::from_slice(&outs),
                        }),
                    ))
                }
                Err(read_error) => Err(read_error_code(&read_error)),
            }
        }
        (
            RequestBody::Append(_)
            | RequestBody::Fetch(_)
            | RequestBody::ReadKey(_)
            | RequestBody::KeyHistory(_),
            None,
        ) => unreachable!("target_partition locates every partition request"),
    };
    outcome.unwrap_or_else(|(code, message)| error(correlation_id, code, &message))
}

async fn forward(
    context: &Rc<ShardContext>,
    owner: ShardId,
    frame: &[u8],
) -> Result<Vec<u8>, (ErrorCode, String)> {
    context
        .forward(owner, frame)
        .await
        .map_err(|mesh_error| mesh_error_code(&mesh_error))
}

/// A shard leaves the mesh only when the server stops, so a request that needed it can
/// only be told so; the client may retry once a server is back.
fn mesh_error_code(mesh_error: &MeshError) -> (ErrorCode, String) {
    match mesh_error {
        MeshError::ShardStopped { .. } => (
            ErrorCode::ShuttingDown,
            format!("the server is shutting down: {mesh_error}"),
        ),
    }
}

fn metadata(context: &ShardContext, correlation_id: u64) -> Vec<u8> {
    let catalog = context.shard.catalog();
    let topics: Vec<TopicMetadata<'_>> = catalog
        .topics()
        .iter()
        .map(|topic| topic_metadata(context, topic))
        .collect();
    encode(
        correlation_id,
        ResponseBody::Metadata(MetadataResult {
            shard_ports: context.listening.shard_ports.clone(),
            topics,
        }),
    )
}

fn topic_metadata<'a>(context: &ShardContext, topic: &'a Topic) -> TopicMetadata<'a> {
    let partitions = (0..topic.partition_count)
        .filter_map(|index| {
            let partition_id = topic.partition_id(index)?;
            let shard = ShardId::owner_of(partition_id, context.config.shard_count);
            let port = context
                .listening
                .shard_ports
                .get(usize::from(shard.0))
                .copied()?;
            Some(PartitionMetadata {
                partition: index,
                partition_id,
                shard,
                port,
            })
        })
        .collect();
    TopicMetadata {
        name: &topic.name,
        partitions,
    }
}

async fn create_topic(
    context: &Rc<ShardContext>,
    correlation_id: u64,
    name: &str,
    partition_count: u32,
) -> Result<Vec<u8>, (ErrorCode, String)> {
    let topic = context
        .shard
        .create_topic(name, partition_count)
        .map_err(|topic_error| {
            let code = match &topic_error {
                TopicError::Exists(_) => ErrorCode::TopicExists,
                TopicError::InvalidName { .. } | TopicError::BadPartitionCount { .. } => {
                    ErrorCode::BadRequest
                }
                TopicError::NotCatalogOwner | TopicError::Contradicts { .. } => ErrorCode::Internal,
                TopicError::Storage(_) => ErrorCode::StorageFailure,
            };
            (code, topic_error.to_string())
        })?;
    // Answer only once every shard knows the topic, so the client's next request finds it
    // wherever it lands.
    context
        .broadcast_topic(&topic)
        .await
        .map_err(|mesh_error| {
            let (code, message) = mesh_error_code(&mesh_error);
            (
                code,
                format!("topic {} is in the catalog, but {message}", topic.name),
            )
        })?;
    tracing::info!(
        topic = topic.name,
        partitions = topic.partition_count,
        "topic created"
    );
    Ok(encode(
        correlation_id,
        ResponseBody::TopicCreated(topic_metadata(context, &topic)),
    ))
}

async fn append_local(
    context: &ShardContext,
    correlation_id: u64,
    located: &Located,
    expected_end: Option<cairn_engine::Offset>,
    records: &[RecordInput<'_>],
) -> Result<Vec<u8>, (ErrorCode, String)> {
    match context
        .shard
        .append(located.partition_id, expected_end, records)
        .await
    {
        Ok(AppendOutcome::Appended {
            base_offset,
            record_count,
        }) => Ok(encode(
            correlation_id,
            ResponseBody::Appended(Appended {
                partition: located.partition_index,
                base_offset,
                record_count,
            }),
        )),
        Ok(AppendOutcome::ConditionFailed(conflict)) => {
            let message = conflict.to_string();
            let info = match conflict {
                Conflict::EndOffset { actual, .. } => ConflictInfo::EndOffset {
                    current_end_offset: actual,
                },
                // The message says when the batch contradicts itself; the wire carries the
                // key's latest offset in the log either way.
                Conflict::Key {
                    record_index,
                    condition,
                    actual,
                    ..
                } => ConflictInfo::Key {
                    record_index,
                    condition,
                    current_offset: actual,
                },
            };
            Ok(encode(
                correlation_id,
                ResponseBody::Error(ErrorResponse {
                    code: ErrorCode::Conflict,
                    message: &message,
                    conflict: Some(info),
                }),
            ))
        }
        Err(append_error) => {
            let code = match &append_error {
                AppendError::UnknownPartition(_) => ErrorCode::UnknownPartition,
                AppendError::InvalidBatch(
                    cairn_engine::core::record::EncodeError::BatchTooLarge { .. },
                ) => ErrorCode::TooLarge,
                AppendError::InvalidBatch(_) => ErrorCode::BadRequest,
                AppendError::Storage(_) => ErrorCode::StorageFailure,
                AppendError::ShuttingDown => ErrorCode::ShuttingDown,
            };
            Err((code, append_error.to_string()))
        }
    }
}

/// Reads records for a fetch, first waiting up to `wait_max` for one when none is there,
/// unless `client` stops sending meanwhile (`ClientConnection::hung_up`): then it answers
/// with what there is, so that a client that left does not keep the request's memory for
/// the rest of a long poll.
async fn fetch_local(
    context: &ShardContext,
    correlation_id: u64,
    located: &Located,
    from: cairn_engine::Offset,
    size_bytes_max: u32,
    wait_max: Duration,
    client: Option<&ClientConnection>,
) -> Result<Vec<u8>, (ErrorCode, String)> {
    let wait = wait_max.min(context.config.fetch_wait_max);
    let (_, synced_end) = context
        .shard
        .end_offsets(located.partition_id)
        .map_err(|e| read_error_code(&e))?;
    if from >= synced_end && !wait.is_zero() {
        // Shutdown ends the wait too: the connection (or, forwarded, another shard's) must
        // drain, and an answer with what is synced so far is a correct one. So does a client
        // that stopped sending (see `connection`).
        let stopping = context.stopping.listen();
        if !context.is_stopping.get() {
            let waiting = async {
                context
                    .shard
                    .wait_synced_beyond(located.partition_id, from, wait)
                    .await
                    .map(|_| ())
            };
            let stopped = async {
                stopping.await;
                Ok(())
            };
            match client {
                Some(client) => {
                    futures_lite::future::or(futures_lite::future::or(waiting, stopped), async {
                        client.hung_up().await;
                        Ok(())
                    })
                    .await
                }
                None => futures_lite::future::or(waiting, stopped).await,
            }
            .map_err(|e| read_error_code(&e))?;
        }
    }
    let size_bytes_max = (size_bytes_max as usize).min(FETCH_SIZE_BYTES_MAX);
    // The engine bounds the batches it reads by their stored size, which is less than the
    // encoded size of their records: it reads at least what fits, and the loop below cuts.
    let fetched = context
        .shard
        .fetch(located.partition_id, from, size_bytes_max)
        .await
        .map_err(|e| read_error_code(&e))?;
    // Records to send, with their headers' range in `headers` (which must stop growing
    // before anything borrows from it).
    let mut kept: Vec<(RecordOut<'_>, Range<usize>)> = Vec::new();
    let mut headers: Vec<RecordHeader<'_>> = Vec::new();
    let mut size_bytes = 0;
    'batches: for batch in &fetched.batches {
        let view = batch.view();
        for record in view.records().filter(|record| record.offset >= from) {
            let headers_start = headers.len();
            headers.extend(record.headers());
            let headers_range = headers_start..headers.len();
            let record_size_bytes = wire::record_out_size_bytes_max(
                record.key,
                record.value,
                headers
                    .get(headers_range.clone())
                    .unwrap_or_default()
                    .iter()
                    .copied(),
            );
            // At least one record, however large, so that the reader gets past it.
            if !kept.is_empty() && size_bytes + record_size_bytes > size_bytes_max {
                break 'batches;
            }
            size_bytes += record_size_bytes;
            let out = RecordOut {
                offset: record.offset,
                timestamp_ms: view.timestamp_ms(),
                key: record.key,
                value: record.value,
                headers: HeaderList::default(),
                prev_key_offset: record.prev_key_offset,
            };
            kept.push((out, headers_range));
        }
    }
    let outs: Vec<RecordOut<'_>> = kept
        .into_iter()
        .map(|(out, headers_range)| RecordOut {
            headers: HeaderList::from_slice(headers.get(headers_range).unwrap_or_default()),
            ..out
        })
        .collect();
    Ok(encode(
        correlation_id,
        ResponseBody::Fetched(wire::Fetched {
            partition: located.partition_index,
            records: RecordOutList::from_slice(&outs),
            high_watermark: fetched.synced_end,
        }),
    ))
}

fn header_list(record: &OwnedRecord) -> Vec<RecordHeader<'_>> {
    record
        .headers
        .iter()
        .map(|(name, value)| RecordHeader { name, value })
        .collect()
}

fn record_out<'a>(record: &'a OwnedRecord, headers: &'a [RecordHeader<'a>]) -> RecordOut<'a> {
    RecordOut {
        offset: record.offset,
        timestamp_ms: record.timestamp_ms,
        key: &record.key,
        value: &record.value,
        headers: HeaderList::from_slice(headers),
        prev_key_offset: record.prev_key_offset,
    }
}

fn read_error_code(read_error: &ReadError) -> (ErrorCode, String) {
    let code = match read_error {
        ReadError::UnknownPartition(_) => ErrorCode::UnknownPartition,
        ReadError::OffsetOutOfRange { .. } => ErrorCode::BadRequest,
        ReadError::Storage(_) => ErrorCode::StorageFailure,
    };
    (code, read_error.to_string())
}
