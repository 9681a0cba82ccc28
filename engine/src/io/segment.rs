//! `SegmentFile`: one preallocated, zero-filled segment of a shard's core log, written with
//! O_DIRECT through glommio's `DmaFile`.
//!
//! A segment is prepared completely before it receives data (FORMAT.md, Segment header):
//! allocated at full size, zero-filled, given its header, synced, its directory synced.
//! On these machines a write + fdatasync that grows a file costs ~20x one that overwrites
//! initialised blocks, so growing on the append path is never an option. The shard prepares
//! the next segment in the background while the current one fills.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::io::{DmaBuffer, DmaFile, OpenOptions, ReadResult};

use crate::core::limits::BLOCK_SIZE_BYTES;
use crate::core::segment_header::{SEGMENT_HEADER_SIZE_BYTES, SegmentHeader, SegmentHeaderError};
use crate::error::{Inconsistency, StorageError};
use crate::io::data_dir::sync_dir;
use crate::io::fault::{FaultHook, FaultPoint};

/// Bytes written per zero-fill write while preparing a segment.
const ZERO_FILL_CHUNK_BYTES: usize = 256 * 1024;

/// Pause after each zero-fill chunk of a background preparation that is not urgent: about
/// 256 MB/s, a seventh of what the disk sustains. Every `fdatasync` of the log waits for the
/// device to flush whatever was queued before it, zero-fill writes included; measured here
/// (`cargo bench --bench append_path`), an unpaced 1 GiB zero-fill in the background cut a
/// single appender from ~6,000 to ~770 durable appends/s.
const ZERO_FILL_PAUSE: std::time::Duration = std::time::Duration::from_millis(1);

/// The file name of segment `index`: zero-padded so that `ls` sorts segments in log order.
pub fn segment_file_name(index: u64) -> String {
    format!("{index:020}.seg")
}

/// Parses a segment file name back into its index.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Writes zeros over `start..end` of `file` in chunks; with `pace`, pauses after each chunk
/// while it holds false (see `prepare`). Written, not synced.
async fn zero_fill(
    file: &DmaFile,
    path: &Path,
    start: u64,
    end: u64,
    pace: Option<&Cell<bool>>,
) -> Result<(), StorageError> {
    let zeros = Rc::new({
        let mut buffer = file.alloc_dma_buffer(ZERO_FILL_CHUNK_BYTES);
        buffer.as_bytes_mut().fill(0);
        buffer
    });
    let mut position = start;
    while position < end {
        let remaining = end - position;
        let written_bytes = if remaining >= ZERO_FILL_CHUNK_BYTES as u64 {
            file.write_rc_at(zeros.clone(), position).await
        } else {
            let tail_bytes = usize::try_from(remaining).expect("remaining < chunk size");
            let mut tail = file.alloc_dma_buffer(tail_bytes);
            tail.as_bytes_mut().fill(0);
            file.write_at(tail, position).await
        }
        .map_err(|error| StorageError::from_glommio("zero-fill", path, error))?;
        let chunk_bytes = usize::try_from(remaining.min(ZERO_FILL_CHUNK_BYTES as u64))
            .expect("at most one chunk");
        check_written(path, "zero-fill", written_bytes, chunk_bytes)?;
        position += chunk_bytes as u64;
        if pace.is_some_and(|urgent| !urgent.get()) {
            glommio::timer::sleep(ZERO_FILL_PAUSE).await;
        }
    }
    Ok(())
}

/// O_DIRECT writes of a preallocated range complete in full or fail; a short one means the
/// device is in trouble, and is handled like any failed write.
fn check_written(
    path: &Path,
    operation: &'static str,
    written_bytes: usize,
    expected_bytes: usize,
) -> Result<(), StorageError> {
    if written_bytes == expected_bytes {
        return Ok(());
    }
    Err(StorageError {
        operation,
        path: path.to_owned(),
        errno: None,
        message: format!("short write: {written_bytes} of {expected_bytes} bytes"),
    })
}

/// One open segment file of a core log.
pub struct SegmentFile {
    file: DmaFile,
    /// The same file opened with O_DSYNC, for groups: a group's write completes only once
    /// it is durable, so committing it is one submission instead of a write and then a
    /// dependent fdatasync (each completion costs the executor a round before the next
    /// step can start). Same device work: the kernel flushes (or writes with FUA) before
    /// completing the write, exactly what fdatasync would do after it.
    durable: DmaFile,
    path: PathBuf,
    header: SegmentHeader,
}

/// Opens `path` a second time for durable group writes (see `SegmentFile::durable`).
async fn open_durable(path: &Path) -> Result<DmaFile, StorageError> {
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DSYNC)
        .dma_open(path)
        .await
        .map_err(|error| StorageError::from_glommio("open O_DSYNC", path, error))
}

impl SegmentFile {
    /// Makes sure glommio decides correctly whether this device supports polled I/O.
    ///
    /// glommio probes polled I/O with a real read on the first file it opens on a device
    /// (per thread), and an empty file makes that probe succeed wrongly: every later read
    /// then fails with EOPNOTSUPP (seen on this project's ext4/virtio machines). Opening a
    /// file that holds a full block first makes the probe do real I/O and decide right.
    pub async fn probe_device(dir: &Path) -> Result<(), StorageError> {
        let path = dir.join("iopoll-probe");
        std::fs::write(&path, [0u8; BLOCK_SIZE_BYTES])
            .map_err(|error| StorageError::from_io("write", &path, &error))?;
        let file = OpenOptions::new()
            .read(true)
            .dma_open(&path)
            .await
            .map_err(|error| StorageError::from_glommio("open", &path, error))?;
        file.close()
            .await
            .map_err(|error| StorageError::from_glommio("close", &path, error))
    }

    /// Creates (or re-initialises) segment `header.segment_index` in `dir` at full size,
    /// zero-filled, with its header, synced, and its name synced in `dir`.
    ///
    /// Re-initialising is safe: a segment is only prepared when the log's valid end lies
    /// in an earlier segment and recovery found nothing in this file that a torn write
    /// cannot explain (FORMAT.md, "Torn tail or damage"), so it holds no acknowledged byte.
    ///
    /// With `pace`, the zero-fill pauses between chunks while `pace` holds false, so that a
    /// background preparation does not delay the log's syncs; the committer sets it to true
    /// when the current segment is filling up and the next one is needed soon.
    pub async fn prepare(
        dir: &Path,
        header: SegmentHeader,
        fault_hook: Option<&FaultHook>,
        pace: Option<Rc<Cell<bool>>>,
    ) -> Result<SegmentFile, StorageError> {
        let path = dir.join(segment_file_name(header.segment_index));
        let io_error = |operation, error: glommio::GlommioError<()>| {
            StorageError::from_glommio(operation, &path, error)
        };
        if let Some(hook) = fault_hook {
            hook.check(FaultPoint::Prepare, &path)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .dma_open(&path)
            .await
            .map_err(|error| io_error("open", error))?;
        file.pre_allocate(header.segment_size_bytes, false)
            .await
            .map_err(|error| io_error("fallocate", error))?;
        zero_fill(&file, &path, 0, header.segment_size_bytes, pace.as_deref()).await?;
        let mut header_block = file.alloc_dma_buffer(SEGMENT_HEADER_SIZE_BYTES);
        header.encode(header_block.as_bytes_mut());
        let written_bytes = file
            .write_at(header_block, 0)
            .await
            .map_err(|error| io_error("write header", error))?;
        check_written(
            &path,
            "write header",
            written_bytes,
            SEGMENT_HEADER_SIZE_BYTES,
        )?;
        file.fdatasync()
            .await
            .map_err(|error| io_error("fdatasync", error))?;
        // Without syncing the directory a crash can lose the new segment's name, and with
        // it every group later written and synced into the file.
        sync_dir(dir)?;
        let durable = open_durable(&path).await?;
        Ok(SegmentFile {
            file,
            durable,
            path,
            header,
        })
    }

    /// Opens an existing segment for recovery and verifies its header against what the
    /// shard expects. `Ok(None)`: the header does not verify (the segment was never
    /// completely prepared), so it holds no data.
    pub async fn open_existing(
        path: &Path,
        expected: &SegmentHeader,
    ) -> Result<Option<SegmentFile>, crate::error::OpenError> {
        let io_error = |operation, error: glommio::GlommioError<()>| {
            StorageError::from_glommio(operation, path, error)
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .dma_open(path)
            .await
            .map_err(|error| io_error("open", error))?;
        // Recovery must not trust bytes that a crashed process left only in a cache: make
        // whatever the file holds durable before reading it.
        file.fdatasync()
            .await
            .map_err(|error| io_error("fdatasync", error))?;
        let block = file
            .read_at_aligned(0, SEGMENT_HEADER_SIZE_BYTES)
            .await
            .map_err(|error| io_error("read header", error))?;
        let header = match SegmentHeader::decode(&block) {
            Ok(header) => header,
            // Created, but the header never written: nothing in it can be data.
            Err(SegmentHeaderError::Blank | SegmentHeaderError::Truncated { .. }) => {
                return Ok(None);
            }
            Err(error) => {
                // A header torn while the segment was being prepared is harmless: nothing
                // is written to a segment before its header is synced, so its first data
                // block is still zero. A damaged header in front of data is corruption, and
                // re-preparing the file would destroy synced records: refuse to open.
                let first_data_block = file
                    .read_at_aligned(SEGMENT_HEADER_SIZE_BYTES as u64, BLOCK_SIZE_BYTES)
                    .await
                    .map_err(|error| io_error("read", error))?;
                if first_data_block.iter().all(|byte| *byte == 0) {
                    return Ok(None);
                }
                return Err(crate::error::OpenError::BadSegmentHeader {
                    path: path.to_owned(),
                    error,
                });
            }
        };
        if header.shard_id != expected.shard_id
            || header.shard_count != expected.shard_count
            || header.segment_index != expected.segment_index
        {
            return Err(crate::error::OpenError::Inconsistent {
                path: path.to_owned(),
                position: 0,
                problem: Inconsistency::HeaderMismatch {
                    found: header,
                    expected: *expected,
                },
            });
        }
        let size_bytes = file
            .file_size()
            .await
            .map_err(|error| io_error("stat", error))?;
        if size_bytes < header.segment_size_bytes {
            return Err(crate::error::OpenError::Inconsistent {
                path: path.to_owned(),
                position: 0,
                problem: Inconsistency::Short {
                    size_bytes,
                    header_size_bytes: header.segment_size_bytes,
                },
            });
        }
        Ok(Some(SegmentFile {
            file,
            durable: open_durable(path).await?,
            path: path.to_owned(),
            header,
        }))
    }

    /// The segment's header.
    pub fn header(&self) -> &SegmentHeader {
        &self.header
    }

    /// The segment's index in its core log.
    pub fn index(&self) -> u64 {
        self.header.segment_index
    }

    /// Preallocated size of the file.
    pub fn size_bytes(&self) -> u64 {
        self.header.segment_size_bytes
    }

    /// The file's path, for errors and logs.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A DMA buffer suitable for `write_group`.
    pub fn alloc_buffer(&self, len_bytes: usize) -> DmaBuffer {
        self.file.alloc_dma_buffer(len_bytes)
    }

    /// Writes one group at a block-aligned `position`; when this returns Ok, the group and
    /// everything written to the segment before it are durable (O_DSYNC).
    pub async fn write_group_durably(
        &self,
        buffer: DmaBuffer,
        position: u64,
    ) -> Result<(), StorageError> {
        assert_eq!(
            position % BLOCK_SIZE_BYTES as u64,
            0,
            "group position is block-aligned"
        );
        assert_eq!(
            buffer.len() % BLOCK_SIZE_BYTES,
            0,
            "group length is block-aligned"
        );
        assert!(
            position + buffer.len() as u64 <= self.header.segment_size_bytes,
            "group at {position} + {} runs past the segment",
            buffer.len()
        );
        let expected_bytes = buffer.len();
        let written_bytes = self
            .durable
            .write_at(buffer, position)
            .await
            .map_err(|error| StorageError::from_glommio("write O_DSYNC", &self.path, error))?;
        check_written(&self.path, "write", written_bytes, expected_bytes)
    }

    /// Overwrites `position..size` with zeros and syncs: what `repair` does to the part of
    /// the segment it truncates, so that nothing there is mistaken for data again.
    pub async fn zero_from(&self, position: u64) -> Result<(), StorageError> {
        assert!(
            position.is_multiple_of(BLOCK_SIZE_BYTES as u64),
            "zeroing starts at a block boundary: {position}"
        );
        zero_fill(
            &self.file,
            &self.path,
            position,
            self.header.segment_size_bytes,
            None,
        )
        .await?;
        self.sync().await
    }

    /// `fdatasync`: when this returns Ok, every group written before is durable.
    pub async fn sync(&self) -> Result<(), StorageError> {
        self.file
            .fdatasync()
            .await
            .map_err(|error| StorageError::from_glommio("fdatasync", &self.path, error))
    }

    /// Reads `len_bytes` at `position` (any alignment).
    pub async fn read(&self, position: u64, len_bytes: usize) -> Result<ReadResult, StorageError> {
        self.file
            .read_at(position, len_bytes)
            .await
            .map_err(|error| StorageError::from_glommio("read", &self.path, error))
    }

    /// Reads `len_bytes` at a block-aligned `position`, without the realignment copy.
    pub async fn read_aligned(
        &self,
        position: u64,
        len_bytes: usize,
    ) -> Result<ReadResult, StorageError> {
        self.file
            .read_at_aligned(position, len_bytes)
            .await
            .map_err(|error| StorageError::from_glommio("read", &self.path, error))
    }
}

/// A segment file opened read-only whatever its header says: recovery reads the files
/// beyond the log's end to tell a torn tail from damage (FORMAT.md, "Torn tail or damage"),
/// and `repair` keeps what it drops.
pub struct SegmentReader {
    file: DmaFile,
    path: PathBuf,
    size_bytes: u64,
}

impl SegmentReader {
    /// Opens `path` for reading.
    pub async fn open(path: &Path) -> Result<SegmentReader, StorageError> {
        let file = OpenOptions::new()
            .read(true)
            .dma_open(path)
            .await
            .map_err(|error| StorageError::from_glommio("open", path, error))?;
        let size_bytes = file
            .file_size()
            .await
            .map_err(|error| StorageError::from_glommio("stat", path, error))?;
        Ok(SegmentReader {
            file,
            path: path.to_owned(),
            size_bytes,
        })
    }

    /// The file's size: a damaged file may be shorter or longer than its header says.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads up to `len_bytes` at a block-aligned `position` (fewer at the end of the file).
    pub async fn read_aligned(
        &self,
        position: u64,
        len_bytes: usize,
    ) -> Result<ReadResult, StorageError> {
        self.file
            .read_at_aligned(position, len_bytes)
            .await
            .map_err(|error| StorageError::from_glommio("read", &self.path, error))
    }

    /// Closes the file.
    pub async fn close(self) {
        let _ = self.file.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_sort_in_log_order_and_parse_back() {
        assert_eq!(segment_file_name(7), "00000000000000000007.seg");
        assert_eq!(parse_segment_file_name("00000000000000000007.seg"), Some(7));
        assert_eq!(parse_segment_file_name("7.seg"), None);
        assert_eq!(parse_segment_file_name("0000000000000000000x.seg"), None);
        assert!(segment_file_name(9) < segment_file_name(10));
    }
}
