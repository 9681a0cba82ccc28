//! `OffsetIndex`: where each durable batch of one partition lives in its shard's core log.
//!
//! One entry per batch, in offset order, appended after the batch is synced (and during
//! recovery). A fetch finds the batch holding an offset by binary search and reads from
//! there, so it never scans a partition, let alone the whole core log, from its start.
//!
//! Beside each entry the index keeps the largest record timestamp of the partition up to
//! and including that batch: a running maximum, so it never decreases even when producers'
//! timestamps do. The first batch whose running maximum reaches a timestamp is the first
//! that holds a record at or after it (every earlier record is older), so "earliest offset
//! with timestamp ≥ t" (Kafka's ListOffsets) is one binary search and one batch read.
//! Entries are 40 bytes plus 8 for the timestamp; see BENCHMARKS.md for what that costs per
//! record.

use crate::core::Offset;

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

/// Offset -> batch location for one partition's durable batches.
#[derive(Default, Debug)]
pub struct OffsetIndex {
    batches: Vec<BatchLocation>,
    /// For each batch, the largest record timestamp (ms) of this batch and all before it.
    max_timestamps_ms: Vec<i64>,
}

impl OffsetIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the next durable batch, whose largest record timestamp is
    /// `max_timestamp_ms`; it must start where the previous one ended.
    pub fn push(&mut self, location: BatchLocation, max_timestamp_ms: i64) {
        assert!(
            location.base_offset < location.end_offset,
            "a batch holds at least one record: {location:?}"
        );
        if let Some(last) = self.batches.last() {
            assert_eq!(
                last.end_offset, location.base_offset,
                "batches of a partition are dense: {last:?} then {location:?}"
            );
        }
        self.batches.push(location);
        let running_max_ms = self
            .max_timestamps_ms
            .last()
            .map_or(max_timestamp_ms, |previous| max_timestamp_ms.max(*previous));
        self.max_timestamps_ms.push(running_max_ms);
    }

    /// Index (into `batches()`) of the first batch holding a record whose timestamp is at
    /// least `timestamp_ms`, if any durable one does: the batch where the running maximum
    /// first reaches it.
    pub fn find_timestamp(&self, timestamp_ms: i64) -> Option<usize> {
        let index = self
            .max_timestamps_ms
            .partition_point(|max_ms| *max_ms < timestamp_ms);
        (index < self.batches.len()).then_some(index)
    }

    /// Index (into `batches()`) of the batch holding `offset`, if it is durable.
    pub fn find(&self, offset: Offset) -> Option<usize> {
        let after = self
            .batches
            .partition_point(|batch| batch.base_offset <= offset);
        let index = after.checked_sub(1)?;
        let batch = self.batches.get(index)?;
        (offset < batch.end_offset).then_some(index)
    }

    /// All durable batches, in offset order.
    pub fn batches(&self) -> &[BatchLocation] {
        &self.batches
    }

    /// Every batch with the running maximum of timestamps up to it, in offset order: what
    /// a checkpoint stores and `push` takes back.
    pub fn entries(&self) -> impl Iterator<Item = (BatchLocation, i64)> + '_ {
        self.batches
            .iter()
            .copied()
            .zip(self.max_timestamps_ms.iter().copied())
    }

    /// Offset just after the last durable batch.
    pub fn end_offset(&self) -> Offset {
        self.batches
            .last()
            .map_or(Offset(0), |batch| batch.end_offset)
    }

    /// Heap bytes held, for the memory figures.
    pub fn memory_bytes(&self) -> usize {
        self.batches.capacity() * std::mem::size_of::<BatchLocation>()
            + self.max_timestamps_ms.capacity() * std::mem::size_of::<i64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(base: u64, end: u64) -> BatchLocation {
        BatchLocation {
            base_offset: Offset(base),
            end_offset: Offset(end),
            segment_index: 0,
            position: base * 100,
            len_bytes: 100,
        }
    }

    #[test]
    fn find_returns_the_batch_holding_each_offset() {
        let mut index = OffsetIndex::new();
        index.push(location(0, 1), 10);
        index.push(location(1, 5), 30);
        index.push(location(5, 6), 20);
        let found: Vec<_> = (0..7).map(|offset| index.find(Offset(offset))).collect();
        assert_eq!(
            found,
            vec![Some(0), Some(1), Some(1), Some(1), Some(1), Some(2), None]
        );
        assert_eq!(index.end_offset(), Offset(6));
    }

    #[test]
    fn empty_index_finds_nothing() {
        assert_eq!(OffsetIndex::new().find(Offset(0)), None);
        assert_eq!(OffsetIndex::new().find_timestamp(i64::MIN), None);
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
            .map(|timestamp_ms| index.find_timestamp(timestamp_ms))
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
}
