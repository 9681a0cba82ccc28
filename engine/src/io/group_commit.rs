//! Group commit, the shell's part: one committer task per shard asks the `ShardLog` for the
//! next group (`poll_group_write`), writes it with one O_DIRECT write through the segment's
//! O_DSYNC descriptor (durable when it completes: no separate fdatasync), reports it
//! written and synced, and only then completes the group's waiters. While one group is written and synced
//! the next one fills, so group size follows load: one batch when idle, megabytes under
//! load. Segment preparation runs as a background task whenever the log asks for it, and
//! so does writing a sealed segment's index file (`io::index_file`) once a roll seals it.
//!
//! A failed write or sync poisons the shard (docs/DESIGN.md §3.5): both the in-flight and the open
//! group fail with the storage error, nothing more is written, no sync is retried.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

use crate::core::shard_log::{CapturedCheckpoint, GroupPoll, GroupWrite};
use crate::error::StorageError;
use crate::io::checkpoint;
use crate::io::event::Event;
use crate::io::fault::FaultPoint;
use crate::io::index_file::{self, IndexFile};
use crate::io::segment::SegmentFile;
use crate::io::state::{ShardEvents, ShardState};
use crate::io::stats::ShardIoStats;

/// The committer task of one shard. Returns when the shard is poisoned, or closing with
/// nothing left to write.
pub(crate) async fn run(state: Rc<RefCell<ShardState>>, events: ShardEvents) {
    loop {
        let write = loop {
            let listener = events.group_ready.listen();
            let poll = {
                let mut guard = state.borrow_mut();
                if guard.log.poisoned().is_some() {
                    return;
                }
                let poll = guard.log.poll_group_write();
                guard.publish_urgency();
                if matches!(poll, GroupPoll::Idle) && guard.closing && !guard.log.has_unsynced() {
                    return;
                }
                poll
            };
            match poll {
                GroupPoll::Write(write) => break write,
                GroupPoll::Idle => {}
                GroupPoll::WaitForPreparation => start_preparation(&state, &events),
                GroupPoll::Failed(error) => {
                    poison(&state, &events, error);
                    return;
                }
            }
            listener.await;
        };
        // Nothing was staged since the group was taken: the one moment a checkpoint can be.
        start_checkpoint_if_due(&state, &write);
        // The open group was taken: appenders waiting for room in it re-check.
        events.room.notify();
        if write.rolled {
            install_next_segment(&state, &write);
            start_preparation(&state, &events);
        }
        if let Err(error) = write_durably(&state, &events, &write).await {
            poison(&state, &events, error);
            return;
        }
    }
}

/// Makes the prepared next segment the current one: the log rolled to it.
fn install_next_segment(state: &Rc<RefCell<ShardState>>, write: &GroupWrite) {
    let mut guard = state.borrow_mut();
    let segment = guard
        .next_segment_file
        .take()
        .expect("the log rolls only to a prepared segment");
    assert_eq!(
        segment.index(),
        write.segment_index,
        "segments are used in order"
    );
    tracing::debug!(
        shard = guard.shard_id.0,
        segment = write.segment_index,
        "rolled to next segment"
    );
    guard.segments.insert(write.segment_index, Rc::new(segment));
    ShardIoStats::count(&guard.stats.segment_rolls);
}

/// Writes one group durably, then reports it written and synced and completes its waiters.
async fn write_durably(
    state: &Rc<RefCell<ShardState>>,
    events: &ShardEvents,
    write: &GroupWrite,
) -> Result<(), StorageError> {
    let (segment, fault_hook, stats, opened_at) = {
        let guard = state.borrow();
        let segment = guard
            .segments
            .get(&write.segment_index)
            .cloned()
            .expect("the log writes to an open segment");
        let opened_at = guard
            .completions
            .get(&write.sequence)
            .map(|completion| completion.opened_at);
        (
            segment,
            guard.config.fault_hook.clone(),
            guard.stats.clone(),
            opened_at,
        )
    };
    stats.group_records.observe(write.record_count);
    stats
        .group_bytes
        .observe(u64::try_from(write.bytes.len()).unwrap_or(u64::MAX));
    // See FORMAT.md, Groups and padding: the group starts at a block boundary and is padded
    // with zeros, so no block holding acknowledged bytes is ever written again.
    let padded_len_bytes =
        usize::try_from(write.padded_len_bytes).expect("a group is at most a few MiB");
    let mut buffer = segment.alloc_buffer(padded_len_bytes);
    let (data, padding) = buffer.as_bytes_mut().split_at_mut(write.bytes.len());
    data.copy_from_slice(&write.bytes);
    padding.fill(0);

    if let Some(hook) = &fault_hook {
        hook.check(FaultPoint::Write, segment.path())?;
    }
    let write_start = std::time::Instant::now();
    if let Some(opened_at) = opened_at {
        stats
            .group_wait_us
            .observe_duration_us(write_start.saturating_duration_since(opened_at));
    }
    segment.write_group_durably(buffer, write.position).await?;
    stats
        .write_latency_us
        .observe_duration_us(write_start.elapsed());
    state.borrow_mut().log.handle_written(write.sequence);
    // The write completed durably (O_DSYNC): there is no separate sync to wait for. The
    // fault point stays, so tests can still fail a group after its bytes were written.
    if let Some(hook) = &fault_hook {
        hook.check(FaultPoint::Sync, segment.path())?;
    }

    let (completion, synced_events) = {
        let mut guard = state.borrow_mut();
        let synced = guard.log.handle_synced(write.sequence);
        let completion = guard
            .completions
            .remove(&synced.sequence)
            .expect("a group in flight has waiters");
        let synced_events: Vec<Event> = synced
            .partitions
            .iter()
            .filter_map(|partition| guard.synced.get(partition).cloned())
            .collect();
        (completion, synced_events)
    };
    completion.complete(Ok(()));
    if write.rolled {
        // The segment before this one is sealed now.
        start_index_write(state);
    }
    // Pending slots and the in-flight group were freed: appends waiting for room re-check.
    events.room.notify();
    for event in synced_events {
        event.notify();
    }
    Ok(())
}

/// Takes a checkpoint of the shard's state at the end of the group just taken, when one is
/// due (`EngineConfig::checkpoint_interval_bytes` of log since the last) and none is being
/// written, and installs it in the background once that group is synced (docs/DESIGN.md
/// §3.7). Only the copy of the state runs on the executor; a failed group or a failed
/// install leaves the previous checkpoints, and the next one is due one interval later.
fn start_checkpoint_if_due(state: &Rc<RefCell<ShardState>>, write: &GroupWrite) {
    let (bytes, log_end, completion, shard_dir, stats, captured_at, fault_hook) = {
        let mut guard = state.borrow_mut();
        let interval = guard.config.checkpoint_interval_bytes;
        if interval == 0
            || guard.checkpoint_writing
            || guard.log.stats().written_bytes < guard.checkpoint_due_bytes
        {
            return;
        }
        let captured_at = Instant::now();
        let Some(CapturedCheckpoint { bytes, log_end }) = guard
            .log
            .capture_checkpoint(guard.shard_id, guard.config.shard_count)
        else {
            return;
        };
        guard
            .stats
            .checkpoint_capture_us
            .observe_duration_us(captured_at.elapsed());
        guard.checkpoint_writing = true;
        guard.checkpoint_due_bytes = guard.log.stats().written_bytes + interval;
        (
            bytes,
            log_end,
            guard.completion(write.sequence),
            guard.shard_dir.clone(),
            guard.stats.clone(),
            captured_at,
            guard.config.fault_hook.clone(),
        )
    };
    let task_state = state.clone();
    let task = glommio::spawn_local(async move {
        let state = task_state;
        // Installed only once every record it covers is durable: a checkpoint must never
        // hold a record a crash could still take away.
        if completion.wait().await.is_ok() {
            let installed = glommio::executor()
                .spawn_blocking(move || {
                    checkpoint::install(&shard_dir, log_end, &bytes, fault_hook.as_ref())
                })
                .await;
            match installed {
                Ok(path) => {
                    ShardIoStats::count(&stats.checkpoints_written);
                    stats
                        .checkpoint_install_us
                        .observe_duration_us(captured_at.elapsed());
                    tracing::debug!(path = %path.display(), "checkpoint installed");
                }
                Err(error) => {
                    ShardIoStats::count(&stats.checkpoint_failures);
                    // Due again one interval on (set at the capture), not at once: on a
                    // full disk every group would otherwise pay a capture that cannot land.
                    tracing::warn!(%error, "checkpoint not written; the log goes on without it");
                }
            }
        }
        state.borrow_mut().checkpoint_writing = false;
    });
    // The previous install has finished (`checkpoint_writing` was false): its handle goes.
    state.borrow_mut().checkpoint_task = Some(task);
}

/// Starts preparing the next segment in the background if the log asks for it; its outcome
/// goes to `ShardLog::handle_prepared`. Paced until the log says it is urgent.
pub(crate) fn start_preparation(state: &Rc<RefCell<ShardState>>, events: &ShardEvents) {
    let (index, shard_dir, header, fault_hook, pace) = {
        let mut guard = state.borrow_mut();
        let Some(index) = guard.log.poll_preparation() else {
            return;
        };
        guard.publish_urgency();
        (
            index,
            guard.shard_dir.clone(),
            guard.next_segment_header(index),
            guard.config.fault_hook.clone(),
            guard.preparation_urgent.clone(),
        )
    };
    let state = state.clone();
    let events = events.clone();
    glommio::spawn_local(async move {
        let preparation_start = std::time::Instant::now();
        let outcome =
            SegmentFile::prepare(&shard_dir, header, fault_hook.as_ref(), Some(pace)).await;
        state
            .borrow()
            .stats
            .segment_preparation_us
            .observe_duration_us(preparation_start.elapsed());
        {
            let mut guard = state.borrow_mut();
            match outcome {
                Ok(segment) => {
                    guard.next_segment_file = Some(segment);
                    guard.log.handle_prepared(index, Ok(()));
                }
                Err(error) => {
                    tracing::warn!(segment = index, %error, "could not prepare the next segment");
                    guard.log.handle_prepared(index, Err(error));
                }
            }
            guard.publish_urgency();
        }
        events.room.notify();
        events.group_ready.notify();
    })
    .detach();
}

/// How long after a failed index write (ENOSPC, EIO) it is tried again, unless a later
/// seal tries it first.
const INDEX_RETRY_DELAY: std::time::Duration = std::time::Duration::from_secs(10);

/// Starts writing the next sealed segment's index file in the background if the log asks
/// for one; its outcome goes to `ShardLog::handle_index_written` or `handle_index_failed`,
/// and the next one starts after it. A failure is logged and retried, never fatal: the
/// segment's batches stay in memory meanwhile (`io::index_file`).
pub(crate) fn start_index_write(state: &Rc<RefCell<ShardState>>) {
    let (write, header, shard_dir, fault_hook) = {
        let mut guard = state.borrow_mut();
        let Some(write) = guard.log.poll_index_write() else {
            return;
        };
        let header = *guard
            .segments
            .get(&write.segment_index)
            .expect("a sealed segment is open")
            .header();
        (
            write,
            header,
            guard.shard_dir.clone(),
            guard.config.fault_hook.clone(),
        )
    };
    let state = state.clone();
    glommio::spawn_local(async move {
        let segment_index = write.segment_index;
        // On the executor: a large segment's index (2 M batches, 80 MB) takes a while to
        // encode, but glommio's blocking pool cost ~170 MB more resident memory in the
        // restart bench (BENCHMARKS.md §4), which this does not.
        let bytes = write.into_index(header).encode();
        let outcome = match index_file::write_index_file(
            &shard_dir,
            segment_index,
            &bytes,
            fault_hook.as_ref(),
        )
        .await
        {
            Ok(()) => IndexFile::open(&shard_dir, segment_index).await,
            Err(error) => Err(error),
        };
        drop(bytes);
        match outcome {
            Ok(file) => {
                {
                    let mut guard = state.borrow_mut();
                    guard.index_files.insert(segment_index, Rc::new(file));
                    guard.log.handle_index_written(segment_index);
                }
                start_index_write(&state);
            }
            Err(error) => {
                tracing::warn!(
                    segment = segment_index,
                    %error,
                    "could not write a segment index file: its batches stay in memory, retrying later"
                );
                state.borrow_mut().log.handle_index_failed(segment_index);
                glommio::timer::sleep(INDEX_RETRY_DELAY).await;
                state.borrow_mut().log.retry_index_writes();
                start_index_write(&state);
            }
        }
    })
    .detach();
}

/// Fails everything waiting and refuses all further work (docs/DESIGN.md §3.5).
pub(crate) fn poison(state: &Rc<RefCell<ShardState>>, events: &ShardEvents, error: StorageError) {
    let (completions, synced_events) = {
        let mut guard = state.borrow_mut();
        let shard = &mut *guard;
        tracing::error!(
            shard = shard.shard_id.0,
            segment = shard.log.current_segment_index(),
            pending_appends = shard.log.pending_append_count(),
            %error,
            "storage failure: shard poisoned, acknowledging nothing more"
        );
        shard.log.handle_failure(error.clone());
        ShardIoStats::count(&shard.stats.storage_failures);
        let completions: Vec<_> = shard
            .completions
            .drain()
            .map(|(_, completion)| completion)
            .collect();
        let synced_events: Vec<Event> = shard.synced.values().cloned().collect();
        (completions, synced_events)
    };
    for completion in completions {
        completion.complete(Err(error.clone()));
    }
    events.poisoned.notify();
    events.room.notify();
    for event in synced_events {
        event.notify();
    }
}
