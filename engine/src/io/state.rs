//! What a shard's tasks share on its executor: the sans-I/O `ShardLog` that decides, and
//! the things only the shell can hold — segment files, the waiters of each group, the
//! events tasks wait on. Lives in an `Rc<RefCell<_>>` that is never borrowed across an
//! `.await`.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Instant;

use hashbrown::HashMap;

use crate::core::PartitionId;
use crate::core::ShardId;
use crate::core::segment_header::SegmentHeader;
use crate::core::shard_log::ShardLog;
use crate::error::StorageError;
use crate::io::config::EngineConfig;
use crate::io::data_dir::{Catalog, DataDir, ProducerIdAllocator};
use crate::io::event::Event;
use crate::io::index_file::IndexFile;
use crate::io::segment::SegmentFile;

/// How a group ended, shared by every append waiting on it.
pub(crate) struct GroupCompletion {
    outcome: RefCell<Option<Result<(), StorageError>>>,
    done: Event,
    /// When the group's first batch was staged (the latency breakdown's group wait).
    pub(crate) opened_at: Instant,
    /// When the group ended (the breakdown's completion wake-up).
    completed_at: Cell<Option<Instant>>,
}

impl Default for GroupCompletion {
    fn default() -> Self {
        GroupCompletion {
            outcome: RefCell::new(None),
            done: Event::new(),
            opened_at: Instant::now(),
            completed_at: Cell::new(None),
        }
    }
}

impl GroupCompletion {
    pub(crate) fn complete(&self, outcome: Result<(), StorageError>) {
        let previous = self.outcome.borrow_mut().replace(outcome);
        assert!(previous.is_none(), "a group completes once");
        self.completed_at.set(Some(Instant::now()));
        self.done.notify();
    }

    /// When the group ended, once it has.
    pub(crate) fn completed_at(&self) -> Option<Instant> {
        self.completed_at.get()
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

/// Wake-ups between appenders, the committer and readers of one shard.
#[derive(Clone, Default)]
pub(crate) struct ShardEvents {
    /// The committer may have something to do: a batch was staged, a segment prepared,
    /// or the shard began closing.
    pub(crate) group_ready: Event,
    /// Something appenders wait for changed: the committer took the open group or
    /// completed one (pending slots and the in-flight group freed), a segment preparation
    /// finished, or the shard was poisoned or began closing. The head of the admission
    /// queue listens to it.
    pub(crate) room: Event,
    /// The shard was poisoned.
    pub(crate) poisoned: Event,
}

/// Appends waiting for room in their group, for a pending slot or for the next segment, in
/// arrival order. Only the head looks at the room; when it is admitted, or gives up (an
/// error, a doomed condition, its caller went away), it leaves and wakes the next. So one
/// connection's pipelined appends get offsets in the order they were sent, no append
/// starves behind later ones, and a change of room wakes one task, not thousands.
#[derive(Default)]
pub(crate) struct AdmissionQueue {
    waiters: VecDeque<(u64, Event)>,
    ticket_next: u64,
}

impl AdmissionQueue {
    pub(crate) fn is_empty(&self) -> bool {
        self.waiters.is_empty()
    }

    pub(crate) fn join(&mut self) -> (u64, Event) {
        let ticket = self.ticket_next;
        self.ticket_next += 1;
        let turn = Event::new();
        self.waiters.push_back((ticket, turn.clone()));
        (ticket, turn)
    }

    pub(crate) fn is_head(&self, ticket: u64) -> bool {
        self.waiters
            .front()
            .is_some_and(|(head, _)| *head == ticket)
    }

    /// Removes `ticket` and, if it was the head, tells the new head its turn has come.
    pub(crate) fn leave(&mut self, ticket: u64) {
        let Some(index) = self
            .waiters
            .iter()
            .position(|(waiter, _)| *waiter == ticket)
        else {
            return;
        };
        self.waiters.remove(index);
        if index == 0
            && let Some((_, turn)) = self.waiters.front()
        {
            turn.notify();
        }
    }
}

/// An append's place in the admission queue; leaving it (however the append ends, its
/// future dropped included) passes the turn on.
pub(crate) struct AdmissionTicket<'a> {
    pub(crate) state: &'a RefCell<ShardState>,
    pub(crate) ticket: u64,
    pub(crate) turn: Event,
}

impl Drop for AdmissionTicket<'_> {
    fn drop(&mut self) {
        self.state.borrow_mut().admission.leave(self.ticket);
    }
}

/// A shard's shared state.
pub(crate) struct ShardState {
    pub(crate) shard_id: ShardId,
    pub(crate) config: EngineConfig,
    pub(crate) shard_dir: PathBuf,
    pub(crate) data_dir: DataDir,
    /// Only shard 0 owns the topic catalog; others learn topics through `add_topic`.
    pub(crate) catalog: Catalog,
    /// What decides.
    pub(crate) log: ShardLog,
    /// The open segment files of the core log, by index.
    pub(crate) segments: BTreeMap<u64, Rc<SegmentFile>>,
    /// The durable index files of sealed segments, by segment index.
    pub(crate) index_files: BTreeMap<u64, Rc<IndexFile>>,
    /// The prepared next segment, until a roll makes it current.
    pub(crate) next_segment_file: Option<SegmentFile>,
    /// The waiters of each group not yet completed, by sequence.
    pub(crate) completions: HashMap<u64, Rc<GroupCompletion>>,
    /// Per partition, notified when its synced end moves (long-polling fetches).
    pub(crate) synced: HashMap<PartitionId, Event>,
    /// Read by a background preparation: stop pacing, the segment is needed.
    pub(crate) preparation_urgent: Rc<Cell<bool>>,
    /// Appends waiting for room, in arrival order.
    pub(crate) admission: AdmissionQueue,
    /// Hands out this shard's producer ids.
    pub(crate) producer_ids: ProducerIdAllocator,
    pub(crate) closing: bool,
    /// `ShardLogStats::written_bytes` at which the next checkpoint is taken.
    pub(crate) checkpoint_due_bytes: u64,
    /// A checkpoint is being written: the next waits for it.
    pub(crate) checkpoint_writing: bool,
    /// The task installing the latest checkpoint; closing the shard waits for it, so no
    /// install is cut off by the executor ending.
    pub(crate) checkpoint_task: Option<glommio::Task<()>>,
    /// Retention rewrites nothing before this: a backup is copying the log.
    pub(crate) retention_paused_until: Option<Instant>,
    /// A rewrite is on its thread: a backup point now could copy either generation.
    pub(crate) retention_rewriting: bool,
    /// Counts retention's rewrites: a read that fails while it changed plans again.
    pub(crate) rewrite_epoch: u64,
    /// What the metrics endpoint reads (written only here).
    pub(crate) stats: std::sync::Arc<crate::io::stats::ShardIoStats>,
}

impl ShardState {
    /// The waiters of group `sequence`.
    pub(crate) fn completion(&mut self, sequence: u64) -> Rc<GroupCompletion> {
        self.completions.entry(sequence).or_default().clone()
    }

    /// Tells a running preparation whether the log now needs its segment urgently.
    pub(crate) fn publish_urgency(&self) {
        self.preparation_urgent
            .set(self.log.is_preparation_urgent());
    }

    /// The header of this shard's next segment, `index`, sized as the log says.
    pub(crate) fn next_segment_header(&self, index: u64) -> SegmentHeader {
        let mut header = segment_header(self.shard_id, &self.config, index);
        header.segment_size_bytes = self.log.next_segment_size_bytes();
        header
    }
}

/// The header of segment `index` of shard `shard_id`, at the configured size (a new log's
/// first segment and every later one set their own: `ShardLog::next_segment_size_bytes`).
pub(crate) fn segment_header(
    shard_id: ShardId,
    config: &EngineConfig,
    index: u64,
) -> SegmentHeader {
    SegmentHeader {
        shard_id,
        shard_count: config.shard_count,
        segment_index: index,
        segment_size_bytes: config.segment_size_bytes,
        generation: 0,
    }
}
