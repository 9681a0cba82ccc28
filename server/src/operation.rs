//! The service's vocabulary: typed results, why an operation failed, and the owned form in
//! which a request crosses to its owning shard and its result comes back.
//!
//! Nothing here knows a protocol: a front end maps its requests to the service's calls and
//! these results to its responses. Everything that crosses the mesh is owned and `Send`
//! (glommio's channel mesh moves it between executors), and is decoded and routed once, on
//! the shard the client reached.

use std::time::Duration;

use cairn_engine::core::condition::Conflict;
use cairn_engine::core::{KeyCondition, RecordInput};
use cairn_engine::io::backup::BackupPoint;
use cairn_engine::{
    Fetched, Offset, OwnedRecord, PartitionId, ProducerError, ProducerStamp, RetentionPolicy,
    ShardId, Topic,
};

use crate::offsets::CommittedOffset;

/// What kind of failure ended an operation; a front end maps each to its protocol's code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailureKind {
    /// The request is malformed or contradicts itself (keys spanning partitions, an
    /// offset out of range, a bad topic name).
    BadRequest,
    /// A batch larger than the engine takes.
    TooLarge,
    /// A read starts beyond the partition's synced end.
    OffsetOutOfRange,
    /// A read starts below the partition's first kept offset: retention removed it.
    BeforeLogStart {
        /// The partition's first kept offset, where a reader can resume.
        log_start: Offset,
    },
    /// No topic of that name.
    UnknownTopic,
    /// The topic has no such partition.
    UnknownPartition,
    /// Topic creation: the name is taken.
    TopicExists,
    /// A topic setting (retention) that is not valid; the message says which.
    InvalidConfig,
    /// A client tried to create or write an internal topic (`offsets::is_internal`).
    InternalTopic,
    /// An idempotent producer's batch does not follow its earlier ones (Kafka's rules).
    Producer(ProducerError),
    /// The shard's storage failed; it acknowledges nothing more (docs/DESIGN.md §3.5).
    StorageFailure,
    /// The server is shutting down, or the owning shard has stopped.
    ShuttingDown,
    /// A backup read outside the shard's synced log.
    BackupRangeUnavailable,
    /// Our own state contradicts itself.
    Internal,
}

/// Why an operation failed, with a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    /// What kind of failure.
    pub(crate) kind: FailureKind,
    /// Says what happened, for logs and error responses.
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(kind: FailureKind, message: impl Into<String>) -> Failure {
        Failure {
            kind,
            message: message.into(),
        }
    }

    /// The answer to any request while the server shuts down.
    pub(crate) fn shutting_down() -> Failure {
        Failure::new(FailureKind::ShuttingDown, "the server is shutting down")
    }
}

/// Where a partition lives: its index in its topic, its global id and its owning shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Located {
    pub(crate) partition_index: u32,
    pub(crate) partition_id: PartitionId,
    pub(crate) owner: ShardId,
}

/// How an append ended that reached the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AppendResult {
    /// The batch is synced at `base_offset..base_offset + record_count`.
    Appended {
        partition: u32,
        base_offset: Offset,
        record_count: u32,
        /// The batch repeated its producer's earlier one, appended then; nothing now.
        duplicate: bool,
    },
    /// A condition did not hold; nothing was appended. An expected outcome.
    ConditionFailed { partition: u32, conflict: Conflict },
}

/// The records a fetch read: batches as the engine read them on this shard, or, when the
/// fetch was forwarded, the records from the asked offset on as owned copies (a batch
/// shares the engine's read buffers, which cannot leave their shard).
pub(crate) enum FetchedRecords {
    Batches(Fetched),
    Owned(Vec<OwnedRecord>),
}

/// What a fetch found.
pub(crate) struct FetchResult {
    pub(crate) partition: u32,
    /// The first offset asked for.
    pub(crate) from: Offset,
    /// The partition's synced end (exclusive) when the fetch was answered.
    pub(crate) synced_end: Offset,
    pub(crate) records: FetchedRecords,
}

/// The latest record of a key, if any.
pub(crate) struct ReadKeyResult {
    pub(crate) partition: u32,
    pub(crate) record: Option<OwnedRecord>,
}

/// A key's records, newest first.
pub(crate) struct KeyHistoryResult {
    pub(crate) partition: u32,
    pub(crate) records: Vec<OwnedRecord>,
}

/// What a forwarded fetch found: its records copied out of the owner's read buffers.
pub(crate) struct ForwardedFetch {
    pub(crate) partition: u32,
    pub(crate) from: Offset,
    pub(crate) synced_end: Offset,
    pub(crate) records: Vec<OwnedRecord>,
}

impl From<ForwardedFetch> for FetchResult {
    fn from(fetched: ForwardedFetch) -> FetchResult {
        FetchResult {
            partition: fetched.partition,
            from: fetched.from,
            synced_end: fetched.synced_end,
            records: FetchedRecords::Owned(fetched.records),
        }
    }
}

/// One partition of a topic, and where its owner listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PartitionPlacement {
    pub(crate) partition: u32,
    pub(crate) partition_id: PartitionId,
    pub(crate) shard: ShardId,
    pub(crate) port: u16,
}

/// A topic and where its partitions live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TopicPlacement {
    pub(crate) name: String,
    pub(crate) partitions: Vec<PartitionPlacement>,
    /// What each partition keeps.
    pub(crate) retention: RetentionPolicy,
}

/// A change to a topic's retention, limit by limit: `None` leaves a limit as it is,
/// `Some(None)` removes it (keep forever), `Some(Some(n))` sets it. Applied on shard 0 to
/// the catalog's current policy, so two changes to different limits both hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RetentionChange {
    pub(crate) ms: Option<Option<u64>>,
    pub(crate) bytes: Option<Option<u64>>,
}

impl RetentionChange {
    /// A change that replaces the whole policy with `retention`.
    pub(crate) fn replace_with(retention: RetentionPolicy) -> RetentionChange {
        RetentionChange {
            ms: Some(retention.ms),
            bytes: Some(retention.bytes),
        }
    }

    /// `current` with this change applied.
    pub(crate) fn apply(&self, current: RetentionPolicy) -> RetentionPolicy {
        RetentionPolicy {
            ms: self.ms.unwrap_or(current.ms),
            bytes: self.bytes.unwrap_or(current.bytes),
        }
    }
}

/// Every topic, and every shard's own port (by shard id).
pub(crate) struct MetadataResult {
    pub(crate) shard_ports: Vec<u16>,
    pub(crate) topics: Vec<TopicPlacement>,
}

/// An append's records, owned so that they can cross to another shard.
pub(crate) struct OwnedRecordInput {
    pub(crate) key: Vec<u8>,
    pub(crate) value: Vec<u8>,
    pub(crate) headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub(crate) condition: KeyCondition,
    pub(crate) timestamp_ms: Option<i64>,
    pub(crate) null_key: bool,
    pub(crate) null_value: bool,
}

impl OwnedRecordInput {
    pub(crate) fn from_input(input: &RecordInput<'_>) -> OwnedRecordInput {
        OwnedRecordInput {
            key: input.key.to_vec(),
            value: input.value.to_vec(),
            headers: input
                .headers
                .iter()
                .map(|header| (header.name.to_vec(), header.value.to_vec()))
                .collect(),
            condition: input.condition,
            timestamp_ms: input.timestamp_ms,
            null_key: input.null_key,
            null_value: input.null_value,
        }
    }
}

/// A new commit of one partition's offset, as a front end received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OffsetToCommit {
    /// The next offset the group will read.
    pub(crate) offset: i64,
    /// The leader epoch the client saw, or -1.
    pub(crate) leader_epoch: i32,
    /// At most `offsets::METADATA_SIZE_BYTES_MAX` bytes.
    pub(crate) metadata: String,
}

/// One partition of a group's commit: a new offset, or `None` to delete its committed
/// offset (a tombstone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OffsetCommitEntry {
    pub(crate) topic: String,
    pub(crate) partition: u32,
    pub(crate) commit: Option<OffsetToCommit>,
}

/// A request decoded and routed on the shard the client reached, moved to the shard that
/// owns its partition (or, for topic creation, the catalog: shard 0).
pub(crate) enum Forwarded {
    Append {
        located: Located,
        expected_end: Option<Offset>,
        records: Vec<OwnedRecordInput>,
        producer: Option<ProducerStamp>,
    },
    Fetch {
        located: Located,
        from: Offset,
        size_bytes_max: u32,
        wait_max: Duration,
    },
    ReadKey {
        located: Located,
        key: Vec<u8>,
        include_appended: bool,
    },
    KeyHistory {
        located: Located,
        key: Vec<u8>,
        from_offset: Option<Offset>,
        record_count_max: u32,
    },
    CreateTopic {
        name: String,
        partition_count: u32,
        retention: RetentionPolicy,
    },
    /// To shard 0, which owns the catalog.
    AlterRetention {
        name: String,
        change: RetentionChange,
        validate_only: bool,
    },
    /// To the group's coordinator shard.
    CommitOffsets {
        group: String,
        entries: Vec<OffsetCommitEntry>,
    },
    /// To the group's coordinator shard.
    FetchOffsets {
        group: String,
        partitions: Vec<(String, u32)>,
    },
    /// To each shard in turn: its backup point.
    BackupPoint,
    /// To the shard whose segment is read.
    BackupRead {
        segment_index: u64,
        position: u64,
        length_bytes: u32,
    },
}

/// The owner's answer to a `Forwarded`, of the same kind.
pub(crate) enum ForwardedResult {
    Append(Result<AppendResult, Failure>),
    Fetch(Result<ForwardedFetch, Failure>),
    ReadKey(Result<ReadKeyResult, Failure>),
    KeyHistory(Result<KeyHistoryResult, Failure>),
    CreateTopic(Result<TopicPlacement, Failure>),
    AlterRetention(Result<TopicPlacement, Failure>),
    CommitOffsets(Result<(), Failure>),
    FetchOffsets(Result<Vec<Option<CommittedOffset>>, Failure>),
    BackupPoint(Result<BackupPoint, Failure>),
    BackupRead(Result<Vec<u8>, Failure>),
}

/// The placement of `topic`'s partitions: each one's owner among `shard_count` shards and
/// that shard's port.
pub(crate) fn placement(topic: &Topic, shard_ports: &[u16], shard_count: u16) -> TopicPlacement {
    let partitions = (0..topic.partition_count)
        .filter_map(|index| {
            let partition_id = topic.partition_id(index)?;
            let shard = ShardId::owner_of(partition_id, shard_count);
            let port = shard_ports.get(usize::from(shard.0)).copied()?;
            Some(PartitionPlacement {
                partition: index,
                partition_id,
                shard,
                port,
            })
        })
        .collect();
    TopicPlacement {
        name: topic.name.clone(),
        partitions,
        retention: topic.retention,
    }
}
