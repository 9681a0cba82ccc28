//! `PartitionState`: one partition's end offset, watermarks, key index and idempotent
//! producers, and the check that admits or rejects a batch (docs/DESIGN.md §1): first its
//! producer stamp (`core::producer`), then its end offset and key conditions. The producer
//! comes first so that a retry of an accepted conditional batch is answered with the
//! original's offsets, not as a conflict with itself.
//!
//! The state includes *pending* records (appended, not yet synced): conditions see them,
//! because they become durable in order before any later record, and if they fail the
//! shard is poisoned so nothing after them is acknowledged either (docs/DESIGN.md §3.5). That is
//! also why there is no rollback of a staged batch: a failed write never leaves the shard
//! serving.
//!
//! Invariants, asserted where they change:
//! - `synced_end <= written_end <= appended_end` (`Watermarks`);
//! - the key index holds, for every key, its latest offset below `appended_end`; records
//!   with a null key (Kafka's `null`, not the empty key) are in no key's history: not
//!   indexed, `prev_key_offset` none;
//! - `pending_prev_key_offsets` has exactly one entry per record in
//!   `synced_end..appended_end`: that record's `prev_key_offset`. Walking it back from the
//!   key index answers "latest durable offset of a key" without I/O.

use std::collections::VecDeque;

use hashbrown::HashTable;

use crate::core::checkpoint::{CheckpointError, CheckpointWriter, PartitionCheckpoint};
use crate::core::condition::{Conflict, condition_holds};
use crate::core::key_index::{KeyIndex, KeySlot, hash_key};
use crate::core::limits::{
    BATCH_LINEAR_SCAN_RECORD_COUNT_MAX, BATCH_RECORD_COUNT_MAX, BATCH_SCRATCH_RECORD_COUNT_MAX,
    KEY_SIZE_BYTES_MAX,
};
use crate::core::offset_index::{BatchLocation, SealedRun};
use crate::core::producer::{ProducerBatch, ProducerCheck, ProducerTable};
use crate::core::{KeyCondition, Offset, PartitionId, ProducerStamp, RecordInput};
use crate::error::ProducerError;

/// Why a batch was not staged: each is an answer to the client, not a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A condition failed.
    Conflict(Conflict),
    /// The batch repeats this batch of its producer, appended before (maybe still pending).
    Duplicate(ProducerBatch),
    /// The batch's producer stamp does not follow the producer's batches.
    Producer(ProducerError),
}

impl From<Conflict> for Refusal {
    fn from(conflict: Conflict) -> Self {
        Refusal::Conflict(conflict)
    }
}

/// How far each stage of one partition's write path has got.
/// Exclusive ends: an empty partition has all three at `Offset(0)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Watermarks {
    appended_end: Offset, // accepted into the write buffer
    written_end: Offset,  // handed to the device; lost on power failure
    synced_end: Offset,   // survived fdatasync; safe to acknowledge
}

impl Watermarks {
    /// End of the records accepted into the write buffer (pending ones included): the
    /// offset the next appended record gets.
    #[must_use]
    pub fn appended_end(&self) -> Offset {
        self.appended_end
    }

    /// End of the records the device acknowledged; not durable.
    #[must_use]
    pub fn written_end(&self) -> Offset {
        self.written_end
    }

    /// End of the records that survived `fdatasync`: readers and acknowledgements stop here.
    #[must_use]
    pub fn synced_end(&self) -> Offset {
        self.synced_end
    }

    fn advance_appended(&mut self, appended_end: Offset) {
        assert!(
            appended_end >= self.appended_end,
            "appended_end went back: {appended_end:?}"
        );
        self.appended_end = appended_end;
    }

    /// The device acknowledged the write of every record below `written_end`.
    pub fn advance_written(&mut self, written_end: Offset) {
        assert!(
            written_end >= self.written_end,
            "written_end went back: {written_end:?}"
        );
        assert!(
            written_end <= self.appended_end,
            "written past appended: {written_end:?}"
        );
        self.written_end = written_end;
    }

    /// `fdatasync` returned for every record below `synced_end`.
    pub fn advance_synced(&mut self, synced_end: Offset) {
        assert!(
            synced_end >= self.synced_end,
            "synced_end went back: {synced_end:?}"
        );
        assert!(
            synced_end <= self.written_end,
            "synced past written: {synced_end:?}"
        );
        self.synced_end = synced_end;
    }
}

/// Why a batch read back from disk cannot be applied to the partition. The bytes passed
/// their checksums, so each of these means the log contradicts itself; returned, never
/// asserted, because they come from disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecoveryError {
    #[error(
        "partition {}: batch starts at offset {actual}, the recovered log ends at {expected}",
        partition.0
    )]
    OffsetGap {
        partition: PartitionId,
        expected: Offset,
        actual: Offset,
    },
    #[error(
        "partition {}: record {offset} has prev_key_offset {actual:?}, the recovered log has \
         the key's latest at {expected:?}",
        partition.0
    )]
    PrevKeyOffsetMismatch {
        partition: PartitionId,
        offset: Offset,
        expected: Option<Offset>,
        actual: Option<Offset>,
    },
    #[error(
        "partition {}: record {offset} has a key of {key_size_bytes} bytes, the most is \
         {key_size_bytes_max}",
        partition.0
    )]
    KeyTooLong {
        partition: PartitionId,
        offset: Offset,
        key_size_bytes: usize,
        key_size_bytes_max: usize,
    },
}

/// One partition's write-path state: watermarks, key index (pending records included) and
/// the `prev_key_offset` of each pending record.
#[derive(Debug)]
pub struct PartitionState {
    id: PartitionId,
    watermarks: Watermarks,
    key_index: KeyIndex,
    /// `prev_key_offset` of each record in `synced_end..appended_end`, oldest first; its
    /// length is bounded by the shard's open and in-flight group buffers.
    pending_prev_key_offsets: VecDeque<Option<Offset>>,
    batch_keys: BatchKeyScratch,
    /// For each record of the batch being staged, its key's slot in the index if the key
    /// existed before the batch: the check looks each key up once, staging reuses it.
    key_slots: Vec<Option<KeySlot>>,
    /// Idempotent producers and their latest batches, pending ones included.
    producers: ProducerTable,
}

impl PartitionState {
    /// An empty partition: no records, no keys, all watermarks at `Offset(0)`.
    #[must_use]
    pub fn new(id: PartitionId) -> Self {
        PartitionState {
            id,
            watermarks: Watermarks::default(),
            key_index: KeyIndex::new(),
            pending_prev_key_offsets: VecDeque::new(),
            batch_keys: BatchKeyScratch::default(),
            key_slots: Vec::new(),
            producers: ProducerTable::new(),
        }
    }

    /// The partition this state belongs to.
    #[must_use]
    pub fn id(&self) -> PartitionId {
        self.id
    }

    /// How far appending, writing and syncing have got.
    #[must_use]
    pub fn watermarks(&self) -> &Watermarks {
        &self.watermarks
    }

    /// The offset the next appended record gets (pending records included): what
    /// `expected_end_offset` must equal.
    #[must_use]
    pub fn appended_end(&self) -> Offset {
        self.watermarks.appended_end
    }

    /// End of the durable records: readers see and clients hear of nothing at or past it.
    #[must_use]
    pub fn synced_end(&self) -> Offset {
        self.watermarks.synced_end
    }

    /// Checks a batch's conditions and, if all hold, stages it at `appended_end`
    /// (docs/DESIGN.md §1).
    ///
    /// If `expected_end` is `Some` it must equal `appended_end`. Then each record's
    /// condition is checked in order, against its key's latest offset including pending
    /// records and the earlier records of this batch. All or nothing: on `Err` nothing
    /// changed and `prev_key_offsets` is empty. On `Ok(base_offset)` the records are
    /// pending at `base_offset..base_offset + records.len()`, the key index points at them,
    /// and `prev_key_offsets` holds each record's `prev_key_offset` for the encoder.
    ///
    /// An empty batch has no condition to fail: it returns `appended_end` and changes
    /// nothing (once `expected_end` holds). The request path rejects empty batches before
    /// this, and the encoder asserts a batch is not empty, so the shell must not encode it.
    ///
    /// `records` holds at most `BATCH_RECORD_COUNT_MAX` records with keys of at most
    /// `KEY_SIZE_BYTES_MAX` bytes; the request path checks both. Allocates nothing once
    /// `prev_key_offsets` and the internal buffers have grown to the usual batch size.
    pub fn check_and_stage(
        &mut self,
        expected_end: Option<Offset>,
        records: &[RecordInput<'_>],
        prev_key_offsets: &mut Vec<Option<Offset>>,
    ) -> Result<Offset, Conflict> {
        assert!(
            records.len() <= BATCH_RECORD_COUNT_MAX,
            "batch of {} records, the request path allows {BATCH_RECORD_COUNT_MAX}",
            records.len()
        );
        let base_offset = self.watermarks.appended_end;
        prev_key_offsets.clear();
        if let Some(expected) = expected_end
            && expected != base_offset
        {
            return Err(Conflict::EndOffset {
                expected,
                actual: base_offset,
            });
        }

        // Check everything before changing anything: the batch is atomic.
        let key_of = |record_index: usize| indexed_key(&records[record_index]);
        let checked = self.look_up_batch(base_offset, records.len(), key_of, |seen| {
            let condition = records[seen.record_index].condition;
            debug_assert!(
                !records[seen.record_index].null_key || condition == KeyCondition::Any,
                "batch_encoded_len refuses a null key with a condition"
            );
            if !condition_holds(condition, seen.latest) {
                return Err(seen.conflict(condition));
            }
            prev_key_offsets.push(seen.latest);
            Ok(())
        });
        if let Err(conflict) = checked {
            prev_key_offsets.clear();
            return Err(conflict);
        }
        self.stage_batch(base_offset, records.len(), key_of);
        debug_assert!(
            self.pending_prev_key_offsets
                .range(self.pending_prev_key_offsets.len() - records.len()..)
                .eq(prev_key_offsets.iter()),
            "the check and the index disagree on a prev_key_offset: {prev_key_offsets:?}"
        );
        Ok(base_offset)
    }

    /// Like [`Self::check_and_stage`], for a batch that may carry a producer stamp, which is
    /// checked first (`ProducerTable::check`): a retry of a retained batch is refused as its
    /// `Duplicate`, a stamp that does not follow as `Producer`, both before any condition is
    /// looked at; otherwise the conditions decide, and a staged batch becomes the producer's
    /// latest. A batch refused for any reason leaves the producer's state as it was: its
    /// sequence numbers are not used up. An empty batch has no sequence to check.
    pub fn check_and_stage_as(
        &mut self,
        expected_end: Option<Offset>,
        records: &[RecordInput<'_>],
        producer: Option<ProducerStamp>,
        prev_key_offsets: &mut Vec<Option<Offset>>,
    ) -> Result<Offset, Refusal> {
        let record_count =
            u32::try_from(records.len()).expect("BATCH_RECORD_COUNT_MAX fits in u32");
        let stamp = producer.filter(|_| record_count > 0);
        if let Some(stamp) = stamp {
            match self.producers.check(stamp, record_count) {
                ProducerCheck::Accept => {}
                ProducerCheck::Duplicate(original) => {
                    prev_key_offsets.clear();
                    return Err(Refusal::Duplicate(original));
                }
                ProducerCheck::Refuse(error) => {
                    prev_key_offsets.clear();
                    return Err(Refusal::Producer(error));
                }
            }
        }
        let base_offset = self.check_and_stage(expected_end, records, prev_key_offsets)?;
        if let Some(stamp) = stamp {
            self.producers.record(stamp, base_offset, record_count);
        }
        Ok(base_offset)
    }

    /// What [`Self::check_and_stage_as`] would answer now, for an append that must wait for
    /// room: `Err` only for what it will still answer when the batch is staged. A duplicate
    /// stays one (or, evicted from the producer's last batches meanwhile, is refused: never
    /// appended) and a fenced epoch stays fenced, so both are answered at once. An
    /// out-of-order sequence is not: a batch of the same producer ahead of this one in the
    /// admission queue can make it the next one by the time it is staged (Kafka's producers
    /// pipeline up to five batches), so it waits and is decided when staged. Conditions
    /// are checked only when the producer check passes, as staging would.
    pub fn check_as(
        &mut self,
        expected_end: Option<Offset>,
        records: &[RecordInput<'_>],
        producer: Option<ProducerStamp>,
    ) -> Result<(), Refusal> {
        let record_count =
            u32::try_from(records.len()).expect("BATCH_RECORD_COUNT_MAX fits in u32");
        if let Some(stamp) = producer.filter(|_| record_count > 0) {
            match self.producers.check(stamp, record_count) {
                ProducerCheck::Accept => {}
                ProducerCheck::Duplicate(original) => return Err(Refusal::Duplicate(original)),
                ProducerCheck::Refuse(error @ ProducerError::Fenced { .. }) => {
                    return Err(Refusal::Producer(error));
                }
                ProducerCheck::Refuse(ProducerError::OutOfOrder { .. }) => return Ok(()),
            }
        }
        self.check(expected_end, records).map_err(Refusal::Conflict)
    }

    /// The partition's idempotent producers.
    #[must_use]
    pub fn producers(&self) -> &ProducerTable {
        &self.producers
    }

    /// Whether a batch's conditions hold now, as [`Self::check_and_stage`] would decide,
    /// without staging it: an append that must wait for room is answered at once when it is
    /// already doomed. (It is checked again when it is staged: appends admitted before it
    /// can still make it fail.)
    pub fn check(
        &mut self,
        expected_end: Option<Offset>,
        records: &[RecordInput<'_>],
    ) -> Result<(), Conflict> {
        let base_offset = self.watermarks.appended_end;
        if let Some(expected) = expected_end
            && expected != base_offset
        {
            return Err(Conflict::EndOffset {
                expected,
                actual: base_offset,
            });
        }
        let key_of = |record_index: usize| indexed_key(&records[record_index]);
        let checked = self.look_up_batch(base_offset, records.len(), key_of, |seen| {
            let condition = records[seen.record_index].condition;
            if condition_holds(condition, seen.latest) {
                Ok(())
            } else {
                Err(seen.conflict(condition))
            }
        });
        self.finish_key_slots();
        checked
    }

    /// The shell wrote everything below `written_end`.
    pub fn advance_written(&mut self, written_end: Offset) {
        self.watermarks.advance_written(written_end);
    }

    /// The shell synced everything below `synced_end`; those records become durable and
    /// their `prev_key_offset`s are no longer needed.
    pub fn advance_synced(&mut self, synced_end: Offset) {
        let synced_count = synced_end.0.saturating_sub(self.watermarks.synced_end.0);
        self.watermarks.advance_synced(synced_end);
        let synced_count =
            usize::try_from(synced_count).expect("pending records fit in memory, so in usize");
        self.pending_prev_key_offsets.drain(..synced_count);
        self.assert_pending_matches_watermarks();
    }

    /// Latest offset of the key including pending (staged, not yet synced) records: what
    /// the next conditional append must expect. `None` if never written.
    #[must_use]
    pub fn latest(&self, key: &[u8]) -> Option<Offset> {
        self.key_index.get(key)
    }

    /// Latest *durable* offset of the key (below `synced_end`), `None` if no durable record
    /// has it: what a reader may be shown. Walks back through the pending records of the
    /// key, without I/O.
    #[must_use]
    pub fn latest_synced(&self, key: &[u8]) -> Option<Offset> {
        let synced_end = self.watermarks.synced_end;
        let mut latest = self.key_index.get(key);
        while let Some(offset) = latest
            && offset >= synced_end
        {
            let pending_index = usize::try_from(offset.0 - synced_end.0)
                .expect("pending records fit in memory, so in usize");
            latest = *self
                .pending_prev_key_offsets
                .get(pending_index)
                .expect("the pending ring covers synced_end..appended_end");
            debug_assert!(
                latest < Some(offset),
                "prev_key_offset {latest:?} not before {offset:?}"
            );
        }
        latest
    }

    /// Recovery: applies one batch read back from disk, where it is durable.
    ///
    /// `records` yields each record's key (`None`: a null key) and `prev_key_offset` in
    /// offset order.
    /// `base_offset` must equal `appended_end`, and each `prev_key_offset` must equal the
    /// key's latest offset before that record (earlier records of the batch included);
    /// otherwise the log contradicts itself and this returns an error, having changed
    /// nothing, so the caller can stop recovery at the batch before. On success all three
    /// watermarks advance to the batch's end, and a stamped batch becomes its producer's
    /// latest (the producer table is rebuilt from the log alone). Runs before any append:
    /// nothing is pending.
    pub fn recover_batch<'k>(
        &mut self,
        base_offset: Offset,
        producer: Option<ProducerStamp>,
        records: impl IntoIterator<Item = (Option<&'k [u8]>, Option<Offset>)>,
    ) -> Result<(), RecoveryError> {
        assert_eq!(
            self.watermarks.synced_end, self.watermarks.appended_end,
            "recovery applies durable batches to a partition with no pending records"
        );
        let partition = self.id;
        let appended_end = self.watermarks.appended_end;
        if base_offset != appended_end {
            return Err(RecoveryError::OffsetGap {
                partition,
                expected: appended_end,
                actual: base_offset,
            });
        }
        // Collected once per recovered batch: validating before applying needs two passes,
        // and a failed batch must leave the state as it was.
        let records: Vec<(Option<&[u8]>, Option<Offset>)> = records.into_iter().collect();
        let key_of = |record_index: usize| records[record_index].0;
        if let Some((record_index, key_size_bytes)) = records
            .iter()
            .enumerate()
            .filter_map(|(index, (key, _))| Some((index, (*key)?.len())))
            .find(|(_, key_size_bytes)| *key_size_bytes > KEY_SIZE_BYTES_MAX)
        {
            return Err(RecoveryError::KeyTooLong {
                partition,
                offset: base_offset.plus(record_index as u64),
                key_size_bytes,
                key_size_bytes_max: KEY_SIZE_BYTES_MAX,
            });
        }
        self.look_up_batch(base_offset, records.len(), key_of, |seen| {
            let prev_key_offset = records[seen.record_index].1;
            if seen.latest != prev_key_offset {
                return Err(RecoveryError::PrevKeyOffsetMismatch {
                    partition,
                    offset: base_offset.plus(seen.record_index as u64),
                    expected: seen.latest,
                    actual: prev_key_offset,
                });
            }
            Ok(())
        })?;
        self.stage_batch(base_offset, records.len(), key_of);
        if let Some(stamp) = producer
            && !records.is_empty()
        {
            let record_count =
                u32::try_from(records.len()).expect("a decoded batch's count fits in u32");
            self.producers.record(stamp, base_offset, record_count);
        }
        let end = self.watermarks.appended_end;
        self.advance_written(end);
        self.advance_synced(end);
        Ok(())
    }

    /// Number of distinct keys ever written (pending records included).
    #[must_use]
    pub fn key_count(&self) -> usize {
        self.key_index.len()
    }

    /// Heap bytes of the key index and the producer table, for the memory figures.
    #[must_use]
    pub fn key_index_memory_bytes(&self) -> usize {
        self.key_index.memory_bytes() + self.producers.memory_bytes()
    }

    /// This partition's part of a checkpoint, its batch locations left for the log to add.
    /// Staged records are included (their keys point at them), so the log takes it only
    /// when everything staged is in the group being written (`ShardLog::capture_checkpoint`).
    #[must_use]
    pub fn checkpoint(&self) -> PartitionCheckpoint {
        let mut key_entries = Vec::new();
        self.key_index.encode_entries(&mut key_entries);
        let (producer_append_count, producers) = self.producers.checkpoint();
        PartitionCheckpoint {
            id: self.id,
            end_offset: self.watermarks.appended_end,
            key_count: self.key_index.len() as u64,
            key_entries,
            producer_append_count,
            producers,
            runs: Vec::new(),
            batches: Vec::new(),
        }
    }

    /// Adds this partition to a checkpoint being written, with its sealed `runs` and
    /// `batch_count` other batch locations from `batches`: what `checkpoint` holds,
    /// written without copying it first.
    pub fn write_checkpoint(
        &self,
        writer: &mut CheckpointWriter,
        runs: &[SealedRun],
        batch_count: usize,
        batches: impl Iterator<Item = (BatchLocation, i64)>,
    ) {
        let (producer_append_count, producers) = self.producers.checkpoint();
        writer.partition(
            self.id,
            self.watermarks.appended_end,
            self.key_index.len() as u64,
            |out| self.key_index.encode_entries(out),
            producer_append_count,
            &producers,
            runs,
            batch_count,
            batches,
        );
    }

    /// The partition a checkpoint stored, as recovery would have rebuilt it from the log up
    /// to there: every watermark at its end, nothing pending.
    pub fn from_checkpoint(checkpoint: &PartitionCheckpoint) -> Result<Self, CheckpointError> {
        let key_count = usize::try_from(checkpoint.key_count)
            .map_err(|_| CheckpointError::Invalid("key count".into()))?;
        let mut state = PartitionState::new(checkpoint.id);
        state.key_index = KeyIndex::from_entries(&checkpoint.key_entries, key_count)?;
        state.producers = ProducerTable::from_checkpoint(
            checkpoint.producer_append_count,
            &checkpoint.producers,
        )?;
        let end = checkpoint.end_offset;
        state.watermarks = Watermarks {
            appended_end: end,
            written_end: end,
            synced_end: end,
        };
        Ok(state)
    }

    /// Looks up, for each record of a batch about to be staged at `base_offset`, its key's
    /// latest offset as that record will see it (pending records and earlier records of
    /// the batch included), and calls `check` with it, in record order. Stops at the first
    /// `Err` and returns it. Remembers each key's slot in `key_slots` for `stage_batch`.
    /// `key_of` returns `None` for a null key: such a record sees no latest offset and is
    /// seen by no other record.
    fn look_up_batch<'k, E>(
        &mut self,
        base_offset: Offset,
        record_count: usize,
        key_of: impl Fn(usize) -> Option<&'k [u8]> + Copy,
        mut check: impl FnMut(Seen) -> Result<(), E>,
    ) -> Result<(), E> {
        self.key_slots.clear();
        self.batch_keys.start(record_count, key_of);
        let mut checked = Ok(());
        for record_index in 0..record_count {
            let Some(key) = key_of(record_index) else {
                checked = check(Seen {
                    record_index,
                    latest: None,
                    earlier_in_batch: None,
                    latest_in_log: None,
                });
                if checked.is_err() {
                    break;
                }
                self.key_slots.push(None);
                continue;
            };
            let (seen, key_slot) = match self.batch_keys.previous_in_batch(record_index, key_of) {
                Some(previous_index) => {
                    let key_slot = self.key_slots[previous_index];
                    let seen = Seen {
                        record_index,
                        latest: Some(base_offset.plus(previous_index as u64)),
                        earlier_in_batch: Some(previous_index),
                        latest_in_log: key_slot.map(|slot| self.key_index.latest_at(slot)),
                    };
                    (seen, key_slot)
                }
                None => {
                    let key_slot = self.key_index.find(key);
                    let latest = key_slot.map(|slot| self.key_index.latest_at(slot));
                    let seen = Seen {
                        record_index,
                        latest,
                        earlier_in_batch: None,
                        latest_in_log: latest,
                    };
                    (seen, key_slot)
                }
            };
            checked = check(seen);
            if checked.is_err() {
                break;
            }
            self.key_slots.push(key_slot);
        }
        self.batch_keys.finish();
        if checked.is_err() {
            self.finish_key_slots();
        }
        checked
    }

    /// Stages a batch that `look_up_batch` just checked: points the key index at its
    /// records, keeps their `prev_key_offset`s in the pending ring, advances `appended_end`.
    fn stage_batch<'k>(
        &mut self,
        base_offset: Offset,
        record_count: usize,
        key_of: impl Fn(usize) -> Option<&'k [u8]>,
    ) {
        assert_eq!(
            base_offset, self.watermarks.appended_end,
            "a batch is staged at the end it was checked against"
        );
        assert_eq!(
            self.key_slots.len(),
            record_count,
            "every record was looked up"
        );
        for record_index in 0..record_count {
            let offset = base_offset.plus(record_index as u64);
            let previous = match (key_of(record_index), self.key_slots[record_index]) {
                (None, _) => None,
                (Some(_), Some(slot)) => Some(self.key_index.replace_latest(slot, offset)),
                // New before this batch: its first record inserts the key, later records of
                // the batch find it.
                (Some(key), None) => self.key_index.insert(key, offset),
            };
            self.pending_prev_key_offsets.push_back(previous);
        }
        self.finish_key_slots();
        self.watermarks
            .advance_appended(base_offset.plus(record_count as u64));
        self.assert_pending_matches_watermarks();
    }

    /// Forgets the slots of the batch just checked, and frees their buffer if an unusually
    /// large batch grew it.
    fn finish_key_slots(&mut self) {
        self.key_slots.clear();
        self.key_slots.shrink_to(BATCH_SCRATCH_RECORD_COUNT_MAX);
    }

    fn assert_pending_matches_watermarks(&self) {
        let pending_count = self.watermarks.appended_end.0 - self.watermarks.synced_end.0;
        assert_eq!(
            self.pending_prev_key_offsets.len() as u64,
            pending_count,
            "pending ring vs synced_end {:?}..appended_end {:?}",
            self.watermarks.synced_end,
            self.watermarks.appended_end
        );
    }
}

/// The key a record is indexed under: `None` for a null key, which is in no key's history.
fn indexed_key<'k>(record: &RecordInput<'k>) -> Option<&'k [u8]> {
    (!record.null_key).then_some(record.key)
}

/// What one record of a batch sees of its key while the batch is checked.
#[derive(Debug, Clone, Copy)]
struct Seen {
    record_index: usize,
    /// The key's latest offset as this record sees it: an earlier record of the same batch
    /// if there is one, else the log (pending records included). Conditions test this.
    latest: Option<Offset>,
    /// The earlier record of the same batch that writes the key, if any.
    earlier_in_batch: Option<usize>,
    /// The key's latest offset in the log, pending records included, this batch not.
    latest_in_log: Option<Offset>,
}

impl Seen {
    /// The conflict to report when `condition` fails. A record that fails against an
    /// earlier record of its own batch reports the key's latest offset in the log (an
    /// offset that exists) and which record of the batch wrote the key: `latest` would
    /// name an offset of the rejected batch, which nobody can read.
    fn conflict(&self, condition: KeyCondition) -> Conflict {
        Conflict::Key {
            record_index: u32::try_from(self.record_index)
                .expect("BATCH_RECORD_COUNT_MAX fits in u32"),
            condition,
            actual: self.latest_in_log,
            earlier_in_batch: self
                .earlier_in_batch
                .map(|index| u32::try_from(index).expect("BATCH_RECORD_COUNT_MAX fits in u32")),
        }
    }
}

/// Finds, for each record of a batch in turn, the latest earlier record of the same batch
/// with the same key. Small batches scan backwards; larger ones use a hash table of record
/// indexes that is kept between batches (up to `BATCH_SCRATCH_RECORD_COUNT_MAX` records)
/// so that checking a batch does not allocate.
#[derive(Debug, Default)]
struct BatchKeyScratch {
    /// For each distinct key seen so far in the batch, the index of its latest record.
    /// Used only for batches above `BATCH_LINEAR_SCAN_RECORD_COUNT_MAX` records.
    latest_record_indexes: HashTable<u32>,
    /// Randomly seeded: clients choose the keys of a batch, and a fixed seed would let
    /// them make every key collide.
    hash_builder: foldhash::fast::RandomState,
    record_count: usize,
}

impl BatchKeyScratch {
    /// Prepares for a batch of `record_count` records whose keys `key_of` returns.
    fn start<'k>(
        &mut self,
        record_count: usize,
        key_of: impl Fn(usize) -> Option<&'k [u8]> + Copy,
    ) {
        self.record_count = record_count;
        if record_count > BATCH_LINEAR_SCAN_RECORD_COUNT_MAX {
            self.latest_record_indexes.clear();
            let hash_builder = &self.hash_builder;
            self.latest_record_indexes
                .reserve(record_count, |&record_index| {
                    hash_key(
                        hash_builder,
                        key_of(record_index as usize).unwrap_or_default(),
                    )
                });
        }
    }

    /// The index of the latest record before `record_index` with the same key. Called for
    /// `record_index` = 0, 1, 2, … in order, each call remembering `record_index`; never for
    /// a null key (`key_of` `None`), which no other record's key equals.
    fn previous_in_batch<'k>(
        &mut self,
        record_index: usize,
        key_of: impl Fn(usize) -> Option<&'k [u8]> + Copy,
    ) -> Option<usize> {
        let key = key_of(record_index);
        debug_assert!(key.is_some(), "null keys are not looked up");
        if self.record_count <= BATCH_LINEAR_SCAN_RECORD_COUNT_MAX {
            return (0..record_index)
                .rev()
                .find(|&earlier_index| key_of(earlier_index) == key);
        }
        let hash = hash_key(&self.hash_builder, key.unwrap_or_default());
        let record_index_u32 =
            u32::try_from(record_index).expect("BATCH_RECORD_COUNT_MAX fits in u32");
        let found = self
            .latest_record_indexes
            .find_mut(hash, |&earlier_index| key_of(earlier_index as usize) == key);
        if let Some(latest_index) = found {
            let previous_index = *latest_index;
            *latest_index = record_index_u32;
            return Some(previous_index as usize);
        }
        let hash_builder = &self.hash_builder;
        // `start` reserved room for the whole batch, so this never rehashes.
        self.latest_record_indexes
            .insert_unique(hash, record_index_u32, |&earlier_index| {
                hash_key(
                    hash_builder,
                    key_of(earlier_index as usize).unwrap_or_default(),
                )
            });
        None
    }

    /// Ends the batch; drops a table grown by an unusually large batch.
    fn finish(&mut self) {
        if self.record_count > BATCH_SCRATCH_RECORD_COUNT_MAX {
            self.latest_record_indexes = HashTable::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::core::KeyCondition::{self, Any, At, KeyExists, NoKey};
    use crate::core::producer::{last_sequence, next_sequence};

    fn record(key: &[u8], condition: KeyCondition) -> RecordInput<'_> {
        RecordInput {
            key,
            value: &[0u8; 100],
            headers: &[],
            condition,
            ..RecordInput::default()
        }
    }

    fn null_key_record() -> RecordInput<'static> {
        RecordInput {
            value: b"v",
            null_key: true,
            ..RecordInput::default()
        }
    }

    fn stage(
        state: &mut PartitionState,
        expected_end: Option<Offset>,
        records: &[RecordInput<'_>],
    ) -> Result<(Offset, Vec<Option<Offset>>), Conflict> {
        let mut prev_key_offsets = vec![Some(Offset(999))];
        let result = state.check_and_stage(expected_end, records, &mut prev_key_offsets);
        if result.is_err() {
            assert!(
                prev_key_offsets.is_empty(),
                "a rejected batch leaves no prev_key_offsets"
            );
        }
        result.map(|base_offset| (base_offset, prev_key_offsets))
    }

    /// A partition holding `k` at 0 and 2 and `j` at 1, all synced.
    fn synced_state() -> PartitionState {
        let mut state = PartitionState::new(PartitionId(7));
        stage(
            &mut state,
            None,
            &[
                record(b"k", NoKey),
                record(b"j", NoKey),
                record(b"k", At(Offset(0))),
            ],
        )
        .unwrap();
        state.advance_written(Offset(3));
        state.advance_synced(Offset(3));
        state
    }

    #[test]
    fn null_keys_are_not_indexed_and_never_meet_the_empty_key() {
        let mut state = PartitionState::new(PartitionId(0));
        let (base_offset, prev_key_offsets) = stage(
            &mut state,
            None,
            &[
                null_key_record(),
                record(b"", NoKey),
                null_key_record(),
                record(b"", At(Offset(1))),
                null_key_record(),
            ],
        )
        .unwrap();
        assert_eq!(base_offset, Offset(0));
        assert_eq!(
            prev_key_offsets,
            vec![None, None, None, Some(Offset(1)), None]
        );
        assert_eq!(state.key_count(), 1, "only the empty key is indexed");
        assert_eq!(state.latest(b""), Some(Offset(3)));
        state.advance_written(Offset(5));
        state.advance_synced(Offset(5));
        assert_eq!(state.latest_synced(b""), Some(Offset(3)));

        // A large batch goes through the scratch table: null keys stay out of it too.
        let mut records = vec![null_key_record(); 40];
        records[20] = record(b"", At(Offset(3)));
        records[30] = record(b"", At(Offset(5 + 20)));
        let (_, prev_key_offsets) = stage(&mut state, None, &records).unwrap();
        assert_eq!(prev_key_offsets[20], Some(Offset(3)));
        assert_eq!(prev_key_offsets[30], Some(Offset(25)));
        assert_eq!(
            prev_key_offsets
                .iter()
                .filter(|prev| prev.is_some())
                .count(),
            2
        );
        assert_eq!(state.latest(b""), Some(Offset(35)));

        let mut recovered = PartitionState::new(PartitionId(0));
        recovered
            .recover_batch(
                Offset(0),
                None,
                [
                    (None, None),
                    (Some(&b""[..]), None),
                    (None, None),
                    (Some(&b""[..]), Some(Offset(1))),
                    (None, None),
                ],
            )
            .unwrap();
        assert_eq!(recovered.latest(b""), Some(Offset(3)));
        assert_eq!(recovered.key_count(), 1);
    }

    #[test]
    fn any_accepts_new_and_written_keys() {
        let mut state = synced_state();
        assert_eq!(
            stage(&mut state, None, &[record(b"new", Any)]).unwrap(),
            (Offset(3), vec![None])
        );
        assert_eq!(
            stage(&mut state, None, &[record(b"k", Any)]).unwrap(),
            (Offset(4), vec![Some(Offset(2))])
        );
    }

    #[test]
    fn no_key_accepts_a_new_key_and_rejects_a_written_one() {
        let mut state = synced_state();
        assert_eq!(
            stage(&mut state, None, &[record(b"new", NoKey)]).unwrap().0,
            Offset(3)
        );
        assert_eq!(
            stage(&mut state, None, &[record(b"k", NoKey)]),
            Err(Conflict::Key {
                record_index: 0,
                condition: NoKey,
                actual: Some(Offset(2)),
                earlier_in_batch: None,
            })
        );
    }

    #[test]
    fn key_exists_accepts_a_written_key_and_rejects_a_new_one() {
        let mut state = synced_state();
        assert_eq!(
            stage(&mut state, None, &[record(b"j", KeyExists)])
                .unwrap()
                .1,
            vec![Some(Offset(1))]
        );
        assert_eq!(
            stage(&mut state, None, &[record(b"new", KeyExists)]),
            Err(Conflict::Key {
                record_index: 0,
                condition: KeyExists,
                actual: None,
                earlier_in_batch: None,
            })
        );
    }

    #[test]
    fn at_accepts_the_current_offset_and_rejects_a_stale_one() {
        let mut state = synced_state();
        assert_eq!(
            stage(&mut state, None, &[record(b"k", At(Offset(0)))]),
            Err(Conflict::Key {
                record_index: 0,
                condition: At(Offset(0)),
                actual: Some(Offset(2)),
                earlier_in_batch: None,
            })
        );
        assert_eq!(
            stage(&mut state, None, &[record(b"new", At(Offset(0)))]),
            Err(Conflict::Key {
                record_index: 0,
                condition: At(Offset(0)),
                actual: None,
                earlier_in_batch: None,
            })
        );
        assert_eq!(
            stage(&mut state, None, &[record(b"k", At(Offset(2)))])
                .unwrap()
                .0,
            Offset(3)
        );
        // Offset 2 is now stale too: two writers that read the same state, one wins.
        assert_eq!(
            stage(&mut state, None, &[record(b"k", At(Offset(2)))]),
            Err(Conflict::Key {
                record_index: 0,
                condition: At(Offset(2)),
                actual: Some(Offset(3)),
                earlier_in_batch: None,
            })
        );
    }

    #[test]
    fn records_of_a_batch_see_the_earlier_records_on_the_same_key() {
        let mut state = PartitionState::new(PartitionId(0));
        let (base_offset, prev_key_offsets) = stage(
            &mut state,
            None,
            &[
                record(b"k", NoKey),
                record(b"k", At(Offset(0))),
                record(b"k", At(Offset(1))),
            ],
        )
        .unwrap();
        assert_eq!(base_offset, Offset(0));
        assert_eq!(
            prev_key_offsets,
            vec![None, Some(Offset(0)), Some(Offset(1))]
        );
        assert_eq!(state.latest(b"k"), Some(Offset(2)));

        assert_eq!(
            stage(
                &mut state,
                None,
                &[record(b"m", NoKey), record(b"m", NoKey)]
            ),
            Err(Conflict::Key {
                record_index: 1,
                condition: NoKey,
                actual: None,
                earlier_in_batch: Some(0),
            }),
            "m is in no record of the log: the conflict is with record 0 of the batch"
        );
        assert_eq!(state.latest(b"m"), None);
    }

    #[test]
    fn a_conflict_in_the_middle_of_a_batch_stages_nothing() {
        let mut state = synced_state();
        let before_memory_bytes = state.key_index_memory_bytes();
        let conflict = stage(
            &mut state,
            Some(Offset(3)),
            &[
                record(b"a", NoKey),
                record(b"k", Any),
                record(b"j", At(Offset(0))),
                record(b"b", Any),
            ],
        );
        assert_eq!(
            conflict,
            Err(Conflict::Key {
                record_index: 2,
                condition: At(Offset(0)),
                actual: Some(Offset(1)),
                earlier_in_batch: None,
            })
        );
        assert_eq!(state.appended_end(), Offset(3));
        assert_eq!(*state.watermarks(), synced_state().watermarks);
        assert_eq!(state.key_count(), 2);
        assert_eq!(state.key_index_memory_bytes(), before_memory_bytes);
        assert_eq!(state.latest(b"a"), None);
        assert_eq!(state.latest(b"k"), Some(Offset(2)));
        assert_eq!(state.latest(b"j"), Some(Offset(1)));
        assert_eq!(
            stage(&mut state, Some(Offset(3)), &[record(b"a", NoKey)])
                .unwrap()
                .0,
            Offset(3)
        );
    }

    #[test]
    fn conditions_see_pending_records() {
        let mut state = PartitionState::new(PartitionId(0));
        stage(&mut state, None, &[record(b"k", NoKey)]).unwrap();
        // Not written, not synced: the next conditional append must still see it.
        assert_eq!(state.synced_end(), Offset(0));
        assert_eq!(
            stage(&mut state, None, &[record(b"k", NoKey)]),
            Err(Conflict::Key {
                record_index: 0,
                condition: NoKey,
                actual: Some(Offset(0)),
                earlier_in_batch: None,
            })
        );
        assert_eq!(
            stage(&mut state, None, &[record(b"k", At(Offset(0)))])
                .unwrap()
                .0,
            Offset(1)
        );
        assert_eq!(state.latest(b"k"), Some(Offset(1)));
    }

    #[test]
    fn expected_end_offset_counts_pending_records() {
        let mut state = PartitionState::new(PartitionId(0));
        assert_eq!(
            stage(&mut state, Some(Offset(1)), &[record(b"k", Any)]),
            Err(Conflict::EndOffset {
                expected: Offset(1),
                actual: Offset(0)
            })
        );
        assert_eq!(
            stage(
                &mut state,
                Some(Offset(0)),
                &[record(b"k", Any), record(b"j", Any)]
            )
            .unwrap()
            .0,
            Offset(0)
        );
        assert_eq!(
            stage(&mut state, Some(Offset(0)), &[record(b"k", Any)]),
            Err(Conflict::EndOffset {
                expected: Offset(0),
                actual: Offset(2)
            })
        );
        assert_eq!(
            stage(&mut state, Some(Offset(2)), &[record(b"k", Any)])
                .unwrap()
                .0,
            Offset(2)
        );
        assert_eq!(state.appended_end(), Offset(3));
    }

    #[test]
    fn expected_end_offset_is_checked_before_key_conditions() {
        let mut state = synced_state();
        assert_eq!(
            stage(&mut state, Some(Offset(9)), &[record(b"k", NoKey)]),
            Err(Conflict::EndOffset {
                expected: Offset(9),
                actual: Offset(3)
            })
        );
    }

    #[test]
    fn an_empty_batch_changes_nothing_and_returns_the_end() {
        let mut state = synced_state();
        assert_eq!(stage(&mut state, None, &[]).unwrap(), (Offset(3), vec![]));
        assert_eq!(
            stage(&mut state, Some(Offset(2)), &[]),
            Err(Conflict::EndOffset {
                expected: Offset(2),
                actual: Offset(3)
            })
        );
        assert_eq!(state.appended_end(), Offset(3));
    }

    #[test]
    fn latest_synced_ignores_pending_records_until_synced() {
        let mut state = synced_state();
        stage(
            &mut state,
            None,
            &[record(b"k", At(Offset(2))), record(b"n", NoKey)],
        )
        .unwrap();
        stage(&mut state, None, &[record(b"k", At(Offset(3)))]).unwrap();
        assert_eq!(
            (state.latest(b"k"), state.latest_synced(b"k")),
            (Some(Offset(5)), Some(Offset(2)))
        );
        assert_eq!(
            (state.latest(b"n"), state.latest_synced(b"n")),
            (Some(Offset(4)), None)
        );
        assert_eq!(state.latest_synced(b"j"), Some(Offset(1)));

        state.advance_written(Offset(6));
        assert_eq!(
            state.latest_synced(b"k"),
            Some(Offset(2)),
            "written is not durable"
        );
        state.advance_synced(Offset(4));
        assert_eq!(state.latest_synced(b"k"), Some(Offset(3)));
        assert_eq!(state.latest_synced(b"n"), None);
        state.advance_synced(Offset(6));
        assert_eq!(state.latest_synced(b"k"), Some(Offset(5)));
        assert_eq!(state.latest_synced(b"n"), Some(Offset(4)));
        assert_eq!(state.latest_synced(b"never"), None);
    }

    #[test]
    #[should_panic(expected = "synced past written")]
    fn syncing_past_written_is_a_bug() {
        let mut state = synced_state();
        stage(&mut state, None, &[record(b"k", Any)]).unwrap();
        state.advance_synced(Offset(4));
    }

    #[test]
    #[should_panic(expected = "written past appended")]
    fn writing_past_appended_is_a_bug() {
        let mut state = synced_state();
        state.advance_written(Offset(4));
    }

    #[test]
    fn a_large_batch_finds_duplicate_keys_through_the_scratch_table() {
        let keys: Vec<[u8; 2]> = (0u8..40).map(|id| [b'k', id % 7]).collect();
        let mut records: Vec<RecordInput<'_>> = keys.iter().map(|key| record(key, Any)).collect();
        let mut state = PartitionState::new(PartitionId(0));
        let (_, prev_key_offsets) = stage(&mut state, None, &records).unwrap();
        for (index, prev_key_offset) in prev_key_offsets.iter().enumerate() {
            let expected = index.checked_sub(7).map(|previous| Offset(previous as u64));
            assert_eq!(*prev_key_offset, expected, "record {index}");
        }
        // The same batch again, with the last record expecting its own batch's record 32.
        records[39].condition = At(Offset(40 + 32));
        assert_eq!(
            stage(&mut state, None, &records).unwrap().1[39],
            Some(Offset(40 + 32))
        );
        records[39].condition = At(Offset(80 + 31));
        assert_eq!(
            stage(&mut state, None, &records),
            Err(Conflict::Key {
                record_index: 39,
                condition: At(Offset(111)),
                actual: Some(Offset(79)),
                earlier_in_batch: Some(32),
            })
        );
    }

    #[test]
    fn a_batch_above_the_scratch_bound_is_checked_exactly_and_frees_the_scratch() {
        let record_count = BATCH_SCRATCH_RECORD_COUNT_MAX + 500;
        let keys: Vec<[u8; 4]> = (0..record_count as u32)
            .map(|id| (id % 600).to_le_bytes())
            .collect();
        let records: Vec<RecordInput<'_>> = keys.iter().map(|key| record(key, Any)).collect();
        let mut state = PartitionState::new(PartitionId(0));
        let (_, prev_key_offsets) = stage(&mut state, None, &records).unwrap();
        for (index, prev_key_offset) in prev_key_offsets.iter().enumerate() {
            let expected = index
                .checked_sub(600)
                .map(|previous| Offset(previous as u64));
            assert_eq!(*prev_key_offset, expected, "record {index}");
        }
        assert_eq!(state.batch_keys.latest_record_indexes.capacity(), 0);
        assert!(state.key_slots.capacity() <= BATCH_SCRATCH_RECORD_COUNT_MAX);
        assert_eq!(state.key_count(), 600);
    }

    #[test]
    fn recover_batch_rebuilds_the_same_state() {
        let original = synced_state();
        let mut recovered = PartitionState::new(PartitionId(7));
        let batch: [(Option<&[u8]>, Option<Offset>); 3] = [
            (Some(b"k"), None),
            (Some(b"j"), None),
            (Some(b"k"), Some(Offset(0))),
        ];
        recovered.recover_batch(Offset(0), None, batch).unwrap();
        assert_eq!(recovered.watermarks(), original.watermarks());
        for key in [&b"k"[..], b"j", b"x"] {
            assert_eq!(recovered.latest(key), original.latest(key), "key {key:?}");
            assert_eq!(
                recovered.latest_synced(key),
                original.latest_synced(key),
                "key {key:?}"
            );
        }
        recovered
            .recover_batch(Offset(3), None, [(Some(&b"j"[..]), Some(Offset(1)))])
            .unwrap();
        assert_eq!(recovered.latest(b"j"), Some(Offset(3)));
        assert_eq!(recovered.synced_end(), Offset(4));
    }

    #[test]
    fn recover_batch_rejects_a_log_that_contradicts_itself() {
        let mut state = synced_state();
        let before = (*state.watermarks(), state.key_count(), state.latest(b"k"));
        assert_eq!(
            state.recover_batch(Offset(4), None, [(Some(&b"k"[..]), Some(Offset(2)))]),
            Err(RecoveryError::OffsetGap {
                partition: PartitionId(7),
                expected: Offset(3),
                actual: Offset(4)
            })
        );
        assert_eq!(
            state.recover_batch(
                Offset(3),
                None,
                [
                    (Some(&b"new"[..]), None),
                    (Some(&b"k"[..]), Some(Offset(0)))
                ]
            ),
            Err(RecoveryError::PrevKeyOffsetMismatch {
                partition: PartitionId(7),
                offset: Offset(4),
                expected: Some(Offset(2)),
                actual: Some(Offset(0)),
            })
        );
        assert_eq!(
            state.recover_batch(
                Offset(3),
                None,
                [(Some(&b"new"[..]), None), (Some(&b"new"[..]), None)]
            ),
            Err(RecoveryError::PrevKeyOffsetMismatch {
                partition: PartitionId(7),
                offset: Offset(4),
                expected: Some(Offset(3)),
                actual: None,
            })
        );
        let long_key = vec![0u8; KEY_SIZE_BYTES_MAX + 1];
        assert_eq!(
            state.recover_batch(Offset(3), None, [(Some(&long_key[..]), None)]),
            Err(RecoveryError::KeyTooLong {
                partition: PartitionId(7),
                offset: Offset(3),
                key_size_bytes: KEY_SIZE_BYTES_MAX + 1,
                key_size_bytes_max: KEY_SIZE_BYTES_MAX,
            })
        );
        assert_eq!(
            (*state.watermarks(), state.key_count(), state.latest(b"k")),
            before
        );
        assert_eq!(state.latest(b"new"), None);
    }

    // ---- Idempotent producers ----

    fn stamped(producer_id: i64, epoch: i16, base_sequence: i32) -> Option<ProducerStamp> {
        Some(ProducerStamp {
            producer_id,
            epoch,
            base_sequence,
        })
    }

    fn stage_as(
        state: &mut PartitionState,
        expected_end: Option<Offset>,
        records: &[RecordInput<'_>],
        producer: Option<ProducerStamp>,
    ) -> Result<Offset, Refusal> {
        let mut prev_key_offsets = Vec::new();
        state.check_and_stage_as(expected_end, records, producer, &mut prev_key_offsets)
    }

    #[test]
    fn a_retried_conditional_batch_is_its_own_duplicate_not_a_conflict() {
        let mut state = PartitionState::new(PartitionId(0));
        let batch = [record(b"k", NoKey), record(b"j", NoKey)];
        assert_eq!(
            stage_as(&mut state, Some(Offset(0)), &batch, stamped(7, 0, 0)),
            Ok(Offset(0))
        );
        // The same batch again: its conditions now fail (k and j exist, the end moved), but
        // the producer check comes first and finds the original, pending or not.
        let original = ProducerBatch {
            first_sequence: 0,
            last_sequence: 1,
            base_offset: Offset(0),
            record_count: 2,
        };
        assert_eq!(
            stage_as(&mut state, Some(Offset(0)), &batch, stamped(7, 0, 0)),
            Err(Refusal::Duplicate(original))
        );
        assert_eq!(
            state.check_as(Some(Offset(0)), &batch, stamped(7, 0, 0)),
            Err(Refusal::Duplicate(original))
        );
        state.advance_written(Offset(2));
        state.advance_synced(Offset(2));
        assert_eq!(
            stage_as(&mut state, Some(Offset(0)), &batch, stamped(7, 0, 0)),
            Err(Refusal::Duplicate(original))
        );
        assert_eq!(state.appended_end(), Offset(2));
        // Without a stamp it is a new batch, and its conditions decide.
        assert!(matches!(
            stage_as(&mut state, Some(Offset(0)), &batch, None),
            Err(Refusal::Conflict(Conflict::EndOffset { .. }))
        ));
    }

    #[test]
    fn a_refused_batch_does_not_use_up_its_sequence() {
        let mut state = PartitionState::new(PartitionId(0));
        assert_eq!(
            stage_as(&mut state, None, &[record(b"k", NoKey)], stamped(1, 0, 0)),
            Ok(Offset(0))
        );
        assert!(matches!(
            stage_as(&mut state, None, &[record(b"k", NoKey)], stamped(1, 0, 1)),
            Err(Refusal::Conflict(_))
        ));
        // Sequence 1 was not used: the producer may send it again, with what holds now.
        assert_eq!(
            stage_as(
                &mut state,
                None,
                &[record(b"k", At(Offset(0)))],
                stamped(1, 0, 1)
            ),
            Ok(Offset(1))
        );
        assert_eq!(
            stage_as(&mut state, None, &[record(b"k", Any)], stamped(1, 0, 5)),
            Err(Refusal::Producer(ProducerError::OutOfOrder {
                producer_id: 1,
                base_sequence: 5,
                expected_sequence: 2
            }))
        );
        assert_eq!(
            stage_as(&mut state, None, &[record(b"k", Any)], stamped(1, 0, 0)),
            Err(Refusal::Duplicate(ProducerBatch {
                first_sequence: 0,
                last_sequence: 0,
                base_offset: Offset(0),
                record_count: 1
            }))
        );
    }

    #[test]
    fn a_waiting_batch_is_answered_early_only_when_staging_would_agree() {
        let mut state = PartitionState::new(PartitionId(0));
        stage_as(&mut state, None, &[record(b"k", Any)], stamped(1, 2, 0)).unwrap();
        // Out of order now, but a batch queued ahead of it may fill the gap: not yet.
        assert_eq!(
            state.check_as(None, &[record(b"k", Any)], stamped(1, 2, 2)),
            Ok(())
        );
        // Fenced stays fenced.
        assert!(matches!(
            state.check_as(None, &[record(b"k", Any)], stamped(1, 1, 1)),
            Err(Refusal::Producer(ProducerError::Fenced { .. }))
        ));
        // A failed condition of an out-of-order batch waits too: staging decides which.
        assert_eq!(
            state.check_as(None, &[record(b"k", NoKey)], stamped(1, 2, 2)),
            Ok(())
        );
        assert!(matches!(
            state.check_as(None, &[record(b"k", NoKey)], stamped(1, 2, 1)),
            Err(Refusal::Conflict(_))
        ));
    }

    #[test]
    fn recovery_rebuilds_the_producers_from_the_log() {
        let mut state = PartitionState::new(PartitionId(0));
        let batches = [
            (stamped(1, 0, 0), 2),
            (None, 1),
            (stamped(2, 0, 0), 1),
            (stamped(1, 0, 2), 3),
            (stamped(1, 1, 0), 1),
        ];
        let mut recovered = PartitionState::new(PartitionId(0));
        for (producer, record_count) in batches {
            let records = vec![record(b"k", Any); record_count];
            let base_offset = stage_as(&mut state, None, &records, producer).unwrap();
            let keys = (0..record_count).map(|index| {
                let prev = base_offset.plus(index as u64).0.checked_sub(1).map(Offset);
                (Some(&b"k"[..]), prev)
            });
            recovered
                .recover_batch(base_offset, producer, keys)
                .unwrap();
        }
        for producer_id in [1, 2, 3] {
            assert_eq!(
                recovered.producers().producer(producer_id),
                state.producers().producer(producer_id),
                "producer {producer_id}"
            );
        }
        assert_eq!(recovered.producers().producer(1).unwrap().0, 1);
    }

    // ---- Property test against a reference model ----

    const KEY_COUNT: u8 = 5;

    /// Key 0 is the empty key; the others are one or two bytes, except `NULL_KEY_ID`.
    fn key_of(key_id: u8) -> Vec<u8> {
        match key_id {
            0 => Vec::new(),
            1 => vec![1],
            NULL_KEY_ID => NULL_KEY_MODEL.to_vec(),
            id => vec![b'k', id],
        }
    }

    /// A record with a null key (condition Any, whatever was drawn).
    const NULL_KEY_ID: u8 = KEY_COUNT;

    /// How the model stores a null key: no real key of the test is this long.
    const NULL_KEY_MODEL: &[u8] = b"(null key)";

    #[derive(Clone, Copy, Debug)]
    enum ConditionChoice {
        Any,
        NoKey,
        KeyExists,
        /// At(the key's latest before the batch + delta), or At(|delta|) for a new key.
        AtNearLatest(i8),
        /// At(the offset record `n % len` of this batch will get).
        AtInBatch(u8),
    }

    #[derive(Clone, Debug)]
    enum Op {
        Append {
            expected_end_delta: Option<i8>,
            records: Vec<(u8, ConditionChoice)>,
        },
        AdvanceWritten(u8),
        AdvanceSynced(u8),
    }

    fn condition_strategy() -> impl Strategy<Value = ConditionChoice> {
        prop_oneof![
            1 => Just(ConditionChoice::Any),
            2 => Just(ConditionChoice::NoKey),
            1 => Just(ConditionChoice::KeyExists),
            4 => prop_oneof![3 => Just(0i8), 1 => -2i8..=2].prop_map(ConditionChoice::AtNearLatest),
            1 => any::<u8>().prop_map(ConditionChoice::AtInBatch),
        ]
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        let records = prop_oneof![
            8 => prop::collection::vec((0..=NULL_KEY_ID, condition_strategy()), 0..5),
            1 => prop::collection::vec((0..=NULL_KEY_ID, condition_strategy()), 15..40),
        ];
        let expected_end_delta =
            prop_oneof![2 => Just(None), 2 => Just(Some(0i8)), 1 => (-2i8..=2).prop_map(Some)];
        prop_oneof![
            4 => (expected_end_delta, records)
                .prop_map(|(expected_end_delta, records)| Op::Append { expected_end_delta, records }),
            1 => (0u8..6).prop_map(Op::AdvanceWritten),
            1 => (0u8..6).prop_map(Op::AdvanceSynced),
        ]
    }

    /// The obvious implementation: every record in a `Vec`, a map of latest offsets.
    #[derive(Default)]
    struct Model {
        latest: BTreeMap<Vec<u8>, u64>,
        /// Key and prev_key_offset of every appended record, by offset.
        records: Vec<(Vec<u8>, Option<u64>)>,
        batch_base_offsets: Vec<u64>,
        written_end: u64,
        synced_end: u64,
    }

    impl Model {
        fn append(
            &mut self,
            expected_end: Option<u64>,
            batch: &[(Vec<u8>, KeyCondition)],
        ) -> Result<(u64, Vec<Option<Offset>>), Conflict> {
            let end = self.records.len() as u64;
            if let Some(expected) = expected_end
                && expected != end
            {
                return Err(Conflict::EndOffset {
                    expected: Offset(expected),
                    actual: Offset(end),
                });
            }
            let mut latest = self.latest.clone();
            let mut prev_key_offsets = Vec::new();
            for (index, (key, condition)) in batch.iter().enumerate() {
                if key == NULL_KEY_MODEL {
                    prev_key_offsets.push(None);
                    continue;
                }
                let actual = latest.get(key).copied().map(Offset);
                let holds = match condition {
                    KeyCondition::Any => true,
                    KeyCondition::NoKey => actual.is_none(),
                    KeyCondition::KeyExists => actual.is_some(),
                    KeyCondition::At(offset) => actual == Some(*offset),
                };
                if !holds {
                    let earlier_in_batch = batch[..index]
                        .iter()
                        .rposition(|(earlier_key, _)| earlier_key == key)
                        .map(|earlier| earlier as u32);
                    return Err(Conflict::Key {
                        record_index: index as u32,
                        condition: *condition,
                        actual: self.latest.get(key).copied().map(Offset),
                        earlier_in_batch,
                    });
                }
                prev_key_offsets.push(actual);
                latest.insert(key.clone(), end + index as u64);
            }
            for ((key, _), prev_key_offset) in batch.iter().zip(&prev_key_offsets) {
                self.records
                    .push((key.clone(), prev_key_offset.map(|offset| offset.0)));
            }
            if !batch.is_empty() {
                self.batch_base_offsets.push(end);
            }
            self.latest = latest;
            Ok((end, prev_key_offsets))
        }

        fn latest_below(&self, key: &[u8], end: u64) -> Option<Offset> {
            self.records[..end as usize]
                .iter()
                .rposition(|(record_key, _)| record_key == key)
                .map(|offset| Offset(offset as u64))
        }
    }

    fn resolve_condition(
        model: &Model,
        key: &[u8],
        choice: ConditionChoice,
        batch_len: usize,
    ) -> KeyCondition {
        match choice {
            ConditionChoice::Any => Any,
            ConditionChoice::NoKey => NoKey,
            ConditionChoice::KeyExists => KeyExists,
            ConditionChoice::AtNearLatest(delta) => match model.latest.get(key) {
                Some(&latest) => At(Offset(latest.saturating_add_signed(i64::from(delta)))),
                None => At(Offset(u64::from(delta.unsigned_abs()))),
            },
            ConditionChoice::AtInBatch(index) => At(Offset(
                model.records.len() as u64 + u64::from(index) % batch_len as u64,
            )),
        }
    }

    fn assert_same_answers(state: &PartitionState, model: &Model) {
        assert_eq!(state.appended_end(), Offset(model.records.len() as u64));
        assert_eq!(state.synced_end(), Offset(model.synced_end));
        assert_eq!(state.key_count(), model.latest.len());
        assert_eq!(
            state.latest(NULL_KEY_MODEL),
            None,
            "null keys are not indexed"
        );
        // Every key the ops write, and one they never do.
        for key in (0..KEY_COUNT).map(key_of).chain([vec![b'k', 200]]) {
            let appended_end = model.records.len() as u64;
            assert_eq!(
                state.latest(&key),
                model.latest_below(&key, appended_end),
                "latest {key:?}"
            );
            assert_eq!(
                state.latest_synced(&key),
                model.latest_below(&key, model.synced_end),
                "latest_synced {key:?}"
            );
        }
    }

    fn run_ops(ops: &[Op]) {
        let mut state = PartitionState::new(PartitionId(3));
        let mut model = Model::default();
        let mut prev_key_offsets = Vec::new();
        for op in ops {
            match op {
                Op::Append {
                    expected_end_delta,
                    records,
                } => {
                    let expected_end = expected_end_delta.map(|delta| {
                        (model.records.len() as u64).saturating_add_signed(i64::from(delta))
                    });
                    let keys: Vec<Vec<u8>> =
                        records.iter().map(|(key_id, _)| key_of(*key_id)).collect();
                    let batch: Vec<(Vec<u8>, KeyCondition)> = keys
                        .iter()
                        .zip(records)
                        .map(|(key, (_, choice))| {
                            (
                                key.clone(),
                                resolve_condition(&model, key, *choice, records.len()),
                            )
                        })
                        .collect();
                    let batch: Vec<(Vec<u8>, KeyCondition)> = batch
                        .into_iter()
                        .map(|(key, condition)| {
                            let condition = if key == NULL_KEY_MODEL {
                                Any
                            } else {
                                condition
                            };
                            (key, condition)
                        })
                        .collect();
                    let inputs: Vec<RecordInput<'_>> = batch
                        .iter()
                        .map(|(key, condition)| {
                            if key == NULL_KEY_MODEL {
                                null_key_record()
                            } else {
                                record(key, *condition)
                            }
                        })
                        .collect();
                    let actual = state
                        .check_and_stage(expected_end.map(Offset), &inputs, &mut prev_key_offsets)
                        .map(|base_offset| (base_offset.0, prev_key_offsets.clone()));
                    let expected = model.append(expected_end, &batch);
                    assert_eq!(actual, expected, "batch {batch:?}");
                }
                Op::AdvanceWritten(count) => {
                    model.written_end =
                        (model.written_end + u64::from(*count)).min(model.records.len() as u64);
                    state.advance_written(Offset(model.written_end));
                }
                Op::AdvanceSynced(count) => {
                    model.synced_end =
                        (model.synced_end + u64::from(*count)).min(model.written_end);
                    state.advance_synced(Offset(model.synced_end));
                }
            }
            assert_same_answers(&state, &model);
        }

        // Recovery from the log the model holds rebuilds the same answers, all durable.
        let mut recovered = PartitionState::new(PartitionId(3));
        let batch_ends = model
            .batch_base_offsets
            .iter()
            .skip(1)
            .copied()
            .chain([model.records.len() as u64]);
        for (base_offset, end) in model.batch_base_offsets.iter().copied().zip(batch_ends) {
            let batch = model.records[base_offset as usize..end as usize]
                .iter()
                .map(|(key, prev_key_offset)| {
                    let key = (key != NULL_KEY_MODEL).then_some(key.as_slice());
                    (key, prev_key_offset.map(Offset))
                });
            recovered
                .recover_batch(Offset(base_offset), None, batch)
                .unwrap();
        }
        model.written_end = model.records.len() as u64;
        model.synced_end = model.records.len() as u64;
        assert_same_answers(&recovered, &model);
    }

    // ---- Producers against a reference model ----

    #[derive(Clone, Copy, Debug)]
    enum EpochChoice {
        Same,
        Newer,
        Older,
    }

    #[derive(Clone, Copy, Debug)]
    enum SequenceChoice {
        Next,
        /// The first sequence of the producer's batch this many back (a retry).
        Retry(u8),
        Zero,
        Near(i8),
    }

    #[derive(Clone, Debug)]
    enum ProducerOp {
        Append {
            producer_id: i64,
            epoch: EpochChoice,
            sequence: SequenceChoice,
            record_count: u32,
            wrong_end: bool,
        },
        Sync,
    }

    fn producer_op_strategy() -> impl Strategy<Value = ProducerOp> {
        let epoch = prop_oneof![
            8 => Just(EpochChoice::Same),
            1 => Just(EpochChoice::Newer),
            1 => Just(EpochChoice::Older),
        ];
        let sequence = prop_oneof![
            6 => Just(SequenceChoice::Next),
            3 => (0u8..7).prop_map(SequenceChoice::Retry),
            1 => Just(SequenceChoice::Zero),
            1 => (-3i8..=3).prop_map(SequenceChoice::Near),
        ];
        prop_oneof![
            6 => (0i64..3, epoch, sequence, 1u32..4, prop::bool::weighted(0.1)).prop_map(
                |(producer_id, epoch, sequence, record_count, wrong_end)| ProducerOp::Append {
                    producer_id, epoch, sequence, record_count, wrong_end,
                }
            ),
            1 => Just(ProducerOp::Sync),
        ]
    }

    /// The obvious producer bookkeeping: every batch of the current epoch, kept forever.
    #[derive(Default)]
    struct ProducerModel {
        /// Per producer: its epoch and all its batches of that epoch, oldest first.
        producers: BTreeMap<i64, (i16, Vec<ProducerBatch>)>,
        end: u64,
        /// Every appended batch: its stamp, base offset and record count.
        log: Vec<(Option<ProducerStamp>, u64, u32)>,
    }

    impl ProducerModel {
        fn append(
            &mut self,
            stamp: ProducerStamp,
            record_count: u32,
            wrong_end: bool,
        ) -> Result<Offset, Refusal> {
            let out_of_order = |expected_sequence| {
                Err(Refusal::Producer(ProducerError::OutOfOrder {
                    producer_id: stamp.producer_id,
                    base_sequence: stamp.base_sequence,
                    expected_sequence,
                }))
            };
            let last = last_sequence(stamp.base_sequence, record_count);
            match self.producers.get(&stamp.producer_id) {
                None if stamp.base_sequence != 0 => return out_of_order(0),
                None => {}
                Some((epoch, _)) if stamp.epoch < *epoch => {
                    return Err(Refusal::Producer(ProducerError::Fenced {
                        producer_id: stamp.producer_id,
                        epoch: stamp.epoch,
                        current_epoch: *epoch,
                    }));
                }
                Some((epoch, _)) if stamp.epoch > *epoch && stamp.base_sequence != 0 => {
                    return out_of_order(0);
                }
                Some((epoch, _)) if stamp.epoch > *epoch => {}
                Some((_, batches)) => {
                    let retained = &batches[batches.len().saturating_sub(5)..];
                    if let Some(original) = retained.iter().find(|batch| {
                        batch.first_sequence == stamp.base_sequence && batch.last_sequence == last
                    }) {
                        return Err(Refusal::Duplicate(*original));
                    }
                    let expected = next_sequence(batches.last().unwrap().last_sequence);
                    if stamp.base_sequence != expected {
                        return out_of_order(expected);
                    }
                }
            }
            if wrong_end {
                return Err(Refusal::Conflict(Conflict::EndOffset {
                    expected: Offset(self.end + 1),
                    actual: Offset(self.end),
                }));
            }
            let base_offset = self.end;
            self.end += u64::from(record_count);
            let batch = ProducerBatch {
                first_sequence: stamp.base_sequence,
                last_sequence: last,
                base_offset: Offset(base_offset),
                record_count,
            };
            let entry = self
                .producers
                .entry(stamp.producer_id)
                .or_insert((stamp.epoch, Vec::new()));
            if entry.0 != stamp.epoch {
                *entry = (stamp.epoch, Vec::new());
            }
            entry.1.push(batch);
            self.log.push((Some(stamp), base_offset, record_count));
            Ok(Offset(base_offset))
        }

        fn resolve(
            &self,
            producer_id: i64,
            epoch: EpochChoice,
            sequence: SequenceChoice,
        ) -> ProducerStamp {
            let (current_epoch, batches) = self
                .producers
                .get(&producer_id)
                .map_or((0, &[][..]), |(epoch, batches)| {
                    (*epoch, batches.as_slice())
                });
            let epoch = match epoch {
                EpochChoice::Same => current_epoch,
                EpochChoice::Newer => current_epoch.saturating_add(1),
                EpochChoice::Older => current_epoch.saturating_sub(1).max(0),
            };
            let next = batches
                .last()
                .map_or(0, |batch| next_sequence(batch.last_sequence));
            let base_sequence = match sequence {
                SequenceChoice::Next => next,
                SequenceChoice::Retry(back) => batches
                    .len()
                    .checked_sub(usize::from(back) + 1)
                    .map_or(next, |index| batches[index].first_sequence),
                SequenceChoice::Zero => 0,
                SequenceChoice::Near(delta) => next.saturating_add(i32::from(delta)).max(0),
            };
            ProducerStamp {
                producer_id,
                epoch,
                base_sequence,
            }
        }
    }

    fn run_producer_ops(ops: &[ProducerOp]) {
        let mut state = PartitionState::new(PartitionId(1));
        let mut model = ProducerModel::default();
        let mut prev_key_offsets = Vec::new();
        for op in ops {
            match op {
                ProducerOp::Append {
                    producer_id,
                    epoch,
                    sequence,
                    record_count,
                    wrong_end,
                } => {
                    let stamp = model.resolve(*producer_id, *epoch, *sequence);
                    let records = vec![record(b"k", Any); *record_count as usize];
                    let expected_end = wrong_end.then_some(Offset(state.appended_end().0 + 1));
                    let early = state.check_as(expected_end, &records, Some(stamp));
                    let actual = state.check_and_stage_as(
                        expected_end,
                        &records,
                        Some(stamp),
                        &mut prev_key_offsets,
                    );
                    let expected = model.append(stamp, *record_count, *wrong_end);
                    assert_eq!(actual, expected, "{stamp:?} x {record_count}");
                    // An early answer is the answer staging gives.
                    if let Err(refusal) = early {
                        assert_eq!(Err(refusal), expected, "early answer for {stamp:?}");
                    }
                }
                ProducerOp::Sync => {
                    let end = state.appended_end();
                    state.advance_written(end);
                    state.advance_synced(end);
                }
            }
        }
        // Recovery from the model's log rebuilds the same producers.
        let mut recovered = PartitionState::new(PartitionId(1));
        for (stamp, base_offset, record_count) in &model.log {
            let keys = (0..u64::from(*record_count)).map(|index| {
                let offset = base_offset + index;
                (Some(&b"k"[..]), offset.checked_sub(1).map(Offset))
            });
            recovered
                .recover_batch(Offset(*base_offset), *stamp, keys)
                .unwrap();
        }
        for producer_id in 0..3 {
            assert_eq!(
                recovered.producers().producer(producer_id),
                state.producers().producer(producer_id),
                "producer {producer_id} after recovery"
            );
            let expected = model.producers.get(&producer_id).map(|(epoch, batches)| {
                (*epoch, batches[batches.len().saturating_sub(5)..].to_vec())
            });
            assert_eq!(
                state
                    .producers()
                    .producer(producer_id)
                    .map(|(epoch, batches)| (epoch, batches.to_vec())),
                expected,
                "producer {producer_id}"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn partition_state_matches_a_reference_model(ops in prop::collection::vec(op_strategy(), 0..60)) {
            run_ops(&ops);
        }

        #[test]
        fn producer_state_matches_a_reference_model(ops in prop::collection::vec(producer_op_strategy(), 0..80)) {
            run_producer_ops(&ops);
        }
    }
}
