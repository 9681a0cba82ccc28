//! The shard's read path: `fetch`, long-poll, `read_key`, `key_history`,
//! `offset_for_timestamp`. The `ShardLog`
//! says where each batch is (the read cache, the disk, or a staged group); this module
//! reads it and verifies what comes from disk again, so a bit flipped at rest is an error,
//! never a wrong record. A poisoned shard refuses every read (docs/DESIGN.md §3.5).

use std::rc::Rc;
use std::time::Duration;

use glommio::io::ReadResult;

use crate::core::offset_index::BatchLocation;
use crate::core::record::{BatchView, RecordView, decode_batch};
use crate::core::shard_log::ReadSource;
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

    /// Durable records of `partition` from offset `from`, whole batches up to about
    /// `max_bytes` (at least one batch when any record is available). `from` equal to the
    /// durable end returns no batches; beyond it is `OffsetOutOfRange`.
    pub async fn fetch(
        &self,
        partition: PartitionId,
        from: Offset,
        max_bytes: usize,
    ) -> Result<Fetched, ReadError> {
        let (sources, synced_end) = {
            let state = self.state.borrow();
            readable(&state, partition)?;
            let (locations, synced_end) = state
                .log
                .fetch_locations(partition, from, max_bytes)
                .ok_or(ReadError::UnknownPartition(partition))?
                .map_err(|synced_end| ReadError::OffsetOutOfRange {
                    requested: from.0,
                    synced_end: synced_end.0,
                })?;
            let sources: Vec<ReadSource> = locations
                .into_iter()
                .map(|location| state.log.durable_source(location))
                .collect();
            (sources, synced_end)
        };
        let mut batches = Vec::with_capacity(sources.len());
        for source in sources {
            batches.push(self.read_batch(source).await?);
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
        let source = {
            let state = self.state.borrow();
            readable(&state, partition)?;
            let location = state
                .log
                .timestamp_location(partition, timestamp_ms)
                .ok_or(ReadError::UnknownPartition(partition))?;
            match location {
                Some(location) => state.log.durable_source(location),
                None => return Ok(None),
            }
        };
        let batch = self.read_batch(source).await?;
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
    /// that key (a null key is no key's, not even the empty one's).
    async fn read_record_of(
        &self,
        partition: PartitionId,
        offset: Offset,
        key_expected: Option<&[u8]>,
    ) -> Result<OwnedRecord, ReadError> {
        let source = {
            let state = self.state.borrow();
            readable(&state, partition)?;
            state
                .log
                .read_source(partition, offset)
                .ok_or(ReadError::UnknownPartition(partition))?
                .map_err(|synced_end| ReadError::OffsetOutOfRange {
                    requested: offset.0,
                    synced_end: synced_end.0,
                })?
        };
        let batch = self.read_batch(source).await?;
        let view = batch.view();
        let timestamp_ms = view.timestamp_ms();
        let record = view
            .records()
            .find(|record| record.offset == offset)
            .expect("the batch located for an offset holds it");
        if let Some(key) = key_expected
            && (record.is_null_key() || record.key != key)
        {
            return Err(ReadError::NotKeyRecord { offset: offset.0 });
        }
        Ok(OwnedRecord::from_view(&record, timestamp_ms))
    }

    async fn read_batch(&self, source: ReadSource) -> Result<FetchedBatch, ReadError> {
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
        };
        let segment = self
            .state
            .borrow()
            .segments
            .get(&location.segment_index)
            .cloned()
            .expect("every indexed batch lies in an open segment");
        let read = segment
            .read(location.position, location.len_bytes as usize)
            .await
            .map_err(ReadError::Storage)?;
        // Bytes from disk are verified again: a bit flipped at rest must be an error, never
        // a wrong record.
        decode_batch(&read).map_err(|error| {
            ReadError::Storage(StorageError::corrupt(
                segment.path(),
                location.position,
                error,
            ))
        })?;
        Ok(FetchedBatch {
            bytes: BatchBytes::Read(read),
        })
    }
}
