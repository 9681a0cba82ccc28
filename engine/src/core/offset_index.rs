//! `OffsetIndex`: where each durable batch of one partition lives in its shard's core log.
//!
//! One entry per batch, in offset order, appended after the batch is synced (and during
//! recovery). A fetch finds the batch holding an offset by binary search and reads from
//! there, so it never scans a partition, let alone the whole core log, from its start.
//! Entries are 32 bytes; see BENCHMARKS.md for what that costs per record.

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

/// Offset -> batch location for one partition's durable batches.
#[derive(Default, Debug)]
pub struct OffsetIndex {
    batches: Vec<BatchLocation>,
}

impl OffsetIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the next durable batch; it must start where the previous one ended.
    pub fn push(&mut self, location: BatchLocation) {
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

    /// Offset just after the last durable batch.
    pub fn end_offset(&self) -> Offset {
        self.batches
            .last()
            .map_or(Offset(0), |batch| batch.end_offset)
    }

    /// Heap bytes held, for the memory figures.
    pub fn memory_bytes(&self) -> usize {
        self.batches.capacity() * std::mem::size_of::<BatchLocation>()
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
        index.push(location(0, 1));
        index.push(location(1, 5));
        index.push(location(5, 6));
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
    }

    #[test]
    #[should_panic(expected = "dense")]
    fn push_rejects_a_gap() {
        let mut index = OffsetIndex::new();
        index.push(location(0, 1));
        index.push(location(2, 3));
    }
}
