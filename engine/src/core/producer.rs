//! `ProducerTable`: one partition's idempotent producers, and the check that tells a new
//! batch from a retry (Kafka's rules, KIP-98; docs/DESIGN.md §1, "Idempotent producers").
//!
//! Per producer id the table keeps the current epoch and the last
//! `PRODUCER_BATCH_RETAINED_COUNT_MAX` (5) batches appended under it — first and last
//! sequence, base offset, record count — pending (staged, unsynced) batches included, so a
//! retry that arrives before its original is synced is still recognised. The table changes
//! only when a batch is appended (`record`), never when one is checked or refused, so it is
//! a function of the partition's log: recovery rebuilds it by recording every stamped batch
//! of the log in order, and a restart needs no side file.
//!
//! Bound: at most `PRODUCER_COUNT_PER_PARTITION_MAX` producers per partition. Recording a
//! batch of a new producer into a full table first evicts the producer whose last append is
//! the oldest. An evicted producer is unknown again: its next batch is accepted only with
//! sequence 0 (Kafka's producers then reset), anything else is `OutOfOrder`, and a retry of
//! one of its old batches is no longer recognised as a duplicate (refused as `OutOfOrder`,
//! unless it started at sequence 0: then it is appended again). Recovery replays the same
//! evictions, since they depend only on the order of appends.

use hashbrown::HashMap;

use crate::core::checkpoint::{CheckpointError, ProducerCheckpoint};
use crate::core::limits::{PRODUCER_BATCH_RETAINED_COUNT_MAX, PRODUCER_COUNT_PER_PARTITION_MAX};
use crate::core::{Offset, ProducerStamp};
use crate::error::ProducerError;

/// One batch a producer appended, as the table retains it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ProducerBatch {
    /// Sequence of its first record.
    pub first_sequence: i32,
    /// Sequence of its last record (`last_sequence(first_sequence, record_count)`).
    pub last_sequence: i32,
    /// Offset of its first record.
    pub base_offset: Offset,
    /// Records in it, at least 1.
    pub record_count: u32,
}

impl ProducerBatch {
    /// Offset just after its last record.
    #[must_use]
    pub fn end_offset(&self) -> Offset {
        self.base_offset.plus(u64::from(self.record_count))
    }
}

/// What the table says of a stamped batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProducerCheck {
    /// It is the producer's next batch (or the first of a new producer or epoch).
    Accept,
    /// It repeats this retained batch: answer with its offsets, append nothing.
    Duplicate(ProducerBatch),
    /// It does not follow the producer's batches.
    Refuse(ProducerError),
}

/// The sequence of the last of `record_count` records from `base_sequence`, wrapping from
/// `i32::MAX` to 0 as Kafka's do: 5 records from `i32::MAX - 1` end at 2.
#[must_use]
pub fn last_sequence(base_sequence: i32, record_count: u32) -> i32 {
    let sequence_count = i64::from(i32::MAX) + 1;
    let last = (i64::from(base_sequence) + i64::from(record_count.max(1)) - 1) % sequence_count;
    i32::try_from(last).expect("a remainder of 2^31 fits in i32")
}

/// The sequence after `sequence`, wrapping from `i32::MAX` to 0.
#[must_use]
pub fn next_sequence(sequence: i32) -> i32 {
    if sequence == i32::MAX {
        0
    } else {
        sequence + 1
    }
}

/// One producer's state in one partition.
#[derive(Clone, Debug)]
struct ProducerEntry {
    epoch: i16,
    /// The retained batches, oldest first; `batch_count` of them are valid, at least 1.
    batches: [ProducerBatch; PRODUCER_BATCH_RETAINED_COUNT_MAX],
    batch_count: u8,
    /// `ProducerTable::append_count` at its latest append: the eviction order.
    last_append: u64,
}

impl ProducerEntry {
    fn new(epoch: i16, batch: ProducerBatch, last_append: u64) -> Self {
        let mut batches = [ProducerBatch::default(); PRODUCER_BATCH_RETAINED_COUNT_MAX];
        batches[0] = batch;
        ProducerEntry {
            epoch,
            batches,
            batch_count: 1,
            last_append,
        }
    }

    fn retained(&self) -> &[ProducerBatch] {
        &self.batches[..usize::from(self.batch_count)]
    }

    fn latest(&self) -> &ProducerBatch {
        self.retained()
            .last()
            .expect("a producer entry retains at least one batch")
    }

    fn push(&mut self, batch: ProducerBatch) {
        if usize::from(self.batch_count) == PRODUCER_BATCH_RETAINED_COUNT_MAX {
            self.batches.rotate_left(1);
            self.batch_count -= 1;
        }
        self.batches[usize::from(self.batch_count)] = batch;
        self.batch_count += 1;
    }
}

/// One partition's producers. See the module docs.
#[derive(Debug, Default)]
pub struct ProducerTable {
    producers: HashMap<i64, ProducerEntry>,
    /// Stamped batches recorded so far: a clock that only appends move.
    append_count: u64,
}

impl ProducerTable {
    /// A table with no producers.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Decides a batch of `record_count` records stamped `stamp`, as Kafka does:
    /// - unknown producer: only sequence 0 is accepted, else `OutOfOrder` expecting 0;
    /// - an epoch older than the producer's: `Fenced`;
    /// - a newer epoch: only sequence 0 is accepted (it starts the epoch), else `OutOfOrder`;
    /// - the same epoch: the same first and last sequence as a retained batch is that
    ///   batch's `Duplicate`; the sequence after the latest batch's last is accepted;
    ///   anything else is `OutOfOrder` expecting that sequence.
    #[must_use]
    pub fn check(&self, stamp: ProducerStamp, record_count: u32) -> ProducerCheck {
        let out_of_order = |expected_sequence| {
            ProducerCheck::Refuse(ProducerError::OutOfOrder {
                producer_id: stamp.producer_id,
                base_sequence: stamp.base_sequence,
                expected_sequence,
            })
        };
        let Some(entry) = self.producers.get(&stamp.producer_id) else {
            return if stamp.base_sequence == 0 {
                ProducerCheck::Accept
            } else {
                out_of_order(0)
            };
        };
        if stamp.epoch < entry.epoch {
            return ProducerCheck::Refuse(ProducerError::Fenced {
                producer_id: stamp.producer_id,
                epoch: stamp.epoch,
                current_epoch: entry.epoch,
            });
        }
        if stamp.epoch > entry.epoch {
            return if stamp.base_sequence == 0 {
                ProducerCheck::Accept
            } else {
                out_of_order(0)
            };
        }
        let last = last_sequence(stamp.base_sequence, record_count);
        if let Some(original) = entry.retained().iter().find(|batch| {
            batch.first_sequence == stamp.base_sequence && batch.last_sequence == last
        }) {
            return ProducerCheck::Duplicate(*original);
        }
        let expected_sequence = next_sequence(entry.latest().last_sequence);
        if stamp.base_sequence == expected_sequence {
            ProducerCheck::Accept
        } else {
            out_of_order(expected_sequence)
        }
    }

    /// Records a batch appended at `base_offset` (staged, or recovered from the log): the
    /// producer's latest, in its epoch, or the first of a new epoch or producer. Does not
    /// judge it: staging checked it first, and recovery replays what staging accepted.
    pub fn record(&mut self, stamp: ProducerStamp, base_offset: Offset, record_count: u32) {
        assert!(
            record_count > 0,
            "a recorded batch holds at least one record"
        );
        self.append_count += 1;
        let batch = ProducerBatch {
            first_sequence: stamp.base_sequence,
            last_sequence: last_sequence(stamp.base_sequence, record_count),
            base_offset,
            record_count,
        };
        let last_append = self.append_count;
        if let Some(entry) = self.producers.get_mut(&stamp.producer_id) {
            if entry.epoch == stamp.epoch {
                entry.push(batch);
                entry.last_append = last_append;
            } else {
                *entry = ProducerEntry::new(stamp.epoch, batch, last_append);
            }
            return;
        }
        if self.producers.len() >= PRODUCER_COUNT_PER_PARTITION_MAX {
            // O(producers), only when a new producer meets a full table.
            let evicted = self
                .producers
                .iter()
                .min_by_key(|(_, entry)| entry.last_append)
                .map(|(producer_id, _)| *producer_id)
                .expect("a full table has producers");
            self.producers.remove(&evicted);
        }
        self.producers.insert(
            stamp.producer_id,
            ProducerEntry::new(stamp.epoch, batch, last_append),
        );
    }

    /// Producers known.
    #[must_use]
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    /// Whether no producer is known.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// The epoch and retained batches of a producer, oldest first, if it is known.
    #[must_use]
    pub fn producer(&self, producer_id: i64) -> Option<(i16, &[ProducerBatch])> {
        self.producers
            .get(&producer_id)
            .map(|entry| (entry.epoch, entry.retained()))
    }

    /// The table as a checkpoint stores it: its clock and its producers, in no order.
    #[must_use]
    pub fn checkpoint(&self) -> (u64, Vec<ProducerCheckpoint>) {
        let producers = self
            .producers
            .iter()
            .map(|(producer_id, entry)| ProducerCheckpoint {
                producer_id: *producer_id,
                epoch: entry.epoch,
                last_append: entry.last_append,
                batches: entry.retained().to_vec(),
            })
            .collect();
        (self.append_count, producers)
    }

    /// The table a checkpoint stored (each producer's batches checked by
    /// `Checkpoint::decode`). More producers than a table holds, or one twice, is refused.
    pub fn from_checkpoint(
        append_count: u64,
        producers: &[ProducerCheckpoint],
    ) -> Result<Self, CheckpointError> {
        if producers.len() > PRODUCER_COUNT_PER_PARTITION_MAX {
            return Err(CheckpointError::Invalid(format!(
                "{} producers, a partition keeps at most {PRODUCER_COUNT_PER_PARTITION_MAX}",
                producers.len()
            )));
        }
        let mut table = ProducerTable {
            producers: HashMap::with_capacity(producers.len()),
            append_count,
        };
        for producer in producers {
            let (first, rest) = producer
                .batches
                .split_first()
                .ok_or_else(|| CheckpointError::Invalid("a producer without batches".into()))?;
            let mut entry = ProducerEntry::new(producer.epoch, *first, producer.last_append);
            for batch in rest {
                entry.push(*batch);
            }
            if table
                .producers
                .insert(producer.producer_id, entry)
                .is_some()
            {
                return Err(CheckpointError::Invalid(format!(
                    "producer {} is in the checkpoint twice",
                    producer.producer_id
                )));
            }
        }
        Ok(table)
    }

    /// Heap bytes held: the hash table's slots and control bytes.
    #[must_use]
    pub fn memory_bytes(&self) -> usize {
        self.producers.capacity() * (std::mem::size_of::<(i64, ProducerEntry)>() + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(producer_id: i64, epoch: i16, base_sequence: i32) -> ProducerStamp {
        ProducerStamp {
            producer_id,
            epoch,
            base_sequence,
        }
    }

    fn out_of_order(producer_id: i64, base_sequence: i32, expected_sequence: i32) -> ProducerCheck {
        ProducerCheck::Refuse(ProducerError::OutOfOrder {
            producer_id,
            base_sequence,
            expected_sequence,
        })
    }

    #[test]
    fn sequences_wrap_from_i32_max_to_zero() {
        assert_eq!(last_sequence(0, 1), 0);
        assert_eq!(last_sequence(10, 5), 14);
        assert_eq!(last_sequence(i32::MAX, 1), i32::MAX);
        assert_eq!(last_sequence(i32::MAX - 1, 5), 2);
        assert_eq!(last_sequence(i32::MAX, 65_536), 65_534);
        assert_eq!(next_sequence(i32::MAX), 0);
        assert_eq!(next_sequence(7), 8);
    }

    #[test]
    fn an_unknown_producer_starts_at_sequence_zero() {
        let table = ProducerTable::new();
        assert_eq!(table.check(stamp(1, 0, 0), 3), ProducerCheck::Accept);
        assert_eq!(table.check(stamp(1, 4, 0), 3), ProducerCheck::Accept);
        assert_eq!(table.check(stamp(1, 0, 5), 3), out_of_order(1, 5, 0));
    }

    #[test]
    fn the_next_batch_is_accepted_and_a_retry_is_a_duplicate() {
        let mut table = ProducerTable::new();
        table.record(stamp(1, 0, 0), Offset(10), 3);
        assert_eq!(table.check(stamp(1, 0, 3), 2), ProducerCheck::Accept);
        table.record(stamp(1, 0, 3), Offset(20), 2);
        let first = ProducerBatch {
            first_sequence: 0,
            last_sequence: 2,
            base_offset: Offset(10),
            record_count: 3,
        };
        assert_eq!(
            table.check(stamp(1, 0, 0), 3),
            ProducerCheck::Duplicate(first)
        );
        // Same first sequence, another length: not the same batch.
        assert_eq!(table.check(stamp(1, 0, 0), 2), out_of_order(1, 0, 5));
        assert_eq!(table.check(stamp(1, 0, 6), 1), out_of_order(1, 6, 5));
        assert_eq!(table.check(stamp(1, 0, 4), 1), out_of_order(1, 4, 5));
        assert_eq!(table.check(stamp(2, 0, 0), 1), ProducerCheck::Accept);
    }

    #[test]
    fn only_the_last_five_batches_are_recognised() {
        let mut table = ProducerTable::new();
        for index in 0..7 {
            table.record(stamp(1, 0, index), Offset(index as u64), 1);
        }
        let (_, retained) = table.producer(1).unwrap();
        assert_eq!(
            retained
                .iter()
                .map(|batch| batch.first_sequence)
                .collect::<Vec<_>>(),
            vec![2, 3, 4, 5, 6]
        );
        assert!(matches!(
            table.check(stamp(1, 0, 2), 1),
            ProducerCheck::Duplicate(_)
        ));
        assert_eq!(table.check(stamp(1, 0, 1), 1), out_of_order(1, 1, 7));
    }

    #[test]
    fn epochs_fence_older_ones_and_start_at_zero() {
        let mut table = ProducerTable::new();
        table.record(stamp(1, 3, 0), Offset(0), 2);
        assert_eq!(
            table.check(stamp(1, 2, 2), 1),
            ProducerCheck::Refuse(ProducerError::Fenced {
                producer_id: 1,
                epoch: 2,
                current_epoch: 3
            })
        );
        assert_eq!(table.check(stamp(1, 4, 2), 1), out_of_order(1, 2, 0));
        assert_eq!(table.check(stamp(1, 4, 0), 1), ProducerCheck::Accept);
        table.record(stamp(1, 4, 0), Offset(2), 1);
        // The new epoch replaced the old one's batches.
        assert_eq!(
            table.check(stamp(1, 4, 0), 1),
            ProducerCheck::Duplicate(ProducerBatch {
                first_sequence: 0,
                last_sequence: 0,
                base_offset: Offset(2),
                record_count: 1,
            })
        );
        assert!(matches!(
            table.check(stamp(1, 3, 0), 2),
            ProducerCheck::Refuse(ProducerError::Fenced { .. })
        ));
    }

    #[test]
    fn a_sequence_that_wraps_continues_at_zero() {
        let mut table = ProducerTable::new();
        table.record(stamp(1, 0, 0), Offset(0), 1);
        // Recorded as recovery would: the producer's sequence near the end of the range.
        table.record(stamp(1, 0, i32::MAX - 1), Offset(1), 3);
        assert_eq!(table.check(stamp(1, 0, 1), 1), ProducerCheck::Accept);
        assert_eq!(table.check(stamp(1, 0, 0), 2), out_of_order(1, 0, 1));
        assert!(matches!(
            table.check(stamp(1, 0, i32::MAX - 1), 3),
            ProducerCheck::Duplicate(ProducerBatch {
                last_sequence: 0,
                ..
            })
        ));
    }

    #[test]
    fn a_full_table_evicts_the_producer_appended_to_longest_ago() {
        let mut table = ProducerTable::new();
        for producer_id in 0..PRODUCER_COUNT_PER_PARTITION_MAX as i64 {
            table.record(stamp(producer_id, 0, 0), Offset(producer_id as u64), 1);
        }
        // Producer 0 appends again: producer 1 is now the least recently appended.
        table.record(stamp(0, 0, 1), Offset(5000), 1);
        let newcomer = PRODUCER_COUNT_PER_PARTITION_MAX as i64;
        table.record(stamp(newcomer, 0, 0), Offset(5001), 1);
        assert_eq!(table.len(), PRODUCER_COUNT_PER_PARTITION_MAX);
        assert!(table.producer(1).is_none(), "producer 1 was evicted");
        assert!(table.producer(0).is_some() && table.producer(newcomer).is_some());
        // Evicted: unknown again, so only sequence 0 is accepted.
        assert_eq!(table.check(stamp(1, 0, 1), 1), out_of_order(1, 1, 0));
        assert_eq!(table.check(stamp(1, 0, 0), 1), ProducerCheck::Accept);
        assert!(table.memory_bytes() > 0);
    }
}
