//! The service: typed operations over the engine, each run on the shard that owns its
//! partition, whichever protocol asked.
//!
//! A front end (`native`, the flatbuffers protocol) decodes a request, calls one function
//! here, and encodes the typed result. Each function checks that the server is not
//! shutting down, routes the request (`routing`), and then either runs it on this shard's
//! engine or moves it, owned and already routed, to the owning shard over the mesh, which
//! runs it with `serve_forwarded` and sends back the typed result (or, should the owner
//! have stopped, the caller gets `ShuttingDown`). Topic creation runs on shard 0, which
//! owns the catalog, and is answered only once every shard knows the topic.
//!
//! A fetch long-polls for at most `fetch_wait_max`, and no longer than until the server
//! starts shutting down or the caller's `hung_up` completes: then it answers with what is
//! synced, often nothing. Engine outcomes become typed results: a failed condition is an
//! `AppendResult::ConditionFailed`, a storage failure a `FailureKind::StorageFailure`.

use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use cairn_engine::core::condition::Conflict;
use cairn_engine::{
    AppendError, AppendOutcome, Offset, OwnedRecord, ProducerStamp, ReadError, RecordHeader,
    RecordInput, RetentionPolicy, ShardId, TopicError,
};

use cairn_engine::io::backup::{BackupPoint, BackupReadError};

use crate::context::ShardContext;
use crate::mesh::MeshError;
use crate::metrics::ShardMetrics;
use crate::offsets::{self, CommittedOffset, GroupOffsetsIndex};
use crate::operation::{
    AppendResult, Failure, FailureKind, FetchResult, FetchedRecords, Forwarded, ForwardedFetch,
    ForwardedResult, KeyHistoryResult, Located, MetadataResult, OffsetCommitEntry,
    OwnedRecordInput, ReadKeyResult, RetentionChange, TopicPlacement, placement,
};
use crate::routing;

/// Most bytes of records one fetch or key history reads, whatever the client asks. The
/// engine counts stored bytes; a front end may cut further by its encoded size, keeping at
/// least one record so that a reader always gets past a large one.
pub(crate) const FETCH_SIZE_BYTES_MAX: usize = 2 * 1024 * 1024;

/// Most records one key history returns.
pub(crate) const KEY_HISTORY_RECORD_COUNT_MAX: u32 = 1024;

fn ensure_serving(context: &ShardContext) -> Result<(), Failure> {
    if context.is_stopping.get() {
        Err(Failure::shutting_down())
    } else {
        Ok(())
    }
}

/// Checks that the server serves (a ping's whole work).
pub(crate) fn ping(context: &ShardContext) -> Result<(), Failure> {
    ensure_serving(context)
}

async fn forward(
    context: &ShardContext,
    owner: ShardId,
    request: Forwarded,
) -> Result<ForwardedResult, Failure> {
    context
        .mesh
        .forward(owner, request)
        .await
        .map_err(|mesh_error| mesh_failure(&mesh_error))
}

/// A shard leaves the mesh only when the server stops, so a request that needed it can
/// only be told so; the client may retry once a server is back.
fn mesh_failure(mesh_error: &MeshError) -> Failure {
    match mesh_error {
        MeshError::ShardStopped { .. } => Failure::new(
            FailureKind::ShuttingDown,
            format!("the server is shutting down: {mesh_error}"),
        ),
    }
}

fn mismatched_reply() -> Failure {
    Failure::new(
        FailureKind::Internal,
        "a shard answered with another kind of result",
    )
}

/// Appends `records` (one batch) to partition `partition` of `topic`, or to their keys'
/// partition, if `expected_end` (when given) is the partition's end offset and every
/// record's key condition holds. Answers once the batch is synced. With a `producer`
/// stamp, a retry of a batch appended before answers its original offsets
/// (`duplicate`), checked before the conditions.
pub(crate) async fn append(
    context: &ShardContext,
    topic: &str,
    partition: Option<u32>,
    expected_end: Option<Offset>,
    records: &[RecordInput<'_>],
    producer: Option<ProducerStamp>,
) -> Result<AppendResult, Failure> {
    ensure_serving(context)?;
    if offsets::is_internal(topic) {
        return Err(internal_topic_failure(topic));
    }
    let topic = routing::topic(&context.shard, topic)?;
    let located = routing::locate_batch(&topic, partition, records, context.config.shard_count)?;
    if located.owner == context.shard_id {
        return append_local(context, &located, expected_end, records, producer).await;
    }
    let request = Forwarded::Append {
        located,
        expected_end,
        records: records.iter().map(OwnedRecordInput::from_input).collect(),
        producer,
    };
    match forward(context, located.owner, request).await? {
        ForwardedResult::Append(result) => result,
        _ => Err(mismatched_reply()),
    }
}

/// A front end that routes by itself (the Kafka one: each shard is a broker) must only
/// hand over partitions of this shard; anything else is its bug, not the client's.
fn ensure_owned(context: &ShardContext, located: &Located) -> Result<(), Failure> {
    if located.owner == context.shard_id {
        return Ok(());
    }
    Err(Failure::new(
        FailureKind::Internal,
        format!(
            "partition {:?} belongs to shard {}, not {}",
            located.partition_id, located.owner.0, context.shard_id.0
        ),
    ))
}

/// Appends `records` (one batch) to `located`, a partition this shard owns, as `append`
/// does, for a front end that routes by itself and does not forward (Kafka's: each shard is
/// the leader of its own partitions). `producer` stamps the batch of an idempotent
/// producer: a retry of a batch appended before answers its original offsets.
pub(crate) async fn append_located(
    context: &ShardContext,
    located: &Located,
    expected_end: Option<Offset>,
    records: &[RecordInput<'_>],
    producer: Option<ProducerStamp>,
) -> Result<AppendResult, Failure> {
    ensure_serving(context)?;
    ensure_owned(context, located)?;
    append_local(context, located, expected_end, records, producer).await
}

async fn append_local(
    context: &ShardContext,
    located: &Located,
    expected_end: Option<Offset>,
    records: &[RecordInput<'_>],
    producer: Option<ProducerStamp>,
) -> Result<AppendResult, Failure> {
    let started = std::time::Instant::now();
    let outcome = context
        .shard
        .append_as(located.partition_id, expected_end, records, producer)
        .await;
    count_append(&context.metrics, records, &outcome, started);
    match outcome {
        Ok(AppendOutcome::Appended {
            base_offset,
            record_count,
        }) => Ok(AppendResult::Appended {
            partition: located.partition_index,
            base_offset,
            record_count,
            duplicate: false,
        }),
        Ok(AppendOutcome::Duplicate {
            base_offset,
            record_count,
        }) => Ok(AppendResult::Appended {
            partition: located.partition_index,
            base_offset,
            record_count,
            duplicate: true,
        }),
        Ok(AppendOutcome::ConditionFailed(conflict)) => Ok(AppendResult::ConditionFailed {
            partition: located.partition_index,
            conflict,
        }),
        Err(append_error) => {
            let kind = match &append_error {
                AppendError::UnknownPartition(_) => FailureKind::UnknownPartition,
                AppendError::InvalidBatch(
                    cairn_engine::core::record::EncodeError::BatchTooLarge { .. },
                ) => FailureKind::TooLarge,
                AppendError::InvalidBatch(_) => FailureKind::BadRequest,
                AppendError::Storage(_) => FailureKind::StorageFailure,
                AppendError::ShuttingDown => FailureKind::ShuttingDown,
                AppendError::Producer(producer_error) => FailureKind::Producer(*producer_error),
            };
            Err(Failure::new(kind, append_error.to_string()))
        }
    }
}

/// Counts one append the owning shard took, by outcome, in its metrics.
fn count_append(
    metrics: &ShardMetrics,
    records: &[RecordInput<'_>],
    outcome: &Result<AppendOutcome, AppendError>,
    started: std::time::Instant,
) {
    metrics
        .append_latency_us
        .observe_duration_us(started.elapsed());
    ShardMetrics::add(&metrics.append_requests, 1);
    match outcome {
        Ok(AppendOutcome::Appended { record_count, .. }) => {
            ShardMetrics::add(&metrics.appends_acknowledged, 1);
            ShardMetrics::add(&metrics.appended_records, u64::from(*record_count));
            let bytes: usize = records
                .iter()
                .map(|record| record.key.len() + record.value.len())
                .sum();
            ShardMetrics::add(
                &metrics.appended_bytes,
                u64::try_from(bytes).unwrap_or(u64::MAX),
            );
        }
        Ok(AppendOutcome::Duplicate { .. }) => {
            ShardMetrics::add(&metrics.appends_acknowledged, 1);
        }
        Ok(AppendOutcome::ConditionFailed(Conflict::EndOffset { .. })) => {
            ShardMetrics::add(&metrics.conflicts_end_offset, 1);
        }
        Ok(AppendOutcome::ConditionFailed(Conflict::Key { .. })) => {
            ShardMetrics::add(&metrics.conflicts_key, 1);
        }
        Err(_) => ShardMetrics::add(&metrics.append_failures, 1),
    }
}

/// Reads records of partition `partition` of `topic` from offset `from`, at most about
/// `size_bytes_max` (and `FETCH_SIZE_BYTES_MAX`) of them, first waiting up to `wait_max`
/// (and `fetch_wait_max`) for one when none is synced there. The wait also ends when the
/// server starts shutting down or `hung_up` completes (the client stopped sending, so
/// waiting longer helps nobody); a forwarded fetch waits out its time on the owner.
pub(crate) async fn fetch(
    context: &ShardContext,
    topic: &str,
    partition: u32,
    from: Offset,
    size_bytes_max: u32,
    wait_max: Duration,
    hung_up: impl Future<Output = ()>,
) -> Result<FetchResult, Failure> {
    ensure_serving(context)?;
    let topic = routing::topic(&context.shard, topic)?;
    let located = routing::locate(&topic, partition, context.config.shard_count)?;
    if located.owner == context.shard_id {
        return fetch_local(context, &located, from, size_bytes_max, wait_max, hung_up).await;
    }
    let request = Forwarded::Fetch {
        located,
        from,
        size_bytes_max,
        wait_max,
    };
    match forward(context, located.owner, request).await? {
        ForwardedResult::Fetch(result) => result.map(FetchResult::from),
        _ => Err(mismatched_reply()),
    }
}

/// Reads `located`, a partition this shard owns, as `fetch` does, for a front end that
/// routes by itself and does not forward.
pub(crate) async fn fetch_located(
    context: &ShardContext,
    located: &Located,
    from: Offset,
    size_bytes_max: u32,
    wait_max: Duration,
    hung_up: impl Future<Output = ()>,
) -> Result<FetchResult, Failure> {
    ensure_serving(context)?;
    ensure_owned(context, located)?;
    fetch_local(context, located, from, size_bytes_max, wait_max, hung_up).await
}

async fn fetch_local(
    context: &ShardContext,
    located: &Located,
    from: Offset,
    size_bytes_max: u32,
    wait_max: Duration,
    hung_up: impl Future<Output = ()>,
) -> Result<FetchResult, Failure> {
    let wait = wait_max.min(context.config.fetch_wait_max);
    let (_, synced_end) = context
        .shard
        .end_offsets(located.partition_id)
        .map_err(|e| read_failure(&e))?;
    // Beyond the synced end is an answer now, not after a wait: no wait makes it valid
    // sooner than the records before it are synced.
    if from > synced_end {
        return Err(read_failure(&ReadError::OffsetOutOfRange {
            requested: from.0,
            synced_end: synced_end.0,
        }));
    }
    if from == synced_end && !wait.is_zero() {
        // Shutdown ends the wait too: the connection (or, forwarded, another shard's) must
        // drain, and an answer with what is synced so far is a correct one.
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
            let hung_up = async {
                hung_up.await;
                Ok(())
            };
            futures_lite::future::or(futures_lite::future::or(waiting, stopped), hung_up)
                .await
                .map_err(|e| read_failure(&e))?;
        }
    }
    let size_bytes_max = (size_bytes_max as usize).min(FETCH_SIZE_BYTES_MAX);
    let fetched = context
        .shard
        .fetch(located.partition_id, from, size_bytes_max)
        .await
        .map_err(|e| read_failure(&e))?;
    Ok(FetchResult {
        partition: located.partition_index,
        from,
        synced_end: fetched.synced_end,
        records: FetchedRecords::Batches(fetched),
    })
}

/// The latest record of `key` in its partition of `topic` (or partition `partition`):
/// only synced records unless `include_appended`.
pub(crate) async fn read_key(
    context: &ShardContext,
    topic: &str,
    partition: Option<u32>,
    key: &[u8],
    include_appended: bool,
) -> Result<ReadKeyResult, Failure> {
    ensure_serving(context)?;
    let topic = routing::topic(&context.shard, topic)?;
    let located = routing::locate_key(&topic, partition, key, context.config.shard_count)?;
    if located.owner == context.shard_id {
        return read_key_local(context, &located, key, include_appended).await;
    }
    let request = Forwarded::ReadKey {
        located,
        key: key.to_vec(),
        include_appended,
    };
    match forward(context, located.owner, request).await? {
        ForwardedResult::ReadKey(result) => result,
        _ => Err(mismatched_reply()),
    }
}

async fn read_key_local(
    context: &ShardContext,
    located: &Located,
    key: &[u8],
    include_appended: bool,
) -> Result<ReadKeyResult, Failure> {
    let record = context
        .shard
        .read_key(located.partition_id, key, include_appended)
        .await
        .map_err(|e| read_failure(&e))?;
    Ok(ReadKeyResult {
        partition: located.partition_index,
        record,
    })
}

/// Up to `record_count_max` (and `KEY_HISTORY_RECORD_COUNT_MAX`) records of `key`, newest
/// first, about `FETCH_SIZE_BYTES_MAX` of them at most, from its latest synced record or
/// from `from_offset` (which must hold a synced record of `key`: a previous page's cursor).
pub(crate) async fn key_history(
    context: &ShardContext,
    topic: &str,
    partition: Option<u32>,
    key: &[u8],
    from_offset: Option<Offset>,
    record_count_max: u32,
) -> Result<KeyHistoryResult, Failure> {
    ensure_serving(context)?;
    let topic = routing::topic(&context.shard, topic)?;
    let located = routing::locate_key(&topic, partition, key, context.config.shard_count)?;
    if located.owner == context.shard_id {
        return key_history_local(context, &located, key, from_offset, record_count_max).await;
    }
    let request = Forwarded::KeyHistory {
        located,
        key: key.to_vec(),
        from_offset,
        record_count_max,
    };
    match forward(context, located.owner, request).await? {
        ForwardedResult::KeyHistory(result) => result,
        _ => Err(mismatched_reply()),
    }
}

async fn key_history_local(
    context: &ShardContext,
    located: &Located,
    key: &[u8],
    from_offset: Option<Offset>,
    record_count_max: u32,
) -> Result<KeyHistoryResult, Failure> {
    let limit = record_count_max.min(KEY_HISTORY_RECORD_COUNT_MAX);
    let records = context
        .shard
        .key_history(
            located.partition_id,
            key,
            from_offset,
            limit as usize,
            FETCH_SIZE_BYTES_MAX,
        )
        .await
        .map_err(|e| read_failure(&e))?;
    Ok(KeyHistoryResult {
        partition: located.partition_index,
        records,
    })
}

/// Every topic this shard knows and where its partitions live, internal ones left out.
pub(crate) fn metadata(context: &ShardContext) -> Result<MetadataResult, Failure> {
    ensure_serving(context)?;
    let catalog = context.shard.catalog();
    let shard_ports = context.listening.shard_ports.clone();
    let topics = catalog
        .topics()
        .iter()
        .filter(|topic| !offsets::is_internal(&topic.name))
        .map(|topic| placement(topic, &shard_ports, context.config.shard_count))
        .collect();
    Ok(MetadataResult {
        shard_ports,
        topics,
    })
}

/// Creates topic `name` with `partition_count` partitions keeping what `retention` says;
/// answers once every shard knows it, so that the client's next request finds it wherever
/// it lands.
pub(crate) async fn create_topic(
    context: &ShardContext,
    name: &str,
    partition_count: u32,
    retention: RetentionPolicy,
) -> Result<TopicPlacement, Failure> {
    ensure_serving(context)?;
    if offsets::is_internal(name) {
        return Err(internal_topic_failure(name));
    }
    if context.shard_id == ShardId(0) {
        return create_topic_local(context, name, partition_count, retention).await;
    }
    let request = Forwarded::CreateTopic {
        name: name.to_owned(),
        partition_count,
        retention,
    };
    match forward(context, ShardId(0), request).await? {
        ForwardedResult::CreateTopic(result) => result,
        _ => Err(mismatched_reply()),
    }
}

async fn create_topic_local(
    context: &ShardContext,
    name: &str,
    partition_count: u32,
    retention: RetentionPolicy,
) -> Result<TopicPlacement, Failure> {
    // Held until every shard knows: announcements of one topic then reach each shard in
    // the order shard 0 made the changes, so none ends on a stale policy.
    let _announcing = context.mesh.announcing().await;
    let topic = context
        .shard
        .create_topic_with(name, partition_count, retention)
        .map_err(|topic_error| topic_failure(&topic_error))?;
    announce_topic(context, &topic).await?;
    tracing::info!(
        topic = topic.name,
        partitions = topic.partition_count,
        retention_ms = topic.retention.ms,
        retention_bytes = topic.retention.bytes,
        "topic created"
    );
    Ok(placement(
        &topic,
        &context.listening.shard_ports,
        context.config.shard_count,
    ))
}

/// Changes topic `name`'s retention (`change` applied to its current policy, on shard 0);
/// answers once every shard applies it. With `validate_only` nothing changes: the answer is
/// the topic as it would be.
pub(crate) async fn alter_topic_retention(
    context: &ShardContext,
    name: &str,
    change: RetentionChange,
    validate_only: bool,
) -> Result<TopicPlacement, Failure> {
    ensure_serving(context)?;
    if offsets::is_internal(name) {
        return Err(internal_topic_failure(name));
    }
    if context.shard_id == ShardId(0) {
        return alter_topic_retention_local(context, name, change, validate_only).await;
    }
    let request = Forwarded::AlterRetention {
        name: name.to_owned(),
        change,
        validate_only,
    };
    match forward(context, ShardId(0), request).await? {
        ForwardedResult::AlterRetention(result) => result,
        _ => Err(mismatched_reply()),
    }
}

async fn alter_topic_retention_local(
    context: &ShardContext,
    name: &str,
    change: RetentionChange,
    validate_only: bool,
) -> Result<TopicPlacement, Failure> {
    let _announcing = context.mesh.announcing().await;
    let current = context
        .shard
        .topic(name)
        .ok_or_else(|| topic_failure(&TopicError::Unknown(name.to_owned())))?;
    let retention = change.apply(current.retention);
    let topic = if validate_only {
        cairn_engine::io::data_dir::validate_retention(retention)
            .map_err(|topic_error| topic_failure(&topic_error))?;
        cairn_engine::Topic {
            retention,
            ..current
        }
    } else {
        let topic = context
            .shard
            .set_topic_retention(name, retention)
            .map_err(|topic_error| topic_failure(&topic_error))?;
        announce_topic(context, &topic).await?;
        tracing::info!(
            topic = topic.name,
            retention_ms = topic.retention.ms,
            retention_bytes = topic.retention.bytes,
            "topic retention changed"
        );
        topic
    };
    Ok(placement(
        &topic,
        &context.listening.shard_ports,
        context.config.shard_count,
    ))
}

fn topic_failure(topic_error: &TopicError) -> Failure {
    let kind = match topic_error {
        TopicError::Exists(_) => FailureKind::TopicExists,
        TopicError::Unknown(_) => FailureKind::UnknownTopic,
        TopicError::InvalidName { .. } | TopicError::BadPartitionCount { .. } => {
            FailureKind::BadRequest
        }
        TopicError::InvalidRetention { .. } => FailureKind::InvalidConfig,
        TopicError::NotCatalogOwner | TopicError::Contradicts { .. } => FailureKind::Internal,
        TopicError::Storage(_) => FailureKind::StorageFailure,
    };
    Failure::new(kind, topic_error.to_string())
}

/// Tells every other shard the topic as shard 0's catalog now holds it, and waits until
/// each knows it.
async fn announce_topic(
    context: &ShardContext,
    topic: &cairn_engine::Topic,
) -> Result<(), Failure> {
    context
        .mesh
        .broadcast_topic(topic)
        .await
        .map_err(|mesh_error| {
            let failure = mesh_failure(&mesh_error);
            Failure::new(
                failure.kind,
                format!(
                    "topic {} is in the catalog, but {}",
                    topic.name, failure.message
                ),
            )
        })
}

/// Allocates a producer id for idempotent appends on this shard: ids carry the shard
/// that allocated them, so no shard has to ask another, and each is durable before it
/// is answered (a crash never hands one out twice).
pub(crate) async fn init_producer(context: &ShardContext) -> Result<(i64, i16), Failure> {
    ensure_serving(context)?;
    let producer_id = context
        .shard
        .allocate_producer_id()
        .await
        .map_err(|error| Failure::new(FailureKind::StorageFailure, error.to_string()))?;
    Ok((producer_id, 0))
}

/// Commits `entries` for `group` on its coordinator shard (`routing::coordinator_shard`),
/// forwarding there if need be: one record per entry in the coordinator's partition of
/// `offsets::OFFSETS_TOPIC`, all in one batch, so the commit is atomic; answers once it is
/// synced. An entry without a commit writes a tombstone (no committed offset). The
/// commit's timestamp is the coordinator's clock. Every entry's topic and partition must
/// exist (else `UnknownTopic` / `UnknownPartition`, and nothing is committed); an empty
/// list is a no-op.
pub(crate) async fn commit_offsets(
    context: &ShardContext,
    group: &str,
    entries: Vec<OffsetCommitEntry>,
) -> Result<(), Failure> {
    ensure_serving(context)?;
    check_group(group)?;
    for entry in &entries {
        if offsets::is_internal(&entry.topic) {
            return Err(internal_topic_failure(&entry.topic));
        }
        let topic = routing::topic(&context.shard, &entry.topic)?;
        routing::locate(&topic, entry.partition, context.config.shard_count)?;
        if let Some(commit) = &entry.commit
            && commit.metadata.len() > offsets::METADATA_SIZE_BYTES_MAX
        {
            return Err(Failure::new(
                FailureKind::TooLarge,
                format!(
                    "metadata of {} bytes for {}/{} exceeds {}",
                    commit.metadata.len(),
                    entry.topic,
                    entry.partition,
                    offsets::METADATA_SIZE_BYTES_MAX
                ),
            ));
        }
    }
    let coordinator = routing::coordinator_shard(group, context.config.shard_count);
    if coordinator == context.shard_id {
        return commit_offsets_local(context, group, &entries).await;
    }
    let request = Forwarded::CommitOffsets {
        group: group.to_owned(),
        entries,
    };
    match forward(context, coordinator, request).await? {
        ForwardedResult::CommitOffsets(result) => result,
        _ => Err(mismatched_reply()),
    }
}

async fn commit_offsets_local(
    context: &ShardContext,
    group: &str,
    entries: &[OffsetCommitEntry],
) -> Result<(), Failure> {
    if entries.is_empty() {
        return Ok(());
    }
    let located = offsets_located(context)?;
    let commit_timestamp_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        });
    let keys: Vec<Vec<u8>> = entries
        .iter()
        .map(|entry| offsets::encode_key(group, &entry.topic, entry.partition))
        .collect();
    let values: Vec<Vec<u8>> = entries
        .iter()
        .map(|entry| {
            entry.commit.as_ref().map_or_else(Vec::new, |commit| {
                offsets::encode_value(&CommittedOffset {
                    offset: commit.offset,
                    leader_epoch: commit.leader_epoch,
                    metadata: commit.metadata.clone(),
                    commit_timestamp_ms,
                })
            })
        })
        .collect();
    let records: Vec<RecordInput<'_>> = entries
        .iter()
        .zip(keys.iter().zip(&values))
        .map(|(entry, (key, value))| RecordInput {
            key,
            value,
            null_value: entry.commit.is_none(),
            ..RecordInput::default()
        })
        .collect();
    match append_local(context, &located, None, &records, None).await? {
        AppendResult::Appended { .. } => {
            // Synced: the index may list these now (a later commit of the same key, also
            // synced, can only come after, as its append comes after).
            let mut index = context.group_offsets.borrow_mut();
            for entry in entries {
                index.apply(group, &entry.topic, entry.partition, entry.commit.is_some());
            }
            Ok(())
        }
        AppendResult::ConditionFailed { .. } => Err(Failure::new(
            FailureKind::Internal,
            "a commit without conditions failed a condition",
        )),
    }
}

/// The latest committed offset of each of `partitions` (topic, partition index) for
/// `group`, in order, read on the group's coordinator shard (forwarded there if need be):
/// `None` where nothing was committed or the commit was deleted. Synced commits only, so
/// nothing returned can be lost in a crash.
pub(crate) async fn fetch_offsets(
    context: &ShardContext,
    group: &str,
    partitions: Vec<(String, u32)>,
) -> Result<Vec<Option<CommittedOffset>>, Failure> {
    ensure_serving(context)?;
    check_group(group)?;
    let coordinator = routing::coordinator_shard(group, context.config.shard_count);
    if coordinator == context.shard_id {
        return fetch_offsets_local(context, group, &partitions).await;
    }
    let request = Forwarded::FetchOffsets {
        group: group.to_owned(),
        partitions,
    };
    match forward(context, coordinator, request).await? {
        ForwardedResult::FetchOffsets(result) => result,
        _ => Err(mismatched_reply()),
    }
}

async fn fetch_offsets_local(
    context: &ShardContext,
    group: &str,
    partitions: &[(String, u32)],
) -> Result<Vec<Option<CommittedOffset>>, Failure> {
    let located = offsets_located(context)?;
    let mut committed = Vec::with_capacity(partitions.len());
    for (topic, partition) in partitions {
        let key = offsets::encode_key(group, topic, *partition);
        let record = context
            .shard
            .read_key(located.partition_id, &key, false)
            .await
            .map_err(|e| read_failure(&e))?;
        let offset = match record {
            None => None,
            Some(record) => offsets::decode_value(&record.value).map_err(|error| {
                Failure::new(
                    FailureKind::Internal,
                    format!("the commit of {group}/{topic}/{partition}: {error}"),
                )
            })?,
        };
        committed.push(offset);
    }
    Ok(committed)
}

/// Every committed offset of `group`, with its topic and partition, on this shard, which
/// must be the group's coordinator (a front end that does not forward checks that first).
pub(crate) async fn fetch_group_offsets(
    context: &ShardContext,
    group: &str,
) -> Result<Vec<((String, u32), CommittedOffset)>, Failure> {
    ensure_serving(context)?;
    ensure_coordinator(context, group)?;
    let partitions = context.group_offsets.borrow().partitions_of(group);
    let committed = fetch_offsets_local(context, group, &partitions).await?;
    Ok(partitions
        .into_iter()
        .zip(committed)
        .filter_map(|(key, committed)| Some((key, committed?)))
        .collect())
}

/// Deletes every committed offset of `group` (one batch of tombstones, synced before it
/// returns) on this shard, which must be the group's coordinator; how many there were.
/// For Kafka's DeleteGroups.
pub(crate) async fn delete_group_offsets(
    context: &ShardContext,
    group: &str,
) -> Result<usize, Failure> {
    ensure_serving(context)?;
    ensure_coordinator(context, group)?;
    let entries: Vec<OffsetCommitEntry> = context
        .group_offsets
        .borrow()
        .partitions_of(group)
        .into_iter()
        .map(|(topic, partition)| OffsetCommitEntry {
            topic,
            partition,
            commit: None,
        })
        .collect();
    commit_offsets_local(context, group, &entries).await?;
    Ok(entries.len())
}

fn ensure_coordinator(context: &ShardContext, group: &str) -> Result<(), Failure> {
    let coordinator = routing::coordinator_shard(group, context.config.shard_count);
    if coordinator != context.shard_id {
        return Err(Failure::new(
            FailureKind::Internal,
            format!(
                "group {group:?} is coordinated by shard {}, not {}",
                coordinator.0, context.shard_id.0
            ),
        ));
    }
    Ok(())
}

/// Reads shard `shard`'s partition of the committed-offsets topic from its start and
/// returns which groups have committed offsets of which partitions. Run once at start,
/// before the shard serves anything (forwarded requests included). Reads every commit
/// ever made to the partition: its cost grows with the commit history, as recovery's
/// does with the log.
pub(crate) async fn load_group_offsets(
    shard: &cairn_engine::Shard,
    shard_count: u16,
) -> Result<GroupOffsetsIndex, String> {
    let topic = shard
        .topic(offsets::OFFSETS_TOPIC)
        .ok_or_else(|| format!("no topic {}", offsets::OFFSETS_TOPIC))?;
    let located = routing::offsets_partition(&topic, shard.id(), shard_count)
        .map_err(|failure| failure.message)?;
    let mut index = GroupOffsetsIndex::default();
    let mut from = Offset(0);
    loop {
        let fetched = shard
            .fetch(located.partition_id, from, FETCH_SIZE_BYTES_MAX)
            .await
            .map_err(|error| error.to_string())?;
        let start = from;
        for batch in &fetched.batches {
            let view = batch.view();
            for record in view.records().filter(|record| record.offset >= start) {
                index.apply_record(record.key, record.value);
                from = record.offset.plus(1);
            }
        }
        if fetched.batches.is_empty() || from >= fetched.synced_end {
            return Ok(index);
        }
    }
}

/// The backup point of every shard, by shard id (docs/DESIGN.md, "Backup"). Shard 0 is
/// asked last: it owns the catalog and saves a topic before any shard learns it, so its
/// catalog names every partition that any earlier shard's point holds data of.
pub(crate) async fn backup_begin(context: &ShardContext) -> Result<Vec<BackupPoint>, Failure> {
    ensure_serving(context)?;
    let shard_count = context.config.shard_count;
    let mut points = Vec::with_capacity(usize::from(shard_count));
    for shard in (1..shard_count).chain([0]) {
        let owner = ShardId(shard);
        let point = if owner == context.shard_id {
            backup_point_local(context)?
        } else {
            match forward(context, owner, Forwarded::BackupPoint).await? {
                ForwardedResult::BackupPoint(point) => point?,
                _ => return Err(mismatched_reply()),
            }
        };
        points.push(point);
    }
    points.sort_by_key(|point| point.shard_id);
    Ok(points)
}

fn backup_point_local(context: &ShardContext) -> Result<BackupPoint, Failure> {
    context
        .shard
        .backup_point()
        .map_err(|error| Failure::new(FailureKind::StorageFailure, error.to_string()))
}

/// Bytes `position .. position + length_bytes` of segment `segment_index` of shard
/// `shard`'s synced log, read on that shard (forwarded there if need be).
pub(crate) async fn backup_read(
    context: &ShardContext,
    shard: ShardId,
    segment_index: u64,
    position: u64,
    length_bytes: u32,
) -> Result<Vec<u8>, Failure> {
    ensure_serving(context)?;
    if shard.0 >= context.config.shard_count {
        return Err(Failure::new(
            FailureKind::BadRequest,
            format!(
                "shard {} does not exist; the server has {}",
                shard.0, context.config.shard_count
            ),
        ));
    }
    if shard == context.shard_id {
        return backup_read_local(context, segment_index, position, length_bytes).await;
    }
    let request = Forwarded::BackupRead {
        segment_index,
        position,
        length_bytes,
    };
    match forward(context, shard, request).await? {
        ForwardedResult::BackupRead(result) => result,
        _ => Err(mismatched_reply()),
    }
}

async fn backup_read_local(
    context: &ShardContext,
    segment_index: u64,
    position: u64,
    length_bytes: u32,
) -> Result<Vec<u8>, Failure> {
    match context
        .shard
        .backup_read(segment_index, position, length_bytes)
        .await
    {
        Ok(read) => Ok(read.to_vec()),
        Err(error @ BackupReadError::Unavailable { .. }) => Err(Failure::new(
            FailureKind::BackupRangeUnavailable,
            error.to_string(),
        )),
        Err(error @ BackupReadError::Storage(_)) => {
            Err(Failure::new(FailureKind::StorageFailure, error.to_string()))
        }
    }
}

/// This shard's partition of the committed-offsets topic.
fn offsets_located(context: &ShardContext) -> Result<Located, Failure> {
    let topic = routing::topic(&context.shard, offsets::OFFSETS_TOPIC)?;
    routing::offsets_partition(&topic, context.shard_id, context.config.shard_count)
}

fn check_group(group: &str) -> Result<(), Failure> {
    if group.len() > offsets::GROUP_ID_SIZE_BYTES_MAX {
        return Err(Failure::new(
            FailureKind::BadRequest,
            format!(
                "a group id of {} bytes exceeds {}",
                group.len(),
                offsets::GROUP_ID_SIZE_BYTES_MAX
            ),
        ));
    }
    Ok(())
}

fn internal_topic_failure(topic: &str) -> Failure {
    Failure::new(
        FailureKind::InternalTopic,
        format!("{topic} is internal: clients cannot create or write it"),
    )
}

/// Runs a request another shard moved here. While this shard shuts down, new work is
/// answered `ShuttingDown` (an append already staged gets its real outcome).
pub(crate) async fn serve_forwarded(
    context: &Rc<ShardContext>,
    request: Forwarded,
) -> ForwardedResult {
    let serving = ensure_serving(context);
    match request {
        Forwarded::Append {
            located,
            expected_end,
            records,
            producer,
        } => ForwardedResult::Append(match serving {
            Err(failure) => Err(failure),
            Ok(()) => {
                let headers: Vec<Vec<RecordHeader<'_>>> = records
                    .iter()
                    .map(|record| {
                        record
                            .headers
                            .iter()
                            .map(|(name, value)| RecordHeader { name, value })
                            .collect()
                    })
                    .collect();
                let inputs: Vec<RecordInput<'_>> = records
                    .iter()
                    .zip(&headers)
                    .map(|(record, headers)| RecordInput {
                        key: &record.key,
                        value: &record.value,
                        headers,
                        condition: record.condition,
                        timestamp_ms: record.timestamp_ms,
                        null_key: record.null_key,
                        null_value: record.null_value,
                    })
                    .collect();
                append_local(context, &located, expected_end, &inputs, producer).await
            }
        }),
        Forwarded::Fetch {
            located,
            from,
            size_bytes_max,
            wait_max,
        } => ForwardedResult::Fetch(match serving {
            Err(failure) => Err(failure),
            Ok(()) => fetch_local(
                context,
                &located,
                from,
                size_bytes_max,
                wait_max,
                std::future::pending::<()>(),
            )
            .await
            .map(owned_fetch_result),
        }),
        Forwarded::ReadKey {
            located,
            key,
            include_appended,
        } => ForwardedResult::ReadKey(match serving {
            Err(failure) => Err(failure),
            Ok(()) => read_key_local(context, &located, &key, include_appended).await,
        }),
        Forwarded::KeyHistory {
            located,
            key,
            from_offset,
            record_count_max,
        } => ForwardedResult::KeyHistory(match serving {
            Err(failure) => Err(failure),
            Ok(()) => {
                key_history_local(context, &located, &key, from_offset, record_count_max).await
            }
        }),
        Forwarded::CreateTopic {
            name,
            partition_count,
            retention,
        } => ForwardedResult::CreateTopic(match serving {
            Err(failure) => Err(failure),
            Ok(()) => create_topic_local(context, &name, partition_count, retention).await,
        }),
        Forwarded::AlterRetention {
            name,
            change,
            validate_only,
        } => ForwardedResult::AlterRetention(match serving {
            Err(failure) => Err(failure),
            Ok(()) => alter_topic_retention_local(context, &name, change, validate_only).await,
        }),
        Forwarded::CommitOffsets { group, entries } => {
            ForwardedResult::CommitOffsets(match serving {
                Err(failure) => Err(failure),
                Ok(()) => commit_offsets_local(context, &group, &entries).await,
            })
        }
        Forwarded::FetchOffsets { group, partitions } => {
            ForwardedResult::FetchOffsets(match serving {
                Err(failure) => Err(failure),
                Ok(()) => fetch_offsets_local(context, &group, &partitions).await,
            })
        }
        Forwarded::BackupPoint => ForwardedResult::BackupPoint(match serving {
            Err(failure) => Err(failure),
            Ok(()) => backup_point_local(context),
        }),
        Forwarded::BackupRead {
            segment_index,
            position,
            length_bytes,
        } => ForwardedResult::BackupRead(match serving {
            Err(failure) => Err(failure),
            Ok(()) => backup_read_local(context, segment_index, position, length_bytes).await,
        }),
    }
}

/// A fetch's result that can cross the mesh: the records at or after `from`, copied out of
/// the engine's read buffers.
fn owned_fetch_result(result: FetchResult) -> ForwardedFetch {
    let batches = match result.records {
        FetchedRecords::Owned(records) => {
            return ForwardedFetch {
                partition: result.partition,
                from: result.from,
                synced_end: result.synced_end,
                records,
            };
        }
        FetchedRecords::Batches(fetched) => fetched.batches,
    };
    let mut records = Vec::new();
    for batch in &batches {
        let view = batch.view();
        for record in view.records().filter(|record| record.offset >= result.from) {
            records.push(OwnedRecord {
                offset: record.offset,
                timestamp_ms: view.timestamp_ms(),
                prev_key_offset: record.prev_key_offset,
                key: record.key.to_vec(),
                value: record.value.to_vec(),
                headers: record
                    .headers()
                    .map(|header| (header.name.to_vec(), header.value.to_vec()))
                    .collect(),
            });
        }
    }
    ForwardedFetch {
        partition: result.partition,
        from: result.from,
        synced_end: result.synced_end,
        records,
    }
}

fn read_failure(read_error: &ReadError) -> Failure {
    let kind = match read_error {
        ReadError::UnknownPartition(_) => FailureKind::UnknownPartition,
        ReadError::OffsetOutOfRange { .. } => FailureKind::OffsetOutOfRange,
        ReadError::BeforeLogStart { log_start, .. } => FailureKind::BeforeLogStart {
            log_start: Offset(*log_start),
        },
        ReadError::NotKeyRecord { .. } => FailureKind::BadRequest,
        ReadError::Storage(_) => FailureKind::StorageFailure,
    };
    Failure::new(kind, read_error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_below_the_log_start_fails_with_the_first_kept_offset() {
        let failure = read_failure(&ReadError::BeforeLogStart {
            requested: 3,
            log_start: 10,
        });
        assert_eq!(
            failure.kind,
            FailureKind::BeforeLogStart {
                log_start: Offset(10)
            }
        );
        assert!(failure.message.contains("10"), "{}", failure.message);
    }

    #[test]
    fn a_retention_change_applies_limit_by_limit() {
        let current = RetentionPolicy {
            ms: Some(5),
            bytes: Some(7),
        };
        let change = RetentionChange {
            ms: Some(None),
            bytes: None,
        };
        assert_eq!(
            change.apply(current),
            RetentionPolicy {
                ms: None,
                bytes: Some(7)
            }
        );
        assert_eq!(RetentionChange::default().apply(current), current);
        assert_eq!(
            RetentionChange::replace_with(RetentionPolicy::FOREVER).apply(current),
            RetentionPolicy::FOREVER
        );
    }
}
