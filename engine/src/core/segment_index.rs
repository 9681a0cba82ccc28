//! Segment index files: every batch location of one sealed segment, grouped by partition,
//! so that a partition's memory holds only a summary per segment (FORMAT.md, Segment index
//! file).
//!
//! A shard's core log interleaves many partitions' batches, so a sparse "entry every few
//! KiB" of the segment cannot bound a read by itself. Once a segment is sealed (the log
//! rolled past it and every group in it is synced) its index file lists each partition's
//! batches in offset order: base offset, record count, position, length and the running
//! maximum of record timestamps within the segment. The partition then keeps one
//! `SealedRun` per segment plus a sample per `INDEX_PAGE_ENTRY_COUNT` entries
//! (`core::offset_index`), and a lookup reads one page of entries: one bounded read.
//!
//! Everything here is sans-I/O: encoding, full verification (`decode`), and verification of
//! one page read back (`decode_page`). Bytes come from disk, so every check returns an
//! `IndexError`, never a panic. Entries carry their own checksum, because a page read
//! cannot check the whole file's; it covers the partition and segment too, so an entry
//! read from the wrong place does not verify.

#![deny(clippy::indexing_slicing)]

use crate::core::limits::BATCH_SIZE_BYTES_MAX;
use crate::core::offset_index::BatchLocation;
use crate::core::segment_header::SegmentHeader;
use crate::core::{Offset, PartitionId};

/// First eight bytes of every index file.
pub const INDEX_MAGIC: [u8; 8] = *b"CAIRNIDX";

/// The index file's format version.
pub const INDEX_FORMAT_VERSION: u16 = 1;

/// Bytes of the index file header.
pub const INDEX_HEADER_SIZE_BYTES: usize = 64;

/// Bytes of one partition table row.
pub const INDEX_PARTITION_SIZE_BYTES: usize = 40;

/// Bytes of one entry.
pub const INDEX_ENTRY_SIZE_BYTES: usize = 40;

/// Entries per page: a lookup in a sealed segment reads one page (5 KiB), found through
/// one in-memory sample per page.
pub const INDEX_PAGE_ENTRY_COUNT: usize = 128;

/// Where the header's checksum sits; it covers the bytes before it and every byte after
/// the header.
const HEADER_CRC_POSITION: usize = 60;

const _: () = assert!(8 + 2 + 2 + 2 + 2 + 8 + 8 + 8 + 4 + 4 + 4 + 4 + 4 == HEADER_CRC_POSITION);
const _: () = assert!(HEADER_CRC_POSITION + 4 == INDEX_HEADER_SIZE_BYTES);
const _: () = assert!(4 + 4 + 8 + 8 + 8 + 8 == INDEX_PARTITION_SIZE_BYTES);
const _: () = assert!(8 + 8 + 8 + 4 + 4 + 4 + 4 == INDEX_ENTRY_SIZE_BYTES);

/// Why bytes are not a valid index file (or page of one) for the segment asked about.
/// They come from disk, so this is returned, never asserted. Any of them means the file is
/// rebuilt at open; read back later, it fails the read with a storage error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    /// Fewer bytes than the header and counts require.
    #[error("index file needs {needed_bytes} bytes, {available_bytes} available")]
    Truncated {
        needed_bytes: u64,
        available_bytes: u64,
    },
    /// More bytes than the content and its padding to a block.
    #[error("index file holds {available_bytes} bytes, its content only {needed_bytes}")]
    TrailingBytes {
        needed_bytes: u64,
        available_bytes: u64,
    },
    /// The first eight bytes are not `CAIRNIDX`.
    #[error("index magic is not CAIRNIDX")]
    BadMagic,
    /// A format version this code cannot read.
    #[error("index format version {actual} is not the supported {expected}")]
    UnsupportedVersion { expected: u16, actual: u16 },
    /// The bytes do not match the header's checksum.
    #[error("index checksum {actual:#010x} does not match header {expected:#010x}")]
    ChecksumMismatch { expected: u32, actual: u32 },
    /// The file belongs to another segment (or an earlier life of this one).
    #[error("index file is for {field} {actual}, the segment's is {expected}")]
    WrongSegment {
        field: &'static str,
        expected: u64,
        actual: u64,
    },
    /// The partition table or an entry contradicts the rest of the file.
    #[error("index {what} at {position} is inconsistent: {reason}")]
    Inconsistent {
        what: &'static str,
        position: u64,
        reason: &'static str,
    },
    /// An entry does not match its checksum.
    #[error("index entry at {position}: checksum {actual:#010x}, expected {expected:#010x}")]
    EntryChecksumMismatch {
        position: u64,
        expected: u32,
        actual: u32,
    },
}

/// One batch as an index file holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// Offset of the batch's first record.
    pub base_offset: Offset,
    /// Records in the batch (at least one).
    pub record_count: u32,
    /// Byte position of the batch in its segment.
    pub position: u64,
    /// Encoded length of the batch.
    pub len_bytes: u32,
    /// Largest record timestamp (ms) of this partition's batches in this segment, up to
    /// and including this one: a running maximum within the segment.
    pub max_timestamp_ms: i64,
}

impl IndexEntry {
    /// Offset just after the batch's last record.
    pub fn end_offset(&self) -> Offset {
        self.base_offset.plus(u64::from(self.record_count))
    }

    /// Where the batch lies in segment `segment_index`.
    pub fn location(&self, segment_index: u64) -> BatchLocation {
        BatchLocation {
            base_offset: self.base_offset,
            end_offset: self.end_offset(),
            segment_index,
            position: self.position,
            len_bytes: self.len_bytes,
        }
    }
}

/// One partition's batches in one segment, in offset order (at least one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionEntries {
    /// The partition.
    pub partition_id: PartitionId,
    /// Its batches in the segment.
    pub entries: Vec<IndexEntry>,
}

/// The content of one segment's index file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentIndex {
    /// The header of the segment it indexes (shard, shard count, index, size).
    pub segment: SegmentHeader,
    /// Just after the segment's last batch: a stale index next to a segment whose data
    /// ends elsewhere is rejected.
    pub data_end_position: u64,
    /// Each partition with batches in the segment, by id.
    pub partitions: Vec<PartitionEntries>,
}

/// Where one partition's entries lie in an index file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionPlacement {
    /// The partition.
    pub partition_id: PartitionId,
    /// Byte position of its first entry in the file.
    pub entries_position: u64,
    /// Its entries.
    pub entry_count: u32,
}

/// A page of one partition's entries to read from a sealed segment's index file, and what
/// the in-memory summary says it must hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexPage {
    /// The partition whose entries these are.
    pub partition_id: PartitionId,
    /// The sealed segment.
    pub segment_index: u64,
    /// Byte position of the page's first entry in the index file.
    pub position: u64,
    /// Entries to read (at least one).
    pub entry_count: u32,
    /// Base offset of the page's first batch.
    pub base_offset: Offset,
    /// End offset of the page's last batch.
    pub end_offset: Offset,
}

impl IndexPage {
    /// Bytes to read.
    pub fn len_bytes(&self) -> usize {
        self.entry_count as usize * INDEX_ENTRY_SIZE_BYTES
    }
}

/// Builds a `SegmentIndex` from batches in log order (a segment scan), computing each
/// partition's running maximum of timestamps within the segment.
#[derive(Debug, Default)]
pub struct SegmentIndexBuilder {
    partitions: std::collections::BTreeMap<PartitionId, Vec<IndexEntry>>,
    data_end_position: u64,
}

impl SegmentIndexBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the next batch of the segment: `location` with its own largest record
    /// timestamp `batch_max_timestamp_ms`.
    pub fn push(&mut self, partition_id: PartitionId, location: &BatchLocation, batch_max_ms: i64) {
        let entries = self.partitions.entry(partition_id).or_default();
        let running_max_ms = entries
            .last()
            .map_or(batch_max_ms, |last| last.max_timestamp_ms.max(batch_max_ms));
        entries.push(entry_of(location, running_max_ms));
        self.data_end_position = self
            .data_end_position
            .max(location.position + u64::from(location.len_bytes));
    }

    /// The index of `segment`.
    pub fn finish(self, segment: SegmentHeader) -> SegmentIndex {
        SegmentIndex {
            segment,
            data_end_position: self.data_end_position,
            partitions: self
                .partitions
                .into_iter()
                .map(|(partition_id, entries)| PartitionEntries {
                    partition_id,
                    entries,
                })
                .collect(),
        }
    }
}

/// The entry of a batch at `location` whose running maximum timestamp is `running_max_ms`.
pub fn entry_of(location: &BatchLocation, running_max_ms: i64) -> IndexEntry {
    IndexEntry {
        base_offset: location.base_offset,
        record_count: u32::try_from(location.end_offset.0 - location.base_offset.0)
            .expect("a batch holds at most BATCH_RECORD_COUNT_MAX records"),
        position: location.position,
        len_bytes: location.len_bytes,
        max_timestamp_ms: running_max_ms,
    }
}

impl SegmentIndex {
    /// Entries over all partitions.
    pub fn entry_count(&self) -> usize {
        self.partitions
            .iter()
            .map(|partition| partition.entries.len())
            .sum()
    }

    /// Where each partition's entries lie in the encoded file, by id.
    pub fn placements(&self) -> Vec<PartitionPlacement> {
        placements(&self.partitions)
    }

    /// The file's bytes (FORMAT.md, Segment index file), without padding.
    ///
    /// # Panics
    ///
    /// If partitions are not in id order or a partition has no entry: the callers build it
    /// from a segment's batches, so either is our bug.
    pub fn encode(&self) -> Vec<u8> {
        assert!(
            self.partitions
                .windows(2)
                .all(|pair| matches!(pair, [a, b] if a.partition_id < b.partition_id)),
            "partitions of an index are in id order"
        );
        let partition_count = self.partitions.len();
        let entry_count = self.entry_count();
        let len_bytes =
            entries_start(partition_count) as usize + entry_count * INDEX_ENTRY_SIZE_BYTES;
        let mut bytes = Vec::with_capacity(len_bytes);
        bytes.extend_from_slice(&INDEX_MAGIC);
        bytes.extend_from_slice(&INDEX_FORMAT_VERSION.to_le_bytes());
        bytes.extend_from_slice(&self.segment.shard_id.0.to_le_bytes());
        bytes.extend_from_slice(&self.segment.shard_count.to_le_bytes());
        bytes.extend_from_slice(&self.segment.generation.to_le_bytes());
        bytes.extend_from_slice(&self.segment.segment_index.to_le_bytes());
        bytes.extend_from_slice(&self.segment.segment_size_bytes.to_le_bytes());
        bytes.extend_from_slice(&self.data_end_position.to_le_bytes());
        bytes.extend_from_slice(&u32_of(partition_count).to_le_bytes());
        bytes.extend_from_slice(&u32_of(entry_count).to_le_bytes());
        bytes.extend_from_slice(&[0u8; 12]);
        debug_assert_eq!(bytes.len(), HEADER_CRC_POSITION);
        bytes.extend_from_slice(&0u32.to_le_bytes());
        for placement in self.placements().iter().zip(&self.partitions) {
            let (placement, partition) = placement;
            let first = partition
                .entries
                .first()
                .expect("a partition of an index has at least one entry");
            let last = partition.entries.last().expect("checked just above");
            bytes.extend_from_slice(&partition.partition_id.0.to_le_bytes());
            bytes.extend_from_slice(&placement.entry_count.to_le_bytes());
            bytes.extend_from_slice(&placement.entries_position.to_le_bytes());
            bytes.extend_from_slice(&first.base_offset.0.to_le_bytes());
            bytes.extend_from_slice(&last.end_offset().0.to_le_bytes());
            bytes.extend_from_slice(&last.max_timestamp_ms.to_le_bytes());
        }
        for partition in &self.partitions {
            for entry in &partition.entries {
                encode_entry(
                    &mut bytes,
                    partition.partition_id,
                    self.segment.segment_index,
                    entry,
                );
            }
        }
        debug_assert_eq!(bytes.len(), len_bytes);
        let crc = file_crc(&bytes);
        bytes
            .get_mut(HEADER_CRC_POSITION..INDEX_HEADER_SIZE_BYTES)
            .expect("the header is written")
            .copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    /// Decodes and verifies a whole index file for `segment` (padding to a block allowed
    /// after the content): magic, version, checksum, identity, partition table, every
    /// entry. `data_end_position` is not checked here: the caller compares it with the
    /// segment.
    ///
    /// # Errors
    ///
    /// Any mismatch, as an `IndexError`.
    pub fn decode(bytes: &[u8], segment: &SegmentHeader) -> Result<SegmentIndex, IndexError> {
        let header = bytes
            .get(..INDEX_HEADER_SIZE_BYTES)
            .ok_or(IndexError::Truncated {
                needed_bytes: INDEX_HEADER_SIZE_BYTES as u64,
                available_bytes: bytes.len() as u64,
            })?;
        if header.get(..8) != Some(INDEX_MAGIC.as_slice()) {
            return Err(IndexError::BadMagic);
        }
        let version = read_u16(header, 8);
        if version != INDEX_FORMAT_VERSION {
            return Err(IndexError::UnsupportedVersion {
                expected: INDEX_FORMAT_VERSION,
                actual: version,
            });
        }
        let partition_count = read_u32(header, 40) as usize;
        let entry_count = read_u32(header, 44) as usize;
        let needed_bytes =
            entries_start(partition_count) + entry_count as u64 * INDEX_ENTRY_SIZE_BYTES as u64;
        let available_bytes = bytes.len() as u64;
        if available_bytes < needed_bytes {
            return Err(IndexError::Truncated {
                needed_bytes,
                available_bytes,
            });
        }
        let block_bytes = crate::core::limits::BLOCK_SIZE_BYTES as u64;
        if available_bytes > needed_bytes.div_ceil(block_bytes) * block_bytes {
            return Err(IndexError::TrailingBytes {
                needed_bytes,
                available_bytes,
            });
        }
        let content = bytes
            .get(..usize::try_from(needed_bytes).unwrap_or(usize::MAX))
            .ok_or(IndexError::Truncated {
                needed_bytes,
                available_bytes,
            })?;
        let expected_crc = read_u32(header, HEADER_CRC_POSITION);
        let actual_crc = file_crc(content);
        if expected_crc != actual_crc {
            return Err(IndexError::ChecksumMismatch {
                expected: expected_crc,
                actual: actual_crc,
            });
        }
        let identity = [
            (
                "shard",
                u64::from(segment.shard_id.0),
                u64::from(read_u16(header, 10)),
            ),
            (
                "shard count",
                u64::from(segment.shard_count),
                u64::from(read_u16(header, 12)),
            ),
            ("segment", segment.segment_index, read_u64(header, 16)),
            (
                "segment size",
                segment.segment_size_bytes,
                read_u64(header, 24),
            ),
            (
                "segment generation",
                u64::from(segment.generation),
                u64::from(read_u16(header, 14)),
            ),
        ];
        for (field, expected, actual) in identity {
            if expected != actual {
                return Err(IndexError::WrongSegment {
                    field,
                    expected,
                    actual,
                });
            }
        }
        let reserved_zero = header
            .get(48..HEADER_CRC_POSITION)
            .is_some_and(|reserved| reserved.iter().all(|byte| *byte == 0));
        if !reserved_zero {
            return Err(inconsistent("header", 0, "reserved bytes are not zero"));
        }
        let data_end_position = read_u64(header, 32);
        let mut partitions = Vec::with_capacity(partition_count);
        let mut next_entries_position = entries_start(partition_count);
        let mut previous_id: Option<PartitionId> = None;
        for row_index in 0..partition_count {
            let row_position = INDEX_HEADER_SIZE_BYTES + row_index * INDEX_PARTITION_SIZE_BYTES;
            let row = content
                .get(row_position..row_position + INDEX_PARTITION_SIZE_BYTES)
                .ok_or(IndexError::Truncated {
                    needed_bytes,
                    available_bytes,
                })?;
            let position = row_position as u64;
            let partition_id = PartitionId(read_u32(row, 0));
            let row_entry_count = read_u32(row, 4);
            let entries_position = read_u64(row, 8);
            let base_offset = Offset(read_u64(row, 16));
            let end_offset = Offset(read_u64(row, 24));
            if previous_id.is_some_and(|previous| previous >= partition_id) {
                return Err(inconsistent(
                    "partition row",
                    position,
                    "partitions are not in id order",
                ));
            }
            previous_id = Some(partition_id);
            if row_entry_count == 0 {
                return Err(inconsistent(
                    "partition row",
                    position,
                    "a partition without entries",
                ));
            }
            if entries_position != next_entries_position {
                return Err(inconsistent(
                    "partition row",
                    position,
                    "entries do not follow the previous partition's",
                ));
            }
            let max_timestamp_ms = read_u64(row, 32).cast_signed();
            let page = IndexPage {
                partition_id,
                segment_index: segment.segment_index,
                position: entries_position,
                entry_count: row_entry_count,
                base_offset,
                end_offset,
            };
            let start = usize::try_from(entries_position).unwrap_or(usize::MAX);
            let entries_bytes = content
                .get(start..start.saturating_add(page.len_bytes()))
                .ok_or(inconsistent(
                    "partition row",
                    position,
                    "entries run past the file",
                ))?;
            let entries = decode_page(entries_bytes, &page)?;
            if entries.last().map(|entry| entry.max_timestamp_ms) != Some(max_timestamp_ms) {
                return Err(inconsistent(
                    "partition row",
                    position,
                    "its maximum timestamp is not its last entry's",
                ));
            }
            next_entries_position += entries_bytes.len() as u64;
            partitions.push(PartitionEntries {
                partition_id,
                entries,
            });
        }
        if next_entries_position != needed_bytes {
            return Err(inconsistent(
                "partition table",
                INDEX_HEADER_SIZE_BYTES as u64,
                "entry counts do not add up",
            ));
        }
        Ok(SegmentIndex {
            segment: *segment,
            data_end_position,
            partitions,
        })
    }
}

/// Verifies `bytes`, read from an index file at `page.position`, as the page the summary
/// promised: each entry's checksum (which covers its partition and segment), offsets dense
/// from `page.base_offset` to `page.end_offset`, positions and lengths possible, the
/// running maximum never decreasing. A run's first entry may start any timestamp.
///
/// # Errors
///
/// Any mismatch, as an `IndexError`: the read is refused, never answered wrongly.
pub fn decode_page(bytes: &[u8], page: &IndexPage) -> Result<Vec<IndexEntry>, IndexError> {
    if bytes.len() != page.len_bytes() {
        return Err(IndexError::Truncated {
            needed_bytes: page.len_bytes() as u64,
            available_bytes: bytes.len() as u64,
        });
    }
    let mut entries: Vec<IndexEntry> = Vec::with_capacity(page.entry_count as usize);
    let mut next_offset = page.base_offset;
    for (index, chunk) in bytes.chunks_exact(INDEX_ENTRY_SIZE_BYTES).enumerate() {
        let position = page.position + (index * INDEX_ENTRY_SIZE_BYTES) as u64;
        let expected = read_u32(chunk, 32);
        let actual = entry_crc(
            page.partition_id,
            page.segment_index,
            chunk.get(..32).unwrap_or_default(),
        );
        if expected != actual {
            return Err(IndexError::EntryChecksumMismatch {
                position,
                expected,
                actual,
            });
        }
        let entry = IndexEntry {
            base_offset: Offset(read_u64(chunk, 0)),
            position: read_u64(chunk, 8),
            max_timestamp_ms: read_u64(chunk, 16).cast_signed(),
            len_bytes: read_u32(chunk, 24),
            record_count: read_u32(chunk, 28),
        };
        if read_u32(chunk, 36) != 0 {
            return Err(inconsistent(
                "entry",
                position,
                "reserved bytes are not zero",
            ));
        }
        if entry.base_offset != next_offset {
            return Err(inconsistent(
                "entry",
                position,
                "offsets are not dense from the page's first",
            ));
        }
        if entry.record_count == 0
            || entry.len_bytes == 0
            || entry.len_bytes as usize > BATCH_SIZE_BYTES_MAX
        {
            return Err(inconsistent("entry", position, "a batch that cannot exist"));
        }
        if let Some(previous) = entries.last() {
            if entry.position < previous.position + u64::from(previous.len_bytes) {
                return Err(inconsistent(
                    "entry",
                    position,
                    "batches overlap or go back",
                ));
            }
            if entry.max_timestamp_ms < previous.max_timestamp_ms {
                return Err(inconsistent(
                    "entry",
                    position,
                    "the running maximum timestamp decreases",
                ));
            }
        }
        next_offset = Offset(
            entry
                .base_offset
                .0
                .checked_add(u64::from(entry.record_count))
                .ok_or(inconsistent("entry", position, "offsets overflow"))?,
        );
        entries.push(entry);
    }
    if next_offset != page.end_offset {
        return Err(inconsistent(
            "page",
            page.position,
            "entries do not end where the summary says",
        ));
    }
    Ok(entries)
}

/// Where each of `partitions` (in id order) has its entries in their index file.
pub fn placements(partitions: &[PartitionEntries]) -> Vec<PartitionPlacement> {
    let mut entries_position = entries_start(partitions.len());
    partitions
        .iter()
        .map(|partition| {
            let placement = PartitionPlacement {
                partition_id: partition.partition_id,
                entries_position,
                entry_count: u32::try_from(partition.entries.len())
                    .expect("a segment holds fewer than 2^32 batches"),
            };
            entries_position += partition.entries.len() as u64 * INDEX_ENTRY_SIZE_BYTES as u64;
            placement
        })
        .collect()
}

/// Byte position of the first entry in a file with `partition_count` partitions.
fn entries_start(partition_count: usize) -> u64 {
    (INDEX_HEADER_SIZE_BYTES + partition_count * INDEX_PARTITION_SIZE_BYTES) as u64
}

fn encode_entry(
    bytes: &mut Vec<u8>,
    partition_id: PartitionId,
    segment_index: u64,
    entry: &IndexEntry,
) {
    let start = bytes.len();
    bytes.extend_from_slice(&entry.base_offset.0.to_le_bytes());
    bytes.extend_from_slice(&entry.position.to_le_bytes());
    bytes.extend_from_slice(&entry.max_timestamp_ms.to_le_bytes());
    bytes.extend_from_slice(&entry.len_bytes.to_le_bytes());
    bytes.extend_from_slice(&entry.record_count.to_le_bytes());
    let crc = entry_crc(
        partition_id,
        segment_index,
        bytes.get(start..).unwrap_or_default(),
    );
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes.extend_from_slice(&0u32.to_le_bytes());
}

/// An entry's checksum: its first 32 bytes, after its partition and segment.
fn entry_crc(partition_id: PartitionId, segment_index: u64, fields: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&partition_id.0.to_le_bytes());
    hasher.update(&segment_index.to_le_bytes());
    hasher.update(fields);
    hasher.finalize()
}

/// The header checksum: the header before it and everything after the header.
fn file_crc(content: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(content.get(..HEADER_CRC_POSITION).unwrap_or_default());
    hasher.update(content.get(INDEX_HEADER_SIZE_BYTES..).unwrap_or_default());
    hasher.finalize()
}

fn inconsistent(what: &'static str, position: u64, reason: &'static str) -> IndexError {
    IndexError::Inconsistent {
        what,
        position,
        reason,
    }
}

fn u32_of(count: usize) -> u32 {
    u32::try_from(count).expect("a segment holds fewer than 2^32 batches")
}

fn read_u16(bytes: &[u8], at: usize) -> u16 {
    let mut field = [0u8; 2];
    if let Some(source) = bytes.get(at..at + 2) {
        field.copy_from_slice(source);
    }
    u16::from_le_bytes(field)
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut field = [0u8; 4];
    if let Some(source) = bytes.get(at..at + 4) {
        field.copy_from_slice(source);
    }
    u32::from_le_bytes(field)
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut field = [0u8; 8];
    if let Some(source) = bytes.get(at..at + 8) {
        field.copy_from_slice(source);
    }
    u64::from_le_bytes(field)
}

/// A segment header for tests of index files.
#[cfg(test)]
pub(crate) fn test_segment(segment_index: u64) -> SegmentHeader {
    SegmentHeader {
        shard_id: crate::core::ShardId(1),
        shard_count: 2,
        segment_index,
        segment_size_bytes: 64 * 4096,
        generation: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Bytes from disk: any of them decode to an error or an index, never a panic; a
        /// valid file with random edits is never taken for another valid index.
        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..600),
            edits in proptest::collection::vec((0usize..400, any::<u8>()), 1..4),
        ) {
            let _ = SegmentIndex::decode(&bytes, &test_segment(7));
            let page = IndexPage {
                partition_id: PartitionId(1),
                segment_index: 7,
                position: 0,
                entry_count: u32::try_from(bytes.len() / INDEX_ENTRY_SIZE_BYTES).unwrap(),
                base_offset: Offset(0),
                end_offset: Offset(3),
            };
            let _ = decode_page(&bytes[..page.len_bytes()], &page);
            let original = index();
            let mut edited = original.encode();
            for (at, value) in edits {
                let len = edited.len();
                edited[at % len] = value;
            }
            if let Ok(decoded) = SegmentIndex::decode(&edited, &test_segment(7)) {
                prop_assert_eq!(decoded, original);
            }
        }
    }

    fn index() -> SegmentIndex {
        let mut builder = SegmentIndexBuilder::new();
        let mut position = 4096;
        for (partition, base, count, timestamp_ms) in
            [(3, 0, 1, 50), (1, 0, 2, 10), (3, 1, 3, 40), (1, 2, 1, 30)]
        {
            let location = BatchLocation {
                base_offset: Offset(base),
                end_offset: Offset(base + count),
                segment_index: 7,
                position,
                len_bytes: 100,
            };
            builder.push(PartitionId(partition), &location, timestamp_ms);
            position += 100;
        }
        builder.finish(test_segment(7))
    }

    #[test]
    fn an_index_round_trips_and_places_partitions_in_id_order() {
        let index = index();
        assert_eq!(index.partitions[0].partition_id, PartitionId(1));
        assert_eq!(
            index.partitions[1]
                .entries
                .iter()
                .map(|entry| entry.max_timestamp_ms)
                .collect::<Vec<_>>(),
            vec![50, 50],
            "the running maximum holds within the segment"
        );
        assert_eq!(index.data_end_position, 4096 + 400);
        let bytes = index.encode();
        assert_eq!(bytes.len(), 64 + 2 * 40 + 4 * 40);
        assert_eq!(
            SegmentIndex::decode(&bytes, &test_segment(7)),
            Ok(index.clone())
        );
        let mut padded = bytes.clone();
        padded.resize(4096, 0);
        assert_eq!(SegmentIndex::decode(&padded, &test_segment(7)), Ok(index));
    }

    #[test]
    fn every_truncation_is_rejected() {
        let bytes = index().encode();
        for len in 0..bytes.len() {
            assert!(
                SegmentIndex::decode(bytes.get(..len).unwrap(), &test_segment(7)).is_err(),
                "cut at {len}"
            );
        }
    }

    #[test]
    fn every_flipped_bit_is_rejected() {
        let bytes = index().encode();
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(
                SegmentIndex::decode(&flipped, &test_segment(7)).is_err(),
                "bit {bit} flipped"
            );
        }
    }

    #[test]
    fn an_index_of_another_segment_is_rejected() {
        let bytes = index().encode();
        assert_eq!(
            SegmentIndex::decode(&bytes, &test_segment(8)),
            Err(IndexError::WrongSegment {
                field: "segment",
                expected: 8,
                actual: 7
            })
        );
        let resized = SegmentHeader {
            segment_size_bytes: 128 * 4096,
            generation: 0,
            ..test_segment(7)
        };
        assert!(matches!(
            SegmentIndex::decode(&bytes, &resized),
            Err(IndexError::WrongSegment {
                field: "segment size",
                ..
            })
        ));
        let mut long = bytes;
        long.resize(8192, 0);
        assert!(matches!(
            SegmentIndex::decode(&long, &test_segment(7)),
            Err(IndexError::TrailingBytes { .. })
        ));
    }

    #[test]
    fn a_page_verifies_against_its_summary() {
        let index = index();
        let bytes = index.encode();
        let placement = index.placements()[1];
        let page = IndexPage {
            partition_id: PartitionId(3),
            segment_index: 7,
            position: placement.entries_position,
            entry_count: 2,
            base_offset: Offset(0),
            end_offset: Offset(4),
        };
        let start = page.position as usize;
        let page_bytes = &bytes[start..start + page.len_bytes()];
        assert_eq!(
            decode_page(page_bytes, &page),
            Ok(index.partitions[1].entries.clone())
        );
        // The same bytes, claimed for another partition or segment, or other offsets.
        for wrong in [
            IndexPage {
                partition_id: PartitionId(1),
                ..page
            },
            IndexPage {
                segment_index: 8,
                ..page
            },
            IndexPage {
                base_offset: Offset(1),
                ..page
            },
            IndexPage {
                end_offset: Offset(5),
                ..page
            },
        ] {
            assert!(decode_page(page_bytes, &wrong).is_err(), "{wrong:?}");
        }
        assert!(decode_page(&page_bytes[..79], &page).is_err());
        for bit in 0..page_bytes.len() * 8 {
            let mut flipped = page_bytes.to_vec();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_page(&flipped, &page).is_err(), "bit {bit} flipped");
        }
    }
}
