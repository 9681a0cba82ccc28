//! The engine's error types. Expected outcomes (a failed condition) are values in
//! `AppendOutcome`, not errors; these carry only what went wrong.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::core::PartitionId;
use crate::core::partition::RecoveryError;
use crate::core::record::{DecodeError, EncodeError};
use crate::core::segment_header::{SegmentHeader, SegmentHeaderError};

/// A failed write, sync, read or file operation. Clone so that every append waiting on a
/// failed group can be told the same thing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{operation} {path}: {message} (errno {errno:?})", path = .path.display())]
pub struct StorageError {
    /// What we were doing: "write", "fdatasync", "read", "open", ...
    pub operation: &'static str,
    /// The file or directory involved.
    pub path: PathBuf,
    /// The OS error number when there is one.
    pub errno: Option<i32>,
    /// The error's text.
    pub message: String,
}

impl StorageError {
    /// Wraps an I/O error with what we were doing and where.
    pub fn from_io(operation: &'static str, path: &Path, error: &io::Error) -> Self {
        StorageError {
            operation,
            path: path.to_path_buf(),
            errno: error.raw_os_error(),
            message: error.to_string(),
        }
    }

    /// Wraps a glommio error, keeping the OS error number (glommio's own conversion to
    /// `io::Error` drops it, and ENOSPC must stay distinguishable from EIO).
    pub fn from_glommio(
        operation: &'static str,
        path: &Path,
        error: glommio::GlommioError<()>,
    ) -> Self {
        let errno = match &error {
            glommio::GlommioError::IoError(source)
            | glommio::GlommioError::EnhancedIoError { source, .. } => source.raw_os_error(),
            _ => None,
        };
        StorageError {
            operation,
            path: path.to_path_buf(),
            errno,
            message: error.to_string(),
        }
    }

    /// Bytes read back from disk did not verify.
    pub fn corrupt(path: &Path, position: u64, error: DecodeError) -> Self {
        StorageError {
            operation: "verify",
            path: path.to_path_buf(),
            errno: None,
            message: format!("batch at position {position} does not verify: {error}"),
        }
    }
}

/// Why an append could not be performed. A failed condition is not an error: see
/// `AppendOutcome::ConditionFailed`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    /// The partition does not exist on this shard.
    #[error("unknown partition {0:?}")]
    UnknownPartition(PartitionId),
    /// The batch breaks a limit (empty, too many records, key too long, too large).
    #[error("invalid batch: {0}")]
    InvalidBatch(#[from] EncodeError),
    /// The shard's storage failed; this shard accepts no more work (docs/DESIGN.md §3.5).
    #[error("storage failure: {0}")]
    Storage(StorageError),
    /// The shard is closing and takes no new appends.
    #[error("shutting down")]
    ShuttingDown,
    /// The batch's producer stamp does not follow the producer's earlier batches; nothing
    /// was appended. Answered at once.
    #[error("producer: {0}")]
    Producer(ProducerError),
}

/// Why an idempotent producer's batch was refused (Kafka's rules, KIP-98).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProducerError {
    /// The batch's epoch is older than the producer's latest on this partition: a newer
    /// incarnation of the producer has taken over (Kafka's `INVALID_PRODUCER_EPOCH`).
    #[error("producer {producer_id} epoch {epoch} is fenced by epoch {current_epoch}")]
    Fenced {
        producer_id: i64,
        epoch: i16,
        current_epoch: i16,
    },
    /// The batch's first sequence is not the one after the producer's latest batch, nor
    /// one of its retained batches (Kafka's `OUT_OF_ORDER_SEQUENCE_NUMBER`).
    #[error("producer {producer_id}: sequence {base_sequence}, expected {expected_sequence}")]
    OutOfOrder {
        producer_id: i64,
        base_sequence: i32,
        expected_sequence: i32,
    },
}

/// Why a read could not be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// The partition does not exist on this shard.
    #[error("unknown partition {0:?}")]
    UnknownPartition(PartitionId),
    /// The requested offset lies beyond the partition's durable end.
    #[error("offset {requested} is out of range: the partition's synced end is {synced_end}")]
    OffsetOutOfRange {
        /// The offset asked for.
        requested: u64,
        /// The partition's durable end (exclusive).
        synced_end: u64,
    },
    /// The requested offset lies below the partition's first kept offset: retention
    /// removed it. Kafka's `OFFSET_OUT_OF_RANGE`; a consumer resets to `log_start`.
    #[error(
        "offset {requested} was removed by retention: the partition's first kept offset is {log_start}"
    )]
    BeforeLogStart {
        /// The offset asked for.
        requested: u64,
        /// The partition's first kept offset.
        log_start: u64,
    },
    /// A key history was asked to start at an offset that holds a record of another key.
    #[error("offset {offset} holds a record of another key, not of the key asked for")]
    NotKeyRecord {
        /// The offset asked for.
        offset: u64,
    },
    /// Reading failed, or what was read does not verify.
    #[error("storage failure: {0}")]
    Storage(StorageError),
}

/// Why a data directory or one of its shards could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// A file operation failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A checkpoint does not fit the log it sits beside; opening retries without it, so
    /// this never reaches a caller of `open_shard` (docs/DESIGN.md §3.7).
    #[error("checkpoint does not match {path}: {problem}", path = .path.display())]
    CheckpointMismatch {
        /// The segment it was checked against.
        path: PathBuf,
        /// How it does not match.
        problem: String,
    },
    /// Retention rewrote a segment, so only a checkpoint holds what the removed batches
    /// left (partitions' ends, keys, producers), and no checkpoint could be used: a scan
    /// of what is left would give offsets out again and forget keys. The shard does not
    /// open; the checkpoints' problems were logged.
    #[error(
        "{path} was rewritten by retention and no usable checkpoint remains: the log          without its removed history cannot be recovered by a scan",
        path = .path.display()
    )]
    CheckpointRequired {
        /// The first rewritten segment.
        path: PathBuf,
    },
    /// `cairn.meta` or `topics.meta` is malformed.
    #[error("{path}: {problem}", path = .path.display())]
    BadMetadata {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// The directory was created with another shard count; opening it with this one would
    /// orphan partitions.
    #[error("data directory has {actual} shards, configured for {expected}")]
    ShardCountMismatch {
        /// The configured shard count.
        expected: u16,
        /// The count recorded in the data directory.
        actual: u16,
    },
    /// The directory was written by an unknown format version.
    #[error(
        "data directory format version {actual} is not supported (this build reads {supported})"
    )]
    UnsupportedFormat {
        /// The version found.
        actual: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// A segment's header names another shard, index or shard count.
    #[error("segment {path}: {error}", path = .path.display())]
    BadSegmentHeader {
        /// The segment file.
        path: PathBuf,
        /// What is wrong.
        error: SegmentHeaderError,
    },
    /// A segment or a valid batch in it contradicts what the data directory says; the log
    /// cannot be trusted without a human looking at it.
    #[error("segment {path} position {position}: {problem}", path = .path.display())]
    Inconsistent {
        /// The segment file.
        path: PathBuf,
        /// Position of the batch (0 for the file itself).
        position: u64,
        /// What contradicts what.
        problem: Inconsistency,
    },
    /// Another process (or another `Engine` of this one) holds the data directory. Two
    /// servers on one directory would write their groups over each other's.
    #[error(
        "data directory {path} is in use by another cairn process{holder} (lock held on {lock_path}); \
         stop it first",
        path = .path.display(),
        lock_path = .lock_path.display(),
        holder = .holder_pid.map(|pid| format!(" (pid {pid})")).unwrap_or_default()
    )]
    DataDirInUse {
        /// The data directory.
        path: PathBuf,
        /// The lock file.
        lock_path: PathBuf,
        /// The process id the holder wrote into the lock file, when readable.
        holder_pid: Option<u32>,
    },
    /// The directory is a backup that `cairn backup` did not finish: some of its files may
    /// be missing or short, so serving it could lose acknowledged records.
    #[error(
        "{path} is an incomplete backup (marker {marker} present: `cairn backup` did not \
         finish); take the backup again into an empty directory",
        path = .marker.parent().unwrap_or(.marker).display(),
        marker = .marker.display()
    )]
    IncompleteBackup {
        /// The marker file.
        marker: PathBuf,
    },
    /// A segment is missing between others: the core log has a hole that no crash makes.
    #[error(
        "core log damaged: segment {path} is missing but later segments exist; refusing to \
         open (nothing was changed; see RELIABILITY.md, \"Damage\", and `cairn repair`)",
        path = .path.display()
    )]
    MissingSegment {
        /// Where the segment should be.
        path: PathBuf,
    },
    /// The core log stops at a batch that does not verify, yet valid data lies beyond
    /// where one torn write could reach: damage to synced data, not a torn tail.
    #[error(
        "core log damaged: the log stops at {path} position {position} ({reason}; the last \
         valid batch ends at {valid_end}), but a valid batch of partition {found_partition} (offsets {found_offsets_start}..{found_offsets_end}) \
         lies at {found_path} position {found_position}, beyond what a torn write can explain; \
         refusing to open (nothing was changed; see RELIABILITY.md, \"Damage\", and \
         `cairn repair`)",
        path = .path.display(),
        found_path = .found_path.display()
    )]
    Damaged {
        /// The segment the valid log ends in.
        path: PathBuf,
        /// Where the damage is: the first position after the last valid batch (and its zero
        /// padding) that does not hold the next one.
        position: u64,
        /// Position just after the last valid batch.
        valid_end: u64,
        /// Why the bytes there are not the next batch.
        reason: String,
        /// The segment holding the valid batch found beyond.
        found_path: PathBuf,
        /// Its position.
        found_position: u64,
        /// Its partition.
        found_partition: u32,
        /// Its first offset.
        found_offsets_start: u64,
        /// Its end offset (exclusive).
        found_offsets_end: u64,
    },
    /// A segment before the checkpoint a retained log opens from (so not scanned at open)
    /// holds a batch or index entry that does not verify: found by `cairn check`.
    #[error("segment {path} position {position}: {problem}", path = .path.display())]
    CoveredDamage {
        /// The segment or index file.
        path: PathBuf,
        /// Where in it.
        position: u64,
        /// What does not verify.
        problem: String,
    },
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    BadConfig(String),
}

/// What a segment contradicts (`OpenError::Inconsistent`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Inconsistency {
    /// A valid batch of a partition no topic of the catalog has.
    #[error("valid batch for partition {} that the topic catalog does not know", .0.0)]
    UnknownPartition(PartitionId),
    /// A valid batch contradicts the log before it (offsets, `prev_key_offset`s).
    #[error(transparent)]
    Contradiction(#[from] RecoveryError),
    /// The segment's header names another shard, shard count or index.
    #[error("segment header {found:?} does not match {expected:?}")]
    HeaderMismatch {
        /// What the header says.
        found: SegmentHeader,
        /// What this shard expects.
        expected: SegmentHeader,
    },
    /// The file is shorter than its header says.
    #[error("file holds {size_bytes} bytes, header says {header_size_bytes}")]
    Short {
        /// The file's size.
        size_bytes: u64,
        /// The size in its header.
        header_size_bytes: u64,
    },
}

/// Why a topic could not be created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// A topic with this name exists.
    #[error("topic {0:?} already exists")]
    Exists(String),
    /// The name is empty, too long or has characters outside `[A-Za-z0-9._-]`.
    #[error("invalid topic name {name:?}: {problem}")]
    InvalidName {
        /// The name asked for.
        name: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// Partition count out of range.
    #[error("partition count {partition_count} is outside 1..={partition_count_max}")]
    BadPartitionCount {
        /// The count asked for.
        partition_count: u32,
        /// The largest count allowed.
        partition_count_max: u32,
    },
    /// Only shard 0 owns the topic catalog.
    #[error("topics are created and changed on shard 0")]
    NotCatalogOwner,
    /// No topic of this name (changing a topic's settings).
    #[error("no topic named {0:?}")]
    Unknown(String),
    /// A retention limit of 0: it would remove every record as soon as it is written.
    /// Kafka's -1 (no limit) is a `None` limit, never a number.
    #[error("invalid retention: {setting} must be at least 1 (omit it to keep forever)")]
    InvalidRetention {
        /// `retention.ms` or `retention.bytes`.
        setting: &'static str,
    },
    /// A topic announced by shard 0 contradicts one this shard knows: their routing would
    /// disagree. Boxed: a topic is large beside the other variants, and this one is rare.
    #[error("announced topic {announced:?} contradicts known topic {known:?}")]
    Contradicts {
        /// What this shard knows.
        known: Box<crate::io::data_dir::Topic>,
        /// What was announced.
        announced: Box<crate::io::data_dir::Topic>,
    },
    /// Writing the catalog failed.
    #[error("storage failure: {0}")]
    Storage(StorageError),
}

/// Shows a byte string as text when it is printable, else as hex.
pub struct DisplayBytes<'a>(pub &'a [u8]);

impl fmt::Display for DisplayBytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::str::from_utf8(self.0) {
            Ok(text) if !text.chars().any(char::is_control) => write!(f, "{text}"),
            _ => {
                write!(f, "0x")?;
                for byte in self.0 {
                    write!(f, "{byte:02x}")?;
                }
                Ok(())
            }
        }
    }
}
