//! The seeded power-loss simulator (TigerBeetle's VOPR in miniature): it drives a
//! `ShardLog` with random conditional workloads over a `SimDisk`, crashes it at random
//! points (power loss or kill -9, I/O errors and full disks on the way), recovers from
//! what the disk kept with the real recovery scanner, and checks every docs/DESIGN.md §3 invariant
//! against a model of what was appended and acknowledged:
//!
//! - every acknowledged batch is present after recovery, identical;
//! - the recovered core log is a prefix of what was staged, in staging order, whole
//!   batches only, and nothing from an earlier life of a block comes back;
//! - conditions are exact: every stage outcome (appended at which offset, or which
//!   conflict) matches the model's, and `prev_key_offset` chains verify on recovery;
//! - after an I/O error nothing more is acknowledged;
//! - a crash never looks like damage (the probe of `core::recovery` stays quiet);
//! - segment index files (`core::segment_index`): the shell's write steps (temporary file
//!   synced, renamed, directory synced, or ENOSPC) are separate steps a crash can fall
//!   between, and a power loss may lose a rename whose directory was not synced; stale
//!   files (an index of a segment's earlier prefix, left next to it) are planted at
//!   crashes. Recovery accepts a file only if it says exactly what the scan found, else
//!   rebuilds it, and after every open each offset of every partition is read through
//!   the log's lookups (index pages included) and compared with the model;
//! - idempotent producers: every stamped batch's outcome (appended, duplicate of which
//!   batch, fenced, out of order, conflict) matches the model's, and the producers resend
//!   every unacknowledged batch after a crash, as Kafka clients do. A resend is either the
//!   duplicate of its surviving original (same offsets, same records) or appended once;
//!   no (producer, epoch, sequence) is ever in the recovered log twice.
//!
//! Everything comes from one seed: a failing seed prints itself and replays exactly
//! (`simulate(seed, &config)`). `scripts/simulate.sh N` runs N seeds in release mode.

pub mod disk;

use std::collections::{BTreeMap, VecDeque};

use crate::core::checkpoint::{Checkpoint, PartitionCheckpoint};
use crate::core::condition::Conflict;
use crate::core::limits::BLOCK_SIZE_BYTES;
use crate::core::offset_index::BatchLocation;
use crate::core::partition::Refusal;
use crate::core::producer::{ProducerBatch, last_sequence, next_sequence};
use crate::core::record::{BatchView, batch_encoded_len, decode_batch};
use crate::core::recovery::{
    BlockProbe, RecoveryScanner, ScanProgress, crash_explains, probe_block_starts,
};
use crate::core::segment_header::{SEGMENT_HEADER_SIZE_BYTES, SegmentHeader};
use crate::core::segment_index::{
    IndexPage, PartitionEntries, SegmentIndex, SegmentIndexBuilder, decode_page,
};
use crate::core::shard_log::{
    Admission, FetchPlan, GroupPoll, GroupWrite, ReadSource, RecoveredPartition, ShardLog,
    ShardLogLimits, batch_in_page, batches_in_page, first_segment_size_bytes,
};
use crate::core::{
    KeyCondition, Offset, PartitionId, ProducerStamp, RecordInput, SegmentPosition, ShardId,
};
use crate::error::{ProducerError, StorageError};
use crate::sim::disk::{CrashKind, SimDisk};

const BLOCK: u64 = BLOCK_SIZE_BYTES as u64;
const DATA_START: u64 = SEGMENT_HEADER_SIZE_BYTES as u64;

/// A small, fast, seedable generator (SplitMix64): the whole run follows from its seed.
#[derive(Clone, Debug)]
pub struct SimRng(u64);

impl SimRng {
    /// A generator for `seed`.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        SimRng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` (`bound` > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound.max(1)
    }

    /// True with probability `per_mille` / 1000.
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }

    /// Shuffles `items` in place.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for index in (1..items.len()).rev() {
            let other = self.below(index as u64 + 1) as usize;
            items.swap(index, other);
        }
    }
}

/// What a simulation run may do.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Partitions of the shard.
    pub partition_count: u32,
    /// Distinct keys per partition (few: keys are hot).
    pub key_count: u32,
    /// Lives of the shard per seed: each ends in a crash, the last one in a check.
    pub life_count: u32,
    /// Steps per life, at most (a crash can end it earlier).
    pub steps_per_life_max: u32,
    /// Segment size: small, so the log rolls often.
    pub segment_size_bytes: u64,
    /// Largest group.
    pub group_size_bytes_max: usize,
    /// Most staged appends.
    pub pending_append_count_max: usize,
    /// Chance, per write and per sync, of EIO.
    pub io_error_per_mille: u64,
    /// Chance, per segment preparation, of ENOSPC.
    pub disk_full_per_mille: u64,
    /// Chance, per group taken, that a checkpoint is captured with it.
    pub checkpoint_per_mille: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            partition_count: 3,
            key_count: 6,
            life_count: 6,
            steps_per_life_max: 400,
            segment_size_bytes: 16 * BLOCK,
            group_size_bytes_max: 8 * BLOCK_SIZE_BYTES,
            pending_append_count_max: 24,
            io_error_per_mille: 4,
            disk_full_per_mille: 60,
            checkpoint_per_mille: 150,
        }
    }
}

/// The result of one seed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimReport {
    /// The seed.
    pub seed: u64,
    /// Crashes simulated (power losses and process crashes).
    pub crash_count: u64,
    /// Acknowledged batches checked present after recoveries.
    pub acknowledged_checked_count: u64,
    /// Producers' resends answered as duplicates of their originals.
    pub duplicate_count: u64,
    /// Resends after a crash appended again, their original lost with the crash.
    pub resend_appended_count: u64,
    /// Stamped batches refused as fenced or out of order.
    pub producer_refused_count: u64,
    /// Index files made durable by the log's index writes.
    pub index_written_count: u64,
    /// Index files recovery found valid and used.
    pub index_accepted_count: u64,
    /// Index files recovery rebuilt: missing (a crash before the rename or its directory
    /// sync, a failed write), or not what the segment holds (a stale one).
    pub index_rebuilt_count: u64,
    /// Of those, files that decoded but did not match their segment (stale).
    pub index_stale_rejected_count: u64,
    /// Reads answered through an index page and checked against the model.
    pub index_page_read_count: u64,
    /// Recoveries from a checkpoint checked equal to a full scan.
    pub checkpoint_recovery_count: u64,
    /// The first invariant broken, with enough context to debug it; `None` if none.
    pub violation: Option<String>,
}

/// A record's key and the condition it is appended with.
type KeyedCondition = (Vec<u8>, KeyCondition);

/// One batch the workload staged, as the model keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ModelBatch {
    base_offset: Offset,
    records: Vec<(Vec<u8>, Vec<u8>)>,
    acknowledged: bool,
    producer: Option<ProducerStamp>,
}

/// Idempotent producers of the workload; each keeps its own sequence per partition.
const SIM_PRODUCER_COUNT: i64 = 3;

/// Batches a producer has in flight at most (Kafka's `max.in.flight.requests`).
const SIM_PRODUCER_IN_FLIGHT_MAX: usize = 5;

/// A batch a producer sent, as it would send it again.
#[derive(Clone, Debug)]
struct SentBatch {
    stamp: ProducerStamp,
    records: Vec<KeyedCondition>,
    values: Vec<Vec<u8>>,
    expected_end: Option<Offset>,
    /// Where it was staged.
    base_offset: Offset,
}

/// One idempotent producer's client state for one partition, as a Kafka client keeps it.
#[derive(Clone, Debug, Default)]
struct SimProducer {
    epoch: i16,
    next_sequence: i32,
    /// Sent and staged, not known to be acknowledged: resent after a crash.
    unacknowledged: Vec<SentBatch>,
    /// To send again, in order, before anything new.
    resends: VecDeque<SentBatch>,
}

/// What the workload has appended, per partition, in offset order; and the staging order
/// across partitions (the core log's order).
#[derive(Clone, Debug, Default)]
struct Model {
    partitions: BTreeMap<PartitionId, Vec<ModelBatch>>,
    /// (partition, batch index) in staging order.
    staged_order: Vec<(PartitionId, usize)>,
    /// The batches of each group not yet synced.
    groups: BTreeMap<u64, Vec<(PartitionId, usize)>>,
}

impl Model {
    fn end(&self, partition: PartitionId) -> Offset {
        self.partitions
            .get(&partition)
            .and_then(|batches| batches.last())
            .map_or(Offset(0), |batch| {
                batch.base_offset.plus(batch.records.len() as u64)
            })
    }

    fn latest(&self, partition: PartitionId, key: &[u8]) -> Option<Offset> {
        let batches = self.partitions.get(&partition)?;
        for batch in batches.iter().rev() {
            if let Some(index) = batch
                .records
                .iter()
                .rposition(|(record_key, _)| record_key == key)
            {
                return Some(batch.base_offset.plus(index as u64));
            }
        }
        None
    }

    /// What the producer check must answer for a stamped batch of `record_count` records,
    /// decided the obvious way: from the partition's batches (pending included), the
    /// producer's latest five of its latest epoch.
    fn decide_producer(
        &self,
        partition: PartitionId,
        stamp: ProducerStamp,
        record_count: u32,
    ) -> Result<(), Refusal> {
        let out_of_order = |expected_sequence| {
            Err(Refusal::Producer(ProducerError::OutOfOrder {
                producer_id: stamp.producer_id,
                base_sequence: stamp.base_sequence,
                expected_sequence,
            }))
        };
        let of_producer: Vec<(&ModelBatch, ProducerStamp)> = self
            .partitions
            .get(&partition)
            .into_iter()
            .flatten()
            .filter_map(|batch| Some((batch, batch.producer?)))
            .filter(|(_, producer)| producer.producer_id == stamp.producer_id)
            .collect();
        let Some((_, latest)) = of_producer.last() else {
            return if stamp.base_sequence == 0 {
                Ok(())
            } else {
                out_of_order(0)
            };
        };
        if stamp.epoch < latest.epoch {
            return Err(Refusal::Producer(ProducerError::Fenced {
                producer_id: stamp.producer_id,
                epoch: stamp.epoch,
                current_epoch: latest.epoch,
            }));
        }
        if stamp.epoch > latest.epoch {
            return if stamp.base_sequence == 0 {
                Ok(())
            } else {
                out_of_order(0)
            };
        }
        let batches: Vec<ProducerBatch> = of_producer
            .iter()
            .filter(|(_, producer)| producer.epoch == latest.epoch)
            .map(|(batch, producer)| {
                let record_count = batch.records.len() as u32;
                ProducerBatch {
                    first_sequence: producer.base_sequence,
                    last_sequence: last_sequence(producer.base_sequence, record_count),
                    base_offset: batch.base_offset,
                    record_count,
                }
            })
            .collect();
        let last = last_sequence(stamp.base_sequence, record_count);
        if let Some(original) = batches[batches.len().saturating_sub(5)..]
            .iter()
            .find(|batch| {
                batch.first_sequence == stamp.base_sequence && batch.last_sequence == last
            })
        {
            return Err(Refusal::Duplicate(*original));
        }
        let expected = batches
            .last()
            .map_or(0, |batch| next_sequence(batch.last_sequence));
        if stamp.base_sequence == expected {
            Ok(())
        } else {
            out_of_order(expected)
        }
    }

    /// What a conditional append must come to, decided the obvious way.
    fn decide(
        &self,
        partition: PartitionId,
        expected_end: Option<Offset>,
        records: &[(Vec<u8>, KeyCondition)],
    ) -> Result<Offset, Conflict> {
        let end = self.end(partition);
        if let Some(expected) = expected_end
            && expected != end
        {
            return Err(Conflict::EndOffset {
                expected,
                actual: end,
            });
        }
        for (index, (key, condition)) in records.iter().enumerate() {
            let earlier = records[..index]
                .iter()
                .rposition(|(earlier, _)| earlier == key);
            let in_log = self.latest(partition, key);
            let latest = earlier.map_or(in_log, |earlier| Some(end.plus(earlier as u64)));
            let holds = match condition {
                KeyCondition::Any => true,
                KeyCondition::NoKey => latest.is_none(),
                KeyCondition::KeyExists => latest.is_some(),
                KeyCondition::At(offset) => latest == Some(*offset),
            };
            if !holds {
                return Err(Conflict::Key {
                    record_index: index as u32,
                    condition: *condition,
                    actual: in_log,
                    earlier_in_batch: earlier.map(|earlier| earlier as u32),
                });
            }
        }
        Ok(end)
    }
}

/// A batch recovery found, as the model compares it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FoundBatch {
    base_offset: Offset,
    records: Vec<(Vec<u8>, Vec<u8>)>,
    producer: Option<ProducerStamp>,
}

/// What recovery found on the simulated disk.
struct Recovery {
    partitions: BTreeMap<PartitionId, RecoveredPartition>,
    found: BTreeMap<PartitionId, Vec<FoundBatch>>,
    /// Staging order of what was found, (partition, index into `found`).
    order: Vec<(PartitionId, usize)>,
    end: Option<SegmentPosition>,
    chain_crc: u32,
}

/// The simulated segments are far smaller than a data directory may use, so they carry a
/// stand-in for the segment header (`core::segment_header` has its own tests): magic,
/// index, size and a checksum in block 0.
const SIM_HEADER_MAGIC: &[u8; 8] = b"CAIRNSIM";

fn encode_sim_header(index: u64, segment_size_bytes: u64, out: &mut [u8]) {
    let mut fields = Vec::with_capacity(28);
    fields.extend_from_slice(SIM_HEADER_MAGIC);
    fields.extend_from_slice(&index.to_le_bytes());
    fields.extend_from_slice(&segment_size_bytes.to_le_bytes());
    let crc = crc32fast::hash(&fields);
    fields.extend_from_slice(&crc.to_le_bytes());
    if let Some(block) = out.get_mut(..SEGMENT_HEADER_SIZE_BYTES) {
        block.fill(0);
        if let Some(head) = block.get_mut(..fields.len()) {
            head.copy_from_slice(&fields);
        }
    }
}

/// What block 0 of a simulated segment says, as `SegmentFile::open_existing` decides it.
enum SimHeader {
    /// A verified header: (index, size).
    Valid(u64, u64),
    /// Blank, or torn while the segment was prepared with nothing after it: no data.
    NotPrepared,
    /// Damaged in front of data: the real shell refuses to open.
    Damaged,
}

fn decode_sim_header(bytes: &[u8]) -> SimHeader {
    let block = bytes.get(..SEGMENT_HEADER_SIZE_BYTES).unwrap_or_default();
    let field = |range: std::ops::Range<usize>| block.get(range).unwrap_or_default();
    let valid = field(0..8) == SIM_HEADER_MAGIC
        && field(24..28) == crc32fast::hash(field(0..24)).to_le_bytes();
    if valid {
        let number =
            |range| u64::from_le_bytes(<[u8; 8]>::try_from(field(range)).unwrap_or_default());
        return SimHeader::Valid(number(8..16), number(16..24));
    }
    let first_data_block = bytes
        .get(SEGMENT_HEADER_SIZE_BYTES..2 * SEGMENT_HEADER_SIZE_BYTES)
        .unwrap_or_default();
    if block.iter().all(|byte| *byte == 0) || first_data_block.iter().all(|byte| *byte == 0) {
        SimHeader::NotPrepared
    } else {
        SimHeader::Damaged
    }
}

/// Recovery as the shell does it (io/recovery.rs), over the simulated disk: segments in
/// order while their headers verify and the log continues, then the damage probe.
///
/// With a checkpoint, as `io::recovery::recover_shard` resumes: its state, the segments
/// before the one it ends in not read (the index files of those it holds as sealed must be
/// there), its last batch checked, the scan after it; `found` and `order` then hold only
/// what the scan found.
fn recover(
    disk: &SimDisk,
    index_dir: &mut SimIndexDir,
    partition_ids: &[PartitionId],
    report: &mut SimReport,
    checkpoint: Option<&Checkpoint>,
) -> Result<Recovery, String> {
    let mut partitions: BTreeMap<PartitionId, RecoveredPartition> = partition_ids
        .iter()
        .map(|id| (*id, RecoveredPartition::empty(*id)))
        .collect();
    let mut resume = None;
    if let Some(checkpoint) = checkpoint {
        for partition in &checkpoint.partitions {
            let restored = RecoveredPartition::from_checkpoint(partition)
                .map_err(|error| format!("a valid checkpoint does not restore: {error}"))?;
            partitions.insert(partition.id, restored);
        }
        let (Some(log_end), Some(last_batch)) = (checkpoint.log_end, checkpoint.last_batch) else {
            return Err("a checkpoint covers no batch".to_owned());
        };
        resume = Some((log_end, last_batch, checkpoint.chain_crc));
        for partition in &checkpoint.partitions {
            if let Some(run) = partition
                .runs
                .iter()
                .find(|run| index_dir.read(run.segment_index).is_none())
            {
                return Err(format!(
                    "segment {}'s index file, which a valid checkpoint holds as durable, is gone",
                    run.segment_index
                ));
            }
        }
    }
    let mut found: BTreeMap<PartitionId, Vec<FoundBatch>> = BTreeMap::new();
    let mut order = Vec::new();
    let indexes = disk.segment_indexes();
    if let Some(missing) = (0u64..)
        .zip(&indexes)
        .find_map(|(expected, index)| (*index != expected).then_some(expected))
    {
        return Err(format!("segment {missing} is missing after a crash"));
    }
    let mut scanner = match resume {
        Some((_, _, chain_crc)) => RecoveryScanner::resume(
            chain_crc,
            partitions
                .iter()
                .map(|(id, partition)| (*id, partition.state.synced_end())),
        ),
        None => RecoveryScanner::new(),
    };
    let mut end: Option<SegmentPosition> = None;
    // The previous segment's header and its index as a second, independent builder sees it.
    let mut previous: Option<(SegmentHeader, SegmentIndex)> = None;
    let mut sealing = true;
    for index in indexes.iter().copied() {
        if let Some((log_end, _, _)) = resume
            && index < log_end.segment_index
        {
            // Its index write was pending when the checkpoint was taken: sealed now, in
            // order, from what the checkpoint holds of it.
            let mut built = SegmentIndexBuilder::new();
            let mut any = false;
            for partition in checkpoint.map_or(&[][..], |checkpoint| &checkpoint.partitions) {
                for (location, batch_max_ms) in &partition.batches {
                    if location.segment_index == index {
                        built.push(partition.id, location, *batch_max_ms);
                        any = true;
                    }
                }
            }
            if any {
                let SimHeader::Valid(_, size) =
                    decode_sim_header(&disk.read(index).unwrap_or_default())
                else {
                    return Err(format!("covered segment {index} has no header"));
                };
                let header = sim_segment_header(index, size);
                seal_recovered(
                    index_dir,
                    &mut partitions,
                    header,
                    built.finish(header),
                    report,
                )?;
            }
            continue;
        }
        let bytes = disk.read(index).unwrap_or_default();
        let segment_size_bytes = match decode_sim_header(&bytes) {
            SimHeader::Valid(header_index, size)
                if header_index == index && bytes.len() as u64 == size =>
            {
                size
            }
            SimHeader::Valid(header_index, size) => {
                return Err(format!(
                    "segment {index} has header for {header_index}, {size} bytes, holds {}",
                    bytes.len()
                ));
            }
            SimHeader::NotPrepared => break,
            // What the shell does (io/recovery.rs): data that continues the log behind a
            // damaged header is damage, anything else was left by a torn preparation.
            SimHeader::Damaged => {
                let continues =
                    decode_batch(bytes.get(SEGMENT_HEADER_SIZE_BYTES..).unwrap_or_default())
                        .is_ok_and(|batch| {
                            batch.prev_batch_crc() == scanner.chain_crc()
                                && batch.base_offset() == scanner.next_offset(batch.partition_id())
                        });
                if continues {
                    return Err(format!(
                        "segment {index}: a damaged header in front of data that continues \
                         the log"
                    ));
                }
                break;
            }
        };
        let mut data_start = DATA_START;
        let mut builder = SegmentIndexBuilder::new();
        match resume {
            Some((log_end, last_batch, chain_crc)) if index == log_end.segment_index => {
                let last = usize::try_from(last_batch.position).unwrap_or(usize::MAX);
                let last_end = usize::try_from(log_end.position).unwrap_or(usize::MAX);
                let holds_it = bytes
                    .get(last..last_end)
                    .and_then(|batch| decode_batch(batch).ok())
                    .is_some_and(|batch| batch.crc() == chain_crc);
                if !holds_it {
                    return Err(format!(
                        "the log does not hold a valid checkpoint's last batch at {last_batch:?}"
                    ));
                }
                scanner.begin_segment_after(segment_size_bytes, log_end.position);
                data_start = log_end.position.div_ceil(BLOCK) * BLOCK;
                // The independent builder starts from what the checkpoint says of this
                // segment, as the scan starts after it.
                for partition in checkpoint.map_or(&[][..], |checkpoint| &checkpoint.partitions) {
                    for (location, batch_max_ms) in &partition.batches {
                        if location.segment_index == index {
                            builder.push(partition.id, location, *batch_max_ms);
                        }
                    }
                }
            }
            _ => scanner.begin_segment(segment_size_bytes),
        }
        let data = bytes
            .get(usize::try_from(data_start).unwrap_or(usize::MAX)..)
            .unwrap_or_default();
        let mut problem = None;
        let mut on_batch = |position: u64, batch: &BatchView<'_>| {
            if problem.is_some() {
                return;
            }
            builder.push(
                batch.partition_id(),
                &BatchLocation::of(index, position, batch),
                batch.max_record_timestamp_ms(),
            );
            let partition = batch.partition_id();
            let Some(recovered) = partitions.get_mut(&partition) else {
                problem = Some(format!("batch of unknown partition {partition:?}"));
                return;
            };
            if let Err(error) = recovered.state.recover_batch(
                batch.base_offset(),
                batch.producer(),
                batch
                    .records()
                    .map(|record| (record.indexed_key(), record.prev_key_offset)),
            ) {
                problem = Some(format!("recovered batch contradicts the log: {error}"));
                return;
            }
            recovered.synced_batches.push(
                BatchLocation::of(index, position, batch),
                batch.max_record_timestamp_ms(),
            );
            let list = found.entry(partition).or_default();
            list.push(FoundBatch {
                base_offset: batch.base_offset(),
                producer: batch.producer(),
                records: batch
                    .records()
                    .map(|record| (record.key.to_vec(), record.value.to_vec()))
                    .collect(),
            });
            order.push((partition, list.len() - 1));
        };
        let (valid_end, accepted) = match scanner.scan(data, data_start, &mut on_batch) {
            ScanProgress::SegmentEnd {
                valid_end,
                accepted_batch_count,
                ..
            } => (valid_end, accepted_batch_count),
            ScanProgress::NeedMore { position } => {
                return Err(format!(
                    "scanner asked for more at {position} of a whole segment"
                ));
            }
        };
        if let Some(problem) = problem {
            return Err(problem);
        }
        let resumed_here = resume.is_some_and(|(log_end, _, _)| log_end.segment_index == index);
        if index > 0 && accepted == 0 && !resumed_here {
            break;
        }
        // The log continues here: the previous segment is sealed.
        if let Some((header, built)) = previous.take()
            && sealing
        {
            sealing = seal_recovered(index_dir, &mut partitions, header, built, report)?;
        }
        previous = Some((
            sim_segment_header(index, segment_size_bytes),
            builder.finish(sim_segment_header(index, segment_size_bytes)),
        ));
        end = Some(SegmentPosition {
            segment_index: index,
            position: valid_end,
        });
    }
    if let Some((checkpoint_end, _, _)) = resume
        && end.is_none_or(|end| end < checkpoint_end)
    {
        return Err(format!(
            "the log ends at {end:?}, before a valid checkpoint's end {checkpoint_end:?}"
        ));
    }
    let log_end = end.unwrap_or(SegmentPosition {
        segment_index: 0,
        position: DATA_START,
    });
    // The probe must stay quiet: a crash never looks like damage.
    for index in indexes
        .iter()
        .copied()
        .filter(|index| *index >= log_end.segment_index)
    {
        let bytes = disk.read(index).unwrap_or_default();
        let from = if index == log_end.segment_index && end.is_some() {
            log_end.position.div_ceil(BLOCK) * BLOCK
        } else {
            DATA_START
        };
        let Some(chunk) = bytes.get(usize::try_from(from).unwrap_or(usize::MAX)..) else {
            continue;
        };
        let mut probe_from = from;
        while let BlockProbe::Found { position, batch } =
            probe_block_starts(chunk, from, probe_from, true)
        {
            if !crash_explains(
                log_end,
                SegmentPosition {
                    segment_index: index,
                    position,
                },
            ) {
                return Err(format!(
                    "recovery would report damage after a crash: valid batch of {:?} at \
                     segment {index} position {position}, log ends at {log_end:?}",
                    batch.partition_id()
                ));
            }
            probe_from = position + BLOCK;
        }
    }
    Ok(Recovery {
        partitions,
        found,
        order,
        end,
        chain_crc: scanner.chain_crc(),
    })
}

/// Whether `bytes` are exactly the model's `expected` batch of `partition`.
fn check_batch(bytes: &[u8], partition: PartitionId, expected: &ModelBatch) -> Result<(), String> {
    let batch = decode_batch(bytes).map_err(|error| format!("a located batch: {error}"))?;
    let records: Vec<(Vec<u8>, Vec<u8>)> = batch
        .records()
        .map(|record| (record.key.to_vec(), record.value.to_vec()))
        .collect();
    if batch.partition_id() != partition
        || batch.base_offset() != expected.base_offset
        || records != expected.records
    {
        return Err(format!(
            "read {:?} at {:?}, the model has {partition:?} at {:?}",
            batch.partition_id(),
            batch.base_offset(),
            expected.base_offset
        ));
    }
    Ok(())
}

/// What `io::recovery` does with a sealed segment's index file, over the simulated
/// directory: accept it if it says exactly what the scan found (here the partitions' dense
/// entries, cross-checked with an independent builder's), else rebuild it durably. Then
/// the partitions keep only summaries of the segment. Returns whether it sealed (always,
/// here: the simulated rebuild does not fail).
fn seal_recovered(
    index_dir: &mut SimIndexDir,
    partitions: &mut BTreeMap<PartitionId, RecoveredPartition>,
    header: SegmentHeader,
    built: SegmentIndex,
    report: &mut SimReport,
) -> Result<bool, String> {
    let segment_index = header.segment_index;
    let expected = SegmentIndex {
        segment: header,
        data_end_position: built.data_end_position,
        partitions: partitions
            .iter()
            .filter_map(|(partition_id, recovered)| {
                let entries = recovered.synced_batches.segment_entries(segment_index);
                (!entries.is_empty()).then_some(PartitionEntries {
                    partition_id: *partition_id,
                    entries,
                })
            })
            .collect(),
    };
    if expected != built {
        return Err(format!(
            "segment {segment_index}: the offset index and a scan disagree on its index"
        ));
    }
    match index_dir
        .read(segment_index)
        .map(|bytes| SegmentIndex::decode(bytes, &header))
    {
        Some(Ok(found)) if found == expected => report.index_accepted_count += 1,
        found => {
            if matches!(found, Some(Ok(_))) {
                report.index_stale_rejected_count += 1;
            }
            report.index_rebuilt_count += 1;
            index_dir.write_durably(segment_index, expected.encode());
        }
    }
    for placement in expected.placements() {
        if let Some(partition) = partitions.get_mut(&placement.partition_id) {
            partition
                .synced_batches
                .seal(segment_index, placement.entries_position);
        }
    }
    Ok(true)
}

/// The shard directory's index files, as the real shell writes them
/// (`io::index_file`): a file's bytes are synced under a temporary name before the rename,
/// so a file is either absent or whole; only the rename can be lost, by a power loss before
/// the directory's sync.
#[derive(Clone, Debug, Default)]
struct SimIndexDir {
    /// Names that survive any crash.
    durable: BTreeMap<u64, Vec<u8>>,
    /// Renamed since the directory's last sync: kept by a process crash, kept or lost by a
    /// power loss.
    renamed: BTreeMap<u64, Vec<u8>>,
}

impl SimIndexDir {
    fn read(&self, segment_index: u64) -> Option<&Vec<u8>> {
        self.renamed
            .get(&segment_index)
            .or_else(|| self.durable.get(&segment_index))
    }

    fn rename(&mut self, segment_index: u64, bytes: Vec<u8>) {
        self.renamed.insert(segment_index, bytes);
    }

    fn sync(&mut self) {
        self.durable.append(&mut self.renamed);
    }

    fn write_durably(&mut self, segment_index: u64, bytes: Vec<u8>) {
        self.renamed.remove(&segment_index);
        self.durable.insert(segment_index, bytes);
    }

    fn crash(&mut self, kind: CrashKind, rng: &mut SimRng) {
        for (segment_index, bytes) in std::mem::take(&mut self.renamed) {
            if kind == CrashKind::Process || rng.chance(500) {
                self.durable.insert(segment_index, bytes);
            }
        }
    }
}

/// Where the index write in flight stands: each step a crash can fall between.
#[derive(Clone, Debug)]
enum IndexStage {
    /// The temporary file is written and synced (never read by recovery).
    TemporarySynced,
    /// Renamed; the directory is not synced yet.
    Renamed,
}

/// The sim's segment header as the index file's identity (shard 0 of 1).
fn sim_segment_header(segment_index: u64, segment_size_bytes: u64) -> SegmentHeader {
    SegmentHeader {
        shard_id: ShardId(0),
        shard_count: 1,
        segment_index,
        segment_size_bytes,
        generation: 0,
    }
}

/// One shard under simulation.
struct Sim {
    rng: SimRng,
    config: SimConfig,
    disk: SimDisk,
    log: ShardLog,
    model: Model,
    partition_ids: Vec<PartitionId>,
    /// The group written and not yet synced.
    written: Option<GroupWrite>,
    /// The segment being prepared, if any.
    preparing: Option<u64>,
    /// Set after an I/O error: nothing more may be acknowledged.
    failed: bool,
    life: u32,
    value_counter: u64,
    /// Idempotent producers' client state, per producer and partition.
    producers: BTreeMap<(i64, PartitionId), SimProducer>,
    /// The shard directory's index files.
    index_dir: SimIndexDir,
    /// The index write in flight: its segment, bytes and stage.
    index_write: Option<(u64, Vec<u8>, IndexStage)>,
    /// A checkpoint taken when its group was taken, to install once that group is synced.
    checkpoint_pending: Option<(u64, Vec<u8>)>,
    /// Checkpoint files, oldest first, as `io::checkpoint` installs them.
    checkpoint_files: Vec<SimCheckpointFile>,
    report: SimReport,
}

/// A checkpoint file: durable once its install (sync, rename, directory sync) finished;
/// until then a power loss may lose it or tear it.
#[derive(Clone, Debug)]
struct SimCheckpointFile {
    bytes: Vec<u8>,
    durable: bool,
    /// Its install is under way in this life (a crash ends that: what is left stays).
    installing: bool,
}

/// Checkpoint files kept, as `io::checkpoint::CHECKPOINTS_KEPT`.
const SIM_CHECKPOINTS_KEPT: usize = 2;

/// What a recovery rebuilt, comparable across recoveries whatever part of the offset index
/// is sealed or dense: each partition's state as a checkpoint holds it (producers in id
/// order, without locations), every batch location (sealed runs read back from their
/// index files), the log's end and chain.
type CanonicalState = (
    Vec<PartitionCheckpoint>,
    BTreeMap<PartitionId, Vec<BatchLocation>>,
    Option<SegmentPosition>,
    u32,
);

fn canonical_state(
    recovery: &Recovery,
    index_dir: &SimIndexDir,
    disk: &SimDisk,
) -> Result<CanonicalState, String> {
    let mut states = Vec::new();
    let mut locations = BTreeMap::new();
    for (id, partition) in &recovery.partitions {
        let mut state = partition.state.checkpoint();
        state.producers.sort_by_key(|producer| producer.producer_id);
        states.push(state);
        let mut located = Vec::new();
        for run in partition.synced_batches.sealed_runs() {
            let SimHeader::Valid(_, size) =
                decode_sim_header(&disk.read(run.segment_index).unwrap_or_default())
            else {
                return Err(format!(
                    "segment {} of a sealed run has no header",
                    run.segment_index
                ));
            };
            let header = sim_segment_header(run.segment_index, size);
            let index = index_dir
                .read(run.segment_index)
                .ok_or_else(|| format!("segment {}'s index file is gone", run.segment_index))
                .and_then(|bytes| {
                    SegmentIndex::decode(bytes, &header).map_err(|error| error.to_string())
                })?;
            let entries = index
                .partitions
                .iter()
                .find(|entries| entries.partition_id == *id)
                .map(|entries| entries.entries.clone())
                .unwrap_or_default();
            located.extend(
                entries
                    .iter()
                    .map(|entry| entry.location(run.segment_index)),
            );
        }
        located.extend_from_slice(partition.synced_batches.dense_batches());
        locations.insert(*id, located);
    }
    Ok((states, locations, recovery.end, recovery.chain_crc))
}

impl Sim {
    fn limits(config: &SimConfig) -> ShardLogLimits {
        ShardLogLimits {
            segment_size_bytes: config.segment_size_bytes,
            group_size_bytes_max: config.group_size_bytes_max,
            pending_append_count_max: config.pending_append_count_max,
            read_cache_bytes_max: 64 * BLOCK_SIZE_BYTES,
        }
    }

    fn prepare_now(disk: &mut SimDisk, index: u64, segment_size_bytes: u64) {
        let size = usize::try_from(segment_size_bytes).expect("small segments");
        let mut bytes = vec![0u8; size];
        encode_sim_header(index, segment_size_bytes, &mut bytes);
        disk.allocate(index, segment_size_bytes);
        disk.write(index, 0, &bytes);
        disk.sync(index);
    }

    /// Opens the shard on what the disk holds, checking the model against it.
    fn open(&mut self) -> Result<(), String> {
        let mut recovery = recover(
            &self.disk,
            &mut self.index_dir,
            &self.partition_ids,
            &mut self.report,
            None,
        )?;
        self.check_recovered(&recovery)?;
        // Every checkpoint that decodes, not only the newest, must give exactly what the
        // full scan gave: an older one beside a newer log included.
        let full_state = canonical_state(&recovery, &self.index_dir, &self.disk)?;
        let mut newest = None;
        for file in self.checkpoint_files.clone() {
            match Checkpoint::decode(&file.bytes) {
                Ok(checkpoint) => {
                    let resumed = recover(
                        &self.disk,
                        &mut self.index_dir,
                        &self.partition_ids,
                        &mut self.report,
                        Some(&checkpoint),
                    )
                    .map_err(|problem| format!("from a valid checkpoint: {problem}"))?;
                    if canonical_state(&resumed, &self.index_dir, &self.disk)? != full_state {
                        return Err(format!(
                            "recovery from the checkpoint ending at {:?} differs from a full \
                             scan",
                            checkpoint.log_end
                        ));
                    }
                    self.report.checkpoint_recovery_count += 1;
                    newest = Some(resumed);
                }
                Err(error) if file.durable => {
                    return Err(format!("an installed checkpoint does not decode: {error}"));
                }
                Err(_) => {}
            }
        }
        // The shard continues from what the newest usable checkpoint gave, as a real one,
        // and the reads checked below go through its offset index.
        if let Some(resumed) = newest {
            recovery = resumed;
        }
        let (current_index, write_position) = match recovery.end {
            Some(end) => (end.segment_index, end.position.div_ceil(BLOCK) * BLOCK),
            None => {
                Self::prepare_now(
                    &mut self.disk,
                    0,
                    first_segment_size_bytes(self.config.segment_size_bytes),
                );
                (0, DATA_START)
            }
        };
        let current_size_bytes =
            match decode_sim_header(&self.disk.read(current_index).unwrap_or_default()) {
                SimHeader::Valid(_, size) => size,
                SimHeader::NotPrepared | SimHeader::Damaged => {
                    return Err(format!(
                        "segment {current_index} the log continues in has no header"
                    ));
                }
            };
        self.log = ShardLog::new(
            Self::limits(&self.config),
            recovery.partitions,
            current_index,
            current_size_bytes,
            write_position,
            recovery.chain_crc,
        );
        self.written = None;
        self.preparing = None;
        self.index_write = None;
        self.failed = false;
        self.check_reads()
    }

    /// After an open: every batch of the model is where the log's lookups say (offset by
    /// offset and fetch by fetch), through index pages for sealed segments, and holds the
    /// model's records.
    fn check_reads(&mut self) -> Result<(), String> {
        const FETCH_SIZE_BYTES: usize = 16 * BLOCK_SIZE_BYTES;
        let segments: BTreeMap<u64, Vec<u8>> = self
            .disk
            .segment_indexes()
            .into_iter()
            .map(|index| (index, self.disk.read(index).unwrap_or_default()))
            .collect();
        let batch_bytes = |location: &BatchLocation| -> Result<Vec<u8>, String> {
            let start = usize::try_from(location.position).unwrap_or(usize::MAX);
            segments
                .get(&location.segment_index)
                .and_then(|segment| {
                    segment.get(start..start.saturating_add(location.len_bytes as usize))
                })
                .map(<[u8]>::to_vec)
                .ok_or_else(|| format!("{location:?} runs past its segment"))
        };
        for (partition, batches) in &self.model.partitions {
            let partition = *partition;
            // A quarter of the batches per open (a different quarter each life), so that
            // the check costs what the rest of the simulation does.
            let life = self.life as usize;
            for (_, batch) in batches
                .iter()
                .enumerate()
                .filter(|(index, _)| (index + life).is_multiple_of(4))
            {
                // One offset per batch: its last, so the lookup has to skip to inside it.
                let offset = batch.base_offset.plus(batch.records.len() as u64 - 1);
                let source = self
                    .log
                    .read_source(partition, offset)
                    .ok_or("a partition of the model is unknown to the log")?
                    .map_err(|end| format!("{partition:?} {offset:?}: not found, end {end:?}"))?;
                let bytes = match source {
                    ReadSource::Page(page) => {
                        let entries = self.read_page(&page)?;
                        let location = batch_in_page(&entries, page.segment_index, offset)
                            .ok_or_else(|| format!("{offset:?} is not in {page:?}"))?;
                        self.report.index_page_read_count += 1;
                        batch_bytes(&location)?
                    }
                    ReadSource::Disk(location) => batch_bytes(&location)?,
                    ReadSource::Cached {
                        bytes,
                        start,
                        len_bytes,
                    } => bytes
                        .get(start..start + len_bytes)
                        .ok_or("a cached batch outside its group")?
                        .to_vec(),
                    ReadSource::Staged(_) => {
                        return Err("a batch is staged right after an open".to_owned());
                    }
                };
                check_batch(&bytes, partition, batch)?;
            }
            // A fetch from every batch start reaches the next batch, whole batches only.
            let end = batches.last().map_or(Offset(0), |batch| {
                batch.base_offset.plus(batch.records.len() as u64)
            });
            let mut next = Offset(0);
            let mut batch_index = 0;
            while next < end {
                let (plan, _) = self
                    .log
                    .fetch_locations(partition, next, FETCH_SIZE_BYTES)
                    .ok_or("unknown partition")?
                    .map_err(|end| format!("fetch {next:?}: end {end:?}"))?;
                let locations = match plan {
                    FetchPlan::Batches(locations) => locations,
                    FetchPlan::Page(page) => {
                        let entries = self.read_page(&page)?;
                        batches_in_page(&entries, page.segment_index, next, FETCH_SIZE_BYTES)
                    }
                };
                if locations.is_empty() {
                    return Err(format!(
                        "{partition:?}: a fetch from {next:?} found nothing"
                    ));
                }
                for location in locations {
                    let batch = batches
                        .get(batch_index)
                        .ok_or("a fetch returned more batches than the model has")?;
                    let bytes = batch_bytes(&location)?;
                    check_batch(&bytes, partition, batch)?;
                    next = location.end_offset;
                    batch_index += 1;
                }
            }
        }
        Ok(())
    }

    /// A page of an index file as the shell reads it, verified.
    fn read_page(
        &self,
        page: &IndexPage,
    ) -> Result<Vec<crate::core::segment_index::IndexEntry>, String> {
        let file = self.index_dir.read(page.segment_index).ok_or_else(|| {
            format!(
                "segment {} is sealed without an index file",
                page.segment_index
            )
        })?;
        let start = usize::try_from(page.position).unwrap_or(usize::MAX);
        let bytes = file
            .get(start..start.saturating_add(page.len_bytes()))
            .ok_or_else(|| format!("{page:?} runs past its file"))?;
        decode_page(bytes, page).map_err(|error| format!("{page:?}: {error}"))
    }

    /// The invariants after a crash: acknowledged batches present and identical, the log a
    /// prefix of what was staged (per partition and in staging order), whole batches.
    fn check_recovered(&mut self, recovery: &Recovery) -> Result<(), String> {
        let mut kept: BTreeMap<PartitionId, usize> = BTreeMap::new();
        for (partition, batches) in &self.model.partitions {
            let found = recovery.found.get(partition).cloned().unwrap_or_default();
            if found.len() > batches.len() {
                return Err(format!(
                    "{partition:?}: {} batches recovered, only {} staged",
                    found.len(),
                    batches.len()
                ));
            }
            for (index, (found, staged)) in found.iter().zip(batches).enumerate() {
                if found.base_offset != staged.base_offset
                    || found.records != staged.records
                    || found.producer != staged.producer
                {
                    return Err(format!(
                        "{partition:?} batch {index}: recovered {found:?}, staged {staged:?}"
                    ));
                }
            }
            for (index, staged) in batches.iter().enumerate().skip(found.len()) {
                if staged.acknowledged {
                    return Err(format!(
                        "{partition:?}: acknowledged batch {index} at {:?} lost ({} of {} \
                         batches recovered)",
                        staged.base_offset,
                        found.len(),
                        batches.len()
                    ));
                }
            }
            self.report.acknowledged_checked_count += batches
                .iter()
                .take(found.len())
                .filter(|batch| batch.acknowledged)
                .count() as u64;
            // Exactly once: no producer's (epoch, sequence) twice in what survived.
            let mut stamps: Vec<(i64, i16, i32)> = found
                .iter()
                .filter_map(|batch| batch.producer)
                .map(|stamp| (stamp.producer_id, stamp.epoch, stamp.base_sequence))
                .collect();
            let stamp_count = stamps.len();
            stamps.sort_unstable();
            stamps.dedup();
            if stamps.len() != stamp_count {
                return Err(format!(
                    "{partition:?}: a producer's batch was appended twice"
                ));
            }
            kept.insert(*partition, found.len());
        }
        if let Some(partition) = recovery
            .found
            .keys()
            .find(|partition| !self.model.partitions.contains_key(partition))
        {
            return Err(format!("{partition:?}: batches recovered, none staged"));
        }
        // The core log is one sequence: what survives is a prefix of the staging order.
        let survived = |(partition, index): &(PartitionId, usize)| {
            kept.get(partition).is_some_and(|count| index < count)
        };
        if let Some(first_lost) = self
            .model
            .staged_order
            .iter()
            .position(|entry| !survived(entry))
            && let Some(later) = self.model.staged_order[first_lost..]
                .iter()
                .find(|entry| survived(entry))
        {
            return Err(format!(
                "not a prefix: {:?} lost but later {later:?} recovered",
                self.model.staged_order[first_lost]
            ));
        }
        let found_order: Vec<(PartitionId, usize)> = recovery.order.clone();
        let expected_order: Vec<(PartitionId, usize)> = self
            .model
            .staged_order
            .iter()
            .copied()
            .filter(survived)
            .collect();
        if found_order != expected_order {
            return Err("recovered batches are not in staging order".to_owned());
        }
        // What survived is the log now: durable, as good as acknowledged.
        for (partition, batches) in &mut self.model.partitions {
            batches.truncate(kept.get(partition).copied().unwrap_or(0));
            for batch in batches.iter_mut() {
                batch.acknowledged = true;
            }
        }
        self.model.staged_order = expected_order;
        self.model.groups.clear();
        Ok(())
    }

    fn random_batch(&mut self, partition: PartitionId) -> (Vec<KeyedCondition>, Vec<Vec<u8>>) {
        // Now and then a one-record batch exactly a block long, so that batches inside a
        // group start at block boundaries: where recovery looks for the next batch after
        // padding, and so where stale batches of an earlier life can be mistaken for the
        // log's continuation if anything but the checksum chain stopped them.
        let block_sized = self.rng.chance(250);
        let record_count = if block_sized {
            1
        } else if self.rng.chance(100) {
            1 + self.rng.below(64) as usize
        } else {
            1 + self.rng.below(4) as usize
        };
        let mut records = Vec::with_capacity(record_count);
        let mut values = Vec::with_capacity(record_count);
        for _ in 0..record_count {
            let key = format!("k{}", self.rng.below(u64::from(self.config.key_count))).into_bytes();
            let latest = self.model.latest(partition, &key);
            let condition = match self.rng.below(10) {
                0..=3 => KeyCondition::Any,
                4..=6 => latest.map_or(KeyCondition::NoKey, KeyCondition::At),
                7 => KeyCondition::NoKey,
                8 => KeyCondition::KeyExists,
                _ => KeyCondition::At(Offset(self.rng.below(self.model.end(partition).0 + 2))),
            };
            self.value_counter += 1;
            let mut value = format!("life{} v{} ", self.life, self.value_counter).into_bytes();
            if block_sized {
                let empty = [RecordInput {
                    key: &key,
                    value: &[],
                    headers: &[],
                    condition,
                    ..RecordInput::default()
                }];
                let overhead = batch_encoded_len(&empty).unwrap_or(BLOCK_SIZE_BYTES);
                value.resize(
                    BLOCK_SIZE_BYTES.saturating_sub(overhead).max(value.len()),
                    b'#',
                );
            } else {
                let value_len = self.rng.below(300) as usize;
                value.resize(value.len() + value_len, b'.');
            }
            records.push((key, condition));
            values.push(value);
        }
        (records, values)
    }

    /// A random append: staged when admitted, its outcome compared with the model's. Now
    /// and then it comes from an idempotent producer.
    fn step_append(&mut self) -> Result<(), String> {
        let partition =
            self.partition_ids[self.rng.below(self.partition_ids.len() as u64) as usize];
        if self.rng.chance(300) {
            return self.step_producer_append(partition);
        }
        let (records, values) = self.random_batch(partition);
        let expected_end = self.random_expected_end(partition);
        self.stage_checked(partition, expected_end, &records, values, None)
            .map(|_| ())
    }

    fn random_expected_end(&mut self, partition: PartitionId) -> Option<Offset> {
        let end = self.model.end(partition);
        match self.rng.below(10) {
            0 | 1 => Some(end),
            2 => Some(Offset(self.rng.below(end.0 + 2))),
            _ => None,
        }
    }

    /// An idempotent producer's append, as a Kafka client makes it: a resend of what a
    /// crash left unacknowledged first, else (rarely) a new epoch, a resend of a batch still
    /// in flight, or a sequence gap; else its next batch.
    fn step_producer_append(&mut self, partition: PartitionId) -> Result<(), String> {
        let producer_id = self.rng.below(SIM_PRODUCER_COUNT as u64) as i64;
        let mut producer = self
            .producers
            .get(&(producer_id, partition))
            .cloned()
            .unwrap_or_default();
        // Acknowledged batches leave the producer's in-flight window.
        let batches = self.model.partitions.get(&partition);
        producer.unacknowledged.retain(|sent| {
            !batches.into_iter().flatten().any(|batch| {
                batch.acknowledged
                    && batch.base_offset == sent.base_offset
                    && batch.producer == Some(sent.stamp)
            })
        });
        let choice = self.rng.below(100);
        let (sent, is_resend) = if let Some(resend) = producer.resends.front().cloned() {
            (resend, true)
        } else if choice < 10
            && let Some(in_flight) = producer.unacknowledged.last().cloned()
        {
            (in_flight, true)
        } else if producer.unacknowledged.len() >= SIM_PRODUCER_IN_FLIGHT_MAX {
            return Ok(());
        } else {
            if choice < 15 {
                producer.epoch = producer.epoch.saturating_add(1);
                producer.next_sequence = 0;
                producer.unacknowledged.clear();
            }
            let gap = i32::from(choice >= 97);
            let (records, values) = self.random_batch(partition);
            let expected_end = self.random_expected_end(partition);
            let stamp = ProducerStamp {
                producer_id,
                epoch: producer.epoch,
                base_sequence: producer.next_sequence.saturating_add(gap),
            };
            let sent = SentBatch {
                stamp,
                records,
                values,
                expected_end,
                base_offset: Offset(0),
            };
            (sent, false)
        };
        let outcome = self.stage_checked(
            partition,
            sent.expected_end,
            &sent.records,
            sent.values.clone(),
            Some(sent.stamp),
        )?;
        let Some(outcome) = outcome else {
            // Not admitted: the client tries again later, in the same order.
            return Ok(());
        };
        if is_resend && producer.resends.front().is_some() {
            producer.resends.pop_front();
        }
        match outcome {
            Ok(base_offset) => {
                if is_resend {
                    self.report.resend_appended_count += 1;
                }
                producer.next_sequence = next_sequence(last_sequence(
                    sent.stamp.base_sequence,
                    sent.records.len() as u32,
                ));
                producer.unacknowledged.push(SentBatch {
                    base_offset,
                    ..sent
                });
            }
            Err(Refusal::Duplicate(original)) => {
                // The original must be this very batch: same records, where it was staged.
                let found = self
                    .model
                    .partitions
                    .get(&partition)
                    .and_then(|batches| {
                        batches
                            .iter()
                            .find(|batch| batch.base_offset == original.base_offset)
                    })
                    .ok_or("a duplicate of a batch the model does not have")?;
                let records: Vec<(Vec<u8>, Vec<u8>)> = sent
                    .records
                    .iter()
                    .zip(&sent.values)
                    .map(|((key, _), value)| (key.clone(), value.clone()))
                    .collect();
                if !is_resend || found.records != records || found.producer != Some(sent.stamp) {
                    return Err(format!(
                        "{partition:?}: {:?} answered as a duplicate of {original:?}, which \
                         holds other records",
                        sent.stamp
                    ));
                }
                self.report.duplicate_count += 1;
            }
            Err(Refusal::Producer(_)) if !is_resend => self.report.producer_refused_count += 1,
            Err(_) if is_resend => {
                // A resend refused for good: the client gives up on what followed it too
                // and goes on from what the partition expects, as after a reset.
                producer.resends.clear();
                producer
                    .unacknowledged
                    .retain(|batch| batch.stamp != sent.stamp);
                producer.next_sequence =
                    self.expected_sequence(partition, producer_id, producer.epoch);
            }
            Err(_) => {}
        }
        self.producers.insert((producer_id, partition), producer);
        Ok(())
    }

    /// The sequence the partition expects next from a producer in `epoch`.
    fn expected_sequence(&self, partition: PartitionId, producer_id: i64, epoch: i16) -> i32 {
        self.model
            .partitions
            .get(&partition)
            .into_iter()
            .flatten()
            .rev()
            .find_map(|batch| {
                let stamp = batch.producer?;
                (stamp.producer_id == producer_id && stamp.epoch == epoch).then(|| {
                    next_sequence(last_sequence(
                        stamp.base_sequence,
                        batch.records.len() as u32,
                    ))
                })
            })
            .unwrap_or(0)
    }

    /// Stages a batch when admitted and checks the outcome against the model's; records
    /// what was staged in the model. `Ok(None)`: not admitted.
    fn stage_checked(
        &mut self,
        partition: PartitionId,
        expected_end: Option<Offset>,
        records: &[KeyedCondition],
        values: Vec<Vec<u8>>,
        producer: Option<ProducerStamp>,
    ) -> Result<Option<Result<Offset, Refusal>>, String> {
        let inputs: Vec<RecordInput<'_>> = records
            .iter()
            .zip(&values)
            .map(|((key, condition), value)| RecordInput {
                key,
                value,
                headers: &[],
                condition: *condition,
                ..RecordInput::default()
            })
            .collect();
        let len_bytes = batch_encoded_len(&inputs).map_err(|error| error.to_string())?;
        match self.log.admission(len_bytes) {
            Admission::Admit => {}
            Admission::Wait => return Ok(None),
            Admission::PreparationFailed(_) => {
                self.log.retry_preparation();
                return Ok(None);
            }
        }
        let record_count = records.len() as u32;
        let expected = match producer {
            Some(stamp) => self.model.decide_producer(partition, stamp, record_count),
            None => Ok(()),
        }
        .and_then(|()| {
            self.model
                .decide(partition, expected_end, records)
                .map_err(Refusal::Conflict)
        });
        let staged = self
            .log
            .stage(
                partition,
                expected_end,
                &inputs,
                producer,
                len_bytes,
                1_790_000_000_000,
            )
            .ok_or("a known partition is unknown")?;
        match (staged, expected) {
            (Ok(staged), Ok(base_offset)) if staged.base_offset == base_offset => {
                let batches = self.model.partitions.entry(partition).or_default();
                batches.push(ModelBatch {
                    base_offset,
                    records: records
                        .iter()
                        .zip(values)
                        .map(|((key, _), value)| (key.clone(), value))
                        .collect(),
                    acknowledged: false,
                    producer,
                });
                let entry = (partition, batches.len() - 1);
                self.model.staged_order.push(entry);
                self.model
                    .groups
                    .entry(staged.group_sequence)
                    .or_default()
                    .push(entry);
                Ok(Some(Ok(base_offset)))
            }
            (Err(refusal), Err(expected)) if refusal == expected => Ok(Some(Err(refusal))),
            (actual, expected) => Err(format!(
                "outcome differs on {partition:?}: log {actual:?}, model {expected:?} \
                 for {records:?} expecting end {expected_end:?}, producer {producer:?}"
            )),
        }
    }

    /// The committer: write the next group, or sync the one written.
    fn step_commit(&mut self) -> Result<(), String> {
        if self.failed {
            if !matches!(self.log.poll_group_write(), GroupPoll::Idle) {
                return Err("a poisoned log offered a group to write".to_owned());
            }
            return Ok(());
        }
        if let Some(write) = self.written.take() {
            if self.rng.chance(self.config.io_error_per_mille) {
                return self.fail("fdatasync");
            }
            self.disk.sync(write.segment_index);
            let synced = self.log.handle_synced(write.sequence);
            if self
                .checkpoint_pending
                .as_ref()
                .is_some_and(|(sequence, _)| *sequence == synced.sequence)
                && let Some((_, bytes)) = self.checkpoint_pending.take()
            {
                // Written, not yet synced and renamed: `step_checkpoint` finishes it.
                self.checkpoint_files.push(SimCheckpointFile {
                    bytes,
                    durable: false,
                    installing: true,
                });
            }
            for (partition, index) in self
                .model
                .groups
                .remove(&synced.sequence)
                .unwrap_or_default()
            {
                if let Some(batch) = self
                    .model
                    .partitions
                    .get_mut(&partition)
                    .and_then(|batches| batches.get_mut(index))
                {
                    batch.acknowledged = true;
                }
            }
            return Ok(());
        }
        match self.log.poll_group_write() {
            GroupPoll::Write(write) => {
                if self.checkpoint_pending.is_none()
                    && self.rng.chance(self.config.checkpoint_per_mille)
                {
                    let checkpoint = self
                        .log
                        .capture_checkpoint(ShardId(0), 1)
                        .ok_or("no checkpoint right after a group was taken")?;
                    self.checkpoint_pending = Some((write.sequence, checkpoint.bytes));
                }
                let padded_len = usize::try_from(write.padded_len_bytes).expect("small groups");
                let mut bytes = write.bytes.to_vec();
                bytes.resize(padded_len, 0);
                if self.rng.chance(self.config.io_error_per_mille) {
                    self.disk.write_failed(
                        write.segment_index,
                        write.position,
                        &bytes,
                        &mut self.rng,
                    );
                    return self.fail("write");
                }
                self.disk.write(write.segment_index, write.position, &bytes);
                self.log.handle_written(write.sequence);
                self.written = Some(write);
                Ok(())
            }
            GroupPoll::Idle | GroupPoll::WaitForPreparation => Ok(()),
            GroupPoll::Failed(_) => self.fail("roll"),
        }
    }

    /// Segment preparation: start one when the log asks, finish it a step later.
    fn step_prepare(&mut self) {
        if let Some(index) = self.preparing.take() {
            if self.rng.chance(self.config.disk_full_per_mille) {
                self.log.handle_prepared(
                    index,
                    Err(StorageError {
                        operation: "prepare segment",
                        path: format!("sim/{index}").into(),
                        errno: Some(28),
                        message: "no space left on device (simulated)".to_owned(),
                    }),
                );
                return;
            }
            self.disk.sync(index);
            self.log.handle_prepared(index, Ok(()));
            return;
        }
        if let Some(index) = self.log.poll_preparation() {
            // Zero-fill and header, in place over whatever the file held: unsynced until
            // the preparation's sync in a later step.
            let segment_size_bytes = self.log.next_segment_size_bytes();
            let size = usize::try_from(segment_size_bytes).expect("small segments");
            let mut bytes = vec![0u8; size];
            encode_sim_header(index, segment_size_bytes, &mut bytes);
            self.disk.allocate(index, segment_size_bytes);
            self.disk.write(index, 0, &bytes);
            self.preparing = Some(index);
        }
    }

    /// The index writer: start the next index file the log asks for, or take the one in
    /// flight a step further (rename, then directory sync and `handle_index_written`). Now
    /// and then a write fails (ENOSPC) and is retried later.
    fn step_index(&mut self) -> Result<(), String> {
        match self.index_write.take() {
            None => {
                if self.rng.chance(100) {
                    self.log.retry_index_writes();
                }
                let Some(write) = self.log.poll_index_write() else {
                    return Ok(());
                };
                let segment_index = write.segment_index;
                let segment_size_bytes =
                    match decode_sim_header(&self.disk.read(segment_index).unwrap_or_default()) {
                        SimHeader::Valid(_, size) => size,
                        SimHeader::NotPrepared | SimHeader::Damaged => {
                            return Err(format!("sealed segment {segment_index} has no header"));
                        }
                    };
                if self.rng.chance(self.config.disk_full_per_mille) {
                    self.log.handle_index_failed(segment_index);
                    return Ok(());
                }
                let header = sim_segment_header(segment_index, segment_size_bytes);
                let bytes = write.into_index(header).encode();
                self.index_write = Some((segment_index, bytes, IndexStage::TemporarySynced));
            }
            Some((segment_index, bytes, IndexStage::TemporarySynced)) => {
                self.index_dir.rename(segment_index, bytes);
                self.index_write = Some((segment_index, Vec::new(), IndexStage::Renamed));
            }
            Some((segment_index, _, IndexStage::Renamed)) => {
                self.index_dir.sync();
                self.log.handle_index_written(segment_index);
                self.report.index_written_count += 1;
            }
        }
        Ok(())
    }

    /// Leaves a stale index file next to the current segment: what its index would be had
    /// it been sealed now. The segment may later hold more batches (or, after a crash that
    /// lost its first groups, other ones): recovery must then reject it.
    fn plant_stale_index(&mut self) {
        let segment_index = self.log.current_segment_index();
        let partitions = self.log.segment_partitions(segment_index);
        if partitions.is_empty() {
            return;
        }
        let SimHeader::Valid(_, segment_size_bytes) =
            decode_sim_header(&self.disk.read(segment_index).unwrap_or_default())
        else {
            return;
        };
        let stale = crate::core::shard_log::IndexWrite {
            segment_index,
            partitions,
        }
        .into_index(sim_segment_header(segment_index, segment_size_bytes));
        self.index_dir.write_durably(segment_index, stale.encode());
    }

    /// Finishes installing the newest checkpoint file: synced, renamed, directory synced;
    /// then only the newest `SIM_CHECKPOINTS_KEPT` stay.
    fn step_checkpoint(&mut self) {
        let Some(file) = self
            .checkpoint_files
            .last_mut()
            .filter(|file| file.installing)
        else {
            return;
        };
        file.durable = true;
        file.installing = false;
        let excess = self
            .checkpoint_files
            .len()
            .saturating_sub(SIM_CHECKPOINTS_KEPT);
        self.checkpoint_files.drain(..excess);
    }

    fn fail(&mut self, operation: &'static str) -> Result<(), String> {
        let poisoned = self.log.handle_failure(StorageError {
            operation,
            path: "sim".into(),
            errno: Some(5),
            message: "input/output error (simulated)".to_owned(),
        });
        for sequence in poisoned
            .in_flight_sequence
            .into_iter()
            .chain([poisoned.open_sequence])
        {
            self.model.groups.remove(&sequence);
        }
        self.written = None;
        self.failed = true;
        // Its group failed: the shell never installs it.
        self.checkpoint_pending = None;
        Ok(())
    }

    fn crash(&mut self) -> Result<(), String> {
        // The producers heard back about acknowledged batches only; they resend the rest,
        // in order, once the shard is back, not knowing which of them survive.
        for ((_, partition), producer) in &mut self.producers {
            let batches = self.model.partitions.get(partition);
            let acknowledged = |sent: &SentBatch| {
                batches.into_iter().flatten().any(|batch| {
                    batch.acknowledged
                        && batch.base_offset == sent.base_offset
                        && batch.producer == Some(sent.stamp)
                })
            };
            let unacknowledged = std::mem::take(&mut producer.unacknowledged);
            producer.resends.extend(
                unacknowledged
                    .into_iter()
                    .filter(|sent| !acknowledged(sent)),
            );
        }
        let kind = if self.rng.chance(700) {
            CrashKind::Power
        } else {
            CrashKind::Process
        };
        if self.rng.chance(150) {
            self.plant_stale_index();
        }
        self.disk.crash(kind, &mut self.rng);
        self.index_dir.crash(kind, &mut self.rng);
        self.checkpoint_pending = None;
        for file in &mut self.checkpoint_files {
            file.installing = false;
        }
        if kind == CrashKind::Power {
            // An install that had not finished: the file is gone, torn, or complete.
            let rng = &mut self.rng;
            self.checkpoint_files.retain_mut(|file| {
                if file.durable {
                    return true;
                }
                match rng.below(3) {
                    0 => false,
                    1 => {
                        let len = rng.below(file.bytes.len() as u64) as usize;
                        file.bytes.truncate(len);
                        true
                    }
                    _ => true,
                }
            });
        }
        self.report.crash_count += 1;
        self.life += 1;
        self.open().map_err(|problem| {
            format!(
                "after {kind:?} crash {}: {problem}",
                self.report.crash_count
            )
        })
    }

    fn run_life(&mut self) -> Result<(), String> {
        let steps = 1 + self.rng.below(u64::from(self.config.steps_per_life_max));
        for _ in 0..steps {
            match self.rng.below(100) {
                0..=44 if !self.failed => self.step_append()?,
                0..=44 => {}
                45..=84 => self.step_commit()?,
                85..=91 => self.step_index()?,
                92..=95 => self.step_checkpoint(),
                _ => self.step_prepare(),
            }
            if self.failed && self.rng.chance(300) {
                break;
            }
        }
        self.crash()
    }
}

/// Runs one seed; see the module docs for what it checks.
#[must_use]
pub fn simulate(seed: u64, config: &SimConfig) -> SimReport {
    let partition_ids: Vec<PartitionId> = (0..config.partition_count).map(PartitionId).collect();
    let placeholder = ShardLog::new(
        Sim::limits(config),
        partition_ids
            .iter()
            .map(|id| (*id, RecoveredPartition::empty(*id))),
        0,
        config.segment_size_bytes,
        DATA_START,
        0,
    );
    let mut sim = Sim {
        rng: SimRng::new(seed),
        config: config.clone(),
        disk: SimDisk::new(),
        log: placeholder,
        model: Model::default(),
        partition_ids,
        written: None,
        preparing: None,
        failed: false,
        life: 0,
        value_counter: 0,
        producers: BTreeMap::new(),
        index_dir: SimIndexDir::default(),
        index_write: None,
        checkpoint_pending: None,
        checkpoint_files: Vec::new(),
        report: SimReport {
            seed,
            ..SimReport::default()
        },
    };
    let outcome = sim.open().and_then(|()| {
        for _ in 0..config.life_count {
            sim.run_life()?;
        }
        Ok(())
    });
    if let Err(violation) = outcome {
        sim.report.violation = Some(format!("seed {seed}: {violation}"));
    }
    sim.report
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seeds per test run; `CAIRN_SIM_SEEDS` raises it, `CAIRN_SIM_SEED` replays one.
    fn seeds() -> Vec<u64> {
        if let Some(seed) = std::env::var("CAIRN_SIM_SEED")
            .ok()
            .and_then(|seed| seed.parse().ok())
        {
            return vec![seed];
        }
        let count: u64 = std::env::var("CAIRN_SIM_SEEDS")
            .ok()
            .and_then(|count| count.parse().ok())
            .unwrap_or(1000);
        (0..count).map(|index| 0x5EED_0000 + index).collect()
    }

    #[test]
    fn simulated_crashes_break_no_invariant() {
        let config = SimConfig::default();
        let mut crash_count = 0;
        let mut acknowledged = 0;
        let (mut duplicates, mut resends_appended, mut producer_refused) = (0, 0, 0);
        let mut index = SimReport::default();
        let mut violations = Vec::new();
        for seed in seeds() {
            let report = simulate(seed, &config);
            if let Some(violation) = report.violation {
                violations.push(format!("{violation} (replay: CAIRN_SIM_SEED={seed})"));
            }
            crash_count += report.crash_count;
            acknowledged += report.acknowledged_checked_count;
            duplicates += report.duplicate_count;
            resends_appended += report.resend_appended_count;
            producer_refused += report.producer_refused_count;
            index.index_written_count += report.index_written_count;
            index.index_accepted_count += report.index_accepted_count;
            index.index_rebuilt_count += report.index_rebuilt_count;
            index.index_stale_rejected_count += report.index_stale_rejected_count;
            index.index_page_read_count += report.index_page_read_count;
            index.checkpoint_recovery_count += report.checkpoint_recovery_count;
        }
        println!(
            "index files: {} written, {} accepted at open, {} rebuilt ({} stale rejected), \
             {} reads through index pages; {} recoveries from checkpoints",
            index.index_written_count,
            index.index_accepted_count,
            index.index_rebuilt_count,
            index.index_stale_rejected_count,
            index.index_page_read_count,
            index.checkpoint_recovery_count
        );
        assert!(
            violations.is_empty(),
            "{} violations:\n{}",
            violations.len(),
            violations.join("\n")
        );
        assert!(
            crash_count > 0 && acknowledged > 0,
            "the simulation did something"
        );
        assert!(
            duplicates > 0 && resends_appended > 0 && producer_refused > 0,
            "the producers met every case: {duplicates} duplicates, {resends_appended} \
             resends appended, {producer_refused} refused"
        );
        assert!(
            index.index_written_count > 0
                && index.index_accepted_count > 0
                && index.index_rebuilt_count > 0
                && index.index_stale_rejected_count > 0
                && index.index_page_read_count > 0,
            "index files met every case: {index:?}"
        );
        assert!(
            index.checkpoint_recovery_count > 0,
            "recoveries from checkpoints were checked"
        );
    }

    #[test]
    fn a_seed_replays_exactly() {
        let config = SimConfig::default();
        assert_eq!(simulate(42, &config), simulate(42, &config));
    }
}
