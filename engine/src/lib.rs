//! Cairn's storage engine: a partitioned, append-only log with conditional appends.
//!
//! **Write path.** A shard (one pinned glommio executor) owns a set of partitions and one
//! core log. An append is checked at once against its partition's state (`core::partition`:
//! end offset and key index, pending records included), encoded into the shard's open group
//! buffer (`core::record`), and waits. The group committer (`io::group_commit`) writes the
//! whole group with one O_DIRECT write and one `fdatasync`, advances each partition's synced
//! watermark and only then acknowledges every append of the group. A failed write or sync
//! poisons the shard: every waiting and later append fails with a storage error.
//!
//! **Recovery path.** Opening a data directory (`io::shard`) reads each shard's segments in
//! order through `core::recovery::RecoveryScanner`, which accepts batches while checksums,
//! the checksum chain and offset continuity hold, and reports where the valid log ends. The
//! accepted batches rebuild partition end offsets, key indexes and offset indexes; the
//! next group is written at the first block boundary after the valid end.
//!
//! `core` is sans-I/O (no glommio, files, sockets or clocks); `io` is the thin shell that
//! moves bytes. Byte layouts live in `FORMAT.md` only.

pub mod core;
pub mod error;
pub mod io;
pub mod sim;

pub use crate::core::retention::RetentionPolicy;
pub use crate::core::{
    KeyCondition, Offset, PartitionId, ProducerStamp, RecordHeader, RecordInput, ShardId,
};
pub use crate::error::{
    AppendError, OpenError, ProducerError, ReadError, StorageError, TopicError,
};
pub use crate::io::data_dir::{Catalog, Topic};
pub use crate::io::fault::{FaultHook, FaultPoint, FaultPolicy};
pub use crate::io::reads::{Fetched, FetchedBatch, OwnedRecord};
pub use crate::io::recovery::RepairReport;
pub use crate::io::shard::{AppendOutcome, Engine, EngineConfig, Shard, ShardStats};
