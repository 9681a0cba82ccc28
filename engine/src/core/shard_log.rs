//! `ShardLog`: what one shard decides on its write path, as a state machine with no I/O.
//!
//! It owns the shard's partitions (their `PartitionState`, durable offset index and staged
//! batches), the open group being filled, the one group in flight, the log tail (current
//! segment, write position, the next segment's state, the chain CRC), the read cache, the
//! fit check and the roll decision, and poisoning. Shaped like quinn-proto's `Connection`:
//! the shell feeds it what happened (`stage`, `handle_written`, `handle_synced`,
//! `handle_prepared`, `handle_index_written`, `handle_index_failed`, `handle_failure`) and
//! asks it what to do next (`poll_group_write`, `poll_preparation`, `poll_index_write`);
//! time comes in as an argument. The shell keeps only files, DMA
//! buffers, events and tasks.
//!
//! Groups are named by a sequence number: every staged batch joins the open group, whose
//! sequence the caller waits on; the shell completes a sequence when `handle_synced` (or
//! fails it when `handle_failure`) says so.
//!
//! Invariants (asserted): at most one group in flight, taken in sequence order; a group is
//! written at a block boundary of the current segment, or of the next one after a roll,
//! and never spans segments; a batch is staged only when `admission` said it has a place
//! on disk; after a failure nothing more is written or staged (docs/DESIGN.md §3.5).

use std::collections::VecDeque;
use std::rc::Rc;

use hashbrown::HashMap;

use crate::core::checkpoint::{Checkpoint, CheckpointError, CheckpointWriter, PartitionCheckpoint};
use crate::core::limits::{BLOCK_SIZE_BYTES, SEGMENT_SIZE_BYTES_FIRST};
use crate::core::offset_index::{
    BatchLocation, Found, OffsetIndex, OffsetIndexMemory, SealedRun, page_find,
};
use crate::core::partition::{PartitionState, Refusal};
use crate::core::read_cache::ReadCache;
use crate::core::record::{BatchMeta, encode_batch};
use crate::core::retention::RetentionPolicy;
use crate::core::segment_header::SEGMENT_HEADER_SIZE_BYTES;
use crate::core::segment_header::SegmentHeader;
use crate::core::segment_index::{
    IndexEntry, IndexPage, PartitionEntries, PartitionPlacement, SegmentIndex, placements,
};
use crate::core::{Offset, PartitionId, ProducerStamp, RecordInput, SegmentPosition, ShardId};
use crate::error::StorageError;

/// Initial capacity of a group's byte buffer; it grows up to `group_size_bytes_max`.
const GROUP_INITIAL_CAPACITY_BYTES: usize = 64 * 1024;

const SEGMENT_DATA_START: u64 = SEGMENT_HEADER_SIZE_BYTES as u64;

/// Index pages a fetch from a sealed segment reads at most (128 entries each): one read of
/// up to 40 KiB, which holds 1024 batches.
const FETCH_PAGE_COUNT_MAX: usize = 8;

/// The limits a `ShardLog` works within, as plain numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardLogLimits {
    /// Size segments grow to (`next_segment_size_bytes`): the configured segment size.
    pub segment_size_bytes: u64,
    /// Largest group written with one write and one fdatasync.
    pub group_size_bytes_max: usize,
    /// Most staged appends waiting for their group to be synced.
    pub pending_append_count_max: usize,
    /// Bytes of recently synced groups kept for reads.
    pub read_cache_bytes_max: usize,
}

/// One staged batch, from staging until it is synced: where its bytes are meanwhile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct StagedBatch {
    base_offset: Offset,
    end_offset: Offset,
    group_sequence: u64,
    /// Where the batch starts in its group's bytes.
    group_position: usize,
    len_bytes: u32,
    /// The largest timestamp of its records, for the offset index.
    max_timestamp_ms: i64,
}

/// Everything the log knows about one partition.
struct PartitionLog {
    state: PartitionState,
    synced_batches: OffsetIndex,
    /// Staged batches not yet synced, in offset order.
    staged_batches: VecDeque<StagedBatch>,
    /// What its topic keeps.
    retention: RetentionPolicy,
}

/// A group of staged batches: the open one being filled, or the one in flight.
struct Group {
    sequence: u64,
    bytes: Rc<Vec<u8>>,
    /// The partition of each batch, in the order they were staged (their details are in
    /// the partitions' `staged_batches`).
    partitions: Vec<PartitionId>,
    /// Records in the group's batches.
    record_count: u64,
}

/// Where the group in flight is written.
struct InFlight {
    group: Group,
    segment_index: u64,
    position: u64,
    padded_len_bytes: u64,
}

/// The segment after the current one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NextSegment {
    /// Nobody asked for it yet: `poll_preparation` will.
    NotStarted,
    /// Being prepared by the shell.
    Preparing,
    /// Prepared and synced: the next roll uses it.
    Ready,
    /// Preparing it failed (typically ENOSPC). Appends that need it fail with this error
    /// without being staged, and the next one that needs it asks for a retry.
    Failed(StorageError),
}

/// Whether a batch of some length can be staged now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Yes: it has room in the open group, a pending slot, and a place on disk.
    Admit,
    /// Not now: wait until the room changes (a group is taken or synced, a segment is
    /// prepared).
    Wait,
    /// The group it would join needs the next segment, which could not be prepared.
    PreparationFailed(StorageError),
}

/// A group for the shell to write: pad `bytes` with zeros to `padded_len_bytes` and write
/// them at `position` of segment `segment_index`, then `handle_written`, sync, and
/// `handle_synced`.
#[derive(Clone, Debug)]
pub struct GroupWrite {
    /// The group's sequence.
    pub sequence: u64,
    /// The segment to write to.
    pub segment_index: u64,
    /// Whether this group starts a new segment: the shell makes the prepared segment
    /// `segment_index` its current file first.
    pub rolled: bool,
    /// Block-aligned position in the segment.
    pub position: u64,
    /// The encoded batches.
    pub bytes: Rc<Vec<u8>>,
    /// `bytes` rounded up to whole blocks.
    pub padded_len_bytes: u64,
    /// Records in the group's batches.
    pub record_count: u64,
}

/// What `poll_group_write` answers.
#[derive(Clone, Debug)]
pub enum GroupPoll {
    /// Write this group.
    Write(GroupWrite),
    /// Nothing to write now (no batch staged, or a group is in flight).
    Idle,
    /// The open group needs the next segment, which is not prepared yet.
    WaitForPreparation,
    /// The open group needs the next segment, which could not be prepared: this is
    /// fatal, since the group was admitted when the segment was ready.
    Failed(StorageError),
}

/// What a synced group changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Synced {
    /// The group's sequence: complete every append waiting on it.
    pub sequence: u64,
    /// Partitions whose synced end moved, once each.
    pub partitions: Vec<PartitionId>,
}

/// The groups a failure fails: everything staged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Poisoned {
    /// The group in flight, if any.
    pub in_flight_sequence: Option<u64>,
    /// The open group.
    pub open_sequence: u64,
}

/// A batch staged by `stage`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Staged {
    /// Offset of its first record.
    pub base_offset: Offset,
    /// The group it joined: the caller waits for this sequence.
    pub group_sequence: u64,
}

/// Where a read of one offset is served from.
#[derive(Clone, Debug)]
pub enum ReadSource {
    /// A synced batch in the cache: `bytes[start..start + len_bytes]`.
    Cached {
        /// The group's bytes.
        bytes: Rc<Vec<u8>>,
        /// Where the batch starts in them.
        start: usize,
        /// Its length.
        len_bytes: usize,
    },
    /// A synced batch on disk.
    Disk(BatchLocation),
    /// A staged batch, copied out of its group (which keeps filling or is being written).
    Staged(Vec<u8>),
    /// A batch of a sealed segment: read this page of its index file, verify it
    /// (`segment_index::decode_page`), find the batch (`offset_index::page_find`), then
    /// read it from its `durable_source`.
    Page(IndexPage),
}

/// Where a durable batch is: known, or in a page of a sealed segment's index file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Located {
    /// The batch.
    Batch(BatchLocation),
    /// Read and verify this index page to find the batch.
    Page(IndexPage),
}

/// What a fetch reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FetchPlan {
    /// These batches (none when the fetch starts at the synced end).
    Batches(Vec<BatchLocation>),
    /// The batches found in this index page from the fetch's offset on
    /// (`batches_in_page`): a fetch from a sealed segment stops at the page's end.
    Page(IndexPage),
}

/// A sealed segment's index file to write: encode `into_index(header)` with the segment's
/// header, write it to a temporary name, sync, rename, sync the directory, then
/// `handle_index_written` (or `handle_index_failed`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexWrite {
    /// The sealed segment.
    pub segment_index: u64,
    /// Each partition's batches in it, by id.
    pub partitions: Vec<PartitionEntries>,
}

impl IndexWrite {
    /// The index file's content, for the segment with `header`.
    pub fn into_index(self, header: SegmentHeader) -> SegmentIndex {
        assert_eq!(
            header.segment_index, self.segment_index,
            "the header is the segment's"
        );
        let data_end_position = self
            .partitions
            .iter()
            .filter_map(|partition| partition.entries.last())
            .map(|entry| entry.position + u64::from(entry.len_bytes))
            .max()
            .unwrap_or(SEGMENT_DATA_START);
        SegmentIndex {
            segment: header,
            data_end_position,
            partitions: self.partitions,
        }
    }
}

/// The batches of a verified page (`FetchPlan::Page`) that a fetch from `from` returns:
/// whole batches up to about `size_bytes_max`, at least one.
pub fn batches_in_page(
    entries: &[IndexEntry],
    segment_index: u64,
    from: Offset,
    size_bytes_max: usize,
) -> Vec<BatchLocation> {
    let first = entries.partition_point(|entry| entry.end_offset() <= from);
    let mut locations = Vec::new();
    let mut total_bytes = 0usize;
    for entry in entries.iter().skip(first) {
        if !locations.is_empty() && total_bytes + entry.len_bytes as usize > size_bytes_max {
            break;
        }
        total_bytes += entry.len_bytes as usize;
        locations.push(entry.location(segment_index));
    }
    locations
}

/// The batch of a verified page (`ReadSource::Page`) holding `offset`.
pub fn batch_in_page(
    entries: &[IndexEntry],
    segment_index: u64,
    offset: Offset,
) -> Option<BatchLocation> {
    page_find(entries, offset).map(|entry| entry.location(segment_index))
}

/// Counters of what the log has written, for benchmarks and operators.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardLogStats {
    /// Groups written and synced.
    pub group_count: u64,
    /// Batches in those groups.
    pub batch_count: u64,
    /// Bytes of batches in those groups (padding excluded).
    pub batch_bytes: u64,
    /// Bytes written including padding to block boundaries.
    pub written_bytes: u64,
}

/// A checkpoint `ShardLog::capture_checkpoint` took: its file bytes and the end of the
/// log it covers (its file name).
/// One step of retention: segment `segment_index` is rewritten without the runs of
/// `removed` (their oldest batches, all expired), keeping the runs of `kept` whole, under
/// the next generation (`ShardLog::plan_retention`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetentionPlan {
    /// The sealed segment to rewrite.
    pub segment_index: u64,
    /// Its generation now; the rewrite is `generation + 1`.
    pub generation: u16,
    /// Partitions whose run in the segment goes, by id.
    pub removed: Vec<PartitionId>,
    /// Partitions whose run in the segment stays, by id.
    pub kept: Vec<PartitionId>,
    /// Nothing stays and the segment is the log's first: its file is removed instead.
    pub remove_file: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapturedCheckpoint {
    /// The file's bytes (`core::checkpoint`).
    pub bytes: Vec<u8>,
    /// Just after its last batch.
    pub log_end: SegmentPosition,
}

/// A recovered partition, handed to `ShardLog::new`.
pub struct RecoveredPartition {
    /// Its state, with every recovered batch applied.
    pub state: PartitionState,
    /// Where its recovered batches lie.
    pub synced_batches: OffsetIndex,
}

impl RecoveredPartition {
    /// A partition with nothing recovered yet.
    #[must_use]
    pub fn empty(id: PartitionId) -> Self {
        RecoveredPartition {
            state: PartitionState::new(id),
            synced_batches: OffsetIndex::new(),
        }
    }
}

impl RecoveredPartition {
    /// A partition as a checkpoint stored it (`core::checkpoint`, checked when decoded).
    pub fn from_checkpoint(checkpoint: &PartitionCheckpoint) -> Result<Self, CheckpointError> {
        Ok(RecoveredPartition {
            state: PartitionState::from_checkpoint(checkpoint)?,
            synced_batches: OffsetIndex::from_checkpoint(
                &checkpoint.runs,
                &checkpoint.batches,
                Offset(checkpoint.end_offset.0),
            )?,
        })
    }
}

/// The write path of one shard. See the module docs.
pub struct ShardLog {
    limits: ShardLogLimits,
    partitions: HashMap<PartitionId, PartitionLog>,
    open: Group,
    in_flight: Option<InFlight>,
    pending_append_count: usize,
    current_index: u64,
    /// Preallocated size of the current segment (its header's).
    current_size_bytes: u64,
    /// Block-aligned position of the next group in the current segment.
    write_position: u64,
    next_segment: NextSegment,
    /// The next segment is needed soon: its preparation should stop pacing itself.
    preparation_urgent: bool,
    /// `batch_crc` of the last staged batch: the next batch's `prev_batch_crc`.
    chain_crc: u32,
    read_cache: ReadCache,
    poisoned: Option<StorageError>,
    stats: ShardLogStats,
    prev_key_offsets: Vec<Option<Offset>>,
    /// Segments below this one are sealed: the log rolled past them and every group in
    /// them is synced.
    sealed_end: u64,
    /// Sealed segments whose index file is not durable yet, in order; they are written in
    /// that order, so each partition's dense batches are a suffix of its batches.
    index_pending: VecDeque<u64>,
    /// The index write in flight: its segment and where each partition's entries go.
    index_in_flight: Option<(u64, Vec<PartitionPlacement>)>,
    /// An index write failed: wait for the next seal or `retry_index_writes`.
    index_retry_wait: bool,
    /// The log's first segment: retention removed the files before it.
    first_segment: u64,
}

/// Size of a new core log's first segment: `SEGMENT_SIZE_BYTES_FIRST`, or the configured
/// size when that is smaller.
pub fn first_segment_size_bytes(configured_size_bytes: u64) -> u64 {
    configured_size_bytes.min(SEGMENT_SIZE_BYTES_FIRST)
}

/// Size of the segment after one of `current_size_bytes`: double it, capped by the
/// configured size and never below the first segment's. A log that outgrew a lowered
/// configuration goes back to the configured size.
///
/// With 256 MiB configured: 8, 16, 32, 64, 128, then 256 MiB for every later segment, so
/// the first 248 MiB of a log take five segments and a first start preallocates 16 MiB
/// per shard (the first segment and the one prepared ahead) instead of 512 MiB.
pub fn next_segment_size_bytes(current_size_bytes: u64, configured_size_bytes: u64) -> u64 {
    current_size_bytes
        .saturating_mul(2)
        .min(configured_size_bytes)
        .max(first_segment_size_bytes(configured_size_bytes))
}

fn padded(len_bytes: usize) -> u64 {
    (len_bytes.div_ceil(BLOCK_SIZE_BYTES) * BLOCK_SIZE_BYTES) as u64
}

impl ShardLog {
    /// A log that continues after recovery: the next group goes at `write_position` (the
    /// first block boundary after the valid end) of segment `current_index`, whose size is
    /// `current_size_bytes`, chained to `chain_crc`. The next segment is not prepared yet.
    ///
    /// # Panics
    ///
    /// If `write_position` is not block-aligned or lies outside the segment's data.
    pub fn new(
        limits: ShardLogLimits,
        partitions: impl IntoIterator<Item = (PartitionId, RecoveredPartition)>,
        current_index: u64,
        current_size_bytes: u64,
        write_position: u64,
        chain_crc: u32,
    ) -> Self {
        assert!(
            write_position.is_multiple_of(BLOCK_SIZE_BYTES as u64),
            "write position {write_position} is block-aligned"
        );
        assert!(
            (SEGMENT_DATA_START..=current_size_bytes).contains(&write_position),
            "write position {write_position} lies in a segment of {current_size_bytes}"
        );
        let partitions: HashMap<PartitionId, PartitionLog> = partitions
            .into_iter()
            .map(|(id, recovered)| {
                let log = PartitionLog {
                    state: recovered.state,
                    synced_batches: recovered.synced_batches,
                    staged_batches: VecDeque::new(),
                    retention: RetentionPolicy::FOREVER,
                };
                (id, log)
            })
            .collect();
        // Recovery sealed the segments whose index file it found valid or could write; the
        // rest are written again by the shell, in order.
        let mut index_pending: Vec<u64> = partitions
            .values()
            .flat_map(|log| log.synced_batches.dense_segments())
            .filter(|segment| *segment < current_index)
            .collect();
        index_pending.sort_unstable();
        index_pending.dedup();
        ShardLog {
            limits,
            partitions,
            open: Group::new(0, limits.group_size_bytes_max),
            in_flight: None,
            pending_append_count: 0,
            current_index,
            current_size_bytes,
            write_position,
            next_segment: NextSegment::NotStarted,
            preparation_urgent: false,
            chain_crc,
            read_cache: ReadCache::new(limits.read_cache_bytes_max),
            poisoned: None,
            stats: ShardLogStats::default(),
            prev_key_offsets: Vec::new(),
            sealed_end: current_index,
            index_pending: index_pending.into(),
            index_in_flight: None,
            index_retry_wait: false,
            first_segment: 0,
        }
    }

    /// The log's first segment, as recovery found it (retention removed those before).
    pub fn set_first_segment(&mut self, first_segment: u64) {
        self.first_segment = first_segment;
    }

    /// The log's first segment.
    pub fn first_segment(&self) -> u64 {
        self.first_segment
    }

    /// Adds an empty partition (a topic created after open). Known partitions are kept.
    pub fn add_partition(&mut self, id: PartitionId) {
        self.partitions.entry(id).or_insert_with(|| PartitionLog {
            state: PartitionState::new(id),
            synced_batches: OffsetIndex::new(),
            staged_batches: VecDeque::new(),
            retention: RetentionPolicy::FOREVER,
        });
    }

    /// Sets what the partition's topic keeps (at open, and when the topic's policy changes).
    /// Unknown partitions are ignored.
    pub fn set_retention(&mut self, id: PartitionId, retention: RetentionPolicy) {
        if let Some(log) = self.partitions.get_mut(&id) {
            log.retention = retention;
        }
    }

    /// What the partition's topic keeps.
    pub fn retention(&self, id: PartitionId) -> Option<RetentionPolicy> {
        self.partitions.get(&id).map(|log| log.retention)
    }

    /// The partition's first kept offset: every offset from it to the synced end can be
    /// read; below it retention removed the records (their keys stay in the key index).
    pub fn log_start(&self, id: PartitionId) -> Option<Offset> {
        let log = self.partitions.get(&id)?;
        Some(log.synced_batches.log_start().min(log.state.synced_end()))
    }

    /// Whether the log has this partition.
    pub fn has_partition(&self, id: PartitionId) -> bool {
        self.partitions.contains_key(&id)
    }

    /// Every partition, in no order.
    pub fn partition_ids(&self) -> impl Iterator<Item = PartitionId> + '_ {
        self.partitions.keys().copied()
    }

    /// The storage failure that poisoned the log, if any.
    pub fn poisoned(&self) -> Option<&StorageError> {
        self.poisoned.as_ref()
    }

    /// What has been written so far.
    pub fn stats(&self) -> ShardLogStats {
        self.stats
    }

    /// Where the synced core log ends: the segment groups are written to now and the
    /// block-aligned position the next group goes to (the group in flight, if any, starts
    /// there, also right after a roll). Every byte before it is synced and never written
    /// again, so a backup may copy it while the log goes on (docs/DESIGN.md, backup).
    pub fn synced_end_position(&self) -> SegmentPosition {
        SegmentPosition {
            segment_index: self.current_index,
            position: self.write_position,
        }
    }

    /// The segment groups are written to now.
    pub fn current_segment_index(&self) -> u64 {
        self.current_index
    }

    /// The size to prepare the next segment with: twice the current one, up to the
    /// configured size (`first_segment_size_bytes` starts the doubling).
    pub fn next_segment_size_bytes(&self) -> u64 {
        next_segment_size_bytes(self.current_size_bytes, self.limits.segment_size_bytes)
    }

    /// Whether the shell should prepare the next segment at full speed.
    pub fn is_preparation_urgent(&self) -> bool {
        self.preparation_urgent
    }

    /// Appends staged and not yet synced.
    pub fn pending_append_count(&self) -> usize {
        self.pending_append_count
    }

    /// Whether anything is staged or in flight.
    pub fn has_unsynced(&self) -> bool {
        !self.open.partitions.is_empty() || self.in_flight.is_some()
    }

    /// The partition's (appended end, synced end).
    pub fn end_offsets(&self, partition: PartitionId) -> Option<(Offset, Offset)> {
        let log = self.partitions.get(&partition)?;
        Some((log.state.appended_end(), log.state.synced_end()))
    }

    /// The partition's state (key index, watermarks), for reads.
    pub fn partition_state(&self, partition: PartitionId) -> Option<&PartitionState> {
        self.partitions.get(&partition).map(|log| &log.state)
    }

    /// Key-index memory of every partition, for the memory figure.
    pub fn key_index_memory_bytes(&self) -> usize {
        self.partitions
            .values()
            .map(|log| log.state.key_index_memory_bytes())
            .sum()
    }

    /// Whether a batch of `len_bytes` can be staged now: room in the open group, a pending
    /// slot, and a place on disk, found by replaying what the committer will do (write the
    /// group in flight, then the open one, each in the current segment if it fits and else
    /// in the next). A batch is staged only once it is sure to have a place on disk, so a
    /// full disk (a segment that cannot be prepared) fails appends without poisoning.
    pub fn admission(&mut self, len_bytes: usize) -> Admission {
        let open_len_bytes = self.open.bytes.len();
        let fits_group = open_len_bytes + len_bytes <= self.limits.group_size_bytes_max;
        let has_slot = self.pending_append_count < self.limits.pending_append_count_max;
        let segment_size_bytes = self.current_size_bytes;
        let next_ready = self.next_segment == NextSegment::Ready;
        let mut position = self.write_position;
        if let Some(in_flight) = &self.in_flight {
            // Its place was decided when it was taken (in the current segment, which is the
            // next one if it rolled): the open group goes after it.
            position = in_flight.position + in_flight.padded_len_bytes;
        }
        let fits_segment = position + padded(open_len_bytes + len_bytes) <= segment_size_bytes;
        if fits_segment || next_ready {
            return if fits_group && has_slot {
                Admission::Admit
            } else {
                Admission::Wait
            };
        }
        if !self.open.partitions.is_empty() || self.in_flight.is_some() {
            // The committer must write what is staged first; then it fits in the next one.
            return Admission::Wait;
        }
        match &self.next_segment {
            NextSegment::Failed(error) => Admission::PreparationFailed(error.clone()),
            NextSegment::NotStarted | NextSegment::Preparing | NextSegment::Ready => {
                self.preparation_urgent = true;
                Admission::Wait
            }
        }
    }

    /// Asks for the failed preparation of the next segment to be tried again (an append
    /// that needs it does this once before failing).
    pub fn retry_preparation(&mut self) {
        if matches!(self.next_segment, NextSegment::Failed(_)) {
            self.next_segment = NextSegment::NotStarted;
            self.preparation_urgent = true;
        }
    }

    /// What staging a batch would answer now, without staging it, as far as staging later
    /// will answer the same (`PartitionState::check_as`).
    pub fn check(
        &mut self,
        partition: PartitionId,
        expected_end: Option<Offset>,
        records: &[RecordInput<'_>],
        producer: Option<ProducerStamp>,
    ) -> Option<Result<(), Refusal>> {
        let log = self.partitions.get_mut(&partition)?;
        Some(log.state.check_as(expected_end, records, producer))
    }

    /// The group a staged (not yet synced) batch of `partition` starting at `base_offset`
    /// is in; `None` if no staged batch starts there (it is synced, or never was).
    pub fn staged_group_of(&self, partition: PartitionId, base_offset: Offset) -> Option<u64> {
        let log = self.partitions.get(&partition)?;
        let index = log
            .staged_batches
            .partition_point(|batch| batch.base_offset < base_offset);
        log.staged_batches
            .get(index)
            .filter(|batch| batch.base_offset == base_offset)
            .map(|batch| batch.group_sequence)
    }

    /// Checks a batch's producer stamp and conditions and, if they hold, stages it in the
    /// open group (docs/DESIGN.md §1): later appends see it, and it becomes durable with its
    /// group. A refused batch (a conflict, a duplicate of a producer's earlier batch, a
    /// stamp out of sequence) is not staged and takes no pending slot. `len_bytes` is
    /// `batch_encoded_len(records)`, which the caller already validated, as it did the
    /// stamp (`check_producer_stamp`). `None`: unknown partition.
    ///
    /// # Panics
    ///
    /// If the log is poisoned or `admission` would not admit the batch: staging without a
    /// place on disk could make a full disk fatal.
    pub fn stage(
        &mut self,
        partition: PartitionId,
        expected_end: Option<Offset>,
        records: &[RecordInput<'_>],
        producer: Option<ProducerStamp>,
        len_bytes: usize,
        timestamp_ms: u64,
    ) -> Option<Result<Staged, Refusal>> {
        assert!(self.poisoned.is_none(), "nothing is staged once poisoned");
        assert_eq!(
            self.admission(len_bytes),
            Admission::Admit,
            "a batch is staged only when admitted"
        );
        let log = self.partitions.get_mut(&partition)?;
        let base_offset = match log.state.check_and_stage_as(
            expected_end,
            records,
            producer,
            &mut self.prev_key_offsets,
        ) {
            Ok(base_offset) => base_offset,
            Err(refusal) => return Some(Err(refusal)),
        };
        let meta = BatchMeta {
            partition_id: partition,
            base_offset,
            timestamp_ms,
            prev_batch_crc: self.chain_crc,
            producer,
        };
        let bytes =
            Rc::get_mut(&mut self.open.bytes).expect("the open group's bytes are not shared");
        let group_position = bytes.len();
        bytes.resize(group_position + len_bytes, 0);
        let encoded = encode_batch(
            bytes.get_mut(group_position..).expect("resized just above"),
            &meta,
            records,
            &self.prev_key_offsets,
        )
        .expect("batch_encoded_len validated the batch and sized the buffer");
        assert_eq!(
            encoded.len_bytes, len_bytes,
            "encoded length matches the estimate"
        );
        self.chain_crc = encoded.crc;
        let record_count = u64::try_from(records.len()).expect("usize fits in u64");
        // As the encoder writes them: a record without a timestamp gets the append time.
        let append_timestamp_ms = i64::try_from(timestamp_ms).unwrap_or(i64::MAX);
        let max_timestamp_ms = records
            .iter()
            .map(|record| record.timestamp_ms.unwrap_or(append_timestamp_ms))
            .max()
            .unwrap_or(append_timestamp_ms);
        log.staged_batches.push_back(StagedBatch {
            base_offset,
            end_offset: base_offset.plus(record_count),
            group_sequence: self.open.sequence,
            group_position,
            len_bytes: u32::try_from(len_bytes).expect("batches are at most 1 MiB"),
            max_timestamp_ms,
        });
        self.open.partitions.push(partition);
        self.open.record_count += record_count;
        self.pending_append_count += 1;
        Some(Ok(Staged {
            base_offset,
            group_sequence: self.open.sequence,
        }))
    }

    /// The next segment to prepare, if it is needed and nobody prepares it: the shell
    /// prepares it (paced unless `is_preparation_urgent`) and calls `handle_prepared`.
    pub fn poll_preparation(&mut self) -> Option<u64> {
        if self.poisoned.is_some() || self.next_segment != NextSegment::NotStarted {
            return None;
        }
        self.next_segment = NextSegment::Preparing;
        Some(self.current_index + 1)
    }

    /// The preparation of segment `index` ended.
    ///
    /// # Panics
    ///
    /// If no preparation of that segment was asked for.
    pub fn handle_prepared(&mut self, index: u64, outcome: Result<(), StorageError>) {
        assert_eq!(
            index,
            self.current_index + 1,
            "only the next segment is prepared"
        );
        assert_eq!(
            self.next_segment,
            NextSegment::Preparing,
            "segment {index} was being prepared"
        );
        self.next_segment = match outcome {
            Ok(()) => NextSegment::Ready,
            Err(error) => NextSegment::Failed(error),
        };
        self.preparation_urgent = false;
    }

    /// The next group to write, if one can be: takes the open group (one in flight at a
    /// time), decides its segment and position, and rolls to the prepared next segment when
    /// it does not fit in the current one.
    pub fn poll_group_write(&mut self) -> GroupPoll {
        if self.poisoned.is_some() || self.in_flight.is_some() || self.open.partitions.is_empty() {
            return GroupPoll::Idle;
        }
        let padded_len_bytes = padded(self.open.bytes.len());
        let mut segment_size_bytes = self.current_size_bytes;
        let rolled = self.write_position + padded_len_bytes > segment_size_bytes;
        if rolled {
            match &self.next_segment {
                NextSegment::Ready => {}
                NextSegment::Failed(error) => return GroupPoll::Failed(error.clone()),
                NextSegment::NotStarted | NextSegment::Preparing => {
                    // Admission only lets a group need the next segment once it is ready,
                    // so this is not expected; waiting is still correct.
                    self.preparation_urgent = true;
                    return GroupPoll::WaitForPreparation;
                }
            }
            segment_size_bytes = self.next_segment_size_bytes();
            self.current_index += 1;
            self.current_size_bytes = segment_size_bytes;
            self.write_position = SEGMENT_DATA_START;
            self.next_segment = NextSegment::NotStarted;
            self.preparation_urgent = false;
        } else if self.write_position > segment_size_bytes / 2 {
            // Past half the segment, the next one must be ready soon.
            self.preparation_urgent = true;
        }
        assert!(
            self.write_position + padded_len_bytes <= segment_size_bytes,
            "a group of {padded_len_bytes} bytes fits in an empty segment"
        );
        let next = Group::new(self.open.sequence + 1, self.limits.group_size_bytes_max);
        let group = std::mem::replace(&mut self.open, next).shrunk();
        let write = GroupWrite {
            sequence: group.sequence,
            segment_index: self.current_index,
            rolled,
            position: self.write_position,
            bytes: group.bytes.clone(),
            padded_len_bytes,
            record_count: group.record_count,
        };
        self.in_flight = Some(InFlight {
            group,
            segment_index: self.current_index,
            position: self.write_position,
            padded_len_bytes,
        });
        GroupPoll::Write(write)
    }

    /// A checkpoint of the log's state at the end of the group in flight (docs/DESIGN.md,
    /// "Checkpoints"), encoded, or `None` unless a group is in flight and nothing was
    /// staged after it: call it right after `poll_group_write` returned `Write`. Then the
    /// state with every staged record included is exactly the state the log has once that
    /// group is synced, at a place whose position is known; the shell installs the
    /// checkpoint only then.
    #[must_use]
    pub fn capture_checkpoint(
        &self,
        shard_id: ShardId,
        shard_count: u16,
    ) -> Option<CapturedCheckpoint> {
        let in_flight = self.in_flight.as_ref()?;
        if self.poisoned.is_some() || !self.open.partitions.is_empty() {
            return None;
        }
        let in_flight_location = |batch: &StagedBatch| BatchLocation {
            base_offset: batch.base_offset,
            end_offset: batch.end_offset,
            segment_index: in_flight.segment_index,
            position: in_flight.position + batch.group_position as u64,
            len_bytes: batch.len_bytes,
        };
        let last_batch = self
            .partitions
            .get(in_flight.group.partitions.last()?)
            .and_then(|log| log.staged_batches.back())
            .map(in_flight_location)?;
        let last_batch_at = SegmentPosition {
            segment_index: last_batch.segment_index,
            position: last_batch.position,
        };
        let log_end = SegmentPosition {
            segment_index: last_batch.segment_index,
            position: last_batch.position + u64::from(last_batch.len_bytes),
        };
        let header = Checkpoint {
            shard_id,
            shard_count,
            log_end: Some(log_end),
            last_batch: Some(last_batch_at),
            chain_crc: self.chain_crc,
            partitions: Vec::new(),
        };
        let mut writer = CheckpointWriter::new(&header, self.partitions.len(), 0);
        for log in self.partitions.values() {
            let staged = log
                .staged_batches
                .iter()
                .map(|batch| (in_flight_location(batch), batch.max_timestamp_ms));
            let batch_count = log.synced_batches.dense_batches().len() + log.staged_batches.len();
            log.state.write_checkpoint(
                &mut writer,
                log.synced_batches.sealed_runs(),
                batch_count,
                log.synced_batches.dense_entries().chain(staged),
            );
        }
        Some(CapturedCheckpoint {
            bytes: writer.finish(),
            log_end,
        })
    }

    /// The device acknowledged the write of group `sequence`: not yet durable.
    ///
    /// # Panics
    ///
    /// If that group is not in flight.
    pub fn handle_written(&mut self, sequence: u64) {
        let ShardLog {
            partitions,
            in_flight,
            ..
        } = self;
        let in_flight = in_flight
            .as_ref()
            .expect("a group is in flight when the shell reports on one");
        in_flight_check(in_flight, sequence);
        let mut touched = in_flight.group.partitions.clone();
        touched.sort_unstable();
        touched.dedup();
        for partition in touched {
            let log = partitions
                .get_mut(&partition)
                .expect("partitions are never removed while batches are staged");
            // The group in flight is the oldest unsynced one: its batches lead the queue.
            let written_end = log
                .staged_batches
                .iter()
                .take_while(|batch| batch.group_sequence == sequence)
                .last()
                .map(|batch| batch.end_offset)
                .expect("each partition of the group has a batch staged in it");
            log.state.advance_written(written_end);
        }
    }

    /// Group `sequence` survived fdatasync: its batches become durable in their partitions
    /// (offset index, synced end), its bytes go to the read cache, and its appends can be
    /// acknowledged.
    ///
    /// # Panics
    ///
    /// If that group is not in flight.
    pub fn handle_synced(&mut self, sequence: u64) -> Synced {
        self.in_flight_group(sequence);
        let in_flight = self.in_flight.take().expect("checked just above");
        self.write_position = in_flight.position + in_flight.padded_len_bytes;
        let mut touched: Vec<PartitionId> = Vec::with_capacity(in_flight.group.partitions.len());
        for partition in &in_flight.group.partitions {
            let log = self
                .partitions
                .get_mut(partition)
                .expect("partitions are never removed while batches are staged");
            let batch = log
                .staged_batches
                .pop_front()
                .expect("each batch of the group is staged in its partition");
            assert_eq!(
                batch.group_sequence, sequence,
                "staged batches of a partition are synced in order"
            );
            log.synced_batches.push(
                BatchLocation {
                    base_offset: batch.base_offset,
                    end_offset: batch.end_offset,
                    segment_index: in_flight.segment_index,
                    position: in_flight.position + batch.group_position as u64,
                    len_bytes: batch.len_bytes,
                },
                batch.max_timestamp_ms,
            );
            log.state.advance_synced(batch.end_offset);
            touched.push(*partition);
        }
        let batch_count = in_flight.group.partitions.len();
        self.pending_append_count -= batch_count;
        self.stats.group_count += 1;
        self.stats.batch_count += batch_count as u64;
        self.stats.batch_bytes += in_flight.group.bytes.len() as u64;
        self.stats.written_bytes += in_flight.padded_len_bytes;
        let at = SegmentPosition {
            segment_index: in_flight.segment_index,
            position: in_flight.position,
        };
        self.read_cache.insert(at, in_flight.group.bytes);
        // One group is in flight at a time, in order: once a group of a later segment is
        // synced, every group of the segments before it is.
        if in_flight.segment_index > self.sealed_end {
            self.index_pending
                .extend(self.sealed_end..in_flight.segment_index);
            self.sealed_end = in_flight.segment_index;
            self.index_retry_wait = false;
        }
        touched.sort_unstable();
        touched.dedup();
        Synced {
            sequence,
            partitions: touched,
        }
    }

    /// A write, sync or needed preparation failed: the log is poisoned (docs/DESIGN.md §3.5).
    /// Nothing more is written, staged or read; every staged batch fails with `error`, and
    /// nothing is retried. Returns the groups to fail (their appends may or may not survive
    /// a restart; none was acknowledged).
    pub fn handle_failure(&mut self, error: StorageError) -> Poisoned {
        let in_flight_sequence = self
            .in_flight
            .take()
            .map(|in_flight| in_flight.group.sequence);
        let open_sequence = self.open.sequence;
        self.open = Group::new(open_sequence + 1, 0);
        self.poisoned.get_or_insert(error);
        Poisoned {
            in_flight_sequence,
            open_sequence,
        }
    }

    /// The next sealed segment's index file to write, if one is due and none is in
    /// flight. Its batches stay dense (and readable) until `handle_index_written`.
    pub fn poll_index_write(&mut self) -> Option<IndexWrite> {
        if self.poisoned.is_some() || self.index_in_flight.is_some() || self.index_retry_wait {
            return None;
        }
        let segment_index = *self.index_pending.front()?;
        let write = IndexWrite {
            segment_index,
            partitions: self.segment_partitions(segment_index),
        };
        let placements = placements(&write.partitions);
        self.index_in_flight = Some((segment_index, placements));
        Some(write)
    }

    /// Each partition's dense batches in `segment_index`, by id: what its index file holds
    /// once the segment is sealed (the simulator also makes stale files of it).
    pub(crate) fn segment_partitions(&self, segment_index: u64) -> Vec<PartitionEntries> {
        let mut ids: Vec<PartitionId> = self.partitions.keys().copied().collect();
        ids.sort_unstable();
        ids.into_iter()
            .filter_map(|partition_id| {
                let log = self.partitions.get(&partition_id)?;
                let entries = log.synced_batches.segment_entries(segment_index);
                (!entries.is_empty()).then_some(PartitionEntries {
                    partition_id,
                    entries,
                })
            })
            .collect()
    }

    /// Segment `segment_index`'s index file is durable: its batches leave the dense part of
    /// every partition's offset index for one summary each.
    ///
    /// # Panics
    ///
    /// If that index write is not in flight.
    pub fn handle_index_written(&mut self, segment_index: u64) {
        let (in_flight, placements) = self
            .index_in_flight
            .take()
            .expect("an index write is in flight when the shell reports on one");
        assert_eq!(
            in_flight, segment_index,
            "the shell reports on the index write in flight"
        );
        let pending = self.index_pending.pop_front();
        assert_eq!(
            pending,
            Some(segment_index),
            "index files are written in order"
        );
        for placement in placements {
            if let Some(log) = self.partitions.get_mut(&placement.partition_id) {
                log.synced_batches
                    .seal(segment_index, placement.entries_position);
            }
        }
    }

    /// Writing segment `segment_index`'s index file failed (ENOSPC, EIO): nothing is lost,
    /// its batches stay dense, and the write is asked for again at the next seal or after
    /// `retry_index_writes`. Appends go on.
    ///
    /// # Panics
    ///
    /// If that index write is not in flight.
    pub fn handle_index_failed(&mut self, segment_index: u64) {
        let (in_flight, _) = self
            .index_in_flight
            .take()
            .expect("an index write is in flight when the shell reports on one");
        assert_eq!(
            in_flight, segment_index,
            "the shell reports on the index write in flight"
        );
        self.index_retry_wait = true;
    }

    /// Lets a failed index write be asked for again (the shell's retry timer).
    pub fn retry_index_writes(&mut self) {
        self.index_retry_wait = false;
    }

    /// Sealed segments whose index file is not durable yet.
    pub fn index_pending_count(&self) -> usize {
        self.index_pending.len()
    }

    /// Offset-index memory of every partition, for the memory figures.
    pub fn offset_index_memory(&self) -> OffsetIndexMemory {
        self.partitions
            .values()
            .map(|log| log.synced_batches.memory())
            .fold(OffsetIndexMemory::default(), |total, memory| total + memory)
    }

    /// Durable batches of `partition` from offset `from`, whole batches up to about
    /// `size_bytes_max` (at least one when any is available), with the synced end.
    /// `None`: unknown partition. `from` beyond the synced end is `Err(synced_end)`.
    pub fn fetch_locations(
        &self,
        partition: PartitionId,
        from: Offset,
        size_bytes_max: usize,
    ) -> Option<Result<(FetchPlan, Offset), Offset>> {
        let log = self.partitions.get(&partition)?;
        let synced_end = log.state.synced_end();
        if from > synced_end {
            return Some(Err(synced_end));
        }
        let plan = match log
            .synced_batches
            .find(partition, from, FETCH_PAGE_COUNT_MAX)
        {
            None => FetchPlan::Batches(Vec::new()),
            Some(Found::Page(page)) => FetchPlan::Page(page),
            Some(Found::Dense(first)) => {
                let mut locations = Vec::new();
                let mut total_bytes = 0usize;
                for location in log.synced_batches.dense_batches().iter().skip(first) {
                    if !locations.is_empty()
                        && total_bytes + location.len_bytes as usize > size_bytes_max
                    {
                        break;
                    }
                    total_bytes += location.len_bytes as usize;
                    locations.push(*location);
                }
                FetchPlan::Batches(locations)
            }
        };
        Some(Ok((plan, synced_end)))
    }

    /// The first durable batch of `partition` holding a record whose timestamp is at least
    /// `timestamp_ms` (`OffsetIndex::find_timestamp`), or the index page to find it in
    /// (`offset_index::page_find_timestamp`). `None`: unknown partition; `Some(None)`: no
    /// durable record is that recent.
    pub fn timestamp_location(
        &self,
        partition: PartitionId,
        timestamp_ms: i64,
    ) -> Option<Option<Located>> {
        let log = self.partitions.get(&partition)?;
        Some(
            log.synced_batches
                .find_timestamp(partition, timestamp_ms)
                .map(|found| Self::located(log, found)),
        )
    }

    fn located(log: &PartitionLog, found: Found) -> Located {
        match found {
            Found::Page(page) => Located::Page(page),
            Found::Dense(index) => Located::Batch(
                *log.synced_batches
                    .dense_batches()
                    .get(index)
                    .expect("find returns an index into the dense batches"),
            ),
        }
    }

    /// Where the batch holding `offset` of `partition` can be read: the read cache, the
    /// disk, or (for a staged batch) a copy of its bytes. `None`: unknown partition.
    /// `Some(Err(synced_end))`: no batch holds it.
    pub fn read_source(
        &self,
        partition: PartitionId,
        offset: Offset,
    ) -> Option<Result<ReadSource, Offset>> {
        let log = self.partitions.get(&partition)?;
        if let Some(found) = log.synced_batches.find(partition, offset, 1) {
            return Some(Ok(match Self::located(log, found) {
                Located::Batch(location) => self.durable_source(location),
                Located::Page(page) => ReadSource::Page(page),
            }));
        }
        // Staged batches are in offset order: binary search, since a hot partition can have
        // thousands staged and `read_key(include_appended)` is its hot path.
        let after = log
            .staged_batches
            .partition_point(|batch| batch.base_offset <= offset);
        let Some(staged) = after
            .checked_sub(1)
            .and_then(|index| log.staged_batches.get(index))
            .filter(|batch| offset < batch.end_offset)
        else {
            return Some(Err(log.state.synced_end()));
        };
        let group_bytes: &[u8] = if self.open.sequence == staged.group_sequence {
            &self.open.bytes
        } else {
            &self
                .in_flight
                .as_ref()
                .filter(|in_flight| in_flight.group.sequence == staged.group_sequence)
                .expect("a staged batch is in the open or the in-flight group")
                .group
                .bytes
        };
        let start = staged.group_position;
        let bytes = group_bytes
            .get(start..start + staged.len_bytes as usize)
            .expect("a staged batch lies inside its group")
            .to_vec();
        Some(Ok(ReadSource::Staged(bytes)))
    }

    /// The next retention step, if any partition's policy lets a batch go now (`now_ms`,
    /// the wall clock): the oldest sealed segment before `bound` (the first segment a kept
    /// checkpoint does not cover: a rewrite must never touch what a recovery from any
    /// checkpoint would scan) that holds a removable run.
    ///
    /// A partition's batches go oldest first, a whole run (its batches in one segment) at a
    /// time: by age once the run's newest record is older than `retention.ms`, by size
    /// while the partition would still hold `retention.bytes` without it. A run is whole
    /// or gone, so a partition keeps up to a segment's worth more than its limits say; and
    /// a segment is rewritten only once its removable runs hold at least as many bytes as
    /// its kept ones, or none of its kept runs can expire later (a forever partition's),
    /// so a run may also wait for its neighbours' to expire. Retention is a lower bound, as
    /// Kafka's is.
    pub fn plan_retention(&self, now_ms: i64, bound: u64) -> Option<RetentionPlan> {
        if self.poisoned.is_some() {
            return None;
        }
        // Segments whose index is still pending hold dense batches: nothing there or after
        // it is touched until it is sealed.
        let bound = self
            .index_pending
            .front()
            .map_or(bound, |pending| bound.min(*pending))
            .min(self.current_index);
        // A leading segment nothing lives in any more (its runs were removed by earlier
        // rewrites) goes before anything else is looked at.
        let first_is_empty = self.first_segment < bound
            && self.partitions.values().all(|log| {
                log.synced_batches
                    .sealed_runs()
                    .first()
                    .is_none_or(|run| run.segment_index != self.first_segment)
            });
        if first_is_empty {
            return Some(RetentionPlan {
                segment_index: self.first_segment,
                generation: 0,
                removed: Vec::new(),
                kept: Vec::new(),
                remove_file: true,
            });
        }
        // Each partition's removable first run, once: deciding it sums the partition's bytes.
        let removable_first: HashMap<PartitionId, u64> = self
            .partitions
            .iter()
            .filter_map(|(id, log)| {
                let run = log.synced_batches.sealed_runs().first()?;
                (run.segment_index < bound && removable(log, run, now_ms))
                    .then_some((*id, run.segment_index))
            })
            .collect();
        let mut candidates: Vec<u64> = removable_first.values().copied().collect();
        candidates.sort_unstable();
        candidates.dedup();
        let mut ready = None;
        for segment_index in candidates {
            let mut removed = Vec::new();
            let mut kept = Vec::new();
            let (mut removed_bytes, mut kept_bytes) = (0u64, 0u64);
            let mut limited_kept = false;
            let mut generation = None;
            for (id, log) in &self.partitions {
                let Some(run) = log.synced_batches.run_in(segment_index) else {
                    continue;
                };
                generation = Some(run.generation);
                if removable_first.get(id) == Some(&segment_index) {
                    removed.push(*id);
                    removed_bytes += run.size_bytes;
                } else {
                    kept.push(*id);
                    kept_bytes += run.size_bytes;
                    limited_kept |= !log.retention.is_forever();
                }
            }
            // A rewrite copies every kept byte: it waits until it frees at least as much
            // as it copies, or until nothing else in the segment can expire later, so a
            // segment whose partitions' runs expire one after another is rewritten once,
            // not once per partition.
            if removed_bytes >= kept_bytes || !limited_kept {
                ready = Some((segment_index, removed, kept, generation));
                break;
            }
        }
        let (segment_index, mut removed, mut kept, generation) = ready?;
        removed.sort_unstable();
        kept.sort_unstable();
        let generation = generation.expect("the segment holds a removable run");
        let remove_file = kept.is_empty() && segment_index == self.first_segment;
        // A segment rewritten 65535 times keeps its last generation's batches.
        if !remove_file {
            generation.checked_add(1)?;
        }
        Some(RetentionPlan {
            segment_index,
            generation,
            removed,
            kept,
            remove_file,
        })
    }

    /// Retention rewrote `plan`'s segment as generation `plan.generation + 1` (or removed
    /// its file, with `remove_file`), durably,
    /// with the kept partitions' entries at `placements` of its new index file: the removed
    /// runs leave the offset index (their partitions' log start moves past them), the kept
    /// ones point into the new file, and cached groups of the old file are dropped.
    ///
    /// # Panics
    ///
    /// If a kept partition has no placement, or a removed run is not its partition's
    /// first: the shell reports on the plan it was given.
    pub fn handle_rewritten(&mut self, plan: &RetentionPlan, placements: &[PartitionPlacement]) {
        if plan.remove_file {
            assert_eq!(
                plan.segment_index, self.first_segment,
                "only the log's first segment is removed"
            );
            self.first_segment += 1;
        }
        let generation = plan.generation.saturating_add(1);
        for id in &plan.removed {
            if let Some(log) = self.partitions.get_mut(id) {
                log.synced_batches.remove_first_run(plan.segment_index);
            }
        }
        for id in &plan.kept {
            let placement = placements
                .iter()
                .find(|placement| placement.partition_id == *id)
                .expect("a kept run has a place in the rewritten index");
            if let Some(log) = self.partitions.get_mut(id) {
                let moved = log.synced_batches.relocate_run(
                    plan.segment_index,
                    generation,
                    placement.entries_position,
                );
                assert!(moved, "a kept run is in the rewritten segment");
            }
        }
        self.read_cache.forget_segment(plan.segment_index);
    }

    /// Where a durable batch can be read: the read cache if it still holds its group.
    pub fn durable_source(&self, location: BatchLocation) -> ReadSource {
        let len_bytes = location.len_bytes as usize;
        let at = SegmentPosition {
            segment_index: location.segment_index,
            position: location.position,
        };
        match self.read_cache.get(at, len_bytes) {
            Some((bytes, start)) => ReadSource::Cached {
                bytes,
                start,
                len_bytes,
            },
            None => ReadSource::Disk(location),
        }
    }

    fn in_flight_group(&self, sequence: u64) {
        let in_flight = self
            .in_flight
            .as_ref()
            .expect("a group is in flight when the shell reports on one");
        in_flight_check(in_flight, sequence);
    }
}

/// Whether `run`, the partition's first, may go under its policy at `now_ms`.
fn removable(log: &PartitionLog, run: &SealedRun, now_ms: i64) -> bool {
    let policy = log.retention;
    let by_age = policy.ms.is_some_and(|ms| {
        let cutoff = now_ms.saturating_sub(i64::try_from(ms).unwrap_or(i64::MAX));
        run.running_max_timestamp_ms < cutoff
    });
    let by_size = policy.bytes.is_some_and(|bytes| {
        log.synced_batches
            .size_bytes()
            .checked_sub(run.size_bytes)
            .is_some_and(|without| without >= bytes)
    });
    by_age || by_size
}

fn in_flight_check(in_flight: &InFlight, sequence: u64) {
    assert_eq!(
        in_flight.group.sequence, sequence,
        "the shell reports on the group in flight"
    );
}

impl Group {
    fn new(sequence: u64, group_size_bytes_max: usize) -> Self {
        Group {
            sequence,
            bytes: Rc::new(Vec::with_capacity(
                GROUP_INITIAL_CAPACITY_BYTES.min(group_size_bytes_max),
            )),
            partitions: Vec::new(),
            record_count: 0,
        }
    }

    /// The group with its bytes in an exact allocation when it is small: they go on to the
    /// read cache, which is bounded by their length, and a few hundred bytes must not keep
    /// a 64 KiB buffer alive (measured: ~4 KiB of resident memory per cached group, a cache
    /// of small groups at 10x its bound).
    fn shrunk(mut self) -> Self {
        if self.bytes.capacity() > 2 * self.bytes.len() {
            self.bytes = Rc::new(self.bytes.as_slice().to_vec());
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::KeyCondition;
    use crate::core::record::{batch_encoded_len, decode_batch};

    const BLOCK: u64 = BLOCK_SIZE_BYTES as u64;
    const SEGMENT: u64 = 8 * BLOCK;

    fn limits() -> ShardLogLimits {
        ShardLogLimits {
            segment_size_bytes: SEGMENT,
            group_size_bytes_max: 4 * BLOCK_SIZE_BYTES,
            pending_append_count_max: 4,
            read_cache_bytes_max: 64 * 1024,
        }
    }

    fn log() -> ShardLog {
        ShardLog::new(
            limits(),
            [(PartitionId(0), RecoveredPartition::empty(PartitionId(0)))],
            0,
            SEGMENT,
            SEGMENT_DATA_START,
            0,
        )
    }

    fn record<'a>(key: &'a [u8], value: &'a [u8], condition: KeyCondition) -> RecordInput<'a> {
        RecordInput {
            key,
            value,
            headers: &[],
            condition,
            ..RecordInput::default()
        }
    }

    /// Stages one record of `value_len_bytes` bytes on partition 0.
    fn stage(log: &mut ShardLog, key: &[u8], value_len_bytes: usize) -> Result<Staged, Refusal> {
        let value = vec![7u8; value_len_bytes];
        let records = [record(key, &value, KeyCondition::Any)];
        let len_bytes = batch_encoded_len(&records).unwrap();
        log.stage(PartitionId(0), None, &records, None, len_bytes, 1)
            .expect("partition 0 exists")
    }

    fn len_of(value_len_bytes: usize) -> usize {
        let value = vec![7u8; value_len_bytes];
        batch_encoded_len(&[record(b"k", &value, KeyCondition::Any)]).unwrap()
    }

    fn write_and_sync(log: &mut ShardLog) -> (GroupWrite, Synced) {
        let GroupPoll::Write(write) = log.poll_group_write() else {
            panic!("a group to write");
        };
        log.handle_written(write.sequence);
        let synced = log.handle_synced(write.sequence);
        (write, synced)
    }

    #[test]
    fn groups_start_at_block_boundaries_and_are_padded() {
        let mut log = log();
        stage(&mut log, b"a", 100).unwrap();
        stage(&mut log, b"b", 100).unwrap();
        let (first, synced) = write_and_sync(&mut log);
        assert_eq!(first.position, SEGMENT_DATA_START);
        assert_eq!(
            first.padded_len_bytes, BLOCK,
            "two small batches pad to one block"
        );
        assert_eq!(synced.partitions, vec![PartitionId(0)]);
        stage(&mut log, b"c", 100).unwrap();
        let (second, _) = write_and_sync(&mut log);
        assert_eq!(
            second.position,
            SEGMENT_DATA_START + BLOCK,
            "the next group never rewrites the block holding acknowledged bytes"
        );
        assert_eq!(
            log.end_offsets(PartitionId(0)),
            Some((Offset(3), Offset(3)))
        );
        assert_eq!(log.stats().group_count, 2);
    }

    #[test]
    fn one_group_in_flight_and_the_next_fills_meanwhile() {
        let mut log = log();
        let first = stage(&mut log, b"a", 10).unwrap();
        let GroupPoll::Write(write) = log.poll_group_write() else {
            panic!("a group to write");
        };
        assert_eq!(write.sequence, first.group_sequence);
        let second = stage(&mut log, b"b", 10).unwrap();
        assert_eq!(
            second.group_sequence,
            first.group_sequence + 1,
            "a new group fills"
        );
        assert!(
            matches!(log.poll_group_write(), GroupPoll::Idle),
            "one group in flight at a time"
        );
        log.handle_written(write.sequence);
        assert_eq!(
            log.end_offsets(PartitionId(0)),
            Some((Offset(2), Offset(0)))
        );
        log.handle_synced(write.sequence);
        assert_eq!(
            log.end_offsets(PartitionId(0)),
            Some((Offset(2), Offset(1)))
        );
        assert!(matches!(log.poll_group_write(), GroupPoll::Write(_)));
    }

    #[test]
    fn admission_waits_for_group_room_and_pending_slots() {
        let mut log = log();
        // 4 blocks per group: a 10 KiB batch fits, a second does not join it.
        stage(&mut log, b"a", 10_000).unwrap();
        assert_eq!(log.admission(len_of(10_000)), Admission::Wait);
        assert_eq!(log.admission(len_of(10)), Admission::Admit);
        let mut log = self::log();
        for key in [b"a", b"b", b"c", b"d"] {
            stage(&mut log, key, 10).unwrap();
        }
        assert_eq!(
            log.admission(len_of(10)),
            Admission::Wait,
            "4 pending slots taken"
        );
        write_and_sync(&mut log);
        assert_eq!(
            log.admission(len_of(10)),
            Admission::Admit,
            "slots freed by the sync"
        );
    }

    #[test]
    fn a_group_that_does_not_fit_rolls_to_the_prepared_segment_only() {
        let mut log = log();
        assert_eq!(log.poll_preparation(), Some(1));
        assert_eq!(log.poll_preparation(), None, "asked once");
        // Six blocks of eight are used; a 3-block group no longer fits in segment 0.
        stage(&mut log, b"a", 12_000).unwrap();
        write_and_sync(&mut log);
        stage(&mut log, b"b", 8_000).unwrap();
        write_and_sync(&mut log);
        assert_eq!(
            log.admission(len_of(12_000)),
            Admission::Wait,
            "the next segment is not prepared yet"
        );
        assert!(log.is_preparation_urgent());
        log.handle_prepared(1, Ok(()));
        assert_eq!(log.admission(len_of(12_000)), Admission::Admit);
        stage(&mut log, b"c", 12_000).unwrap();
        let (write, _) = write_and_sync(&mut log);
        assert!(write.rolled);
        assert_eq!(
            (write.segment_index, write.position),
            (1, SEGMENT_DATA_START)
        );
        assert_eq!(log.current_segment_index(), 1);
        assert_eq!(
            log.poll_preparation(),
            Some(2),
            "the one after is asked for next"
        );
    }

    #[test]
    fn segment_sizes_double_from_the_first_up_to_the_configured_size() {
        const MIB: u64 = 1024 * 1024;
        let mut sizes = vec![first_segment_size_bytes(256 * MIB)];
        while sizes.len() < 8 {
            let last = *sizes.last().unwrap();
            sizes.push(next_segment_size_bytes(last, 256 * MIB));
        }
        assert_eq!(
            sizes,
            [8, 16, 32, 64, 128, 256, 256, 256].map(|mib| mib * MIB)
        );
        // Configured below the first size: every segment has the configured size.
        assert_eq!(first_segment_size_bytes(SEGMENT), SEGMENT);
        assert_eq!(next_segment_size_bytes(SEGMENT, SEGMENT), SEGMENT);
        // A log that outgrew a lowered configuration goes back to it.
        assert_eq!(next_segment_size_bytes(256 * MIB, 64 * MIB), 64 * MIB);
    }

    #[test]
    fn a_roll_moves_to_the_next_segment_size() {
        const MIB: u64 = 1024 * 1024;
        let mut log = ShardLog::new(
            ShardLogLimits {
                segment_size_bytes: 64 * MIB,
                ..limits()
            },
            [(PartitionId(0), RecoveredPartition::empty(PartitionId(0)))],
            0,
            8 * MIB,
            8 * MIB - BLOCK,
            0,
        );
        assert_eq!(log.next_segment_size_bytes(), 16 * MIB);
        assert_eq!(log.poll_preparation(), Some(1));
        log.handle_prepared(1, Ok(()));
        stage(&mut log, b"a", 8_000).unwrap();
        let (write, _) = write_and_sync(&mut log);
        assert!(
            write.rolled,
            "two blocks do not fit in the last block of segment 0"
        );
        assert_eq!(log.next_segment_size_bytes(), 32 * MIB);
    }

    #[test]
    fn the_synced_end_position_moves_only_when_a_group_is_synced() {
        let at = |segment_index, position| SegmentPosition {
            segment_index,
            position,
        };
        let mut log = log();
        log.poll_preparation();
        log.handle_prepared(1, Ok(()));
        assert_eq!(log.synced_end_position(), at(0, SEGMENT_DATA_START));
        stage(&mut log, b"a", 16_000).unwrap();
        let GroupPoll::Write(write) = log.poll_group_write() else {
            panic!("a group to write");
        };
        log.handle_written(write.sequence);
        assert_eq!(
            log.synced_end_position(),
            at(0, SEGMENT_DATA_START),
            "a written group is not synced: a backup must not copy it"
        );
        log.handle_synced(write.sequence);
        let synced_end = SEGMENT_DATA_START + write.padded_len_bytes;
        assert_eq!(log.synced_end_position(), at(0, synced_end));
        // A group that rolls: while it is in flight the synced log ends where the new
        // segment's data begins (nothing of it is synced), then after the group.
        stage(&mut log, b"b", 16_000).unwrap();
        let GroupPoll::Write(write) = log.poll_group_write() else {
            panic!("a group to write");
        };
        assert!(write.rolled);
        assert_eq!(log.synced_end_position(), at(1, SEGMENT_DATA_START));
        log.handle_written(write.sequence);
        log.handle_synced(write.sequence);
        assert_eq!(
            log.synced_end_position(),
            at(1, SEGMENT_DATA_START + write.padded_len_bytes)
        );
    }

    #[test]
    fn a_failed_preparation_fails_admission_until_retried() {
        let mut log = log();
        assert_eq!(log.poll_preparation(), Some(1));
        let full = StorageError {
            operation: "prepare segment",
            path: "s".into(),
            errno: Some(28),
            message: "full".into(),
        };
        log.handle_prepared(1, Err(full.clone()));
        stage(&mut log, b"a", 12_000).unwrap();
        write_and_sync(&mut log);
        stage(&mut log, b"b", 8_000).unwrap();
        write_and_sync(&mut log);
        assert_eq!(
            log.admission(len_of(12_000)),
            Admission::PreparationFailed(full)
        );
        assert_eq!(
            log.admission(len_of(100)),
            Admission::Admit,
            "what fits still goes"
        );
        log.retry_preparation();
        assert_eq!(log.poll_preparation(), Some(1));
    }

    #[test]
    fn reads_come_from_the_open_group_the_group_in_flight_the_cache_then_disk() {
        let mut log = log();
        stage(&mut log, b"a", 10).unwrap();
        let Some(Ok(ReadSource::Staged(bytes))) = log.read_source(PartitionId(0), Offset(0)) else {
            panic!("a staged batch is read from its group");
        };
        assert_eq!(decode_batch(&bytes).unwrap().base_offset(), Offset(0));
        write_and_sync(&mut log);
        assert!(matches!(
            log.read_source(PartitionId(0), Offset(0)),
            Some(Ok(ReadSource::Cached { .. }))
        ));
        assert!(matches!(
            log.read_source(PartitionId(0), Offset(1)),
            Some(Err(Offset(1)))
        ));
        // A cache too small for the group: the batch is read from disk.
        let mut small = ShardLog::new(
            ShardLogLimits {
                read_cache_bytes_max: 0,
                ..limits()
            },
            [(PartitionId(0), RecoveredPartition::empty(PartitionId(0)))],
            0,
            SEGMENT,
            SEGMENT_DATA_START,
            0,
        );
        stage(&mut small, b"a", 10).unwrap();
        write_and_sync(&mut small);
        let Some(Ok(ReadSource::Disk(location))) = small.read_source(PartitionId(0), Offset(0))
        else {
            panic!("not cached");
        };
        assert_eq!(
            (location.segment_index, location.position),
            (0, SEGMENT_DATA_START)
        );
    }

    #[test]
    fn a_failure_poisons_and_fails_every_staged_group() {
        let mut log = log();
        stage(&mut log, b"a", 10).unwrap();
        let GroupPoll::Write(write) = log.poll_group_write() else {
            panic!("a group to write");
        };
        stage(&mut log, b"b", 10).unwrap();
        let poisoned = log.handle_failure(StorageError {
            operation: "fdatasync",
            path: "s".into(),
            errno: Some(5),
            message: "EIO".into(),
        });
        assert_eq!(poisoned.in_flight_sequence, Some(write.sequence));
        assert_eq!(poisoned.open_sequence, write.sequence + 1);
        assert!(log.poisoned().is_some());
        assert!(
            matches!(log.poll_group_write(), GroupPoll::Idle),
            "nothing more is written"
        );
        assert_eq!(log.poll_preparation(), None);
    }

    #[test]
    fn batches_chain_their_checksums_across_groups() {
        let mut log = log();
        stage(&mut log, b"a", 10).unwrap();
        let (first, _) = write_and_sync(&mut log);
        stage(&mut log, b"b", 10).unwrap();
        let (second, _) = write_and_sync(&mut log);
        let first = decode_batch(&first.bytes).unwrap();
        let second = decode_batch(&second.bytes).unwrap();
        assert_eq!(
            first.prev_batch_crc(),
            0,
            "the first batch of a log chains to 0"
        );
        assert_eq!(second.prev_batch_crc(), first.crc());
    }

    /// Rolls `log` (segments of 8 blocks) into the next segment with 3-block groups, each
    /// of one 10 KB batch.
    fn fill_and_roll(log: &mut ShardLog) {
        let start = log.current_segment_index();
        while log.current_segment_index() == start {
            if log.poll_preparation().is_some() {
                log.handle_prepared(log.current_segment_index() + 1, Ok(()));
            }
            stage(log, b"a", 10_000).unwrap();
            write_and_sync(log);
        }
    }

    #[test]
    fn a_retention_plan_takes_the_oldest_segment_with_an_expired_run_and_keeps_its_neighbours() {
        let mut log = log();
        log.add_partition(PartitionId(1));
        // Partition 0's batches are the larger, so it holds more of each segment.
        let stage_in = |log: &mut ShardLog, partition: u32| {
            let value = vec![7u8; if partition == 0 { 12_000 } else { 8_000 }];
            let records = [record(b"k", &value, KeyCondition::Any)];
            let len_bytes = batch_encoded_len(&records).unwrap();
            log.stage(PartitionId(partition), None, &records, None, len_bytes, 1)
                .unwrap()
                .unwrap();
        };
        // Segments 0 and 1 hold both partitions' batches; the log ends in segment 2.
        for _ in 0..2 {
            let start = log.current_segment_index();
            while log.current_segment_index() == start {
                for partition in [0, 1] {
                    if log.poll_preparation().is_some() {
                        log.handle_prepared(log.current_segment_index() + 1, Ok(()));
                    }
                    stage_in(&mut log, partition);
                    write_and_sync(&mut log);
                }
            }
        }
        for segment in 0..2 {
            let write = log.poll_index_write().unwrap();
            assert_eq!(write.segment_index, segment);
            log.handle_index_written(segment);
        }
        let now_ms = i64::MAX / 2;
        assert_eq!(log.plan_retention(now_ms, 2), None, "both keep forever");
        log.set_retention(
            PartitionId(1),
            RetentionPolicy {
                ms: Some(1),
                bytes: None,
            },
        );
        assert_eq!(
            log.plan_retention(now_ms, 0),
            None,
            "no checkpoint covers a segment"
        );
        assert_eq!(log.plan_retention(0, 2), None, "nothing is old enough yet");
        let plan = log.plan_retention(now_ms, 2).unwrap();
        assert_eq!(
            plan,
            RetentionPlan {
                segment_index: 0,
                generation: 0,
                removed: vec![PartitionId(1)],
                kept: vec![PartitionId(0)],
                remove_file: false,
            }
        );
        let start_before = log.log_start(PartitionId(0));
        log.handle_rewritten(
            &plan,
            &[PartitionPlacement {
                partition_id: PartitionId(0),
                entries_position: 104,
                entry_count: 2,
            }],
        );
        assert_eq!(
            log.log_start(PartitionId(0)),
            start_before,
            "the kept run stays"
        );
        let second_run_start = log
            .partitions
            .get(&PartitionId(1))
            .unwrap()
            .synced_batches
            .sealed_runs()[0]
            .base_offset;
        assert_eq!(log.log_start(PartitionId(1)), Some(second_run_start));
        let Some(Ok(ReadSource::Page(page))) = log.read_source(PartitionId(0), Offset(0)) else {
            panic!("the kept run is read through the new index");
        };
        assert_eq!(page.position, 104);
        // Segment 0 is now generation 1; the next step is segment 1.
        let next = log.plan_retention(now_ms, 2).unwrap();
        assert_eq!((next.segment_index, next.generation), (1, 0));

        // A neighbour that may expire later, holding more bytes there than would go:
        // the rewrite waits for it rather than copy it now and again later.
        log.set_retention(
            PartitionId(0),
            RetentionPolicy {
                ms: None,
                bytes: Some(u64::MAX),
            },
        );
        let kept_run_bytes = |log: &ShardLog, id: u32| {
            log.partitions
                .get(&PartitionId(id))
                .unwrap()
                .synced_batches
                .sealed_runs()[0]
                .size_bytes
        };
        assert!(kept_run_bytes(&log, 0) > kept_run_bytes(&log, 1));
        assert_eq!(log.plan_retention(now_ms, 2), None);
        log.set_retention(
            PartitionId(0),
            RetentionPolicy {
                ms: Some(1),
                bytes: None,
            },
        );
        // Now segment 0 keeps nothing: being the log's first, its file goes.
        let emptied = log.plan_retention(now_ms, 2).unwrap();
        assert_eq!(
            (
                emptied.segment_index,
                emptied.removed,
                emptied.kept,
                emptied.remove_file
            ),
            (0, vec![PartitionId(0)], vec![], true)
        );
    }

    #[test]
    fn a_sealed_segment_is_indexed_then_read_through_its_pages() {
        let mut log = log();
        fill_and_roll(&mut log);
        let Some(write) = log.poll_index_write() else {
            panic!("segment 0 is sealed once a group of segment 1 is synced");
        };
        assert_eq!(write.segment_index, 0);
        assert_eq!(log.poll_index_write(), None, "one index write at a time");
        let entries = &write.partitions[0].entries;
        assert_eq!(entries.len(), 2, "two 3-block groups fit in segment 0");
        // Until the file is durable, reads are answered from memory.
        assert!(matches!(
            log.read_source(PartitionId(0), Offset(0)),
            Some(Ok(ReadSource::Cached { .. } | ReadSource::Disk(_)))
        ));
        assert_eq!(log.offset_index_memory().dense_batch_count, 3);
        log.handle_index_written(0);
        let memory = log.offset_index_memory();
        assert_eq!(
            (memory.sealed_batch_count, memory.dense_batch_count),
            (2, 1)
        );
        let Some(Ok(ReadSource::Page(page))) = log.read_source(PartitionId(0), Offset(1)) else {
            panic!("a sealed batch is read through its index page");
        };
        assert_eq!(
            (
                page.segment_index,
                page.entry_count,
                page.base_offset,
                page.end_offset
            ),
            (0, 2, Offset(0), Offset(2))
        );
        assert_eq!(
            batch_in_page(entries, 0, Offset(1)),
            Some(entries[1].location(0))
        );
        assert!(matches!(
            log.fetch_locations(PartitionId(0), Offset(0), 1 << 20),
            Some(Ok((FetchPlan::Page(_), Offset(3))))
        ));
        assert!(
            matches!(
                log.read_source(PartitionId(0), Offset(2)),
                Some(Ok(ReadSource::Cached { .. }))
            ),
            "the current segment's batches stay dense"
        );
    }

    #[test]
    fn a_failed_index_write_waits_for_the_next_seal_or_a_retry() {
        let mut log = log();
        fill_and_roll(&mut log);
        assert_eq!(
            log.poll_index_write().map(|write| write.segment_index),
            Some(0)
        );
        log.handle_index_failed(0);
        assert_eq!(log.poll_index_write(), None, "not retried at once");
        log.retry_index_writes();
        assert_eq!(
            log.poll_index_write().map(|write| write.segment_index),
            Some(0)
        );
        log.handle_index_failed(0);
        fill_and_roll(&mut log);
        assert_eq!(
            log.poll_index_write().map(|write| write.segment_index),
            Some(0),
            "the next seal retries, in order"
        );
        log.handle_index_written(0);
        assert_eq!(
            log.poll_index_write().map(|write| write.segment_index),
            Some(1)
        );
        assert_eq!(log.index_pending_count(), 1);
        // Appends never waited on any of it.
        assert_eq!(log.admission(len_of(100)), Admission::Admit);
    }

    #[test]
    #[should_panic(expected = "a batch is staged only when admitted")]
    fn staging_without_admission_is_a_bug() {
        let mut log = log();
        for key in [b"a", b"b", b"c", b"d", b"e"] {
            let _ = stage(&mut log, key, 10);
        }
    }
}
