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

#![deny(clippy::indexing_slicing)]

use std::fmt;
use std::iter::FusedIterator;

use crate::core::limits::{
    BATCH_RECORD_COUNT_MAX, BATCH_SIZE_BYTES_MAX, HEADER_NAME_SIZE_BYTES_MAX, KEY_SIZE_BYTES_MAX,
    RECORD_HEADER_COUNT_MAX,
};
use crate::core::{Offset, PartitionId, RecordHeader, RecordInput};

/// First four bytes of every batch: `CARN` when read as little-endian bytes.
pub const BATCH_MAGIC: u32 = 0x4E52_4143;

/// The format version this code writes and the only one it reads.
pub const FORMAT_VERSION: u16 = 1;

/// Bytes of a batch header (FORMAT.md, Batch header).
pub const BATCH_HEADER_SIZE_BYTES: usize = 48;

/// Bytes of a record before its key (FORMAT.md, Record).
pub const RECORD_FIXED_SIZE_BYTES: usize = 22;

/// Bytes of one record header before its name: name length and value length.
pub const RECORD_HEADER_FIXED_SIZE_BYTES: usize = 6;

/// `prev_key_offset` of a record whose key has no earlier record in the partition.
const PREV_KEY_OFFSET_NONE: u64 = u64::MAX;

/// `batch_crc` covers the batch from this position (just after itself) to its end.
const BATCH_CRC_COVERAGE_START_BYTES: usize = 8;

// Field sizes, in FORMAT.md's order, add up to the documented totals.
const _: () = assert!(4 + 4 + 2 + 2 + 4 + 4 + 4 + 8 + 4 + 4 + 8 == BATCH_HEADER_SIZE_BYTES);
const _: () = assert!(4 + 8 + 4 + 4 + 2 == RECORD_FIXED_SIZE_BYTES);
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

/// Metadata of a batch the caller is about to encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchMeta {
    /// The partition every record of the batch belongs to.
    pub partition_id: PartitionId,
    /// Offset of the batch's first record; record `i` gets `base_offset + i`.
    pub base_offset: Offset,
    /// Server time at append, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// `crc` of the previous batch of this core log, 0 for the first (FORMAT.md, Why the
    /// checksum chain).
    pub prev_batch_crc: u32,
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
    /// A format version this code cannot read.
    #[error("format version {actual} is not the supported {expected}")]
    UnsupportedVersion { expected: u16, actual: u16 },
    /// Flags other than 0, which version 1 does not define.
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
    /// The reserved header field is not 0.
    #[error("reserved field is {actual:#010x}, not 0")]
    ReservedNotZero { actual: u32 },
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

/// Encoded bytes of one record, saturating at `u64::MAX`.
/// A batch's encoded size, added up record by record: the one definition of a batch's size,
/// the one `BATCH_SIZE_BYTES_MAX` limits (FORMAT.md, Batch). The wire checks a request with
/// it before the engine sees it, and `batch_encoded_len` is built on it, so the two never
/// disagree: 48 bytes of batch header, then per record 22 bytes plus its key and value, and
/// per header 6 bytes plus its name and value. Saturating: lengths come from a client and
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

/// Encodes header + records into `out[..len]` and returns `len` and the batch crc. No
/// allocation.
///
/// `prev_key_offsets[i]` is the offset of the latest earlier record with the key of
/// `records[i]` in this partition (pending records included), `None` for a new key.
///
/// # Errors
///
/// Whatever [`batch_encoded_len`] returns, and `BufferTooSmall` if `out` is shorter than
/// the batch.
///
/// # Panics
///
/// If `prev_key_offsets` and `records` differ in length, or a previous key offset is not
/// before its record's offset: both are bugs of the caller's key index.
pub fn encode_batch(
    out: &mut [u8],
    meta: &BatchMeta,
    records: &[RecordInput<'_>],
    prev_key_offsets: &[Option<Offset>],
) -> Result<EncodedBatch, EncodeError> {
    assert_eq!(
        prev_key_offsets.len(),
        records.len(),
        "one previous key offset per record"
    );
    let len_bytes = batch_encoded_len(records)?;
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

    let mut writer = Writer { rest: &mut *batch };
    writer.put_u32(BATCH_MAGIC);
    writer.put_u32(0); // batch_crc, filled in once the rest is written
    writer.put_u16(FORMAT_VERSION);
    writer.put_u16(0); // flags
    writer.put_u32(u32::try_from(len_bytes).expect("len ≤ BATCH_SIZE_BYTES_MAX fits in u32"));
    writer.put_u32(meta.prev_batch_crc);
    writer.put_u32(meta.partition_id.0);
    writer.put_u64(meta.base_offset.0);
    writer.put_u32(record_count);
    writer.put_u32(0); // reserved
    writer.put_u64(meta.timestamp_ms);

    let mut offset = meta.base_offset;
    for (record, prev_key_offset) in records.iter().zip(prev_key_offsets) {
        let prev_key_offset = match prev_key_offset {
            Some(prev_key_offset) => {
                assert!(
                    *prev_key_offset < offset,
                    "prev_key_offset {prev_key_offset:?} not before its record's offset {offset:?}"
                );
                prev_key_offset.0
            }
            None => PREV_KEY_OFFSET_NONE,
        };
        let record_len_bytes = u32::try_from(record_encoded_len(record))
            .expect("a record within a batch of at most BATCH_SIZE_BYTES_MAX fits in u32");
        writer.put_u32(record_len_bytes);
        writer.put_u64(prev_key_offset);
        writer.put_u32(len_u32(record.key.len()));
        writer.put_u32(len_u32(record.value.len()));
        writer.put_u16(
            u16::try_from(record.headers.len())
                .expect("header count ≤ RECORD_HEADER_COUNT_MAX fits in u16"),
        );
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

    fn bytes(&mut self, len_bytes: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.rest.split_at_checked(len_bytes)?;
        self.rest = tail;
        Some(head)
    }
}

/// The batch header's fields, in FORMAT.md's order.
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
    fn parse(header: &[u8; BATCH_HEADER_SIZE_BYTES]) -> Self {
        let mut reader = Reader { rest: header };
        let invariant = "the header array has exactly BATCH_HEADER_SIZE_BYTES";
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

/// Decodes and FULLY validates the batch at the start of `bytes` (`bytes` may extend past
/// it): magic, version, flags, length, crc, reserved field, record count, offsets, and every
/// record's lengths and limits.
///
/// Zero-copy: the view borrows `bytes`. Never panics, never allocates. Cost: one CRC pass
/// and one walk over the record headers.
///
/// # Errors
///
/// The first check that fails, in the order above. Only [`DecodeError::Truncated`] can turn
/// into success with more bytes; every check before it needs only the 48 header bytes.
pub fn decode_batch(bytes: &[u8]) -> Result<BatchView<'_>, DecodeError> {
    let available_bytes = len_u64(bytes.len());
    let Some((header, _)) = bytes.split_first_chunk::<BATCH_HEADER_SIZE_BYTES>() else {
        return Err(DecodeError::Truncated {
            needed_bytes: len_u64(BATCH_HEADER_SIZE_BYTES),
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
    if fields.format_version != FORMAT_VERSION {
        return Err(DecodeError::UnsupportedVersion {
            expected: FORMAT_VERSION,
            actual: fields.format_version,
        });
    }
    if fields.flags != 0 {
        return Err(DecodeError::BadFlags {
            flags: fields.flags,
        });
    }
    let len_bytes_min = len_u32(BATCH_HEADER_SIZE_BYTES + RECORD_FIXED_SIZE_BYTES);
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

    let records = batch
        .get(BATCH_HEADER_SIZE_BYTES..)
        .expect("len_bytes ≥ the header size was checked");
    let mut rest = records;
    for record_index in 0..fields.record_count {
        let offset = Offset(fields.base_offset + u64::from(record_index));
        match parse_record(rest, offset) {
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
        partition_id: PartitionId(fields.partition_id),
        base_offset: Offset(fields.base_offset),
        record_count: fields.record_count,
        timestamp_ms: fields.timestamp_ms,
        prev_batch_crc: fields.prev_batch_crc,
        crc,
    })
}

/// Parses the record at the start of `bytes` (the rest of its batch) and returns it with the
/// bytes after it. The one record parser: validation and iteration cannot disagree.
fn parse_record(bytes: &[u8], offset: Offset) -> Result<(RecordView<'_>, &[u8]), RecordFault> {
    let available_bytes = len_u32(bytes.len());
    let mut reader = Reader { rest: bytes };
    let truncated_fixed = RecordFault::Truncated {
        needed_bytes: len_u32(RECORD_FIXED_SIZE_BYTES),
        available_bytes,
    };
    let (Some(record_length_bytes), Some(prev_key_offset), Some(key_len_bytes)) =
        (reader.u32(), reader.u64(), reader.u32())
    else {
        return Err(truncated_fixed);
    };
    let (Some(value_len_bytes), Some(header_count)) = (reader.u32(), reader.u16()) else {
        return Err(truncated_fixed);
    };
    let record_len = usize::try_from(record_length_bytes).expect("u32 fits in usize");
    let Some((record, after_record)) = bytes.split_at_checked(record_len) else {
        return Err(RecordFault::Truncated {
            needed_bytes: record_length_bytes,
            available_bytes,
        });
    };
    // Ends of fields relative to the record's start, in u64 so that no u32 length overflows.
    let mut field_end_bytes = len_u64(RECORD_FIXED_SIZE_BYTES);
    let overrun = |field_end_bytes: u64| RecordFault::FieldsOverrun {
        record_length_bytes,
        field_end_bytes,
    };
    // From here on, fields are read from the record only, so none can run into the next.
    let Some(record_fields) = record.get(RECORD_FIXED_SIZE_BYTES..) else {
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
    };
    Ok((view, after_record))
}

/// A validated batch, borrowed from the bytes it was decoded from. Only [`decode_batch`]
/// makes one.
#[derive(Clone, Copy)]
pub struct BatchView<'a> {
    bytes: &'a [u8],
    partition_id: PartitionId,
    base_offset: Offset,
    record_count: u32,
    timestamp_ms: u64,
    prev_batch_crc: u32,
    crc: u32,
}

impl<'a> BatchView<'a> {
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

    /// Server time at append, milliseconds since the Unix epoch.
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
            rest: self
                .bytes
                .get(BATCH_HEADER_SIZE_BYTES..)
                .unwrap_or_default(),
            next_offset: self.base_offset,
            remaining_count: self.record_count,
        }
    }
}

impl fmt::Debug for BatchView<'_> {
    // Without the bytes: a batch can be a mebibyte.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchView")
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
            .finish()
    }
}

/// The records of a [`BatchView`], in offset order.
#[derive(Clone, Debug)]
pub struct RecordIter<'a> {
    rest: &'a [u8],
    next_offset: Offset,
    remaining_count: u32,
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = RecordView<'a>;

    fn next(&mut self) -> Option<RecordView<'a>> {
        self.remaining_count = self.remaining_count.checked_sub(1)?;
        let (record, rest) = parse_record(self.rest, self.next_offset)
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
    /// The key; may be empty.
    pub key: &'a [u8],
    /// The value; may be empty.
    pub value: &'a [u8],
    headers_bytes: &'a [u8],
    header_count: u16,
}

impl<'a> RecordView<'a> {
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
    }

    fn meta(base_offset: u64) -> BatchMeta {
        BatchMeta {
            partition_id: PartitionId(7),
            base_offset: Offset(base_offset),
            timestamp_ms: 1_790_000_000_000,
            prev_batch_crc: 0xDEAD_BEEF,
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
            .map(|(record, headers)| input(&record.key, &record.value, headers))
            .collect();
        let prev_key_offsets: Vec<_> = records
            .iter()
            .map(|record| record.prev_key_offset)
            .collect();
        let len_bytes = batch_encoded_len(&inputs).unwrap();
        let mut out = vec![0; len_bytes];
        let encoded = encode_batch(&mut out, meta, &inputs, &prev_key_offsets).unwrap();
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
    const RECORD0_KEY_LEN: usize = RECORD0 + 12;
    const RECORD0_VALUE_LEN: usize = RECORD0 + 16;
    const RECORD0_HEADER_COUNT: usize = RECORD0 + 20;
    // key "k0" and value "v0", then header 0's name length.
    const RECORD0_HEADER0_NAME_LEN: usize = RECORD0 + RECORD_FIXED_SIZE_BYTES + 4;

    fn arb_bytes(len_max: usize) -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(any::<u8>(), 0..=len_max)
    }

    fn arb_records() -> impl Strategy<Value = (u64, Vec<OwnedRecord>)> {
        let record = (
            arb_bytes(40),
            arb_bytes(300),
            prop::collection::vec((arb_bytes(12), arb_bytes(30)), 0..4),
            any::<Option<u64>>(),
        );
        (0..u64::MAX / 2, prop::collection::vec(record, 1..8)).prop_map(|(base_offset, records)| {
            let records = records
                .into_iter()
                .enumerate()
                .map(|(index, (key, value, headers, prev))| {
                    let offset = base_offset + index as u64;
                    OwnedRecord {
                        key,
                        value,
                        headers,
                        // Any offset strictly before the record's own.
                        prev_key_offset: prev
                            .filter(|_| offset > 0)
                            .map(|prev| Offset(prev % offset)),
                    }
                })
                .collect();
            (base_offset, records)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn batch_round_trips((base_offset, records) in arb_records(), timestamp_ms: u64, prev_batch_crc: u32, partition: u32) {
            let meta = BatchMeta {
                partition_id: PartitionId(partition),
                base_offset: Offset(base_offset),
                timestamp_ms,
                prev_batch_crc,
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
        fn decode_never_panics_on_a_mutated_batch(position in 0_usize..200, byte: u8, reseal_crc: bool) {
            let mut bytes = sample_batch();
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
            let needed_bytes = if len < BATCH_HEADER_SIZE_BYTES {
                BATCH_HEADER_SIZE_BYTES
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
                Box::new(|b| patch(b, 8, &2_u16.to_le_bytes())),
                DecodeError::UnsupportedVersion {
                    expected: 1,
                    actual: 2,
                },
            ),
            (
                "flags",
                Box::new(|b| patch(b, 10, &4_u16.to_le_bytes())),
                DecodeError::BadFlags { flags: 4 },
            ),
            (
                "length too small",
                Box::new(|b| patch(b, 12, &69_u32.to_le_bytes())),
                DecodeError::LengthOutOfRange {
                    len_bytes: 69,
                    len_bytes_min: 70,
                    len_bytes_max: 1 << 20,
                },
            ),
            (
                "length too large",
                Box::new(|b| patch(b, 12, &((1_u32 << 20) + 1).to_le_bytes())),
                DecodeError::LengthOutOfRange {
                    len_bytes: (1 << 20) + 1,
                    len_bytes_min: 70,
                    len_bytes_max: 1 << 20,
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
                        needed_bytes: 22,
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
                Box::new(|b| patch(b, RECORD0, &21_u32.to_le_bytes())),
                malformed(
                    0,
                    RecordFault::FieldsOverrun {
                        record_length_bytes: 21,
                        field_end_bytes: 22,
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
                        field_end_bytes: 122,
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
                        field_end_bytes: 24 + u64::from(u32::MAX),
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
                        fields_len_bytes: 26,
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
        ];
        for (name, mutate, expected) in cases {
            let mut bytes = good.clone();
            mutate(&mut bytes);
            reseal(&mut bytes);
            assert_eq!(decode_result(&bytes), expected, "{name}");
        }
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
