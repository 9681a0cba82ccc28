//! `Shard`: one core's partitions, its core log and its group committer, on one executor.
//!
//! Everything here runs on the shard's own glommio executor; state lives in an
//! `Rc<RefCell<_>>` that is never borrowed across an `.await`. The write path:
//! `append` checks and stages the batch in its `PartitionState` (so later appends see it),
//! encodes it into the open group, and waits for the group's completion; the committer
//! (`group_commit`) writes and syncs groups one at a time. The read path serves durable
//! batches through each partition's `OffsetIndex`, from the `ReadCache` when recent.
//!
//! Open (`Engine::open_shard`) is recovery: scan the segments with the `RecoveryScanner`,
//! rebuild partition states and offset indexes, continue writing at the first block
//! boundary after the valid end.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use glommio::io::ReadResult;
use hashbrown::HashMap;

use crate::core::condition::Conflict;
use crate::core::limits::{
    BATCH_SIZE_BYTES_MAX, BLOCK_SIZE_BYTES, GROUP_SIZE_BYTES_MAX, SEGMENT_SIZE_BYTES_MAX,
    SEGMENT_SIZE_BYTES_MIN,
};
use crate::core::offset_index::{BatchLocation, OffsetIndex};
use crate::core::partition::PartitionState;
use crate::core::record::{
    BatchMeta, BatchView, RecordView, batch_encoded_len, decode_batch, encode_batch,
};
use crate::core::segment_header::{SEGMENT_HEADER_SIZE_BYTES, SegmentHeader};
use crate::core::{Offset, PartitionId, RecordInput, ShardId};
use crate::error::{AppendError, OpenError, ReadError, StorageError, TopicError};
use crate::io::data_dir::{Catalog, DataDir, DataDirLock, Topic};
use crate::io::event::Event;
use crate::io::fault::FaultHook;
use crate::io::group_commit::{self, GroupBuffer, Room};
use crate::io::read_cache::ReadCache;
use crate::io::recovery::{self, RepairReport};
use crate::io::segment::SegmentFile;

/// How the engine is set up. Every durability- or memory-relevant value is explicit.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Where the data directory lives.
    pub data_dir: PathBuf,
    /// Number of shards (cores); fixed when the data directory is created.
    pub shard_count: u16,
    /// Size each segment file is preallocated to. Block-aligned.
    pub segment_size_bytes: u64,
    /// Largest group written with one write + fdatasync. At least one largest batch.
    pub group_size_bytes_max: usize,
    /// Most appends of one shard waiting for their group to be synced; more wait to enter.
    pub pending_append_count_max: usize,
    /// Bytes of recently synced groups kept in memory per shard for reads.
    pub read_cache_bytes_max: usize,
    /// Test-only fault injection; `None` in production.
    pub fault_hook: Option<FaultHook>,
    /// What opening a shard does about damage a crash cannot explain (FORMAT.md, "Torn
    /// tail or damage"): `false`, refuse to open and change nothing; `true`, the operator's
    /// explicit repair: truncate the log before the damage, keep the dropped files aside,
    /// and report what was lost (`Shard::repair_report`). Never on by default.
    pub repair_damage: bool,
}

impl EngineConfig {
    /// Defaults: 256 MiB segments, 4 MiB groups, 64 Ki waiting appends, 64 MiB read cache.
    pub fn new(data_dir: impl Into<PathBuf>, shard_count: u16) -> Self {
        EngineConfig {
            data_dir: data_dir.into(),
            shard_count,
            segment_size_bytes: 256 * 1024 * 1024,
            group_size_bytes_max: 4 * 1024 * 1024,
            pending_append_count_max: 65_536,
            read_cache_bytes_max: 64 * 1024 * 1024,
            fault_hook: None,
            repair_damage: false,
        }
    }

    fn validate(&self) -> Result<(), OpenError> {
        let bad = |problem: String| Err(OpenError::BadConfig(problem));
        if !(SEGMENT_SIZE_BYTES_MIN..=SEGMENT_SIZE_BYTES_MAX).contains(&self.segment_size_bytes)
            || !self
                .segment_size_bytes
                .is_multiple_of(BLOCK_SIZE_BYTES as u64)
        {
            return bad(format!(
                "segment size {} must be a multiple of {BLOCK_SIZE_BYTES} in \
                 {SEGMENT_SIZE_BYTES_MIN}..={SEGMENT_SIZE_BYTES_MAX}",
                self.segment_size_bytes
            ));
        }
        let group_room = self.segment_size_bytes - SEGMENT_HEADER_SIZE_BYTES as u64;
        if self.group_size_bytes_max < BATCH_SIZE_BYTES_MAX
            || self.group_size_bytes_max as u64 > group_room
            || self.group_size_bytes_max > GROUP_SIZE_BYTES_MAX
        {
            return bad(format!(
                "group size {} must hold the largest batch ({BATCH_SIZE_BYTES_MAX}), fit in a \
                 segment ({group_room}) and be at most {GROUP_SIZE_BYTES_MAX}",
                self.group_size_bytes_max
            ));
        }
        if self.pending_append_count_max == 0 {
            return bad("pending append count must be at least 1".into());
        }
        Ok(())
    }
}

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

/// A batch that is staged but not yet synced: where its bytes are until they are durable.
pub(crate) struct PendingBatch {
    pub(crate) base_offset: Offset,
    pub(crate) end_offset: Offset,
    pub(crate) group_sequence: u64,
    pub(crate) group_position: usize,
    pub(crate) len_bytes: u32,
}

/// Everything the shard knows about one of its partitions.
pub(crate) struct PartitionSlot {
    pub(crate) state: PartitionState,
    pub(crate) durable_batches: OffsetIndex,
    pub(crate) pending_batches: VecDeque<PendingBatch>,
    /// Notified when `synced_end` moves, for long-polling fetches.
    pub(crate) synced: Event,
}

impl PartitionSlot {
    fn new(id: PartitionId) -> Self {
        PartitionSlot {
            state: PartitionState::new(id),
            durable_batches: OffsetIndex::new(),
            pending_batches: VecDeque::new(),
            synced: Event::new(),
        }
    }
}

/// The core log's write side: which segment is current and where the next group goes.
pub(crate) struct LogTail {
    pub(crate) segments: BTreeMap<u64, Rc<SegmentFile>>,
    pub(crate) current_index: u64,
    /// Block-aligned position of the next group in the current segment.
    pub(crate) write_position: u64,
    /// The next segment: being prepared in the background, ready, or failed to prepare.
    pub(crate) next_segment: NextSegment,
    /// `batch_crc` of the last staged batch: the next batch's `prev_batch_crc`.
    pub(crate) chain_crc: u32,
    /// Set when the next segment is needed soon: its preparation stops pacing itself.
    pub(crate) preparation_urgent: Rc<Cell<bool>>,
}

/// Counters of what a shard's committer has done, for benchmarks and operators.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardStats {
    /// Groups written and synced.
    pub group_count: u64,
    /// Batches in those groups.
    pub batch_count: u64,
    /// Bytes of batches in those groups (padding excluded).
    pub batch_bytes: u64,
    /// Bytes written including padding to block boundaries.
    pub written_bytes: u64,
}

/// A shard's state; owned by its executor, borrowed only between awaits.
pub(crate) struct ShardState {
    pub(crate) shard_id: ShardId,
    pub(crate) config: EngineConfig,
    pub(crate) shard_dir: PathBuf,
    pub(crate) data_dir: DataDir,
    /// Only shard 0 owns the topic catalog; others learn partitions through `add_topic`.
    pub(crate) catalog: Catalog,
    pub(crate) partitions: HashMap<PartitionId, PartitionSlot>,
    pub(crate) log: LogTail,
    pub(crate) open_group: GroupBuffer,
    pub(crate) in_flight_group: Option<group_commit::InFlightGroup>,
    pub(crate) pending_append_count: usize,
    /// Appends waiting for room, in arrival order.
    pub(crate) admission: AdmissionQueue,
    pub(crate) read_cache: ReadCache,
    pub(crate) poisoned: Option<StorageError>,
    pub(crate) closing: bool,
    pub(crate) stats: ShardStats,
    prev_key_offsets: Vec<Option<Offset>>,
}

impl ShardState {
    /// The partition's slot for a read: refused once the shard is poisoned (DESIGN §3.5).
    fn readable_slot(&self, partition: PartitionId) -> Result<&PartitionSlot, ReadError> {
        if let Some(error) = &self.poisoned {
            return Err(ReadError::Storage(error.clone()));
        }
        self.partitions
            .get(&partition)
            .ok_or(ReadError::UnknownPartition(partition))
    }
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
    fn is_empty(&self) -> bool {
        self.waiters.is_empty()
    }

    fn join(&mut self) -> (u64, Event) {
        let ticket = self.ticket_next;
        self.ticket_next += 1;
        let turn = Event::new();
        self.waiters.push_back((ticket, turn.clone()));
        (ticket, turn)
    }

    fn is_head(&self, ticket: u64) -> bool {
        self.waiters
            .front()
            .is_some_and(|(head, _)| *head == ticket)
    }

    /// Removes `ticket` and, if it was the head, tells the new head its turn has come.
    fn leave(&mut self, ticket: u64) {
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
struct AdmissionTicket<'a> {
    state: &'a RefCell<ShardState>,
    ticket: u64,
    turn: Event,
}

impl Drop for AdmissionTicket<'_> {
    fn drop(&mut self) {
        self.state.borrow_mut().admission.leave(self.ticket);
    }
}

/// What the head of the admission queue does about its batch now.
enum Admission {
    /// Stage it: it has a place in the open group and on disk.
    Admit,
    /// Wait for the room to change.
    Wait,
    /// The segment it needs could not be prepared: prepare it once more, then wait.
    RetryPreparation,
}

/// Wake-ups between appenders, the committer and readers of one shard.
#[derive(Clone, Default)]
pub(crate) struct ShardEvents {
    /// A group has batches for the committer.
    pub(crate) group_ready: Event,
    /// Something appenders wait for changed: the committer took the open group or
    /// completed one (pending slots and the in-flight group freed), a segment preparation
    /// finished, or the shard was poisoned or began closing. The head of the admission
    /// queue listens to it.
    pub(crate) room: Event,
    /// The shard was poisoned.
    pub(crate) poisoned: Event,
    /// A segment preparation finished (ready or failed).
    pub(crate) segment_prepared: Event,
}

/// One core's partitions and core log. Not `Send`: it lives on its executor.
pub struct Shard {
    state: Rc<RefCell<ShardState>>,
    events: ShardEvents,
    committer: RefCell<Option<glommio::Task<()>>>,
    repair: Option<RepairReport>,
}

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

        let mut partitions: HashMap<PartitionId, PartitionSlot> = engine
            .catalog
            .partition_ids()
            .filter(|id| ShardId::owner_of(*id, config.shard_count) == shard_id)
            .map(|id| (id, PartitionSlot::new(id)))
            .collect();

        let recovered =
            recovery::recover_segments(&shard_dir, shard_id, &config, &mut partitions).await?;
        let repair = recovered.repair;
        let mut segments = recovered.segments;
        let (current_index, write_position) = match recovered.end {
            Some((index, valid_end)) => (index, align_up(valid_end)),
            None => {
                let header = segment_header(shard_id, &config, 0);
                let segment =
                    SegmentFile::prepare(&shard_dir, header, config.fault_hook.as_ref(), None)
                        .await?;
                segments.insert(0, Rc::new(segment));
                (0, SEGMENT_HEADER_SIZE_BYTES as u64)
            }
        };
        tracing::info!(
            shard = shard_id.0,
            segment = current_index,
            write_position,
            partitions = partitions.len(),
            "shard recovered"
        );
        let state = ShardState {
            shard_id,
            shard_dir,
            data_dir: engine.data_dir.clone(),
            catalog: engine.catalog.clone(),
            partitions,
            log: LogTail {
                segments,
                current_index,
                write_position,
                next_segment: NextSegment::Preparing,
                chain_crc: recovered.chain_crc,
                preparation_urgent: Rc::new(Cell::new(false)),
            },
            open_group: GroupBuffer::new(0, config.group_size_bytes_max),
            in_flight_group: None,
            pending_append_count: 0,
            admission: AdmissionQueue::default(),
            read_cache: ReadCache::new(config.read_cache_bytes_max),
            poisoned: None,
            closing: false,
            stats: ShardStats::default(),
            prev_key_offsets: Vec::new(),
            config,
        };
        let state = Rc::new(RefCell::new(state));
        let events = ShardEvents::default();
        group_commit::start_preparation(&state, &events, current_index + 1);
        let committer = glommio::spawn_local(group_commit::run(state.clone(), events.clone()));
        Ok(Shard {
            state,
            events,
            committer: RefCell::new(Some(committer)),
            repair,
        })
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
    /// work; the server stops and recovery on restart decides what survived (DESIGN §3.5).
    pub fn poisoned(&self) -> Option<StorageError> {
        self.state.borrow().poisoned.clone()
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
        let mut ids: Vec<_> = self.state.borrow().partitions.keys().copied().collect();
        ids.sort();
        ids
    }

    /// Appends one batch to `partition` if its conditions hold (DESIGN §1).
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
        let len_bytes = batch_encoded_len(records)?;
        let record_count =
            u32::try_from(records.len()).expect("batch_encoded_len bounds the record count");
        // Back-pressure and room: wait while the shard has too many waiting appends or the
        // open group has no room for this batch, or while the segment it would go to is not
        // ready. A batch is staged only once it is sure to have a place on disk, so that a
        // full disk (a segment that cannot be prepared) fails appends without poisoning.
        // Waiters are admitted in arrival order (`AdmissionQueue`).
        let mut ticket: Option<AdmissionTicket<'_>> = None;
        let mut preparation_attempted = false;
        loop {
            let room = self.events.room.listen();
            let (admission, turn) = {
                let mut guard = self.state.borrow_mut();
                let state = &mut *guard;
                if let Some(error) = &state.poisoned {
                    return Err(AppendError::Storage(error.clone()));
                }
                if state.closing {
                    return Err(AppendError::ShuttingDown);
                }
                if !state.partitions.contains_key(&partition) {
                    return Err(AppendError::UnknownPartition(partition));
                }
                let my_turn = match &ticket {
                    None => state.admission.is_empty(),
                    Some(ticket) => state.admission.is_head(ticket.ticket),
                };
                let admission = if my_turn {
                    admission_of(state, len_bytes, preparation_attempted)?
                } else {
                    Admission::Wait
                };
                if !matches!(admission, Admission::Admit) {
                    // It must wait: answer now if its conditions already fail, as they will
                    // when it is staged (appends only ever move a key or an end forward).
                    let slot = state
                        .partitions
                        .get_mut(&partition)
                        .expect("looked up just above");
                    if let Err(conflict) = slot.state.check(expected_end, records) {
                        return Ok(AppendOutcome::ConditionFailed(conflict));
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
                (admission, turn)
            };
            match admission {
                Admission::Admit => break,
                Admission::RetryPreparation => {
                    preparation_attempted = true;
                    let next_index = self.state.borrow().log.current_index + 1;
                    group_commit::start_preparation(&self.state, &self.events, next_index);
                    self.state.borrow().log.preparation_urgent.set(true);
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
        let (completion, base_offset) = {
            let mut guard = self.state.borrow_mut();
            let state = &mut *guard;
            let slot = state
                .partitions
                .get_mut(&partition)
                .expect("partition checked above, without an await since");
            let base_offset =
                match slot
                    .state
                    .check_and_stage(expected_end, records, &mut state.prev_key_offsets)
                {
                    Ok(base_offset) => base_offset,
                    Err(conflict) => return Ok(AppendOutcome::ConditionFailed(conflict)),
                };
            let meta = BatchMeta {
                partition_id: partition,
                base_offset,
                timestamp_ms: now_ms(),
                prev_batch_crc: state.log.chain_crc,
            };
            let group = &mut state.open_group;
            let group_position = group.bytes.len();
            group.bytes.resize(group_position + len_bytes, 0);
            let encoded = encode_batch(
                group
                    .bytes
                    .get_mut(group_position..)
                    .expect("resized just above"),
                &meta,
                records,
                &state.prev_key_offsets,
            )
            .expect("batch_encoded_len validated the batch and sized the buffer");
            assert_eq!(
                encoded.len_bytes, len_bytes,
                "encoded length matches the estimate"
            );
            state.log.chain_crc = encoded.crc;
            let end_offset = base_offset.plus(u64::from(record_count));
            group.batches.push(group_commit::GroupBatch {
                partition,
                end_offset,
                group_position,
                len_bytes: u32::try_from(len_bytes).expect("batches are at most 1 MiB"),
                base_offset,
            });
            slot.pending_batches.push_back(PendingBatch {
                base_offset,
                end_offset,
                group_sequence: group.sequence,
                group_position,
                len_bytes: u32::try_from(len_bytes).expect("batches are at most 1 MiB"),
            });
            state.pending_append_count += 1;
            (group.completion.clone(), base_offset)
        };
        self.events.group_ready.notify();
        match completion.wait().await {
            Ok(()) => Ok(AppendOutcome::Appended {
                base_offset,
                record_count,
            }),
            Err(error) => Err(AppendError::Storage(error)),
        }
    }

    /// The partition's end offsets: (appended_end including pending, synced_end).
    pub fn end_offsets(&self, partition: PartitionId) -> Result<(Offset, Offset), ReadError> {
        let state = self.state.borrow();
        let slot = state.readable_slot(partition)?;
        Ok((slot.state.appended_end(), slot.state.synced_end()))
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
        let (locations, synced_end) = {
            let state = self.state.borrow();
            let slot = state.readable_slot(partition)?;
            let synced_end = slot.state.synced_end();
            if from > synced_end {
                return Err(ReadError::OffsetOutOfRange {
                    requested: from.0,
                    synced_end: synced_end.0,
                });
            }
            let mut locations = Vec::new();
            if let Some(first) = slot.durable_batches.find(from) {
                let mut total_bytes = 0usize;
                for location in slot.durable_batches.batches().iter().skip(first) {
                    if !locations.is_empty()
                        && total_bytes + location.len_bytes as usize > max_bytes
                    {
                        break;
                    }
                    total_bytes += location.len_bytes as usize;
                    locations.push(*location);
                }
            }
            (locations, synced_end)
        };
        let mut batches = Vec::with_capacity(locations.len());
        for location in locations {
            batches.push(self.read_batch(&location).await?);
        }
        Ok(Fetched {
            from,
            synced_end,
            batches,
        })
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
                let state = self.state.borrow();
                let slot = state.readable_slot(partition)?;
                let synced_end = slot.state.synced_end();
                if synced_end > offset {
                    return Ok(synced_end);
                }
                slot.synced.listen()
            };
            let now = std::time::Instant::now();
            if now >= deadline {
                return Ok(self.end_offsets(partition)?.1);
            }
            futures_lite::future::or(listener, glommio::timer::sleep(deadline - now)).await;
        }
    }

    /// The latest record of `key`: durable only, or including staged records when
    /// `include_pending` (what the next conditional append must expect, DESIGN §1).
    pub async fn read_key(
        &self,
        partition: PartitionId,
        key: &[u8],
        include_pending: bool,
    ) -> Result<Option<OwnedRecord>, ReadError> {
        let latest = {
            let state = self.state.borrow();
            let slot = state.readable_slot(partition)?;
            if include_pending {
                slot.state.latest(key)
            } else {
                slot.state.latest_durable(key)
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
    pub async fn key_history(
        &self,
        partition: PartitionId,
        key: &[u8],
        record_count_max: usize,
        size_bytes_max: usize,
    ) -> Result<Vec<OwnedRecord>, ReadError> {
        let mut next = {
            let state = self.state.borrow();
            let slot = state.readable_slot(partition)?;
            slot.state.latest_durable(key)
        };
        let mut history = Vec::new();
        let mut size_bytes = 0usize;
        while let Some(offset) = next {
            if history.len() >= record_count_max
                || (!history.is_empty() && size_bytes >= size_bytes_max)
            {
                break;
            }
            let record = self.read_record(partition, offset).await?;
            next = record.prev_key_offset;
            size_bytes += record.key.len() + record.value.len();
            history.push(record);
        }
        Ok(history)
    }

    /// Creates a topic durably in the catalog and the partitions it gives this shard.
    /// Only shard 0 owns the catalog; the caller tells the other shards (`add_topic`).
    pub fn create_topic(&self, name: &str, partition_count: u32) -> Result<Topic, TopicError> {
        let mut guard = self.state.borrow_mut();
        let state = &mut *guard;
        if state.shard_id != ShardId(0) {
            return Err(TopicError::NotCatalogOwner);
        }
        let mut catalog = state.catalog.clone();
        let topic = catalog.add(name, partition_count)?;
        state
            .data_dir
            .save_catalog(&catalog)
            .map_err(TopicError::Storage)?;
        state.catalog = catalog;
        drop(guard);
        self.add_topic(&topic)?;
        Ok(topic)
    }

    /// Learns a topic created on shard 0, with the partition ids shard 0 gave it, and
    /// creates the partitions this shard owns. Refuses a topic that contradicts one this
    /// shard knows (same name with other ids, or ids of another topic): routing would then
    /// send one topic's requests to another's partitions.
    pub fn add_topic(&self, topic: &Topic) -> Result<(), TopicError> {
        let mut state = self.state.borrow_mut();
        let shard_count = state.config.shard_count;
        let shard_id = state.shard_id;
        let mut catalog = state.catalog.clone();
        catalog.mirror(topic)?;
        state.catalog = catalog;
        for id in topic.partition_ids() {
            if ShardId::owner_of(id, shard_count) == shard_id {
                state
                    .partitions
                    .entry(id)
                    .or_insert_with(|| PartitionSlot::new(id));
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
        self.state.borrow().stats
    }

    /// Key-index memory of all partitions of this shard, for the memory figure.
    pub fn key_index_memory_bytes(&self) -> usize {
        let state = self.state.borrow();
        state
            .partitions
            .values()
            .map(|slot| slot.state.key_index_memory_bytes())
            .sum()
    }

    /// Stops taking appends, waits until every staged append is synced (or failed), and
    /// stops the committer.
    pub async fn close(&self) {
        self.state.borrow_mut().closing = true;
        self.events.group_ready.notify();
        self.events.room.notify();
        let committer = self.committer.borrow_mut().take();
        if let Some(committer) = committer {
            committer.await;
        }
    }

    async fn read_record(
        &self,
        partition: PartitionId,
        offset: Offset,
    ) -> Result<OwnedRecord, ReadError> {
        enum Source {
            Durable(BatchLocation),
            Pending(Rc<Vec<u8>>, usize, usize),
        }
        let source = {
            let state = self.state.borrow();
            let slot = state.readable_slot(partition)?;
            if let Some(index) = slot.durable_batches.find(offset) {
                let location = *slot
                    .durable_batches
                    .batches()
                    .get(index)
                    .expect("find returns an index into batches");
                Source::Durable(location)
            } else {
                // Pending batches are in offset order: binary search, since a hot partition
                // can have thousands pending and `read_key(include_pending)` is its hot path.
                let after = slot
                    .pending_batches
                    .partition_point(|batch| batch.base_offset <= offset);
                let pending = after
                    .checked_sub(1)
                    .and_then(|index| slot.pending_batches.get(index))
                    .filter(|batch| offset < batch.end_offset)
                    .ok_or(ReadError::OffsetOutOfRange {
                        requested: offset.0,
                        synced_end: slot.state.synced_end().0,
                    })?;
                let group_bytes: &[u8] = if state.open_group.sequence == pending.group_sequence {
                    &state.open_group.bytes
                } else {
                    &state
                        .in_flight_group
                        .as_ref()
                        .filter(|group| group.sequence == pending.group_sequence)
                        .expect("a pending batch is in the open or the in-flight group")
                        .bytes
                };
                let start = pending.group_position;
                let len_bytes = pending.len_bytes as usize;
                // Copy just this batch: the group keeps filling (or is being written) while
                // the caller decodes.
                let batch_bytes = group_bytes
                    .get(start..start + len_bytes)
                    .expect("a pending batch lies inside its group")
                    .to_vec();
                Source::Pending(Rc::new(batch_bytes), 0, len_bytes)
            }
        };
        let batch = match source {
            Source::Durable(location) => self.read_batch(&location).await?,
            Source::Pending(bytes, start, len_bytes) => FetchedBatch {
                bytes: BatchBytes::Shared {
                    bytes,
                    start,
                    len_bytes,
                },
            },
        };
        let view = batch.view();
        let timestamp_ms = view.timestamp_ms();
        let record = view
            .records()
            .find(|record| record.offset == offset)
            .expect("the batch located for an offset holds it");
        Ok(OwnedRecord::from_view(&record, timestamp_ms))
    }

    async fn read_batch(&self, location: &BatchLocation) -> Result<FetchedBatch, ReadError> {
        let len_bytes = location.len_bytes as usize;
        let segment = {
            let state = self.state.borrow();
            if let Some((bytes, start)) =
                state
                    .read_cache
                    .get(location.segment_index, location.position, len_bytes)
            {
                return Ok(FetchedBatch {
                    bytes: BatchBytes::Shared {
                        bytes,
                        start,
                        len_bytes,
                    },
                });
            }
            state
                .log
                .segments
                .get(&location.segment_index)
                .cloned()
                .expect("every indexed batch lies in an open segment")
        };
        let read = segment
            .read(location.position, len_bytes)
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

/// Whether the head of the admission queue can stage a batch of `len_bytes` now: room in
/// the open group, a pending slot, and a place on disk (`group_commit::room_for`).
fn admission_of(
    state: &ShardState,
    len_bytes: usize,
    preparation_attempted: bool,
) -> Result<Admission, AppendError> {
    let fits_group = state.open_group.bytes.len() + len_bytes <= state.config.group_size_bytes_max;
    let has_slot = state.pending_append_count < state.config.pending_append_count_max;
    Ok(match group_commit::room_for(state, len_bytes) {
        Room::Fits if fits_group && has_slot => Admission::Admit,
        Room::Fits | Room::WaitForCommitter => Admission::Wait,
        Room::WaitForPreparation => {
            state.log.preparation_urgent.set(true);
            Admission::Wait
        }
        Room::PreparationFailed(error) if preparation_attempted => {
            return Err(AppendError::Storage(error));
        }
        Room::PreparationFailed(_) => Admission::RetryPreparation,
    })
}

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
    }
}

/// The segment after the current one.
pub(crate) enum NextSegment {
    /// Being prepared in the background.
    Preparing,
    /// Prepared and synced: the next roll uses it.
    Ready(SegmentFile),
    /// Preparing it failed (typically ENOSPC). Appends that need it fail with this error
    /// without being staged, and the next one that needs it tries again.
    Failed(StorageError),
}
