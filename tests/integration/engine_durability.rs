//! The engine on a real disk: acknowledged appends survive restarts, simulated crashes
//! (segment files copied mid-workload, cut, or followed by garbage) and injected I/O
//! failures; conditional appends have exactly one winner per expected offset.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cairn_engine::core::condition::Conflict;
use cairn_engine::{
    AppendError, AppendOutcome, Engine, EngineConfig, FaultHook, FaultPoint, FaultPolicy,
    KeyCondition, Offset, PartitionId, RecordHeader, RecordInput, Shard, ShardId,
};

use crate::support::engine::{open_engine, run_local, test_config};
use crate::support::{TestRng, copy_tree, files_under, test_seed};

/// One record as the workload wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct WrittenRecord {
    key: Vec<u8>,
    value: Vec<u8>,
}

/// A batch the workload submitted: its records and, once acknowledged, its base offset.
#[derive(Clone, Debug)]
struct SubmittedBatch {
    partition: PartitionId,
    records: Vec<WrittenRecord>,
    acknowledged_base: Option<Offset>,
}

/// What a workload did, for checking a recovered log against it.
#[derive(Default, Debug)]
struct Ledger {
    batches: Vec<SubmittedBatch>,
}

impl Ledger {
    fn acknowledged(&self) -> impl Iterator<Item = &SubmittedBatch> {
        self.batches
            .iter()
            .filter(|batch| batch.acknowledged_base.is_some())
    }
}

/// Everything in `partition`, in offset order, read back through `fetch`.
async fn fetch_all(shard: &Shard, partition: PartitionId) -> Vec<(Offset, WrittenRecord)> {
    let mut records = Vec::new();
    let mut from = Offset(0);
    loop {
        let fetched = shard
            .fetch(partition, from, 64 * 1024)
            .await
            .expect("fetch succeeds");
        if fetched.batches.is_empty() {
            return records;
        }
        for record in fetched.records() {
            assert_eq!(record.offset, from, "offsets are dense");
            records.push((
                record.offset,
                WrittenRecord {
                    key: record.key.to_vec(),
                    value: record.value.to_vec(),
                },
            ));
            from = from.plus(1);
        }
    }
}

/// Checks a recovered partition against the ledger: every acknowledged batch is present at
/// its offset; everything present is a whole batch the workload submitted, in a dense
/// prefix; key chains are intact.
async fn verify_recovered(shard: &Shard, partition: PartitionId, ledger: &Ledger) -> usize {
    let records = fetch_all(shard, partition).await;
    let by_value: BTreeMap<&[u8], (&SubmittedBatch, usize)> = ledger
        .batches
        .iter()
        .filter(|batch| batch.partition == partition)
        .flat_map(|batch| {
            batch
                .records
                .iter()
                .enumerate()
                .map(move |(index, record)| (record.value.as_slice(), (batch, index)))
        })
        .collect();
    for batch in ledger
        .acknowledged()
        .filter(|batch| batch.partition == partition)
    {
        let base = batch.acknowledged_base.expect("filtered on acknowledged").0 as usize;
        for (index, expected) in batch.records.iter().enumerate() {
            let (offset, actual) = records
                .get(base + index)
                .unwrap_or_else(|| panic!("acknowledged offset {} lost", base + index));
            assert_eq!(offset.0 as usize, base + index);
            assert_eq!(
                actual, expected,
                "acknowledged record at {offset:?} changed"
            );
        }
    }
    // All-or-nothing: each present record is record `index` of a submitted batch, and the
    // batch's other records sit right around it.
    let mut position = 0;
    while position < records.len() {
        let (_, record) = &records[position];
        let (batch, index) = by_value
            .get(record.value.as_slice())
            .unwrap_or_else(|| panic!("record {record:?} was never submitted"));
        assert_eq!(*index, 0, "a batch is present from its first record");
        for (offset_in_batch, expected) in batch.records.iter().enumerate() {
            let (_, actual) = records
                .get(position + offset_in_batch)
                .unwrap_or_else(|| panic!("batch starting at {position} is only partly present"));
            assert_eq!(actual, expected, "batch starting at {position} differs");
        }
        position += batch.records.len();
    }
    // Key index and back-pointers agree with the scan.
    let mut latest: BTreeMap<Vec<u8>, Offset> = BTreeMap::new();
    for (offset, record) in &records {
        latest.insert(record.key.clone(), *offset);
    }
    for (key, offset) in &latest {
        let read = shard
            .read_key(partition, key, false)
            .await
            .expect("read_key")
            .expect("found");
        assert_eq!(read.offset, *offset, "key index answer for {key:?}");
        let history = shard
            .key_history(partition, key, None, usize::MAX, usize::MAX)
            .await
            .expect("history");
        let expected: Vec<Offset> = records
            .iter()
            .rev()
            .filter(|(_, record)| &record.key == key)
            .map(|(offset, _)| *offset)
            .collect();
        let actual: Vec<Offset> = history.iter().map(|record| record.offset).collect();
        assert_eq!(
            actual, expected,
            "history of {key:?} follows every record of the key"
        );
    }
    records.len()
}

fn value_for(writer: u64, sequence: u64, index: usize) -> Vec<u8> {
    format!(
        "w{writer}-s{sequence}-r{index}-{}",
        "x".repeat((sequence % 7) as usize * 30)
    )
    .into_bytes()
}

/// `writer_count` tasks each append `batches_per_writer` batches of 1..=4 records on a few
/// keys, conditionally on the key's latest offset (read with pending records), retrying on
/// conflicts. Returns when all are done or the shard fails.
async fn run_workload(
    shard: Rc<Shard>,
    partition: PartitionId,
    ledger: Rc<RefCell<Ledger>>,
    writer_count: u64,
    batches_per_writer: u64,
    seed: u64,
) {
    let mut tasks = Vec::new();
    for writer in 0..writer_count {
        let shard = shard.clone();
        let ledger = ledger.clone();
        tasks.push(glommio::spawn_local(async move {
            let mut rng = TestRng::new(seed ^ writer.wrapping_mul(0x9E37_79B9));
            for sequence in 0..batches_per_writer {
                let record_count = 1 + rng.below(4) as usize;
                let key = format!("key-{}", rng.below(8)).into_bytes();
                let records: Vec<WrittenRecord> = (0..record_count)
                    .map(|index| WrittenRecord {
                        key: key.clone(),
                        value: value_for(writer, sequence, index),
                    })
                    .collect();
                let batch_index = {
                    let mut ledger = ledger.borrow_mut();
                    ledger.batches.push(SubmittedBatch {
                        partition,
                        records: records.clone(),
                        acknowledged_base: None,
                    });
                    ledger.batches.len() - 1
                };
                loop {
                    let latest = match shard.read_key(partition, &key, true).await {
                        Ok(record) => record.map(|record| record.offset),
                        Err(_) => return,
                    };
                    let condition = latest.map_or(KeyCondition::NoKey, KeyCondition::At);
                    let headers = [RecordHeader {
                        name: b"type",
                        value: b"test",
                    }];
                    let inputs: Vec<RecordInput<'_>> = records
                        .iter()
                        .enumerate()
                        .map(|(index, record)| RecordInput {
                            key: &record.key,
                            value: &record.value,
                            headers: &headers,
                            condition: if index == 0 {
                                condition
                            } else {
                                KeyCondition::Any
                            },
                            ..RecordInput::default()
                        })
                        .collect();
                    match shard.append(partition, None, &inputs).await {
                        Ok(AppendOutcome::Appended { base_offset, .. }) => {
                            ledger.borrow_mut().batches[batch_index].acknowledged_base =
                                Some(base_offset);
                            break;
                        }
                        Ok(AppendOutcome::ConditionFailed(_)) => continue,
                        Ok(AppendOutcome::Duplicate { .. }) => {
                            unreachable!("no producer stamp, no duplicate")
                        }
                        Err(_) => return,
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await;
    }
}

fn create_topic(shard: &Shard) -> PartitionId {
    let topic = shard.create_topic("events", 1).expect("topic created");
    topic.partition_id(0).expect("partition 0 exists")
}

#[test]
fn acknowledged_records_survive_restart_with_offsets_keys_and_history() {
    let seed = test_seed("acknowledged_records_survive_restart");
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let engine = open_engine(config.clone());
    let ledger = run_local(move || async move {
        let shard = Rc::new(engine.open_shard(ShardId(0)).await.unwrap());
        let partition = create_topic(&shard);
        let ledger = Rc::new(RefCell::new(Ledger::default()));
        // Enough bytes (values up to ~200 bytes, >4 KiB padding per group) to roll several
        // 2 MiB segments.
        run_workload(shard.clone(), partition, ledger.clone(), 16, 60, seed).await;
        let snapshot = Ledger {
            batches: ledger.borrow().batches.clone(),
        };
        let count = verify_recovered(&shard, partition, &snapshot).await;
        assert!(count >= 16 * 60, "every batch was acknowledged");
        Rc::try_unwrap(shard)
            .ok()
            .expect("workload finished")
            .close()
            .await;
        Rc::try_unwrap(ledger).unwrap().into_inner()
    });
    let segment_count = std::fs::read_dir(dir.path().join("core-0"))
        .unwrap()
        .count();
    assert!(
        segment_count >= 3,
        "the workload rolled segments ({segment_count} files)"
    );

    let engine = open_engine(config);
    run_local(move || async move {
        let shard = engine.open_shard(ShardId(0)).await.unwrap();
        let partition = PartitionId(0);
        let acknowledged_count: usize = ledger.acknowledged().map(|b| b.records.len()).sum();
        let count = verify_recovered(&shard, partition, &ledger).await;
        assert_eq!(
            count, acknowledged_count,
            "nothing more, nothing less after a clean close"
        );
        // The recovered state accepts new conditional appends that depend on it.
        let latest = shard
            .read_key(partition, b"key-0", true)
            .await
            .unwrap()
            .unwrap();
        let record = RecordInput {
            key: b"key-0",
            value: b"after restart",
            headers: &[],
            condition: KeyCondition::At(latest.offset),
            ..RecordInput::default()
        };
        let outcome = shard.append(partition, None, &[record]).await.unwrap();
        assert_eq!(
            outcome,
            AppendOutcome::Appended {
                base_offset: Offset(count as u64),
                record_count: 1
            }
        );
        let stale = RecordInput {
            condition: KeyCondition::At(latest.offset),
            ..record
        };
        assert!(matches!(
            shard.append(partition, None, &[stale]).await.unwrap(),
            AppendOutcome::ConditionFailed(Conflict::Key {
                record_index: 0,
                ..
            })
        ));
    });
}

#[test]
fn concurrent_conditional_appends_on_one_key_have_one_winner_per_offset() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_engine(test_config(dir.path()));
    run_local(move || async move {
        let shard = Rc::new(engine.open_shard(ShardId(0)).await.unwrap());
        let partition = create_topic(&shard);
        // (the offset the winner expected, the offset it got)
        type Winners = Rc<RefCell<Vec<(Option<Offset>, Offset)>>>;
        let winners: Winners = Rc::default();
        let mut tasks = Vec::new();
        for writer in 0..64u32 {
            let shard = shard.clone();
            let winners = winners.clone();
            tasks.push(glommio::spawn_local(async move {
                for attempt in 0..20u32 {
                    // Read durable state only: many writers see the same offset and race.
                    let expected = shard
                        .read_key(partition, b"seat-12A", false)
                        .await
                        .unwrap()
                        .map(|record| record.offset);
                    let value = format!("writer {writer} attempt {attempt}");
                    let record = RecordInput {
                        key: b"seat-12A",
                        value: value.as_bytes(),
                        headers: &[],
                        condition: expected.map_or(KeyCondition::NoKey, KeyCondition::At),
                        ..RecordInput::default()
                    };
                    if let AppendOutcome::Appended { base_offset, .. } =
                        shard.append(partition, None, &[record]).await.unwrap()
                    {
                        winners.borrow_mut().push((expected, base_offset));
                    }
                }
            }));
        }
        for task in tasks {
            task.await;
        }
        let mut winners = winners.borrow().clone();
        winners.sort_by_key(|(_, offset)| *offset);
        assert!(winners.len() > 1, "some appends won");
        // One winner per expected offset, and the winners form one unbroken chain.
        let mut previous = None;
        for (expected, offset) in &winners {
            assert_eq!(
                *expected, previous,
                "winner at {offset:?} expected the previous winner"
            );
            previous = Some(*offset);
        }
        let history = shard
            .key_history(partition, b"seat-12A", None, usize::MAX, usize::MAX)
            .await
            .unwrap();
        assert_eq!(
            history.len(),
            winners.len(),
            "history holds exactly the winners"
        );
    });
}

/// Copies every segment of `source` into a fresh directory `target` (the data directory's
/// metadata too), as a crash at this instant would leave it.
fn snapshot_data_dir(source: &Path, target: &Path) {
    copy_tree(source, target, |_| true);
}

#[test]
fn snapshots_taken_mid_workload_recover_every_record_acknowledged_before_them() {
    let seed = test_seed("snapshots_mid_workload");
    let dir = tempfile::tempdir().unwrap();
    let snapshots = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let engine = open_engine(config.clone());
    let data_path = dir.path().to_owned();
    let snapshot_root = snapshots.path().to_owned();
    // For each snapshot: the ledger as it stood when the copy began.
    let snapshot_ledgers = run_local(move || async move {
        let shard = Rc::new(engine.open_shard(ShardId(0)).await.unwrap());
        let partition = create_topic(&shard);
        let ledger = Rc::new(RefCell::new(Ledger::default()));
        let workload = glommio::spawn_local(run_workload(
            shard.clone(),
            partition,
            ledger.clone(),
            16,
            40,
            seed,
        ));
        let mut rng = TestRng::new(seed);
        let mut taken = Vec::new();
        for snapshot in 0..6 {
            glommio::timer::sleep(std::time::Duration::from_millis(5 + rng.below(40))).await;
            // The copy blocks this executor, but writes already submitted to the kernel keep
            // landing while it runs: the snapshot can hold a torn group, as a crash would.
            let acknowledged: Vec<SubmittedBatch> =
                ledger.borrow().acknowledged().cloned().collect();
            let target = snapshot_root.join(format!("snapshot-{snapshot}"));
            snapshot_data_dir(&data_path, &target);
            taken.push((target, acknowledged));
        }
        workload.await;
        let submitted = ledger.borrow().batches.clone();
        taken
            .into_iter()
            .map(|(target, acknowledged)| {
                // Records acknowledged later may be present too (they were written); judge
                // them as submitted, not acknowledged.
                let mut snapshot_ledger = Ledger {
                    batches: submitted.clone(),
                };
                for batch in &mut snapshot_ledger.batches {
                    batch.acknowledged_base = None;
                }
                snapshot_ledger.batches.extend(acknowledged);
                (target, snapshot_ledger)
            })
            .collect::<Vec<_>>()
    });
    for (target, ledger) in snapshot_ledgers {
        for round in 0..2 {
            // Recovering twice gives the same state.
            let engine = open_engine(EngineConfig {
                data_dir: target.clone(),
                ..config.clone()
            });
            let ledger = Ledger {
                batches: ledger.batches.clone(),
            };
            run_local(move || async move {
                let shard = engine.open_shard(ShardId(0)).await.unwrap();
                let count = verify_recovered(&shard, PartitionId(0), &ledger).await;
                eprintln!("snapshot round {round}: {count} records recovered");
                shard.close().await;
            });
        }
    }
}

/// Zeroes (or fills with garbage) every byte of `path` from `position` on, past the header.
fn damage_from(path: &Path, position: u64, garbage_seed: Option<u64>) {
    use std::io::{Seek, SeekFrom, Write};
    let length = std::fs::metadata(path).unwrap().len();
    let mut file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.seek(SeekFrom::Start(position)).unwrap();
    let mut rng = TestRng::new(garbage_seed.unwrap_or(0));
    let bytes: Vec<u8> = (position..length)
        .map(|_| {
            if garbage_seed.is_some() {
                rng.next_u64() as u8
            } else {
                0
            }
        })
        .collect();
    file.write_all(&bytes).unwrap();
    file.sync_all().unwrap();
}

fn last_segment(dir: &Path) -> std::path::PathBuf {
    let mut segments: Vec<_> = files_under(&dir.join("core-0"))
        .into_iter()
        .filter(|path| path.extension().is_some_and(|e| e == "seg"))
        .collect();
    segments.sort();
    // The last prepared segment is empty; the log ends in the one before it.
    segments
        .iter()
        .rev()
        .nth(1)
        .cloned()
        .unwrap_or_else(|| segments[0].clone())
}

#[test]
fn torn_tails_and_garbage_after_the_end_recover_a_prefix_and_accept_new_appends() {
    let seed = test_seed("torn_tails");
    let mut rng = TestRng::new(seed);
    for case in 0..6u64 {
        let dir = tempfile::tempdir().unwrap();
        let config = test_config(dir.path());
        let engine = open_engine(config.clone());
        let workload_seed = rng.next_u64();
        let ledger = run_local(move || async move {
            let shard = Rc::new(engine.open_shard(ShardId(0)).await.unwrap());
            let partition = create_topic(&shard);
            let ledger = Rc::new(RefCell::new(Ledger::default()));
            run_workload(
                shard.clone(),
                partition,
                ledger.clone(),
                4,
                30,
                workload_seed,
            )
            .await;
            Rc::try_unwrap(shard).ok().unwrap().close().await;
            Rc::try_unwrap(ledger).unwrap().into_inner()
        });
        // Damage the tail of the segment the log ends in: a cut anywhere after its header
        // (some acknowledged records are lost, as a damaged disk would lose them), or garbage
        // beyond the data, as a torn later write would leave.
        let segment = last_segment(dir.path());
        let length = std::fs::metadata(&segment).unwrap().len();
        let position = 4096 + rng.below(length / 4);
        let garbage = (case % 2 == 1).then(|| rng.next_u64());
        damage_from(&segment, position, garbage);
        let mut damaged_ledger = Ledger {
            batches: ledger.batches.clone(),
        };
        for batch in &mut damaged_ledger.batches {
            batch.acknowledged_base = None;
        }
        let engine = open_engine(config.clone());
        let recovered = run_local(move || async move {
            let shard = engine.open_shard(ShardId(0)).await.unwrap();
            let count = verify_recovered(&shard, PartitionId(0), &damaged_ledger).await;
            // New appends go after the valid end, past whatever garbage lies there.
            for index in 0..5u32 {
                let value = format!("after damage {index}");
                let record = RecordInput {
                    key: b"after",
                    value: value.as_bytes(),
                    headers: &[],
                    condition: KeyCondition::Any,
                    ..RecordInput::default()
                };
                shard
                    .append(
                        PartitionId(0),
                        Some(Offset(count as u64 + u64::from(index))),
                        &[record],
                    )
                    .await
                    .unwrap();
            }
            shard.close().await;
            count
        });
        let engine = open_engine(config);
        run_local(move || async move {
            let shard = engine.open_shard(ShardId(0)).await.unwrap();
            let records = fetch_all(&shard, PartitionId(0)).await;
            assert_eq!(
                records.len(),
                recovered + 5,
                "case {case}: new appends survive reopen"
            );
            for (index, (_, record)) in records[recovered..].iter().enumerate() {
                assert_eq!(record.value, format!("after damage {index}").into_bytes());
            }
        });
    }
}

/// Fails the `fail_at`-th operation at `point` (counting from 0) with EIO.
struct FailNth {
    point: FaultPoint,
    fail_at: u64,
    seen: AtomicU64,
}

impl FaultPolicy for FailNth {
    fn fail(&self, point: FaultPoint, _path: &Path) -> Option<i32> {
        if point != self.point {
            return None;
        }
        let seen = self.seen.fetch_add(1, Ordering::SeqCst);
        (seen >= self.fail_at).then_some(5)
    }
}

#[test]
fn a_failed_write_or_sync_fails_pending_appends_poisons_the_shard_and_loses_nothing_acknowledged() {
    let seed = test_seed("injected_failures");
    let mut rng = TestRng::new(seed);
    for point in [FaultPoint::Write, FaultPoint::Sync] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        let fail_at = 2 + rng.below(20);
        config.fault_hook = Some(FaultHook(Arc::new(FailNth {
            point,
            fail_at,
            seen: AtomicU64::new(0),
        })));
        let engine = open_engine(config.clone());
        let workload_seed = rng.next_u64();
        let ledger = run_local(move || async move {
            let shard = Rc::new(engine.open_shard(ShardId(0)).await.unwrap());
            let partition = create_topic(&shard);
            let ledger = Rc::new(RefCell::new(Ledger::default()));
            run_workload(
                shard.clone(),
                partition,
                ledger.clone(),
                16,
                40,
                workload_seed,
            )
            .await;
            let error = shard
                .poisoned()
                .expect("the injected failure poisoned the shard");
            assert_eq!(
                error.errno,
                Some(5),
                "{point:?}: the storage error carries EIO"
            );
            let record = RecordInput {
                key: b"k",
                value: b"v",
                headers: &[],
                condition: KeyCondition::Any,
                ..RecordInput::default()
            };
            assert!(
                matches!(
                    shard.append(partition, None, &[record]).await,
                    Err(AppendError::Storage(_))
                ),
                "a poisoned shard refuses appends"
            );
            assert!(
                shard.fetch(partition, Offset(0), 1024).await.is_err(),
                "and reads"
            );
            let ledger = Rc::try_unwrap(ledger).unwrap().into_inner();
            let unacknowledged = ledger
                .batches
                .iter()
                .filter(|b| b.acknowledged_base.is_none());
            assert!(unacknowledged.count() > 0, "{point:?}: some appends failed");
            ledger
        });
        // Reopening without the fault recovers every acknowledged record, and appends work.
        config.fault_hook = None;
        let engine = open_engine(config);
        run_local(move || async move {
            let shard = engine.open_shard(ShardId(0)).await.unwrap();
            let count = verify_recovered(&shard, PartitionId(0), &ledger).await;
            let acknowledged: usize = ledger.acknowledged().map(|b| b.records.len()).sum();
            assert!(count >= acknowledged);
            if point == FaultPoint::Write {
                assert_eq!(
                    count, acknowledged,
                    "a group whose write failed never reached disk"
                );
            }
            let record = RecordInput {
                key: b"k",
                value: b"v",
                headers: &[],
                condition: KeyCondition::Any,
                ..RecordInput::default()
            };
            let outcome = shard
                .append(PartitionId(0), Some(Offset(count as u64)), &[record])
                .await;
            assert!(matches!(outcome.unwrap(), AppendOutcome::Appended { .. }));
        });
    }
}

#[test]
fn opening_with_another_shard_count_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    open_engine(test_config(dir.path()));
    let mut config = test_config(dir.path());
    config.shard_count = 2;
    let error = Engine::open(config).unwrap_err();
    assert!(error.to_string().contains("1 shards"), "{error}");
}

/// Fails every segment preparation while `failing` is set, as a full disk would.
struct DiskFull {
    failing: std::sync::atomic::AtomicBool,
}

impl FaultPolicy for DiskFull {
    fn fail(&self, point: FaultPoint, _path: &Path) -> Option<i32> {
        // ENOSPC
        (point == FaultPoint::Prepare && self.failing.load(Ordering::SeqCst)).then_some(28)
    }
}

#[test]
fn a_segment_that_cannot_be_prepared_fails_appends_without_poisoning_and_appends_resume() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    let policy = Arc::new(DiskFull {
        failing: std::sync::atomic::AtomicBool::new(false),
    });
    config.fault_hook = Some(FaultHook(policy.clone()));
    let engine = open_engine(config.clone());
    let acknowledged = run_local(move || async move {
        let shard = engine.open_shard(ShardId(0)).await.unwrap();
        // Segment 0 was prepared during open; the next one (whose preparation starts at the
        // next await) and every later one fail until space is "freed".
        policy.failing.store(true, Ordering::SeqCst);
        let partition = create_topic(&shard);
        let value = vec![b'x'; 64 * 1024];
        let record = RecordInput {
            key: b"k",
            value: &value,
            headers: &[],
            condition: KeyCondition::Any,
            ..RecordInput::default()
        };
        let mut acknowledged = 0u64;
        let error = loop {
            match shard.append(partition, None, &[record]).await {
                Ok(AppendOutcome::Appended { base_offset, .. }) => {
                    assert_eq!(base_offset, Offset(acknowledged));
                    acknowledged += 1;
                }
                Ok(other) => panic!("unexpected {other:?}"),
                Err(AppendError::Storage(error)) => break error,
                Err(other) => panic!("unexpected {other:?}"),
            }
            assert!(
                acknowledged < 1000,
                "a 2 MiB segment cannot hold 1000 x 64 KiB"
            );
        };
        assert_eq!(error.errno, Some(28), "the error says why: {error}");
        assert!(
            shard.poisoned().is_none(),
            "a full disk does not poison the shard"
        );
        // Refused appends were not staged: the end offset did not move, reads still work.
        assert_eq!(
            shard.end_offsets(partition).unwrap(),
            (Offset(acknowledged), Offset(acknowledged))
        );
        assert!(
            shard.append(partition, None, &[record]).await.is_err(),
            "still full"
        );
        let fetched = shard.fetch(partition, Offset(0), 1 << 20).await.unwrap();
        assert!(fetched.records().count() > 0);
        // Space is back: the next append prepares the segment and succeeds.
        policy.failing.store(false, Ordering::SeqCst);
        let outcome = shard
            .append(partition, Some(Offset(acknowledged)), &[record])
            .await;
        assert!(
            matches!(outcome, Ok(AppendOutcome::Appended { .. })),
            "{outcome:?}"
        );
        acknowledged += 1;
        for _ in 0..40 {
            shard.append(partition, None, &[record]).await.unwrap();
            acknowledged += 1;
        }
        shard.close().await;
        acknowledged
    });
    config.fault_hook = None;
    let engine = open_engine(config);
    run_local(move || async move {
        let shard = engine.open_shard(ShardId(0)).await.unwrap();
        let records = fetch_all(&shard, PartitionId(0)).await;
        assert_eq!(
            records.len() as u64,
            acknowledged,
            "every acknowledged record, nothing else"
        );
    });
}
