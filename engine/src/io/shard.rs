//! `Shard`: one core's partitions and core log on one executor — the shell around a
//! `ShardLog` (`core::shard_log`), which decides everything on the write path.
//!
//! This module owns a shard's lifecycle (open = recovery, then the committer; close),
//! topics, and append admission: appends that must wait for room queue in arrival order
//! and are staged only once the `ShardLog` admits them. The committer and segment
//! preparation live in `group_commit`, the read path in `reads`, recovery in `recovery`;
//! what their tasks share is `state::ShardState`. Nothing here is borrowed across an
//! `.await`.

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use hashbrown::HashMap;

use crate::core::condition::Conflict;
use crate::core::limits::BLOCK_SIZE_BYTES;
use crate::core::partition::Refusal;
use crate::core::record::{batch_encoded_len, check_producer_stamp};
use crate::core::retention::RetentionPolicy;
use crate::core::segment_header::SEGMENT_HEADER_SIZE_BYTES;
use crate::core::shard_log::{
    Admission, RecoveredPartition, ShardLog, ShardLogLimits, first_segment_size_bytes,
};
use crate::core::{Offset, PartitionId, ProducerStamp, RecordInput, ShardId};
use crate::error::{AppendError, OpenError, StorageError, TopicError};
use crate::io::data_dir::{Catalog, DataDir, DataDirLock, ProducerIdAllocator, Topic};
use crate::io::event::Event;
use crate::io::group_commit;
use crate::io::recovery::{self, RepairReport};
use crate::io::segment::SegmentFile;
use crate::io::state::{
    AdmissionQueue, AdmissionTicket, GroupCompletion, ShardEvents, ShardState, segment_header,
};

pub use crate::io::config::EngineConfig;

pub use crate::core::shard_log::ShardLogStats as ShardStats;

/// What an append came to when nothing went wrong.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AppendOutcome {
    /// The batch is durable at `base_offset ..` (consecutive offsets).
    Appended {
        /// Offset of the batch's first record.
        base_offset: Offset,
        /// Number of records appended.
        record_count: u32,
    },
    /// A condition failed; nothing was appended. Answered at once, without waiting for a
    /// sync.
    ConditionFailed(Conflict),
    /// The batch repeats the producer's batch at `base_offset ..`, appended and synced
    /// before: nothing was appended again. The original offsets are answered.
    Duplicate {
        /// Offset of the original batch's first record.
        base_offset: Offset,
        /// Number of records of the original batch.
        record_count: u32,
    },
}

/// A data directory, opened: configuration, shard count and topic catalog. Cheap to clone
/// and `Send`, so each shard's executor can take a copy and open its shard.
#[derive(Clone, Debug)]
pub struct Engine {
    config: EngineConfig,
    data_dir: DataDir,
    catalog: Catalog,
    /// Held for as long as any clone lives: a second process on the directory is refused.
    _lock: DataDirLock,
}

impl Engine {
    /// Opens (or creates) the data directory. Blocking; call before starting executors.
    pub fn open(config: EngineConfig) -> Result<Engine, OpenError> {
        config.validate()?;
        crate::io::backup::check_not_incomplete_backup(&config.data_dir)?;
        let lock = DataDirLock::acquire(&config.data_dir)?;
        let data_dir = DataDir::open_or_create(&config.data_dir, config.shard_count)?;
        let catalog = data_dir.load_catalog()?;
        Ok(Engine {
            config,
            data_dir,
            catalog,
            _lock: lock,
        })
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The topic catalog as of opening.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Creates topic `name` durably in the catalog, with its first partition id a multiple
    /// of the shard count, so that its partition `i` is owned by shard `i % shard_count`;
    /// or, if it exists, returns it as it is (also when an older version created it
    /// unaligned: routing must follow the ids on disk). Blocking; call before any shard
    /// is opened, which then learns it with the rest of the catalog.
    ///
    /// # Errors
    ///
    /// The name or count is invalid, or the catalog could not be saved.
    pub fn ensure_topic_aligned(
        &mut self,
        name: &str,
        partition_count: u32,
    ) -> Result<Topic, TopicError> {
        if let Some(topic) = self.catalog.topic(name) {
            return Ok(topic.clone());
        }
        let mut catalog = self.catalog.clone();
        let topic =
            catalog.add_aligned(name, partition_count, u32::from(self.config.shard_count))?;
        self.data_dir
            .save_catalog(&catalog)
            .map_err(TopicError::Storage)?;
        self.catalog = catalog;
        Ok(topic)
    }

    /// Scans shard `shard_id`'s core log as opening it does, without preparing, writing or
    /// starting anything (`io::recovery::scan_data_dir`). Call on an executor.
    pub(crate) async fn scan_shard(
        &self,
        shard_id: ShardId,
        on_batch: &mut dyn FnMut(u64, u64, &crate::core::record::BatchView<'_>),
    ) -> Result<recovery::ShardScan, OpenError> {
        let partitions = self
            .catalog
            .partition_ids()
            .filter(|id| ShardId::owner_of(*id, self.config.shard_count) == shard_id)
            .map(|id| (id, RecoveredPartition::empty(id)))
            .collect();
        let shard_dir = self.data_dir.shard_dir(shard_id.0);
        recovery::scan_shard_dir(&shard_dir, shard_id, &self.config, partitions, on_batch).await
    }

    /// Recovers shard `shard_id` and starts its committer. Call on that shard's executor.
    pub async fn open_shard(&self, shard_id: ShardId) -> Result<Shard, OpenError> {
        if shard_id.0 >= self.config.shard_count {
            return Err(OpenError::BadConfig(format!(
                "shard {} of {}",
                shard_id.0, self.config.shard_count
            )));
        }
        Shard::open(self, shard_id).await
    }
}

/// One core's partitions and core log. Not `Send`: it lives on its executor.
pub struct Shard {
    pub(crate) state: Rc<RefCell<ShardState>>,
    events: ShardEvents,
    committer: RefCell<Option<glommio::Task<()>>>,
    /// The retention task and the flag that stops it (also mid-copy, on its thread).
    retention: RefCell<
        Option<(
            glommio::Task<()>,
            std::sync::Arc<std::sync::atomic::AtomicBool>,
        )>,
    >,
    repair: Option<RepairReport>,
    recovered_from: Option<PathBuf>,
}

/// How a refused batch is answered: at once, or once the group of the original it repeats
/// is synced.
enum RefusalAnswer {
    Now(Result<AppendOutcome, AppendError>),
    AfterGroup(Rc<GroupCompletion>, AppendOutcome),
}

impl RefusalAnswer {
    async fn wait(self) -> Result<AppendOutcome, AppendError> {
        match self {
            RefusalAnswer::Now(answer) => answer,
            RefusalAnswer::AfterGroup(completion, outcome) => completion
                .wait()
                .await
                .map(|()| outcome)
                .map_err(AppendError::Storage),
        }
    }
}

fn answer_refusal(
    state: &mut ShardState,
    partition: PartitionId,
    refusal: Refusal,
) -> RefusalAnswer {
    match refusal {
        Refusal::Conflict(conflict) => {
            RefusalAnswer::Now(Ok(AppendOutcome::ConditionFailed(conflict)))
        }
        Refusal::Producer(error) => RefusalAnswer::Now(Err(AppendError::Producer(error))),
        Refusal::Duplicate(original) => {
            let outcome = AppendOutcome::Duplicate {
                base_offset: original.base_offset,
                record_count: original.record_count,
            };
            // The duplicate is acknowledged no earlier than its original: only once synced.
            match state.log.staged_group_of(partition, original.base_offset) {
                Some(sequence) => RefusalAnswer::AfterGroup(state.completion(sequence), outcome),
                None => RefusalAnswer::Now(Ok(outcome)),
            }
        }
    }
}

/// Milliseconds since the Unix epoch, for batch timestamps.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

fn align_up(position: u64) -> u64 {
    position.div_ceil(BLOCK_SIZE_BYTES as u64) * BLOCK_SIZE_BYTES as u64
}

impl Shard {
    async fn open(engine: &Engine, shard_id: ShardId) -> Result<Shard, OpenError> {
        let config = engine.config.clone();
        let shard_dir = engine.data_dir.shard_dir(shard_id.0);
        SegmentFile::probe_device(&shard_dir).await?;

        let owned: Vec<PartitionId> = engine
            .catalog
            .partition_ids()
            .filter(|id| ShardId::owner_of(*id, config.shard_count) == shard_id)
            .collect();
        let (recovered, partitions) =
            recovery::recover_shard(&shard_dir, shard_id, &config, &owned).await?;
        let repair = recovered.repair;
        let first_segment = recovered.first_segment;
        let recovered_from = recovered.checkpoint;
        let mut segments = recovered.segments;
        let index_files = recovered.index_files;
        let (current_index, write_position) = match recovered.end {
            Some(end) => (end.segment_index, align_up(end.position)),
            None => {
                let mut header = segment_header(shard_id, &config, 0);
                header.segment_size_bytes = first_segment_size_bytes(config.segment_size_bytes);
                let segment =
                    SegmentFile::prepare(&shard_dir, header, config.fault_hook.as_ref(), None)
                        .await?;
                segments.insert(0, Rc::new(segment));
                (0, SEGMENT_HEADER_SIZE_BYTES as u64)
            }
        };
        let current_size_bytes = segments
            .get(&current_index)
            .expect("the segment the log continues in is open")
            .size_bytes();
        tracing::info!(
            shard = shard_id.0,
            segment = current_index,
            write_position,
            partitions = partitions.len(),
            "shard recovered"
        );
        let limits = ShardLogLimits {
            segment_size_bytes: config.segment_size_bytes,
            group_size_bytes_max: config.group_size_bytes_max,
            pending_append_count_max: config.pending_append_count_max,
            read_cache_bytes_max: config.read_cache_bytes_max,
        };
        let producer_ids = ProducerIdAllocator::load(&shard_dir, shard_id.0)?;
        let synced = partitions.keys().map(|id| (*id, Event::new())).collect();
        let mut log = ShardLog::new(
            limits,
            partitions,
            current_index,
            current_size_bytes,
            write_position,
            recovered.chain_crc,
        );
        log.set_first_segment(first_segment);
        for topic in engine.catalog.topics() {
            for id in topic.partition_ids() {
                log.set_retention(id, topic.retention);
            }
        }
        let state = ShardState {
            shard_id,
            shard_dir,
            data_dir: engine.data_dir.clone(),
            catalog: engine.catalog.clone(),
            log,
            segments,
            index_files,
            next_segment_file: None,
            completions: HashMap::new(),
            synced,
            preparation_urgent: Rc::new(Cell::new(false)),
            admission: AdmissionQueue::default(),
            producer_ids,
            closing: false,
            checkpoint_due_bytes: config.checkpoint_interval_bytes,
            checkpoint_writing: false,
            checkpoint_task: None,
            rewrite_epoch: 0,
            retention_paused_until: None,
            retention_rewriting: false,
            config,
            stats: std::sync::Arc::default(),
        };
        let state = Rc::new(RefCell::new(state));
        let events = ShardEvents::default();
        group_commit::start_preparation(&state, &events);
        // Sealed segments whose index file recovery could not write are tried again now.
        group_commit::start_index_write(&state);
        let committer = glommio::spawn_local(group_commit::run(state.clone(), events.clone()));
        let retention_closing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let retention = glommio::spawn_local(crate::io::retention::run(
            state.clone(),
            retention_closing.clone(),
        ));
        Ok(Shard {
            state,
            events,
            committer: RefCell::new(Some(committer)),
            retention: RefCell::new(Some((retention, retention_closing))),
            repair,
            recovered_from,
        })
    }

    /// This shard's I/O counters, for a metrics endpoint on another thread to read.
    pub fn io_stats(&self) -> std::sync::Arc<crate::io::stats::ShardIoStats> {
        self.state.borrow().stats.clone()
    }

    /// The checkpoint opening resumed from, `None` when it scanned the whole log
    /// (docs/DESIGN.md §3.7).
    pub fn recovered_from_checkpoint(&self) -> Option<&Path> {
        self.recovered_from.as_deref()
    }

    /// What opening with `EngineConfig::repair_damage` dropped, if there was damage.
    pub fn repair_report(&self) -> Option<&RepairReport> {
        self.repair.as_ref()
    }

    /// This shard's id.
    pub fn id(&self) -> ShardId {
        self.state.borrow().shard_id
    }

    /// The storage failure that poisoned this shard, if any. A poisoned shard refuses all
    /// work; the server stops and recovery on restart decides what survived (docs/DESIGN.md §3.5).
    pub fn poisoned(&self) -> Option<StorageError> {
        self.state.borrow().log.poisoned().cloned()
    }

    /// Completes when the shard is poisoned.
    pub async fn wait_poisoned(&self) -> StorageError {
        loop {
            let listener = self.events.poisoned.listen();
            if let Some(error) = self.poisoned() {
                return error;
            }
            listener.await;
        }
    }

    /// The partitions this shard owns.
    pub fn partition_ids(&self) -> Vec<PartitionId> {
        let mut ids: Vec<_> = self.state.borrow().log.partition_ids().collect();
        ids.sort();
        ids
    }

    /// Appends one batch to `partition` if its conditions hold (docs/DESIGN.md §1).
    ///
    /// A failed condition returns `Ok(ConditionFailed)` at once. Otherwise the batch is
    /// staged (later appends see it) and this waits until it is synced. `Err(Storage)`
    /// means the batch may or may not survive a restart; nothing was acknowledged.
    pub async fn append(
        &self,
        partition: PartitionId,
        expected_end: Option<Offset>,
        records: &[RecordInput<'_>],
    ) -> Result<AppendOutcome, AppendError> {
        self.append_as(partition, expected_end, records, None).await
    }

    /// Like [`Shard::append`], for an idempotent producer (Kafka's rules, docs/DESIGN.md §1,
    /// "Idempotent producers"), checked before the end offset and the key conditions:
    ///
    /// - a batch that repeats one of the producer's last five batches in this partition
    ///   answers `Ok(Duplicate)` with the original's offsets and appends nothing. If the
    ///   original is not synced yet, the answer waits until it is (`Err(Storage)` if the
    ///   shard fails first: then the original may or may not survive a restart);
    /// - a stale epoch fails with `Err(Producer(Fenced))`, a sequence that does not follow
    ///   the producer's latest batch with `Err(Producer(OutOfOrder))`; nothing is appended.
    ///
    /// Neither takes a pending slot or is staged. An append that must wait for room is
    /// answered while waiting only when the answer cannot change (a duplicate, a fenced
    /// epoch, a failed condition); an out-of-order sequence is decided when its turn comes,
    /// since the producer's batches queued ahead of it may fill the gap. A batch that is
    /// refused or fails a condition does not use up its sequence numbers. `producer: None`
    /// is a plain [`Shard::append`]. A stamp with a negative field is `InvalidBatch`.
    pub async fn append_as(
        &self,
        partition: PartitionId,
        expected_end: Option<Offset>,
        records: &[RecordInput<'_>],
        producer: Option<ProducerStamp>,
    ) -> Result<AppendOutcome, AppendError> {
        check_producer_stamp(producer)?;
        let len_bytes = batch_encoded_len(records)?;
        let record_count =
            u32::try_from(records.len()).expect("batch_encoded_len bounds the record count");
        // Back-pressure and room: wait while the shard has too many waiting appends or the
        // open group has no room for this batch, or while the segment it would go to is not
        // ready (`ShardLog::admission`). Waiters are admitted in arrival order
        // (`AdmissionQueue`).
        let mut ticket: Option<AdmissionTicket<'_>> = None;
        let mut preparation_retried = false;
        loop {
            let room = self.events.room.listen();
            let step = 'step: {
                let mut guard = self.state.borrow_mut();
                let state = &mut *guard;
                if let Some(error) = state.log.poisoned() {
                    return Err(AppendError::Storage(error.clone()));
                }
                if state.closing {
                    return Err(AppendError::ShuttingDown);
                }
                if !state.log.has_partition(partition) {
                    return Err(AppendError::UnknownPartition(partition));
                }
                let my_turn = match &ticket {
                    None => state.admission.is_empty(),
                    Some(ticket) => state.admission.is_head(ticket.ticket),
                };
                let decision = if my_turn {
                    match state.log.admission(len_bytes) {
                        Admission::PreparationFailed(error) if preparation_retried => {
                            return Err(AppendError::Storage(error));
                        }
                        decision => decision,
                    }
                } else {
                    Admission::Wait
                };
                state.publish_urgency();
                if decision != Admission::Admit {
                    // It must wait: answer now if it is already refused as it will be when it
                    // is staged (appends only ever move a key, an end or an epoch forward;
                    // see `PartitionState::check_as` for what is left to staging).
                    if let Some(Err(refusal)) =
                        state.log.check(partition, expected_end, records, producer)
                    {
                        break 'step Err(answer_refusal(state, partition, refusal));
                    }
                    if ticket.is_none() {
                        let (id, turn) = state.admission.join();
                        ticket = Some(AdmissionTicket {
                            state: &self.state,
                            ticket: id,
                            turn,
                        });
                    }
                }
                // Listening before the await: a turn passed on meanwhile is not missed.
                let turn = match &ticket {
                    Some(ticket) if !state.admission.is_head(ticket.ticket) => {
                        Some(ticket.turn.listen())
                    }
                    _ => None,
                };
                Ok((decision, turn))
            };
            let (decision, turn) = match step {
                Ok(step) => step,
                Err(answer) => {
                    // Out of the queue before waiting for an original's group.
                    drop(ticket);
                    return answer.wait().await;
                }
            };
            match decision {
                Admission::Admit => break,
                Admission::PreparationFailed(_) => {
                    // Once more before failing: the disk may have room again.
                    preparation_retried = true;
                    self.state.borrow_mut().log.retry_preparation();
                    group_commit::start_preparation(&self.state, &self.events);
                    room.await;
                }
                // The head waits for the room to change, the others for their turn.
                Admission::Wait => match turn {
                    Some(turn) => turn.await,
                    None => room.await,
                },
            }
        }
        // Staged below without an await since the room was checked: pass the turn on.
        drop(ticket);
        let staged = {
            let mut guard = self.state.borrow_mut();
            let state = &mut *guard;
            let staged = state
                .log
                .stage(
                    partition,
                    expected_end,
                    records,
                    producer,
                    len_bytes,
                    now_ms(),
                )
                .expect("partition checked above, without an await since");
            match staged {
                Ok(staged) => Ok((state.completion(staged.group_sequence), staged.base_offset)),
                Err(refusal) => Err(answer_refusal(state, partition, refusal)),
            }
        };
        let (completion, base_offset) = match staged {
            Ok(staged) => staged,
            Err(answer) => return answer.wait().await,
        };
        self.events.group_ready.notify();
        let outcome = completion.wait().await;
        if let Some(completed_at) = completion.completed_at() {
            self.state
                .borrow()
                .stats
                .completion_wake_us
                .observe_duration_us(completed_at.elapsed());
        }
        match outcome {
            Ok(()) => Ok(AppendOutcome::Appended {
                base_offset,
                record_count,
            }),
            Err(error) => Err(AppendError::Storage(error)),
        }
    }

    /// Hands out a producer id for an idempotent producer: at least 0, never handed out
    /// before by any shard of this data directory, in this life or an earlier one (a crash
    /// included), and durable before it is returned. See FORMAT.md, "`producer-ids`".
    ///
    /// # Errors
    ///
    /// Reserving the next block of ids failed to reach the disk; nothing was handed out.
    #[expect(
        clippy::unused_async,
        reason = "a stable async API: the reservation's file write may move off the executor"
    )]
    pub async fn allocate_producer_id(&self) -> Result<i64, StorageError> {
        let mut guard = self.state.borrow_mut();
        let state = &mut *guard;
        state.producer_ids.allocate(&state.shard_dir)
    }

    /// Creates a topic durably in the catalog and the partitions it gives this shard.
    /// Only shard 0 owns the catalog; the caller tells the other shards (`add_topic`).
    pub fn create_topic(&self, name: &str, partition_count: u32) -> Result<Topic, TopicError> {
        self.create_topic_with(name, partition_count, RetentionPolicy::FOREVER)
    }

    /// Creates a topic as `create_topic` does, keeping what `retention` says (a limit of 0
    /// is `InvalidRetention`).
    pub fn create_topic_with(
        &self,
        name: &str,
        partition_count: u32,
        retention: RetentionPolicy,
    ) -> Result<Topic, TopicError> {
        self.change_catalog(|catalog| catalog.add_with(name, partition_count, retention))
    }

    /// Changes topic `name`'s retention durably in the catalog (synced before this returns)
    /// and applies it to the partitions this shard owns; returns the topic as it now is.
    /// Only shard 0 owns the catalog; the caller tells the other shards (`add_topic`).
    pub fn set_topic_retention(
        &self,
        name: &str,
        retention: RetentionPolicy,
    ) -> Result<Topic, TopicError> {
        self.change_catalog(|catalog| catalog.set_retention(name, retention))
    }

    /// Applies `change` to a copy of the catalog on shard 0, its owner, saves it durably,
    /// then takes it and applies the changed topic to this shard's partitions; the caller
    /// tells the other shards (`add_topic`).
    fn change_catalog(
        &self,
        change: impl FnOnce(&mut Catalog) -> Result<Topic, TopicError>,
    ) -> Result<Topic, TopicError> {
        let mut guard = self.state.borrow_mut();
        let state = &mut *guard;
        if state.shard_id != ShardId(0) {
            return Err(TopicError::NotCatalogOwner);
        }
        let mut catalog = state.catalog.clone();
        let topic = change(&mut catalog)?;
        state
            .data_dir
            .save_catalog(&catalog)
            .map_err(TopicError::Storage)?;
        state.catalog = catalog;
        drop(guard);
        self.add_topic(&topic)?;
        Ok(topic)
    }

    /// What the log applies to `partition` now (its topic's retention), if this shard owns
    /// it.
    pub fn partition_retention(&self, partition: PartitionId) -> Option<RetentionPolicy> {
        self.state.borrow().log.retention(partition)
    }

    /// Learns a topic created on shard 0, with the partition ids shard 0 gave it, and
    /// creates the partitions this shard owns; for a topic it knows, takes its announced
    /// retention (a change made on shard 0). Refuses a topic that contradicts one this
    /// shard knows (same name with other ids, or ids of another topic): routing would then
    /// send one topic's requests to another's partitions.
    pub fn add_topic(&self, topic: &Topic) -> Result<(), TopicError> {
        let mut guard = self.state.borrow_mut();
        let state = &mut *guard;
        let shard_count = state.config.shard_count;
        let shard_id = state.shard_id;
        let mut catalog = state.catalog.clone();
        catalog.mirror(topic)?;
        state.catalog = catalog;
        for id in topic.partition_ids() {
            if ShardId::owner_of(id, shard_count) == shard_id {
                state.log.add_partition(id);
                state.log.set_retention(id, topic.retention);
                state.synced.entry(id).or_default();
            }
        }
        Ok(())
    }

    /// The topic named `name`, as this shard knows it.
    pub fn topic(&self, name: &str) -> Option<Topic> {
        self.state.borrow().catalog.topic(name).cloned()
    }

    /// The topic catalog as this shard knows it.
    pub fn catalog(&self) -> Catalog {
        self.state.borrow().catalog.clone()
    }

    /// What the committer has written so far.
    pub fn stats(&self) -> ShardStats {
        self.state.borrow().log.stats()
    }

    /// Key-index memory of all partitions of this shard, for the memory figure.
    pub fn key_index_memory_bytes(&self) -> usize {
        self.state.borrow().log.key_index_memory_bytes()
    }

    /// Offset-index memory of all partitions of this shard, for the memory figure: dense
    /// locations of segments without a durable index file, and the summaries of the rest.
    pub fn offset_index_memory_bytes(&self) -> usize {
        let memory = self.offset_index_memory();
        memory.sealed_bytes + memory.dense_bytes
    }

    /// The same, sealed and dense apart, with the batches each covers.
    pub fn offset_index_memory(&self) -> crate::core::offset_index::OffsetIndexMemory {
        self.state.borrow().log.offset_index_memory()
    }

    /// Sealed segments whose index file is not durable yet (written in the background;
    /// more than zero for long only after failed writes).
    pub fn index_pending_count(&self) -> usize {
        self.state.borrow().log.index_pending_count()
    }

    /// Stops taking appends, waits until every staged append is synced (or failed), and
    /// stops the committer.
    pub async fn close(&self) {
        self.state.borrow_mut().closing = true;
        self.events.group_ready.notify();
        self.events.room.notify();
        let retention = self.retention.borrow_mut().take();
        if let Some((retention, closing)) = retention {
            closing.store(true, std::sync::atomic::Ordering::Relaxed);
            retention.await;
        }
        let committer = self.committer.borrow_mut().take();
        if let Some(committer) = committer {
            committer.await;
        }
        let checkpoint = self.state.borrow_mut().checkpoint_task.take();
        if let Some(checkpoint) = checkpoint {
            checkpoint.await;
        }
    }
}
