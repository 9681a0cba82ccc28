//! The sans-I/O core: bytes and state in, decisions out. Never awaits.
//!
//! Nothing here touches files, sockets, executors or clocks (time is an argument), so every
//! decision the engine takes — is this batch valid, does this condition hold, where does the
//! recovered log end — is a plain function that unit tests, proptest and the fuzzer can call
//! in microseconds. `tests/integration/tidy.rs` enforces the rule.

pub mod checkpoint;
pub mod condition;
pub mod key_index;
pub mod limits;
pub mod offset_index;
pub mod partition;
pub mod producer;
pub mod read_cache;
pub mod record;
pub mod recovery;
pub mod retention;
pub mod segment_header;
pub mod segment_index;
pub mod shard_log;

use std::fmt;

/// A record's number within its partition: dense, starting at 0.
///
/// Never a byte position; bytes in a file are a `position`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Offset(pub u64);

impl Offset {
    /// The offset `count` records after this one.
    #[must_use]
    pub fn plus(self, count: u64) -> Offset {
        Offset(
            self.0
                .checked_add(count)
                .expect("offsets are bounded by record counts that fit in u64"),
        )
    }
}

impl fmt::Debug for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Offset({})", self.0)
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A partition's id, unique across all topics of a data directory.
///
/// The owning shard is `partition_id % shard_count` (see `ShardId::owner_of`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct PartitionId(pub u32);

/// A byte position in one segment of a shard's core log: which segment, and where in it.
/// Orders as the log does (segment first).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct SegmentPosition {
    /// The segment's index in the core log.
    pub segment_index: u64,
    /// Bytes from the start of the segment file.
    pub position: u64,
}

/// A core's (executor's) index within the server, `0..shard_count`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct ShardId(pub u16);

impl ShardId {
    /// The shard that owns `partition` when the data directory has `shard_count` shards.
    #[must_use]
    pub fn owner_of(partition: PartitionId, shard_count: u16) -> ShardId {
        assert!(shard_count > 0, "a data directory has at least one shard");
        let shard = partition.0 % u32::from(shard_count);
        ShardId(u16::try_from(shard).expect("a remainder of a u16 divisor fits in u16"))
    }
}

/// What a record's key must look like for an append to be accepted (docs/DESIGN.md §1).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum KeyCondition {
    /// No check.
    Any,
    /// The key has never been written in this partition (pending records included).
    NoKey,
    /// The key has been written at least once.
    KeyExists,
    /// The latest record of the key is at exactly this offset.
    At(Offset),
}

/// One header of a record: a name (e.g. `event-type`) and opaque bytes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RecordHeader<'a> {
    /// The header's name; bytes, usually UTF-8.
    pub name: &'a [u8],
    /// The header's value.
    pub value: &'a [u8],
}

/// One record of an append request, borrowed from the request's buffer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RecordInput<'a> {
    /// The entity this record belongs to; may be empty (then it is still a key: the empty one).
    pub key: &'a [u8],
    /// The payload.
    pub value: &'a [u8],
    /// Optional headers, in order.
    pub headers: &'a [RecordHeader<'a>],
    /// What the key must look like before this record is appended.
    pub condition: KeyCondition,
    /// The producer's time for this record (Kafka's CreateTime), milliseconds since the
    /// Unix epoch; `None`: the server's time at append.
    pub timestamp_ms: Option<i64>,
    /// Kafka's null key: the record has no key (`key` is empty). It is not indexed, has no
    /// `prev_key_offset`, and accepts only `KeyCondition::Any`.
    pub null_key: bool,
    /// Kafka's null value (a tombstone); `value` is empty.
    pub null_value: bool,
}

impl Default for RecordInput<'_> {
    /// An empty record on the empty key, without condition: a base for `..` updates.
    fn default() -> Self {
        RecordInput {
            key: &[],
            value: &[],
            headers: &[],
            condition: KeyCondition::Any,
            timestamp_ms: None,
            null_key: false,
            null_value: false,
        }
    }
}

/// Who sent a batch, for idempotent retries: Kafka's producer id, epoch and the sequence
/// number of the batch's first record (the others follow it, one per record).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ProducerStamp {
    /// Allocated by `Shard::allocate_producer_id`; never reused by a data directory.
    pub producer_id: i64,
    /// Raised by the producer to fence its older incarnations.
    pub epoch: i16,
    /// Sequence of the first record; wraps from `i32::MAX` to 0 as Kafka's do.
    pub base_sequence: i32,
}
