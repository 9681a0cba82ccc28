//! Group commit: turns many small appends into one write and one fdatasync.
//!
//! Appends on a shard stage their batch into the open `GroupBuffer` (at most
//! `group_size_bytes_max` bytes and `pending_append_count_max` waiting appends; beyond
//! that they wait). One committer task per shard takes the open group, writes it with one
//! O_DIRECT write at the next block boundary of the current segment (rolling to the
//! prepared next segment when it does not fit), syncs, advances the partitions' watermarks
//! and only then completes the group. While one group is written and synced the next one
//! fills, so group size follows load: one batch when idle, megabytes under load.
//!
//! A failed write or sync poisons the shard (DESIGN §3.5): both the in-flight and the open
//! group fail with the storage error, nothing more is written, no sync is retried.

use std::cell::RefCell;
use std::rc::Rc;

use crate::core::limits::BLOCK_SIZE_BYTES;
use crate::core::offset_index::BatchLocation;
use crate::core::segment_header::SEGMENT_HEADER_SIZE_BYTES;
use crate::core::{Offset, PartitionId};
use crate::error::StorageError;
use crate::io::event::Event;
use crate::io::fault::FaultPoint;
use crate::io::segment::SegmentFile;
use crate::io::shard::{NextSegment, ShardEvents, ShardState, segment_header};

/// Initial capacity of a group's byte buffer; it grows up to `group_size_bytes_max`.
const GROUP_INITIAL_CAPACITY_BYTES: usize = 64 * 1024;

/// One batch inside a group: which partition, which offsets, where in the group's bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GroupBatch {
    pub(crate) partition: PartitionId,
    pub(crate) base_offset: Offset,
    pub(crate) end_offset: Offset,
    pub(crate) group_position: usize,
    pub(crate) len_bytes: u32,
}

/// How a group ended, shared by every append waiting on it.
#[derive(Default)]
pub(crate) struct GroupCompletion {
    outcome: RefCell<Option<Result<(), StorageError>>>,
    done: Event,
}

impl GroupCompletion {
    fn complete(&self, outcome: Result<(), StorageError>) {
        let previous = self.outcome.borrow_mut().replace(outcome);
        assert!(previous.is_none(), "a group completes once");
        self.done.notify();
    }

    /// Waits until the group is synced (`Ok`) or failed.
    pub(crate) async fn wait(&self) -> Result<(), StorageError> {
        loop {
            let listener = self.done.listen();
            if let Some(outcome) = self.outcome.borrow().as_ref() {
                return outcome.clone();
            }
            listener.await;
        }
    }
}

/// The group being filled by appends.
pub(crate) struct GroupBuffer {
    pub(crate) sequence: u64,
    pub(crate) bytes: Vec<u8>,
    pub(crate) batches: Vec<GroupBatch>,
    pub(crate) completion: Rc<GroupCompletion>,
}

impl GroupBuffer {
    pub(crate) fn new(sequence: u64, group_size_bytes_max: usize) -> Self {
        GroupBuffer {
            sequence,
            bytes: Vec::with_capacity(GROUP_INITIAL_CAPACITY_BYTES.min(group_size_bytes_max)),
            batches: Vec::new(),
            completion: Rc::new(GroupCompletion::default()),
        }
    }
}

/// The group being written and synced; its bytes stay readable for pending reads and then
/// move to the read cache.
pub(crate) struct InFlightGroup {
    pub(crate) sequence: u64,
    pub(crate) bytes: Rc<Vec<u8>>,
    pub(crate) batches: Vec<GroupBatch>,
    pub(crate) completion: Rc<GroupCompletion>,
}

/// The committer task of one shard. Returns when the shard is poisoned, or closing with
/// nothing left to write.
pub(crate) async fn run(state: Rc<RefCell<ShardState>>, events: ShardEvents) {
    loop {
        let taken = loop {
            let listener = events.group_ready.listen();
            {
                let mut guard = state.borrow_mut();
                if guard.poisoned.is_some() {
                    return;
                }
                if !guard.open_group.batches.is_empty() {
                    break take_open_group(&mut guard);
                }
                if guard.closing {
                    return;
                }
            }
            listener.await;
        };
        events.room.notify();
        if let Err(error) = commit(&state, &events, taken).await {
            poison(&state, &events, error);
            return;
        }
    }
}

/// Moves the open group to in-flight and opens the next one. Returns the in-flight
/// group's sequence.
fn take_open_group(state: &mut ShardState) -> u64 {
    assert!(
        state.in_flight_group.is_none(),
        "one group in flight at a time"
    );
    let next = GroupBuffer::new(
        state.open_group.sequence + 1,
        state.config.group_size_bytes_max,
    );
    let group = std::mem::replace(&mut state.open_group, next);
    // The bytes go on to the read cache, which is bounded by their length; a small group
    // must not keep its buffer's whole capacity (at least 64 KiB) alive behind a few hundred
    // bytes. Copy it into an exact allocation (cheap: it is small). Shrinking in place is
    // not enough: it leaves a hole the next 64 KiB buffer cannot reuse, measured at ~4 KiB
    // of resident memory per cached group, so a cache of small groups used 10x its bound.
    let bytes = if group.bytes.capacity() > 2 * group.bytes.len() {
        group.bytes.as_slice().to_vec()
    } else {
        group.bytes
    };
    state.in_flight_group = Some(InFlightGroup {
        sequence: group.sequence,
        bytes: Rc::new(bytes),
        batches: group.batches,
        completion: group.completion,
    });
    group.sequence
}

/// Writes and syncs the in-flight group, then makes it durable in every partition and
/// completes it.
async fn commit(
    state: &Rc<RefCell<ShardState>>,
    events: &ShardEvents,
    sequence: u64,
) -> Result<(), StorageError> {
    let (bytes, padded_len_bytes) = {
        let guard = state.borrow();
        let group = guard
            .in_flight_group
            .as_ref()
            .expect("commit runs on a taken group");
        assert_eq!(
            group.sequence, sequence,
            "committing the group that was taken"
        );
        assert!(
            !group.batches.is_empty(),
            "a group written holds at least one batch"
        );
        let padded = group.bytes.len().div_ceil(BLOCK_SIZE_BYTES) * BLOCK_SIZE_BYTES;
        (group.bytes.clone(), padded)
    };
    let (segment, position) = segment_for_group(state, events, padded_len_bytes as u64).await?;

    // See FORMAT.md, Groups and padding: the group starts at a block boundary and is padded
    // with zeros, so no block holding acknowledged bytes is ever written again.
    let mut buffer = segment.alloc_buffer(padded_len_bytes);
    let (data, padding) = buffer.as_bytes_mut().split_at_mut(bytes.len());
    data.copy_from_slice(&bytes);
    padding.fill(0);

    let fault_hook = state.borrow().config.fault_hook.clone();
    if let Some(hook) = &fault_hook {
        hook.check(FaultPoint::Write, segment.path())?;
    }
    segment.write_group(buffer, position).await?;
    for_each_batch(state, |slot_state, batch| {
        slot_state.advance_written(batch.end_offset)
    });
    if let Some(hook) = &fault_hook {
        hook.check(FaultPoint::Sync, segment.path())?;
    }
    segment.sync().await?;

    let (completion, synced_events) = {
        let mut guard = state.borrow_mut();
        let shard = &mut *guard;
        let group = shard
            .in_flight_group
            .take()
            .expect("the group is still in flight");
        shard.log.write_position = position + padded_len_bytes as u64;
        let mut touched: Vec<PartitionId> = Vec::with_capacity(group.batches.len());
        for batch in &group.batches {
            let slot = shard
                .partitions
                .get_mut(&batch.partition)
                .expect("partitions are never removed while batches are pending");
            let pending = slot
                .pending_batches
                .pop_front()
                .expect("each group batch is pending");
            assert_eq!(
                pending.base_offset, batch.base_offset,
                "pending batches of a partition are synced in order"
            );
            slot.durable_batches.push(BatchLocation {
                base_offset: batch.base_offset,
                end_offset: batch.end_offset,
                segment_index: segment.index(),
                position: position + batch.group_position as u64,
                len_bytes: batch.len_bytes,
            });
            slot.state.advance_synced(batch.end_offset);
            touched.push(batch.partition);
        }
        shard.pending_append_count -= group.batches.len();
        shard.stats.group_count += 1;
        shard.stats.batch_count += group.batches.len() as u64;
        shard.stats.batch_bytes += group.bytes.len() as u64;
        shard.stats.written_bytes += padded_len_bytes as u64;
        shard
            .read_cache
            .insert(segment.index(), position, group.bytes);
        touched.sort_unstable();
        touched.dedup();
        let synced_events: Vec<Event> = touched
            .iter()
            .filter_map(|partition| shard.partitions.get(partition))
            .map(|slot| slot.synced.clone())
            .collect();
        (group.completion, synced_events)
    };
    completion.complete(Ok(()));
    // Pending slots and the in-flight group were freed: appends waiting for room re-check.
    events.room.notify();
    for event in synced_events {
        event.notify();
    }
    Ok(())
}

fn for_each_batch(
    state: &Rc<RefCell<ShardState>>,
    mut apply: impl FnMut(&mut crate::core::partition::PartitionState, &GroupBatch),
) {
    let mut guard = state.borrow_mut();
    let shard = &mut *guard;
    let group = shard
        .in_flight_group
        .as_ref()
        .expect("the group is still in flight");
    for batch in &group.batches {
        if let Some(slot) = shard.partitions.get_mut(&batch.partition) {
            apply(&mut slot.state, batch);
        }
    }
}

/// Whether a batch of `len_bytes` can join the open group now.
pub(crate) enum Room {
    /// Yes: the group will fit in the current segment, or in the prepared next one.
    Fits,
    /// Not in this group: the committer must write the open group first.
    WaitForCommitter,
    /// The group needs the next segment, which is still being prepared.
    WaitForPreparation,
    /// The group needs the next segment, and preparing it failed.
    PreparationFailed(StorageError),
}

fn padded(len_bytes: usize) -> u64 {
    (len_bytes.div_ceil(BLOCK_SIZE_BYTES) * BLOCK_SIZE_BYTES) as u64
}

/// Decides whether a batch of `len_bytes` has a place on disk if it joins the open group,
/// by replaying what the committer will do: write the in-flight group, then the open one,
/// each in the current segment if it fits and else in the next (`segment_for_group`).
pub(crate) fn room_for(state: &ShardState, len_bytes: usize) -> Room {
    let log = &state.log;
    let segment_size_bytes = log
        .segments
        .get(&log.current_index)
        .map_or(0, |segment| segment.size_bytes());
    let mut next_ready = matches!(log.next_segment, NextSegment::Ready(_));
    let mut position = log.write_position;
    if let Some(group) = &state.in_flight_group {
        let group_bytes = padded(group.bytes.len());
        if position + group_bytes <= segment_size_bytes {
            position += group_bytes;
        } else {
            // It will take the next segment (admitted when it was ready).
            next_ready = false;
            position = SEGMENT_HEADER_SIZE_BYTES as u64 + group_bytes;
        }
    }
    let open_bytes = padded(state.open_group.bytes.len() + len_bytes);
    if position + open_bytes <= segment_size_bytes || next_ready {
        return Room::Fits;
    }
    if !state.open_group.batches.is_empty() || state.in_flight_group.is_some() {
        return Room::WaitForCommitter;
    }
    match &log.next_segment {
        NextSegment::Failed(error) => Room::PreparationFailed(error.clone()),
        NextSegment::Preparing | NextSegment::Ready(_) => Room::WaitForPreparation,
    }
}

/// Starts preparing segment `index` in the background; its outcome lands in
/// `log.next_segment` and `segment_prepared` is notified. Paced until someone needs it.
pub(crate) fn start_preparation(state: &Rc<RefCell<ShardState>>, events: &ShardEvents, index: u64) {
    let (shard_dir, header, fault_hook, pace) = {
        let mut guard = state.borrow_mut();
        let shard = &mut *guard;
        assert!(
            !matches!(shard.log.next_segment, NextSegment::Ready(_)),
            "a prepared segment is never prepared again"
        );
        shard.log.next_segment = NextSegment::Preparing;
        let pace = Rc::new(std::cell::Cell::new(false));
        shard.log.preparation_urgent = pace.clone();
        (
            shard.shard_dir.clone(),
            segment_header(shard.shard_id, &shard.config, index),
            shard.config.fault_hook.clone(),
            pace,
        )
    };
    let state = state.clone();
    let events = events.clone();
    glommio::spawn_local(async move {
        let outcome =
            SegmentFile::prepare(&shard_dir, header, fault_hook.as_ref(), Some(pace)).await;
        state.borrow_mut().log.next_segment = match outcome {
            Ok(segment) => NextSegment::Ready(segment),
            Err(error) => {
                tracing::warn!(segment = index, %error, "could not prepare the next segment");
                NextSegment::Failed(error)
            }
        };
        events.segment_prepared.notify();
        events.room.notify();
    })
    .detach();
}

/// The segment and block-aligned position where a group of `padded_len_bytes` goes,
/// rolling to the next segment when it does not fit in the current one.
async fn segment_for_group(
    state: &Rc<RefCell<ShardState>>,
    events: &ShardEvents,
    padded_len_bytes: u64,
) -> Result<(Rc<SegmentFile>, u64), StorageError> {
    loop {
        let listener = events.segment_prepared.listen();
        let next = {
            let mut guard = state.borrow_mut();
            let log = &mut guard.log;
            let current = log
                .segments
                .get(&log.current_index)
                .cloned()
                .expect("the current segment is open");
            if log.write_position + padded_len_bytes <= current.size_bytes() {
                // Past half the segment, the next one must be ready soon: let its
                // preparation run at full speed.
                if log.write_position > current.size_bytes() / 2 {
                    log.preparation_urgent.set(true);
                }
                return Ok((current, log.write_position));
            }
            std::mem::replace(&mut log.next_segment, NextSegment::Preparing)
        };
        let segment = match next {
            NextSegment::Ready(segment) => segment,
            NextSegment::Preparing => {
                // Admission (`room_for`) only lets a group need the next segment once it is
                // ready, so this is not expected; waiting is still correct.
                state.borrow().log.preparation_urgent.set(true);
                listener.await;
                continue;
            }
            NextSegment::Failed(error) => {
                state.borrow_mut().log.next_segment = NextSegment::Failed(error.clone());
                return Err(error);
            }
        };
        let next_index = state.borrow().log.current_index + 1;
        assert_eq!(segment.index(), next_index, "segments are used in order");
        let segment = Rc::new(segment);
        {
            let mut guard = state.borrow_mut();
            let shard = &mut *guard;
            tracing::debug!(
                shard = shard.shard_id.0,
                segment = next_index,
                "rolled to next segment"
            );
            shard.log.segments.insert(next_index, segment.clone());
            shard.log.current_index = next_index;
            shard.log.write_position = SEGMENT_HEADER_SIZE_BYTES as u64;
        }
        start_preparation(state, events, next_index + 1);
        return Ok((segment, SEGMENT_HEADER_SIZE_BYTES as u64));
    }
}

/// Fails everything waiting and refuses all further work (DESIGN §3.5).
fn poison(state: &Rc<RefCell<ShardState>>, events: &ShardEvents, error: StorageError) {
    let (in_flight, open, synced_events) = {
        let mut guard = state.borrow_mut();
        let shard = &mut *guard;
        tracing::error!(
            shard = shard.shard_id.0,
            segment = shard.log.current_index,
            write_position = shard.log.write_position,
            pending_appends = shard.pending_append_count,
            %error,
            "storage failure: shard poisoned, acknowledging nothing more"
        );
        shard.poisoned = Some(error.clone());
        let in_flight = shard.in_flight_group.take().map(|group| group.completion);
        let next = GroupBuffer::new(shard.open_group.sequence + 1, 0);
        let open = std::mem::replace(&mut shard.open_group, next).completion;
        let synced_events: Vec<Event> = shard
            .partitions
            .values()
            .map(|slot| slot.synced.clone())
            .collect();
        (in_flight, open, synced_events)
    };
    if let Some(completion) = in_flight {
        completion.complete(Err(error.clone()));
    }
    open.complete(Err(error));
    events.poisoned.notify();
    events.room.notify();
    for event in synced_events {
        event.notify();
    }
}
