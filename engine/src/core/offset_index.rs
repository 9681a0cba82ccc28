//! `OffsetIndex`: where each durable batch of one partition lives in its shard's core log.
//!
//! Two parts, in offset order. The *dense* part holds one `BatchLocation` per batch of the
//! segments whose index file is not durable yet (the current segment, and a sealed one
//! whose index write is pending or failed): bounded by the segment size, not by history.
//! The *sealed* part holds, per sealed segment with a durable index file
//! (`core::segment_index`), one `SealedRun`: the partition's offset range in it, where its
//! entries are in the file, and one sample per `INDEX_PAGE_ENTRY_COUNT` entries. A lookup
//! in the dense part answers a location; one in the sealed part answers an `IndexPage`,
//! which the shell reads (one bounded read) and verifies with `decode_page`, then looks up
//! with `page_find` / `page_find_timestamp`.
//!
//! Beside each batch the index keeps the largest record timestamp of the partition up to
//! and including that batch: a running maximum, so it never decreases even when producers'
//! timestamps do. The first batch whose running maximum reaches a timestamp is the first
//! that holds a record at or after it (every earlier record is older), so "earliest offset
//! with timestamp ≥ t" (Kafka's ListOffsets) is binary searches and one batch read. Runs
//! keep the partition-wide running maximum at their end; index files keep a running maximum
//! within their segment (so a file can be rebuilt from its segment alone). The first run
//! whose maximum reaches `t` follows runs that are all below `t`, so within it the
//! segment's own running maximum reaches `t` at the same batch.
//!
//! Memory: a dense batch costs 56 bytes; a sealed one 16 bytes per page of 128 (0.125
//! bytes per batch) plus ~64 bytes per (partition, segment). See BENCHMARKS.md.

use crate::core::Offset;
use crate::core::PartitionId;
use crate::core::checkpoint::CheckpointError;
use crate::core::record::BatchView;
use crate::core::segment_index::{INDEX_PAGE_ENTRY_COUNT, IndexEntry, IndexPage, entry_of};

/// Where one batch is stored: which segment, at which byte position, how long.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct BatchLocation {
    /// Offset of the batch's first record.
    pub base_offset: Offset,
    /// Offset just after the batch's last record.
    pub end_offset: Offset,
    /// Index of the segment file holding the batch.
    pub segment_index: u64,
    /// Byte position of the batch header within the segment.
    pub position: u64,
    /// Encoded length of the batch, header included.
    pub len_bytes: u32,
}

const _: () = assert!(std::mem::size_of::<BatchLocation>() == 40);

impl BatchLocation {
    /// Where `batch`, found at `position` of segment `segment_index`, lies: what recovery
    /// and the simulator record for every batch they scan.
    #[must_use]
    pub fn of(segment_index: u64, position: u64, batch: &BatchView<'_>) -> Self {
        BatchLocation {
            base_offset: batch.base_offset(),
            end_offset: batch.end_offset(),
            segment_index,
            position,
            len_bytes: u32::try_from(batch.len_bytes()).expect("batches are at most 2 MiB"),
        }
    }
}

/// One page's sample: what a lookup needs to choose the page without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Sample {
    /// Base offset of the page's first batch.
    base_offset: Offset,
    /// The segment's running maximum timestamp at the page's last batch.
    max_timestamp_ms: i64,
}

/// One partition's batches in one sealed segment whose index file is durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedRun {
    /// The segment.
    pub segment_index: u64,
    /// First offset of the partition in it.
    pub base_offset: Offset,
    /// End offset (exclusive) of the partition in it.
    pub end_offset: Offset,
    /// The partition-wide running maximum timestamp at its last batch.
    pub running_max_timestamp_ms: i64,
    /// Byte position of its first entry in the index file.
    pub entries_position: u64,
    /// Its entries (batches).
    pub entry_count: u32,
    /// The segment's generation the run is in (`SegmentHeader::generation`): retention
    /// rewrites a segment under a new one, moving the run's entries but not its batches.
    pub generation: u16,
    /// Bytes of its batches, for `retention.bytes`.
    pub size_bytes: u64,
    /// One per page when there is more than one page; empty otherwise.
    samples: Box<[Sample]>,
}

impl SealedRun {
    /// A run as a checkpoint stored it (`core::checkpoint`, which checks it first):
    /// `samples` are each page's (base offset, the segment's running maximum timestamp at
    /// the page's last batch), none when the entries fit in one page.
    #[must_use]
    #[expect(
        clippy::too_many_arguments,
        reason = "a run's fields, as a checkpoint stores them"
    )]
    pub fn new(
        segment_index: u64,
        base_offset: Offset,
        end_offset: Offset,
        running_max_timestamp_ms: i64,
        entries_position: u64,
        entry_count: u32,
        generation: u16,
        size_bytes: u64,
        samples: impl IntoIterator<Item = (Offset, i64)>,
    ) -> Self {
        SealedRun {
            segment_index,
            base_offset,
            end_offset,
            running_max_timestamp_ms,
            entries_position,
            entry_count,
            generation,
            size_bytes,
            samples: samples
                .into_iter()
                .map(|(base_offset, max_timestamp_ms)| Sample {
                    base_offset,
                    max_timestamp_ms,
                })
                .collect(),
        }
    }

    /// Each page's sample, as `new` takes them.
    pub fn samples(&self) -> impl ExactSizeIterator<Item = (Offset, i64)> + '_ {
        self.samples
            .iter()
            .map(|sample| (sample.base_offset, sample.max_timestamp_ms))
    }

    fn page_count(&self) -> usize {
        self.samples.len().max(1)
    }

    /// Pages `page..page + page_count` (clamped to the run) of `partition_id`'s entries.
    fn page(&self, partition_id: PartitionId, page: usize, page_count: usize) -> IndexPage {
        let entry_start = page * INDEX_PAGE_ENTRY_COUNT;
        let page_end = (page + page_count.max(1)).min(self.page_count());
        let entry_end = (page_end * INDEX_PAGE_ENTRY_COUNT).min(self.entry_count as usize);
        let base_offset = self
            .samples
            .get(page)
            .map_or(self.base_offset, |sample| sample.base_offset);
        let end_offset = self
            .samples
            .get(page_end)
            .map_or(self.end_offset, |sample| sample.base_offset);
        IndexPage {
            partition_id,
            segment_index: self.segment_index,
            position: self.entries_position
                + (entry_start * crate::core::segment_index::INDEX_ENTRY_SIZE_BYTES) as u64,
            entry_count: u32::try_from(entry_end - entry_start)
                .expect("a run's entries fit in u32"),
            base_offset,
            end_offset,
        }
    }

    /// Heap bytes held.
    fn memory_bytes(&self) -> usize {
        self.samples.len() * std::mem::size_of::<Sample>()
    }
}

/// What a lookup found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    /// The batch at this index of `dense_batches()`.
    Dense(usize),
    /// A page of a sealed segment's index file that holds the batch: read it, verify it
    /// with `decode_page`, then `page_find` or `page_find_timestamp`.
    Page(IndexPage),
}

/// Heap bytes of offset indexes, sealed and dense apart, and the batches each covers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OffsetIndexMemory {
    /// Batches in sealed segments with a durable index file.
    pub sealed_batch_count: usize,
    /// Bytes of their summaries and samples.
    pub sealed_bytes: usize,
    /// Batches held one by one: the current segment's, and sealed ones not yet indexed.
    pub dense_batch_count: usize,
    /// Bytes of their locations.
    pub dense_bytes: usize,
}

impl std::ops::Add for OffsetIndexMemory {
    type Output = OffsetIndexMemory;

    fn add(self, other: OffsetIndexMemory) -> OffsetIndexMemory {
        OffsetIndexMemory {
            sealed_batch_count: self.sealed_batch_count + other.sealed_batch_count,
            sealed_bytes: self.sealed_bytes + other.sealed_bytes,
            dense_batch_count: self.dense_batch_count + other.dense_batch_count,
            dense_bytes: self.dense_bytes + other.dense_bytes,
        }
    }
}

/// Offset -> batch location for one partition's durable batches.
#[derive(Default, Debug)]
pub struct OffsetIndex {
    sealed: Vec<SealedRun>,
    dense: Vec<BatchLocation>,
    /// For each dense batch, its own largest record timestamp (ms).
    dense_batch_max_ms: Vec<i64>,
    /// For each dense batch, the largest record timestamp of it and all before it.
    dense_running_max_ms: Vec<i64>,
    /// The end of the last batch retention removed: the end offset while no batch is left.
    removed_end: Offset,
}

impl OffsetIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the next durable batch, whose largest record timestamp is
    /// `max_timestamp_ms`; it must start where the previous one ended, in the same segment
    /// as the previous dense batch or a later one.
    pub fn push(&mut self, location: BatchLocation, max_timestamp_ms: i64) {
        assert!(
            location.base_offset < location.end_offset,
            "a batch holds at least one record: {location:?}"
        );
        assert_eq!(
            self.end_offset(),
            location.base_offset,
            "batches of a partition are dense: {location:?}"
        );
        if let Some(last) = self.dense.last() {
            assert!(
                last.segment_index <= location.segment_index,
                "segments are filled in order: {last:?} then {location:?}"
            );
        }
        if let Some(run) = self.sealed.last() {
            assert!(
                run.segment_index < location.segment_index,
                "a sealed segment takes no more batches: {location:?}"
            );
        }
        let running_max_ms = self
            .running_max_timestamp_ms()
            .map_or(max_timestamp_ms, |previous| max_timestamp_ms.max(previous));
        self.dense.push(location);
        self.dense_batch_max_ms.push(max_timestamp_ms);
        self.dense_running_max_ms.push(running_max_ms);
    }

    /// The running maximum timestamp at the last durable batch.
    fn running_max_timestamp_ms(&self) -> Option<i64> {
        self.dense_running_max_ms
            .last()
            .copied()
            .or_else(|| self.sealed.last().map(|run| run.running_max_timestamp_ms))
    }

    /// The dense entries of segment `segment_index`, as its index file holds them; empty
    /// when the partition has no dense batch there.
    pub fn segment_entries(&self, segment_index: u64) -> Vec<IndexEntry> {
        let start = self
            .dense
            .partition_point(|location| location.segment_index < segment_index);
        let end = self
            .dense
            .partition_point(|location| location.segment_index <= segment_index);
        let mut running_max_ms = i64::MIN;
        self.dense
            .iter()
            .zip(&self.dense_batch_max_ms)
            .take(end)
            .skip(start)
            .map(|(location, batch_max_ms)| {
                running_max_ms = running_max_ms.max(*batch_max_ms);
                entry_of(location, running_max_ms)
            })
            .collect()
    }

    /// Dense batches in segment `segment_index`, which must lead the dense part.
    ///
    /// # Panics
    ///
    /// If an earlier segment is still dense: segments are sealed in order.
    fn dense_count_in(&self, segment_index: u64) -> usize {
        if let Some(first) = self.dense.first() {
            assert!(
                first.segment_index >= segment_index,
                "segment {} is sealed before segment {segment_index}",
                first.segment_index
            );
        }
        self.dense
            .partition_point(|location| location.segment_index <= segment_index)
    }

    /// Segment `segment_index`'s index file is durable, with this partition's entries at
    /// `entries_position`: its dense batches (which lead the dense part) become one
    /// `SealedRun`. Nothing happens if the partition has no batch in it.
    pub fn seal(&mut self, segment_index: u64, entries_position: u64) {
        let count = self.dense_count_in(segment_index);
        if count == 0 {
            return;
        }
        let locations = self.dense.get(..count).expect("count <= dense.len()");
        let batch_max_ms = self
            .dense_batch_max_ms
            .get(..count)
            .expect("one timestamp per dense batch");
        let samples: Box<[Sample]> = if count > INDEX_PAGE_ENTRY_COUNT {
            // The segment's own running maximum at each page's last batch, as the index
            // file's entries hold it.
            let mut running_max_ms = i64::MIN;
            locations
                .chunks(INDEX_PAGE_ENTRY_COUNT)
                .zip(batch_max_ms.chunks(INDEX_PAGE_ENTRY_COUNT))
                .map(|(page, page_max_ms)| {
                    running_max_ms = page_max_ms.iter().copied().fold(running_max_ms, i64::max);
                    Sample {
                        base_offset: page.first().map_or(Offset(0), |batch| batch.base_offset),
                        max_timestamp_ms: running_max_ms,
                    }
                })
                .collect()
        } else {
            Box::new([])
        };
        let first = locations.first().expect("count > 0");
        let last = locations.last().expect("count > 0");
        let run = SealedRun {
            segment_index,
            base_offset: first.base_offset,
            end_offset: last.end_offset,
            running_max_timestamp_ms: *self.dense_running_max_ms.get(count - 1).expect("count > 0"),
            entries_position,
            entry_count: u32::try_from(count).expect("a segment holds fewer than 2^32 batches"),
            // The log seals only segments it wrote; retention rewrites them later.
            generation: 0,
            size_bytes: locations
                .iter()
                .map(|location| u64::from(location.len_bytes))
                .sum(),
            samples,
        };
        self.sealed.push(run);
        self.dense.drain(..count);
        self.dense_batch_max_ms.drain(..count);
        self.dense_running_max_ms.drain(..count);
        // A partition that stops writing must not keep the capacity of its busiest segment.
        if self.dense.capacity() > 2 * self.dense.len().max(16) {
            self.dense.shrink_to_fit();
            self.dense_batch_max_ms.shrink_to_fit();
            self.dense_running_max_ms.shrink_to_fit();
        }
    }

    /// Adds a sealed segment's run straight from its index file's entries for this
    /// partition (at `entries_position`), without its batches ever being dense: what a
    /// recovery that starts after this segment (from a checkpoint) does with a verified
    /// index file (`SegmentIndex::decode`). Sealed segments are added in order, before any
    /// dense batch.
    ///
    /// # Panics
    ///
    /// If `entries` is empty, does not continue the partition's offsets, or dense batches
    /// exist already.
    pub fn push_sealed(
        &mut self,
        segment_index: u64,
        generation: u16,
        entries_position: u64,
        entries: &[IndexEntry],
    ) {
        assert!(
            self.dense.is_empty(),
            "sealed runs come before dense batches"
        );
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            panic!("a sealed run holds at least one batch");
        };
        assert_eq!(
            first.base_offset,
            self.end_offset(),
            "a sealed run continues its partition's offsets"
        );
        let samples: Box<[Sample]> = if entries.len() > INDEX_PAGE_ENTRY_COUNT {
            entries
                .chunks(INDEX_PAGE_ENTRY_COUNT)
                .map(|page| Sample {
                    base_offset: page.first().map_or(Offset(0), |entry| entry.base_offset),
                    max_timestamp_ms: page.last().map_or(i64::MIN, |entry| entry.max_timestamp_ms),
                })
                .collect()
        } else {
            Box::new([])
        };
        let running_max_timestamp_ms = self
            .running_max_timestamp_ms()
            .map_or(last.max_timestamp_ms, |previous| {
                previous.max(last.max_timestamp_ms)
            });
        self.sealed.push(SealedRun {
            segment_index,
            base_offset: first.base_offset,
            end_offset: last.end_offset(),
            running_max_timestamp_ms,
            entries_position,
            entry_count: u32::try_from(entries.len())
                .expect("a segment holds fewer than 2^32 batches"),
            generation,
            size_bytes: entries.iter().map(|entry| u64::from(entry.len_bytes)).sum(),
            samples,
        });
    }

    /// The batch holding `offset`, if it is durable. In a sealed segment: the page holding
    /// it and up to `page_count - 1` pages after it in the same segment.
    pub fn find(
        &self,
        partition_id: PartitionId,
        offset: Offset,
        page_count: usize,
    ) -> Option<Found> {
        if offset >= self.end_offset() {
            return None;
        }
        if self
            .dense
            .first()
            .is_some_and(|first| first.base_offset <= offset)
        {
            let after = self
                .dense
                .partition_point(|batch| batch.base_offset <= offset);
            return after.checked_sub(1).map(Found::Dense);
        }
        let run_index = self
            .sealed
            .partition_point(|run| run.base_offset <= offset)
            .checked_sub(1)?;
        let run = self.sealed.get(run_index)?;
        let page = run
            .samples
            .partition_point(|sample| sample.base_offset <= offset)
            .saturating_sub(1);
        Some(Found::Page(run.page(partition_id, page, page_count)))
    }

    /// The first batch holding a record whose timestamp is at least `timestamp_ms`, if any
    /// durable one does: the batch where the running maximum first reaches it.
    pub fn find_timestamp(&self, partition_id: PartitionId, timestamp_ms: i64) -> Option<Found> {
        let run_index = self
            .sealed
            .partition_point(|run| run.running_max_timestamp_ms < timestamp_ms);
        if let Some(run) = self.sealed.get(run_index) {
            // Every earlier run's maximum is below `timestamp_ms`, so the segment's own running
            // maximum reaches it in this run, and a page's sample says where.
            let page = run
                .samples
                .partition_point(|sample| sample.max_timestamp_ms < timestamp_ms)
                .min(run.page_count() - 1);
            return Some(Found::Page(run.page(partition_id, page, 1)));
        }
        let index = self
            .dense_running_max_ms
            .partition_point(|max_ms| *max_ms < timestamp_ms);
        (index < self.dense.len()).then_some(Found::Dense(index))
    }

    /// The dense batches, in offset order: those of segments without a durable index file.
    pub fn dense_batches(&self) -> &[BatchLocation] {
        &self.dense
    }

    /// The sealed runs, in offset order.
    pub fn sealed_runs(&self) -> &[SealedRun] {
        &self.sealed
    }

    /// The partition's run in sealed segment `segment_index`, if it has one (runs are in
    /// segment order: a binary search).
    pub fn run_in(&self, segment_index: u64) -> Option<&SealedRun> {
        self.sealed
            .binary_search_by_key(&segment_index, |run| run.segment_index)
            .ok()
            .and_then(|at| self.sealed.get(at))
    }

    /// The first offset still held: the first durable batch's, else the end (retention
    /// may have removed every batch; offsets below the end stay used).
    pub fn log_start(&self) -> Offset {
        self.sealed
            .first()
            .map(|run| run.base_offset)
            .or_else(|| self.dense.first().map(|batch| batch.base_offset))
            .unwrap_or_else(|| self.end_offset())
    }

    /// Offset of the first durable batch (0 when none).
    pub fn start_offset(&self) -> Offset {
        self.sealed
            .first()
            .map(|run| run.base_offset)
            .or_else(|| self.dense.first().map(|batch| batch.base_offset))
            .unwrap_or(Offset(0))
    }

    /// The dense batches with each one's own largest record timestamp, in offset order:
    /// what a checkpoint stores, and `push` takes back.
    pub fn dense_entries(&self) -> impl Iterator<Item = (BatchLocation, i64)> + '_ {
        self.dense
            .iter()
            .copied()
            .zip(self.dense_batch_max_ms.iter().copied())
    }

    /// The index a checkpoint stored: its sealed runs (checked by `Checkpoint::decode`),
    /// then its dense batches with their own largest timestamps. What `push` would assert
    /// of a dense batch is refused here instead, since the bytes come from disk.
    pub fn from_checkpoint(
        runs: &[SealedRun],
        dense: &[(BatchLocation, i64)],
        end_offset: Offset,
    ) -> Result<Self, CheckpointError> {
        let mut index = OffsetIndex::new();
        index.sealed = runs.to_vec();
        if runs.is_empty() && dense.is_empty() {
            // Retention removed every batch: offsets go on from the end.
            index.removed_end = end_offset;
        }
        for (location, batch_max_ms) in dense {
            let follows = location.base_offset < location.end_offset
                && location.base_offset == index.end_offset()
                && index
                    .dense
                    .last()
                    .is_none_or(|last| last.segment_index <= location.segment_index)
                && index
                    .sealed
                    .last()
                    .is_none_or(|run| run.segment_index < location.segment_index);
            if !follows {
                return Err(CheckpointError::Invalid(format!(
                    "batch {location:?} does not follow the ones before it"
                )));
            }
            index.push(*location, *batch_max_ms);
        }
        Ok(index)
    }

    /// Offset just after the last durable batch (after the last removed one when
    /// retention left none).
    pub fn end_offset(&self) -> Offset {
        self.dense
            .last()
            .map(|batch| batch.end_offset)
            .or_else(|| self.sealed.last().map(|run| run.end_offset))
            .unwrap_or(self.removed_end)
    }

    /// Bytes of the durable batches, for `retention.bytes`.
    pub fn size_bytes(&self) -> u64 {
        self.sealed.iter().map(|run| run.size_bytes).sum::<u64>()
            + self
                .dense
                .iter()
                .map(|location| u64::from(location.len_bytes))
                .sum::<u64>()
    }

    /// Retention removed segment `segment_index`'s batches of this partition, which must be
    /// its first run: the partition's log now starts after them.
    ///
    /// # Panics
    ///
    /// If the first run is not in that segment: retention removes a partition's oldest
    /// batches first, and only sealed ones.
    pub fn remove_first_run(&mut self, segment_index: u64) {
        let first = self.sealed.first().map(|run| run.segment_index);
        assert_eq!(
            first,
            Some(segment_index),
            "retention removes a partition's first run"
        );
        let run = self.sealed.remove(0);
        self.removed_end = run.end_offset;
    }

    /// Retention rewrote segment `segment_index` as `generation`, keeping this partition's
    /// run there whole: its entries now start at `entries_position` of the new index file.
    /// Returns whether the partition had a run there.
    pub fn relocate_run(
        &mut self,
        segment_index: u64,
        generation: u16,
        entries_position: u64,
    ) -> bool {
        let Ok(at) = self
            .sealed
            .binary_search_by_key(&segment_index, |run| run.segment_index)
        else {
            return false;
        };
        let run = self.sealed.get_mut(at).expect("binary_search found it");
        run.generation = generation;
        run.entries_position = entries_position;
        true
    }

    /// Durable batches, sealed and dense.
    pub fn batch_count(&self) -> usize {
        self.sealed
            .iter()
            .map(|run| run.entry_count as usize)
            .sum::<usize>()
            + self.dense.len()
    }

    /// Segments that still have dense batches, in order.
    pub fn dense_segments(&self) -> Vec<u64> {
        let mut segments: Vec<u64> = self.dense.iter().map(|batch| batch.segment_index).collect();
        segments.dedup();
        segments
    }

    /// Heap bytes held, for the memory figures.
    pub fn memory_bytes(&self) -> usize {
        let figures = self.memory();
        figures.sealed_bytes + figures.dense_bytes
    }

    /// What the sealed and the dense part hold, for the memory figures.
    pub fn memory(&self) -> OffsetIndexMemory {
        OffsetIndexMemory {
            sealed_batch_count: self.batch_count() - self.dense.len(),
            sealed_bytes: self.sealed.capacity() * std::mem::size_of::<SealedRun>()
                + self
                    .sealed
                    .iter()
                    .map(SealedRun::memory_bytes)
                    .sum::<usize>(),
            dense_batch_count: self.dense.len(),
            dense_bytes: self.dense.capacity() * std::mem::size_of::<BatchLocation>()
                + self.dense_batch_max_ms.capacity() * std::mem::size_of::<i64>()
                + self.dense_running_max_ms.capacity() * std::mem::size_of::<i64>(),
        }
    }
}

/// The entry of a verified page holding `offset`.
pub fn page_find(entries: &[IndexEntry], offset: Offset) -> Option<&IndexEntry> {
    let after = entries.partition_point(|entry| entry.base_offset <= offset);
    let entry = entries.get(after.checked_sub(1)?)?;
    (offset < entry.end_offset()).then_some(entry)
}

/// The first entry of a verified page whose running maximum reaches `timestamp_ms`.
pub fn page_find_timestamp(entries: &[IndexEntry], timestamp_ms: i64) -> Option<&IndexEntry> {
    let index = entries.partition_point(|entry| entry.max_timestamp_ms < timestamp_ms);
    entries.get(index)
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::segment_index::{PartitionEntries, SegmentIndex, decode_page, test_segment};
    use proptest::prelude::*;

    const P: PartitionId = PartitionId(0);

    fn location(base: u64, end: u64) -> BatchLocation {
        BatchLocation {
            base_offset: Offset(base),
            end_offset: Offset(end),
            segment_index: 0,
            position: base * 100,
            len_bytes: 100,
        }
    }

    fn dense_index(found: Option<Found>) -> Option<usize> {
        match found {
            Some(Found::Dense(index)) => Some(index),
            Some(Found::Page(page)) => panic!("nothing is sealed: {page:?}"),
            None => None,
        }
    }

    #[test]
    fn find_returns_the_batch_holding_each_offset() {
        let mut index = OffsetIndex::new();
        index.push(location(0, 1), 10);
        index.push(location(1, 5), 30);
        index.push(location(5, 6), 20);
        let found: Vec<_> = (0..7)
            .map(|offset| dense_index(index.find(P, Offset(offset), 1)))
            .collect();
        assert_eq!(
            found,
            vec![Some(0), Some(1), Some(1), Some(1), Some(1), Some(2), None]
        );
        assert_eq!(index.end_offset(), Offset(6));
    }

    fn in_segment(segment_index: u64, base: u64, end: u64) -> BatchLocation {
        BatchLocation {
            segment_index,
            ..location(base, end)
        }
    }

    #[test]
    fn retention_removes_runs_oldest_first_and_offsets_go_on_after_the_last_removed() {
        let mut index = OffsetIndex::new();
        index.push(in_segment(0, 0, 2), 10);
        index.push(in_segment(1, 2, 3), 20);
        index.push(in_segment(2, 3, 4), 30);
        index.seal(0, 64);
        index.seal(1, 64);
        assert_eq!(index.size_bytes(), 300);
        assert_eq!(index.log_start(), Offset(0));

        // Segment 1 rewritten with this run kept: only where its entries lie changes.
        assert!(index.relocate_run(1, 1, 104));
        assert!(!index.relocate_run(5, 1, 104), "no run in segment 5");
        let run = &index.sealed_runs()[1];
        assert_eq!((run.generation, run.entries_position), (1, 104));
        assert_eq!((run.base_offset, run.end_offset), (Offset(2), Offset(3)));

        index.remove_first_run(0);
        assert_eq!(index.log_start(), Offset(2));
        assert_eq!(index.size_bytes(), 200);
        assert_eq!(
            index.find(P, Offset(1), 1),
            None,
            "removed offsets are not found"
        );
        assert!(matches!(index.find(P, Offset(2), 1), Some(Found::Page(_))));
        index.remove_first_run(1);
        assert_eq!(index.log_start(), Offset(3));
        index.seal(2, 64);
        index.remove_first_run(2);
        // Nothing left: the log starts at the end, and the next batch continues from it.
        assert_eq!(index.log_start(), Offset(4));
        assert_eq!(index.end_offset(), Offset(4));
        assert_eq!(index.batch_count(), 0);
        index.push(in_segment(3, 4, 6), 40);
        assert_eq!(index.log_start(), Offset(4));
        assert_eq!(index.end_offset(), Offset(6));
    }

    #[test]
    #[should_panic(expected = "first run")]
    fn retention_never_removes_a_run_behind_a_kept_one() {
        let mut index = OffsetIndex::new();
        index.push(in_segment(0, 0, 1), 10);
        index.push(in_segment(1, 1, 2), 10);
        index.seal(0, 64);
        index.seal(1, 64);
        index.remove_first_run(1);
    }

    #[test]
    fn an_index_retention_emptied_comes_back_from_a_checkpoint_at_its_end() {
        let index = OffsetIndex::from_checkpoint(&[], &[], Offset(7)).unwrap();
        assert_eq!(
            (index.log_start(), index.end_offset()),
            (Offset(7), Offset(7))
        );
    }

    #[test]
    fn empty_index_finds_nothing() {
        assert_eq!(OffsetIndex::new().find(P, Offset(0), 1), None);
        assert_eq!(OffsetIndex::new().find_timestamp(P, i64::MIN), None);
    }

    #[test]
    fn find_timestamp_uses_the_running_maximum() {
        let mut index = OffsetIndex::new();
        // Batch timestamps go up, down and up: 10, 30, 20, 50.
        index.push(location(0, 1), 10);
        index.push(location(1, 5), 30);
        index.push(location(5, 6), 20);
        index.push(location(6, 8), 50);
        let found: Vec<_> = [i64::MIN, 10, 11, 30, 31, 50, 51]
            .into_iter()
            .map(|timestamp_ms| dense_index(index.find_timestamp(P, timestamp_ms)))
            .collect();
        // 20 is below the 30 before it: no search lands on batch 2.
        assert_eq!(
            found,
            vec![Some(0), Some(0), Some(1), Some(1), Some(3), Some(3), None]
        );
    }

    #[test]
    #[should_panic(expected = "dense")]
    fn push_rejects_a_gap() {
        let mut index = OffsetIndex::new();
        index.push(location(0, 1), 0);
        index.push(location(2, 3), 0);
    }

    /// A shard's partitions with some segments sealed through real index files, and the
    /// same batches never sealed: the model.
    struct Sealed {
        sparse: Vec<OffsetIndex>,
        dense: Vec<OffsetIndex>,
        /// Sealed runs from the decoded files (`push_sealed`), then the unsealed batches.
        from_files: Vec<OffsetIndex>,
        files: std::collections::BTreeMap<u64, Vec<u8>>,
    }

    /// `batches`: (partition, record count, timestamp, segment ends after it).
    fn build(partition_count: usize, batches: &[(usize, u32, i64, bool)]) -> Sealed {
        let mut sealed = Sealed {
            sparse: (0..partition_count).map(|_| OffsetIndex::new()).collect(),
            dense: (0..partition_count).map(|_| OffsetIndex::new()).collect(),
            from_files: (0..partition_count).map(|_| OffsetIndex::new()).collect(),
            files: std::collections::BTreeMap::new(),
        };
        let mut segment_index = 0;
        let mut position = 4096;
        for (partition, record_count, timestamp_ms, seals) in batches {
            let partition = partition % partition_count;
            let base = sealed.dense[partition].end_offset().0;
            let location = BatchLocation {
                base_offset: Offset(base),
                end_offset: Offset(base + u64::from(*record_count)),
                segment_index,
                position,
                len_bytes: 64 + record_count * 10,
            };
            position += u64::from(location.len_bytes);
            sealed.dense[partition].push(location, *timestamp_ms);
            sealed.sparse[partition].push(location, *timestamp_ms);
            if *seals {
                let index = SegmentIndex {
                    segment: test_segment(segment_index),
                    data_end_position: position,
                    partitions: (0..partition_count)
                        .map(|id| PartitionEntries {
                            partition_id: PartitionId(u32::try_from(id).unwrap()),
                            entries: sealed.sparse[id].segment_entries(segment_index),
                        })
                        .filter(|partition| !partition.entries.is_empty())
                        .collect(),
                };
                let bytes = index.encode();
                assert_eq!(
                    SegmentIndex::decode(&bytes, &index.segment).as_ref(),
                    Ok(&index)
                );
                for placement in index.placements() {
                    sealed.sparse[placement.partition_id.0 as usize]
                        .seal(segment_index, placement.entries_position);
                }
                sealed.files.insert(segment_index, bytes);
                segment_index += 1;
                position = 4096;
            }
        }
        for (segment_index, bytes) in &sealed.files {
            let index = SegmentIndex::decode(bytes, &test_segment(*segment_index)).unwrap();
            for (placement, partition) in index.placements().iter().zip(&index.partitions) {
                sealed.from_files[placement.partition_id.0 as usize].push_sealed(
                    *segment_index,
                    0,
                    placement.entries_position,
                    &partition.entries,
                );
            }
        }
        for (partition, sparse) in sealed.sparse.iter().enumerate() {
            let dense = &sealed.dense[partition];
            for location in sparse.dense_batches() {
                let at = dense
                    .dense_batches()
                    .partition_point(|batch| batch.base_offset < location.base_offset);
                let timestamp_ms = dense.dense_batch_max_ms[at];
                sealed.from_files[partition].push(*location, timestamp_ms);
            }
        }
        sealed
    }

    impl Sealed {
        /// What `found` resolves to, reading pages from the files; `pick` chooses in a page.
        fn resolve(
            &self,
            index: &OffsetIndex,
            found: Option<Found>,
            pick: &dyn Fn(&[IndexEntry]) -> Option<IndexEntry>,
        ) -> Option<BatchLocation> {
            match found? {
                Found::Dense(at) => index.dense_batches().get(at).copied(),
                Found::Page(page) => {
                    let file = &self.files[&page.segment_index];
                    let start = usize::try_from(page.position).unwrap();
                    let entries = decode_page(&file[start..start + page.len_bytes()], &page)
                        .expect("a page of a file just written verifies");
                    let entry = pick(&entries).expect("the page holds what was looked up");
                    Some(entry.location(page.segment_index))
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        #[test]
        fn a_sealed_index_answers_every_lookup_like_the_dense_one(
            partition_count in 1usize..4,
            batches in proptest::collection::vec(
                (0usize..4, 1u32..4, -50i64..50, proptest::bool::weighted(0.004)),
                1..1200,
            ),
        ) {
            let sealed = build(partition_count, &batches);
            for partition in 0..partition_count {
                let id = PartitionId(u32::try_from(partition).unwrap());
                let (sparse, dense) = (&sealed.sparse[partition], &sealed.dense[partition]);
                let from_files = &sealed.from_files[partition];
                prop_assert_eq!(from_files.sealed_runs(), sparse.sealed_runs());
                prop_assert_eq!(from_files.dense_batches(), sparse.dense_batches());
                prop_assert_eq!(sparse.end_offset(), dense.end_offset());
                prop_assert_eq!(sparse.batch_count(), dense.batch_count());
                for offset in 0..=dense.end_offset().0 {
                    let offset = Offset(offset);
                    let expected = dense.find(id, offset, 1).map(|found| {
                        let Found::Dense(at) = found else { panic!("the model is dense") };
                        dense.dense_batches()[at]
                    });
                    for page_count in [1, 3] {
                        let actual = sealed.resolve(
                            sparse,
                            sparse.find(id, offset, page_count),
                            &|entries| page_find(entries, offset).copied(),
                        );
                        prop_assert_eq!(actual, expected, "offset {:?}", offset);
                    }
                }
                for timestamp_ms in [i64::MIN, i64::MAX].into_iter().chain(-52..52) {
                    let expected = dense.find_timestamp(id, timestamp_ms).map(|found| {
                        let Found::Dense(at) = found else { panic!("the model is dense") };
                        dense.dense_batches()[at]
                    });
                    let actual = sealed.resolve(
                        sparse,
                        sparse.find_timestamp(id, timestamp_ms),
                        &|entries| page_find_timestamp(entries, timestamp_ms).copied(),
                    );
                    prop_assert_eq!(actual, expected, "timestamp {}", timestamp_ms);
                }
            }
        }
    }

    #[test]
    fn sealed_batches_cost_under_a_byte_each() {
        let batches: Vec<_> = (0..100_000)
            .map(|index| (0, 1, index, index % 20_000 == 19_999))
            .collect();
        let sealed = build(1, &batches);
        let index = &sealed.sparse[0];
        assert!(index.dense_batches().is_empty());
        let bytes_per_batch = index.memory_bytes() as f64 / 100_000.0;
        assert!(
            bytes_per_batch < 1.0,
            "{bytes_per_batch} bytes per sealed batch"
        );
    }
}
