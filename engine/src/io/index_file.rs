//! Segment index files on disk (FORMAT.md, Segment index file): named after their segment
//! (`<segment name>.index`), written once the segment is sealed, read a page at a time.
//!
//! They are derived data: a missing, torn or stale one costs memory and restart time (its
//! segment's batches stay dense in memory until it is written again), never a record. So
//! a failed write is logged and retried, not fatal like a failed group write. Written to a
//! temporary name, synced, renamed, and the directory synced: a crash leaves either no file,
//! a complete temporary one that is ignored, or the complete file.

use std::path::{Path, PathBuf};

use glommio::io::{BufferedFile, OpenOptions, ReadResult};

use crate::core::limits::BLOCK_SIZE_BYTES;
use crate::core::segment_index::IndexPage;
use crate::error::StorageError;
use crate::io::data_dir::sync_dir;
use crate::io::fault::{FaultHook, FaultPoint};
use crate::io::segment::segment_file_name;

/// Bytes written per write while writing an index file.
const WRITE_CHUNK_BYTES: usize = 1024 * 1024;

/// The file name of segment `segment_index`'s index.
pub fn index_file_name(segment_index: u64) -> String {
    format!("{}.index", segment_file_name(segment_index))
}

/// The temporary name an index file is written under before its rename.
fn temporary_name(segment_index: u64) -> String {
    format!("{}.tmp", index_file_name(segment_index))
}

/// Writes `bytes` as segment `segment_index`'s index file in `dir`, durably, replacing any
/// earlier one: zero-padded to a whole block (O_DIRECT), synced under a temporary name,
/// renamed, and the directory synced.
pub async fn write_index_file(
    dir: &Path,
    segment_index: u64,
    bytes: &[u8],
    fault_hook: Option<&FaultHook>,
) -> Result<(), StorageError> {
    let temporary = dir.join(temporary_name(segment_index));
    let path = dir.join(index_file_name(segment_index));
    if let Some(hook) = fault_hook {
        hook.check(FaultPoint::IndexWrite, &path)?;
    }
    let written = write_temporary(&temporary, bytes).await;
    if written.is_err() {
        // On a full disk, a partly written temporary file would hold on to the space the
        // log needs; nothing reads it.
        let _ = std::fs::remove_file(&temporary);
    }
    written?;
    std::fs::rename(&temporary, &path)
        .map_err(|error| StorageError::from_io("rename", &temporary, &error))?;
    // Without it a crash can lose the rename: the file then is missing, which costs a
    // rebuild at the next open, nothing more.
    sync_dir(dir)
}

/// Writes and syncs `bytes` (zero-padded to a whole block) as the file `temporary`.
async fn write_temporary(temporary: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    let io_error = |operation, error: glommio::GlommioError<()>| {
        StorageError::from_glommio(operation, temporary, error)
    };
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .dma_open(temporary)
        .await
        .map_err(|error| io_error("open", error))?;
    let mut position = 0u64;
    for chunk in bytes.chunks(WRITE_CHUNK_BYTES) {
        let padded_len_bytes = chunk.len().div_ceil(BLOCK_SIZE_BYTES) * BLOCK_SIZE_BYTES;
        let mut buffer = file.alloc_dma_buffer(padded_len_bytes);
        let (data, padding) = buffer.as_bytes_mut().split_at_mut(chunk.len());
        data.copy_from_slice(chunk);
        padding.fill(0);
        let written_bytes = file
            .write_at(buffer, position)
            .await
            .map_err(|error| io_error("write", error))?;
        if written_bytes != padded_len_bytes {
            return Err(StorageError {
                operation: "write",
                path: temporary.to_owned(),
                errno: None,
                message: format!("short write: {written_bytes} of {padded_len_bytes} bytes"),
            });
        }
        position += padded_len_bytes as u64;
    }
    file.fdatasync()
        .await
        .map_err(|error| io_error("fdatasync", error))?;
    file.close().await.map_err(|error| io_error("close", error))
}

/// Reads a whole index file, `None` if it does not exist. For recovery, which verifies it.
pub fn read_index_file(path: &Path) -> Result<Option<Vec<u8>>, StorageError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(StorageError::from_io("read", path, &error)),
    }
}

/// Removes a leftover temporary index file of `segment_index`, if any: a crash before its
/// rename left it, and it is never read.
pub fn remove_temporary(dir: &Path, segment_index: u64) -> Result<(), StorageError> {
    let temporary = dir.join(temporary_name(segment_index));
    match std::fs::remove_file(&temporary) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(StorageError::from_io("remove", &temporary, &error)),
    }
}

/// One durable index file, open for reading pages.
///
/// Read through the page cache, unlike segments: a key's history or a consumer reading
/// history reads the same few pages again and again, and the kernel keeps hot ones in
/// memory it can take back, so the engine needs no index page cache of its own.
pub struct IndexFile {
    file: BufferedFile,
    path: PathBuf,
}

impl IndexFile {
    /// Opens segment `segment_index`'s index file in `dir`.
    pub async fn open(dir: &Path, segment_index: u64) -> Result<IndexFile, StorageError> {
        let path = dir.join(index_file_name(segment_index));
        let file = BufferedFile::open(&path)
            .await
            .map_err(|error| StorageError::from_glommio("open", &path, error))?;
        Ok(IndexFile { file, path })
    }

    /// The file's path, for errors.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads `page`'s bytes (to verify with `segment_index::decode_page`).
    pub async fn read_page(&self, page: &IndexPage) -> Result<ReadResult, StorageError> {
        self.file
            .read_at(page.position, page.len_bytes())
            .await
            .map_err(|error| StorageError::from_glommio("read", &self.path, error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_files_are_named_after_their_segment() {
        assert_eq!(index_file_name(7), "00000000000000000007.seg.index");
        assert_eq!(
            crate::io::segment::parse_segment_file_name(&index_file_name(7)),
            None,
            "an index file is never taken for a segment"
        );
        assert_eq!(
            crate::io::segment::parse_segment_file_name(&temporary_name(7)),
            None
        );
    }
}
