//! Checkpoints of a shard's recoverable state, as bytes: what `ShardLog::capture_checkpoint`
//! takes and what recovery resumes from (FORMAT.md, "Checkpoints"; docs/DESIGN.md §3.7).
//!
//! A checkpoint holds, for every partition of the shard, what a scan of the core log up to
//! one place would have rebuilt: the end offset, the key index (each key and its latest
//! offset), the idempotent producers, and where each batch lies. With it, opening a shard
//! reads one file and scans only the log after that place, so restart time no longer grows
//! with history.
//!
//! The state is taken right after a group is handed to the committer, when nothing else is
//! staged: then the state *including* that group's batches is exactly the state at the
//! group's end, a place in the log whose position is known. The shell writes the file only
//! once that group is synced, so a checkpoint never covers a record that a crash could lose.
//!
//! Decoding trusts nothing: a checkpoint is only ever a shortcut, so every way its bytes can
//! be wrong (torn, flipped, from another shard, from another format version, counts that do
//! not fit the file) is a `CheckpointError`, and recovery then falls back to an older
//! checkpoint or to a full scan.

use crate::core::limits::{KEY_SIZE_BYTES_MAX, PRODUCER_BATCH_RETAINED_COUNT_MAX};
use crate::core::offset_index::{BatchLocation, SealedRun};
use crate::core::producer::ProducerBatch;
use crate::core::segment_index::INDEX_PAGE_ENTRY_COUNT;
use crate::core::{Offset, PartitionId, SegmentPosition, ShardId};

/// First bytes of every checkpoint file.
pub const CHECKPOINT_MAGIC: [u8; 8] = *b"CAIRNCKP";

/// The layout version this build writes and reads.
pub const CHECKPOINT_VERSION: u32 = 2;

/// Why bytes are not a usable checkpoint. From disk, so returned, never asserted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// The bytes end before the layout does (a torn or truncated file).
    #[error("checkpoint truncated: {needed_bytes} more bytes needed at byte {at}")]
    Truncated { at: usize, needed_bytes: usize },
    /// The first bytes are not `CHECKPOINT_MAGIC`.
    #[error("not a checkpoint (bad magic)")]
    BadMagic,
    /// Written by a format this build does not read.
    #[error("checkpoint version {0} is not supported (this build reads {CHECKPOINT_VERSION})")]
    UnsupportedVersion(u32),
    /// The trailing CRC does not match the bytes before it.
    #[error("checkpoint checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    /// Well-formed bytes that describe an impossible state.
    #[error("checkpoint invalid: {0}")]
    Invalid(String),
}

/// One retained batch of one idempotent producer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProducerCheckpoint {
    /// The producer's id.
    pub producer_id: i64,
    /// Its current epoch.
    pub epoch: i16,
    /// `ProducerTable`'s clock at the producer's latest append (the eviction order).
    pub last_append: u64,
    /// Its retained batches, oldest first (1 to `PRODUCER_BATCH_RETAINED_COUNT_MAX`).
    pub batches: Vec<ProducerBatch>,
}

/// One partition's state in a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionCheckpoint {
    /// The partition.
    pub id: PartitionId,
    /// Offset after its last batch in the covered log.
    pub end_offset: Offset,
    /// Number of distinct keys in `key_entries`.
    pub key_count: u64,
    /// The key index's entries, as `KeyIndex::encode_entries` writes them: per key, its
    /// latest offset (8 bytes little-endian), its length (LEB128, 1 or 2 bytes), its bytes.
    pub key_entries: Vec<u8>,
    /// `ProducerTable`'s clock.
    pub producer_append_count: u64,
    /// The producers, in no order.
    pub producers: Vec<ProducerCheckpoint>,
    /// Its batches in sealed segments with index files, one run per segment, in order.
    pub runs: Vec<SealedRun>,
    /// Its other batches (the current segment's, and any sealed segment's whose index file
    /// was not durable yet), in offset order, each with its own largest record timestamp.
    pub batches: Vec<(BatchLocation, i64)>,
}

/// A shard's recoverable state at one place of its core log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The shard it belongs to.
    pub shard_id: ShardId,
    /// The data directory's shard count.
    pub shard_count: u16,
    /// Just after the last batch it covers (`None`: the log was empty).
    pub log_end: Option<SegmentPosition>,
    /// Where that last batch starts, so recovery can check that the log holds it.
    pub last_batch: Option<SegmentPosition>,
    /// The `crc` of that last batch: the next batch's `prev_batch_crc` (0 if none).
    pub chain_crc: u32,
    /// Every partition the shard had, in no order.
    pub partitions: Vec<PartitionCheckpoint>,
}

impl Checkpoint {
    /// Where a scan resumes: the first block boundary after `log_end`.
    #[must_use]
    pub fn resume_at(&self) -> Option<SegmentPosition> {
        self.log_end.map(|end| SegmentPosition {
            segment_index: end.segment_index,
            position: end
                .position
                .div_ceil(crate::core::limits::BLOCK_SIZE_BYTES as u64)
                * crate::core::limits::BLOCK_SIZE_BYTES as u64,
        })
    }

    /// Records held across its partitions' logs (their end offsets summed).
    #[must_use]
    pub fn record_count(&self) -> u64 {
        self.partitions
            .iter()
            .map(|partition| partition.end_offset.0)
            .sum()
    }

    /// The checkpoint as file bytes: the layout in FORMAT.md, CRC32 last.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let key_bytes: usize = self
            .partitions
            .iter()
            .map(|partition| partition.key_entries.len())
            .sum();
        let mut writer = CheckpointWriter::new(self, self.partitions.len(), key_bytes);
        for partition in &self.partitions {
            writer.partition(
                partition.id,
                partition.end_offset,
                partition.key_count,
                |out| out.extend_from_slice(&partition.key_entries),
                partition.producer_append_count,
                &partition.producers,
                &partition.runs,
                partition.batches.len(),
                partition.batches.iter().copied(),
            );
        }
        writer.finish()
    }

    /// Parses and checks file bytes. Verifies the checksum first, then every count against
    /// the bytes left, so a damaged file can neither panic nor make it allocate wildly.
    pub fn decode(bytes: &[u8]) -> Result<Checkpoint, CheckpointError> {
        if bytes.len() < CHECKPOINT_MAGIC.len() + 4 {
            return Err(CheckpointError::Truncated {
                at: bytes.len(),
                needed_bytes: CHECKPOINT_MAGIC.len() + 4 - bytes.len(),
            });
        }
        if bytes[..CHECKPOINT_MAGIC.len()] != CHECKPOINT_MAGIC {
            return Err(CheckpointError::BadMagic);
        }
        let (body, stored) = bytes.split_at(bytes.len() - 4);
        let stored = u32::from_le_bytes(stored.try_into().expect("split_at left 4 bytes"));
        let computed = crc32fast::hash(body);
        if stored != computed {
            return Err(CheckpointError::Checksum { stored, computed });
        }
        let mut input = Reader { bytes: body, at: 0 };
        input.take(CHECKPOINT_MAGIC.len())?;
        let version = input.u32()?;
        if version != CHECKPOINT_VERSION {
            return Err(CheckpointError::UnsupportedVersion(version));
        }
        let shard_id = ShardId(input.u16()?);
        let shard_count = input.u16()?;
        if shard_id.0 >= shard_count {
            return Err(invalid(format!("shard {} of {shard_count}", shard_id.0)));
        }
        let log_end = input.position()?;
        let last_batch = input.position()?;
        if log_end.is_some() != last_batch.is_some() || last_batch > log_end {
            return Err(invalid(format!(
                "last batch {last_batch:?} does not lie before the end {log_end:?}"
            )));
        }
        let chain_crc = input.u32()?;
        let partition_count = input.count_u32(4)?;
        let mut partitions = Vec::with_capacity(partition_count);
        for _ in 0..partition_count {
            partitions.push(decode_partition(&mut input, log_end)?);
        }
        if input.at != body.len() {
            return Err(invalid(format!(
                "{} bytes after the last partition",
                body.len() - input.at
            )));
        }
        Ok(Checkpoint {
            shard_id,
            shard_count,
            log_end,
            last_batch,
            chain_crc,
            partitions,
        })
    }
}

/// Writes checkpoint bytes partition by partition, so the log can encode its state straight
/// from its own structures (`ShardLog::capture_checkpoint`) instead of first copying it
/// into a `Checkpoint`: the key index, most of a checkpoint, is then copied once.
pub struct CheckpointWriter {
    out: Writer,
    partitions_left: usize,
}

impl CheckpointWriter {
    /// A checkpoint of `header`'s shard, log end, last batch and chain (its `partitions`
    /// are ignored), which will hold `partition_count` partitions; `capacity_bytes` is a
    /// hint for the buffer.
    #[must_use]
    pub fn new(header: &Checkpoint, partition_count: usize, capacity_bytes: usize) -> Self {
        let mut out = Writer(Vec::with_capacity(capacity_bytes + 4096));
        out.bytes(&CHECKPOINT_MAGIC);
        out.u32(CHECKPOINT_VERSION);
        out.u16(header.shard_id.0);
        out.u16(header.shard_count);
        out.position(header.log_end);
        out.position(header.last_batch);
        out.u32(header.chain_crc);
        out.u32(u32::try_from(partition_count).expect("partitions per shard fit in u32"));
        CheckpointWriter {
            out,
            partitions_left: partition_count,
        }
    }

    /// Adds one partition: `write_key_entries` appends its key entries (as
    /// `KeyIndex::encode_entries` does), `runs` are its sealed runs, `batches` yields
    /// `batch_count` other locations with their own largest timestamps, in offset order.
    ///
    /// # Panics
    ///
    /// If more partitions are added than announced, or `batches` yields another count.
    #[expect(
        clippy::too_many_arguments,
        reason = "one argument per field of the layout"
    )]
    pub fn partition(
        &mut self,
        id: PartitionId,
        end_offset: Offset,
        key_count: u64,
        write_key_entries: impl FnOnce(&mut Vec<u8>),
        producer_append_count: u64,
        producers: &[ProducerCheckpoint],
        runs: &[SealedRun],
        batch_count: usize,
        batches: impl Iterator<Item = (BatchLocation, i64)>,
    ) {
        self.partitions_left = self
            .partitions_left
            .checked_sub(1)
            .expect("no more partitions than announced");
        let out = &mut self.out;
        out.u32(id.0);
        out.u64(end_offset.0);
        out.u64(key_count);
        let length_at = out.0.len();
        out.u64(0);
        write_key_entries(&mut out.0);
        let key_bytes = (out.0.len() - length_at - 8) as u64;
        out.0[length_at..length_at + 8].copy_from_slice(&key_bytes.to_le_bytes());
        out.u64(producer_append_count);
        out.u32(u32::try_from(producers.len()).expect("producers are bounded"));
        for producer in producers {
            out.u64(producer.producer_id as u64);
            out.u16(producer.epoch as u16);
            out.u64(producer.last_append);
            out.0
                .push(u8::try_from(producer.batches.len()).expect("at most 5 batches"));
            for batch in &producer.batches {
                out.u32(batch.first_sequence as u32);
                out.u32(batch.last_sequence as u32);
                out.u64(batch.base_offset.0);
                out.u32(batch.record_count);
            }
        }
        out.u64(runs.len() as u64);
        for run in runs {
            out.u64(run.segment_index);
            out.u64(run.base_offset.0);
            out.u64(run.end_offset.0);
            out.u64(run.running_max_timestamp_ms as u64);
            out.u64(run.entries_position);
            out.u32(run.entry_count);
            out.u32(u32::from(run.generation));
            out.u64(run.size_bytes);
            out.u32(u32::try_from(run.samples().len()).expect("samples fit in u32"));
            for (base_offset, max_timestamp_ms) in run.samples() {
                out.u64(base_offset.0);
                out.u64(max_timestamp_ms as u64);
            }
        }
        out.u64(batch_count as u64);
        let mut written = 0;
        for (location, max_timestamp_ms) in batches {
            out.u64(location.base_offset.0);
            out.u64(location.end_offset.0);
            out.u64(location.segment_index);
            out.u64(location.position);
            out.u32(location.len_bytes);
            out.u64(max_timestamp_ms as u64);
            written += 1;
        }
        assert_eq!(written, batch_count, "batches yields the count announced");
    }

    /// The file bytes, CRC32 last.
    ///
    /// # Panics
    ///
    /// If fewer partitions were added than announced.
    #[must_use]
    pub fn finish(mut self) -> Vec<u8> {
        assert_eq!(
            self.partitions_left, 0,
            "every announced partition was added"
        );
        let crc = crc32fast::hash(&self.out.0);
        self.out.u32(crc);
        self.out.0
    }
}

fn invalid(problem: String) -> CheckpointError {
    CheckpointError::Invalid(problem)
}

fn decode_partition(
    input: &mut Reader<'_>,
    log_end: Option<SegmentPosition>,
) -> Result<PartitionCheckpoint, CheckpointError> {
    let id = PartitionId(input.u32()?);
    let end_offset = Offset(input.u64()?);
    let key_count = input.u64()?;
    let key_entries_len = input.count_u64(1)?;
    let key_entries = input.take(key_entries_len)?.to_vec();
    check_key_entries(id, &key_entries, key_count, end_offset)?;
    let producer_append_count = input.u64()?;
    let producer_count = input.count_u32(8 + 2 + 8 + 1)?;
    let mut producers = Vec::with_capacity(producer_count);
    for _ in 0..producer_count {
        let producer_id = input.u64()? as i64;
        let epoch = input.u16()? as i16;
        let last_append = input.u64()?;
        let batch_count = usize::from(input.take(1)?[0]);
        if !(1..=PRODUCER_BATCH_RETAINED_COUNT_MAX).contains(&batch_count) {
            return Err(invalid(format!(
                "{id:?}: producer {producer_id} retains {batch_count} batches"
            )));
        }
        let mut batches = Vec::with_capacity(batch_count);
        for _ in 0..batch_count {
            let batch = ProducerBatch {
                first_sequence: input.u32()? as i32,
                last_sequence: input.u32()? as i32,
                base_offset: Offset(input.u64()?),
                record_count: input.u32()?,
            };
            if batch.record_count == 0 || batch.end_offset() > end_offset {
                return Err(invalid(format!(
                    "{id:?}: producer {producer_id}'s batch {batch:?} is not in the log"
                )));
            }
            batches.push(batch);
        }
        if last_append > producer_append_count {
            return Err(invalid(format!(
                "{id:?}: producer {producer_id} appended after the table's clock"
            )));
        }
        producers.push(ProducerCheckpoint {
            producer_id,
            epoch,
            last_append,
            batches,
        });
    }
    let run_count = input.count_u64(8 * 5 + 4 + 4 + 8 + 4)?;
    let mut runs: Vec<SealedRun> = Vec::with_capacity(run_count);
    for _ in 0..run_count {
        let segment_index = input.u64()?;
        let base_offset = Offset(input.u64()?);
        let end_offset = Offset(input.u64()?);
        let running_max_timestamp_ms = input.u64()? as i64;
        let entries_position = input.u64()?;
        let entry_count = input.u32()?;
        let generation = u16::try_from(input.u32()?)
            .map_err(|_| invalid(format!("{id:?}: a run's segment generation is not a u16")))?;
        let size_bytes = input.u64()?;
        let sample_count = input.count_u32(16)?;
        let mut samples = Vec::with_capacity(sample_count);
        for _ in 0..sample_count {
            samples.push((Offset(input.u64()?), input.u64()? as i64));
        }
        let run = SealedRun::new(
            segment_index,
            base_offset,
            end_offset,
            running_max_timestamp_ms,
            entries_position,
            entry_count,
            generation,
            size_bytes,
            samples,
        );
        check_run(id, &run, runs.last(), log_end)?;
        runs.push(run);
    }
    let batch_count = input.count_u64(8 * 5 + 4)?;
    let mut batches: Vec<(BatchLocation, i64)> = Vec::with_capacity(batch_count);
    for _ in 0..batch_count {
        let location = BatchLocation {
            base_offset: Offset(input.u64()?),
            end_offset: Offset(input.u64()?),
            segment_index: input.u64()?,
            position: input.u64()?,
            len_bytes: input.u32()?,
        };
        let max_timestamp_ms = input.u64()? as i64;
        let expected_base = batches.last().map_or_else(
            || {
                runs.last()
                    .map_or(location.base_offset, |run| run.end_offset)
            },
            |(last, _)| last.end_offset,
        );
        let starts_before_end = log_end.is_some_and(|end| {
            SegmentPosition {
                segment_index: location.segment_index,
                position: location.position,
            } < end
        });
        let after_runs = runs
            .last()
            .is_none_or(|run| run.segment_index < location.segment_index);
        let segments_in_order = batches
            .last()
            .is_none_or(|(last, _)| last.segment_index <= location.segment_index);
        if location.base_offset >= location.end_offset
            || location.base_offset != expected_base
            || location.len_bytes == 0
            || !starts_before_end
            || !after_runs
            || !segments_in_order
        {
            return Err(invalid(format!("{id:?}: batch location {location:?}")));
        }
        batches.push((location, max_timestamp_ms));
    }
    // A partition whose batches retention removed has none located: it ends where it says.
    let located_end = batches.last().map_or_else(
        || runs.last().map_or(end_offset, |run| run.end_offset),
        |(last, _)| last.end_offset,
    );
    if located_end != end_offset {
        return Err(invalid(format!(
            "{id:?}: its batches end at {located_end}, the partition at {end_offset}"
        )));
    }
    Ok(PartitionCheckpoint {
        id,
        end_offset,
        key_count,
        key_entries,
        producer_append_count,
        producers,
        runs,
        batches,
    })
}

/// A sealed run must describe what `OffsetIndex` could have built: some batches, in a
/// segment before the one the log ends in and after the previous run's, continuing its
/// offsets, with one sample per page (none for one page) in order inside the run.
fn check_run(
    id: PartitionId,
    run: &SealedRun,
    previous: Option<&SealedRun>,
    log_end: Option<SegmentPosition>,
) -> Result<(), CheckpointError> {
    let page_count = (run.entry_count as usize).div_ceil(INDEX_PAGE_ENTRY_COUNT);
    let expected_samples = if page_count > 1 { page_count } else { 0 };
    let bases: Vec<Offset> = run.samples().map(|(base, _)| base).collect();
    let samples_fit = bases.len() == expected_samples
        && bases.first().is_none_or(|base| *base == run.base_offset)
        && bases.windows(2).all(|pair| pair[0] < pair[1])
        && bases.last().is_none_or(|base| *base < run.end_offset);
    let placed = log_end.is_some_and(|end| run.segment_index < end.segment_index)
        && previous.is_none_or(|previous| {
            previous.segment_index < run.segment_index && previous.end_offset == run.base_offset
        });
    if run.entry_count == 0
        || run.base_offset >= run.end_offset
        || run.end_offset.0 - run.base_offset.0 < u64::from(run.entry_count)
        || !samples_fit
        || !placed
    {
        return Err(invalid(format!("{id:?}: sealed run {run:?}")));
    }
    Ok(())
}

/// Walks the key entries once: each well-formed, each latest offset inside the partition,
/// as many as the count says. Duplicate keys are caught when the index is rebuilt.
fn check_key_entries(
    id: PartitionId,
    entries: &[u8],
    key_count: u64,
    end_offset: Offset,
) -> Result<(), CheckpointError> {
    let mut found = 0u64;
    let mut rest = entries;
    while !rest.is_empty() {
        let (latest, key, after) = split_key_entry(rest)
            .ok_or_else(|| invalid(format!("{id:?}: key entry {found} is malformed")))?;
        if latest >= end_offset {
            return Err(invalid(format!(
                "{id:?}: key entry {found} points at {latest}, the partition ends at {end_offset}"
            )));
        }
        if key.len() > KEY_SIZE_BYTES_MAX {
            return Err(invalid(format!("{id:?}: key entry {found} is too long")));
        }
        found += 1;
        rest = after;
    }
    if found != key_count {
        return Err(invalid(format!(
            "{id:?}: {found} key entries, the count says {key_count}"
        )));
    }
    Ok(())
}

/// One key entry off the front of `bytes`: its latest offset, its key, and what follows.
/// `None` if the bytes end inside it.
pub(crate) fn split_key_entry(bytes: &[u8]) -> Option<(Offset, &[u8], &[u8])> {
    let latest = Offset(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?));
    let first = *bytes.get(8)?;
    let (key_len, varint_len) = if first < 0x80 {
        (usize::from(first), 1)
    } else {
        let second = *bytes.get(9)?;
        (usize::from(first & 0x7f) | usize::from(second) << 7, 2)
    };
    let key_start = 8 + varint_len;
    let key = bytes.get(key_start..key_start + key_len)?;
    Some((latest, key, &bytes[key_start + key_len..]))
}

struct Writer(Vec<u8>);

impl Writer {
    fn bytes(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }
    fn u16(&mut self, value: u16) {
        self.bytes(&value.to_le_bytes());
    }
    fn u32(&mut self, value: u32) {
        self.bytes(&value.to_le_bytes());
    }
    fn u64(&mut self, value: u64) {
        self.bytes(&value.to_le_bytes());
    }
    fn position(&mut self, position: Option<SegmentPosition>) {
        match position {
            None => self.0.push(0),
            Some(position) => {
                self.0.push(1);
                self.u64(position.segment_index);
                self.u64(position.position);
            }
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], CheckpointError> {
        let end = self
            .at
            .checked_add(len)
            .filter(|end| *end <= self.bytes.len());
        let Some(end) = end else {
            return Err(CheckpointError::Truncated {
                at: self.at,
                needed_bytes: len - (self.bytes.len() - self.at),
            });
        };
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], CheckpointError> {
        Ok(self.take(N)?.try_into().expect("take returned N bytes"))
    }
    fn u16(&mut self) -> Result<u16, CheckpointError> {
        self.array().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Result<u32, CheckpointError> {
        self.array().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Result<u64, CheckpointError> {
        self.array().map(u64::from_le_bytes)
    }
    fn count_u32(&mut self, item_size_bytes: usize) -> Result<usize, CheckpointError> {
        let at = self.at;
        let count = u64::from(self.u32()?);
        self.fitting(at, count, item_size_bytes)
    }
    fn count_u64(&mut self, item_size_bytes: usize) -> Result<usize, CheckpointError> {
        let at = self.at;
        let count = self.u64()?;
        self.fitting(at, count, item_size_bytes)
    }
    /// `count` items of at least `item_size_bytes` each, read at byte `at`: refused when
    /// they could not fit in what is left, before anything is allocated for them.
    fn fitting(
        &self,
        at: usize,
        count: u64,
        item_size_bytes: usize,
    ) -> Result<usize, CheckpointError> {
        let left = (self.bytes.len() - self.at) as u64;
        if count.saturating_mul(item_size_bytes as u64) > left {
            return Err(invalid(format!(
                "count {count} at byte {at} does not fit in the {left} bytes left"
            )));
        }
        usize::try_from(count).map_err(|_| invalid(format!("count {count} at byte {at}")))
    }
    fn position(&mut self) -> Result<Option<SegmentPosition>, CheckpointError> {
        match self.take(1)?[0] {
            0 => Ok(None),
            1 => Ok(Some(SegmentPosition {
                segment_index: self.u64()?,
                position: self.u64()?,
            })),
            tag => Err(invalid(format!("position tag {tag}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::core::key_index::KeyIndex;

    fn key_entries(keys: &[(&str, u64)]) -> Vec<u8> {
        let mut index = KeyIndex::new();
        for (key, latest) in keys {
            index.insert(key.as_bytes(), Offset(*latest));
        }
        let mut entries = Vec::new();
        index.encode_entries(&mut entries);
        entries
    }

    fn location(base: u64, end: u64, position: u64) -> BatchLocation {
        BatchLocation {
            base_offset: Offset(base),
            end_offset: Offset(end),
            segment_index: 1,
            position,
            len_bytes: 200,
        }
    }

    fn sample() -> Checkpoint {
        Checkpoint {
            shard_id: ShardId(1),
            shard_count: 2,
            log_end: Some(SegmentPosition {
                segment_index: 1,
                position: 20_680,
            }),
            last_batch: Some(SegmentPosition {
                segment_index: 1,
                position: 20_480,
            }),
            chain_crc: 0xdead_beef,
            partitions: vec![
                PartitionCheckpoint {
                    id: PartitionId(3),
                    end_offset: Offset(5),
                    key_count: 2,
                    key_entries: key_entries(&[("a", 4), ("b", 1)]),
                    producer_append_count: 2,
                    producers: vec![ProducerCheckpoint {
                        producer_id: 7,
                        epoch: 1,
                        last_append: 2,
                        batches: vec![
                            ProducerBatch {
                                first_sequence: 0,
                                last_sequence: 1,
                                base_offset: Offset(0),
                                record_count: 2,
                            },
                            ProducerBatch {
                                first_sequence: 2,
                                last_sequence: 2,
                                base_offset: Offset(4),
                                record_count: 1,
                            },
                        ],
                    }],
                    runs: vec![SealedRun::new(
                        0,
                        Offset(0),
                        Offset(2),
                        10,
                        64,
                        1,
                        0,
                        120,
                        [],
                    )],
                    batches: vec![(location(2, 4, 8192), 30), (location(4, 5, 20_480), 30)],
                },
                PartitionCheckpoint {
                    id: PartitionId(5),
                    end_offset: Offset(0),
                    key_count: 0,
                    key_entries: Vec::new(),
                    producer_append_count: 0,
                    producers: Vec::new(),
                    runs: Vec::new(),
                    batches: Vec::new(),
                },
            ],
        }
    }

    /// Re-seals `body` (everything but the CRC) with a valid CRC, so a test reaches the
    /// checks behind the checksum.
    fn sealed(mut body: Vec<u8>) -> Vec<u8> {
        let crc = crc32fast::hash(&body);
        body.extend_from_slice(&crc.to_le_bytes());
        body
    }

    #[test]
    fn a_checkpoint_round_trips() {
        let checkpoint = sample();
        assert_eq!(Checkpoint::decode(&checkpoint.encode()), Ok(checkpoint));
    }

    #[test]
    fn every_truncation_and_every_flipped_bit_is_refused() {
        let bytes = sample().encode();
        for len in 0..bytes.len() {
            assert!(
                Checkpoint::decode(&bytes[..len]).is_err(),
                "a checkpoint cut at {len} of {} bytes",
                bytes.len()
            );
        }
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(Checkpoint::decode(&flipped).is_err(), "bit {bit} flipped");
        }
    }

    #[test]
    fn well_sealed_lies_are_refused() {
        let bytes = sample().encode();
        let body = &bytes[..bytes.len() - 4];
        let mut version = body.to_vec();
        // Version 1 checkpoints (before retention) lack the runs' generation and size: a
        // new build scans past them once instead of guessing.
        version[8] = 1;
        assert_eq!(
            Checkpoint::decode(&sealed(version)),
            Err(CheckpointError::UnsupportedVersion(1))
        );

        // A key whose latest offset lies past the partition's end.
        let mut lying = sample();
        lying.partitions[0].key_entries = key_entries(&[("a", 5), ("b", 1)]);
        assert!(matches!(
            Checkpoint::decode(&lying.encode()),
            Err(CheckpointError::Invalid(_))
        ));
        // A count that says more keys than the entries hold.
        let mut lying = sample();
        lying.partitions[0].key_count = 3;
        assert!(matches!(
            Checkpoint::decode(&lying.encode()),
            Err(CheckpointError::Invalid(_))
        ));
        // A gap between two batches of a partition.
        let mut lying = sample();
        lying.partitions[0].batches[1].0.base_offset = Offset(3);
        assert!(matches!(
            Checkpoint::decode(&lying.encode()),
            Err(CheckpointError::Invalid(_))
        ));
        // A batch at or after the end of the log it covers.
        let mut lying = sample();
        lying.partitions[0].batches[1].0.position = 20_680;
        assert!(matches!(
            Checkpoint::decode(&lying.encode()),
            Err(CheckpointError::Invalid(_))
        ));
        // A producer's batch beyond the partition.
        let mut lying = sample();
        lying.partitions[0].producers[0].batches[1].base_offset = Offset(5);
        assert!(matches!(
            Checkpoint::decode(&lying.encode()),
            Err(CheckpointError::Invalid(_))
        ));
        // A shard outside its shard count.
        let mut lying = sample();
        lying.shard_id = ShardId(2);
        assert!(matches!(
            Checkpoint::decode(&lying.encode()),
            Err(CheckpointError::Invalid(_))
        ));
    }

    proptest! {
        /// Whatever follows the magic, sealed with a valid CRC, decoding returns and never
        /// panics or allocates beyond the bytes given.
        #[test]
        fn arbitrary_sealed_bytes_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut body = CHECKPOINT_MAGIC.to_vec();
            body.extend_from_slice(&CHECKPOINT_VERSION.to_le_bytes());
            body.extend_from_slice(&tail);
            let _ = Checkpoint::decode(&sealed(body));
        }

        /// Mutating any byte of a valid checkpoint and re-sealing it is either refused or
        /// decodes to something that encodes back to the same bytes.
        #[test]
        fn resealed_mutations_decode_consistently(at in 0usize..4096, value in any::<u8>()) {
            let bytes = sample().encode();
            let mut body = bytes[..bytes.len() - 4].to_vec();
            let at = at % body.len();
            body[at] = value;
            let resealed = sealed(body);
            if let Ok(decoded) = Checkpoint::decode(&resealed) {
                prop_assert_eq!(decoded.encode(), resealed);
            }
        }
    }
}
