//! Checkpoint files of one shard (FORMAT.md, "Checkpoints"; docs/DESIGN.md §3.7): writing
//! one in the background once the group it covers is synced, and reading them back at open.
//!
//! A checkpoint is installed the way the catalog is: written whole to a temporary name,
//! synced, renamed over its final name, and the directory synced, so a crash leaves either
//! the old set of files or the new one, plus at most a temporary file that the next install
//! removes. The newest `CHECKPOINTS_KEPT` are kept: when the newest turns out unusable at
//! open (torn by a disk that lied, or not matching the log), the one before it still saves
//! most of the scan.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::core::SegmentPosition;
use crate::core::checkpoint::{Checkpoint, CheckpointError};
use crate::error::StorageError;
use crate::io::data_dir::sync_dir;
use crate::io::fault::{FaultHook, FaultPoint};

/// Checkpoints kept per shard; older ones are removed once a newer one is installed.
pub(crate) const CHECKPOINTS_KEPT: usize = 2;

const SUFFIX: &str = ".ckpt";
const TEMPORARY_SUFFIX: &str = ".ckpt.tmp";

/// The file name of a checkpoint covering the log up to `log_end`: both numbers in fixed
/// width, so names sort in log order.
#[must_use]
pub fn checkpoint_file_name(log_end: SegmentPosition) -> String {
    format!(
        "checkpoint-{:020}-{:020}{SUFFIX}",
        log_end.segment_index, log_end.position
    )
}

/// Where a checkpoint's log ends, from its file name.
#[must_use]
pub fn parse_checkpoint_file_name(name: &str) -> Option<SegmentPosition> {
    let numbers = name.strip_prefix("checkpoint-")?.strip_suffix(SUFFIX)?;
    let (segment, position) = numbers.split_once('-')?;
    let digits = |text: &str| text.len() == 20 && text.bytes().all(|byte| byte.is_ascii_digit());
    if !digits(segment) || !digits(position) {
        return None;
    }
    Some(SegmentPosition {
        segment_index: segment.parse().ok()?,
        position: position.parse().ok()?,
    })
}

/// The shard's checkpoint files, newest first.
pub(crate) fn list(shard_dir: &Path) -> Result<Vec<(SegmentPosition, PathBuf)>, StorageError> {
    let entries = fs::read_dir(shard_dir)
        .map_err(|error| StorageError::from_io("list", shard_dir, &error))?;
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|error| StorageError::from_io("list", shard_dir, &error))?;
        let name = entry.file_name();
        if let Some(log_end) = name.to_str().and_then(parse_checkpoint_file_name) {
            found.push((log_end, entry.path()));
        }
    }
    found.sort_unstable_by_key(|(log_end, _)| std::cmp::Reverse(*log_end));
    Ok(found)
}

/// Why a checkpoint file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointReadError {
    /// It could not be read.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Its bytes are not a valid checkpoint.
    #[error("{path}: {error}", path = .path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        error: CheckpointError,
    },
}

/// Reads and decodes one checkpoint file. Blocking: used at open, before the shard serves.
pub(crate) fn read(path: &Path) -> Result<Checkpoint, CheckpointReadError> {
    let bytes = fs::read(path).map_err(|error| StorageError::from_io("read", path, &error))?;
    Checkpoint::decode(&bytes).map_err(|error| CheckpointReadError::Invalid {
        path: path.to_owned(),
        error,
    })
}

/// Installs `bytes` as the checkpoint covering the log up to `log_end`, durably, then
/// removes all but the newest `CHECKPOINTS_KEPT`. Blocking: run it off the executor.
pub(crate) fn install(
    shard_dir: &Path,
    log_end: SegmentPosition,
    bytes: &[u8],
    fault_hook: Option<&FaultHook>,
) -> Result<PathBuf, StorageError> {
    let name = checkpoint_file_name(log_end);
    let path = shard_dir.join(&name);
    if let Some(hook) = fault_hook {
        hook.check(FaultPoint::CheckpointWrite, &path)?;
    }
    let temporary = shard_dir.join(format!("{name}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut file = File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_data()
    };
    write().map_err(|error| StorageError::from_io("write checkpoint", &temporary, &error))?;
    fs::rename(&temporary, &path)
        .map_err(|error| StorageError::from_io("rename checkpoint", &path, &error))?;
    sync_dir(shard_dir)?;
    remove_older(shard_dir)?;
    Ok(path)
}

/// Removes every checkpoint but the newest `CHECKPOINTS_KEPT`, and any temporary file an
/// install interrupted by a crash left. Removing needs no sync: a file that comes back after
/// a crash is an older checkpoint, which open checks like any other.
fn remove_older(shard_dir: &Path) -> Result<(), StorageError> {
    for (_, path) in list(shard_dir)?.into_iter().skip(CHECKPOINTS_KEPT) {
        fs::remove_file(&path).map_err(|error| StorageError::from_io("remove", &path, &error))?;
    }
    remove_temporaries(shard_dir)
}

fn remove_temporaries(shard_dir: &Path) -> Result<(), StorageError> {
    let entries = fs::read_dir(shard_dir)
        .map_err(|error| StorageError::from_io("list", shard_dir, &error))?;
    for entry in entries {
        let entry = entry.map_err(|error| StorageError::from_io("list", shard_dir, &error))?;
        let is_temporary = entry.file_name().to_str().is_some_and(|name| {
            name.starts_with("checkpoint-") && name.ends_with(TEMPORARY_SUFFIX)
        });
        if is_temporary {
            let path = entry.path();
            fs::remove_file(&path)
                .map_err(|error| StorageError::from_io("remove", &path, &error))?;
        }
    }
    Ok(())
}

/// Removes every checkpoint of the shard, durably: after a repair dropped part of the log,
/// they may describe records that are gone.
pub(crate) fn remove_all(shard_dir: &Path) -> Result<(), StorageError> {
    for (_, path) in list(shard_dir)? {
        fs::remove_file(&path).map_err(|error| StorageError::from_io("remove", &path, &error))?;
    }
    remove_temporaries(shard_dir)?;
    sync_dir(shard_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_sort_in_log_order_and_parse_back() {
        let ends =
            [(0, 4096), (0, 1 << 20), (1, 4096), (12, 0)].map(|(segment_index, position)| {
                SegmentPosition {
                    segment_index,
                    position,
                }
            });
        let mut names: Vec<String> = ends.iter().map(|end| checkpoint_file_name(*end)).collect();
        names.sort();
        let parsed: Vec<SegmentPosition> = names
            .iter()
            .map(|name| parse_checkpoint_file_name(name).expect("a name we made"))
            .collect();
        assert_eq!(parsed, ends);
        assert_eq!(parse_checkpoint_file_name("checkpoint-1-2.ckpt"), None);
        assert_eq!(
            parse_checkpoint_file_name(&format!("{}.tmp", names[0])),
            None,
            "a temporary file is never read as a checkpoint"
        );
    }
}
