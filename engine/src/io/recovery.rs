//! The recovery driver: reads a shard's segments, feeds them to the sans-I/O
//! `RecoveryScanner`, rebuilds the partitions, and then makes sure that where the log ends
//! is a place a crash can explain (FORMAT.md, "Torn tail or damage").
//!
//! A crash can tear only the one group in flight, so valid batches found after the log's
//! end must lie within one group of it (`core::recovery::crash_explains`). Anything else —
//! a valid batch further on in the same segment or in a later one, a missing segment
//! between others — is damage to synced data: the shard refuses to open with an error that
//! names the place, and nothing is zero-filled, prepared or written, so the next segment
//! (which holds acknowledged records) is never re-prepared. Repair is the operator's
//! explicit choice (`EngineConfig::repair_damage`, `cairn repair`): it keeps every dropped
//! file in a `damaged-<time>` directory, zeroes the rest of the segment the log ends in,
//! and reports what it dropped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use hashbrown::HashMap;

use crate::core::checkpoint::Checkpoint;
use crate::core::limits::{BATCH_SIZE_BYTES_MAX, BLOCK_SIZE_BYTES};
use crate::core::offset_index::BatchLocation;
use crate::core::record::{BatchView, decode_batch};
use crate::core::recovery::{
    BlockProbe, RecoveryScanner, ScanProgress, crash_explains, probe_block_starts,
};
use crate::core::segment_header::SEGMENT_HEADER_SIZE_BYTES;
use crate::core::segment_index::{PartitionEntries, SegmentIndex, SegmentIndexBuilder};
use crate::core::shard_log::RecoveredPartition;
use crate::core::{Offset, PartitionId, SegmentPosition, ShardId};
use crate::error::{Inconsistency, OpenError, StorageError};
use crate::io::checkpoint;
use crate::io::config::EngineConfig;
use crate::io::data_dir::{load_log_start, sync_dir};
use crate::io::index_file::{
    IndexFile, index_file_name, read_index_file, remove_temporary, write_index_file,
};
use crate::io::segment::{SegmentFile, SegmentReader, parse_segment_file_name, segment_file_name};
use crate::io::state::segment_header;

/// Bytes read per request while recovering a segment; at least one largest batch plus a
/// block, as the scanner's `NeedMore` contract asks.
const RECOVERY_CHUNK_BYTES: usize = 8 * 1024 * 1024;
const _: () = assert!(RECOVERY_CHUNK_BYTES >= BATCH_SIZE_BYTES_MAX + BLOCK_SIZE_BYTES);
const _: () = assert!(RECOVERY_CHUNK_BYTES.is_multiple_of(BLOCK_SIZE_BYTES));

const BLOCK: u64 = BLOCK_SIZE_BYTES as u64;
const DATA_START: u64 = SEGMENT_HEADER_SIZE_BYTES as u64;

/// What recovery does with the index files of sealed segments (FORMAT.md, Segment index
/// file): a valid one seals the segment's batches in memory either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IndexFiles {
    /// Rewrite a missing, torn or stale one from the scan (opening a shard), once the log
    /// is known to be free of damage: a shard that refuses to open writes nothing.
    Rebuild,
    /// Write nothing (`cairn check`): the segment's batches stay dense.
    VerifyOnly,
    /// Write nothing and log nothing yet: the scan's pass of `Rebuild`.
    Defer,
}

/// What recovery found: the open segments of the log, where it ends, the chain to continue.
pub(crate) struct Recovered {
    pub(crate) segments: BTreeMap<u64, Rc<SegmentFile>>,
    /// The durable, verified index files of sealed segments.
    pub(crate) index_files: BTreeMap<u64, Rc<IndexFile>>,
    /// Just after the last valid batch; None: no segment yet.
    pub(crate) end: Option<SegmentPosition>,
    pub(crate) chain_crc: u32,
    /// What an explicit repair dropped, if it had to.
    pub(crate) repair: Option<RepairReport>,
    /// The checkpoint recovery resumed from, if one was used.
    pub(crate) checkpoint: Option<PathBuf>,
    /// The log's first segment (retention removed those before it).
    pub(crate) first_segment: u64,
}

/// What `repair` dropped from one shard's core log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepairReport {
    /// The shard.
    pub shard_id: ShardId,
    /// The segment the log now ends in.
    pub segment_index: u64,
    /// The position it ends at: everything after it was dropped.
    pub position: u64,
    /// Where the dropped segment files were moved (and the truncated one copied).
    pub quarantine_dir: PathBuf,
    /// Segment files moved out of the log.
    pub dropped_segment_count: usize,
    /// Per partition, the offsets that valid batches beyond the end held and the log no
    /// longer does: `start..end`. Consumers may have read them; they will be given out
    /// again to new appends.
    pub lost_offsets: Vec<(PartitionId, Offset, Offset)>,
}

/// A valid batch found beyond the log's end.
#[derive(Clone, Copy, Debug)]
struct Survivor {
    segment_index: u64,
    position: u64,
    partition_id: PartitionId,
    base_offset: Offset,
    end_offset: Offset,
}

impl Survivor {
    fn at(&self) -> SegmentPosition {
        SegmentPosition {
            segment_index: self.segment_index,
            position: self.position,
        }
    }

    fn of(segment_index: u64, position: u64, batch: &BatchView<'_>) -> Self {
        Survivor {
            segment_index,
            position,
            partition_id: batch.partition_id(),
            base_offset: batch.base_offset(),
            end_offset: batch.end_offset(),
        }
    }
}

/// Scans a shard's segments in order, rebuilds its partitions (FORMAT.md, Recovery), and
/// refuses to open on damage a crash cannot explain unless `config.repair_damage`.
///
/// With `resume`, `partitions` hold a checkpoint's state and the scan starts after its last
/// batch, which must be in the log (docs/DESIGN.md, "Checkpoints"): segments before the one
/// it ends in are opened, their headers verified, the index files of those the checkpoint
/// holds as sealed opened, and nothing of them read. Any error then may be the
/// checkpoint's, not the log's: the caller retries without it.
pub(crate) async fn recover_segments(
    shard_dir: &Path,
    shard_id: ShardId,
    config: &EngineConfig,
    partitions: &mut HashMap<PartitionId, RecoveredPartition>,
    index_files_mode: IndexFiles,
    resume: Option<Resume>,
    on_batch: &mut dyn FnMut(u64, u64, &BatchView<'_>),
) -> Result<Recovered, OpenError> {
    let first_segment = load_log_start(shard_dir)?;
    let mut indexes = list_segments(shard_dir)?;
    for leftover in indexes.iter().filter(|index| **index < first_segment) {
        // Retention moved the log start past it and a crash came before it was removed.
        if index_files_mode != IndexFiles::VerifyOnly {
            for name in [segment_file_name(*leftover), index_file_name(*leftover)] {
                let path = shard_dir.join(name);
                if let Err(error) = std::fs::remove_file(&path)
                    && error.kind() != std::io::ErrorKind::NotFound
                {
                    return Err(StorageError::from_io("remove", &path, &error).into());
                }
            }
        }
    }
    indexes.retain(|index| *index >= first_segment);
    if first_segment > 0 && resume.is_none() {
        return Err(OpenError::CheckpointRequired {
            path: shard_dir.join(crate::io::data_dir::LOG_START_FILE_NAME),
        });
    }
    if resume.is_some() {
        forget_removed_segments(shard_dir, first_segment, partitions)?;
    }
    let mut quarantine = Quarantine::new(shard_dir);
    // Segments are created in index order and removed only from the front (retention,
    // behind the log start file): a hole is damage.
    let hole = (first_segment..)
        .zip(&indexes)
        .find_map(|(expected, index)| (*index != expected).then_some(expected));
    if let Some(missing) = hole
        && !config.repair_damage
    {
        let path = shard_dir.join(segment_file_name(missing));
        tracing::error!(shard = shard_id.0, path = %path.display(), "core log damaged: segment missing");
        return Err(OpenError::MissingSegment { path });
    }
    let scanned_end = hole.unwrap_or(u64::MAX);

    let mut scanner = match resume {
        Some(resume) => RecoveryScanner::resume(
            resume.chain_crc,
            partitions
                .iter()
                .map(|(id, partition)| (*id, partition.state.synced_end()))
                .filter(|(_, end)| *end > Offset(0)),
        ),
        None => RecoveryScanner::new(),
    };
    let mut segments: BTreeMap<u64, Rc<SegmentFile>> = BTreeMap::new();
    let mut index_files = BTreeMap::new();
    let mut deferred: Vec<(Rc<SegmentFile>, u64)> = Vec::new();
    let mut end: Option<SegmentPosition> = None;
    for index in indexes.iter().copied().filter(|index| *index < scanned_end) {
        let path = shard_dir.join(segment_file_name(index));
        let expected = segment_header(shard_id, config, index);
        let resume_end = match resume {
            Some(resume) if index < resume.log_end.segment_index => {
                // Covered by the checkpoint: its header is checked, its index file opened.
                let segment = SegmentFile::open_existing(&path, &expected)
                    .await?
                    .ok_or_else(|| checkpoint_mismatch(&path, "a covered segment is blank"))?;
                let segment = Rc::new(segment);
                segments.insert(index, segment.clone());
                let write = index_files_mode != IndexFiles::VerifyOnly;
                reconcile_rewritten(shard_dir, &segment, partitions, config, write).await?;
                let sealed_now = partitions
                    .values()
                    .any(|partition| partition.synced_batches.run_in(index).is_some());
                if sealed_now {
                    let file = IndexFile::open(shard_dir, index).await.map_err(|error| {
                        checkpoint_mismatch(&path, &format!("its index file: {error}"))
                    })?;
                    index_files.insert(index, Rc::new(file));
                }
                // Its index write was pending when the checkpoint was taken: seal it now
                // (or after the damage check, like any segment whose file is invalid), so
                // that segments are sealed in order.
                let data_end = partitions
                    .values()
                    .flat_map(|partition| partition.synced_batches.dense_batches())
                    .filter(|batch| batch.segment_index == index)
                    .map(|batch| batch.position + u64::from(batch.len_bytes))
                    .max();
                if let Some(data_end) = data_end {
                    let mode = match index_files_mode {
                        IndexFiles::Rebuild | IndexFiles::Defer => IndexFiles::Defer,
                        IndexFiles::VerifyOnly => IndexFiles::VerifyOnly,
                    };
                    let verified = if deferred.is_empty() {
                        seal_recovered(shard_dir, &segment, data_end, partitions, mode, config)
                            .await
                    } else {
                        None
                    };
                    match verified {
                        Some(file) => {
                            index_files.insert(index, Rc::new(file));
                        }
                        None => deferred.push((segment, data_end)),
                    }
                }
                continue;
            }
            Some(resume) if index == resume.log_end.segment_index => Some(resume.log_end.position),
            _ => None,
        };
        let segment = match SegmentFile::open_existing(&path, &expected).await {
            Ok(Some(segment)) if segment.header().generation > 0 && resume_end.is_none() => {
                // A scan from here would take the rewritten segment's gaps for the log's
                // end, and cannot know what its removed batches left behind.
                return Err(OpenError::CheckpointRequired { path });
            }
            Ok(Some(segment)) => segment,
            Ok(None) if resume_end.is_some() => {
                return Err(checkpoint_mismatch(
                    &path,
                    "the segment it ends in is blank",
                ));
            }
            Ok(None) => break,
            // A header that does not verify in front of data: damage if the data continues
            // the log (its header was synced before any group was written to it), else
            // what a preparation torn over an earlier life of the file leaves behind, for
            // the probe below to judge like any bytes beyond the end.
            Err(OpenError::BadSegmentHeader { path, error }) => {
                if data_continues_log(&path, &scanner).await? {
                    return Err(OpenError::BadSegmentHeader { path, error });
                }
                tracing::warn!(path = %path.display(), %error, "segment header torn by a crash");
                break;
            }
            Err(error) => return Err(error),
        };
        let mut apply = |position: u64, batch: &BatchView<'_>| {
            apply_recovered_batch(partitions, index, position, batch)?;
            on_batch(index, position, batch);
            Ok(())
        };
        if let (Some(resume), Some(_)) = (resume, resume_end) {
            verify_last_batch(&segment, resume).await?;
        }
        let (valid_end, accepted_batch_count) =
            scan_segment(&segment, index, resume_end, &mut scanner, &mut apply).await?;
        if index > 0 && accepted_batch_count == 0 && resume_end.is_none() {
            // The log ended in the previous segment; this one was prepared ahead (or holds
            // what a torn group left) and is looked at below with everything after the end.
            break;
        }
        // The log continues here, so the segment before is sealed: every batch in it was
        // synced before this segment's first group was written. Segments are sealed in
        // order: from the first one whose index file is invalid on, they wait for the
        // damage check (nothing is written before it) and are sealed after it.
        if let Some(sealed_end) = end
            && let Some(sealed_segment) = segments.get(&sealed_end.segment_index).cloned()
        {
            let verified = if deferred.is_empty() {
                let mode = match index_files_mode {
                    IndexFiles::Rebuild | IndexFiles::Defer => IndexFiles::Defer,
                    IndexFiles::VerifyOnly => IndexFiles::VerifyOnly,
                };
                seal_recovered(
                    shard_dir,
                    &sealed_segment,
                    sealed_end.position,
                    partitions,
                    mode,
                    config,
                )
                .await
            } else {
                None
            };
            match verified {
                Some(file) => {
                    index_files.insert(sealed_end.segment_index, Rc::new(file));
                }
                None => deferred.push((sealed_segment, sealed_end.position)),
            }
        }
        segments.insert(index, Rc::new(segment));
        end = Some(SegmentPosition {
            segment_index: index,
            position: valid_end,
        });
    }

    if let Some(resume) = resume
        && end.is_none_or(|end| end < resume.log_end)
    {
        return Err(checkpoint_mismatch(
            &shard_dir.join(segment_file_name(resume.log_end.segment_index)),
            "the log does not reach the checkpoint's end",
        ));
    }
    let log_end = end.unwrap_or(SegmentPosition {
        segment_index: 0,
        position: DATA_START,
    });
    let beyond: Vec<u64> = indexes
        .iter()
        .copied()
        .filter(|index| *index > log_end.segment_index || (end.is_none() && *index == 0))
        .collect();
    let survivors = find_survivors(
        shard_dir,
        log_end,
        end.is_some(),
        &beyond,
        !config.repair_damage,
    )
    .await?;
    let first = survivors
        .iter()
        .find(|survivor| !crash_explains(log_end, survivor.at()))
        .copied();
    let Some(first) = first else {
        if hole.is_some() {
            // Repairing a hole with nothing valid after it: the files beyond go aside.
            for index in &beyond {
                quarantine.move_in(&shard_dir.join(segment_file_name(*index)))?;
            }
        }
        if index_files_mode == IndexFiles::Rebuild {
            seal_deferred(shard_dir, deferred, partitions, config, &mut index_files).await;
        }
        return Ok(Recovered {
            segments,
            index_files,
            end,
            chain_crc: scanner.chain_crc(),
            repair: quarantine.into_report(shard_id, log_end, Vec::new()),
            checkpoint: None,
            first_segment,
        });
    };

    let end_path = shard_dir.join(segment_file_name(log_end.segment_index));
    let (damage_position, reason) = match segments.get(&log_end.segment_index) {
        Some(segment) => locate_damage(segment, log_end.position).await,
        None => (0, "no valid segment header".to_owned()),
    };
    tracing::error!(
        shard = shard_id.0,
        path = %end_path.display(),
        position = damage_position,
        valid_end = log_end.position,
        %reason,
        found_segment = first.segment_index,
        found_position = first.position,
        "core log damaged: valid data beyond what a torn write can explain"
    );
    if !config.repair_damage {
        return Err(OpenError::Damaged {
            path: end_path,
            position: damage_position,
            valid_end: log_end.position,
            reason,
            found_path: shard_dir.join(segment_file_name(first.segment_index)),
            found_position: first.position,
            found_partition: first.partition_id.0,
            found_offsets_start: first.base_offset.0,
            found_offsets_end: first.end_offset.0,
        });
    }

    // Repair: keep everything it drops, then make the dropped bytes unreadable as data.
    for index in &beyond {
        quarantine.move_in(&shard_dir.join(segment_file_name(*index)))?;
    }
    if let Some(segment) = segments.get(&log_end.segment_index) {
        quarantine.copy_in(segment.path())?;
        segment
            .zero_from(log_end.position.div_ceil(BLOCK) * BLOCK)
            .await?;
    }
    let mut lost: BTreeMap<PartitionId, (Offset, Offset)> = BTreeMap::new();
    for survivor in &survivors {
        let kept_end = scanner.next_offset(survivor.partition_id);
        if survivor.end_offset > kept_end {
            let entry = lost
                .entry(survivor.partition_id)
                .or_insert((kept_end, survivor.end_offset));
            entry.1 = entry.1.max(survivor.end_offset);
        }
    }
    let lost_offsets = lost
        .into_iter()
        .map(|(partition, (start, end))| (partition, start, end))
        .collect();
    let report = quarantine.into_report(shard_id, log_end, lost_offsets);
    tracing::warn!(?report, "core log repaired: damaged data dropped");
    // Repair changed only the segment the log ends in and those after it: the sealed ones
    // before are as the scan found them.
    seal_deferred(shard_dir, deferred, partitions, config, &mut index_files).await;
    Ok(Recovered {
        segments,
        index_files,
        end,
        chain_crc: scanner.chain_crc(),
        repair: report,
        checkpoint: None,
        first_segment,
    })
}

/// `cairn check` of a log retention rewrote: the shard opens from its newest usable
/// checkpoint as `cairn serve` would, writing nothing, and every segment before it — which
/// that open does not read — is verified from its index: each entry's batch must decode,
/// checksum and all, and be that partition's with those offsets.
async fn check_retained(
    shard_dir: &Path,
    shard_id: ShardId,
    config: &EngineConfig,
    owned: &[PartitionId],
    on_batch: &mut dyn FnMut(u64, u64, &BatchView<'_>),
) -> Result<(Recovered, HashMap<PartitionId, RecoveredPartition>), OpenError> {
    for (log_end, path) in checkpoint::list(shard_dir)? {
        let Ok((resume, mut partitions)) = checkpoint::read(&path)
            .map_err(|error| error.to_string())
            .and_then(|checkpoint| restore(&checkpoint, log_end, shard_id, config, owned))
        else {
            continue;
        };
        verify_covered_segments(
            shard_dir,
            shard_id,
            config,
            resume.log_end.segment_index,
            on_batch,
        )
        .await?;
        match recover_segments(
            shard_dir,
            shard_id,
            config,
            &mut partitions,
            IndexFiles::VerifyOnly,
            Some(resume),
            on_batch,
        )
        .await
        {
            Ok(recovered) => return Ok((recovered, partitions)),
            Err(error) if is_damage(&error) => return Err(error),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "checkpoint not used");
            }
        }
    }
    Err(OpenError::CheckpointRequired {
        path: shard_dir.to_owned(),
    })
}

async fn verify_covered_segments(
    shard_dir: &Path,
    shard_id: ShardId,
    config: &EngineConfig,
    before: u64,
    on_batch: &mut dyn FnMut(u64, u64, &BatchView<'_>),
) -> Result<(), OpenError> {
    let first_segment = load_log_start(shard_dir)?;
    for index in list_segments(shard_dir)?
        .into_iter()
        .filter(|index| (first_segment..before).contains(index))
    {
        let path = shard_dir.join(segment_file_name(index));
        let damage = |position: u64, problem: String| OpenError::CoveredDamage {
            path: path.clone(),
            position,
            problem,
        };
        let Some(segment) =
            SegmentFile::open_existing(&path, &segment_header(shard_id, config, index)).await?
        else {
            return Err(damage(0, "a covered segment has no header".to_owned()));
        };
        let index_path = shard_dir.join(index_file_name(index));
        let decoded = match read_index_file(&index_path)? {
            Some(bytes) => SegmentIndex::decode(&bytes, segment.header())
                .map_err(|error| damage(0, format!("its index file: {error}")))?,
            None if segment.header().generation > 0 => rebuild_rewritten_index(&segment).await?,
            None => return Err(damage(0, "its index file is missing".to_owned())),
        };
        let mut entries: Vec<(PartitionId, crate::core::segment_index::IndexEntry)> = decoded
            .partitions
            .iter()
            .flat_map(|partition| {
                partition
                    .entries
                    .iter()
                    .map(|entry| (partition.partition_id, *entry))
            })
            .collect();
        entries.sort_unstable_by_key(|(_, entry)| entry.position);
        for (partition, entry) in entries {
            let bytes = segment
                .read(entry.position, entry.len_bytes as usize)
                .await?;
            let batch =
                decode_batch(&bytes).map_err(|error| damage(entry.position, error.to_string()))?;
            if batch.partition_id() != partition || batch.base_offset() != entry.base_offset {
                return Err(damage(
                    entry.position,
                    "the batch is not the one its index entry names".to_owned(),
                ));
            }
            on_batch(index, entry.position, &batch);
        }
    }
    Ok(())
}

/// Drops the checkpoint's summaries of segments retention removed after it was taken:
/// each must be its partition's oldest, and none may still be unsealed.
fn forget_removed_segments(
    shard_dir: &Path,
    first_segment: u64,
    partitions: &mut HashMap<PartitionId, RecoveredPartition>,
) -> Result<(), OpenError> {
    for partition in partitions.values_mut() {
        let batches = &mut partition.synced_batches;
        while let Some(segment_index) = batches
            .sealed_runs()
            .first()
            .map(|run| run.segment_index)
            .filter(|segment_index| *segment_index < first_segment)
        {
            batches.remove_first_run(segment_index);
        }
        if batches
            .dense_batches()
            .first()
            .is_some_and(|batch| batch.segment_index < first_segment)
        {
            return Err(checkpoint_mismatch(
                &shard_dir.join(crate::io::data_dir::LOG_START_FILE_NAME),
                "it holds unsealed batches of a removed segment",
            ));
        }
    }
    Ok(())
}

/// Makes the checkpoint's summaries of `segment`, which it covers as sealed, agree with
/// the generation on disk. The same generation: nothing to do. A later one (retention
/// rewrote the segment after the capture): each run is in the new index with the same
/// offsets and batch count (entries moved) or gone, and gone only as its partition's
/// first run; the index is rebuilt from the segment (and written, with `write`) if the
/// crash came between the segment's rename and its index's. Anything else means the checkpoint does not
/// describe this log.
async fn reconcile_rewritten(
    shard_dir: &Path,
    segment: &SegmentFile,
    partitions: &mut HashMap<PartitionId, RecoveredPartition>,
    config: &EngineConfig,
    write: bool,
) -> Result<(), OpenError> {
    let index = segment.index();
    let header = *segment.header();
    let path = segment.path().to_owned();
    let mut checkpoint_generation = None;
    let mut unsealed = false;
    for partition in partitions.values() {
        let batches = &partition.synced_batches;
        if let Some(run) = batches.run_in(index) {
            if checkpoint_generation.is_some_and(|generation| generation != run.generation) {
                return Err(checkpoint_mismatch(&path, "its runs name two generations"));
            }
            checkpoint_generation = Some(run.generation);
        }
        let dense = batches.dense_batches();
        if dense.iter().any(|batch| batch.segment_index == index) {
            // Sealing them here needs them at the front of the dense part; behind an
            // earlier segment left unsealed (its index to be rewritten after the damage
            // check) they cannot be, and the checkpoint is passed over.
            if header.generation > 0
                && dense
                    .first()
                    .is_some_and(|batch| batch.segment_index != index)
            {
                return Err(checkpoint_mismatch(
                    &path,
                    "a rewritten segment's batches are unsealed behind an earlier segment's",
                ));
            }
            unsealed = true;
        }
    }
    if unsealed && checkpoint_generation.is_some() {
        return Err(checkpoint_mismatch(
            &path,
            "it holds the segment both sealed and unsealed",
        ));
    }
    // Unsealed batches of a segment still of the log's own generation are sealed by the
    // caller, against the segment's bytes; a rewritten one is reconciled here.
    let checkpoint_generation = match checkpoint_generation {
        Some(generation) => generation,
        None if unsealed && header.generation > 0 => 0,
        None => return Ok(()),
    };
    if header.generation == checkpoint_generation {
        return Ok(());
    }
    if header.generation < checkpoint_generation {
        return Err(checkpoint_mismatch(
            &path,
            "it names a later generation of the segment than the disk holds",
        ));
    }
    let index_path = shard_dir.join(crate::io::index_file::index_file_name(index));
    let decoded = crate::io::index_file::read_index_file(&index_path)?
        .and_then(|bytes| SegmentIndex::decode(&bytes, &header).ok());
    let on_disk = match decoded {
        Some(on_disk) => on_disk,
        None => {
            tracing::warn!(path = %index_path.display(), "index of a rewritten segment missing or of another generation: rebuilt");
            let rebuilt = rebuild_rewritten_index(segment).await?;
            if write {
                write_index_file(
                    shard_dir,
                    index,
                    &rebuilt.encode(),
                    config.fault_hook.as_ref(),
                )
                .await?;
            }
            rebuilt
        }
    };
    let placements = on_disk.placements();
    let mut ids: Vec<PartitionId> = partitions.keys().copied().collect();
    ids.sort_unstable();
    for id in ids {
        let batches = &mut partitions
            .get_mut(&id)
            .expect("ids are the map's")
            .synced_batches;
        if unsealed {
            // The capture came before the segment's index was written: its batches are
            // sealed here as that write would have (a run of the log's generation at
            // entries the rewrite keeps or removes), then reconciled like any run.
            let dense: Vec<BatchLocation> = batches
                .dense_batches()
                .iter()
                .filter(|batch| batch.segment_index == index)
                .copied()
                .collect();
            if let (Some(first), Some(last)) = (dense.first(), dense.last()) {
                let row = on_disk
                    .partitions
                    .iter()
                    .zip(&placements)
                    .find(|(partition, _)| partition.partition_id == id);
                let entries_position = row.map_or(0, |(_, placement)| placement.entries_position);
                let same = row.is_none_or(|(partition, placement)| {
                    partition.entries.first().map(|entry| entry.base_offset)
                        == Some(first.base_offset)
                        && partition.entries.last().map(|entry| entry.end_offset())
                            == Some(last.end_offset)
                        && placement.entry_count as usize == dense.len()
                });
                if !same {
                    return Err(checkpoint_mismatch(
                        &path,
                        "a kept run changed in the rewrite",
                    ));
                }
                batches.seal(index, entries_position);
            }
        }
        let Some(run) = batches.run_in(index).cloned() else {
            continue;
        };
        let row = on_disk
            .partitions
            .iter()
            .zip(&placements)
            .find(|(partition, _)| partition.partition_id == id);
        match row {
            Some((partition, placement)) => {
                let same = partition.entries.first().map(|entry| entry.base_offset)
                    == Some(run.base_offset)
                    && partition.entries.last().map(|entry| entry.end_offset())
                        == Some(run.end_offset)
                    && placement.entry_count == run.entry_count;
                if !same {
                    return Err(checkpoint_mismatch(
                        &path,
                        "a kept run changed in the rewrite",
                    ));
                }
                batches.relocate_run(index, header.generation, placement.entries_position);
            }
            None => {
                if batches
                    .sealed_runs()
                    .first()
                    .map(|first| first.segment_index)
                    != Some(index)
                {
                    return Err(checkpoint_mismatch(
                        &path,
                        "a run removed by retention was not its partition's oldest",
                    ));
                }
                batches.remove_first_run(index);
            }
        }
    }
    if on_disk
        .partitions
        .iter()
        .any(|partition| !partitions.contains_key(&partition.partition_id))
    {
        return Err(checkpoint_mismatch(
            &path,
            "the rewrite holds a partition it does not",
        ));
    }
    Ok(())
}

/// The index of a segment retention rewrote, from its bytes: its batches lie back to
/// back from the first data block (the file was written whole, so nothing torn or stale
/// follows them) and each must verify.
async fn rebuild_rewritten_index(segment: &SegmentFile) -> Result<SegmentIndex, OpenError> {
    let mut builder = SegmentIndexBuilder::new();
    let mut position = DATA_START;
    loop {
        // Magic and length lie in the first 16 bytes of both batch versions.
        if position + 16 > segment.size_bytes() {
            break;
        }
        let head = segment.read(position, 16).await?;
        let word = |at: usize| {
            head.get(at..at + 4)
                .and_then(|bytes| <[u8; 4]>::try_from(bytes).ok())
                .map(u32::from_le_bytes)
        };
        if word(0) != Some(crate::core::record::BATCH_MAGIC) {
            break;
        }
        let Some(len_bytes) = word(12).map(|len| len as usize) else {
            break;
        };
        if len_bytes == 0 || len_bytes > BATCH_SIZE_BYTES_MAX {
            return Err(OpenError::Storage(StorageError {
                operation: "verify",
                path: segment.path().to_owned(),
                errno: None,
                message: format!(
                    "a rewritten segment's batch at {position} has length {len_bytes}"
                ),
            }));
        }
        if position + len_bytes as u64 > segment.size_bytes() {
            break;
        }
        let bytes = segment.read(position, len_bytes).await?;
        let batch = decode_batch(&bytes)
            .map_err(|error| StorageError::corrupt(segment.path(), position, error))?;
        builder.push(
            batch.partition_id(),
            &BatchLocation::of(segment.index(), position, &batch),
            batch.max_record_timestamp_ms(),
        );
        position += len_bytes as u64;
    }
    Ok(builder.finish(*segment.header()))
}

/// Recovers one shard: from its newest usable checkpoint and the log after it, else from
/// the whole log (docs/DESIGN.md §3.7). A checkpoint that cannot be read, does not decode,
/// belongs elsewhere or does not match the log is logged and passed over for the one
/// before it, so a checkpoint can make opening faster but never change what it recovers.
/// An explicit repair scans the whole log and then removes every checkpoint, since they
/// may describe records it dropped.
pub(crate) async fn recover_shard(
    shard_dir: &Path,
    shard_id: ShardId,
    config: &EngineConfig,
    owned: &[PartitionId],
) -> Result<(Recovered, HashMap<PartitionId, RecoveredPartition>), OpenError> {
    if !config.repair_damage {
        for (log_end, path) in checkpoint::list(shard_dir)? {
            let restored = checkpoint::read(&path)
                .map_err(|error| error.to_string())
                .and_then(|checkpoint| restore(&checkpoint, log_end, shard_id, config, owned));
            let (resume, mut partitions) = match restored {
                Ok(restored) => restored,
                Err(problem) => {
                    tracing::warn!(shard = shard_id.0, path = %path.display(), %problem, "checkpoint not used");
                    continue;
                }
            };
            match recover_segments(
                shard_dir,
                shard_id,
                config,
                &mut partitions,
                IndexFiles::Rebuild,
                Some(resume),
                &mut |_, _, _| {},
            )
            .await
            {
                Ok(mut recovered) => {
                    tracing::info!(shard = shard_id.0, path = %path.display(), "recovered from checkpoint");
                    recovered.checkpoint = Some(path);
                    return Ok((recovered, partitions));
                }
                Err(error) => {
                    tracing::warn!(shard = shard_id.0, path = %path.display(), %error, "checkpoint not used: the log after it does not recover from it");
                }
            }
        }
    }
    let mut partitions = owned
        .iter()
        .map(|id| (*id, RecoveredPartition::empty(*id)))
        .collect();
    let recovered = recover_segments(
        shard_dir,
        shard_id,
        config,
        &mut partitions,
        IndexFiles::Rebuild,
        None,
        &mut |_, _, _| {},
    )
    .await?;
    if recovered.repair.is_some() {
        checkpoint::remove_all(shard_dir)?;
    }
    Ok((recovered, partitions))
}

/// The partitions and resume point a decoded checkpoint gives this shard, or why it does
/// not fit: another shard's, a name that disagrees with its content, a partition the
/// catalog does not give this shard, or an empty log.
fn restore(
    checkpoint: &Checkpoint,
    named_end: SegmentPosition,
    shard_id: ShardId,
    config: &EngineConfig,
    owned: &[PartitionId],
) -> Result<(Resume, HashMap<PartitionId, RecoveredPartition>), String> {
    if checkpoint.shard_id != shard_id || checkpoint.shard_count != config.shard_count {
        return Err(format!(
            "written for shard {} of {}",
            checkpoint.shard_id.0, checkpoint.shard_count
        ));
    }
    let (Some(log_end), Some(last_batch)) = (checkpoint.log_end, checkpoint.last_batch) else {
        return Err("it covers no batch".to_owned());
    };
    if log_end != named_end {
        return Err(format!(
            "its name says {named_end:?}, its content {log_end:?}"
        ));
    }
    let mut partitions: HashMap<PartitionId, RecoveredPartition> = owned
        .iter()
        .map(|id| (*id, RecoveredPartition::empty(*id)))
        .collect();
    for partition in &checkpoint.partitions {
        let Some(slot) = partitions.get_mut(&partition.id) else {
            return Err(format!("{:?} is not one of this shard's", partition.id));
        };
        *slot =
            RecoveredPartition::from_checkpoint(partition).map_err(|error| error.to_string())?;
    }
    let resume = Resume {
        log_end,
        last_batch,
        chain_crc: checkpoint.chain_crc,
    };
    Ok((resume, partitions))
}

/// The operator's explicit repair of a stopped server's data directory: opens every shard
/// with `repair_damage` (each on its own short-lived executor), so that damage a crash
/// cannot explain is truncated, the dropped files kept aside, and what was lost reported.
/// Returns each damaged shard's report; empty when nothing was damaged (then nothing was
/// changed beyond what any open does). Blocking.
pub fn repair_data_dir(
    mut config: EngineConfig,
) -> Result<(crate::Catalog, Vec<RepairReport>), OpenError> {
    config.repair_damage = true;
    let engine = crate::Engine::open(config.clone())?;
    let mut reports = Vec::new();
    for shard in 0..config.shard_count {
        let engine = engine.clone();
        let outcome = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .name("cairn-repair")
            // Explicit, as everywhere: what a non-root memlock limit allows here.
            .io_memory(8 * 1024 * 1024)
            .spawn(move || async move {
                let shard = engine.open_shard(ShardId(shard)).await?;
                let report = shard.repair_report().cloned();
                shard.close().await;
                Ok::<_, OpenError>(report)
            })
            .map_err(|error| OpenError::BadConfig(format!("starting an executor: {error}")))?
            .join()
            .map_err(|error| OpenError::BadConfig(format!("repair executor failed: {error}")))?;
        reports.extend(outcome?);
    }
    Ok((engine.catalog().clone(), reports))
}

/// What [`scan_data_dir`] found in one shard's core log.
#[derive(Debug)]
pub struct ShardScan {
    /// The shard.
    pub shard_id: ShardId,
    /// Segment files in its directory.
    pub segment_count: usize,
    /// Just after the last valid batch; `None` when the log holds none (or is damaged).
    pub end: Option<SegmentPosition>,
    /// Its partitions, as far as the log is valid, by id.
    pub partitions: Vec<PartitionScan>,
    /// Damage that would make `cairn serve` refuse to open the shard: a missing segment, a
    /// damaged segment header in front of data, a short segment file, valid data beyond
    /// what a torn write explains, a batch contradicting the catalog. Each names its file
    /// and position.
    pub damage: Option<OpenError>,
}

/// One partition of a [`ShardScan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionScan {
    /// The partition.
    pub partition_id: PartitionId,
    /// Its first offset in the log (0 when empty).
    pub offsets_start: Offset,
    /// Its end offset (exclusive).
    pub offsets_end: Offset,
    /// Distinct non-empty keys.
    pub key_count: usize,
    /// Batches.
    pub batch_count: usize,
}

/// Whether `error` is damage found in the log (as opposed to a failure to read it).
fn is_damage(error: &OpenError) -> bool {
    matches!(
        error,
        OpenError::MissingSegment { .. }
            | OpenError::BadSegmentHeader { .. }
            | OpenError::Inconsistent { .. }
            | OpenError::Damaged { .. }
            | OpenError::CheckpointRequired { .. }
            | OpenError::CoveredDamage { .. }
    )
}

/// Offline verification of a stopped server's data directory (`cairn check`, `cairn dump`):
/// takes the directory's lock (refused while a server holds it), then scans every shard's
/// core log with recovery itself, so checksums, the chain, partition offsets and the damage
/// rules are exactly those `cairn serve` applies when it opens it. Prepares, repairs and
/// writes nothing (a segment is `fdatasync`ed before it is read, as recovery does).
/// `on_batch(catalog, shard, segment_index, position, batch)` sees every valid batch in log
/// order, with the directory's topic catalog as read under the lock.
/// Blocking: runs one short-lived executor per shard on the calling thread.
///
/// # Errors
///
/// `path` is not a cairn data directory, is in use, or could not be read. Damage is not
/// an error: it is in the shard's [`ShardScan::damage`].
pub fn scan_data_dir(
    path: &Path,
    on_batch: &mut dyn FnMut(&crate::Catalog, ShardId, u64, u64, &BatchView<'_>),
) -> Result<(crate::Catalog, Vec<ShardScan>), OpenError> {
    let shard_count = crate::io::data_dir::recorded_shard_count(path)?.ok_or_else(|| {
        OpenError::BadConfig(format!("{} is not a cairn data directory", path.display()))
    })?;
    let engine = crate::Engine::open(EngineConfig::new(path, shard_count))?;
    let catalog = engine.catalog().clone();
    let mut scans = Vec::new();
    for shard in 0..shard_count {
        let shard_id = ShardId(shard);
        let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .name("cairn-check")
            // Explicit, as everywhere: what a non-root memlock limit allows here.
            .io_memory(8 * 1024 * 1024)
            .make()
            .map_err(|error| OpenError::BadConfig(format!("starting an executor: {error}")))?;
        let scan = executor.run(async {
            let mut visit = |segment_index: u64, position: u64, batch: &BatchView<'_>| {
                on_batch(&catalog, shard_id, segment_index, position, batch);
            };
            engine.scan_shard(shard_id, &mut visit).await
        })?;
        scans.push(scan);
    }
    Ok((catalog, scans))
}

/// One shard of [`scan_data_dir`], on an executor: recovery over `partitions` (the shard's,
/// empty), its damage caught into the result.
pub(crate) async fn scan_shard_dir(
    shard_dir: &Path,
    shard_id: ShardId,
    config: &EngineConfig,
    mut partitions: HashMap<PartitionId, RecoveredPartition>,
    on_batch: &mut dyn FnMut(u64, u64, &BatchView<'_>),
) -> Result<ShardScan, OpenError> {
    let segment_count = list_segments(shard_dir)?.len();
    let scanned = recover_segments(
        shard_dir,
        shard_id,
        config,
        &mut partitions,
        IndexFiles::VerifyOnly,
        None,
        on_batch,
    )
    .await;
    let scanned = match scanned {
        // Retention removed part of this log: only a checkpoint opens it, as at serve.
        Err(OpenError::CheckpointRequired { .. }) => {
            let owned: Vec<PartitionId> = partitions.keys().copied().collect();
            match check_retained(shard_dir, shard_id, config, &owned, on_batch).await {
                Ok((recovered, restored)) => {
                    partitions = restored;
                    Ok(recovered)
                }
                Err(error) => Err(error),
            }
        }
        other => other,
    };
    let (end, damage) = match scanned {
        Ok(recovered) => (recovered.end, None),
        Err(error) if is_damage(&error) => (None, Some(error)),
        Err(error) => return Err(error),
    };
    let mut partitions: Vec<PartitionScan> = partitions
        .into_iter()
        .map(|(partition_id, recovered)| PartitionScan {
            partition_id,
            offsets_start: recovered.synced_batches.start_offset(),
            offsets_end: recovered.synced_batches.end_offset(),
            key_count: recovered.state.key_count(),
            batch_count: recovered.synced_batches.batch_count(),
        })
        .collect();
    partitions.sort_by_key(|partition| partition.partition_id);
    Ok(ShardScan {
        shard_id,
        segment_count,
        end,
        partitions,
        damage,
    })
}

fn list_segments(shard_dir: &Path) -> Result<Vec<u64>, StorageError> {
    let entries = std::fs::read_dir(shard_dir)
        .map_err(|error| StorageError::from_io("list", shard_dir, &error))?;
    let mut indexes = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|error| StorageError::from_io("list", shard_dir, &error))?;
        if let Some(index) = entry.file_name().to_str().and_then(parse_segment_file_name) {
            indexes.push(index);
        }
    }
    indexes.sort_unstable();
    Ok(indexes)
}

/// Whether the bytes at the start of `path`'s data are the batch that continues the log.
async fn data_continues_log(path: &Path, scanner: &RecoveryScanner) -> Result<bool, OpenError> {
    let reader = SegmentReader::open(path).await?;
    let len_bytes = usize::try_from(
        reader
            .size_bytes()
            .saturating_sub(DATA_START)
            .min((BATCH_SIZE_BYTES_MAX + BLOCK_SIZE_BYTES) as u64),
    )
    .expect("at most a batch and a block");
    let bytes = reader.read_aligned(DATA_START, len_bytes).await?;
    reader.close().await;
    Ok(decode_batch(&bytes).is_ok_and(|batch| {
        batch.prev_batch_crc() == scanner.chain_crc()
            && batch.base_offset() == scanner.next_offset(batch.partition_id())
    }))
}

/// Feeds one segment to the scanner in chunks and hands every accepted batch to `visit`
/// (which applies it to the partitions, or only notes its location). Returns the position
/// after the last accepted batch and how many were accepted; the first inconsistency
/// `visit` reports fails the scan.
///
/// With `resume_end`, the scan starts after a checkpoint's last batch, which ends there.
async fn scan_segment(
    segment: &SegmentFile,
    index: u64,
    resume_end: Option<u64>,
    scanner: &mut RecoveryScanner,
    visit: &mut dyn FnMut(u64, &BatchView<'_>) -> Result<(), Inconsistency>,
) -> Result<(u64, u64), OpenError> {
    let segment_size_bytes = segment.size_bytes();
    let mut chunk_position = match resume_end {
        Some(valid_end) if (DATA_START..=segment_size_bytes).contains(&valid_end) => {
            scanner.begin_segment_after(segment_size_bytes, valid_end);
            valid_end.div_ceil(BLOCK) * BLOCK
        }
        Some(_) => {
            return Err(checkpoint_mismatch(
                segment.path(),
                "its end lies outside the segment",
            ));
        }
        None => {
            scanner.begin_segment(segment_size_bytes);
            DATA_START
        }
    };
    let mut inconsistency: Option<OpenError> = None;
    loop {
        let len_bytes =
            usize::try_from((segment_size_bytes - chunk_position).min(RECOVERY_CHUNK_BYTES as u64))
                .expect("chunk length is at most RECOVERY_CHUNK_BYTES");
        let chunk = segment
            .read_aligned(chunk_position, len_bytes)
            .await
            .map_err(OpenError::Storage)?;
        let mut on_batch = |position: u64, batch: &BatchView<'_>| {
            if inconsistency.is_some() {
                return;
            }
            if let Err(problem) = visit(position, batch) {
                inconsistency = Some(OpenError::Inconsistent {
                    path: segment.path().to_owned(),
                    position,
                    problem,
                });
            }
        };
        match scanner.scan(&chunk, chunk_position, &mut on_batch) {
            ScanProgress::NeedMore { position } => {
                let aligned = position - position % BLOCK;
                assert!(aligned >= chunk_position, "scanner never asks to go back");
                chunk_position = aligned;
            }
            ScanProgress::SegmentEnd {
                valid_end,
                accepted_batch_count,
                tail,
            } => {
                tracing::debug!(segment = index, valid_end, ?tail, "segment scanned");
                if let Some(error) = inconsistency {
                    return Err(error);
                }
                return Ok((valid_end, accepted_batch_count));
            }
        }
    }
}

/// Rebuilds one segment's index from its bytes alone, without applying its batches to any
/// partition state: what a recovery that starts from a checkpoint after this segment needs
/// when the segment's index file is missing or invalid. `scanner` continues the log (the
/// chain and partition offsets at the segment's start); returns the index and where the
/// segment's valid data ends.
///
/// # Errors
///
/// Reading fails, or a batch contradicts the log.
pub async fn rebuild_segment_index(
    segment: &SegmentFile,
    scanner: &mut RecoveryScanner,
) -> Result<SegmentIndex, OpenError> {
    let mut builder = SegmentIndexBuilder::new();
    let segment_index = segment.index();
    let mut note = |position: u64, batch: &BatchView<'_>| {
        builder.push(
            batch.partition_id(),
            &BatchLocation::of(segment_index, position, batch),
            batch.max_record_timestamp_ms(),
        );
        Ok(())
    };
    let (valid_end, _) = scan_segment(segment, segment_index, None, scanner, &mut note).await?;
    let index = builder.finish(*segment.header());
    debug_assert!(index.entry_count() == 0 || index.data_end_position == valid_end);
    Ok(index)
}

/// Seals, in order, the segments whose index file the scan found invalid (and those after
/// the first such one), rewriting the invalid files; stops at the first that cannot be
/// written, leaving it and the rest to the `ShardLog`'s index writer.
async fn seal_deferred(
    shard_dir: &Path,
    deferred: Vec<(Rc<SegmentFile>, u64)>,
    partitions: &mut HashMap<PartitionId, RecoveredPartition>,
    config: &EngineConfig,
    index_files: &mut BTreeMap<u64, Rc<IndexFile>>,
) {
    for (segment, valid_end) in deferred {
        let sealed = seal_recovered(
            shard_dir,
            &segment,
            valid_end,
            partitions,
            IndexFiles::Rebuild,
            config,
        )
        .await;
        match sealed {
            Some(file) => {
                index_files.insert(segment.index(), Rc::new(file));
            }
            None => break,
        }
    }
}

/// Segment `segment` is sealed and its batches, ending at `valid_end`, are the first dense
/// ones of `partitions`: checks its index file against them and, if it is missing, torn,
/// stale or unreadable, writes it again (`IndexFiles::Rebuild`). Once the file is durable
/// the partitions keep only a summary of the segment; the open file is returned. Failing
/// to write or open it is logged, not fatal: the batches then stay dense, and the
/// `ShardLog` tries again (`io::index_file`).
async fn seal_recovered(
    shard_dir: &Path,
    segment: &SegmentFile,
    valid_end: u64,
    partitions: &mut HashMap<PartitionId, RecoveredPartition>,
    mode: IndexFiles,
    config: &EngineConfig,
) -> Option<IndexFile> {
    let segment_index = segment.index();
    let mut ids: Vec<PartitionId> = partitions.keys().copied().collect();
    ids.sort_unstable();
    let expected = SegmentIndex {
        segment: *segment.header(),
        data_end_position: valid_end,
        partitions: ids
            .into_iter()
            .filter_map(|partition_id| {
                let entries = partitions
                    .get(&partition_id)?
                    .synced_batches
                    .segment_entries(segment_index);
                (!entries.is_empty()).then_some(PartitionEntries {
                    partition_id,
                    entries,
                })
            })
            .collect(),
    };
    let path = shard_dir.join(index_file_name(segment_index));
    // The scan just rebuilt every entry, so the check is exact: the file must hold what
    // we would write now, byte for byte (then its checksums verify too), followed by
    // less than a block of zeros. Only a mismatch is decoded, to say what is wrong.
    let encoded = expected.encode();
    let problem = match read_index_file(&path) {
        Ok(None) => Some("missing".to_owned()),
        Ok(Some(bytes)) if is_encoding_of(&bytes, &encoded) => None,
        Ok(Some(bytes)) => Some(match SegmentIndex::decode(&bytes, segment.header()) {
            Ok(_) => "stale: it does not match its segment".to_owned(),
            Err(error) => error.to_string(),
        }),
        Err(error) => Some(error.to_string()),
    };
    if let Some(problem) = problem {
        match mode {
            IndexFiles::Defer => return None,
            IndexFiles::VerifyOnly => {
                tracing::warn!(path = %path.display(), %problem, "segment index file invalid");
                return None;
            }
            IndexFiles::Rebuild => {}
        }
        tracing::warn!(path = %path.display(), %problem, "segment index file invalid: rebuilding it from its segment");
        let written = match remove_temporary(shard_dir, segment_index) {
            Ok(()) => {
                write_index_file(
                    shard_dir,
                    segment_index,
                    &encoded,
                    config.fault_hook.as_ref(),
                )
                .await
            }
            Err(error) => Err(error),
        };
        if let Err(error) = written {
            tracing::warn!(path = %path.display(), %error, "could not write a segment index file: its batches stay in memory");
            return None;
        }
    }
    let file = match IndexFile::open(shard_dir, segment_index).await {
        Ok(file) => file,
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "could not open a segment index file: its batches stay in memory");
            return None;
        }
    };
    for placement in expected.placements() {
        if let Some(partition) = partitions.get_mut(&placement.partition_id) {
            partition
                .synced_batches
                .seal(segment_index, placement.entries_position);
        }
    }
    Some(file)
}

/// Where a recovery resumes: after the last batch a checkpoint covers.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Resume {
    /// Just after that batch.
    pub(crate) log_end: SegmentPosition,
    /// Where that batch starts.
    pub(crate) last_batch: SegmentPosition,
    /// Its `crc`.
    pub(crate) chain_crc: u32,
}

fn checkpoint_mismatch(path: &Path, problem: &str) -> OpenError {
    OpenError::CheckpointMismatch {
        path: path.to_owned(),
        problem: problem.to_owned(),
    }
}

/// Checks that the log holds the checkpoint's last batch where the checkpoint says, whole,
/// with the checkpoint's chain CRC: a checkpoint of another log (a data directory copied
/// together from two places, a log repaired behind it) is refused, not believed.
async fn verify_last_batch(segment: &SegmentFile, resume: Resume) -> Result<(), OpenError> {
    let start = resume.last_batch.position;
    let end = resume.log_end.position;
    let len_bytes = end.checked_sub(start).filter(|len| {
        resume.last_batch.segment_index == resume.log_end.segment_index
            && *len <= BATCH_SIZE_BYTES_MAX as u64
            && start >= DATA_START
            && end <= segment.size_bytes()
    });
    let Some(len_bytes) = len_bytes else {
        return Err(checkpoint_mismatch(
            segment.path(),
            "its last batch is misplaced",
        ));
    };
    let bytes = segment
        .read(start, usize::try_from(len_bytes).expect("at most a batch"))
        .await
        .map_err(OpenError::Storage)?;
    let holds_it = decode_batch(&bytes)
        .is_ok_and(|batch| batch.crc() == resume.chain_crc && batch.len_bytes() == bytes.len());
    if holds_it {
        Ok(())
    } else {
        Err(checkpoint_mismatch(
            segment.path(),
            "the log does not hold its last batch",
        ))
    }
}

/// Every valid batch that starts at a block boundary after the log's end: in the segment the
/// log ends in (from the block after its end) and in every later segment file. With
/// `stop_at_damage`, stops at the first one a crash cannot explain.
async fn find_survivors(
    shard_dir: &Path,
    end: SegmentPosition,
    end_segment_has_data: bool,
    beyond: &[u64],
    stop_at_damage: bool,
) -> Result<Vec<Survivor>, StorageError> {
    let mut survivors = Vec::new();
    let mut regions = Vec::new();
    if end_segment_has_data {
        regions.push((end.segment_index, end.position.div_ceil(BLOCK) * BLOCK));
    }
    regions.extend(beyond.iter().map(|index| (*index, DATA_START)));
    for (index, from) in regions {
        let reader = SegmentReader::open(&shard_dir.join(segment_file_name(index))).await?;
        let mut chunk_position = from;
        'segment: while chunk_position < reader.size_bytes() {
            let len_bytes = usize::try_from(
                (reader.size_bytes() - chunk_position).min(RECOVERY_CHUNK_BYTES as u64),
            )
            .expect("chunk length is at most RECOVERY_CHUNK_BYTES");
            let chunk = reader.read_aligned(chunk_position, len_bytes).await?;
            let chunk_end = chunk_position + chunk.len() as u64;
            let reaches_end = chunk_end >= reader.size_bytes() || chunk.len() < len_bytes;
            let mut probe_from = chunk_position;
            loop {
                match probe_block_starts(&chunk, chunk_position, probe_from, reaches_end) {
                    BlockProbe::Found { position, batch } => {
                        // The batches after it in the same group count too, for the report.
                        let mut next = Some((position, batch));
                        while let Some((batch_position, batch)) = next {
                            let survivor = Survivor::of(index, batch_position, &batch);
                            survivors.push(survivor);
                            if stop_at_damage && !crash_explains(end, survivor.at()) {
                                reader.close().await;
                                return Ok(survivors);
                            }
                            let after = batch_position + batch.len_bytes() as u64;
                            next = usize::try_from(after - chunk_position)
                                .ok()
                                .and_then(|start| chunk.get(start..))
                                .and_then(|rest| decode_batch(rest).ok())
                                .map(|batch| (after, batch));
                        }
                        probe_from = position + BLOCK;
                    }
                    BlockProbe::NeedMore { position } => {
                        chunk_position = position;
                        continue 'segment;
                    }
                    BlockProbe::Exhausted => {
                        chunk_position = chunk_end;
                        break;
                    }
                }
            }
            if reaches_end {
                break;
            }
        }
        reader.close().await;
    }
    Ok(survivors)
}

/// Where the damage after a valid end at `valid_end` is, and why the bytes there do not
/// continue the log, for the damage report. Zero padding after the last valid batch is
/// skipped: the damage is then at the next block boundary, where the next group starts.
async fn locate_damage(segment: &SegmentFile, valid_end: u64) -> (u64, String) {
    let aligned = valid_end - valid_end % BLOCK;
    let len_bytes = usize::try_from(
        (segment.size_bytes() - aligned).min((BATCH_SIZE_BYTES_MAX + 2 * BLOCK_SIZE_BYTES) as u64),
    )
    .expect("at most a batch and two blocks");
    let Ok(bytes) = segment.read_aligned(aligned, len_bytes).await else {
        return (valid_end, "unreadable".to_owned());
    };
    let mut offset = usize::try_from(valid_end - aligned).expect("less than a block");
    let block_rest = bytes.get(offset..BLOCK_SIZE_BYTES).unwrap_or_default();
    if offset > 0 && block_rest.iter().all(|byte| *byte == 0) {
        offset = BLOCK_SIZE_BYTES;
    }
    let position = aligned + offset as u64;
    let at = bytes.get(offset..).unwrap_or_default();
    if at.iter().take(BLOCK_SIZE_BYTES).all(|byte| *byte == 0) {
        return (position, "zeros where the next batch should be".to_owned());
    }
    let reason = match decode_batch(at) {
        Ok(_) => {
            "a valid batch that does not continue the chain or its partition's offsets".to_owned()
        }
        Err(error) => error.to_string(),
    };
    (position, reason)
}

/// Where a repair keeps what it drops: `<shard dir>/damaged-<unix ms>/`, made on first use.
struct Quarantine {
    shard_dir: PathBuf,
    dir: Option<PathBuf>,
    moved_count: usize,
}

impl Quarantine {
    fn new(shard_dir: &Path) -> Self {
        Quarantine {
            shard_dir: shard_dir.to_owned(),
            dir: None,
            moved_count: 0,
        }
    }

    fn dir(&mut self) -> Result<PathBuf, StorageError> {
        if let Some(dir) = &self.dir {
            return Ok(dir.clone());
        }
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis());
        let dir = self.shard_dir.join(format!("damaged-{millis}"));
        std::fs::create_dir(&dir)
            .map_err(|error| StorageError::from_io("create directory", &dir, &error))?;
        sync_dir(&self.shard_dir)?;
        self.dir = Some(dir.clone());
        Ok(dir)
    }

    /// Moves a segment file out of the log, durably.
    fn move_in(&mut self, path: &Path) -> Result<(), StorageError> {
        let dir = self.dir()?;
        let target = dir.join(path.file_name().unwrap_or_default());
        std::fs::rename(path, &target)
            .map_err(|error| StorageError::from_io("rename", path, &error))?;
        // Both names must survive a crash: the log without the file, the copy with it.
        sync_dir(&dir)?;
        sync_dir(&self.shard_dir)?;
        self.moved_count += 1;
        Ok(())
    }

    /// Copies a segment that stays in the log (and is about to be truncated), durably.
    fn copy_in(&mut self, path: &Path) -> Result<(), StorageError> {
        let dir = self.dir()?;
        let target = dir.join(path.file_name().unwrap_or_default());
        std::fs::copy(path, &target)
            .and_then(|_| std::fs::File::open(&target)?.sync_all())
            .map_err(|error| StorageError::from_io("copy", path, &error))?;
        sync_dir(&dir)
    }

    fn into_report(
        self,
        shard_id: ShardId,
        end: SegmentPosition,
        lost_offsets: Vec<(PartitionId, Offset, Offset)>,
    ) -> Option<RepairReport> {
        let quarantine_dir = self.dir?;
        Some(RepairReport {
            shard_id,
            segment_index: end.segment_index,
            position: end.position,
            quarantine_dir,
            dropped_segment_count: self.moved_count,
            lost_offsets,
        })
    }
}

fn apply_recovered_batch(
    partitions: &mut HashMap<PartitionId, RecoveredPartition>,
    segment_index: u64,
    position: u64,
    batch: &BatchView<'_>,
) -> Result<(), Inconsistency> {
    let partition = batch.partition_id();
    let slot = partitions
        .get_mut(&partition)
        .ok_or(Inconsistency::UnknownPartition(partition))?;
    slot.state.recover_batch(
        batch.base_offset(),
        batch.producer(),
        batch
            .records()
            .map(|record| (record.indexed_key(), record.prev_key_offset)),
    )?;
    slot.synced_batches.push(
        BatchLocation::of(segment_index, position, batch),
        batch.max_record_timestamp_ms(),
    );
    Ok(())
}

/// Whether a file's `bytes` are `encoded` followed by the zeros that pad it to a block.
fn is_encoding_of(bytes: &[u8], encoded: &[u8]) -> bool {
    let padded_len_bytes = encoded.len().div_ceil(BLOCK_SIZE_BYTES) * BLOCK_SIZE_BYTES;
    bytes.len() >= encoded.len()
        && bytes.len() <= padded_len_bytes
        && bytes.get(..encoded.len()) == Some(encoded)
        && bytes
            .get(encoded.len()..)
            .is_some_and(|padding| padding.iter().all(|byte| *byte == 0))
}
