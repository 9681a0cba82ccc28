//! A conditional-append workload driven over TCP with `BlockingClient`s, the ledger of what
//! it asked and what it was told, and the check that a log read back from a (restarted)
//! server keeps the promises of docs/DESIGN.md §3 to that ledger.
//!
//! Writers read a key's latest offset, then append a batch of 1-4 records on keys of one
//! partition with `no_key` / `at(offset)` / `key_exists` conditions. Every value names its
//! batch and its index in it (`b<batch>r<index>n<count>|` then filler), so a record read
//! back says which batch it belongs to and whether that batch is whole.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use cairn_client::{AppendResult, BlockingClient, ClientConfig, ClientError, FetchedRecord};
use cairn_engine::{KeyCondition, Offset, RecordInput};
use cairn_wire::{self as wire, ErrorCode};

use super::TestRng;

/// How long one request may take before the test calls the server hung.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// A client with the test's request timeout.
pub fn connect(address: SocketAddr) -> Result<BlockingClient, ClientError> {
    let mut config = ClientConfig::new(address);
    config.request_timeout = REQUEST_TIMEOUT;
    BlockingClient::connect(config)
}

/// A topic and its keys, bucketed by the partition each key routes to.
#[derive(Clone, Debug)]
pub struct Workload {
    pub topic: String,
    pub partition_count: u32,
    /// `keys[p]`: the keys `key-NNN` that route to partition `p`.
    pub keys: Vec<Vec<Vec<u8>>>,
}

impl Workload {
    pub fn new(topic: &str, partition_count: u32, key_count: u32) -> Workload {
        let mut keys = vec![Vec::new(); partition_count as usize];
        for index in 0..key_count {
            let key = format!("key-{index:03}").into_bytes();
            keys[wire::partition_for_key(&key, partition_count) as usize].push(key);
        }
        assert!(
            keys.iter().all(|bucket| !bucket.is_empty()),
            "every partition gets keys"
        );
        Workload {
            topic: topic.to_owned(),
            partition_count,
            keys,
        }
    }
}

/// What became of a batch, as its writer was told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Sent, no answer yet.
    InFlight,
    /// Acknowledged (synced) at this base offset: must be present forever.
    Acknowledged(Offset),
    /// Refused by a condition: must never be present.
    Conflict,
    /// The server answered `StorageFailure`.
    StorageFailure,
    /// The request failed without an answer (connection lost, ...): may or may not be
    /// present.
    Unknown(String),
}

/// One record of a submitted batch, with the condition it was sent with.
#[derive(Clone, Debug)]
pub struct LedgerRecord {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub condition: KeyCondition,
}

/// A batch the workload submitted.
#[derive(Clone, Debug)]
pub struct LedgerBatch {
    pub partition: u32,
    pub records: Vec<LedgerRecord>,
    pub outcome: Outcome,
    /// Where the last check found it: `None` before any check, then `Some(None)` absent or
    /// `Some(Some(base_offset))`. A recovered server syncs what it recovered, so whatever a
    /// check saw must be seen the same way by every later check.
    pub seen: Option<Option<Offset>>,
}

/// A record a follower fetched while the server ran: readers only ever see synced
/// records, so it must survive any crash.
#[derive(Clone, Copy, Debug)]
pub struct ReaderSighting {
    pub partition: u32,
    pub offset: Offset,
    pub batch_id: usize,
    pub index: usize,
}

/// Everything the workload did; batch ids index `batches`.
#[derive(Default, Debug)]
pub struct Ledger {
    pub batches: Vec<LedgerBatch>,
    pub sightings: Vec<ReaderSighting>,
}

impl Ledger {
    pub fn count(&self, matches: impl Fn(&Outcome) -> bool) -> usize {
        self.batches
            .iter()
            .filter(|batch| matches(&batch.outcome))
            .count()
    }
}

/// Shared switches and counters of one round of load.
#[derive(Default, Debug)]
pub struct Control {
    /// Writers and followers finish their current request and return.
    pub stop: AtomicBool,
    /// Failed requests are expected from now on (the server is being killed, or fails by
    /// design); before it is raised, any failure fails the test.
    pub failures_expected: AtomicBool,
    /// Batches acknowledged in this round.
    pub acknowledged_count: AtomicU64,
}

impl Control {
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// The value of record `index` of `count` in batch `batch_id`, `len_bytes` long (at least
/// its label).
pub fn value_for(batch_id: usize, index: usize, count: usize, len_bytes: usize) -> Vec<u8> {
    let mut value = format!("b{batch_id}r{index}n{count}|").into_bytes();
    let filler = b'a' + (batch_id % 26) as u8;
    value.resize(value.len().max(len_bytes), filler);
    value
}

/// The (batch id, index, count) a value names; `None` if it is not one of ours.
pub fn parse_value(value: &[u8]) -> Option<(usize, usize, usize)> {
    let label_end = value.iter().position(|byte| *byte == b'|')?;
    let label = std::str::from_utf8(value.get(..label_end)?).ok()?;
    let rest = label.strip_prefix('b')?;
    let (batch, rest) = rest.split_once('r')?;
    let (index, count) = rest.split_once('n')?;
    Some((
        batch.parse().ok()?,
        index.parse().ok()?,
        count.parse().ok()?,
    ))
}

/// Shapes of the records writers send.
#[derive(Clone, Copy, Debug)]
pub struct WriterShape {
    /// Per mille of records with a 4-64 KiB value (else 16-512 bytes), to fill segments.
    pub large_value_per_mille: u64,
    /// Per mille of condition reads that include pending (not yet synced) records.
    pub pending_read_per_mille: u64,
    /// Most batches one writer submits in a round.
    pub batch_count_max: u64,
}

impl Default for WriterShape {
    fn default() -> Self {
        WriterShape {
            large_value_per_mille: 30,
            pending_read_per_mille: 250,
            batch_count_max: 100_000,
        }
    }
}

/// What one writer saw.
#[derive(Default, Debug, Clone, Copy)]
pub struct WriterStats {
    pub acknowledged_count: u64,
    pub conflict_count: u64,
    pub storage_failure_count: u64,
    pub unknown_count: u64,
}

/// Fails the test on an error the round did not expect; returns true if the writer should
/// give up (too many failures in a row).
fn tolerate(
    control: &Control,
    who: &str,
    error: &ClientError,
    failures_in_a_row: &mut u32,
) -> bool {
    assert!(
        control.failures_expected.load(Ordering::SeqCst),
        "{who}: unexpected failure while the server should be healthy: {error}"
    );
    *failures_in_a_row += 1;
    *failures_in_a_row >= 3
}

/// One writer: read-check-append cycles until `control.stop`, the batch bound, or repeated
/// failures once failures are expected.
pub fn run_writer(
    address: SocketAddr,
    workload: &Workload,
    ledger: &Mutex<Ledger>,
    control: &Control,
    shape: WriterShape,
    seed: u64,
) -> WriterStats {
    let who = format!("writer seed {seed}");
    let mut rng = TestRng::new(seed);
    let mut stats = WriterStats::default();
    let mut client = match connect(address) {
        Ok(client) => client,
        Err(error) => {
            let mut ignored = 0;
            tolerate(control, &who, &error, &mut ignored);
            return stats;
        }
    };
    let mut failures_in_a_row = 0u32;
    for _ in 0..shape.batch_count_max {
        if control.stopping() {
            break;
        }
        let partition = rng.below(u64::from(workload.partition_count)) as usize;
        let bucket = &workload.keys[partition];
        let record_count = 1 + rng.below(4) as usize;
        let keys: Vec<&Vec<u8>> = (0..record_count)
            .map(|_| &bucket[rng.below(bucket.len() as u64) as usize])
            .collect();
        // The condition of each key's first record in the batch comes from a fresh read;
        // a key repeated in the batch must exist by then (its earlier record put it there).
        let mut latest: HashMap<&[u8], Option<Offset>> = HashMap::new();
        let mut read_failed = false;
        for key in &keys {
            if latest.contains_key(key.as_slice()) {
                continue;
            }
            let include_appended = rng.below(1000) < shape.pending_read_per_mille;
            match client.read_key(&workload.topic, None, key, include_appended) {
                Ok(record) => {
                    latest.insert(key, record.map(|record| record.offset));
                }
                Err(error) => {
                    read_failed = true;
                    if tolerate(control, &who, &error, &mut failures_in_a_row) {
                        return stats;
                    }
                    break;
                }
            }
        }
        if read_failed {
            continue;
        }
        let mut seen_in_batch: Vec<&[u8]> = Vec::new();
        let conditions: Vec<KeyCondition> = keys
            .iter()
            .map(|key| {
                if seen_in_batch.contains(&key.as_slice()) {
                    KeyCondition::KeyExists
                } else {
                    seen_in_batch.push(key);
                    match latest[key.as_slice()] {
                        None => KeyCondition::NoKey,
                        Some(offset) => KeyCondition::At(offset),
                    }
                }
            })
            .collect();
        let batch_id = {
            let mut ledger = ledger.lock().unwrap();
            let batch_id = ledger.batches.len();
            let records = keys
                .iter()
                .zip(&conditions)
                .enumerate()
                .map(|(index, (key, condition))| {
                    let len_bytes = if rng.below(1000) < shape.large_value_per_mille {
                        4096 + rng.below(60 * 1024) as usize
                    } else {
                        16 + rng.below(496) as usize
                    };
                    LedgerRecord {
                        key: key.to_vec(),
                        value: value_for(batch_id, index, record_count, len_bytes),
                        condition: *condition,
                    }
                })
                .collect();
            ledger.batches.push(LedgerBatch {
                partition: partition as u32,
                records,
                outcome: Outcome::InFlight,
                seen: None,
            });
            batch_id
        };
        let records = ledger.lock().unwrap().batches[batch_id].records.clone();
        let inputs: Vec<RecordInput<'_>> = records
            .iter()
            .map(|record| RecordInput {
                key: &record.key,
                value: &record.value,
                headers: &[],
                condition: record.condition,
                ..RecordInput::default()
            })
            .collect();
        let outcome = match client.append(&workload.topic, None, None, &inputs) {
            Ok(AppendResult::Appended {
                partition: appended_partition,
                base_offset,
                record_count: appended_count,
                ..
            }) => {
                assert_eq!(appended_partition as usize, partition, "{who}: routing");
                assert_eq!(appended_count as usize, record_count, "{who}: whole batch");
                failures_in_a_row = 0;
                stats.acknowledged_count += 1;
                control.acknowledged_count.fetch_add(1, Ordering::SeqCst);
                Outcome::Acknowledged(base_offset)
            }
            Ok(AppendResult::Conflict { .. }) => {
                failures_in_a_row = 0;
                stats.conflict_count += 1;
                Outcome::Conflict
            }
            Err(error) => {
                let outcome = if error.server_code() == Some(ErrorCode::StorageFailure) {
                    stats.storage_failure_count += 1;
                    Outcome::StorageFailure
                } else {
                    stats.unknown_count += 1;
                    Outcome::Unknown(error.to_string())
                };
                ledger.lock().unwrap().batches[batch_id].outcome = outcome;
                if tolerate(control, &who, &error, &mut failures_in_a_row) {
                    return stats;
                }
                continue;
            }
        };
        ledger.lock().unwrap().batches[batch_id].outcome = outcome;
    }
    stats
}

/// One follower: tails `partition` with long-polling fetches, checks offsets are dense, and
/// notes every record it saw in the ledger's sightings.
pub fn run_follower(
    address: SocketAddr,
    workload: &Workload,
    partition: u32,
    from: Offset,
    ledger: &Mutex<Ledger>,
    control: &Control,
) -> u64 {
    let who = format!("follower of partition {partition}");
    let mut client = match connect(address) {
        Ok(client) => client,
        Err(error) => {
            let mut ignored = 0;
            tolerate(control, &who, &error, &mut ignored);
            return 0;
        }
    };
    let mut next = from;
    let mut seen_count = 0u64;
    let mut failures_in_a_row = 0;
    // Bounded: each fetch waits at most 200 ms, and the round ends long before this.
    for _ in 0..100_000 {
        if control.stopping() {
            break;
        }
        let fetched = match client.fetch(
            &workload.topic,
            partition,
            next,
            256 * 1024,
            Duration::from_millis(200),
        ) {
            Ok(fetched) => fetched,
            Err(error) => {
                if tolerate(control, &who, &error, &mut failures_in_a_row) {
                    break;
                }
                continue;
            }
        };
        let mut sightings = Vec::with_capacity(fetched.records.len());
        for record in &fetched.records {
            assert_eq!(record.offset, next, "{who}: fetched offsets are dense");
            let (batch_id, index, _) = parse_value(&record.value)
                .unwrap_or_else(|| panic!("{who}: foreign value at {:?}", record.offset));
            sightings.push(ReaderSighting {
                partition,
                offset: record.offset,
                batch_id,
                index,
            });
            next = next.plus(1);
        }
        assert!(
            next <= fetched.synced_end,
            "{who}: records beyond the high watermark"
        );
        seen_count += sightings.len() as u64;
        ledger.lock().unwrap().sightings.extend(sightings);
    }
    seen_count
}

/// Every record of `partition`, in offset order, fetched from 0 to the high watermark.
pub fn fetch_all(client: &mut BlockingClient, topic: &str, partition: u32) -> Vec<FetchedRecord> {
    let mut records: Vec<FetchedRecord> = Vec::new();
    let mut next = Offset(0);
    loop {
        let fetched = client
            .fetch(topic, partition, next, 1024 * 1024, Duration::ZERO)
            .unwrap_or_else(|error| panic!("fetch {topic}/{partition} from {next}: {error}"));
        for record in fetched.records {
            assert_eq!(
                record.offset, next,
                "partition {partition}: offsets are dense"
            );
            next = next.plus(1);
            records.push(record);
        }
        if next >= fetched.synced_end {
            assert_eq!(next, fetched.synced_end, "partition {partition}: end");
            return records;
        }
    }
}

/// How the ledger's `StorageFailure` outcomes are judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageFailureRule {
    /// The failure came from a write or sync of a group: its bytes may have reached the
    /// disk, so the batch may be present.
    MayBePresent,
    /// The failure came before staging (no room on disk): the batch must be absent.
    MustBeAbsent,
}

/// What a check of the whole log found.
#[derive(Debug, Default, Clone)]
pub struct LogCheck {
    pub record_count: u64,
    pub batch_count: u64,
    pub acknowledged_count: u64,
    /// Batches present whose writer never heard "appended" (lost answer, failed sync).
    pub unacknowledged_present_count: u64,
    pub sighting_count: u64,
    /// Every record of every partition, for comparing two recoveries.
    pub records: Vec<Vec<FetchedRecord>>,
}

/// Reads the whole topic through `client` and checks it against the ledger:
///
/// - offsets are dense (0 to the high watermark);
/// - every record is record `i` of a batch the workload submitted, with its key and value,
///   and each batch is whole, at consecutive offsets, and present at most once;
/// - every acknowledged batch is present at its acknowledged offset; no batch refused by a
///   condition is present; `StorageFailure`s follow `rule`;
/// - what an earlier check saw (present at an offset, or absent) is still so, and every
///   record a follower fetched is present where it was fetched;
/// - each record's `prev_key_offset` is the offset of its key's previous record, and each
///   batch's conditions held against exactly that state (no double append, docs/DESIGN.md §3.3);
/// - `read_key` gives each key's last record and `key_history` walks its chain.
///
/// Then it records in the ledger what it saw.
pub fn check_log(
    client: &mut BlockingClient,
    workload: &Workload,
    ledger: &mut Ledger,
    rule: StorageFailureRule,
    context: &str,
) -> LogCheck {
    let mut check = LogCheck::default();
    let mut present: HashMap<usize, Offset> = HashMap::new();
    for partition in 0..workload.partition_count {
        let records = fetch_all(client, &workload.topic, partition);
        let mut latest: HashMap<Vec<u8>, Offset> = HashMap::new();
        let mut chains: BTreeMap<Vec<u8>, Vec<Offset>> = BTreeMap::new();
        let mut position = 0;
        while position < records.len() {
            let first = &records[position];
            let (batch_id, index, count) = parse_value(&first.value).unwrap_or_else(|| {
                panic!(
                    "{context}: partition {partition} offset {}: value never submitted",
                    first.offset
                )
            });
            assert_eq!(
                index, 0,
                "{context}: partition {partition} offset {}: batch {batch_id} starts at record \
                 {index} (a partial batch)",
                first.offset
            );
            let batch = ledger.batches.get(batch_id).unwrap_or_else(|| {
                panic!(
                    "{context}: batch {batch_id} at {} was never submitted",
                    first.offset
                )
            });
            assert_eq!(batch.partition, partition, "{context}: batch {batch_id}");
            assert_eq!(batch.records.len(), count, "{context}: batch {batch_id}");
            assert!(
                present.insert(batch_id, first.offset).is_none(),
                "{context}: batch {batch_id} is present twice (again at {})",
                first.offset
            );
            for (index, expected) in batch.records.iter().enumerate() {
                let record = records.get(position + index).unwrap_or_else(|| {
                    panic!(
                        "{context}: batch {batch_id} at {} is cut after {index} records",
                        first.offset
                    )
                });
                assert_eq!(
                    (record.key.as_slice(), record.value.as_slice()),
                    (expected.key.as_slice(), expected.value.as_slice()),
                    "{context}: partition {partition} offset {}: record {index} of batch \
                     {batch_id}",
                    record.offset
                );
                let previous = latest.get(&record.key).copied();
                assert_eq!(
                    record.prev_key_offset, previous,
                    "{context}: partition {partition} offset {}: key chain broken",
                    record.offset
                );
                let condition_held = match expected.condition {
                    KeyCondition::Any => true,
                    KeyCondition::NoKey => previous.is_none(),
                    KeyCondition::KeyExists => previous.is_some(),
                    KeyCondition::At(offset) => previous == Some(offset),
                };
                assert!(
                    condition_held,
                    "{context}: partition {partition} offset {}: batch {batch_id} record \
                     {index} was appended although its condition {:?} did not hold (the key's \
                     previous record is {previous:?})",
                    record.offset, expected.condition
                );
                latest.insert(record.key.clone(), record.offset);
                chains
                    .entry(record.key.clone())
                    .or_default()
                    .push(record.offset);
            }
            position += count;
            check.batch_count += 1;
        }
        check.record_count += records.len() as u64;

        for key in &workload.keys[partition as usize] {
            let read = client
                .read_key(&workload.topic, None, key, false)
                .unwrap_or_else(|error| panic!("{context}: read_key: {error}"));
            let expected = latest.get(key).map(|offset| {
                let record = &records[offset.0 as usize];
                (record.offset, record.value.clone())
            });
            assert_eq!(
                read.map(|record| (record.offset, record.value)),
                expected,
                "{context}: read_key {} disagrees with a scan",
                String::from_utf8_lossy(key)
            );
        }
        for (key, chain) in &chains {
            let history = client
                .key_history(&workload.topic, None, key, 1024)
                .unwrap_or_else(|error| panic!("{context}: key_history: {error}"));
            let walked: Vec<Offset> = history.iter().map(|record| record.offset).collect();
            let expected: Vec<Offset> = chain.iter().rev().copied().collect();
            // The server may cut a long history by size; what it returns is the newest part.
            assert!(
                !walked.is_empty() && expected.starts_with(&walked),
                "{context}: key_history {} = {walked:?}, chain {expected:?}",
                String::from_utf8_lossy(key)
            );
        }
        check.records.push(records);
    }

    for (batch_id, batch) in ledger.batches.iter_mut().enumerate() {
        let found = present.get(&batch_id).copied();
        match &batch.outcome {
            Outcome::Acknowledged(base) => {
                assert_eq!(
                    found,
                    Some(*base),
                    "{context}: acknowledged batch {batch_id} (partition {}, base {base}) lost or \
                     moved",
                    batch.partition
                );
                check.acknowledged_count += 1;
            }
            Outcome::Conflict => assert_eq!(
                found, None,
                "{context}: batch {batch_id} was refused by a condition but is present"
            ),
            Outcome::StorageFailure if rule == StorageFailureRule::MustBeAbsent => assert_eq!(
                found, None,
                "{context}: batch {batch_id} failed before staging but is present"
            ),
            Outcome::InFlight | Outcome::StorageFailure | Outcome::Unknown(_) => {
                if found.is_some() {
                    check.unacknowledged_present_count += 1;
                }
            }
        }
        if let Some(seen) = batch.seen {
            assert_eq!(
                found, seen,
                "{context}: batch {batch_id} was {seen:?} at an earlier check, now {found:?}"
            );
        }
        batch.seen = Some(found);
    }
    for sighting in &ledger.sightings {
        let base = present.get(&sighting.batch_id).copied();
        assert_eq!(
            base.map(|base| base.plus(sighting.index as u64)),
            Some(sighting.offset),
            "{context}: a reader saw batch {} record {} at partition {} offset {}; it must \
             survive",
            sighting.batch_id,
            sighting.index,
            sighting.partition,
            sighting.offset
        );
    }
    check.sighting_count = ledger.sightings.len() as u64;
    check
}
