//! Batches and records: the bytes of FORMAT.md "Batch", encoded and decoded.
//!
//! A batch is the atomic unit of an append: one partition, consecutive offsets, one
//! checksum over all of it. The request path calls [`batch_encoded_len`] first, which checks
//! every limit of `limits.rs`, so that [`encode_batch`] can only fail on a caller's bug.
//! [`decode_batch`] is the only way to read a batch: it validates everything (magic,
//! version, flags, lengths, checksum, each record, each limit) before it hands out a
//! [`BatchView`], so iterating a view's records and headers cannot fail. Decoding never
//! panics and never allocates, whatever the bytes: they come from disk or from a fuzzer.
//!
//! Checksums are CRC-32 (`crc32fast`). Field tables live in FORMAT.md only; the `const`
//! assertions below pin the sizes documented there.
//!
//! The writer writes format version 2 (producer stamp in the batch header; timestamp and
//! null flags per record). The decoder also reads version 1, which segments written before
//! it still hold: a v1 record reads as having the batch's timestamp and neither null key
//! nor null value, a v1 batch as having no producer.

#![deny(clippy::indexing_slicing)]

use std::fmt;
use std::iter::FusedIterator;

use crate::core::limits::{
    BATCH_RECORD_COUNT_MAX, BATCH_SIZE_BYTES_MAX, HEADER_NAME_SIZE_BYTES_MAX, KEY_SIZE_BYTES_MAX,
    RECORD_HEADER_COUNT_MAX,
};
use crate::core::{KeyCondition, Offset, PartitionId, ProducerStamp, RecordHeader, RecordInput};

/// First four bytes of every batch: `CARN` when read as little-endian bytes.
pub const BATCH_MAGIC: u32 = 0x4E52_4143;

/// The format version this code writes. It also reads `FORMAT_VERSION_V1`.
pub const FORMAT_VERSION: u16 = 2;

/// The first format version, still read (FORMAT.md, Version history).
pub const FORMAT_VERSION_V1: u16 = 1;

/// Bytes of a batch header as written (FORMAT.md, Batch header, version 2).
pub const BATCH_HEADER_SIZE_BYTES: usize = 64;

/// Bytes of a version 1 batch header: also the prefix every version shares, which holds
/// all the fields the decoder checks before it needs the rest of the batch.
pub const BATCH_HEADER_V1_SIZE_BYTES: usize = 48;

/// Bytes of a record before its key, as written (FORMAT.md, Record, version 2).
pub const RECORD_FIXED_SIZE_BYTES: usize = 31;

/// Bytes of a version 1 record before its key.
pub const RECORD_V1_FIXED_SIZE_BYTES: usize = 22;

/// Record flag (version 2): the record has Kafka's null key.
pub const RECORD_FLAG_NULL_KEY: u8 = 1 << 0;

/// Record flag (version 2): the record has Kafka's null value (a tombstone).
pub const RECORD_FLAG_NULL_VALUE: u8 = 1 << 1;

/// Every record flag version 2 defines; any other bit is invalid.
const RECORD_FLAGS_DEFINED: u8 = RECORD_FLAG_NULL_KEY | RECORD_FLAG_NULL_VALUE;

/// `producer_id`, `producer_epoch` and `base_sequence` of a batch without a producer.
const PRODUCER_FIELD_NONE: i64 = -1;

/// Bytes of one record header before its name: name length and value length.
pub const RECORD_HEADER_FIXED_SIZE_BYTES: usize = 6;

/// `prev_key_offset` of a record whose key has no earlier record in the partition.
const PREV_KEY_OFFSET_NONE: u64 = u64::MAX;

/// `batch_crc` covers the batch from this position (just after itself) to its end.
const BATCH_CRC_COVERAGE_START_BYTES: usize = 8;

// Field sizes, in FORMAT.md's order, add up to the documented totals.
const _: () = assert!(4 + 4 + 2 + 2 + 4 + 4 + 4 + 8 + 4 + 4 + 8 == BATCH_HEADER_V1_SIZE_BYTES);
const _: () = assert!(BATCH_HEADER_V1_SIZE_BYTES + 8 + 4 + 2 + 2 == BATCH_HEADER_SIZE_BYTES);
const _: () = assert!(4 + 8 + 4 + 4 + 2 == RECORD_V1_FIXED_SIZE_BYTES);
const _: () = assert!(4 + 8 + 8 + 4 + 4 + 2 + 1 == RECORD_FIXED_SIZE_BYTES);
// The producer fields start 8-byte aligned (48) and the header ends so (64), so a
// header read into an aligned buffer has every field at its natural alignment.
const _: () = assert!(BATCH_HEADER_V1_SIZE_BYTES.is_multiple_of(8));
const _: () = assert!(BATCH_HEADER_SIZE_BYTES.is_multiple_of(8));
const _: () = assert!(2 + 4 == RECORD_HEADER_FIXED_SIZE_BYTES);
const _: () = assert!(4 + 4 == BATCH_CRC_COVERAGE_START_BYTES);
// Every length field is wide enough for the largest value its limit allows.
const _: () = assert!(BATCH_SIZE_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(BATCH_RECORD_COUNT_MAX <= u32::MAX as usize);
const _: () = assert!(KEY_SIZE_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(RECORD_HEADER_COUNT_MAX <= u16::MAX as usize);
const _: () = assert!(HEADER_NAME_SIZE_BYTES_MAX <= u16::MAX as usize);
// The smallest batch (one empty record) fits within the limit.
const _: () = assert!(BATCH_HEADER_SIZE_BYTES + RECORD_FIXED_SIZE_BYTES <= BATCH_SIZE_BYTES_MAX);
// A version 1 batch is never larger than the same records written as version 2, so every
// v1 batch on disk is within the limit the v2 writer respects.
const _: () = assert!(BATCH_HEADER_V1_SIZE_BYTES <= BATCH_HEADER_SIZE_BYTES);
const _: () = assert!(RECORD_V1_FIXED_SIZE_BYTES <= RECORD_FIXED_SIZE_BYTES);

/// Metadata of a batch the caller is about to encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchMeta {
    /// The partition every record of the batch belongs to.
    pub partition_id: PartitionId,
    /// Offset of the batch's first record; record `i` gets `base_offset + i`.
    pub base_offset: Offset,
    /// Server time at append, milliseconds since the Unix epoch; also the timestamp of
    /// every record whose `timestamp_ms` is `None`.
    pub timestamp_ms: u64,
    /// `crc` of the previous batch of this core log, 0 for the first (FORMAT.md, Why the
    /// checksum chain).
    pub prev_batch_crc: u32,
    /// The idempotent producer that sent the batch, if any.
    pub producer: Option<ProducerStamp>,
}

/// What [`encode_batch`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodedBatch {
    /// Bytes written at the start of the output buffer; equals [`batch_encoded_len`].
    pub len_bytes: usize,
    /// The batch's checksum: the next batch's `prev_batch_crc`.
    pub crc: u32,
}

/// Why a batch cannot be encoded. Every variant but `BufferTooSmall` is a limit a client
/// request broke; the request path learns it from [`batch_encoded_len`] before changing any
/// state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A batch holds at least one record.
    #[error("a batch needs at least one record")]
    EmptyBatch,
    /// More records than one batch may hold.
    #[error("batch has {record_count} records, at most {record_count_max} allowed")]
    TooManyRecords {
        record_count: usize,
        record_count_max: usize,
    },
    /// A key longer than `KEY_SIZE_BYTES_MAX`.
    #[error("record {record_index}: key of {len_bytes} bytes exceeds {len_bytes_max}")]
    KeyTooLong {
        record_index: usize,
        len_bytes: usize,
        len_bytes_max: usize,
    },
    /// More headers on one record than `RECORD_HEADER_COUNT_MAX`.
    #[error("record {record_index}: {header_count} headers, at most {header_count_max} allowed")]
    TooManyHeaders {
        record_index: usize,
        header_count: usize,
        header_count_max: usize,
    },
    /// A header name longer than `HEADER_NAME_SIZE_BYTES_MAX`.
    #[error(
        "record {record_index}, header {header_index}: name of {len_bytes} bytes exceeds \
         {len_bytes_max}"
    )]
    HeaderNameTooLong {
        record_index: usize,
        header_index: usize,
        len_bytes: usize,
        len_bytes_max: usize,
    },
    /// The encoded batch would exceed `BATCH_SIZE_BYTES_MAX`.
    #[error("batch of {len_bytes} bytes exceeds {len_bytes_max}")]
    BatchTooLarge { len_bytes: u64, len_bytes_max: u64 },
    /// A record with `null_key` has a non-empty key.
    #[error("record {record_index}: null key with a key of {len_bytes} bytes")]
    NullKeyNotEmpty {
        record_index: usize,
        len_bytes: usize,
    },
    /// A record with `null_value` has a non-empty value.
    #[error("record {record_index}: null value with a value of {len_bytes} bytes")]
    NullValueNotEmpty {
        record_index: usize,
        len_bytes: usize,
    },
    /// A record with `null_key` has a condition other than `Any`: a record without a key
    /// has no key history for a condition to test.
    #[error("record {record_index}: a null key accepts only condition Any, not {condition:?}")]
    NullKeyCondition {
        record_index: usize,
        condition: KeyCondition,
    },
    /// A producer stamp with a negative id, epoch or sequence (Kafka reserves -1 for none).
    #[error(
        "producer stamp (id {producer_id}, epoch {epoch}, sequence {base_sequence}) has a \
         negative field"
    )]
    BadProducerStamp {
        producer_id: i64,
        epoch: i16,
        base_sequence: i32,
    },
    /// The output buffer cannot hold the batch.
    #[error("batch needs {needed_bytes} bytes, the buffer has {available_bytes}")]
    BufferTooSmall {
        needed_bytes: usize,
        available_bytes: usize,
    },
}

/// Why bytes could not be read as a batch. They come from disk or a fuzzer, so this is
/// returned, never asserted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The header, or the batch its `length_bytes` announces, extends past the bytes given.
    /// The only variant that more bytes could turn into a valid batch.
    #[error("batch needs {needed_bytes} bytes, {available_bytes} available")]
    Truncated {
        needed_bytes: u64,
        available_bytes: u64,
    },
    /// The first four bytes are not `BATCH_MAGIC`.
    #[error("magic {actual:#010x} is not {expected:#010x}")]
    BadMagic { expected: u32, actual: u32 },
    /// A format version this code cannot read (it reads 1 ..= `expected`).
    #[error("format version {actual} is not supported (this build reads 1..={expected})")]
    UnsupportedVersion { expected: u16, actual: u16 },
    /// Flags other than 0, which no version defines.
    #[error("flags {flags:#06x} are not defined in this format version")]
    BadFlags { flags: u16 },
    /// `length_bytes` below the smallest or above the largest possible batch.
    #[error("batch length {len_bytes} is outside {len_bytes_min}..={len_bytes_max}")]
    LengthOutOfRange {
        len_bytes: u32,
        len_bytes_min: u32,
        len_bytes_max: u32,
    },
    /// The bytes do not match `batch_crc`: torn, stale or corrupt.
    #[error("checksum {actual:#010x} does not match header {expected:#010x}")]
    ChecksumMismatch { expected: u32, actual: u32 },
    /// A reserved header field is not 0.
    #[error("reserved field is {actual:#010x}, not 0")]
    ReservedNotZero { actual: u32 },
    /// The producer fields (version 2) are neither all -1 (no producer) nor all ≥ 0.
    #[error(
        "producer fields (id {producer_id}, epoch {epoch}, sequence {base_sequence}) are \
         neither all -1 nor all non-negative"
    )]
    BadProducer {
        producer_id: i64,
        epoch: i16,
        base_sequence: i32,
    },
    /// `record_count` is 0 or above `BATCH_RECORD_COUNT_MAX`.
    #[error("record count {record_count} is outside 1..={record_count_max}")]
    RecordCountOutOfRange {
        record_count: u32,
        record_count_max: u32,
    },
    /// `base_offset + record_count` does not fit in an offset.
    #[error("{record_count} records from base offset {base_offset} overflow u64")]
    OffsetOverflow {
        base_offset: Offset,
        record_count: u32,
    },
    /// One record's fields are inconsistent.
    #[error("record {record_index}: {fault}")]
    RecordMalformed {
        record_index: u32,
        fault: RecordFault,
    },
    /// The records end before `length_bytes` does.
    #[error("records end at byte {records_end_bytes} of a {len_bytes}-byte batch")]
    RecordsUnderfill {
        records_end_bytes: u32,
        len_bytes: u32,
    },
}

/// What is wrong with one record of a batch (see [`DecodeError::RecordMalformed`]).
/// Byte counts are relative to the record's first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordFault {
    /// The record's fixed fields, or its `record_length_bytes`, extend past the batch.
    #[error("needs {needed_bytes} bytes, {available_bytes} remain in the batch")]
    Truncated {
        needed_bytes: u32,
        available_bytes: u32,
    },
    /// A key, value or header ends past `record_length_bytes`.
    #[error("a field ends at byte {field_end_bytes}, past the record length {record_length_bytes}")]
    FieldsOverrun {
        record_length_bytes: u32,
        field_end_bytes: u64,
    },
    /// The fields end before `record_length_bytes` does.
    #[error(
        "fields end at byte {fields_len_bytes}, before the record length {record_length_bytes}"
    )]
    FieldsUnderfill {
        record_length_bytes: u32,
        fields_len_bytes: u32,
    },
    /// A key longer than `KEY_SIZE_BYTES_MAX`.
    #[error("key of {len_bytes} bytes exceeds {len_bytes_max}")]
    KeyTooLong { len_bytes: u32, len_bytes_max: u32 },
    /// More headers than `RECORD_HEADER_COUNT_MAX`.
    #[error("{header_count} headers, at most {header_count_max} allowed")]
    TooManyHeaders {
        header_count: u16,
        header_count_max: u16,
    },
    /// A header name longer than `HEADER_NAME_SIZE_BYTES_MAX`.
    #[error("header {header_index}: name of {len_bytes} bytes exceeds {len_bytes_max}")]
    HeaderNameTooLong {
        header_index: u16,
        len_bytes: u16,
        len_bytes_max: u16,
    },
    /// A back-pointer that does not point back: following it could loop forever.
    #[error("prev_key_offset {prev_key_offset} is not before the record's offset {offset}")]
    PrevKeyOffsetNotBefore {
        prev_key_offset: Offset,
        offset: Offset,
    },
    /// Record flags (version 2) with a bit no version defines.
    #[error("flags {flags:#04x} are not defined")]
    BadFlags { flags: u8 },
    /// A null key with key bytes.
    #[error("null key with a key of {len_bytes} bytes")]
    NullKeyNotEmpty { len_bytes: u32 },
    /// A null value with value bytes.
    #[error("null value with a value of {len_bytes} bytes")]
    NullValueNotEmpty { len_bytes: u32 },
    /// A null key with a back-pointer: a record without a key has no key history.
    #[error("null key with prev_key_offset {prev_key_offset}")]
    NullKeyWithPrevKeyOffset { prev_key_offset: Offset },
}

/// Checks every limit (limits.rs) and returns the encoded length of the batch. Called by the
/// request path BEFORE any state changes, so that [`encode_batch`] can only fail on a bug.
///
/// # Errors
///
/// The first limit the records break, in record order; `BatchTooLarge` only when every
/// record is within its own limits.
pub fn batch_encoded_len(records: &[RecordInput<'_>]) -> Result<usize, EncodeError> {
    if records.is_empty() {
        return Err(EncodeError::EmptyBatch);
    }
    if records.len() > BATCH_RECORD_COUNT_MAX {
        return Err(EncodeError::TooManyRecords {
            record_count: records.len(),
            record_count_max: BATCH_RECORD_COUNT_MAX,
        });
    }
    let mut size = BatchSize::new();
    for (record_index, record) in records.iter().enumerate() {
        if record.null_key && !record.key.is_empty() {
            return Err(EncodeError::NullKeyNotEmpty {
                record_index,
                len_bytes: record.key.len(),
            });
        }
        if record.null_key && record.condition != KeyCondition::Any {
            return Err(EncodeError::NullKeyCondition {
                record_index,
                condition: record.condition,
            });
        }
        if record.null_value && !record.value.is_empty() {
            return Err(EncodeError::NullValueNotEmpty {
                record_index,
                len_bytes: record.value.len(),
            });
        }
        if record.key.len() > KEY_SIZE_BYTES_MAX {
            return Err(EncodeError::KeyTooLong {
                record_index,
                len_bytes: record.key.len(),
                len_bytes_max: KEY_SIZE_BYTES_MAX,
            });
        }
        if record.headers.len() > RECORD_HEADER_COUNT_MAX {
            return Err(EncodeError::TooManyHeaders {
                record_index,
                header_count: record.headers.len(),
                header_count_max: RECORD_HEADER_COUNT_MAX,
            });
        }
        for (header_index, header) in record.headers.iter().enumerate() {
            if header.name.len() > HEADER_NAME_SIZE_BYTES_MAX {
                return Err(EncodeError::HeaderNameTooLong {
                    record_index,
                    header_index,
                    len_bytes: header.name.len(),
                    len_bytes_max: HEADER_NAME_SIZE_BYTES_MAX,
                });
            }
        }
        size.add_record(record.key.len(), record.value.len());
        for header in record.headers {
            size.add_header(header.name.len(), header.value.len());
        }
    }
    let len_bytes = size.bytes();
    let len_bytes_max = len_u64(BATCH_SIZE_BYTES_MAX);
    if size.is_too_large() {
        return Err(EncodeError::BatchTooLarge {
            len_bytes,
            len_bytes_max,
        });
    }
    Ok(usize::try_from(len_bytes).expect("a length within BATCH_SIZE_BYTES_MAX fits in usize"))
}

/// A batch's encoded size, added up record by record: the one definition of a batch's size,
/// the one `BATCH_SIZE_BYTES_MAX` limits (FORMAT.md, Batch). The wire checks a request with
/// it before the engine sees it, and `batch_encoded_len` is built on it, so the two never
/// disagree: `BATCH_HEADER_SIZE_BYTES` (64) of batch header, then per record
/// `RECORD_FIXED_SIZE_BYTES` (31) plus its key and value, and per header
/// `RECORD_HEADER_FIXED_SIZE_BYTES` (6) plus its name and value. It counts what the writer
/// writes (format version 2); version 1 batches, only ever read, are smaller. Saturating: lengths come from a client and
/// only their comparison with the limit matters once they are absurd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchSize(u64);

impl Default for BatchSize {
    fn default() -> Self {
        Self::new()
    }
}

impl BatchSize {
    /// An empty batch: its header alone.
    #[must_use]
    pub fn new() -> Self {
        BatchSize(len_u64(BATCH_HEADER_SIZE_BYTES))
    }

    /// Adds a record with a key and value of these lengths (its headers: `add_header`).
    pub fn add_record(&mut self, key_len_bytes: usize, value_len_bytes: usize) {
        self.0 = self
            .0
            .saturating_add(len_u64(RECORD_FIXED_SIZE_BYTES))
            .saturating_add(len_u64(key_len_bytes))
            .saturating_add(len_u64(value_len_bytes));
    }

    /// Adds one header of the last record.
    pub fn add_header(&mut self, name_len_bytes: usize, value_len_bytes: usize) {
        self.0 = self
            .0
            .saturating_add(len_u64(RECORD_HEADER_FIXED_SIZE_BYTES))
            .saturating_add(len_u64(name_len_bytes))
            .saturating_add(len_u64(value_len_bytes));
    }

    /// The encoded size in bytes.
    #[must_use]
    pub fn bytes(self) -> u64 {
        self.0
    }

    /// Whether it is over `BATCH_SIZE_BYTES_MAX`.
    #[must_use]
    pub fn is_too_large(self) -> bool {
        self.0 > len_u64(BATCH_SIZE_BYTES_MAX)
    }
}

/// Encoded bytes of one record as version 2 writes it, saturating at `u64::MAX`.
fn record_encoded_len(record: &RecordInput<'_>) -> u64 {
    let mut size = BatchSize(0);
    size.add_record(record.key.len(), record.value.len());
    for header in record.headers {
        size.add_header(header.name.len(), header.value.len());
    }
    size.bytes()
}

fn len_u64(len: usize) -> u64 {
    u64::try_from(len).expect("usize is at most 64 bits on every supported target")
}

/// Checks a producer stamp a client sent: every field non-negative (Kafka's -1 means "no
/// producer", which is `None` here). Called by the request path before any state changes.
///
/// # Errors
///
/// `BadProducerStamp` naming the fields.
pub fn check_producer_stamp(producer: Option<ProducerStamp>) -> Result<(), EncodeError> {
    match producer {
        Some(stamp) if stamp.producer_id < 0 || stamp.epoch < 0 || stamp.base_sequence < 0 => {
            Err(EncodeError::BadProducerStamp {
                producer_id: stamp.producer_id,
                epoch: stamp.epoch,
                base_sequence: stamp.base_sequence,
            })
        }
        _ => Ok(()),
    }
}

/// Encodes header + records into `out[..len]` as format version 2 and returns `len` and the
/// batch crc. No allocation. A record whose `timestamp_ms` is `None` gets
/// `meta.timestamp_ms`.
///
/// `prev_key_offsets[i]` is the offset of the latest earlier record with the key of
/// `records[i]` in this partition (pending records included), `None` for a new key and for
/// a null key.
///
/// # Errors
///
/// Whatever [`batch_encoded_len`] returns, and `BufferTooSmall` if `out` is shorter than
/// the batch.
///
/// # Panics
///
/// If `prev_key_offsets` and `records` differ in length, a previous key offset is not
/// before its record's offset or is given for a null key, or the producer stamp fails
/// [`check_producer_stamp`]: all bugs of the caller.
pub fn encode_batch(
    out: &mut [u8],
    meta: &BatchMeta,
    records: &[RecordInput<'_>],
    prev_key_offsets: &[Option<Offset>],
) -> Result<EncodedBatch, EncodeError> {
    let len_bytes = batch_encoded_len(records)?;
    encode_version(
        out,
        meta,
        records,
        prev_key_offsets,
        FORMAT_VERSION,
        len_bytes,
    )
}

/// Encodes a batch as format version 1, as segments written before version 2 hold it, so
/// tests and fuzz bodies can check that they still read. Records must have no null key or
/// value and `meta` no producer; record timestamps are not written (v1 has none).
///
/// # Errors
///
/// As [`encode_batch`].
///
/// # Panics
///
/// As [`encode_batch`], and on a null flag or a producer, which version 1 cannot hold.
#[cfg(any(test, fuzzing))]
pub fn encode_batch_v1(
    out: &mut [u8],
    meta: &BatchMeta,
    records: &[RecordInput<'_>],
    prev_key_offsets: &[Option<Offset>],
) -> Result<EncodedBatch, EncodeError> {
    assert!(meta.producer.is_none(), "version 1 has no producer fields");
    assert!(
        records
            .iter()
            .all(|record| !record.null_key && !record.null_value),
        "version 1 has no null flags"
    );
    let len_bytes = batch_encoded_len_v1(records)?;
    encode_version(
        out,
        meta,
        records,
        prev_key_offsets,
        FORMAT_VERSION_V1,
        len_bytes,
    )
}

/// What a batch of these records takes as format version 1.
///
/// # Errors
///
/// As [`batch_encoded_len`].
#[cfg(any(test, fuzzing))]
pub fn batch_encoded_len_v1(records: &[RecordInput<'_>]) -> Result<usize, EncodeError> {
    let len_bytes = batch_encoded_len(records)?;
    Ok(len_bytes
        - (BATCH_HEADER_SIZE_BYTES - BATCH_HEADER_V1_SIZE_BYTES)
        - records.len() * (RECORD_FIXED_SIZE_BYTES - RECORD_V1_FIXED_SIZE_BYTES))
}

fn encode_version(
    out: &mut [u8],
    meta: &BatchMeta,
    records: &[RecordInput<'_>],
    prev_key_offsets: &[Option<Offset>],
    format_version: u16,
    len_bytes: usize,
) -> Result<EncodedBatch, EncodeError> {
    assert_eq!(
        prev_key_offsets.len(),
        records.len(),
        "one previous key offset per record"
    );
    assert_eq!(
        check_producer_stamp(meta.producer),
        Ok(()),
        "the request path checked the producer stamp"
    );
    let Some(batch) = out.get_mut(..len_bytes) else {
        return Err(EncodeError::BufferTooSmall {
            needed_bytes: len_bytes,
            available_bytes: out.len(),
        });
    };
    let record_count =
        u32::try_from(records.len()).expect("record count ≤ BATCH_RECORD_COUNT_MAX fits in u32");
    // Panics (a caller's bug) before anything is written if the offsets would overflow.
    let _end_offset = meta.base_offset.plus(u64::from(record_count));
    let is_v2 = format_version == FORMAT_VERSION;
    let batch_timestamp_ms = i64::try_from(meta.timestamp_ms).unwrap_or(i64::MAX);

    let mut writer = Writer { rest: &mut *batch };
    writer.put_u32(BATCH_MAGIC);
    writer.put_u32(0); // batch_crc, filled in once the rest is written
    writer.put_u16(format_version);
    writer.put_u16(0); // flags
    writer.put_u32(u32::try_from(len_bytes).expect("len ≤ BATCH_SIZE_BYTES_MAX fits in u32"));
    writer.put_u32(meta.prev_batch_crc);
    writer.put_u32(meta.partition_id.0);
    writer.put_u64(meta.base_offset.0);
    writer.put_u32(record_count);
    writer.put_u32(0); // reserved
    writer.put_u64(meta.timestamp_ms);
    if is_v2 {
        let (producer_id, epoch, base_sequence) = match meta.producer {
            Some(stamp) => (stamp.producer_id, stamp.epoch, stamp.base_sequence),
            None => (PRODUCER_FIELD_NONE, -1, -1),
        };
        writer.put(&producer_id.to_le_bytes());
        writer.put(&base_sequence.to_le_bytes());
        writer.put(&epoch.to_le_bytes());
        writer.put_u16(0); // reserved
    }

    let mut offset = meta.base_offset;
    for (record, prev_key_offset) in records.iter().zip(prev_key_offsets) {
        let prev_key_offset = match prev_key_offset {
            Some(prev_key_offset) => {
                assert!(
                    *prev_key_offset < offset,
                    "prev_key_offset {prev_key_offset:?} not before its record's offset {offset:?}"
                );
                assert!(!record.null_key, "a null key has no prev_key_offset");
                prev_key_offset.0
            }
            None => PREV_KEY_OFFSET_NONE,
        };
        let mut record_len_bytes = record_encoded_len(record);
        if !is_v2 {
            record_len_bytes -= len_u64(RECORD_FIXED_SIZE_BYTES - RECORD_V1_FIXED_SIZE_BYTES);
        }
        let record_len_bytes = u32::try_from(record_len_bytes)
            .expect("a record within a batch of at most BATCH_SIZE_BYTES_MAX fits in u32");
        writer.put_u32(record_len_bytes);
        writer.put_u64(prev_key_offset);
        if is_v2 {
            let timestamp_ms = record.timestamp_ms.unwrap_or(batch_timestamp_ms);
            writer.put(&timestamp_ms.to_le_bytes());
        }
        writer.put_u32(len_u32(record.key.len()));
        writer.put_u32(len_u32(record.value.len()));
        writer.put_u16(
            u16::try_from(record.headers.len())
                .expect("header count ≤ RECORD_HEADER_COUNT_MAX fits in u16"),
        );
        if is_v2 {
            let mut flags = 0;
            if record.null_key {
                flags |= RECORD_FLAG_NULL_KEY;
            }
            if record.null_value {
                flags |= RECORD_FLAG_NULL_VALUE;
            }
            writer.put(&[flags]);
        }
        writer.put(record.key);
        writer.put(record.value);
        for header in record.headers {
            writer.put_u16(
                u16::try_from(header.name.len())
                    .expect("header name ≤ HEADER_NAME_SIZE_BYTES_MAX fits in u16"),
            );
            writer.put_u32(len_u32(header.value.len()));
            writer.put(header.name);
            writer.put(header.value);
        }
        offset = offset.plus(1);
    }
    assert!(
        writer.rest.is_empty(),
        "batch_encoded_len and encode_batch disagree: {} bytes left",
        writer.rest.len()
    );

    let crc = crc32fast::hash(
        batch
            .get(BATCH_CRC_COVERAGE_START_BYTES..)
            .expect("a batch is longer than its header"),
    );
    batch
        .get_mut(4..BATCH_CRC_COVERAGE_START_BYTES)
        .expect("a batch is longer than its header")
        .copy_from_slice(&crc.to_le_bytes());

    debug_assert_eq!(
        decode_batch(batch).map(|view| (view.len_bytes(), view.crc())),
        Ok((len_bytes, crc)),
        "an encoded batch decodes"
    );
    Ok(EncodedBatch { len_bytes, crc })
}

fn len_u32(len: usize) -> u32 {
    u32::try_from(len).expect("a field within a batch of at most BATCH_SIZE_BYTES_MAX fits in u32")
}

/// Appends little-endian fields to a buffer that `batch_encoded_len` sized exactly.
struct Writer<'b> {
    rest: &'b mut [u8],
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        let (head, tail) = std::mem::take(&mut self.rest)
            .split_at_mut_checked(bytes.len())
            .expect("the buffer was sized by batch_encoded_len");
        head.copy_from_slice(bytes);
        self.rest = tail;
    }

    fn put_u16(&mut self, value: u16) {
        self.put(&value.to_le_bytes());
    }

    fn put_u32(&mut self, value: u32) {
        self.put(&value.to_le_bytes());
    }

    fn put_u64(&mut self, value: u64) {
        self.put(&value.to_le_bytes());
    }
}

/// Reads little-endian fields from the front of a slice; `None` once it runs out.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, tail) = self.rest.split_first_chunk::<N>()?;
        self.rest = tail;
        Some(*head)
    }

    fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }

    fn i16(&mut self) -> Option<i16> {
        self.array().map(i16::from_le_bytes)
    }

    fn i32(&mut self) -> Option<i32> {
        self.array().map(i32::from_le_bytes)
    }

    fn i64(&mut self) -> Option<i64> {
        self.array().map(i64::from_le_bytes)
    }

    fn u8(&mut self) -> Option<u8> {
        self.array().map(|[byte]| byte)
    }

    fn bytes(&mut self, len_bytes: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.rest.split_at_checked(len_bytes)?;
        self.rest = tail;
        Some(head)
    }
}

/// The batch header's fields common to every version (its first 48 bytes), in FORMAT.md's
/// order.
struct BatchHeaderFields {
    magic: u32,
    crc: u32,
    format_version: u16,
    flags: u16,
    len_bytes: u32,
    prev_batch_crc: u32,
    partition_id: u32,
    base_offset: u64,
    record_count: u32,
    reserved: u32,
    timestamp_ms: u64,
}

impl BatchHeaderFields {
    fn parse(header: &[u8; BATCH_HEADER_V1_SIZE_BYTES]) -> Self {
        let mut reader = Reader { rest: header };
        let invariant = "the header array has exactly BATCH_HEADER_V1_SIZE_BYTES";
        let fields = BatchHeaderFields {
            magic: reader.u32().expect(invariant),
            crc: reader.u32().expect(invariant),
            format_version: reader.u16().expect(invariant),
            flags: reader.u16().expect(invariant),
            len_bytes: reader.u32().expect(invariant),
            prev_batch_crc: reader.u32().expect(invariant),
            partition_id: reader.u32().expect(invariant),
            base_offset: reader.u64().expect(invariant),
            record_count: reader.u32().expect(invariant),
            reserved: reader.u32().expect(invariant),
            timestamp_ms: reader.u64().expect(invariant),
        };
        debug_assert!(reader.rest.is_empty(), "{invariant}");
        fields
    }
}

/// The fields version 2 adds after the common header, in FORMAT.md's order.
struct ProducerFields {
    producer_id: i64,
    base_sequence: i32,
    epoch: i16,
    reserved: u16,
}

impl ProducerFields {
    fn parse(fields: &[u8; BATCH_HEADER_SIZE_BYTES - BATCH_HEADER_V1_SIZE_BYTES]) -> Self {
        let mut reader = Reader { rest: fields };
        let invariant = "the producer fields are exactly 16 bytes";
        ProducerFields {
            producer_id: reader.i64().expect(invariant),
            base_sequence: reader.i32().expect(invariant),
            epoch: reader.i16().expect(invariant),
            reserved: reader.u16().expect(invariant),
        }
    }

    /// The stamp, `Ok(None)` for no producer, `Err` for a mix of -1 and other values or
    /// any other negative field.
    fn stamp(&self) -> Result<Option<ProducerStamp>, DecodeError> {
        let none = (
            self.producer_id,
            i64::from(self.epoch),
            i64::from(self.base_sequence),
        ) == (
            PRODUCER_FIELD_NONE,
            PRODUCER_FIELD_NONE,
            PRODUCER_FIELD_NONE,
        );
        if none {
            return Ok(None);
        }
        if self.producer_id < 0 || self.epoch < 0 || self.base_sequence < 0 {
            return Err(DecodeError::BadProducer {
                producer_id: self.producer_id,
                epoch: self.epoch,
                base_sequence: self.base_sequence,
            });
        }
        Ok(Some(ProducerStamp {
            producer_id: self.producer_id,
            epoch: self.epoch,
            base_sequence: self.base_sequence,
        }))
    }
}

/// What a record parser needs to know of its batch.
#[derive(Clone, Copy, Debug)]
struct RecordFormat {
    format_version: u16,
    /// Every record's timestamp in version 1, which has none per record.
    batch_timestamp_ms: i64,
}

impl RecordFormat {
    fn fixed_size_bytes(self) -> usize {
        if self.format_version == FORMAT_VERSION_V1 {
            RECORD_V1_FIXED_SIZE_BYTES
        } else {
            RECORD_FIXED_SIZE_BYTES
        }
    }
}

/// Decodes and FULLY validates the batch at the start of `bytes` (`bytes` may extend past
/// it): magic, version (1 or 2), flags, length, crc, reserved fields, producer fields,
/// record count, offsets, and every record's lengths, flags and limits.
///
/// Zero-copy: the view borrows `bytes`. Never panics, never allocates. Cost: one CRC pass
/// and one walk over the record headers.
///
/// # Errors
///
/// The first check that fails, in the order above. Only [`DecodeError::Truncated`] can turn
/// into success with more bytes; every check before it needs only the first
/// `BATCH_HEADER_V1_SIZE_BYTES` (48), which every version shares.
pub fn decode_batch(bytes: &[u8]) -> Result<BatchView<'_>, DecodeError> {
    let available_bytes = len_u64(bytes.len());
    let Some((header, _)) = bytes.split_first_chunk::<BATCH_HEADER_V1_SIZE_BYTES>() else {
        return Err(DecodeError::Truncated {
            needed_bytes: len_u64(BATCH_HEADER_V1_SIZE_BYTES),
            available_bytes,
        });
    };
    let fields = BatchHeaderFields::parse(header);
    if fields.magic != BATCH_MAGIC {
        return Err(DecodeError::BadMagic {
            expected: BATCH_MAGIC,
            actual: fields.magic,
        });
    }
    let (header_size_bytes, record_fixed_size_bytes) = match fields.format_version {
        FORMAT_VERSION_V1 => (BATCH_HEADER_V1_SIZE_BYTES, RECORD_V1_FIXED_SIZE_BYTES),
        FORMAT_VERSION => (BATCH_HEADER_SIZE_BYTES, RECORD_FIXED_SIZE_BYTES),
        actual => {
            return Err(DecodeError::UnsupportedVersion {
                expected: FORMAT_VERSION,
                actual,
            });
        }
    };
    if fields.flags != 0 {
        return Err(DecodeError::BadFlags {
            flags: fields.flags,
        });
    }
    let len_bytes_min = len_u32(header_size_bytes + record_fixed_size_bytes);
    let len_bytes_max = len_u32(BATCH_SIZE_BYTES_MAX);
    if !(len_bytes_min..=len_bytes_max).contains(&fields.len_bytes) {
        return Err(DecodeError::LengthOutOfRange {
            len_bytes: fields.len_bytes,
            len_bytes_min,
            len_bytes_max,
        });
    }
    let len_bytes =
        usize::try_from(fields.len_bytes).expect("a length ≤ BATCH_SIZE_BYTES_MAX fits in usize");
    let Some(batch) = bytes.get(..len_bytes) else {
        return Err(DecodeError::Truncated {
            needed_bytes: u64::from(fields.len_bytes),
            available_bytes,
        });
    };
    let crc_covered = batch
        .get(BATCH_CRC_COVERAGE_START_BYTES..)
        .expect("len_bytes ≥ the header size was checked");
    let crc = crc32fast::hash(crc_covered);
    if crc != fields.crc {
        return Err(DecodeError::ChecksumMismatch {
            expected: fields.crc,
            actual: crc,
        });
    }
    if fields.reserved != 0 {
        return Err(DecodeError::ReservedNotZero {
            actual: fields.reserved,
        });
    }
    let producer = match batch
        .get(BATCH_HEADER_V1_SIZE_BYTES..)
        .and_then(|rest| rest.first_chunk())
    {
        Some(producer_fields) if fields.format_version == FORMAT_VERSION => {
            let producer_fields = ProducerFields::parse(producer_fields);
            if producer_fields.reserved != 0 {
                return Err(DecodeError::ReservedNotZero {
                    actual: u32::from(producer_fields.reserved),
                });
            }
            producer_fields.stamp()?
        }
        _ => None,
    };
    let record_count_max = len_u32(BATCH_RECORD_COUNT_MAX);
    if !(1..=record_count_max).contains(&fields.record_count) {
        return Err(DecodeError::RecordCountOutOfRange {
            record_count: fields.record_count,
            record_count_max,
        });
    }
    // Offsets run up to `base_offset + record_count` exclusive; rejecting an overflow here
    // keeps `end_offset` and record iteration panic-free.
    if fields
        .base_offset
        .checked_add(u64::from(fields.record_count))
        .is_none()
    {
        return Err(DecodeError::OffsetOverflow {
            base_offset: Offset(fields.base_offset),
            record_count: fields.record_count,
        });
    }

    let format = RecordFormat {
        format_version: fields.format_version,
        batch_timestamp_ms: i64::try_from(fields.timestamp_ms).unwrap_or(i64::MAX),
    };
    let records = batch
        .get(header_size_bytes..)
        .expect("len_bytes ≥ the header size was checked");
    let mut rest = records;
    for record_index in 0..fields.record_count {
        let offset = Offset(fields.base_offset + u64::from(record_index));
        match parse_record(rest, offset, format) {
            Ok((_, tail)) => rest = tail,
            Err(fault) => {
                return Err(DecodeError::RecordMalformed {
                    record_index,
                    fault,
                });
            }
        }
    }
    if !rest.is_empty() {
        return Err(DecodeError::RecordsUnderfill {
            records_end_bytes: fields.len_bytes - len_u32(rest.len()),
            len_bytes: fields.len_bytes,
        });
    }

    Ok(BatchView {
        bytes: batch,
        format,
        header_size_bytes,
        partition_id: PartitionId(fields.partition_id),
        base_offset: Offset(fields.base_offset),
        record_count: fields.record_count,
        timestamp_ms: fields.timestamp_ms,
        prev_batch_crc: fields.prev_batch_crc,
        crc,
        producer,
    })
}

/// Parses the record at the start of `bytes` (the rest of its batch) and returns it with the
/// bytes after it. The one record parser: validation and iteration cannot disagree.
fn parse_record(
    bytes: &[u8],
    offset: Offset,
    format: RecordFormat,
) -> Result<(RecordView<'_>, &[u8]), RecordFault> {
    let available_bytes = len_u32(bytes.len());
    let mut reader = Reader { rest: bytes };
    let fixed_size_bytes = format.fixed_size_bytes();
    let is_v2 = format.format_version == FORMAT_VERSION;
    let truncated_fixed = RecordFault::Truncated {
        needed_bytes: len_u32(fixed_size_bytes),
        available_bytes,
    };
    let (Some(record_length_bytes), Some(prev_key_offset)) = (reader.u32(), reader.u64()) else {
        return Err(truncated_fixed);
    };
    let timestamp_ms = if is_v2 {
        reader.i64().ok_or(truncated_fixed)?
    } else {
        format.batch_timestamp_ms
    };
    let (Some(key_len_bytes), Some(value_len_bytes), Some(header_count)) =
        (reader.u32(), reader.u32(), reader.u16())
    else {
        return Err(truncated_fixed);
    };
    let flags = if is_v2 {
        reader.u8().ok_or(truncated_fixed)?
    } else {
        0
    };
    let record_len = usize::try_from(record_length_bytes).expect("u32 fits in usize");
    let Some((record, after_record)) = bytes.split_at_checked(record_len) else {
        return Err(RecordFault::Truncated {
            needed_bytes: record_length_bytes,
            available_bytes,
        });
    };
    // Ends of fields relative to the record's start, in u64 so that no u32 length overflows.
    let mut field_end_bytes = len_u64(fixed_size_bytes);
    let overrun = |field_end_bytes: u64| RecordFault::FieldsOverrun {
        record_length_bytes,
        field_end_bytes,
    };
    // From here on, fields are read from the record only, so none can run into the next.
    let Some(record_fields) = record.get(fixed_size_bytes..) else {
        return Err(overrun(field_end_bytes));
    };
    let mut reader = Reader {
        rest: record_fields,
    };

    let key_len_bytes_max = len_u32(KEY_SIZE_BYTES_MAX);
    if key_len_bytes > key_len_bytes_max {
        return Err(RecordFault::KeyTooLong {
            len_bytes: key_len_bytes,
            len_bytes_max: key_len_bytes_max,
        });
    }
    let header_count_max =
        u16::try_from(RECORD_HEADER_COUNT_MAX).expect("const-asserted to fit in u16");
    if header_count > header_count_max {
        return Err(RecordFault::TooManyHeaders {
            header_count,
            header_count_max,
        });
    }
    if flags & !RECORD_FLAGS_DEFINED != 0 {
        return Err(RecordFault::BadFlags { flags });
    }
    let null_key = flags & RECORD_FLAG_NULL_KEY != 0;
    if null_key && key_len_bytes != 0 {
        return Err(RecordFault::NullKeyNotEmpty {
            len_bytes: key_len_bytes,
        });
    }
    if null_key && prev_key_offset != PREV_KEY_OFFSET_NONE {
        return Err(RecordFault::NullKeyWithPrevKeyOffset {
            prev_key_offset: Offset(prev_key_offset),
        });
    }
    if flags & RECORD_FLAG_NULL_VALUE != 0 && value_len_bytes != 0 {
        return Err(RecordFault::NullValueNotEmpty {
            len_bytes: value_len_bytes,
        });
    }
    let prev_key_offset = if prev_key_offset == PREV_KEY_OFFSET_NONE {
        None
    } else if prev_key_offset < offset.0 {
        Some(Offset(prev_key_offset))
    } else {
        return Err(RecordFault::PrevKeyOffsetNotBefore {
            prev_key_offset: Offset(prev_key_offset),
            offset,
        });
    };

    field_end_bytes += u64::from(key_len_bytes);
    let key = reader
        .bytes(usize::try_from(key_len_bytes).expect("u32 fits in usize"))
        .ok_or_else(|| overrun(field_end_bytes))?;
    field_end_bytes += u64::from(value_len_bytes);
    let value = reader
        .bytes(usize::try_from(value_len_bytes).expect("u32 fits in usize"))
        .ok_or_else(|| overrun(field_end_bytes))?;

    let headers_bytes = reader.rest;
    let header_name_len_bytes_max =
        u16::try_from(HEADER_NAME_SIZE_BYTES_MAX).expect("const-asserted to fit in u16");
    for header_index in 0..header_count {
        field_end_bytes += len_u64(RECORD_HEADER_FIXED_SIZE_BYTES);
        let (Some(name_len_bytes), Some(header_value_len_bytes)) = (reader.u16(), reader.u32())
        else {
            return Err(overrun(field_end_bytes));
        };
        if name_len_bytes > header_name_len_bytes_max {
            return Err(RecordFault::HeaderNameTooLong {
                header_index,
                len_bytes: name_len_bytes,
                len_bytes_max: header_name_len_bytes_max,
            });
        }
        field_end_bytes += u64::from(name_len_bytes) + u64::from(header_value_len_bytes);
        let header_len_bytes = usize::from(name_len_bytes)
            + usize::try_from(header_value_len_bytes).expect("u32 fits in usize");
        reader
            .bytes(header_len_bytes)
            .ok_or_else(|| overrun(field_end_bytes))?;
    }
    if !reader.rest.is_empty() {
        return Err(RecordFault::FieldsUnderfill {
            record_length_bytes,
            fields_len_bytes: record_length_bytes - len_u32(reader.rest.len()),
        });
    }

    let view = RecordView {
        offset,
        prev_key_offset,
        key,
        value,
        headers_bytes,
        header_count,
        timestamp_ms,
        flags,
    };
    Ok((view, after_record))
}

/// A validated batch, borrowed from the bytes it was decoded from. Only [`decode_batch`]
/// makes one.
#[derive(Clone, Copy)]
pub struct BatchView<'a> {
    bytes: &'a [u8],
    format: RecordFormat,
    header_size_bytes: usize,
    partition_id: PartitionId,
    base_offset: Offset,
    record_count: u32,
    timestamp_ms: u64,
    prev_batch_crc: u32,
    crc: u32,
    producer: Option<ProducerStamp>,
}

impl<'a> BatchView<'a> {
    /// The format version the batch was written in: 1 or 2 (`FORMAT_VERSION`).
    #[must_use]
    pub fn format_version(&self) -> u16 {
        self.format.format_version
    }

    /// The idempotent producer that sent the batch; always `None` in version 1.
    #[must_use]
    pub fn producer(&self) -> Option<ProducerStamp> {
        self.producer
    }

    /// The largest record timestamp of the batch (producer time, or the append time for
    /// records without one), ms since the Unix epoch. O(records).
    #[must_use]
    pub fn max_record_timestamp_ms(&self) -> i64 {
        self.records()
            .map(|record| record.timestamp_ms())
            .max()
            .unwrap_or(self.format.batch_timestamp_ms)
    }

    /// The partition of every record in the batch.
    #[must_use]
    pub fn partition_id(&self) -> PartitionId {
        self.partition_id
    }

    /// Offset of the first record.
    #[must_use]
    pub fn base_offset(&self) -> Offset {
        self.base_offset
    }

    /// Offset just after the last record (exclusive): the partition's next offset.
    #[must_use]
    pub fn end_offset(&self) -> Offset {
        // decode_batch rejected batches whose offsets overflow.
        self.base_offset.plus(u64::from(self.record_count))
    }

    /// Records in the batch, at least 1.
    #[must_use]
    pub fn record_count(&self) -> u32 {
        self.record_count
    }

    /// Server time at append, milliseconds since the Unix epoch (each record has its own:
    /// `RecordView::timestamp_ms`).
    #[must_use]
    pub fn timestamp_ms(&self) -> u64 {
        self.timestamp_ms
    }

    /// `crc` of the batch before this one in the core log, 0 for the first.
    #[must_use]
    pub fn prev_batch_crc(&self) -> u32 {
        self.prev_batch_crc
    }

    /// This batch's checksum (verified): the next batch's `prev_batch_crc`.
    #[must_use]
    pub fn crc(&self) -> u32 {
        self.crc
    }

    /// Bytes of the whole batch, header included.
    #[must_use]
    pub fn len_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// The batch's encoded bytes, exactly `len_bytes` long.
    #[must_use]
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The records, in offset order.
    #[must_use]
    pub fn records(&self) -> RecordIter<'a> {
        RecordIter {
            rest: self.bytes.get(self.header_size_bytes..).unwrap_or_default(),
            next_offset: self.base_offset,
            remaining_count: self.record_count,
            format: self.format,
        }
    }
}

impl fmt::Debug for BatchView<'_> {
    // Without the bytes: a batch can be a mebibyte.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchView")
            .field("format_version", &self.format.format_version)
            .field("partition_id", &self.partition_id)
            .field("base_offset", &self.base_offset)
            .field("record_count", &self.record_count)
            .field("len_bytes", &self.bytes.len())
            .field("timestamp_ms", &self.timestamp_ms)
            .field(
                "prev_batch_crc",
                &format_args!("{:#010x}", self.prev_batch_crc),
            )
            .field("crc", &format_args!("{:#010x}", self.crc))
            .field("producer", &self.producer)
            .finish()
    }
}

/// The records of a [`BatchView`], in offset order.
#[derive(Clone, Debug)]
pub struct RecordIter<'a> {
    rest: &'a [u8],
    next_offset: Offset,
    remaining_count: u32,
    format: RecordFormat,
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = RecordView<'a>;

    fn next(&mut self) -> Option<RecordView<'a>> {
        self.remaining_count = self.remaining_count.checked_sub(1)?;
        let (record, rest) = parse_record(self.rest, self.next_offset, self.format)
            .expect("decode_batch validated every record of this batch");
        self.rest = rest;
        self.next_offset = self.next_offset.plus(1);
        Some(record)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let remaining_count = usize::try_from(self.remaining_count).expect("u32 fits in usize");
        (remaining_count, Some(remaining_count))
    }
}

impl ExactSizeIterator for RecordIter<'_> {}

impl FusedIterator for RecordIter<'_> {}

/// One record of a decoded batch, borrowed from the batch's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordView<'a> {
    /// The record's offset in its partition.
    pub offset: Offset,
    /// Offset of the previous record with the same key in this partition, if any; always
    /// before `offset`.
    pub prev_key_offset: Option<Offset>,
    /// The key; may be empty. Empty for a null key (`is_null_key`).
    pub key: &'a [u8],
    /// The value; may be empty. Empty for a null value (`is_null_value`).
    pub value: &'a [u8],
    headers_bytes: &'a [u8],
    header_count: u16,
    timestamp_ms: i64,
    flags: u8,
}

impl<'a> RecordView<'a> {
    /// The record's timestamp, ms since the Unix epoch: the producer's (Kafka's CreateTime)
    /// if it sent one, else the server's time at append. A version 1 record has its batch's.
    #[must_use]
    pub fn timestamp_ms(&self) -> i64 {
        self.timestamp_ms
    }

    /// Whether the record has Kafka's null key (then `key` is empty and it is in no key's
    /// history). Always false in version 1.
    #[must_use]
    pub fn is_null_key(&self) -> bool {
        self.flags & RECORD_FLAG_NULL_KEY != 0
    }

    /// The key the record is indexed under: `None` for a null key, which is in no key's
    /// history.
    #[must_use]
    pub fn indexed_key(&self) -> Option<&'a [u8]> {
        (!self.is_null_key()).then_some(self.key)
    }

    /// Whether the record has Kafka's null value, a tombstone (then `value` is empty).
    /// Always false in version 1.
    #[must_use]
    pub fn is_null_value(&self) -> bool {
        self.flags & RECORD_FLAG_NULL_VALUE != 0
    }

    /// The record's headers, in order.
    #[must_use]
    pub fn headers(&self) -> HeaderIter<'a> {
        HeaderIter {
            rest: self.headers_bytes,
            remaining_count: self.header_count,
        }
    }

    /// Headers on the record, at most `RECORD_HEADER_COUNT_MAX`.
    #[must_use]
    pub fn header_count(&self) -> u16 {
        self.header_count
    }
}

/// The headers of a [`RecordView`], in order.
#[derive(Clone, Debug)]
pub struct HeaderIter<'a> {
    rest: &'a [u8],
    remaining_count: u16,
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = RecordHeader<'a>;

    fn next(&mut self) -> Option<RecordHeader<'a>> {
        self.remaining_count = self.remaining_count.checked_sub(1)?;
        let invariant = "decode_batch validated every header of this record";
        let mut reader = Reader { rest: self.rest };
        let name_len_bytes = reader.u16().expect(invariant);
        let value_len_bytes = reader.u32().expect(invariant);
        let name = reader.bytes(usize::from(name_len_bytes)).expect(invariant);
        let value = reader
            .bytes(usize::try_from(value_len_bytes).expect("u32 fits in usize"))
            .expect(invariant);
        self.rest = reader.rest;
        Some(RecordHeader { name, value })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let remaining_count = usize::from(self.remaining_count);
        (remaining_count, Some(remaining_count))
    }
}

impl ExactSizeIterator for HeaderIter<'_> {}

impl FusedIterator for HeaderIter<'_> {}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::core::KeyCondition;
    use crate::core::recovery::fuzz_bodies;

    /// Owned form of one record, so proptest can generate it.
    #[derive(Clone, Debug)]
    struct OwnedRecord {
        key: Vec<u8>,
        value: Vec<u8>,
        headers: Vec<(Vec<u8>, Vec<u8>)>,
        prev_key_offset: Option<Offset>,
        timestamp_ms: Option<i64>,
        null_key: bool,
        null_value: bool,
    }

    fn meta(base_offset: u64) -> BatchMeta {
        BatchMeta {
            partition_id: PartitionId(7),
            base_offset: Offset(base_offset),
            timestamp_ms: 1_790_000_000_000,
            prev_batch_crc: 0xDEAD_BEEF,
            producer: None,
        }
    }

    fn input<'a>(
        key: &'a [u8],
        value: &'a [u8],
        headers: &'a [RecordHeader<'a>],
    ) -> RecordInput<'a> {
        RecordInput {
            key,
            value,
            headers,
            condition: KeyCondition::Any,
            ..RecordInput::default()
        }
    }

    /// Encodes owned records and returns the batch's bytes.
    fn encode_owned(meta: &BatchMeta, records: &[OwnedRecord]) -> Vec<u8> {
        encode_owned_as(meta, records, FORMAT_VERSION)
    }

    /// Encodes owned records in format version 1 or 2.
    fn encode_owned_as(meta: &BatchMeta, records: &[OwnedRecord], format_version: u16) -> Vec<u8> {
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
                timestamp_ms: record.timestamp_ms,
                null_key: record.null_key,
                null_value: record.null_value,
                ..input(&record.key, &record.value, headers)
            })
            .collect();
        let prev_key_offsets: Vec<_> = records
            .iter()
            .map(|record| record.prev_key_offset)
            .collect();
        let (len_bytes, encode): (usize, fn(_, _, _, _) -> _) = if format_version == FORMAT_VERSION
        {
            (batch_encoded_len(&inputs).unwrap(), encode_batch)
        } else {
            (batch_encoded_len_v1(&inputs).unwrap(), encode_batch_v1)
        };
        let mut out = vec![0; len_bytes];
        let encoded = encode(&mut out, meta, &inputs, &prev_key_offsets).unwrap();
        assert_eq!(encoded.len_bytes, len_bytes);
        out
    }

    /// A batch of two simple records: `k0`/`v0` with one header, `k1`/`value-1`.
    fn sample_batch() -> Vec<u8> {
        let record = |key: &[u8], value: &[u8], headers: Vec<(Vec<u8>, Vec<u8>)>| OwnedRecord {
            key: key.to_vec(),
            value: value.to_vec(),
            headers,
            prev_key_offset: None,
            timestamp_ms: None,
            null_key: false,
            null_value: false,
        };
        encode_owned(
            &meta(10),
            &[
                record(b"k0", b"v0", vec![(b"type".to_vec(), b"created".to_vec())]),
                record(b"k1", b"value-1", vec![]),
            ],
        )
    }

    /// Recomputes `batch_crc` after a test patched a field.
    fn reseal(bytes: &mut Vec<u8>) {
        *bytes = fuzz_bodies::resealed(bytes).unwrap();
    }

    fn patch(bytes: &mut [u8], position: usize, field: &[u8]) {
        bytes[position..position + field.len()].copy_from_slice(field);
    }

    /// Damage done to a valid batch's bytes.
    type Mutation = Box<dyn Fn(&mut Vec<u8>)>;

    fn malformed(record_index: u32, fault: RecordFault) -> Result<(), DecodeError> {
        Err(DecodeError::RecordMalformed {
            record_index,
            fault,
        })
    }

    fn decode_result(bytes: &[u8]) -> Result<(), DecodeError> {
        decode_batch(bytes).map(|_| ())
    }

    // Record 0 of `sample_batch` starts right after the header.
    const RECORD0: usize = BATCH_HEADER_SIZE_BYTES;
    const RECORD0_PREV_KEY: usize = RECORD0 + 4;
    const RECORD0_KEY_LEN: usize = RECORD0 + 20;
    const RECORD0_VALUE_LEN: usize = RECORD0 + 24;
    const RECORD0_HEADER_COUNT: usize = RECORD0 + 28;
    const RECORD0_FLAGS: usize = RECORD0 + 30;
    // Producer fields of the batch header (version 2).
    const PRODUCER_ID: usize = 48;
    const BASE_SEQUENCE: usize = 56;
    const PRODUCER_EPOCH: usize = 60;
    const HEADER_RESERVED_V2: usize = 62;
    // key "k0" and value "v0", then header 0's name length.
    const RECORD0_HEADER0_NAME_LEN: usize = RECORD0 + RECORD_FIXED_SIZE_BYTES + 4;

    fn arb_bytes(len_max: usize) -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(any::<u8>(), 0..=len_max)
    }

    /// Records for version 2, with timestamps and null keys and values; `v1_only` leaves
    /// out what version 1 cannot hold.
    fn arb_records_for(v1_only: bool) -> impl Strategy<Value = (u64, Vec<OwnedRecord>)> {
        let record = (
            arb_bytes(40),
            arb_bytes(300),
            prop::collection::vec((arb_bytes(12), arb_bytes(30)), 0..4),
            any::<Option<u64>>(),
            any::<Option<i64>>(),
            any::<(bool, bool)>(),
        );
        (0..u64::MAX / 2, prop::collection::vec(record, 1..8)).prop_map(
            move |(base_offset, records)| {
                let records = records
                    .into_iter()
                    .enumerate()
                    .map(
                        |(
                            index,
                            (key, value, headers, prev, timestamp_ms, (null_key, null_value)),
                        )| {
                            let offset = base_offset + index as u64;
                            let null_key = null_key && !v1_only;
                            let null_value = null_value && !v1_only;
                            OwnedRecord {
                                key: if null_key { Vec::new() } else { key },
                                value: if null_value { Vec::new() } else { value },
                                headers,
                                // Any offset strictly before the record's own; none for a null key.
                                prev_key_offset: prev
                                    .filter(|_| offset > 0 && !null_key)
                                    .map(|prev| Offset(prev % offset)),
                                timestamp_ms: timestamp_ms.filter(|_| !v1_only),
                                null_key,
                                null_value,
                            }
                        },
                    )
                    .collect();
                (base_offset, records)
            },
        )
    }

    fn arb_records() -> impl Strategy<Value = (u64, Vec<OwnedRecord>)> {
        arb_records_for(false)
    }

    fn arb_producer() -> impl Strategy<Value = Option<ProducerStamp>> {
        prop::option::of((0..=i64::MAX, 0..=i16::MAX, 0..=i32::MAX).prop_map(
            |(producer_id, epoch, base_sequence)| ProducerStamp {
                producer_id,
                epoch,
                base_sequence,
            },
        ))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn batch_round_trips((base_offset, records) in arb_records(), timestamp_ms: u64, prev_batch_crc: u32, partition: u32, producer in arb_producer()) {
            let meta = BatchMeta {
                partition_id: PartitionId(partition),
                base_offset: Offset(base_offset),
                timestamp_ms,
                prev_batch_crc,
                producer,
            };
            let mut bytes = encode_owned(&meta, &records);
            let len_bytes = bytes.len();
            bytes.extend_from_slice(b"whatever follows the batch");
            let view = decode_batch(&bytes).unwrap();
            prop_assert_eq!(view.len_bytes(), len_bytes);
            prop_assert_eq!(view.partition_id(), meta.partition_id);
            prop_assert_eq!(view.base_offset(), meta.base_offset);
            prop_assert_eq!(view.end_offset(), meta.base_offset.plus(records.len() as u64));
            prop_assert_eq!(view.record_count() as usize, records.len());
            prop_assert_eq!(view.timestamp_ms(), timestamp_ms);
            prop_assert_eq!(view.format_version(), FORMAT_VERSION);
            prop_assert_eq!(view.producer(), producer);
            prop_assert_eq!(view.prev_batch_crc(), prev_batch_crc);
            prop_assert_eq!(view.crc(), crc32fast::hash(&bytes[8..len_bytes]));
            prop_assert_eq!(view.as_bytes(), &bytes[..len_bytes]);
            prop_assert_eq!(view.records().len(), records.len());
            for (index, (record, expected)) in view.records().zip(&records).enumerate() {
                prop_assert_eq!(record.offset, Offset(base_offset + index as u64));
                prop_assert_eq!(record.prev_key_offset, expected.prev_key_offset);
                prop_assert_eq!(record.key, &expected.key[..]);
                prop_assert_eq!(record.value, &expected.value[..]);
                prop_assert_eq!(usize::from(record.header_count()), expected.headers.len());
                let headers: Vec<_> = record.headers().map(|h| (h.name.to_vec(), h.value.to_vec())).collect();
                prop_assert_eq!(&headers, &expected.headers);
                let batch_timestamp_ms = i64::try_from(timestamp_ms).unwrap_or(i64::MAX);
                prop_assert_eq!(record.timestamp_ms(), expected.timestamp_ms.unwrap_or(batch_timestamp_ms));
                prop_assert_eq!(record.is_null_key(), expected.null_key);
                prop_assert_eq!(record.is_null_value(), expected.null_value);
            }
            fuzz_bodies::decode_checked(&bytes);
        }

        #[test]
        fn version_1_batches_still_decode((base_offset, records) in arb_records_for(true), timestamp_ms: u64, prev_batch_crc: u32) {
            let meta = BatchMeta { base_offset: Offset(base_offset), timestamp_ms, prev_batch_crc, ..meta(0) };
            let bytes = encode_owned_as(&meta, &records, FORMAT_VERSION_V1);
            let view = decode_batch(&bytes).unwrap();
            prop_assert_eq!(view.format_version(), FORMAT_VERSION_V1);
            prop_assert_eq!(view.len_bytes(), bytes.len());
            prop_assert_eq!(view.producer(), None);
            prop_assert_eq!(view.timestamp_ms(), timestamp_ms);
            // The v2 writer would need more room: 16 header bytes and 9 per record.
            prop_assert_eq!(
                encode_owned(&meta, &records).len(),
                bytes.len() + 16 + 9 * records.len()
            );
            for (record, expected) in view.records().zip(&records) {
                prop_assert_eq!(record.key, &expected.key[..]);
                prop_assert_eq!(record.value, &expected.value[..]);
                prop_assert_eq!(record.prev_key_offset, expected.prev_key_offset);
                prop_assert_eq!(record.timestamp_ms(), i64::try_from(timestamp_ms).unwrap_or(i64::MAX));
                prop_assert!(!record.is_null_key() && !record.is_null_value());
            }
            fuzz_bodies::decode_checked(&bytes);
        }

        #[test]
        fn decode_never_panics_on_arbitrary_bytes(bytes in arb_bytes(600)) {
            fuzz_bodies::decode_checked(&bytes);
            if let Some(resealed) = fuzz_bodies::resealed(&bytes) {
                fuzz_bodies::decode_checked(&resealed);
            }
        }

        #[test]
        fn decode_never_panics_on_a_mutated_batch(position in 0_usize..200, byte: u8, reseal_crc: bool, v1: bool) {
            let mut bytes = if v1 { sample_batch_v1() } else { sample_batch() };
            let position = position % bytes.len();
            bytes[position] = byte;
            if reseal_crc && let Some(resealed) = fuzz_bodies::resealed(&bytes) {
                bytes = resealed;
            }
            fuzz_bodies::decode_checked(&bytes);
        }
    }

    #[test]
    fn decode_of_every_strict_prefix_is_truncated() {
        let bytes = sample_batch();
        for len in 0..bytes.len() {
            let needed_bytes = if len < BATCH_HEADER_V1_SIZE_BYTES {
                BATCH_HEADER_V1_SIZE_BYTES
            } else {
                bytes.len()
            };
            assert_eq!(
                decode_result(&bytes[..len]),
                Err(DecodeError::Truncated {
                    needed_bytes: needed_bytes as u64,
                    available_bytes: len as u64
                }),
                "prefix of {len} bytes"
            );
        }
        assert_eq!(decode_result(&bytes), Ok(()));
    }

    #[test]
    fn encode_accepts_empty_key_value_and_limits_exactly() {
        let name = [b'n'; HEADER_NAME_SIZE_BYTES_MAX];
        let headers = vec![
            RecordHeader {
                name: &name,
                value: b""
            };
            RECORD_HEADER_COUNT_MAX
        ];
        let key = [b'k'; KEY_SIZE_BYTES_MAX];
        let records = [input(b"", b"", &[]), input(&key, b"v", &headers)];
        let len_bytes = batch_encoded_len(&records).unwrap();
        let mut out = vec![0; len_bytes];
        encode_batch(&mut out, &meta(0), &records, &[None, Some(Offset(0))]).unwrap();
        let view = decode_batch(&out).unwrap();
        let decoded: Vec<_> = view.records().collect();
        assert_eq!(decoded[0].key, b"");
        assert_eq!(decoded[0].value, b"");
        assert_eq!(decoded[1].key, &key[..]);
        assert_eq!(decoded[1].prev_key_offset, Some(Offset(0)));
        assert_eq!(decoded[1].headers().count(), RECORD_HEADER_COUNT_MAX);
    }

    #[test]
    fn encode_rejects_every_limit_with_its_error() {
        assert_eq!(batch_encoded_len(&[]), Err(EncodeError::EmptyBatch));

        let many = vec![input(b"", b"", &[]); BATCH_RECORD_COUNT_MAX + 1];
        assert_eq!(
            batch_encoded_len(&many),
            Err(EncodeError::TooManyRecords {
                record_count: BATCH_RECORD_COUNT_MAX + 1,
                record_count_max: BATCH_RECORD_COUNT_MAX
            })
        );

        let key = [0; KEY_SIZE_BYTES_MAX + 1];
        assert_eq!(
            batch_encoded_len(&[input(b"", b"", &[]), input(&key, b"", &[])]),
            Err(EncodeError::KeyTooLong {
                record_index: 1,
                len_bytes: KEY_SIZE_BYTES_MAX + 1,
                len_bytes_max: KEY_SIZE_BYTES_MAX
            })
        );

        let headers = vec![
            RecordHeader {
                name: b"n",
                value: b""
            };
            RECORD_HEADER_COUNT_MAX + 1
        ];
        assert_eq!(
            batch_encoded_len(&[input(b"", b"", &headers)]),
            Err(EncodeError::TooManyHeaders {
                record_index: 0,
                header_count: RECORD_HEADER_COUNT_MAX + 1,
                header_count_max: RECORD_HEADER_COUNT_MAX
            })
        );

        let name = [0; HEADER_NAME_SIZE_BYTES_MAX + 1];
        let headers = [
            RecordHeader {
                name: b"ok",
                value: b"",
            },
            RecordHeader {
                name: &name,
                value: b"",
            },
        ];
        assert_eq!(
            batch_encoded_len(&[input(b"", b"", &headers)]),
            Err(EncodeError::HeaderNameTooLong {
                record_index: 0,
                header_index: 1,
                len_bytes: HEADER_NAME_SIZE_BYTES_MAX + 1,
                len_bytes_max: HEADER_NAME_SIZE_BYTES_MAX
            })
        );

        // Exactly at the limit is accepted, one byte more is not.
        let fixed_bytes = BATCH_HEADER_SIZE_BYTES + RECORD_FIXED_SIZE_BYTES;
        let value = vec![0; BATCH_SIZE_BYTES_MAX - fixed_bytes + 1];
        assert_eq!(
            batch_encoded_len(&[input(b"", &value[1..], &[])]),
            Ok(BATCH_SIZE_BYTES_MAX)
        );
        assert_eq!(
            batch_encoded_len(&[input(b"", &value, &[])]),
            Err(EncodeError::BatchTooLarge {
                len_bytes: BATCH_SIZE_BYTES_MAX as u64 + 1,
                len_bytes_max: BATCH_SIZE_BYTES_MAX as u64
            })
        );

        let records = [input(b"key", b"value", &[])];
        let mut out = vec![0; 10];
        assert_eq!(
            encode_batch(&mut out, &meta(0), &records, &[None]),
            Err(EncodeError::BufferTooSmall {
                needed_bytes: batch_encoded_len(&records).unwrap(),
                available_bytes: 10
            })
        );
    }

    #[test]
    #[should_panic(expected = "not before its record's offset")]
    fn encode_panics_on_a_forward_back_pointer() {
        let mut out = vec![0; 100];
        let _ = encode_batch(
            &mut out,
            &meta(5),
            &[input(b"k", b"", &[])],
            &[Some(Offset(5))],
        );
    }

    #[test]
    fn decode_rejects_each_header_fault_with_its_error() {
        let good = sample_batch();
        let len_bytes = good.len() as u32;
        let cases: Vec<(&str, Mutation, DecodeError)> = vec![
            (
                "magic",
                Box::new(|b| patch(b, 0, b"CARX")),
                DecodeError::BadMagic {
                    expected: BATCH_MAGIC,
                    actual: u32::from_le_bytes(*b"CARX"),
                },
            ),
            (
                "version",
                Box::new(|b| patch(b, 8, &3_u16.to_le_bytes())),
                DecodeError::UnsupportedVersion {
                    expected: 2,
                    actual: 3,
                },
            ),
            (
                "flags",
                Box::new(|b| patch(b, 10, &4_u16.to_le_bytes())),
                DecodeError::BadFlags { flags: 4 },
            ),
            (
                "length too small",
                Box::new(|b| patch(b, 12, &94_u32.to_le_bytes())),
                DecodeError::LengthOutOfRange {
                    len_bytes: 94,
                    len_bytes_min: 95,
                    len_bytes_max: BATCH_SIZE_BYTES_MAX as u32,
                },
            ),
            (
                "length too large",
                Box::new(|b| patch(b, 12, &(BATCH_SIZE_BYTES_MAX as u32 + 1).to_le_bytes())),
                DecodeError::LengthOutOfRange {
                    len_bytes: BATCH_SIZE_BYTES_MAX as u32 + 1,
                    len_bytes_min: 95,
                    len_bytes_max: BATCH_SIZE_BYTES_MAX as u32,
                },
            ),
            (
                "length past the bytes",
                Box::new(|b| {
                    let len_bytes = b.len() as u32 + 1;
                    patch(b, 12, &len_bytes.to_le_bytes());
                }),
                DecodeError::Truncated {
                    needed_bytes: len_bytes as u64 + 1,
                    available_bytes: len_bytes as u64,
                },
            ),
            (
                "checksum",
                Box::new(|b| b[40] ^= 1),
                DecodeError::ChecksumMismatch {
                    expected: u32::from_le_bytes(good[4..8].try_into().unwrap()),
                    actual: {
                        let mut flipped = good.clone();
                        flipped[40] ^= 1;
                        crc32fast::hash(&flipped[8..])
                    },
                },
            ),
            (
                "reserved",
                Box::new(|b| {
                    patch(b, 36, &9_u32.to_le_bytes());
                    reseal(b);
                }),
                DecodeError::ReservedNotZero { actual: 9 },
            ),
            (
                "reserved after the producer fields",
                Box::new(|b| {
                    patch(b, HEADER_RESERVED_V2, &7_u16.to_le_bytes());
                    reseal(b);
                }),
                DecodeError::ReservedNotZero { actual: 7 },
            ),
            (
                "producer id without epoch and sequence",
                Box::new(|b| {
                    patch(b, PRODUCER_ID, &5_i64.to_le_bytes());
                    reseal(b);
                }),
                DecodeError::BadProducer {
                    producer_id: 5,
                    epoch: -1,
                    base_sequence: -1,
                },
            ),
            (
                "negative sequence with a producer",
                Box::new(|b| {
                    patch(b, PRODUCER_ID, &5_i64.to_le_bytes());
                    patch(b, PRODUCER_EPOCH, &0_i16.to_le_bytes());
                    patch(b, BASE_SEQUENCE, &(-2_i32).to_le_bytes());
                    reseal(b);
                }),
                DecodeError::BadProducer {
                    producer_id: 5,
                    epoch: 0,
                    base_sequence: -2,
                },
            ),
            (
                "no records",
                Box::new(|b| {
                    patch(b, 32, &0_u32.to_le_bytes());
                    reseal(b);
                }),
                DecodeError::RecordCountOutOfRange {
                    record_count: 0,
                    record_count_max: 65_536,
                },
            ),
            (
                "too many records",
                Box::new(|b| {
                    patch(b, 32, &65_537_u32.to_le_bytes());
                    reseal(b);
                }),
                DecodeError::RecordCountOutOfRange {
                    record_count: 65_537,
                    record_count_max: 65_536,
                },
            ),
            (
                "offsets overflow",
                Box::new(|b| {
                    patch(b, 24, &(u64::MAX - 1).to_le_bytes());
                    reseal(b);
                }),
                DecodeError::OffsetOverflow {
                    base_offset: Offset(u64::MAX - 1),
                    record_count: 2,
                },
            ),
            (
                "a record missing",
                Box::new(|b| {
                    patch(b, 32, &3_u32.to_le_bytes());
                    reseal(b);
                }),
                DecodeError::RecordMalformed {
                    record_index: 2,
                    fault: RecordFault::Truncated {
                        needed_bytes: 31,
                        available_bytes: 0,
                    },
                },
            ),
            (
                "a record too many",
                Box::new(|b| {
                    patch(b, 32, &1_u32.to_le_bytes());
                    reseal(b);
                }),
                DecodeError::RecordsUnderfill {
                    records_end_bytes: (RECORD0 + RECORD_FIXED_SIZE_BYTES + 4 + 6 + 4 + 7) as u32,
                    len_bytes,
                },
            ),
        ];
        for (name, mutate, expected) in cases {
            let mut bytes = good.clone();
            mutate(&mut bytes);
            assert_eq!(decode_result(&bytes), Err(expected), "{name}");
            // Every rejection is a value with a message, never a panic.
            assert!(!expected.to_string().is_empty());
        }
    }

    #[test]
    fn decode_rejects_each_record_fault_with_its_error() {
        let good = sample_batch();
        let record0_len_bytes = (RECORD_FIXED_SIZE_BYTES + 4 + 6 + 4 + 7) as u32;
        let cases: Vec<(&str, Mutation, Result<(), DecodeError>)> = vec![
            (
                "record length past the batch",
                Box::new(|b| patch(b, RECORD0, &1000_u32.to_le_bytes())),
                malformed(
                    0,
                    RecordFault::Truncated {
                        needed_bytes: 1000,
                        available_bytes: (good.len() - RECORD0) as u32,
                    },
                ),
            ),
            (
                "record length shorter than the fixed fields",
                Box::new(|b| patch(b, RECORD0, &30_u32.to_le_bytes())),
                malformed(
                    0,
                    RecordFault::FieldsOverrun {
                        record_length_bytes: 30,
                        field_end_bytes: 31,
                    },
                ),
            ),
            (
                "key runs past the record",
                Box::new(|b| patch(b, RECORD0_KEY_LEN, &100_u32.to_le_bytes())),
                malformed(
                    0,
                    RecordFault::FieldsOverrun {
                        record_length_bytes: record0_len_bytes,
                        field_end_bytes: 131,
                    },
                ),
            ),
            (
                "value runs past the record",
                Box::new(|b| patch(b, RECORD0_VALUE_LEN, &u32::MAX.to_le_bytes())),
                malformed(
                    0,
                    RecordFault::FieldsOverrun {
                        record_length_bytes: record0_len_bytes,
                        field_end_bytes: 33 + u64::from(u32::MAX),
                    },
                ),
            ),
            (
                "header runs past the record",
                Box::new(|b| patch(b, RECORD0_HEADER0_NAME_LEN + 2, &8_u32.to_le_bytes())),
                malformed(
                    0,
                    RecordFault::FieldsOverrun {
                        record_length_bytes: record0_len_bytes,
                        field_end_bytes: u64::from(record0_len_bytes) + 1,
                    },
                ),
            ),
            (
                "more headers than the record holds",
                Box::new(|b| patch(b, RECORD0_HEADER_COUNT, &2_u16.to_le_bytes())),
                malformed(
                    0,
                    RecordFault::FieldsOverrun {
                        record_length_bytes: record0_len_bytes,
                        field_end_bytes: u64::from(record0_len_bytes) + 6,
                    },
                ),
            ),
            (
                "fields end early",
                Box::new(|b| patch(b, RECORD0_HEADER_COUNT, &0_u16.to_le_bytes())),
                malformed(
                    0,
                    RecordFault::FieldsUnderfill {
                        record_length_bytes: record0_len_bytes,
                        fields_len_bytes: 35,
                    },
                ),
            ),
            (
                "key too long",
                Box::new(|b| patch(b, RECORD0_KEY_LEN, &4097_u32.to_le_bytes())),
                malformed(
                    0,
                    RecordFault::KeyTooLong {
                        len_bytes: 4097,
                        len_bytes_max: 4096,
                    },
                ),
            ),
            (
                "too many headers",
                Box::new(|b| patch(b, RECORD0_HEADER_COUNT, &65_u16.to_le_bytes())),
                malformed(
                    0,
                    RecordFault::TooManyHeaders {
                        header_count: 65,
                        header_count_max: 64,
                    },
                ),
            ),
            (
                "header name too long",
                Box::new(|b| patch(b, RECORD0_HEADER0_NAME_LEN, &257_u16.to_le_bytes())),
                malformed(
                    0,
                    RecordFault::HeaderNameTooLong {
                        header_index: 0,
                        len_bytes: 257,
                        len_bytes_max: 256,
                    },
                ),
            ),
            (
                "back-pointer to itself",
                Box::new(|b| patch(b, RECORD0_PREV_KEY, &10_u64.to_le_bytes())),
                malformed(
                    0,
                    RecordFault::PrevKeyOffsetNotBefore {
                        prev_key_offset: Offset(10),
                        offset: Offset(10),
                    },
                ),
            ),
            (
                "back-pointer before it",
                Box::new(|b| patch(b, RECORD0_PREV_KEY, &9_u64.to_le_bytes())),
                Ok(()),
            ),
            (
                "undefined record flag",
                Box::new(|b| patch(b, RECORD0_FLAGS, &[0b100])),
                malformed(0, RecordFault::BadFlags { flags: 0b100 }),
            ),
            (
                "null key with key bytes",
                Box::new(|b| patch(b, RECORD0_FLAGS, &[RECORD_FLAG_NULL_KEY])),
                malformed(0, RecordFault::NullKeyNotEmpty { len_bytes: 2 }),
            ),
            (
                "null value with value bytes",
                Box::new(|b| patch(b, RECORD0_FLAGS, &[RECORD_FLAG_NULL_VALUE])),
                malformed(0, RecordFault::NullValueNotEmpty { len_bytes: 2 }),
            ),
        ];
        for (name, mutate, expected) in cases {
            let mut bytes = good.clone();
            mutate(&mut bytes);
            reseal(&mut bytes);
            assert_eq!(decode_result(&bytes), expected, "{name}");
        }
    }

    /// `sample_batch` in format version 1.
    fn sample_batch_v1() -> Vec<u8> {
        let bytes = sample_batch();
        let view = decode_batch(&bytes).unwrap();
        let records: Vec<OwnedRecord> = view
            .records()
            .map(|record| OwnedRecord {
                key: record.key.to_vec(),
                value: record.value.to_vec(),
                headers: record
                    .headers()
                    .map(|header| (header.name.to_vec(), header.value.to_vec()))
                    .collect(),
                prev_key_offset: record.prev_key_offset,
                timestamp_ms: None,
                null_key: false,
                null_value: false,
            })
            .collect();
        encode_owned_as(&meta(10), &records, FORMAT_VERSION_V1)
    }

    #[test]
    fn a_null_key_with_a_back_pointer_is_rejected() {
        let record = OwnedRecord {
            key: Vec::new(),
            value: b"v".to_vec(),
            headers: vec![],
            prev_key_offset: None,
            timestamp_ms: Some(-5),
            null_key: true,
            null_value: false,
        };
        let mut bytes = encode_owned(&meta(10), &[record]);
        let view = decode_batch(&bytes).unwrap();
        let decoded = view.records().next().unwrap();
        assert!(decoded.is_null_key() && !decoded.is_null_value());
        assert_eq!(decoded.timestamp_ms(), -5);
        patch(&mut bytes, RECORD0_PREV_KEY, &3_u64.to_le_bytes());
        reseal(&mut bytes);
        assert_eq!(
            decode_result(&bytes),
            malformed(
                0,
                RecordFault::NullKeyWithPrevKeyOffset {
                    prev_key_offset: Offset(3)
                }
            )
        );
    }

    #[test]
    fn a_version_1_batch_reads_with_its_batch_timestamp_and_no_producer() {
        let bytes = sample_batch_v1();
        assert_eq!(bytes.len(), sample_batch().len() - 16 - 2 * 9);
        let view = decode_batch(&bytes).unwrap();
        assert_eq!(view.format_version(), 1);
        assert_eq!(view.producer(), None);
        assert_eq!(view.max_record_timestamp_ms(), 1_790_000_000_000);
        let records: Vec<_> = view.records().collect();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].key, b"k0");
        assert_eq!(records[1].value, b"value-1");
        for record in &records {
            assert_eq!(record.timestamp_ms(), 1_790_000_000_000);
            assert!(!record.is_null_key() && !record.is_null_value());
        }
        // Truncated in the shared 48-byte prefix or after it: both are `Truncated`.
        assert!(matches!(
            decode_batch(&bytes[..50]),
            Err(DecodeError::Truncated { .. })
        ));
    }

    #[test]
    fn encode_rejects_null_fields_that_carry_bytes_and_null_keys_with_conditions() {
        let null_key = |key: &'static [u8], condition| RecordInput {
            key,
            condition,
            null_key: true,
            ..RecordInput::default()
        };
        assert_eq!(
            batch_encoded_len(&[input(b"k", b"", &[]), null_key(b"x", KeyCondition::Any)]),
            Err(EncodeError::NullKeyNotEmpty {
                record_index: 1,
                len_bytes: 1
            })
        );
        assert_eq!(
            batch_encoded_len(&[null_key(b"", KeyCondition::NoKey)]),
            Err(EncodeError::NullKeyCondition {
                record_index: 0,
                condition: KeyCondition::NoKey
            })
        );
        let null_value = RecordInput {
            value: b"v",
            null_value: true,
            ..RecordInput::default()
        };
        assert_eq!(
            batch_encoded_len(&[null_value]),
            Err(EncodeError::NullValueNotEmpty {
                record_index: 0,
                len_bytes: 1
            })
        );
        assert_eq!(
            batch_encoded_len(&[null_key(b"", KeyCondition::Any)]),
            Ok(BATCH_HEADER_SIZE_BYTES + RECORD_FIXED_SIZE_BYTES)
        );
        assert!(
            EncodeError::NullKeyCondition {
                record_index: 3,
                condition: KeyCondition::KeyExists
            }
            .to_string()
            .contains("record 3")
        );
        let stamp = |producer_id, epoch, base_sequence| {
            Some(ProducerStamp {
                producer_id,
                epoch,
                base_sequence,
            })
        };
        assert_eq!(check_producer_stamp(None), Ok(()));
        assert_eq!(check_producer_stamp(stamp(0, 0, 0)), Ok(()));
        assert_eq!(
            check_producer_stamp(stamp(-1, 0, 0)),
            Err(EncodeError::BadProducerStamp {
                producer_id: -1,
                epoch: 0,
                base_sequence: 0
            })
        );
        assert!(check_producer_stamp(stamp(1, -1, 0)).is_err());
        assert!(check_producer_stamp(stamp(1, 0, -1)).is_err());
    }

    #[test]
    fn record_and_header_iterators_report_exact_sizes() {
        let bytes = sample_batch();
        let view = decode_batch(&bytes).unwrap();
        let mut records = view.records();
        assert_eq!(records.len(), 2);
        let first = records.next().unwrap();
        assert_eq!(records.len(), 1);
        let mut headers = first.headers();
        assert_eq!(headers.len(), 1);
        assert_eq!(
            headers.next(),
            Some(RecordHeader {
                name: b"type",
                value: b"created"
            })
        );
        assert_eq!(headers.next(), None);
        assert_eq!(
            records.next().map(|record| record.value),
            Some(&b"value-1"[..])
        );
        assert_eq!(records.next(), None);
        assert_eq!(records.next(), None);
        // The debug form names the batch without dumping its bytes.
        assert!(format!("{view:?}").contains("len_bytes"));
    }
}
