//! What a shard's I/O shell counts about itself, for the server's metrics endpoint: group
//! sizes, how long groups wait and take to become durable, how long their appenders take
//! to resume, segment rolls and preparation time, read cache hits, storage failures.
//!
//! Plain atomics, no metrics library: the engine stays free of any exposition format, and
//! the server (which owns the endpoint) decides names, labels and encoding. Each shard
//! owns one [`ShardIoStats`] and only that shard's executor writes it; a scraper thread
//! only loads. With one writer an add is a relaxed load and store ([`single_writer_add`]),
//! not a locked read-modify-write: the profile of 256 uncontended clients showed the
//! locked adds of the histograms at ~2 % of the server's CPU. A scrape may see
//! a histogram's count and its buckets from slightly different moments; every value only
//! grows, so consecutive scrapes never go back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Adds `amount` to a counter that only the calling thread ever writes (readers on other
/// threads see the old or the new value, never a torn one). Two writers would lose adds.
pub fn single_writer_add(counter: &AtomicU64, amount: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(amount),
        Ordering::Relaxed,
    );
}

/// Buckets of a [`Log2Histogram`]: upper bounds 2^0 .. 2^(N-2), then +Inf.
pub const LOG2_BUCKET_COUNT: usize = 28;

/// A histogram with power-of-two buckets over whole units (µs, records, bytes), written by
/// one thread, read by any.
#[derive(Debug)]
pub struct Log2Histogram {
    buckets: [AtomicU64; LOG2_BUCKET_COUNT],
    sum: AtomicU64,
    count: AtomicU64,
}

/// A copy of a [`Log2Histogram`] at one moment: per-bucket (not cumulative) counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Log2Snapshot {
    /// `(upper_bound, count)`: values in `(previous bound, upper_bound]`; the last bound is
    /// `None` (+Inf).
    pub buckets: Vec<(Option<u64>, u64)>,
    /// Sum of the values observed.
    pub sum: u64,
    /// Values observed.
    pub count: u64,
}

impl Log2Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Log2Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Counts `value` in the smallest bucket whose bound is at least `value`.
    pub fn observe(&self, value: u64) {
        // 0 and 1 -> bucket 0 (bound 1); 2 -> 1 (bound 2); 3 and 4 -> 2 (bound 4); ...
        let bucket = (u64::BITS - value.saturating_sub(1).leading_zeros()) as usize;
        let bucket = bucket.min(LOG2_BUCKET_COUNT - 1);
        if let Some(slot) = self.buckets.get(bucket) {
            single_writer_add(slot, 1);
        }
        single_writer_add(&self.sum, value);
        single_writer_add(&self.count, 1);
    }

    /// Counts a duration in whole microseconds.
    pub fn observe_duration_us(&self, duration: Duration) {
        self.observe(u64::try_from(duration.as_micros()).unwrap_or(u64::MAX));
    }

    /// The counts now.
    pub fn snapshot(&self) -> Log2Snapshot {
        let buckets = self
            .buckets
            .iter()
            .enumerate()
            .map(|(index, slot)| {
                let bound = (index < LOG2_BUCKET_COUNT - 1).then(|| 1u64 << index);
                (bound, slot.load(Ordering::Relaxed))
            })
            .collect();
        Log2Snapshot {
            buckets,
            sum: self.sum.load(Ordering::Relaxed),
            count: self.count.load(Ordering::Relaxed),
        }
    }
}

impl Default for Log2Histogram {
    fn default() -> Self {
        Log2Histogram::new()
    }
}

/// One shard's I/O counters. Shared (`Arc`) with the server's scraper, written only by the
/// shard's own executor.
#[derive(Debug, Default)]
pub struct ShardIoStats {
    /// Records in each group written (one durable write).
    pub group_records: Log2Histogram,
    /// Bytes of batches in each group written, padding excluded.
    pub group_bytes: Log2Histogram,
    /// From a group's first batch being staged to the group's write being submitted, µs:
    /// how long a batch waits for the group in flight before it.
    pub group_wait_us: Log2Histogram,
    /// Time of each group's durable (O_DSYNC) write, µs.
    pub write_latency_us: Log2Histogram,
    /// From a group becoming durable to each of its appenders resuming, µs: the
    /// executor's wake-up and whatever ran before the appender.
    pub completion_wake_us: Log2Histogram,
    /// Times the log moved on to a new segment.
    pub segment_rolls: AtomicU64,
    /// Time to create and preallocate each next segment, µs.
    pub segment_preparation_us: Log2Histogram,
    /// Batches read from memory (the read cache or a group not yet synced).
    pub read_cache_hits: AtomicU64,
    /// Batches read from the segment files.
    pub read_cache_misses: AtomicU64,
    /// Failed writes, syncs or segment preparations that poisoned the shard (0 or 1).
    pub storage_failures: AtomicU64,
    /// Checkpoints installed (docs/DESIGN.md §3.7).
    pub checkpoints_written: AtomicU64,
    /// Checkpoints that could not be written (the log goes on; the next one retries).
    pub checkpoint_failures: AtomicU64,
    /// Time the shard's executor spent copying its state for a checkpoint (µs): the
    /// only part of a checkpoint that appends wait behind.
    pub checkpoint_capture_us: Log2Histogram,
    /// Time from capture until the checkpoint was installed (µs), in the background.
    pub checkpoint_install_us: Log2Histogram,
    /// Segments retention rewrote without the batches it removed.
    pub retention_rewrites: AtomicU64,
    /// First segments retention removed, every batch in them gone.
    pub retention_removed_segments: AtomicU64,
    /// Retention steps that failed (nothing changed; tried again later).
    pub retention_failures: AtomicU64,
    /// Bytes of kept batches retention copied into rewritten segments.
    pub retention_copied_bytes: AtomicU64,
    /// Bytes of batches retention removed.
    pub retention_removed_bytes: AtomicU64,
}

impl ShardIoStats {
    /// Adds one to `counter`.
    pub fn count(counter: &AtomicU64) {
        single_writer_add(counter, 1);
    }

    /// Adds `amount` to `counter`.
    pub fn add(counter: &AtomicU64, amount: u64) {
        single_writer_add(counter, amount);
    }

    /// Reads `counter`.
    pub fn load(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_the_smallest_bucket_that_holds_them() {
        let histogram = Log2Histogram::new();
        for value in [0, 1, 2, 3, 4, 5, u64::MAX] {
            histogram.observe(value);
        }
        let snapshot = histogram.snapshot();
        let count_at = |bound: Option<u64>| {
            snapshot
                .buckets
                .iter()
                .find(|(upper, _)| *upper == bound)
                .map(|(_, count)| *count)
                .unwrap()
        };
        assert_eq!(count_at(Some(1)), 2);
        assert_eq!(count_at(Some(2)), 1);
        assert_eq!(count_at(Some(4)), 2);
        assert_eq!(count_at(Some(8)), 1);
        assert_eq!(count_at(None), 1);
        assert_eq!(snapshot.count, 7);
        assert_eq!(snapshot.buckets.len(), LOG2_BUCKET_COUNT);
    }
}
