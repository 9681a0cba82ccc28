//! Every `*_max` of the engine, with the relationships between them asserted at compile
//! time. A limit that protects memory or the format lives here, not beside its first user.

/// Bytes of one block: the unit of O_DIRECT I/O and of group padding (FORMAT.md, Blocks).
pub const BLOCK_SIZE_BYTES: usize = 4096;

/// Longest key accepted in a record.
pub const KEY_SIZE_BYTES_MAX: usize = 4096;

/// Most headers on one record.
pub const RECORD_HEADER_COUNT_MAX: usize = 64;

/// Longest header name.
pub const HEADER_NAME_SIZE_BYTES_MAX: usize = 256;

/// Most records in one batch (one append request).
pub const BATCH_RECORD_COUNT_MAX: usize = 65_536;

/// Largest encoded batch, header included. A batch never spans segments, so it must fit in
/// the smallest segment. 2 MiB, not Kafka's 1 MB, because a Kafka producer's batch is one
/// Cairn batch and Cairn stores a record with more framing than Kafka does (31 bytes
/// before the key against Kafka's ~8 of varints): librdkafka's defaults (batch.size 1 MB,
/// at most 10,000 records) make batches of up to ~1.25 MiB as Cairn counts them, which a
/// 1 MiB limit refused with MESSAGE_TOO_LARGE, all of them, under load.
pub const BATCH_SIZE_BYTES_MAX: usize = 2 * 1024 * 1024;

/// Smallest segment file a data directory may be configured with.
pub const SEGMENT_SIZE_BYTES_MIN: u64 = 2 * 1024 * 1024 + BLOCK_SIZE_BYTES as u64;

/// Largest segment file. Positions inside a segment are `u64`, but the scanner reads a
/// segment in chunks; this bounds a data directory's file sizes to something a human expects.
pub const SEGMENT_SIZE_BYTES_MAX: u64 = 16 * 1024 * 1024 * 1024;

/// Size of a new data directory's first segment when the configured size is larger: each
/// later segment doubles the one before it up to the configured size (`ShardLog::
/// next_segment_size_bytes`), so a first start preallocates megabytes, not the configured
/// size per shard twice over, while a loaded log soon writes full-size segments again.
pub const SEGMENT_SIZE_BYTES_FIRST: u64 = 8 * 1024 * 1024;

/// Largest group (the batches written with one write and one fdatasync). It bounds what a
/// crash can tear, so recovery tells a torn tail from damage by it (FORMAT.md, "Torn tail or
/// damage"): a data directory must never have been written with larger groups.
pub const GROUP_SIZE_BYTES_MAX: usize = 4 * 1024 * 1024;

const _: () = assert!(BATCH_SIZE_BYTES_MAX.is_multiple_of(BLOCK_SIZE_BYTES));
const _: () = assert!(GROUP_SIZE_BYTES_MAX >= BATCH_SIZE_BYTES_MAX);
const _: () = assert!(GROUP_SIZE_BYTES_MAX.is_multiple_of(BLOCK_SIZE_BYTES));
const _: () = assert!(SEGMENT_SIZE_BYTES_MIN.is_multiple_of(BLOCK_SIZE_BYTES as u64));
const _: () = assert!(SEGMENT_SIZE_BYTES_MAX.is_multiple_of(BLOCK_SIZE_BYTES as u64));
const _: () = assert!(KEY_SIZE_BYTES_MAX < BATCH_SIZE_BYTES_MAX);
// The first segment holds the largest group, so growing segments never refuse a group.
const _: () =
    assert!(GROUP_SIZE_BYTES_MAX as u64 <= SEGMENT_SIZE_BYTES_FIRST - BLOCK_SIZE_BYTES as u64);
const _: () = assert!(SEGMENT_SIZE_BYTES_FIRST >= SEGMENT_SIZE_BYTES_MIN);
// A batch never spans segments: the largest one fits after the header block of the smallest.
const _: () =
    assert!(BATCH_SIZE_BYTES_MAX as u64 <= SEGMENT_SIZE_BYTES_MIN - BLOCK_SIZE_BYTES as u64);

/// Largest batch whose duplicate keys are found by scanning the earlier records of the
/// batch (at most 120 key comparisons); larger batches use a scratch hash table.
pub const BATCH_LINEAR_SCAN_RECORD_COUNT_MAX: usize = 16;

/// Largest batch whose duplicate-key scratch table a partition keeps between batches, so
/// that it allocates nothing per batch in the common case, yet one huge batch does not pin
/// its scratch to every partition it ever touched (~17 KiB each at this bound: the table
/// of record indexes and the key slots).
pub const BATCH_SCRATCH_RECORD_COUNT_MAX: usize = 1024;

const _: () = assert!(BATCH_LINEAR_SCAN_RECORD_COUNT_MAX <= BATCH_SCRATCH_RECORD_COUNT_MAX);
const _: () = assert!(BATCH_SCRATCH_RECORD_COUNT_MAX <= BATCH_RECORD_COUNT_MAX);
// A record's index in a batch is reported as a u32 (`Conflict::Key::record_index`).
const _: () = assert!(BATCH_RECORD_COUNT_MAX <= u32::MAX as usize);

/// Batches of one idempotent producer a partition retains to recognise retries: Kafka's
/// number, which its producers rely on (`max.in.flight.requests.per.connection` ≤ 5).
pub const PRODUCER_BATCH_RETAINED_COUNT_MAX: usize = 5;

/// Idempotent producers one partition remembers (`core::producer`). Past it, recording a
/// new producer evicts the one whose latest append is the oldest; an evicted producer's next
/// batch must start at sequence 0. About 150 bytes each, counted with the key index: at
/// most ~150 KiB per partition.
pub const PRODUCER_COUNT_PER_PARTITION_MAX: usize = 1024;

// A producer's retained batch count is kept in a u8.
const _: () = assert!(PRODUCER_BATCH_RETAINED_COUNT_MAX <= u8::MAX as usize);
const _: () = assert!(PRODUCER_BATCH_RETAINED_COUNT_MAX >= 1);
