//! The shard's read path: `fetch`, long-poll, `read_key`, `key_history`,
//! `offset_for_timestamp`. The `ShardLog`
//! says where each batch is (the read cache, the disk, a staged group, or a page of a
//! sealed segment's index file to read first); this module reads it and verifies what comes
//! from disk again, so a bit flipped at rest is an error, never a wrong record: an index
//! page must match the summary that pointed at it, and a batch must be the partition's and
//! hold the offsets its location says. A poisoned shard refuses every read
//! (docs/DESIGN.md §3.5).

use std::rc::Rc;
use std::time::Duration;

use glommio::io::ReadResult;

use crate::core::offset_index::{BatchLocation, page_find_timestamp};
use crate::core::record::{BatchView, RecordView, decode_batch};
use crate::core::segment_index::{IndexEntry, IndexPage, decode_page};
use crate::core::shard_log::{FetchPlan, Located, ReadSource, batch_in_page, batches_in_page};
use crate::core::{Offset, PartitionId};
use crate::error::{ReadError, StorageError};
use crate::io::shard::Shard;
use crate::io::state::ShardState;
use crate::io::stats::ShardIoStats;

/// Durable batches returned by `fetch`, already verified.
pub struct Fetched {
    /// First offset asked for; records before it in the first batch are skipped.
    pub from: Offset,
    /// The partition's durable end (exclusive) when the fetch was answered.
    pub synced_end: Offset,
    /// Whole batches, in offset order.
    pub batches: Vec<FetchedBatch>,
}

impl Fetched {
    /// The records at or after `from`, in offset order.
    pub fn records(&self) -> impl Iterator<Item = RecordView<'_>> {
        let from = self.from;
        self.batches
            .iter()
            .flat_map(|batch| batch.view().records())
            .filter(move |record| record.offset >= from)
    }
}

enum BatchBytes {
    Shared {
        bytes: Rc<Vec<u8>>,
        start: usize,
        len_bytes: usize,
    },
    Owned(Vec<u8>),
    Read(ReadResult),
}

/// One verified batch, borrowed from the read cache or read from disk.
pub struct FetchedBatch {
    bytes: BatchBytes,
}

impl FetchedBatch {
    /// The batch's encoded bytes.
    pub fn bytes(&self) -> &[u8] {
        match &self.bytes {
            BatchBytes::Shared {
                bytes,
                start,
                len_bytes,
            } => bytes.get(*start..*start + *len_bytes).unwrap_or(&[]),
            BatchBytes::Owned(bytes) => bytes,
            BatchBytes::Read(read) => read,
        }
    }

    /// The decoded batch.
    pub fn view(&self) -> BatchView<'_> {
        decode_batch(self.bytes()).expect("fetched batches are verified when they are read")
    }
}

/// A record copied out of the log, for `read_key` and `key_history`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct OwnedRecord {
    /// The record's offset.
    pub offset: Offset,
    /// Server time of its append, ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// Offset of the previous record with the same key.
    pub prev_key_offset: Option<Offset>,
    /// The key.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// Headers, name then value, in order.
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
}

impl OwnedRecord {
    fn from_view(record: &RecordView<'_>, timestamp_ms: u64) -> Self {
        OwnedRecord {
            offset: record.offset,
            timestamp_ms,
            prev_key_offset: record.prev_key_offset,
            key: record.key.to_vec(),
            value: record.value.to_vec(),
            headers: record
                .headers()
                .map(|header| (header.name.to_vec(), header.value.to_vec()))
                .collect(),
        }
    }
}

/// Refuses reads once the shard is poisoned; `Ok` means the partition may be read.
fn readable(state: &ShardState, partition: PartitionId) -> Result<(), ReadError> {
    if let Some(error) = state.log.poisoned() {
        return Err(ReadError::Storage(error.clone()));
    }
    if state.log.has_partition(partition) {
        Ok(())
    } else {
        Err(ReadError::UnknownPartition(partition))
    }
}

/// Refuses an offset below the partition's log start: retention removed it.
fn kept(state: &ShardState, partition: PartitionId, offset: Offset) -> Result<(), ReadError> {
    match state.log.log_start(partition) {
        Some(log_start) if offset < log_start => Err(ReadError::BeforeLogStart {
            requested: offset.0,
            log_start: log_start.0,
        }),
        _ => Ok(()),
    }
}

/// A verified index page that does not hold what its summary promised: our bug or a file
/// changed under us; refused, never answered wrongly.
fn page_misses(page: &IndexPage, reason: &str) -> ReadError {
    ReadError::Storage(StorageError {
        operation: "verify",
        path: std::path::PathBuf::new(),
        errno: None,
        message: format!(
            "index page of segment {} at position {}: {reason}",
            page.segment_index, page.position
        ),
    })
}

impl Shard {
    /// The partition's end offsets: (appended_end including pending, synced_end).
    pub fn end_offsets(&self, partition: PartitionId) -> Result<(Offset, Offset), ReadError> {
        let state = self.state.borrow();
        readable(&state, partition)?;
        state
            .log
            .end_offsets(partition)
            .ok_or(ReadError::UnknownPartition(partition))
    }

    /// The partition's first kept offset (Kafka's log start offset): below it retention
    /// removed the records, and reads answer `BeforeLogStart`.
    pub fn log_start(&self, partition: PartitionId) -> Result<Offset, ReadError> {
        let state = self.state.borrow();
        readable(&state, partition)?;
        state
            .log
            .log_start(partition)
            .ok_or(ReadError::UnknownPartition(partition))
    }

    /// Durable records of `partition` from offset `from`, whole batches up to about
    /// `max_bytes` (at least one batch when any record is available). `from` equal to the
    /// durable end returns no batches; beyond it is `OffsetOutOfRange`.
    pub async fn fetch(
        &self,
        partition: PartitionId,
        from: Offset,
        max_bytes: usize,
    ) -> Result<Fetched, ReadError> {
        self.across_rewrites(async || self.fetch_once(partition, from, max_bytes).await)
            .await
    }

    /// Runs `read` again when it failed because retention rewrote a segment under it (its
    /// locations named the old file, or the old file's places in the new one): such a
    /// read fails verification, never answers wrongly, and planned again it finds the
    /// batches where they are now. A failure with no rewrite in between is returned.
    async fn across_rewrites<T>(
        &self,
        mut read: impl AsyncFnMut() -> Result<T, ReadError>,
    ) -> Result<T, ReadError> {
        let mut attempts = 0;
        loop {
            let epoch = self.state.borrow().rewrite_epoch;
            match read().await {
                Err(ReadError::Storage(_))
                    if attempts < 3 && self.state.borrow().rewrite_epoch != epoch =>
                {
                    attempts += 1;
                }
                answered => return answered,
            }
        }
    }

    async fn fetch_once(
        &self,
        partition: PartitionId,
        from: Offset,
        max_bytes: usize,
    ) -> Result<Fetched, ReadError> {
        let (plan, synced_end) = {
            let state = self.state.borrow();
            readable(&state, partition)?;
            kept(&state, partition, from)?;
            state
                .log
                .fetch_locations(partition, from, max_bytes)
                .ok_or(ReadError::UnknownPartition(partition))?
                .map_err(|synced_end| ReadError::OffsetOutOfRange {
                    requested: from.0,
                    synced_end: synced_end.0,
                })?
        };
        let locations = match plan {
            FetchPlan::Batches(locations) => locations,
            // From a sealed segment: one index page read, and the fetch stops at its end.
            FetchPlan::Page(page) => {
                let entries = self.read_index_page(&page).await?;
                batches_in_page(&entries, page.segment_index, from, max_bytes)
            }
        };
        let sources: Vec<(ReadSource, Option<BatchLocation>)> = {
            let state = self.state.borrow();
            readable(&state, partition)?;
            locations
                .into_iter()
                .map(|location| (state.log.durable_source(location), Some(location)))
                .collect()
        };
        let mut batches = Vec::with_capacity(sources.len());
        for (source, expected) in sources {
            batches.push(self.read_batch(partition, source, expected).await?);
        }
        Ok(Fetched {
            from,
            synced_end,
            batches,
        })
    }

    /// The earliest durable record of `partition` whose timestamp is at least
    /// `timestamp_ms` (Kafka's ListOffsets by time): its offset and timestamp, `None` when
    /// no durable record is that recent. Record timestamps need not grow with offsets (a
    /// producer sets them); this still finds the earliest offset, with one binary search
    /// over the offset index and one batch read.
    pub async fn offset_for_timestamp(
        &self,
        partition: PartitionId,
        timestamp_ms: i64,
    ) -> Result<Option<(Offset, i64)>, ReadError> {
        self.across_rewrites(async || {
            self.offset_for_timestamp_once(partition, timestamp_ms)
                .await
        })
        .await
    }

    async fn offset_for_timestamp_once(
        &self,
        partition: PartitionId,
        timestamp_ms: i64,
    ) -> Result<Option<(Offset, i64)>, ReadError> {
        let located = {
            let state = self.state.borrow();
            readable(&state, partition)?;
            state
                .log
                .timestamp_location(partition, timestamp_ms)
                .ok_or(ReadError::UnknownPartition(partition))?
        };
        let location = match located {
            None => return Ok(None),
            Some(Located::Batch(location)) => location,
            Some(Located::Page(page)) => {
                let entries = self.read_index_page(&page).await?;
                let entry = page_find_timestamp(&entries, timestamp_ms)
                    .ok_or_else(|| page_misses(&page, "no batch reaches the timestamp"))?;
                entry.location(page.segment_index)
            }
        };
        let source = self.state.borrow().log.durable_source(location);
        let batch = self.read_batch(partition, source, Some(location)).await?;
        let found = batch
            .view()
            .records()
            .find(|record| record.timestamp_ms() >= timestamp_ms)
            .map(|record| (record.offset, record.timestamp_ms()));
        debug_assert!(
            found.is_some(),
            "the offset index located a batch with a record at or after {timestamp_ms}"
        );
        Ok(found)
    }

    /// Waits until `partition`'s durable end passes `offset`, or `timeout` elapses.
    /// Returns the durable end when it stops waiting.
    pub async fn wait_synced_beyond(
        &self,
        partition: PartitionId,
        offset: Offset,
        timeout: Duration,
    ) -> Result<Offset, ReadError> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let listener = {
                let mut state = self.state.borrow_mut();
                readable(&state, partition)?;
                let synced_end = self.end_offsets_of(&state, partition)?;
                if synced_end > offset {
                    return Ok(synced_end);
                }
                state.synced.entry(partition).or_default().listen()
            };
            let now = std::time::Instant::now();
            if now >= deadline {
                return Ok(self.end_offsets(partition)?.1);
            }
            futures_lite::future::or(listener, glommio::timer::sleep(deadline - now)).await;
        }
    }

    fn end_offsets_of(
        &self,
        state: &ShardState,
        partition: PartitionId,
    ) -> Result<Offset, ReadError> {
        state
            .log
            .end_offsets(partition)
            .map(|(_, synced_end)| synced_end)
            .ok_or(ReadError::UnknownPartition(partition))
    }

    /// The latest record of `key`: durable only, or including staged records when
    /// `include_appended` (what the next conditional append must expect, docs/DESIGN.md §1).
    pub async fn read_key(
        &self,
        partition: PartitionId,
        key: &[u8],
        include_appended: bool,
    ) -> Result<Option<OwnedRecord>, ReadError> {
        let latest = {
            let state = self.state.borrow();
            readable(&state, partition)?;
            let partition_state = state
                .log
                .partition_state(partition)
                .ok_or(ReadError::UnknownPartition(partition))?;
            if include_appended {
                partition_state.latest(key)
            } else {
                partition_state.latest_synced(key)
            }
        };
        match latest {
            None => Ok(None),
            Some(offset) => self.read_record(partition, offset).await.map(Some),
        }
    }

    /// The durable history of `key`, newest first, following `prev_key_offset`
    /// back-pointers (no partition scan): at most `record_count_max` records, and no more
    /// once their keys and values pass `size_bytes_max` (at least one record when any).
    ///
    /// It starts at the key's latest synced record, or at `from` when given (a previous
    /// page's last `prev_key_offset`): that must be a synced record of `key`, else
    /// `OffsetOutOfRange` (at or beyond the synced end) or `NotKeyRecord`.
    pub async fn key_history(
        &self,
        partition: PartitionId,
        key: &[u8],
        from: Option<Offset>,
        record_count_max: usize,
        size_bytes_max: usize,
    ) -> Result<Vec<OwnedRecord>, ReadError> {
        let mut next = {
            let state = self.state.borrow();
            readable(&state, partition)?;
            let partition_state = state
                .log
                .partition_state(partition)
                .ok_or(ReadError::UnknownPartition(partition))?;
            match from {
                None => partition_state.latest_synced(key),
                Some(from) => {
                    // Checked here, not by `read_record`, which also serves staged records.
                    let synced_end = partition_state.synced_end();
                    if from >= synced_end {
                        return Err(ReadError::OffsetOutOfRange {
                            requested: from.0,
                            synced_end: synced_end.0,
                        });
                    }
                    Some(from)
                }
            }
        };
        let mut history = Vec::new();
        let mut size_bytes = 0usize;
        while let Some(offset) = next {
            if history.len() >= record_count_max
                || (!history.is_empty() && size_bytes >= size_bytes_max)
            {
                break;
            }
            // Retention removed the older records: the history kept ends here.
            let log_start = self.state.borrow().log.log_start(partition);
            if !history.is_empty() && log_start.is_some_and(|start| offset < start) {
                break;
            }
            // Only the first record can be another key's (from `from`): the rest are reached
            // by the key's own back-pointers.
            let key_expected = history.is_empty().then_some(key);
            let record = self.read_record_of(partition, offset, key_expected).await?;
            next = record.prev_key_offset;
            size_bytes += record.key.len() + record.value.len();
            history.push(record);
        }
        Ok(history)
    }

    async fn read_record(
        &self,
        partition: PartitionId,
        offset: Offset,
    ) -> Result<OwnedRecord, ReadError> {
        self.read_record_of(partition, offset, None).await
    }

    /// The record at `offset`; with `key_expected`, `NotKeyRecord` unless it is a record of
    /// that key (a null key is no key's, not even the empty one's). Below the log start,
    /// `BeforeLogStart`: retention removed it.
    async fn read_record_of(
        &self,
        partition: PartitionId,
        offset: Offset,
        key_expected: Option<&[u8]>,
    ) -> Result<OwnedRecord, ReadError> {
        self.across_rewrites(async || self.read_record_once(partition, offset, key_expected).await)
            .await
    }

    async fn read_record_once(
        &self,
        partition: PartitionId,
        offset: Offset,
        key_expected: Option<&[u8]>,
    ) -> Result<OwnedRecord, ReadError> {
        let source = {
            let state = self.state.borrow();
            readable(&state, partition)?;
            kept(&state, partition, offset)?;
            state
                .log
                .read_source(partition, offset)
                .ok_or(ReadError::UnknownPartition(partition))?
                .map_err(|synced_end| ReadError::OffsetOutOfRange {
                    requested: offset.0,
                    synced_end: synced_end.0,
                })?
        };
        let (source, expected) = match source {
            ReadSource::Page(page) => {
                let entries = self.read_index_page(&page).await?;
                let location = batch_in_page(&entries, page.segment_index, offset)
                    .ok_or_else(|| page_misses(&page, "no batch holds the offset"))?;
                (
                    self.state.borrow().log.durable_source(location),
                    Some(location),
                )
            }
            ReadSource::Disk(location) => (ReadSource::Disk(location), Some(location)),
            other => (other, None),
        };
        let batch = self.read_batch(partition, source, expected).await?;
        let view = batch.view();
        let timestamp_ms = view.timestamp_ms();
        let record = view
            .records()
            .find(|record| record.offset == offset)
            .ok_or_else(|| {
                ReadError::Storage(StorageError {
                    operation: "verify",
                    path: std::path::PathBuf::new(),
                    errno: None,
                    message: format!(
                        "the batch located for offset {offset} of partition {} does not hold it",
                        partition.0
                    ),
                })
            })?;
        if let Some(key) = key_expected
            && (record.is_null_key() || record.key != key)
        {
            return Err(ReadError::NotKeyRecord { offset: offset.0 });
        }
        Ok(OwnedRecord::from_view(&record, timestamp_ms))
    }

    /// Reads and verifies a page of a sealed segment's index file: it must be the page
    /// the partition's summary points at (`decode_page`), else a storage error.
    async fn read_index_page(&self, page: &IndexPage) -> Result<Vec<IndexEntry>, ReadError> {
        // Gone only if retention rewrote the segment since the page was planned: the
        // caller plans again (`across_rewrites`).
        let file = self
            .state
            .borrow()
            .index_files
            .get(&page.segment_index)
            .cloned()
            .ok_or_else(|| page_misses(page, "its index file is no longer open"))?;
        let bytes = file.read_page(page).await.map_err(ReadError::Storage)?;
        decode_page(&bytes, page).map_err(|error| {
            ReadError::Storage(StorageError {
                operation: "verify",
                path: file.path().to_owned(),
                errno: None,
                message: format!(
                    "index page at position {} does not verify: {error}",
                    page.position
                ),
            })
        })
    }

    /// Reads the batch at `source`; one from disk is decoded again and, with `expected`,
    /// must be `partition`'s batch with exactly those offsets.
    async fn read_batch(
        &self,
        partition: PartitionId,
        source: ReadSource,
        expected: Option<BatchLocation>,
    ) -> Result<FetchedBatch, ReadError> {
        {
            let stats = &self.state.borrow().stats;
            if matches!(source, ReadSource::Disk(_)) {
                ShardIoStats::count(&stats.read_cache_misses);
            } else {
                ShardIoStats::count(&stats.read_cache_hits);
            }
        }
        let location: BatchLocation = match source {
            ReadSource::Cached {
                bytes,
                start,
                len_bytes,
            } => {
                return Ok(FetchedBatch {
                    bytes: BatchBytes::Shared {
                        bytes,
                        start,
                        len_bytes,
                    },
                });
            }
            ReadSource::Staged(bytes) => {
                return Ok(FetchedBatch {
                    bytes: BatchBytes::Owned(bytes),
                });
            }
            ReadSource::Disk(location) => location,
            ReadSource::Page(page) => {
                return Err(page_misses(
                    &page,
                    "an index page is resolved before its batch is read",
                ));
            }
        };
        let segment = self
            .state
            .borrow()
            .segments
            .get(&location.segment_index)
            .cloned()
            .ok_or_else(|| {
                ReadError::Storage(StorageError {
                    operation: "read",
                    path: std::path::PathBuf::new(),
                    errno: None,
                    message: format!("segment {} is no longer open", location.segment_index),
                })
            })?;
        let read = segment
            .read(location.position, location.len_bytes as usize)
            .await
            .map_err(ReadError::Storage)?;
        // Bytes from disk are verified again: a bit flipped at rest must be an error, never
        // a wrong record.
        let view = decode_batch(&read).map_err(|error| {
            ReadError::Storage(StorageError::corrupt(
                segment.path(),
                location.position,
                error,
            ))
        })?;
        let expected = expected.unwrap_or(location);
        if view.partition_id() != partition
            || view.base_offset() != expected.base_offset
            || view.end_offset() != expected.end_offset
        {
            return Err(ReadError::Storage(StorageError {
                operation: "verify",
                path: segment.path().to_owned(),
                errno: None,
                message: format!(
                    "batch at position {} is partition {} offsets {}..{}, the index says \
                     partition {} offsets {}..{}",
                    location.position,
                    view.partition_id().0,
                    view.base_offset(),
                    view.end_offset(),
                    partition.0,
                    expected.base_offset,
                    expected.end_offset
                ),
            }));
        }
        Ok(FetchedBatch {
            bytes: BatchBytes::Read(read),
        })
    }
}
