//! Online backup: a shard's backup point and reads of its synced log (the source side),
//! and the restored copy of a data directory (the target side, written by `cairn backup`).
//!
//! A backup is physical. The core log is append-only and a block that holds synced bytes
//! is never written again (FORMAT.md, Groups), so every byte before a shard's synced end
//! stays as it is while the server goes on appending: copying those bytes, in any order
//! and at any pace, gives the log exactly as it was at that end. The backup point of a
//! shard is its synced end, read in one borrow of its state (so at a group boundary),
//! with its partitions' synced end offsets and its durable producer-id reservation.
//!
//! The target is marked incomplete (`backup-incomplete`, created and synced before
//! anything else) until every file is written and synced; `Engine::open` refuses a
//! directory with the marker, so a backup that stopped half way is never served.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use glommio::io::ReadResult;

use crate::core::{Offset, PartitionId, ShardId};
use crate::error::{OpenError, StorageError};
use crate::io::data_dir::{Catalog, DataDir, ProducerIdAllocator, sync_dir};
use crate::io::segment::segment_file_name;
use crate::io::shard::Shard;

/// How long after a backup's last request retention leaves segments alone.
pub const BACKUP_RETENTION_PAUSE: std::time::Duration = std::time::Duration::from_secs(600);

/// The marker file of a backup in progress, in the target's top directory.
pub const INCOMPLETE_BACKUP_FILE_NAME: &str = "backup-incomplete";

/// One segment file at a shard's backup point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackupSegment {
    /// The segment's index.
    pub segment_index: u64,
    /// Bytes to copy from position 0: the whole file before the current segment, the
    /// synced end (block-aligned) in it.
    pub length_bytes: u64,
    /// The file's preallocated size.
    pub size_bytes: u64,
}

/// A shard's backup point.
#[derive(Clone, Debug)]
pub struct BackupPoint {
    /// The shard.
    pub shard_id: ShardId,
    /// Its segments in index order, from 0; the last is the current one.
    pub segments: Vec<BackupSegment>,
    /// Its durable producer-id reservation.
    pub producer_id_counter_end: u64,
    /// The synced end offset of every partition it owns, by partition id.
    pub partitions: Vec<(PartitionId, Offset)>,
    /// The catalog as this shard knew it at the point (shard 0's is the data directory's).
    pub catalog: Catalog,
}

/// Why a backup read was refused.
#[derive(Debug, thiserror::Error)]
pub enum BackupReadError {
    /// The range does not lie in the shard's synced log.
    #[error(
        "shard {shard} segment {segment_index} bytes {position}..{end}: {reason}",
        shard = .shard_id.0,
        end = .position.saturating_add(u64::from(*.length_bytes))
    )]
    Unavailable {
        /// The shard read.
        shard_id: ShardId,
        /// The segment asked for.
        segment_index: u64,
        /// The position asked for.
        position: u64,
        /// The length asked for.
        length_bytes: u32,
        /// Why it is not readable.
        reason: String,
    },
    /// The shard is poisoned, or the read failed.
    #[error("storage failure: {0}")]
    Storage(StorageError),
}

impl Shard {
    /// This shard's backup point (see the module docs). A poisoned shard has none: what it
    /// synced is decided by recovery on restart.
    ///
    /// Retention rewrites segments in place, which a copy taken meanwhile would tear, and
    /// a rewritten log opens only from its checkpoints, which a backup does not copy: a
    /// shard with a rewritten segment refuses, and one without keeps retention from
    /// rewriting for `BACKUP_RETENTION_PAUSE` after the point and after every read.
    pub fn backup_point(&self) -> Result<BackupPoint, StorageError> {
        let mut state = self.state.borrow_mut();
        if let Some(error) = state.log.poisoned() {
            return Err(error.clone());
        }
        if let Some((index, segment)) = state.segments.iter().find(|(index, segment)| {
            segment.header().generation > 0 || **index == state.log.first_segment() && **index > 0
        }) {
            return Err(StorageError {
                operation: "backup",
                path: segment.path().to_owned(),
                errno: None,
                message: format!(
                    "segment {index} was rewritten by retention, or follows segments it \
                     removed: a backup of a log whose history retention removed is not \
                     supported yet"
                ),
            });
        }
        if state.retention_rewriting {
            return Err(StorageError {
                operation: "backup",
                path: state.shard_dir.clone(),
                errno: None,
                message: "retention is rewriting a segment; try the backup again".to_owned(),
            });
        }
        state.retention_paused_until = Some(std::time::Instant::now() + BACKUP_RETENTION_PAUSE);
        let state = &*state;
        let end = state.log.synced_end_position();
        let segments = state
            .segments
            .range(..=end.segment_index)
            .map(|(index, segment)| BackupSegment {
                segment_index: *index,
                length_bytes: if *index == end.segment_index {
                    end.position
                } else {
                    segment.size_bytes()
                },
                size_bytes: segment.size_bytes(),
            })
            .collect();
        let mut partitions: Vec<(PartitionId, Offset)> = state
            .log
            .partition_ids()
            .filter_map(|id| {
                let (_, synced_end) = state.log.end_offsets(id)?;
                Some((id, synced_end))
            })
            .collect();
        partitions.sort_unstable();
        Ok(BackupPoint {
            shard_id: state.shard_id,
            segments,
            producer_id_counter_end: state.producer_ids.reserved_end(),
            partitions,
            catalog: state.catalog.clone(),
        })
    }

    /// Reads `length_bytes` at `position` of segment `segment_index`, which must lie in
    /// the synced log: below the file's size in a segment before the current one, below
    /// the synced end in the current one. Bytes come as they are on disk, unverified (the
    /// restored server's recovery verifies them).
    pub async fn backup_read(
        &self,
        segment_index: u64,
        position: u64,
        length_bytes: u32,
    ) -> Result<ReadResult, BackupReadError> {
        let segment = {
            let mut state = self.state.borrow_mut();
            if let Some(error) = state.log.poisoned() {
                return Err(BackupReadError::Storage(error.clone()));
            }
            state.retention_paused_until = Some(std::time::Instant::now() + BACKUP_RETENTION_PAUSE);
            let state = &*state;
            let unavailable = |reason: String| BackupReadError::Unavailable {
                shard_id: state.shard_id,
                segment_index,
                position,
                length_bytes,
                reason,
            };
            let end = state.log.synced_end_position();
            let Some(segment) = state.segments.get(&segment_index) else {
                return Err(unavailable("no such segment".into()));
            };
            let readable_end = if segment_index == end.segment_index {
                end.position
            } else if segment_index < end.segment_index {
                segment.size_bytes()
            } else {
                return Err(unavailable("the segment is beyond the synced log".into()));
            };
            let within = position
                .checked_add(u64::from(length_bytes))
                .is_some_and(|range_end| range_end <= readable_end);
            if !within {
                return Err(unavailable(format!(
                    "beyond the synced log, which ends at {readable_end} in this segment"
                )));
            }
            segment.clone()
        };
        let expected_bytes = usize::try_from(length_bytes).expect("u32 fits in usize");
        let read = segment
            .read(position, expected_bytes)
            .await
            .map_err(BackupReadError::Storage)?;
        if read.len() != expected_bytes {
            return Err(BackupReadError::Storage(StorageError {
                operation: "read",
                path: segment.path().to_owned(),
                errno: None,
                message: format!(
                    "short read at {position}: {} of {expected_bytes} bytes",
                    read.len()
                ),
            }));
        }
        Ok(read)
    }
}

/// Refuses a data directory that holds the marker of a backup that did not finish.
pub fn check_not_incomplete_backup(path: &Path) -> Result<(), OpenError> {
    let marker = path.join(INCOMPLETE_BACKUP_FILE_NAME);
    if marker.exists() {
        return Err(OpenError::IncompleteBackup { marker });
    }
    Ok(())
}

/// A data directory being restored from a backup: created with the marker first, filled,
/// then made servable by [`BackupTarget::finish`]. Blocking `std::fs`: it runs in the
/// `cairn backup` process, never on an executor.
pub struct BackupTarget {
    data_dir: DataDir,
}

impl BackupTarget {
    /// Creates `path` (which must not exist, or be an empty directory) as a data directory
    /// of `shard_count` shards, marked incomplete.
    pub fn create(path: &Path, shard_count: u16) -> Result<BackupTarget, OpenError> {
        let storage =
            |operation, error: &std::io::Error| StorageError::from_io(operation, path, error);
        match fs::read_dir(path) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    return Err(OpenError::BadConfig(format!(
                        "backup target {} exists and is not empty",
                        path.display()
                    )));
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir_all(path).map_err(|error| storage("create directory", &error))?;
                if let Some(parent) = path
                    .parent()
                    .filter(|parent| !parent.as_os_str().is_empty())
                {
                    sync_dir(parent)?;
                }
            }
            Err(error) => return Err(storage("read directory", &error).into()),
        }
        // The marker is durable before any other file exists, so no crash or kill leaves
        // a directory that looks whole.
        let marker = path.join(INCOMPLETE_BACKUP_FILE_NAME);
        File::create(&marker)
            .and_then(|file| file.sync_all())
            .map_err(|error| StorageError::from_io("create", &marker, &error))?;
        sync_dir(path)?;
        let data_dir = DataDir::open_or_create(path, shard_count)?;
        Ok(BackupTarget { data_dir })
    }

    /// Writes `topics.meta` from a manifest's copy of it, after checking it parses.
    pub fn write_catalog(&self, topics_meta_body: &str) -> Result<Catalog, OpenError> {
        let origin = self.data_dir.path().join("topics.meta");
        let catalog = Catalog::from_meta_body(&origin, topics_meta_body)?;
        self.data_dir.save_catalog(&catalog)?;
        Ok(catalog)
    }

    /// Writes shard `shard`'s `producer-ids` reservation.
    pub fn write_producer_ids(&self, shard: u16, counter_end: u64) -> Result<(), StorageError> {
        ProducerIdAllocator::save_reserved_end(&self.data_dir.shard_dir(shard), counter_end)
    }

    /// Creates segment `segment_index` of shard `shard`, empty; fill it with
    /// [`SegmentWriter::append`] and end with [`SegmentWriter::finish`].
    pub fn create_segment(
        &self,
        shard: u16,
        segment_index: u64,
    ) -> Result<SegmentWriter, StorageError> {
        let dir = self.data_dir.shard_dir(shard);
        let path = dir.join(segment_file_name(segment_index));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|error| StorageError::from_io("create", &path, &error))?;
        Ok(SegmentWriter {
            file,
            path,
            dir,
            written_bytes: 0,
        })
    }

    /// Makes the directory servable: removes the marker, durably. Call only once every
    /// file is written and finished.
    pub fn finish(self) -> Result<PathBuf, StorageError> {
        let path = self.data_dir.path().to_owned();
        for shard in 0..self.data_dir.shard_count() {
            sync_dir(&self.data_dir.shard_dir(shard))?;
        }
        let marker = path.join(INCOMPLETE_BACKUP_FILE_NAME);
        fs::remove_file(&marker)
            .map_err(|error| StorageError::from_io("remove", &marker, &error))?;
        sync_dir(&path)?;
        Ok(path)
    }
}

/// One segment file of a restored copy, written in order from position 0.
pub struct SegmentWriter {
    file: File,
    path: PathBuf,
    dir: PathBuf,
    written_bytes: u64,
}

impl SegmentWriter {
    /// Appends `bytes` after what was written so far.
    pub fn append(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        self.file
            .write_all(bytes)
            .map_err(|error| StorageError::from_io("write", &self.path, &error))?;
        self.written_bytes += bytes.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn written_bytes(&self) -> u64 {
        self.written_bytes
    }

    /// Extends the file to `size_bytes` with written zeros, syncs it and its name. Recovery
    /// reads zeros as the end of the log, so the log ends where the copied bytes do
    /// (`Clean`). The zeros are written rather than left as a hole (`set_len`) because the
    /// restored server appends into this segment next, and a write plus fdatasync into
    /// unallocated blocks costs many times one into written blocks (see `segment.rs`): the
    /// same reason the server zero-fills the segments it prepares.
    pub fn finish(mut self, size_bytes: u64) -> Result<(), StorageError> {
        const ZERO_CHUNK_BYTES: u64 = 1024 * 1024;
        let zeros = vec![0u8; ZERO_CHUNK_BYTES as usize];
        while self.written_bytes < size_bytes {
            let chunk_bytes = (size_bytes - self.written_bytes).min(ZERO_CHUNK_BYTES);
            // The chunk is at most ZERO_CHUNK_BYTES, the length of `zeros`.
            self.append(&zeros[..chunk_bytes as usize])?;
        }
        let io =
            |operation, error: std::io::Error| StorageError::from_io(operation, &self.path, &error);
        self.file.sync_all().map_err(|error| io("fsync", error))?;
        sync_dir(&self.dir)
    }
}
