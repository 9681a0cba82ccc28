//! `cairn backup`: an online, consistent copy of a running server's data directory.
//!
//! One BackupBegin gives the backup point (every shard's synced end, its segments, its
//! producer-id reservation and the catalog); BackupRead then copies each listed segment
//! below that point in chunks into a new directory laid out as a data directory
//! (`cairn_engine::io::backup::BackupTarget`), which stays marked incomplete, and so
//! unservable, until every file and directory is synced.

use std::path::{Path, PathBuf};

use cairn_engine::core::Offset;
use cairn_engine::error::{OpenError, StorageError};
use cairn_engine::io::backup::{BackupTarget, INCOMPLETE_BACKUP_FILE_NAME};
use cairn_wire::{BACKUP_READ_SIZE_BYTES_MAX, BackupReadRequest};

use super::{BackupManifest, BlockingClient, ClientError};

/// Why a backup failed. The target directory then holds the incomplete-backup marker and
/// no server opens it.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// A request failed: the server stopped, refused, or could not be reached.
    #[error("backup request failed: {0}")]
    Client(#[from] ClientError),
    /// The target could not be created or written.
    #[error("writing the backup failed: {0}")]
    Target(#[from] OpenError),
    /// The server's manifest contradicts itself.
    #[error("the server's backup manifest is invalid: {0}")]
    Manifest(String),
}

impl From<StorageError> for BackupError {
    fn from(error: StorageError) -> Self {
        BackupError::Target(OpenError::Storage(error))
    }
}

/// What a finished backup holds: the backup point, per partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupReport {
    /// The restored data directory.
    pub path: PathBuf,
    /// (topic, partition index, synced end offset), in catalog order: every record below
    /// the end offset is in the backup, every record acknowledged before the backup began
    /// among them.
    pub partition_ends: Vec<(String, u32, Offset)>,
    /// Segment bytes copied.
    pub copied_bytes: u64,
}

/// The marker file a failed backup leaves in `dest`.
#[must_use]
pub fn incomplete_marker(dest: &Path) -> PathBuf {
    dest.join(INCOMPLETE_BACKUP_FILE_NAME)
}

/// Takes an online backup of `client`'s server into `dest`, which must not exist or be an
/// empty directory. On success `dest` is a data directory `cairn serve --data-dir` opens,
/// with the same shard count.
pub fn take_backup(client: &mut BlockingClient, dest: &Path) -> Result<BackupReport, BackupError> {
    let manifest = client.backup_begin()?;
    check_manifest(&manifest)?;
    let target = BackupTarget::create(dest, manifest.shard_count)?;
    let catalog = target.write_catalog(&manifest.topics_meta)?;
    let mut copied_bytes = 0u64;
    for shard in &manifest.shards {
        target.write_producer_ids(shard.shard.0, shard.producer_id_counter_end)?;
        for segment in &shard.segments {
            let mut writer = target.create_segment(shard.shard.0, segment.segment_index)?;
            while writer.written_bytes() < segment.length_bytes {
                let position = writer.written_bytes();
                let length_bytes = u32::try_from(
                    (segment.length_bytes - position).min(u64::from(BACKUP_READ_SIZE_BYTES_MAX)),
                )
                .expect("at most BACKUP_READ_SIZE_BYTES_MAX");
                let bytes = client.backup_read(BackupReadRequest {
                    shard: shard.shard,
                    segment_index: segment.segment_index,
                    position,
                    length_bytes,
                })?;
                if bytes.len() != length_bytes as usize {
                    return Err(BackupError::Manifest(format!(
                        "shard {} segment {} at {position}: asked for {length_bytes} bytes, got {}",
                        shard.shard.0,
                        segment.segment_index,
                        bytes.len()
                    )));
                }
                writer.append(&bytes)?;
                copied_bytes += bytes.len() as u64;
            }
            writer.finish(segment.size_bytes)?;
        }
    }
    let mut ends = std::collections::HashMap::new();
    for shard in &manifest.shards {
        for end in &shard.partitions {
            ends.insert(end.partition_id, end.end_offset);
        }
    }
    let mut partition_ends = Vec::new();
    for topic in catalog.topics() {
        for index in 0..topic.partition_count {
            let Some(id) = topic.partition_id(index) else {
                continue;
            };
            // A partition of a topic created while the points were taken may be missing
            // from its shard's point: it had nothing synced then.
            let end = ends.get(&id).copied().unwrap_or(Offset(0));
            partition_ends.push((topic.name.clone(), index, end));
        }
    }
    let path = target.finish()?;
    Ok(BackupReport {
        path,
        partition_ends,
        copied_bytes,
    })
}

/// The rules the copy relies on: one entry per shard in order, segments from 0 without
/// gaps, each length within its file, a block-aligned synced end.
fn check_manifest(manifest: &BackupManifest) -> Result<(), BackupError> {
    let bad = |problem: String| Err(BackupError::Manifest(problem));
    if manifest.shard_count == 0 || manifest.shards.len() != usize::from(manifest.shard_count) {
        return bad(format!(
            "{} shard entries for a shard count of {}",
            manifest.shards.len(),
            manifest.shard_count
        ));
    }
    for (expected, shard) in (0u16..).zip(&manifest.shards) {
        if shard.shard.0 != expected {
            return bad(format!(
                "shard {} listed where {expected} belongs",
                shard.shard.0
            ));
        }
        if shard.segments.is_empty() {
            return bad(format!("shard {expected} lists no segment"));
        }
        for (index, segment) in (0u64..).zip(&shard.segments) {
            if segment.segment_index != index
                || segment.length_bytes > segment.size_bytes
                || !segment.length_bytes.is_multiple_of(4096)
            {
                return bad(format!("shard {expected}: bad segment entry {segment:?}"));
            }
        }
    }
    Ok(())
}
