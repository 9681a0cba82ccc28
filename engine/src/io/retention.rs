//! Retention in the background: each shard's task that removes what its topics no longer
//! keep (docs/DESIGN.md, "Retention").
//!
//! A shard's segments hold many partitions' batches, so a segment cannot simply be
//! deleted when one partition's records in it expire. The `ShardLog` plans one step at a
//! time (`plan_retention`): a sealed segment that holds removable runs. This module
//! rewrites it on a blocking thread without them — the kept batches copied byte for byte,
//! offsets unchanged, into a new file of the next generation with its own index file —
//! then swaps the files in and tells the `ShardLog` (`handle_rewritten`), which moves the
//! partitions' log starts.
//!
//! Crash safety: the new segment and its index are written under temporary names and
//! synced, then renamed over the old ones (segment first) and the directory synced. A
//! crash leaves the old pair, the new pair, or the new segment beside the old index, which
//! names the old generation and is rebuilt at open. Only segments that every kept
//! checkpoint covers are rewritten, so a recovery never scans one: it takes the segment's
//! summaries from its checkpoint and reconciles them with the index of whichever
//! generation is on disk (`io::recovery`). The key index and every partition's end stay
//! in the checkpoints, so a key whose records were removed still exists for conditions.
//!
//! The copy reads and writes at most `EngineConfig::retention_bytes_per_second`, so it
//! takes the device's time in small slices and the log's syncs do not wait behind it.

use std::cell::RefCell;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::core::limits::BLOCK_SIZE_BYTES;
use crate::core::record::decode_batch;
use crate::core::segment_header::{SEGMENT_HEADER_SIZE_BYTES, SegmentHeader};
use crate::core::segment_index::{IndexEntry, PartitionEntries, PartitionPlacement, SegmentIndex};
use crate::core::shard_log::RetentionPlan;
use crate::error::StorageError;
use crate::io::checkpoint::{self, CHECKPOINTS_KEPT};
use crate::io::data_dir::{save_log_start, sync_dir};
use crate::io::index_file::{IndexFile, index_file_name};
use crate::io::segment::{SegmentFile, segment_file_name};
use crate::io::state::ShardState;
use crate::io::stats::ShardIoStats;

const REWRITE_SUFFIX: &str = ".rewrite";

/// Bytes copied between two looks at the budget and the closing flag.
const COPY_SLICE_BYTES: usize = 1024 * 1024;

/// Bytes copied between two syncs of the new file: one sync of a whole segment's dirty
/// pages at the end would hold the device for tens of milliseconds, and the log's group
/// writes wait behind it.
const SYNC_EVERY_BYTES: u64 = 4 * 1024 * 1024;

/// Runs retention for one shard until it closes: a step whenever one is due, else a look
/// every `retention_check_interval`.
pub(crate) async fn run(state: Rc<RefCell<ShardState>>, closing: Arc<AtomicBool>) {
    let (shard_dir, interval) = {
        let state = state.borrow();
        (
            state.shard_dir.clone(),
            state.config.retention_check_interval,
        )
    };
    if let Err(error) = remove_temporaries(&shard_dir) {
        tracing::warn!(%error, "retention: leftover temporary files not removed");
    }
    while !closing.load(Ordering::Relaxed) {
        match step(&state, &closing).await {
            Ok(true) => continue,
            Ok(false) => {}
            Err(error) => {
                ShardIoStats::count(&state.borrow().stats.retention_failures);
                tracing::error!(%error, "retention: rewriting a segment failed; tried again later");
            }
        }
        sleep_unless_closing(interval, &closing).await;
    }
}

async fn sleep_unless_closing(interval: Duration, closing: &AtomicBool) {
    let deadline = Instant::now() + interval;
    while !closing.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        glommio::timer::sleep((deadline - now).min(Duration::from_millis(100))).await;
    }
}

/// One retention step, if one is due: whether a segment was rewritten.
async fn step(
    state: &Rc<RefCell<ShardState>>,
    closing: &Arc<AtomicBool>,
) -> Result<bool, StorageError> {
    let shard_dir = state.borrow().shard_dir.clone();
    let Some(bound) = checkpoint_bound(&shard_dir)? else {
        return Ok(false);
    };
    let (plan, job) = {
        let state = state.borrow();
        if state
            .retention_paused_until
            .is_some_and(|until| Instant::now() < until)
        {
            return Ok(false);
        }
        let Some(plan) = state.log.plan_retention(now_ms(), bound) else {
            return Ok(false);
        };
        let segment = state
            .segments
            .get(&plan.segment_index)
            .expect("a sealed segment is open");
        let job = Rewrite {
            shard_dir: shard_dir.clone(),
            old_header: *segment.header(),
            kept: plan.kept.clone(),
            bytes_per_second: state.config.retention_bytes_per_second,
            closing: closing.clone(),
        };
        (plan, job)
    };
    let started = Instant::now();
    state.borrow_mut().retention_rewriting = true;
    if plan.remove_file {
        let segment_index = plan.segment_index;
        let dir = shard_dir.clone();
        let removed = glommio::executor()
            .spawn_blocking(move || remove_first_segment(&dir, segment_index))
            .await;
        let mut guard = state.borrow_mut();
        let state = &mut *guard;
        state.retention_rewriting = false;
        removed?;
        state.segments.remove(&segment_index);
        state.index_files.remove(&segment_index);
        state.log.handle_rewritten(&plan, &[]);
        state.rewrite_epoch += 1;
        ShardIoStats::count(&state.stats.retention_removed_segments);
        tracing::info!(
            segment = segment_index,
            removed_partitions = plan.removed.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "retention: first segment removed"
        );
        return Ok(true);
    }
    let rewritten = glommio::executor().spawn_blocking(move || job.run()).await;
    let swapped = match rewritten {
        Ok(rewritten) => swap_in(state, &shard_dir, &plan, rewritten, started).await,
        Err(error) => Err(error),
    };
    state.borrow_mut().retention_rewriting = false;
    swapped.map(|()| true)
}

/// Opens the rewritten files and hands them and the plan's outcome to the shard.
async fn swap_in(
    state: &Rc<RefCell<ShardState>>,
    shard_dir: &Path,
    plan: &RetentionPlan,
    rewritten: Rewritten,
    started: Instant,
) -> Result<(), StorageError> {
    let path = shard_dir.join(segment_file_name(plan.segment_index));
    let segment = SegmentFile::open_existing(&path, &rewritten.header)
        .await
        .map_err(|error| StorageError {
            operation: "open rewritten segment",
            path: path.clone(),
            errno: None,
            message: error.to_string(),
        })?
        .ok_or_else(|| StorageError {
            operation: "open rewritten segment",
            path: path.clone(),
            errno: None,
            message: "its header is blank".to_owned(),
        })?;
    let index_file = IndexFile::open(shard_dir, plan.segment_index).await?;
    let mut guard = state.borrow_mut();
    let state = &mut *guard;
    state.segments.insert(plan.segment_index, Rc::new(segment));
    state
        .index_files
        .insert(plan.segment_index, Rc::new(index_file));
    state.log.handle_rewritten(plan, &rewritten.placements);
    state.rewrite_epoch += 1;
    ShardIoStats::count(&state.stats.retention_rewrites);
    ShardIoStats::add(&state.stats.retention_copied_bytes, rewritten.copied_bytes);
    ShardIoStats::add(
        &state.stats.retention_removed_bytes,
        rewritten.removed_bytes,
    );
    tracing::info!(
        segment = plan.segment_index,
        generation = rewritten.header.generation,
        removed_partitions = plan.removed.len(),
        kept_partitions = plan.kept.len(),
        copied_bytes = rewritten.copied_bytes,
        removed_bytes = rewritten.removed_bytes,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "retention: segment rewritten"
    );
    Ok(())
}

/// The first segment some kept checkpoint does not cover, once `CHECKPOINTS_KEPT`
/// checkpoints exist: a rewrite must leave every checkpoint usable, so that one torn
/// checkpoint still leaves a way to open (a full scan no longer can, once history is gone).
fn checkpoint_bound(shard_dir: &Path) -> Result<Option<u64>, StorageError> {
    let kept = checkpoint::list(shard_dir)?;
    if kept.len() < CHECKPOINTS_KEPT {
        return Ok(None);
    }
    Ok(kept
        .iter()
        .take(CHECKPOINTS_KEPT)
        .map(|(log_end, _)| log_end.segment_index)
        .min())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        })
}

/// What the blocking thread needs to rewrite one segment.
struct Rewrite {
    shard_dir: PathBuf,
    old_header: SegmentHeader,
    kept: Vec<crate::core::PartitionId>,
    bytes_per_second: u64,
    closing: Arc<AtomicBool>,
}

/// A rewritten segment, durable under its final name.
struct Rewritten {
    header: SegmentHeader,
    placements: Vec<PartitionPlacement>,
    copied_bytes: u64,
    removed_bytes: u64,
}

impl Rewrite {
    /// Rewrites the segment; on any failure the temporary files go, so a full disk is not
    /// left fuller by a rewrite that could not finish.
    fn run(self) -> Result<Rewritten, StorageError> {
        let shard_dir = self.shard_dir.clone();
        let segment_index = self.old_header.segment_index;
        let rewritten = self.write_and_swap();
        if rewritten.is_err() {
            for name in [
                format!("{}{REWRITE_SUFFIX}", segment_file_name(segment_index)),
                format!("{}{REWRITE_SUFFIX}", index_file_name(segment_index)),
            ] {
                let _ = fs::remove_file(shard_dir.join(name));
            }
        }
        rewritten
    }

    fn write_and_swap(self) -> Result<Rewritten, StorageError> {
        let index = segment_file_name(self.old_header.segment_index);
        let segment_path = self.shard_dir.join(&index);
        let index_path = self
            .shard_dir
            .join(index_file_name(self.old_header.segment_index));
        let io = |operation: &'static str, path: &Path| {
            let path = path.to_owned();
            move |error: std::io::Error| StorageError::from_io(operation, &path, &error)
        };
        let old_index_bytes = fs::read(&index_path).map_err(io("read index", &index_path))?;
        let old_index =
            SegmentIndex::decode(&old_index_bytes, &self.old_header).map_err(|error| {
                StorageError {
                    operation: "verify index",
                    path: index_path.clone(),
                    errno: None,
                    message: error.to_string(),
                }
            })?;
        // Kept batches in log order, so the new file reads like the old one without gaps.
        let mut batches: Vec<(usize, IndexEntry)> = Vec::new();
        for (slot, partition) in old_index
            .partitions
            .iter()
            .filter(|partition| self.kept.contains(&partition.partition_id))
            .enumerate()
        {
            batches.extend(partition.entries.iter().map(|entry| (slot, *entry)));
        }
        batches.sort_unstable_by_key(|(_, entry)| entry.position);
        let kept_partitions: Vec<&PartitionEntries> = old_index
            .partitions
            .iter()
            .filter(|partition| self.kept.contains(&partition.partition_id))
            .collect();
        if kept_partitions.len() != self.kept.len() {
            return Err(StorageError {
                operation: "verify index",
                path: index_path,
                errno: None,
                message: "a kept partition has no entries in the index file".to_owned(),
            });
        }

        let header = SegmentHeader {
            generation: self.old_header.generation + 1,
            ..self.old_header
        };
        let temporary = self.shard_dir.join(format!("{index}{REWRITE_SUFFIX}"));
        let old = File::open(&segment_path).map_err(io("open", &segment_path))?;
        let mut new = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temporary)
            .map_err(io("create", &temporary))?;
        let mut block = vec![0u8; SEGMENT_HEADER_SIZE_BYTES];
        header.encode(&mut block);
        new.write_all(&block).map_err(io("write", &temporary))?;
        let mut position = SEGMENT_HEADER_SIZE_BYTES as u64;
        let mut new_entries: Vec<Vec<IndexEntry>> = vec![Vec::new(); kept_partitions.len()];
        let mut buffer = Vec::new();
        let mut slice = Vec::with_capacity(COPY_SLICE_BYTES);
        let started = Instant::now();
        let mut copied_bytes = 0u64;
        for (slot, entry) in &batches {
            if self.closing.load(Ordering::Relaxed) {
                let _ = fs::remove_file(&temporary);
                return Err(StorageError {
                    operation: "rewrite",
                    path: segment_path,
                    errno: None,
                    message: "the shard is closing".to_owned(),
                });
            }
            buffer.resize(entry.len_bytes as usize, 0);
            old.read_exact_at(&mut buffer, entry.position)
                .map_err(io("read", &segment_path))?;
            // Copied bytes are verified like any read: a batch damaged at rest stops the
            // rewrite (loudly, the old file untouched) instead of being copied on.
            let partition = kept_partitions
                .get(*slot)
                .expect("slot indexes kept partitions");
            let view = decode_batch(&buffer)
                .map_err(|error| StorageError::corrupt(&segment_path, entry.position, error))?;
            if view.partition_id() != partition.partition_id
                || view.base_offset() != entry.base_offset
            {
                return Err(StorageError {
                    operation: "verify",
                    path: segment_path,
                    errno: None,
                    message: format!(
                        "batch at {} is not the one its index entry names",
                        entry.position
                    ),
                });
            }
            new_entries
                .get_mut(*slot)
                .expect("slot indexes kept partitions")
                .push(IndexEntry { position, ..*entry });
            slice.extend_from_slice(&buffer);
            position += u64::from(entry.len_bytes);
            if slice.len() >= COPY_SLICE_BYTES {
                let before = copied_bytes;
                copied_bytes += write_slice(&mut new, &mut slice, &temporary)?;
                if before / SYNC_EVERY_BYTES != copied_bytes / SYNC_EVERY_BYTES {
                    new.sync_data().map_err(io("fdatasync", &temporary))?;
                }
                pace(copied_bytes, started, self.bytes_per_second);
            }
        }
        copied_bytes += write_slice(&mut new, &mut slice, &temporary)?;
        let data_end_position = position;
        let padded = position.div_ceil(BLOCK_SIZE_BYTES as u64) * BLOCK_SIZE_BYTES as u64;
        new.write_all(&vec![0u8; (padded - position) as usize])
            .map_err(io("write", &temporary))?;
        // The same size as the old file, the rest a hole: readers and the header agree on
        // the size, and no byte past the data is ever read as a batch.
        new.set_len(header.segment_size_bytes)
            .map_err(io("truncate", &temporary))?;
        new.sync_data().map_err(io("fdatasync", &temporary))?;

        let new_index = SegmentIndex {
            segment: header,
            data_end_position: if new_entries.iter().all(Vec::is_empty) {
                SEGMENT_HEADER_SIZE_BYTES as u64
            } else {
                data_end_position
            },
            partitions: kept_partitions
                .iter()
                .zip(new_entries)
                .map(|(partition, entries)| PartitionEntries {
                    partition_id: partition.partition_id,
                    entries,
                })
                .collect(),
        };
        let placements = new_index.placements();
        let index_temporary = self.shard_dir.join(format!(
            "{}{REWRITE_SUFFIX}",
            index_file_name(header.segment_index)
        ));
        let mut index_bytes = new_index.encode();
        index_bytes.resize(
            index_bytes.len().div_ceil(BLOCK_SIZE_BYTES) * BLOCK_SIZE_BYTES,
            0,
        );
        let mut index_file =
            File::create(&index_temporary).map_err(io("create", &index_temporary))?;
        index_file
            .write_all(&index_bytes)
            .map_err(io("write", &index_temporary))?;
        index_file
            .sync_data()
            .map_err(io("fdatasync", &index_temporary))?;
        // The segment first: beside it the old index names the old generation and is
        // rebuilt if a crash comes before the second rename.
        fs::rename(&temporary, &segment_path).map_err(io("rename", &temporary))?;
        fs::rename(&index_temporary, &index_path).map_err(io("rename", &index_temporary))?;
        sync_dir(&self.shard_dir)?;
        let kept_bytes: u64 = kept_partitions
            .iter()
            .flat_map(|partition| &partition.entries)
            .map(|entry| u64::from(entry.len_bytes))
            .sum();
        let all_bytes: u64 = old_index
            .partitions
            .iter()
            .flat_map(|partition| &partition.entries)
            .map(|entry| u64::from(entry.len_bytes))
            .sum();
        Ok(Rewritten {
            header,
            placements,
            copied_bytes,
            removed_bytes: all_bytes - kept_bytes,
        })
    }
}

/// Removes the log's first segment, whose batches all went: the log start file moves past
/// it first (durably), so a crash before the files go leaves only leftovers open removes,
/// never a hole.
fn remove_first_segment(shard_dir: &Path, segment_index: u64) -> Result<(), StorageError> {
    save_log_start(shard_dir, segment_index + 1)?;
    for name in [
        segment_file_name(segment_index),
        index_file_name(segment_index),
    ] {
        let path = shard_dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(StorageError::from_io("remove", &path, &error)),
        }
    }
    sync_dir(shard_dir)
}

fn write_slice(file: &mut File, slice: &mut Vec<u8>, path: &Path) -> Result<u64, StorageError> {
    file.write_all(slice)
        .map_err(|error| StorageError::from_io("write", path, &error))?;
    let written = slice.len() as u64;
    slice.clear();
    Ok(written)
}

/// Sleeps until `copied_bytes` is within the budget since `started`.
fn pace(copied_bytes: u64, started: Instant, bytes_per_second: u64) {
    if bytes_per_second == 0 {
        return;
    }
    let due = Duration::from_secs_f64(copied_bytes as f64 / bytes_per_second as f64);
    if let Some(ahead) = due.checked_sub(started.elapsed()) {
        std::thread::sleep(ahead);
    }
}

/// Removes what a rewrite cut off by a crash or a close left.
fn remove_temporaries(shard_dir: &Path) -> Result<(), StorageError> {
    let entries = fs::read_dir(shard_dir)
        .map_err(|error| StorageError::from_io("list", shard_dir, &error))?;
    for entry in entries {
        let entry = entry.map_err(|error| StorageError::from_io("list", shard_dir, &error))?;
        if entry
            .file_name()
            .to_str()
            .is_some_and(|name| name.ends_with(REWRITE_SUFFIX))
        {
            let path = entry.path();
            fs::remove_file(&path)
                .map_err(|error| StorageError::from_io("remove", &path, &error))?;
        }
    }
    Ok(())
}
