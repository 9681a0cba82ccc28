//! Recovery: where a shard's core log ends after a crash, and which batches it holds up to
//! there (FORMAT.md, "Recovery: where the log ends").
//!
//! [`RecoveryScanner`] walks the core log's segments in index order and accepts a batch only
//! if it is valid (`decode_batch`), chains to the previous accepted batch
//! (`prev_batch_crc`, 0 for the first of the log) and continues its partition's offsets
//! (`base_offset` equals the partition's next offset, 0 for a partition not yet seen). So
//! what it accepts is a prefix of what was written, and bytes from an earlier life of a file
//! that lie beyond a torn write are never resurrected (docs/DESIGN.md §3.2).
//!
//! It is sans-I/O and resumable: the shell reads a segment in chunks and feeds them to
//! [`RecoveryScanner::scan`], which says either where it needs more bytes
//! ([`ScanProgress::NeedMore`]) or how the segment's data ended ([`ScanProgress::SegmentEnd`]).
//! The chain CRC and every partition's next offset carry over from one segment to the next.
//!
//! # Driving it
//!
//! For each segment in index order: read and verify block 0 with `SegmentHeader::decode`
//! (stop if the file is missing or its header does not verify), call
//! [`RecoveryScanner::begin_segment`], then [`RecoveryScanner::scan`] until `SegmentEnd`.
//! Whether the NEXT segment continues the log is decided there too: if its `SegmentEnd` has
//! `accepted_batch_count == 0`, its first batch did not chain and the log ended in the
//! previous segment, whose `valid_end` and `tail` are the answer. (The writer only rolls when
//! a group does not fit, so a log never resumes after an empty segment.) The shell then writes
//! its next group at the first block boundary at or after that `valid_end`.
//!
//! # Decision table
//!
//! At each position *p* the scanner observes five facts and takes the one decision whose row
//! matches (`DECISION_TABLE`; a test checks that every combination matches exactly one row):
//!
//! | header fits | batch valid | continues log | *p* block-aligned | tail zero | decision |
//! |---|---|---|---|---|---|
//! | no  | any | any | any | yes | segment ends, `Clean` |
//! | no  | any | any | any | no  | segment ends, `TornTail` |
//! | yes | yes | yes | any | any | accept, *p* += length |
//! | yes | no  | any | no  | any | retry at the next block boundary |
//! | yes | yes | no  | no  | any | retry at the next block boundary |
//! | yes | no  | any | yes | yes | segment ends, `Clean` |
//! | yes | no  | any | yes | no  | segment ends, `TornTail` |
//! | yes | yes | no  | yes | any | segment ends, `TornTail` |
//!
//! - *header fits*: at least `BATCH_HEADER_V1_SIZE_BYTES` (48, the header prefix every format
//!   version shares, which `decode_batch` needs to judge a batch) remain before the segment's end.
//! - *batch valid*: `decode_batch` accepts the bytes at *p*, which must end within the segment.
//! - *continues log*: the batch chains and continues its partition's offsets (see above).
//! - *tail zero*: every byte from the end of the last batch accepted in this segment to the
//!   end of *p*'s block (or of the segment) is zero. Only looked at when nothing is accepted.
//!
//! A retry is what skips a group's zero padding (groups start at block boundaries) or the
//! torn remainder of a block; it happens at most once per invalid position, because the
//! boundary it lands on is block-aligned. A torn batch inside a group can never be skipped
//! to reach a later batch: that one chains to the torn batch, not to the last accepted one.
//! A valid batch that does not continue the log is stale (from an earlier life of the file);
//! it is never all zeros, so it ends the segment as `TornTail`.

#![deny(clippy::indexing_slicing)]

use hashbrown::HashMap;

use crate::core::limits::{
    BATCH_SIZE_BYTES_MAX, BLOCK_SIZE_BYTES, GROUP_SIZE_BYTES_MAX, SEGMENT_SIZE_BYTES_MAX,
};
use crate::core::record::{BATCH_HEADER_V1_SIZE_BYTES, BatchView, DecodeError, decode_batch};
use crate::core::segment_header::SEGMENT_HEADER_SIZE_BYTES;
use crate::core::{Offset, PartitionId, SegmentPosition};

/// Bytes a chunk must hold beyond a [`ScanProgress::NeedMore`] position, unless it reaches
/// the end of the segment: the largest batch, plus a block for the retry after an invalid
/// one. With that many bytes the scanner always decides the position (a test asserts it).
pub const SCAN_LOOKAHEAD_BYTES: usize = BATCH_SIZE_BYTES_MAX + BLOCK_SIZE_BYTES;

const BLOCK_SIZE: u64 = BLOCK_SIZE_BYTES as u64;
const SEGMENT_DATA_START: u64 = SEGMENT_HEADER_SIZE_BYTES as u64;
const BATCH_HEADER_SIZE: u64 = BATCH_HEADER_V1_SIZE_BYTES as u64;

const _: () = assert!(SEGMENT_HEADER_SIZE_BYTES.is_multiple_of(BLOCK_SIZE_BYTES));
const _: () = assert!(crate::core::record::BATCH_HEADER_SIZE_BYTES <= BLOCK_SIZE_BYTES);

/// How a segment's data ended (FORMAT.md, "Recovery: where the log ends").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TailKind {
    /// Only zeros from the end of the last accepted batch to the end of the block tried last:
    /// the log simply stopped there.
    Clean,
    /// Something non-zero follows the last accepted batch: a torn or partial write, or stale
    /// bytes from an earlier life of the file. Never acknowledged, safe to overwrite.
    TornTail,
}

/// What [`RecoveryScanner::scan`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanProgress {
    /// Everything before `position` is decided; the next batch starts at or after it and
    /// extends past the chunk. Call scan again with a chunk that starts at a block-aligned
    /// position ≤ `position` and holds at least [`SCAN_LOOKAHEAD_BYTES`] bytes beyond it (or
    /// reaches the end of the segment).
    NeedMore { position: u64 },
    /// This segment's data ends. `valid_end`: position just after the last batch accepted in
    /// this segment (`SEGMENT_HEADER_SIZE_BYTES` if none).
    SegmentEnd {
        valid_end: u64,
        accepted_batch_count: u64,
        tail: TailKind,
    },
}

/// Walks a core log's segments and accepts the batches that form its valid prefix.
///
/// Carries the chain CRC (the `crc` of the last accepted batch, 0 before the first), each
/// partition's next offset, and the position reached in the current segment.
#[derive(Debug, Clone)]
pub struct RecoveryScanner {
    chain_crc: u32,
    next_offsets: HashMap<PartitionId, Offset>,
    segment: Option<SegmentScan>,
}

/// Where the scan of one segment stands.
#[derive(Debug, Clone, Copy)]
struct SegmentScan {
    segment_size_bytes: u64,
    /// Where the next decision is taken.
    position: u64,
    /// Just after the last batch accepted in this segment.
    valid_end: u64,
    /// Whether every byte in `valid_end..position` is zero (they differ after a retry).
    gap_is_zero: bool,
    accepted_batch_count: u64,
    /// Set once the segment's data has ended; later calls repeat the answer.
    tail: Option<TailKind>,
}

impl SegmentScan {
    fn end(&self, tail: TailKind) -> ScanProgress {
        ScanProgress::SegmentEnd {
            valid_end: self.valid_end,
            accepted_batch_count: self.accepted_batch_count,
            tail,
        }
    }
}

impl Default for RecoveryScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl RecoveryScanner {
    /// A scanner at the start of a core log: chain CRC 0, no partition seen.
    #[must_use]
    pub fn new() -> Self {
        RecoveryScanner {
            chain_crc: 0,
            next_offsets: HashMap::new(),
            segment: None,
        }
    }

    /// A scanner that continues a log a checkpoint covered (`core::checkpoint`): the chain
    /// at its last batch and each partition's next offset. Begin the segment it ends in
    /// with `begin_segment_after`.
    #[must_use]
    pub fn resume(
        chain_crc: u32,
        next_offsets: impl IntoIterator<Item = (PartitionId, Offset)>,
    ) -> Self {
        RecoveryScanner {
            chain_crc,
            next_offsets: next_offsets.into_iter().collect(),
            segment: None,
        }
    }

    /// Starts a segment in its middle, after a checkpoint's last batch, which ends at
    /// `valid_end`: the scan goes on at the next block boundary, where the group after it
    /// was written, as if it had scanned the segment from its start. Same contract as
    /// `begin_segment`; `valid_end` lies within the segment's data.
    pub fn begin_segment_after(&mut self, segment_size_bytes: u64, valid_end: u64) {
        self.begin_segment(segment_size_bytes);
        assert!(
            (SEGMENT_DATA_START..=segment_size_bytes).contains(&valid_end),
            "resume position {valid_end} outside a segment of {segment_size_bytes}"
        );
        let segment = self.segment.as_mut().expect("begin_segment just set it");
        segment.valid_end = valid_end;
        segment.position = valid_end.div_ceil(BLOCK_SIZE) * BLOCK_SIZE;
    }

    /// Starts a segment; the scanner's chain and partition state carry over from the
    /// previous one. `segment_size_bytes` comes from the verified segment header.
    ///
    /// # Panics
    ///
    /// If the previous segment's scan has not reached `SegmentEnd`, or the size is not a
    /// whole number of blocks larger than the header and at most `SEGMENT_SIZE_BYTES_MAX`.
    /// (Smaller sizes than `SEGMENT_SIZE_BYTES_MIN` are accepted so tests can use them.)
    pub fn begin_segment(&mut self, segment_size_bytes: u64) {
        if let Some(segment) = &self.segment {
            assert!(
                segment.tail.is_some(),
                "segment scan abandoned at position {} before its end",
                segment.position
            );
        }
        assert!(
            segment_size_bytes.is_multiple_of(BLOCK_SIZE),
            "segment size {segment_size_bytes} is not a whole number of blocks"
        );
        assert!(
            segment_size_bytes > SEGMENT_DATA_START,
            "segment size {segment_size_bytes} leaves no room for data"
        );
        assert!(
            segment_size_bytes <= SEGMENT_SIZE_BYTES_MAX,
            "segment size {segment_size_bytes} exceeds {SEGMENT_SIZE_BYTES_MAX}"
        );
        self.segment = Some(SegmentScan {
            segment_size_bytes,
            position: SEGMENT_DATA_START,
            valid_end: SEGMENT_DATA_START,
            gap_is_zero: true,
            accepted_batch_count: 0,
            tail: None,
        });
    }

    /// Scans `chunk`, whose first byte is at segment position `chunk_position`
    /// (block-aligned, ≥ `SEGMENT_HEADER_SIZE_BYTES`; the segment header is not part of the
    /// data and is verified by the caller with `SegmentHeader::decode`). Calls
    /// `on_batch(position, &view)` for every accepted batch, in order.
    ///
    /// The chunk that holds the final part of the segment simply ends at the segment's size.
    /// Once `SegmentEnd` is returned, further calls return it again and accept nothing.
    ///
    /// # Panics
    ///
    /// If no segment was begun, or the chunk breaks the contract above: it is unaligned,
    /// starts after the position the scanner reached, or extends past the segment.
    pub fn scan<'a>(
        &mut self,
        chunk: &'a [u8],
        chunk_position: u64,
        on_batch: &mut dyn FnMut(u64, &BatchView<'a>),
    ) -> ScanProgress {
        let RecoveryScanner {
            chain_crc,
            next_offsets,
            segment,
        } = self;
        let segment = segment
            .as_mut()
            .expect("begin_segment is called before scan");
        if let Some(tail) = segment.tail {
            return segment.end(tail);
        }
        let segment_size_bytes = segment.segment_size_bytes;
        assert!(
            chunk_position.is_multiple_of(BLOCK_SIZE),
            "chunk position {chunk_position} is not block-aligned"
        );
        assert!(
            chunk_position >= SEGMENT_DATA_START,
            "chunk position {chunk_position} is inside the segment header"
        );
        assert!(
            chunk_position <= segment.position,
            "chunk position {chunk_position} is after the scan position {}",
            segment.position
        );
        let chunk_end = chunk_position + u64::try_from(chunk.len()).expect("usize fits in u64");
        assert!(
            chunk_end <= segment_size_bytes,
            "chunk end {chunk_end} is past the segment size {segment_size_bytes}"
        );
        let chunk_reaches_segment_end = chunk_end == segment_size_bytes;
        let need_more = |position: u64| {
            assert!(
                !chunk_reaches_segment_end,
                "the scanner decides everything once the chunk reaches the segment end"
            );
            assert!(
                chunk_end.saturating_sub(position) < SCAN_LOOKAHEAD_BYTES as u64,
                "asked for more at {position} although the chunk ends at {chunk_end}"
            );
            ScanProgress::NeedMore { position }
        };
        // The chunk's bytes in position..end; `None` if the chunk does not hold them all.
        let chunk_range = move |position: u64, end: u64| -> Option<&'a [u8]> {
            let start = usize::try_from(position.checked_sub(chunk_position)?).ok()?;
            let end = usize::try_from(end.checked_sub(chunk_position)?).ok()?;
            chunk.get(start..end)
        };

        loop {
            let position = segment.position;
            let header_fits = position + BATCH_HEADER_SIZE <= segment_size_bytes;
            let mut batch = None;
            if header_fits {
                // The chunk never extends past the segment, so neither can a valid batch.
                let candidate = chunk_range(position, chunk_end).unwrap_or_default();
                match decode_batch(candidate) {
                    Ok(view) => batch = Some(view),
                    Err(DecodeError::Truncated { .. }) if !chunk_reaches_segment_end => {
                        return need_more(position);
                    }
                    Err(_) => {}
                }
            }
            let batch_continues = batch.is_some_and(|view| {
                let next_offset = next_offsets
                    .get(&view.partition_id())
                    .copied()
                    .unwrap_or(Offset(0));
                view.prev_batch_crc() == *chain_crc && view.base_offset() == next_offset
            });
            let accepted = header_fits && batch.is_some() && batch_continues;

            // The tail matters only when nothing is accepted: skip the zero check per batch.
            let block_end = (position - position % BLOCK_SIZE + BLOCK_SIZE).min(segment_size_bytes);
            let tail_is_zero = if accepted {
                false
            } else {
                let Some(block_rest) = chunk_range(position, block_end) else {
                    return need_more(position);
                };
                segment.gap_is_zero && block_rest.iter().all(|byte| *byte == 0)
            };

            let observation = Observation {
                header_fits,
                batch_valid: batch.is_some(),
                batch_continues,
                block_aligned: position.is_multiple_of(BLOCK_SIZE),
                tail_is_zero,
            };
            match decide(&observation) {
                Decision::Accept => {
                    let view = batch.expect("the table accepts only a valid batch");
                    on_batch(position, &view);
                    *chain_crc = view.crc();
                    next_offsets.insert(view.partition_id(), view.end_offset());
                    segment.position =
                        position + u64::try_from(view.len_bytes()).expect("usize fits in u64");
                    segment.valid_end = segment.position;
                    segment.gap_is_zero = true;
                    segment.accepted_batch_count += 1;
                }
                Decision::RetryAtNextBlock => {
                    // Example: a group's last batch ends at 9000; bytes 9000..12288 are its
                    // padding, and the next group, if any, starts at 12288.
                    segment.gap_is_zero = tail_is_zero;
                    segment.position = block_end;
                }
                Decision::End(tail) => {
                    segment.tail = Some(tail);
                    return segment.end(tail);
                }
            }
        }
    }

    /// The `crc` of the last accepted batch, 0 before the first: the `prev_batch_crc` the
    /// next batch written to this core log must carry.
    #[must_use]
    pub fn chain_crc(&self) -> u32 {
        self.chain_crc
    }

    /// The offset the next batch of `partition` must start at: the end of its last accepted
    /// batch, 0 if none was accepted.
    #[must_use]
    pub fn next_offset(&self, partition: PartitionId) -> Offset {
        self.next_offsets
            .get(&partition)
            .copied()
            .unwrap_or(Offset(0))
    }

    /// Every partition with at least one accepted batch and its next offset, in no order.
    pub fn next_offsets(&self) -> impl Iterator<Item = (PartitionId, Offset)> + '_ {
        self.next_offsets
            .iter()
            .map(|(partition, offset)| (*partition, *offset))
    }
}

/// Bytes after a log's end in which a crash can leave valid batches that the log does not
/// hold: one group, the most that is ever in flight (FORMAT.md, "Torn tail or damage").
pub const TEAR_WINDOW_BYTES: u64 = GROUP_SIZE_BYTES_MAX as u64;

/// Whether a crash explains a valid batch starting at `found`, beyond the log's `end`
/// (the position just after its last accepted batch): it lies where the one group in flight
/// (or a torn group of an earlier life, see FORMAT.md) can have been written. Anything else
/// is synced data cut off by damage before it.
///
/// Worked example: the log ends at 10,000 in segment 3. The group in flight started at or
/// before the next block boundary, 12,288, so in segment 3 a crash explains batches that
/// start before 12,288 + `TEAR_WINDOW_BYTES`; had the group rolled, it would start at 4096
/// in segment 4, explaining batches before 4096 + `TEAR_WINDOW_BYTES` there. A valid batch
/// in segment 5 or later, or beyond those windows, is damage.
#[must_use]
pub fn crash_explains(end: SegmentPosition, found: SegmentPosition) -> bool {
    let SegmentPosition {
        segment_index,
        position,
    } = found;
    let block_after_end = end.position.div_ceil(BLOCK_SIZE) * BLOCK_SIZE;
    if segment_index == end.segment_index {
        position < block_after_end + TEAR_WINDOW_BYTES
    } else if Some(segment_index) == end.segment_index.checked_add(1) {
        position < SEGMENT_DATA_START + TEAR_WINDOW_BYTES
    } else {
        segment_index < end.segment_index
    }
}

/// What [`probe_block_starts`] found in a chunk.
#[derive(Clone, Copy)]
pub enum BlockProbe<'a> {
    /// A valid batch (its own checksum verifies; chain and offsets are not looked at)
    /// starts at this block boundary.
    Found {
        /// Its position in the segment.
        position: u64,
        /// The batch.
        batch: BatchView<'a>,
    },
    /// The batch that may start at `position` extends past the chunk: probe again with a
    /// chunk that starts there.
    NeedMore {
        /// Where to continue.
        position: u64,
    },
    /// No valid batch starts at a block boundary in the rest of the chunk.
    Exhausted,
}

/// Looks for a valid batch at each block boundary from `from` on in `chunk` (whose first
/// byte is at segment position `chunk_position`): what recovery does beyond the log's end to
/// tell a torn tail from damage. Groups start at block boundaries, so synced data that
/// damage cut off from the log shows up here. `chunk_reaches_segment_end`: the chunk holds
/// the last byte of the segment, so a batch cut by the chunk's end is simply invalid.
///
/// # Panics
///
/// If `from` or `chunk_position` is not block-aligned, or `from` lies before the chunk.
#[must_use]
pub fn probe_block_starts(
    chunk: &[u8],
    chunk_position: u64,
    from: u64,
    chunk_reaches_segment_end: bool,
) -> BlockProbe<'_> {
    assert!(
        chunk_position.is_multiple_of(BLOCK_SIZE) && from.is_multiple_of(BLOCK_SIZE),
        "probe positions are block-aligned: chunk {chunk_position}, from {from}"
    );
    assert!(
        from >= chunk_position,
        "probe from {from} before the chunk at {chunk_position}"
    );
    let chunk_end = chunk_position + u64::try_from(chunk.len()).expect("usize fits in u64");
    let mut position = from;
    while position < chunk_end {
        let start = usize::try_from(position - chunk_position).expect("inside the chunk");
        let candidate = chunk.get(start..).unwrap_or_default();
        match decode_batch(candidate) {
            Ok(batch) => return BlockProbe::Found { position, batch },
            // With a whole largest batch in hand, "truncated" cannot become valid.
            Err(DecodeError::Truncated { .. })
                if !chunk_reaches_segment_end && candidate.len() < BATCH_SIZE_BYTES_MAX =>
            {
                return BlockProbe::NeedMore { position };
            }
            Err(_) => position += BLOCK_SIZE,
        }
    }
    BlockProbe::Exhausted
}

/// What the scanner observes at a position: the inputs of the decision table (see the module
/// docs for their meaning).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Observation {
    header_fits: bool,
    batch_valid: bool,
    batch_continues: bool,
    block_aligned: bool,
    tail_is_zero: bool,
}

/// One input cell of a decision table row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cell {
    Yes,
    No,
    Any,
}

impl Cell {
    fn matches(self, fact: bool) -> bool {
        match self {
            Cell::Yes => fact,
            Cell::No => !fact,
            Cell::Any => true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Accept,
    RetryAtNextBlock,
    End(TailKind),
}

#[derive(Debug, Clone, Copy)]
struct DecisionRow {
    header_fits: Cell,
    batch_valid: Cell,
    batch_continues: Cell,
    block_aligned: Cell,
    tail_is_zero: Cell,
    decision: Decision,
}

impl DecisionRow {
    fn matches(&self, observation: &Observation) -> bool {
        self.header_fits.matches(observation.header_fits)
            && self.batch_valid.matches(observation.batch_valid)
            && self.batch_continues.matches(observation.batch_continues)
            && self.block_aligned.matches(observation.block_aligned)
            && self.tail_is_zero.matches(observation.tail_is_zero)
    }
}

const fn row(
    [
        header_fits,
        batch_valid,
        batch_continues,
        block_aligned,
        tail_is_zero,
    ]: [Cell; 5],
    decision: Decision,
) -> DecisionRow {
    DecisionRow {
        header_fits,
        batch_valid,
        batch_continues,
        block_aligned,
        tail_is_zero,
        decision,
    }
}

/// The module docs' table, row for row. Columns: header fits, batch valid, continues log,
/// block-aligned, tail zero.
const DECISION_TABLE: &[DecisionRow] = {
    use Cell::{Any, No, Yes};
    use Decision::{Accept, End, RetryAtNextBlock};
    use TailKind::{Clean, TornTail};
    &[
        // No room for another batch before the end of the file: the writer rolled here.
        row([No, Any, Any, Any, Yes], End(Clean)),
        row([No, Any, Any, Any, No], End(TornTail)),
        row([Yes, Yes, Yes, Any, Any], Accept),
        // Mid-block: the rest of the block is a group's padding or a torn remainder.
        row([Yes, No, Any, No, Any], RetryAtNextBlock),
        row([Yes, Yes, No, No, Any], RetryAtNextBlock),
        // At a block boundary, where a group would start: none does.
        row([Yes, No, Any, Yes, Yes], End(Clean)),
        row([Yes, No, Any, Yes, No], End(TornTail)),
        // A stale batch from an earlier life of the file, beyond a rewritten tail.
        row([Yes, Yes, No, Yes, Any], End(TornTail)),
    ]
};

fn decide(observation: &Observation) -> Decision {
    DECISION_TABLE
        .iter()
        .find(|row| row.matches(observation))
        .map(|row| row.decision)
        .expect("the decision table covers every observation")
}

/// Bodies of the fuzz targets in `fuzz/fuzz_targets/`, as plain functions so that a
/// fixed-count proptest runs them on every test run and `cargo fuzz` digs deeper on demand.
/// Each panics only if an invariant is broken. They allocate in proportion to their input;
/// the code under test does not.
#[cfg(any(test, fuzzing))]
pub mod fuzz_bodies {
    use super::{RecoveryScanner, SCAN_LOOKAHEAD_BYTES, ScanProgress, TailKind};
    use crate::core::limits::BLOCK_SIZE_BYTES;
    use crate::core::record::{
        BatchMeta, FORMAT_VERSION_V1, decode_batch, encode_batch, encode_batch_v1,
    };
    use crate::core::segment_header::SEGMENT_HEADER_SIZE_BYTES;
    use crate::core::{KeyCondition, RecordHeader, RecordInput};

    /// Target `record_scan`: `data` as one batch (as is, and with its checksum made right
    /// so that the fuzzer reaches the record checks), then as a segment's data.
    pub fn record_scan(data: &[u8]) {
        decode_checked(data);
        if let Some(resealed) = resealed(data) {
            decode_checked(&resealed);
        }
        scan_checked(data);
    }

    /// Decodes `data` as a batch; a batch that decodes must describe exactly its bytes,
    /// which re-encoding its records (in its format version: 1 or 2) must reproduce.
    pub fn decode_checked(data: &[u8]) {
        let Ok(view) = decode_batch(data) else {
            return;
        };
        assert_eq!(Some(view.as_bytes()), data.get(..view.len_bytes()));
        assert_eq!(view.records().len(), count(view.record_count()));

        let records: Vec<_> = view.records().collect();
        let headers: Vec<Vec<RecordHeader<'_>>> = records
            .iter()
            .map(|record| record.headers().collect())
            .collect();
        let mut inputs = Vec::with_capacity(records.len());
        let mut prev_key_offsets = Vec::with_capacity(records.len());
        for ((index, record), record_headers) in records.iter().enumerate().zip(&headers) {
            assert_eq!(record.offset, view.base_offset().plus(index as u64));
            assert!(
                record
                    .prev_key_offset
                    .is_none_or(|prev| prev < record.offset)
            );
            assert_eq!(record.headers().len(), usize::from(record.header_count()));
            if record.is_null_key() {
                assert!(record.key.is_empty() && record.prev_key_offset.is_none());
            }
            if record.is_null_value() {
                assert!(record.value.is_empty());
            }
            if view.format_version() == FORMAT_VERSION_V1 {
                assert!(!record.is_null_key() && !record.is_null_value());
                assert_eq!(
                    record.timestamp_ms(),
                    i64::try_from(view.timestamp_ms()).unwrap_or(i64::MAX)
                );
            }
            inputs.push(RecordInput {
                key: record.key,
                value: record.value,
                headers: record_headers,
                condition: KeyCondition::Any,
                timestamp_ms: Some(record.timestamp_ms()),
                null_key: record.is_null_key(),
                null_value: record.is_null_value(),
            });
            prev_key_offsets.push(record.prev_key_offset);
        }
        let meta = BatchMeta {
            partition_id: view.partition_id(),
            base_offset: view.base_offset(),
            timestamp_ms: view.timestamp_ms(),
            prev_batch_crc: view.prev_batch_crc(),
            producer: view.producer(),
        };
        let mut encoded = vec![0; view.len_bytes()];
        let written = if view.format_version() == FORMAT_VERSION_V1 {
            encode_batch_v1(&mut encoded, &meta, &inputs, &prev_key_offsets)
        } else {
            encode_batch(&mut encoded, &meta, &inputs, &prev_key_offsets)
        }
        .expect("a decoded batch re-encodes");
        assert_eq!(written.len_bytes, view.len_bytes());
        assert_eq!(written.crc, view.crc());
        assert!(encoded == view.as_bytes(), "re-encoding changed the batch");
    }

    /// `data` with `batch_crc` recomputed over what its `length_bytes` covers, if it has a
    /// header and that many bytes.
    #[must_use]
    pub fn resealed(data: &[u8]) -> Option<Vec<u8>> {
        let len_field = data.get(12..16)?;
        let len_bytes = usize::try_from(u32::from_le_bytes(len_field.try_into().ok()?)).ok()?;
        let covered = data.get(8..len_bytes)?;
        let crc = crc32fast::hash(covered);
        let mut resealed = data.to_vec();
        resealed.get_mut(4..8)?.copy_from_slice(&crc.to_le_bytes());
        Some(resealed)
    }

    /// Scans `data` as the data of one segment (zero-filled to a whole block), once in one
    /// chunk and once in chunks whose sizes `data` picks; both must agree and be sane.
    pub fn scan_checked(data: &[u8]) {
        let block_count = data.len().div_ceil(BLOCK_SIZE_BYTES).max(1);
        let mut segment = vec![0; SEGMENT_HEADER_SIZE_BYTES + block_count * BLOCK_SIZE_BYTES];
        segment
            .get_mut(SEGMENT_HEADER_SIZE_BYTES..SEGMENT_HEADER_SIZE_BYTES + data.len())
            .expect("the segment holds the data")
            .copy_from_slice(data);

        let mut whole_scanner = RecoveryScanner::new();
        let whole = scan_segment(
            &mut whole_scanner,
            &segment,
            &mut |_, segment_size_bytes| (0, segment_size_bytes),
        );
        let mut lengths = data.iter().map(|byte| u64::from(*byte) * 37).cycle();
        let mut chunked_scanner = RecoveryScanner::new();
        let chunked = scan_segment(&mut chunked_scanner, &segment, &mut |position, _| {
            (position, position + lengths.next().unwrap_or(0))
        });
        assert_eq!(
            whole, chunked,
            "chunked scan disagrees with the whole-segment scan"
        );
        assert_eq!(whole_scanner.chain_crc(), chunked_scanner.chain_crc());

        let mut end = SEGMENT_HEADER_SIZE_BYTES as u64;
        for (position, len_bytes) in &whole.batches {
            assert!(*position >= end, "batches overlap");
            assert!(
                *position == end || position.is_multiple_of(BLOCK_SIZE_BYTES as u64),
                "skipped to an unaligned position"
            );
            end = position + len_bytes;
        }
        assert_eq!(whole.valid_end, end);
        if whole.tail == TailKind::Clean {
            let tail_start = segment.get(index(end)).copied().unwrap_or(0);
            assert_eq!(tail_start, 0, "a clean tail starts with a non-zero byte");
        }
    }

    /// What the scan of one segment found.
    #[derive(Debug, PartialEq, Eq)]
    pub struct SegmentScanResult {
        /// Position and length of every accepted batch, in order.
        pub batches: Vec<(u64, u64)>,
        /// As in `ScanProgress::SegmentEnd`.
        pub valid_end: u64,
        /// As in `ScanProgress::SegmentEnd`.
        pub tail: TailKind,
    }

    /// Scans a whole in-memory segment (block 0 included but not read) with `scanner`, the
    /// way the shell does: `chunk_range(position, segment_size_bytes)` proposes each chunk
    /// for the position the scanner reached; its start is moved to a block boundary at or
    /// before that position, its end into the segment. A proposal may be shorter than the
    /// `NeedMore` contract asks; if the scanner then makes no progress, the next chunk is
    /// exactly as long as the contract asks, and the scanner must decide with it.
    pub fn scan_segment(
        scanner: &mut RecoveryScanner,
        segment: &[u8],
        chunk_range: &mut dyn FnMut(u64, u64) -> (u64, u64),
    ) -> SegmentScanResult {
        let segment_size_bytes = segment.len() as u64;
        let block_size_bytes = BLOCK_SIZE_BYTES as u64;
        let data_start = SEGMENT_HEADER_SIZE_BYTES as u64;
        scanner.begin_segment(segment_size_bytes);
        let mut batches = Vec::new();
        let mut position = data_start;
        let mut stalled = false;
        loop {
            let block_start = position - position % block_size_bytes;
            let (start, end) = if stalled {
                let end = position + SCAN_LOOKAHEAD_BYTES as u64;
                (block_start, end.min(segment_size_bytes))
            } else {
                let (start, end) = chunk_range(position, segment_size_bytes);
                let start = start.clamp(data_start, block_start);
                let start = start - start % block_size_bytes;
                (start, end.clamp(start, segment_size_bytes))
            };
            let chunk = segment
                .get(index(start)..index(end))
                .expect("chunk within the segment");
            let progress = scanner.scan(chunk, start, &mut |batch_position, view| {
                let at_position = segment.get(index(batch_position)..).unwrap_or_default();
                assert!(
                    std::ptr::eq(view.as_bytes().as_ptr(), at_position.as_ptr()),
                    "on_batch's position is where the view's bytes are"
                );
                batches.push((batch_position, view.len_bytes() as u64));
            });
            match progress {
                ScanProgress::NeedMore { position: next } => {
                    assert!(
                        next >= position,
                        "NeedMore went back from {position} to {next}"
                    );
                    assert!(
                        !(stalled && next == position),
                        "no progress with a chunk that honours the contract"
                    );
                    stalled = next == position;
                    position = next;
                }
                ScanProgress::SegmentEnd {
                    valid_end,
                    accepted_batch_count,
                    tail,
                } => {
                    assert_eq!(accepted_batch_count, batches.len() as u64);
                    if accepted_batch_count == 0 {
                        assert_eq!(valid_end, data_start);
                    }
                    return SegmentScanResult {
                        batches,
                        valid_end,
                        tail,
                    };
                }
            }
        }
    }

    fn index(position: u64) -> usize {
        usize::try_from(position).expect("positions of an in-memory segment fit in usize")
    }

    fn count(record_count: u32) -> usize {
        usize::try_from(record_count).expect("u32 fits in usize")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap as StdHashMap;

    use proptest::prelude::*;

    use super::fuzz_bodies::{self, SegmentScanResult};
    use super::*;
    use crate::core::limits::SEGMENT_SIZE_BYTES_MIN;
    use crate::core::record::{
        BATCH_HEADER_SIZE_BYTES, BatchMeta, RECORD_FIXED_SIZE_BYTES, batch_encoded_len,
        encode_batch,
    };
    use crate::core::segment_header::SegmentHeader;
    use crate::core::{KeyCondition, RecordHeader, RecordInput, ShardId};

    const BLOCK: u64 = BLOCK_SIZE;
    const DATA_START: u64 = SEGMENT_DATA_START;
    /// Small segments keep exhaustive tests fast and make the log roll often.
    const SMALL_SEGMENT_SIZE_BYTES: u64 = 4 * BLOCK;

    #[derive(Clone, Debug)]
    struct RecordSpec {
        key: Vec<u8>,
        value: Vec<u8>,
        headers: Vec<(Vec<u8>, Vec<u8>)>,
    }

    #[derive(Clone, Debug)]
    struct BatchSpec {
        partition_id: PartitionId,
        records: Vec<RecordSpec>,
    }

    type GroupSpec = Vec<BatchSpec>;

    /// One batch as the writer laid it out.
    #[derive(Clone, Debug, PartialEq, Eq)]
    struct WrittenBatch {
        segment_index: usize,
        position: u64,
        bytes: Vec<u8>,
    }

    impl WrittenBatch {
        fn end(&self) -> u64 {
            self.position + self.bytes.len() as u64
        }

        fn contains(&self, segment_index: usize, position: u64) -> bool {
            self.segment_index == segment_index && (self.position..self.end()).contains(&position)
        }
    }

    /// What the writer knows after a batch: what the next batch chains to and continues.
    #[derive(Clone, Debug, Default)]
    struct WriterState {
        chain_crc: u32,
        next_offsets: StdHashMap<PartitionId, Offset>,
        latest_key_offsets: StdHashMap<(PartitionId, Vec<u8>), Offset>,
        timestamp_ms: u64,
    }

    /// A core log laid out exactly as the shell writes it: each group of batches starts at a
    /// block boundary, is padded with zeros to the next one, and goes to the next segment
    /// when it does not fit in the current one; batches chain their crcs across segments,
    /// partitions interleave, and every record points back at its key's previous record.
    #[derive(Clone)]
    struct TestLog {
        segment_size_bytes: u64,
        segments: Vec<Vec<u8>>,
        segment_index: usize,
        write_position: u64,
        state: WriterState,
        batches: Vec<WrittenBatch>,
        /// The writer's state after each batch of `batches`.
        states_after: Vec<WriterState>,
    }

    impl TestLog {
        fn new(segment_size_bytes: u64) -> Self {
            let mut log = TestLog {
                segment_size_bytes,
                segments: Vec::new(),
                segment_index: 0,
                write_position: DATA_START,
                state: WriterState {
                    timestamp_ms: 1_790_000_000_000,
                    ..WriterState::default()
                },
                batches: Vec::new(),
                states_after: Vec::new(),
            };
            log.prepare_segment(0);
            log
        }

        fn with_groups(segment_size_bytes: u64, groups: &[GroupSpec]) -> Self {
            let mut log = TestLog::new(segment_size_bytes);
            for group in groups {
                log.append_group(group);
            }
            log
        }

        /// Creates segment `index` zero-filled, with a real header when the size is one a data
        /// directory may use (block 0 is not the scanner's business). A segment that already
        /// exists keeps whatever it holds: the worst case for the scanner.
        fn prepare_segment(&mut self, index: usize) {
            if index < self.segments.len() {
                return;
            }
            let mut segment = vec![0; self.segment_size_bytes as usize];
            if self.segment_size_bytes >= SEGMENT_SIZE_BYTES_MIN {
                let header = SegmentHeader {
                    shard_id: ShardId(0),
                    shard_count: 1,
                    segment_index: index as u64,
                    segment_size_bytes: self.segment_size_bytes,
                    generation: 0,
                };
                header.encode(&mut segment);
            }
            self.segments.push(segment);
        }

        fn append_group(&mut self, group: &[BatchSpec]) {
            let mut group_bytes = Vec::new();
            let mut batch_ranges = Vec::new();
            let mut states_after = Vec::new();
            for batch in group {
                let start = group_bytes.len();
                self.encode_into(&mut group_bytes, batch);
                batch_ranges.push(start..group_bytes.len());
                states_after.push(self.state.clone());
            }
            let padded_len_bytes = (group_bytes.len() as u64).div_ceil(BLOCK) * BLOCK;
            if self.write_position + padded_len_bytes > self.segment_size_bytes {
                self.segment_index += 1;
                self.prepare_segment(self.segment_index);
                self.write_position = DATA_START;
            }
            assert!(
                self.write_position + padded_len_bytes <= self.segment_size_bytes,
                "a group of {padded_len_bytes} bytes does not fit in an empty segment"
            );
            group_bytes.resize(padded_len_bytes as usize, 0);
            let position = self.write_position as usize;
            self.segments[self.segment_index][position..position + group_bytes.len()]
                .copy_from_slice(&group_bytes);
            for range in batch_ranges {
                self.batches.push(WrittenBatch {
                    segment_index: self.segment_index,
                    position: self.write_position + range.start as u64,
                    bytes: group_bytes[range].to_vec(),
                });
            }
            self.states_after.extend(states_after);
            self.write_position += padded_len_bytes;
        }

        fn encode_into(&mut self, out: &mut Vec<u8>, batch: &BatchSpec) {
            let state = &mut self.state;
            let base_offset = state
                .next_offsets
                .get(&batch.partition_id)
                .copied()
                .unwrap_or_default();
            let prev_key_offsets: Vec<Option<Offset>> = batch
                .records
                .iter()
                .enumerate()
                .map(|(index, record)| {
                    let key = (batch.partition_id, record.key.clone());
                    state
                        .latest_key_offsets
                        .insert(key, base_offset.plus(index as u64))
                })
                .collect();
            let headers: Vec<Vec<RecordHeader<'_>>> = batch
                .records
                .iter()
                .map(|record| {
                    record
                        .headers
                        .iter()
                        .map(|(name, value)| RecordHeader { name, value })
                        .collect()
                })
                .collect();
            let inputs: Vec<RecordInput<'_>> = batch
                .records
                .iter()
                .zip(&headers)
                .map(|(record, headers)| RecordInput {
                    key: &record.key,
                    value: &record.value,
                    headers,
                    condition: KeyCondition::Any,
                    ..RecordInput::default()
                })
                .collect();
            let meta = BatchMeta {
                partition_id: batch.partition_id,
                base_offset,
                timestamp_ms: state.timestamp_ms,
                prev_batch_crc: state.chain_crc,
                producer: None,
            };
            let start = out.len();
            out.resize(start + batch_encoded_len(&inputs).unwrap(), 0);
            let encoded =
                encode_batch(&mut out[start..], &meta, &inputs, &prev_key_offsets).unwrap();
            state.chain_crc = encoded.crc;
            state
                .next_offsets
                .insert(batch.partition_id, base_offset.plus(inputs.len() as u64));
            state.timestamp_ms += 1;
        }

        /// The log a restarted writer continues after recovery kept `batches[..=kept]`: the
        /// files as they are, the writer's state after batch `kept`, the next group at the
        /// first block boundary after it.
        fn resumed_after(&self, kept: usize) -> TestLog {
            let last = &self.batches[kept];
            TestLog {
                segment_size_bytes: self.segment_size_bytes,
                segments: self.segments.clone(),
                segment_index: last.segment_index,
                write_position: last.end().div_ceil(BLOCK) * BLOCK,
                state: self.states_after[kept].clone(),
                batches: self.batches[..=kept].to_vec(),
                states_after: self.states_after[..=kept].to_vec(),
            }
        }

        /// What recovery must find: every batch, the writer's chain and offsets.
        fn expected(&self) -> (Vec<WrittenBatch>, u32, Vec<(PartitionId, Offset)>) {
            (
                self.batches.clone(),
                self.state.chain_crc,
                sorted(self.state.next_offsets.iter().map(|(p, o)| (*p, *o))),
            )
        }
    }

    fn sorted(offsets: impl Iterator<Item = (PartitionId, Offset)>) -> Vec<(PartitionId, Offset)> {
        let mut offsets: Vec<_> = offsets.collect();
        offsets.sort();
        offsets
    }

    /// What recovering a whole core log found.
    #[derive(Debug, PartialEq, Eq)]
    struct Recovered {
        batches: Vec<WrittenBatch>,
        /// The segment the log ended in, and how.
        end_segment_index: usize,
        valid_end: u64,
        tail: TailKind,
        chain_crc: u32,
        next_offsets: Vec<(PartitionId, Offset)>,
    }

    impl Recovered {
        fn found(&self) -> (Vec<WrittenBatch>, u32, Vec<(PartitionId, Offset)>) {
            (
                self.batches.clone(),
                self.chain_crc,
                self.next_offsets.clone(),
            )
        }
    }

    /// Recovers a core log the way the module docs tell the shell to: segment after segment,
    /// until one accepts no batch.
    fn recover(
        segments: &[Vec<u8>],
        chunk_range: &mut dyn FnMut(u64, u64) -> (u64, u64),
    ) -> Recovered {
        let mut scanner = RecoveryScanner::new();
        let mut batches = Vec::new();
        let mut end = (0, DATA_START, TailKind::Clean);
        for (segment_index, segment) in segments.iter().enumerate() {
            let SegmentScanResult {
                batches: accepted,
                valid_end,
                tail,
            } = fuzz_bodies::scan_segment(&mut scanner, segment, chunk_range);
            if accepted.is_empty() && segment_index > 0 {
                break; // The log ended in the previous segment.
            }
            batches.extend(accepted.iter().map(|&(position, len_bytes)| WrittenBatch {
                segment_index,
                position,
                bytes: segment[position as usize..(position + len_bytes) as usize].to_vec(),
            }));
            end = (segment_index, valid_end, tail);
            if accepted.is_empty() {
                break; // Segment 0 holds no batch: the log is empty.
            }
        }
        Recovered {
            batches,
            end_segment_index: end.0,
            valid_end: end.1,
            tail: end.2,
            chain_crc: scanner.chain_crc(),
            next_offsets: sorted(scanner.next_offsets()),
        }
    }

    fn whole_segments(_position: u64, segment_size_bytes: u64) -> (u64, u64) {
        (0, segment_size_bytes)
    }

    fn recover_whole(segments: &[Vec<u8>]) -> Recovered {
        recover(segments, &mut whole_segments)
    }

    fn record(key: &str, value_len_bytes: usize) -> RecordSpec {
        RecordSpec {
            key: key.as_bytes().to_vec(),
            value: vec![0x5A; value_len_bytes],
            headers: vec![(b"type".to_vec(), b"event".to_vec())],
        }
    }

    fn batch(partition: u32, records: Vec<RecordSpec>) -> BatchSpec {
        BatchSpec {
            partition_id: PartitionId(partition),
            records,
        }
    }

    /// A small fixed log in one segment: four groups, three partitions, batches that cross
    /// block boundaries, a group that ends exactly at one.
    fn fixed_groups() -> Vec<GroupSpec> {
        vec![
            vec![
                batch(0, vec![record("a", 100), record("b", 10)]),
                batch(1, vec![record("a", 2000)]),
                batch(0, vec![record("a", 50)]),
            ],
            // 64 + 31 + 1 + 15 + value = 4096: the group fills its block exactly.
            vec![batch(
                2,
                vec![record(
                    "c",
                    4096 - BATCH_HEADER_SIZE_BYTES - RECORD_FIXED_SIZE_BYTES - 1 - 15,
                )],
            )],
            vec![
                batch(1, vec![record("b", 300), record("b", 0)]),
                batch(2, vec![record("", 3000)]),
                batch(0, vec![record("b", 20)]),
                batch(1, vec![record("a", 700)]),
            ],
            vec![batch(0, vec![record("c", 5)])],
        ]
    }

    fn fixed_log() -> TestLog {
        let log = TestLog::with_groups(8 * BLOCK, &fixed_groups());
        assert_eq!(log.segments.len(), 1, "the fixed log fits in one segment");
        log
    }

    fn fixed_multi_segment_log() -> TestLog {
        let mut groups = fixed_groups();
        groups.extend(fixed_groups());
        groups.extend(fixed_groups());
        let log = TestLog::with_groups(SMALL_SEGMENT_SIZE_BYTES, &groups);
        assert!(log.segments.len() >= 3, "the fixed log spans segments");
        log
    }

    fn arb_record() -> impl Strategy<Value = RecordSpec> {
        let header = (
            prop::collection::vec(any::<u8>(), 0..8),
            prop::collection::vec(any::<u8>(), 0..16),
        );
        (
            0_u8..5,
            prop::collection::vec(any::<u8>(), 0..200),
            prop::collection::vec(header, 0..3),
        )
            .prop_map(|(key_id, value, headers)| RecordSpec {
                // Few keys, so back-pointers are common; key 4 is the empty key.
                key: if key_id == 4 {
                    Vec::new()
                } else {
                    format!("key-{key_id}").into_bytes()
                },
                value,
                headers,
            })
    }

    fn arb_batch() -> impl Strategy<Value = BatchSpec> {
        (0_u32..4, prop::collection::vec(arb_record(), 1..5)).prop_map(|(partition, records)| {
            BatchSpec {
                partition_id: PartitionId(partition),
                records,
            }
        })
    }

    fn arb_groups(group_count: std::ops::Range<usize>) -> impl Strategy<Value = Vec<GroupSpec>> {
        prop::collection::vec(prop::collection::vec(arb_batch(), 1..5), group_count)
    }

    /// The batches recovery must keep when the log is cut at `cut` in segment `cut_segment`.
    fn batches_before(log: &TestLog, cut_segment: usize, cut: u64) -> Vec<WrittenBatch> {
        log.batches
            .iter()
            .filter(|b| {
                b.segment_index < cut_segment || (b.segment_index == cut_segment && b.end() <= cut)
            })
            .cloned()
            .collect()
    }

    #[test]
    fn decision_table_has_exactly_one_row_per_observation() {
        for bits in 0_u8..32 {
            let observation = Observation {
                header_fits: bits & 1 != 0,
                batch_valid: bits & 2 != 0,
                batch_continues: bits & 4 != 0,
                block_aligned: bits & 8 != 0,
                tail_is_zero: bits & 16 != 0,
            };
            let matching: Vec<_> = DECISION_TABLE
                .iter()
                .filter(|row| row.matches(&observation))
                .collect();
            assert_eq!(matching.len(), 1, "{observation:?} matches {matching:?}");
            assert_eq!(
                decide(&observation),
                format_md_rule(&observation),
                "{observation:?}"
            );
        }
    }

    /// FORMAT.md's prose, "Recovery: where the log ends", as code: the table must agree.
    fn format_md_rule(observation: &Observation) -> Decision {
        let tail = |is_zero| {
            if is_zero {
                TailKind::Clean
            } else {
                TailKind::TornTail
            }
        };
        if !observation.header_fits {
            // No batch is looked at where none fits.
            Decision::End(tail(observation.tail_is_zero))
        } else if observation.batch_valid && observation.batch_continues {
            Decision::Accept
        } else if !observation.block_aligned {
            Decision::RetryAtNextBlock
        } else {
            // A valid batch is never all zeros, whatever `tail_is_zero` claims.
            Decision::End(tail(observation.tail_is_zero && !observation.batch_valid))
        }
    }

    #[test]
    fn a_crash_explains_batches_within_one_group_after_the_end_and_nothing_else() {
        let at = |segment_index, position| SegmentPosition {
            segment_index,
            position,
        };
        let end = at(3, 10_000);
        let window_end = 12_288 + TEAR_WINDOW_BYTES;
        assert!(crash_explains(end, at(3, 12_288)));
        assert!(crash_explains(end, at(3, window_end - BLOCK)));
        assert!(!crash_explains(end, at(3, window_end)), "past one group");
        assert!(crash_explains(end, at(4, DATA_START)), "the group rolled");
        assert!(crash_explains(
            end,
            at(4, DATA_START + TEAR_WINDOW_BYTES - BLOCK)
        ));
        assert!(!crash_explains(end, at(4, DATA_START + TEAR_WINDOW_BYTES)));
        assert!(!crash_explains(end, at(5, DATA_START)), "two segments on");
        let aligned = at(0, 8192);
        assert!(crash_explains(
            aligned,
            at(0, 8192 + TEAR_WINDOW_BYTES - BLOCK)
        ));
        assert!(!crash_explains(aligned, at(0, 8192 + TEAR_WINDOW_BYTES)));
    }

    #[test]
    fn probe_finds_the_batches_that_start_groups_and_nothing_in_padding_or_zeros() {
        let log = fixed_log();
        let segment = &log.segments[0];
        let group_starts: Vec<u64> = log
            .batches
            .iter()
            .map(|batch| batch.position)
            .filter(|position| position.is_multiple_of(BLOCK))
            .collect();
        assert!(group_starts.len() >= 3, "the fixed log has several groups");
        let mut found = Vec::new();
        let mut from = DATA_START;
        loop {
            let chunk = &segment[DATA_START as usize..];
            match probe_block_starts(chunk, DATA_START, from, true) {
                BlockProbe::Found { position, batch } => {
                    let written = log
                        .batches
                        .iter()
                        .find(|written| written.position == position)
                        .expect("found where a batch was written");
                    assert_eq!(batch.len_bytes(), written.bytes.len());
                    found.push(position);
                    from = position + BLOCK;
                }
                BlockProbe::NeedMore { .. } => panic!("the chunk reaches the segment end"),
                BlockProbe::Exhausted => break,
            }
        }
        assert_eq!(found, group_starts);
    }

    #[test]
    fn probe_asks_for_more_when_a_batch_runs_past_the_chunk() {
        let log = TestLog::with_groups(64 * BLOCK, &[vec![batch(0, vec![record("a", 20_000)])]]);
        let segment = &log.segments[0];
        let short = &segment[DATA_START as usize..(DATA_START + 2 * BLOCK) as usize];
        assert!(matches!(
            probe_block_starts(short, DATA_START, DATA_START, false),
            BlockProbe::NeedMore {
                position: DATA_START
            }
        ));
        assert!(matches!(
            probe_block_starts(short, DATA_START, DATA_START, true),
            BlockProbe::Exhausted
        ));
        let whole = &segment[DATA_START as usize..];
        assert!(matches!(
            probe_block_starts(whole, DATA_START, DATA_START, false),
            BlockProbe::Found {
                position: DATA_START,
                ..
            }
        ));
    }

    #[test]
    fn scan_does_not_look_past_an_invalid_block_boundary() {
        // A group that chains but lies after an unwritten block is beyond the log's end: the
        // retry happens once, from a mid-block position, never from a block boundary.
        let groups = fixed_groups();
        let mut log = TestLog::with_groups(8 * BLOCK, &groups[..2]);
        let expected = log.batches.clone();
        log.write_position += BLOCK;
        log.append_group(&groups[2]);
        let recovered = recover_whole(&log.segments);
        assert_eq!(recovered.batches, expected);
        assert_eq!(recovered.tail, TailKind::Clean);
    }

    #[test]
    fn scan_accepts_every_batch_of_the_fixed_logs() {
        for log in [fixed_log(), fixed_multi_segment_log()] {
            let recovered = recover_whole(&log.segments);
            assert_eq!(recovered.found(), log.expected());
            assert_eq!(recovered.tail, TailKind::Clean);
            let last = log.batches.last().unwrap();
            assert_eq!(
                (recovered.end_segment_index, recovered.valid_end),
                (last.segment_index, last.end())
            );
        }
    }

    #[test]
    fn scan_stops_at_torn_tail() {
        // Zero the log from every byte position on: exactly the batches wholly before the
        // cut survive (a batch is all or nothing), and the tail is clean only if nothing but
        // zeros follows them.
        let log = fixed_log();
        let mut segment = log.segments[0].clone();
        for cut in (DATA_START..log.write_position).rev() {
            segment[cut as usize] = 0; // Zeroed from `cut` on, one byte more each round.
            let recovered = recover_whole(std::slice::from_ref(&segment));
            let expected = batches_before(&log, 0, cut);
            assert_eq!(recovered.batches, expected, "cut at {cut}");
            let valid_end = expected.last().map_or(DATA_START, WrittenBatch::end);
            assert_eq!(recovered.valid_end, valid_end, "cut at {cut}");
            let tail_is_zero = segment[valid_end as usize..].iter().all(|byte| *byte == 0);
            let tail = if tail_is_zero {
                TailKind::Clean
            } else {
                TailKind::TornTail
            };
            assert_eq!(recovered.tail, tail, "cut at {cut}");
        }
    }

    /// Recovers `log` with one bit flipped at each of `positions`: the batch holding it and
    /// everything after it are lost, nothing else, and nothing is ever accepted that was not
    /// written exactly so.
    fn assert_bit_flips_lose_only_the_rest(
        log: &TestLog,
        positions: impl Iterator<Item = (usize, u64)>,
    ) {
        let mut segments = log.segments.clone();
        for (segment_index, position) in positions {
            let bit = 1 << (position % 8);
            segments[segment_index][position as usize] ^= bit;
            let recovered = recover_whole(&segments);
            segments[segment_index][position as usize] ^= bit;
            let expected: Vec<_> = log
                .batches
                .iter()
                .take_while(|b| !b.contains(segment_index, position))
                .cloned()
                .collect();
            assert_eq!(
                recovered.batches, expected,
                "bit flipped at {segment_index}:{position}"
            );
        }
    }

    #[test]
    fn scan_never_returns_a_wrong_batch_after_a_bit_flip() {
        // Every byte of the fixed log and the block after it.
        let log = fixed_log();
        let end = (log.write_position + BLOCK).min(log.segment_size_bytes);
        assert_bit_flips_lose_only_the_rest(&log, (DATA_START..end).map(|position| (0, position)));
        // Every header byte, and the first and last bytes, of each batch of a log that spans
        // segments, so flips also meet the chain across segment boundaries.
        let log = fixed_multi_segment_log();
        let positions = log.batches.iter().flat_map(|b| {
            let header = b.position..b.position + BATCH_HEADER_SIZE + 1;
            header
                .chain([b.end() - 1])
                .map(|position| (b.segment_index, position))
        });
        assert_bit_flips_lose_only_the_rest(&log, positions);
    }

    #[test]
    fn scan_continues_across_segments_and_stops_when_the_next_does_not_chain() {
        let log = fixed_multi_segment_log();
        assert_eq!(recover_whole(&log.segments).found(), log.expected());
        for segment_index in 1..log.segments.len() {
            let first = log
                .batches
                .iter()
                .position(|b| b.segment_index == segment_index)
                .unwrap();
            let kept = log.batches[..first].to_vec();
            // The next segment's first batch is valid but names another predecessor, or
            // skips an offset: the log ended in the segment before.
            for (field, delta) in [(16_usize, 1_u64), (24, 1)] {
                let mut segments = log.segments.clone();
                let batch = &log.batches[first];
                let bytes =
                    &mut segments[segment_index][batch.position as usize..batch.end() as usize];
                let value = if field == 16 {
                    u64::from(u32::from_le_bytes(bytes[16..20].try_into().unwrap())) + delta
                } else {
                    u64::from_le_bytes(bytes[24..32].try_into().unwrap()) + delta
                };
                if field == 16 {
                    bytes[16..20].copy_from_slice(&(value as u32).to_le_bytes());
                } else {
                    bytes[24..32].copy_from_slice(&value.to_le_bytes());
                }
                let crc = crc32fast::hash(&bytes[8..]);
                bytes[4..8].copy_from_slice(&crc.to_le_bytes());
                let recovered = recover_whole(&segments);
                assert_eq!(
                    recovered.batches, kept,
                    "segment {segment_index}, field {field}"
                );
                assert_eq!(recovered.end_segment_index, segment_index - 1);
                assert_eq!(recovered.tail, TailKind::Clean);
            }
        }
    }

    #[test]
    fn a_log_of_version_1_batches_then_version_2_batches_scans_whole() {
        // A segment written before format version 2, continued after the upgrade.
        let mut segment = vec![0u8; SMALL_SEGMENT_SIZE_BYTES as usize];
        let record = RecordInput {
            key: b"k",
            value: b"value",
            ..RecordInput::default()
        };
        let mut position = DATA_START as usize;
        let mut chain_crc = 0;
        let mut batches = Vec::new();
        for (base_offset, v1) in [(0, true), (1, true), (2, false), (3, false)] {
            let meta = BatchMeta {
                partition_id: PartitionId(0),
                base_offset: Offset(base_offset),
                timestamp_ms: 1_790_000_000_000,
                prev_batch_crc: chain_crc,
                producer: None,
            };
            let prev_key_offsets = [base_offset.checked_sub(1).map(Offset)];
            let out = &mut segment[position..];
            let encoded = if v1 {
                crate::core::record::encode_batch_v1(out, &meta, &[record], &prev_key_offsets)
            } else {
                encode_batch(out, &meta, &[record], &prev_key_offsets)
            }
            .unwrap();
            batches.push((position as u64, encoded.len_bytes as u64));
            position += encoded.len_bytes;
            chain_crc = encoded.crc;
        }
        let mut scanner = RecoveryScanner::new();
        let scanned = fuzz_bodies::scan_segment(&mut scanner, &segment, &mut whole_segments);
        assert_eq!(
            scanned,
            SegmentScanResult {
                batches,
                valid_end: position as u64,
                tail: TailKind::Clean,
            }
        );
        assert_eq!(scanner.chain_crc(), chain_crc);
        assert_eq!(scanner.next_offset(PartitionId(0)), Offset(4));
    }

    #[test]
    fn scan_ends_segment_when_no_room_for_a_batch_header() {
        // A batch that ends 20 bytes before the segment's end, then a batch in the next one.
        let value_len_bytes =
            (3 * BLOCK - 20) as usize - BATCH_HEADER_SIZE_BYTES - RECORD_FIXED_SIZE_BYTES - 1 - 15;
        let groups = [
            vec![batch(0, vec![record("a", value_len_bytes)])],
            vec![batch(0, vec![record("a", 1)])],
        ];
        let log = TestLog::with_groups(SMALL_SEGMENT_SIZE_BYTES, &groups);
        assert_eq!(log.batches[0].end(), SMALL_SEGMENT_SIZE_BYTES - 20);
        assert_eq!(log.batches[1].segment_index, 1);

        let mut scanner = RecoveryScanner::new();
        let first = fuzz_bodies::scan_segment(&mut scanner, &log.segments[0], &mut whole_segments);
        let expected = SegmentScanResult {
            batches: vec![(DATA_START, SMALL_SEGMENT_SIZE_BYTES - 20 - DATA_START)],
            valid_end: SMALL_SEGMENT_SIZE_BYTES - 20,
            tail: TailKind::Clean,
        };
        assert_eq!(first, expected);
        assert_eq!(recover_whole(&log.segments).found(), log.expected());

        // The same with bytes in those last 20: the tail is torn, the log still continues.
        let mut segments = log.segments.clone();
        *segments[0].last_mut().unwrap() = 1;
        let mut scanner = RecoveryScanner::new();
        let first = fuzz_bodies::scan_segment(&mut scanner, &segments[0], &mut whole_segments);
        assert_eq!(first.tail, TailKind::TornTail);
        assert_eq!(recover_whole(&segments).found(), log.expected());
    }

    #[test]
    fn scan_repeats_segment_end_and_accepts_nothing_more() {
        let log = fixed_log();
        let segment = &log.segments[0];
        let mut scanner = RecoveryScanner::new();
        scanner.begin_segment(segment.len() as u64);
        let mut accepted_batch_count = 0;
        let first = scanner.scan(&segment[DATA_START as usize..], DATA_START, &mut |_, _| {
            accepted_batch_count += 1
        });
        let again = scanner.scan(&segment[DATA_START as usize..], DATA_START, &mut |_, _| {
            accepted_batch_count += 1
        });
        assert_eq!(first, again);
        assert_eq!(accepted_batch_count, log.batches.len());
        assert!(matches!(
            first,
            ScanProgress::SegmentEnd {
                tail: TailKind::Clean,
                ..
            }
        ));
    }

    #[test]
    #[should_panic(expected = "abandoned")]
    fn begin_segment_panics_when_the_previous_segment_did_not_end() {
        let log = fixed_log();
        let mut scanner = RecoveryScanner::new();
        scanner.begin_segment(log.segments[0].len() as u64);
        let progress = scanner.scan(&log.segments[0][4096..8192], DATA_START, &mut |_, _| {});
        assert!(matches!(progress, ScanProgress::NeedMore { .. }));
        scanner.begin_segment(log.segments[0].len() as u64);
    }

    #[test]
    fn scan_decides_in_contract_sized_chunks_over_large_batches() {
        // Batches near the largest size, in segments larger than the lookahead, read in
        // chunks exactly as long as the NeedMore contract asks: batches straddle chunk ends.
        let big = BATCH_SIZE_BYTES_MAX - 48 - 22 - 1 - 15 - 4096;
        let groups: Vec<GroupSpec> = (0..7)
            .map(|i| {
                let value_len_bytes = [big, 5000, big / 3, 100][i % 4];
                vec![
                    batch((i % 2) as u32, vec![record("k", value_len_bytes)]),
                    batch(2, vec![record("j", i * 700)]),
                ]
            })
            .collect();
        let log = TestLog::with_groups(SEGMENT_SIZE_BYTES_MIN + 1024 * 1024, &groups);
        assert!(log.segments.len() >= 2);
        for back_blocks in [0, 1, 7] {
            let mut contract_chunks = |position: u64, segment_size_bytes: u64| {
                let start = (position - position % BLOCK).saturating_sub(back_blocks * BLOCK);
                (
                    start,
                    (position + SCAN_LOOKAHEAD_BYTES as u64).min(segment_size_bytes),
                )
            };
            let recovered = recover(&log.segments, &mut contract_chunks);
            assert_eq!(
                recovered.found(),
                log.expected(),
                "{back_blocks} blocks back"
            );
            // The segment headers of a full-size log verify, as the shell checks them.
            for (index, segment) in log.segments.iter().enumerate() {
                assert_eq!(
                    SegmentHeader::decode(segment).unwrap().segment_index,
                    index as u64
                );
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        #[test]
        fn scan_accepts_every_batch_of_a_valid_log(groups in arb_groups(1..12)) {
            let log = TestLog::with_groups(SMALL_SEGMENT_SIZE_BYTES, &groups);
            let recovered = recover_whole(&log.segments);
            prop_assert_eq!(recovered.found(), log.expected());
            prop_assert_eq!(recovered.tail, TailKind::Clean);
        }

        #[test]
        fn scan_stops_before_garbage_after_the_log(
            groups in arb_groups(1..8),
            garbage in prop::collection::vec(any::<u8>(), 1..6000),
            at_batch_end: bool,
        ) {
            let mut log = TestLog::with_groups(SMALL_SEGMENT_SIZE_BYTES, &groups);
            let mut garbage = garbage;
            garbage[0] |= 1;
            let last_end = log.batches.last().unwrap().end();
            let position = if at_batch_end { last_end } else { log.write_position };
            let expected = log.expected();
            let segment_size_bytes = log.segment_size_bytes;
            if position + BATCH_HEADER_SIZE <= segment_size_bytes {
                let segment = &mut log.segments[log.segment_index];
                let len_bytes = garbage.len().min((segment_size_bytes - position) as usize);
                segment[position as usize..position as usize + len_bytes].copy_from_slice(&garbage[..len_bytes]);
                let recovered = recover_whole(&log.segments);
                prop_assert_eq!(recovered.found(), expected);
                prop_assert_eq!(recovered.tail, TailKind::TornTail);
            } else {
                // No room left: the garbage is in the next segment, which does not continue.
                let mut segment = vec![0; segment_size_bytes as usize];
                let len_bytes = garbage.len().min((segment_size_bytes - DATA_START) as usize);
                segment[DATA_START as usize..DATA_START as usize + len_bytes].copy_from_slice(&garbage[..len_bytes]);
                log.segments.push(segment);
                let recovered = recover_whole(&log.segments);
                prop_assert_eq!(recovered.found(), expected);
                prop_assert_eq!(recovered.tail, TailKind::Clean);
            }
        }

        #[test]
        fn scan_keeps_exactly_the_batches_before_a_cut(groups in arb_groups(1..10), cut_seed: u64) {
            let log = TestLog::with_groups(SMALL_SEGMENT_SIZE_BYTES, &groups);
            let written_bytes = (log.segments.len() as u64) * (log.segment_size_bytes - DATA_START);
            let cut_index = cut_seed % written_bytes;
            let cut_segment = (cut_index / (log.segment_size_bytes - DATA_START)) as usize;
            let cut = DATA_START + cut_index % (log.segment_size_bytes - DATA_START);
            let mut segments = log.segments.clone();
            segments[cut_segment][cut as usize..].fill(0);
            for segment in &mut segments[cut_segment + 1..] {
                segment.fill(0);
            }
            let recovered = recover_whole(&segments);
            let expected = batches_before(&log, cut_segment, cut);
            prop_assert_eq!(&recovered.batches, &expected);
            let last = expected.last();
            let end_segment_index = last.map_or(0, |b| b.segment_index);
            let valid_end = last.map_or(DATA_START, WrittenBatch::end);
            prop_assert_eq!((recovered.end_segment_index, recovered.valid_end), (end_segment_index, valid_end));
            let tail_is_zero = segments[end_segment_index][valid_end as usize..].iter().all(|b| *b == 0);
            prop_assert_eq!(recovered.tail == TailKind::Clean, tail_is_zero);
        }

        #[test]
        fn scan_keeps_a_prefix_of_identical_batches_after_a_bit_flip(
            groups in arb_groups(1..10),
            flip_seed: u64,
        ) {
            let log = TestLog::with_groups(SMALL_SEGMENT_SIZE_BYTES, &groups);
            let mut segments = log.segments.clone();
            let data_bits = (log.segment_size_bytes - DATA_START) * 8;
            let flip = flip_seed % (data_bits * segments.len() as u64);
            let segment_index = (flip / data_bits) as usize;
            let position = DATA_START + flip % data_bits / 8;
            segments[segment_index][position as usize] ^= 1 << (flip % 8);
            let recovered = recover_whole(&segments);
            let expected: Vec<_> = log
                .batches
                .iter()
                .take_while(|b| !b.contains(segment_index, position))
                .cloned()
                .collect();
            prop_assert_eq!(recovered.batches, expected);
            fuzz_bodies::scan_checked(&segments[segment_index][DATA_START as usize..]);
        }

        #[test]
        fn scan_rejects_stale_batches_beyond_a_rewritten_tail(
            groups_a in arb_groups(4..12),
            groups_b in arb_groups(1..3),
            kept_seed: usize,
        ) {
            // Log A was written; recovery kept A's batches up to `kept` because the next one
            // was torn; the restarted writer wrote log B from the next block boundary, over
            // A but shorter than it. A's later batches still lie beyond B, valid but stale.
            let log_a = TestLog::with_groups(SMALL_SEGMENT_SIZE_BYTES, &groups_a);
            prop_assume!(log_a.batches.len() >= 3);
            let kept = kept_seed % (log_a.batches.len() - 2);
            let torn = &log_a.batches[kept + 1];
            let mut log_b = log_a.resumed_after(kept);
            log_b.segments[torn.segment_index][torn.position as usize..torn.end() as usize].fill(0);
            for group in &groups_b {
                log_b.append_group(group);
            }
            let stale_count = log_a.batches[kept + 2..]
                .iter()
                .filter(|a| log_b.segments.get(a.segment_index).is_some_and(|segment| {
                    segment[a.position as usize..a.end() as usize] == a.bytes[..]
                }))
                .count();
            prop_assume!(stale_count > 0);
            let recovered = recover_whole(&log_b.segments);
            prop_assert_eq!(recovered.found(), log_b.expected());
        }

        #[test]
        fn scan_in_chunks_matches_scan_of_whole_segment(
            groups in arb_groups(1..10),
            chunk_lengths in prop::collection::vec(0_u64..3 * BLOCK, 1..20),
            back_blocks in prop::collection::vec(0_u64..3, 1..5),
            damage_seed: Option<u64>,
        ) {
            let log = TestLog::with_groups(SMALL_SEGMENT_SIZE_BYTES, &groups);
            let mut segments = log.segments.clone();
            if let Some(seed) = damage_seed {
                // Flip a bit or zero a tail, so that chunking also meets the end paths.
                let segment = &mut segments[(seed % 3) as usize % log.segments.len()];
                let position = (DATA_START + seed % (log.segment_size_bytes - DATA_START)) as usize;
                if seed % 2 == 0 { segment[position] ^= 0x10 } else { segment[position..].fill(0) }
            }
            let whole = recover_whole(&segments);
            let mut call = 0;
            let mut random_chunks = |position: u64, _| {
                call += 1;
                let start = (position - position % BLOCK).saturating_sub(back_blocks[call % back_blocks.len()] * BLOCK);
                (start, position + chunk_lengths[call % chunk_lengths.len()])
            };
            let chunked = recover(&segments, &mut random_chunks);
            prop_assert_eq!(chunked, whole);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn fuzz_body_record_scan_never_panics_on_random_bytes(data in prop::collection::vec(any::<u8>(), 0..9000)) {
            fuzz_bodies::record_scan(&data);
        }

        #[test]
        fn fuzz_body_record_scan_never_panics_on_damaged_logs(
            groups in arb_groups(1..4),
            damage in prop::collection::vec((any::<u16>(), any::<u8>()), 0..4),
            cut_seed: u16,
        ) {
            let log = TestLog::with_groups(SMALL_SEGMENT_SIZE_BYTES, &groups);
            let mut data = log.segments[0][DATA_START as usize..].to_vec();
            for (position, byte) in damage {
                let position = usize::from(position) % data.len();
                data[position] = byte;
            }
            data.truncate(usize::from(cut_seed) % (data.len() + 1));
            fuzz_bodies::record_scan(&data);
            // The first batch alone, as the decoder sees it.
            fuzz_bodies::record_scan(&log.batches[0].bytes);
        }
    }
}
