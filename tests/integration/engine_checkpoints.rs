//! Checkpoints on a real disk (docs/DESIGN.md §3.7): a shard reopened from its newest
//! checkpoint holds exactly what a scan of its whole log gives, and a checkpoint that is
//! damaged, torn, or another log's is passed over, never believed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cairn_engine::io::stats::ShardIoStats;
use cairn_engine::{
    AppendOutcome, EngineConfig, FaultHook, FaultPoint, FaultPolicy, KeyCondition, Offset,
    PartitionId, ProducerStamp, RecordInput, Shard, ShardId,
};

use crate::support::engine::{open_engine, run_local, test_config};
use crate::support::{TestRng, checkpoint_files, copy_tree, test_seed};

const PARTITION_COUNT: u32 = 3;

/// Per partition index, its last stamped batch: the stamp, its records, its base offset.
type LastStamped = BTreeMap<u32, (ProducerStamp, Vec<KeyValue>, Offset)>;
type KeyValue = (Vec<u8>, Vec<u8>);
/// A partition's records as fetched: offset, key, value.
type Fetched = Vec<(u64, Vec<u8>, Vec<u8>)>;
const KEY_COUNT: u64 = 40;

fn config(dir: &Path) -> EngineConfig {
    let mut config = test_config(dir);
    // Every 16 one-block groups, so a workload of a few hundred appends leaves several.
    config.checkpoint_interval_bytes = 64 * 1024;
    config
}

fn shard_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("core-0")
}

fn without_checkpoints(path: &Path) -> bool {
    path.extension().is_none_or(|extension| extension != "ckpt")
}

/// Appends `batch_count` batches, one at a time so that every one is its own group: keys
/// drawn from a few dozen, conditions on each key's latest offset (or `no_key`), and every
/// third batch stamped by an idempotent producer. Returns the last stamped batch of each
/// partition, for retrying it later.
async fn write_workload(shard: &Shard, batch_count: u64, seed: u64) -> LastStamped {
    let topic = shard.create_topic("checkpointed", PARTITION_COUNT).unwrap();
    let partitions: Vec<PartitionId> = (0..PARTITION_COUNT)
        .map(|index| topic.partition_id(index).unwrap())
        .collect();
    let producer_id = shard.allocate_producer_id().await.unwrap();
    let mut sequences = BTreeMap::new();
    let mut stamped = BTreeMap::new();
    let mut rng = TestRng::new(seed);
    for batch in 0..batch_count {
        let partition_index = rng.below(u64::from(PARTITION_COUNT)) as u32;
        let partition = partitions[partition_index as usize];
        let record_count = 1 + rng.below(3) as usize;
        let mut owned: Vec<(Vec<u8>, Vec<u8>, KeyCondition)> = Vec::new();
        for index in 0..record_count {
            let key = format!("key-{}", rng.below(KEY_COUNT)).into_bytes();
            let value =
                format!("b{batch}-r{index}-{}", "v".repeat(rng.below(300) as usize)).into_bytes();
            let in_batch = owned.iter().any(|(earlier, _, _)| *earlier == key);
            let condition = if in_batch {
                KeyCondition::Any
            } else {
                match shard.read_key(partition, &key, true).await.unwrap() {
                    Some(latest) => KeyCondition::At(latest.offset),
                    None => KeyCondition::NoKey,
                }
            };
            owned.push((key, value, condition));
        }
        let records: Vec<RecordInput<'_>> = owned
            .iter()
            .map(|(key, value, condition)| RecordInput {
                key,
                value,
                condition: *condition,
                timestamp_ms: Some(1_000_000 + batch as i64),
                ..RecordInput::default()
            })
            .collect();
        let producer = (batch % 3 == 0).then(|| {
            let sequence: &mut i32 = sequences.entry(partition_index).or_insert(0);
            let stamp = ProducerStamp {
                producer_id,
                epoch: 0,
                base_sequence: *sequence,
            };
            *sequence += record_count as i32;
            stamp
        });
        let outcome = shard
            .append_as(partition, None, &records, producer)
            .await
            .unwrap();
        let AppendOutcome::Appended { base_offset, .. } = outcome else {
            panic!("batch {batch} of a single writer was refused: {outcome:?}");
        };
        if let Some(stamp) = producer {
            let kept = owned
                .iter()
                .map(|(key, value, _)| (key.clone(), value.clone()))
                .collect();
            stamped.insert(partition_index, (stamp, kept, base_offset));
        }
    }
    stamped
}

/// Everything a reopened shard answers that recovery rebuilt: every record, every key's
/// latest offset and history, the earliest offset per timestamp, and how the retry of each
/// partition's last stamped batch is answered.
#[derive(Debug, PartialEq, Eq)]
struct Observed {
    records: BTreeMap<u32, Fetched>,
    latest: BTreeMap<(u32, Vec<u8>), (u64, Vec<u64>)>,
    by_timestamp: BTreeMap<u32, Vec<Option<u64>>>,
    retries: BTreeMap<u32, String>,
}

async fn observe(shard: &Shard, stamped: &LastStamped) -> Observed {
    let topic = shard.topic("checkpointed").unwrap();
    let mut observed = Observed {
        records: BTreeMap::new(),
        latest: BTreeMap::new(),
        by_timestamp: BTreeMap::new(),
        retries: BTreeMap::new(),
    };
    for index in 0..PARTITION_COUNT {
        let partition = topic.partition_id(index).unwrap();
        let mut records = Vec::new();
        let mut from = Offset(0);
        loop {
            let fetched = shard.fetch(partition, from, 64 * 1024).await.unwrap();
            if fetched.batches.is_empty() {
                break;
            }
            for record in fetched.records() {
                records.push((record.offset.0, record.key.to_vec(), record.value.to_vec()));
                from = record.offset.plus(1);
            }
        }
        for key in 0..KEY_COUNT {
            let key = format!("key-{key}").into_bytes();
            if let Some(latest) = shard.read_key(partition, &key, false).await.unwrap() {
                let history = shard
                    .key_history(partition, &key, None, usize::MAX, usize::MAX)
                    .await
                    .unwrap()
                    .iter()
                    .map(|record| record.offset.0)
                    .collect();
                observed
                    .latest
                    .insert((index, key), (latest.offset.0, history));
            }
        }
        let mut by_timestamp = Vec::new();
        for timestamp_ms in (1_000_000..1_000_000 + 400).step_by(37) {
            let found = shard
                .offset_for_timestamp(partition, timestamp_ms)
                .await
                .unwrap();
            by_timestamp.push(found.map(|(offset, _)| offset.0));
        }
        observed.by_timestamp.insert(index, by_timestamp);
        observed.records.insert(index, records);
    }
    for (index, (stamp, records, original)) in stamped {
        let partition = topic.partition_id(*index).unwrap();
        let inputs: Vec<RecordInput<'_>> = records
            .iter()
            .map(|(key, value)| RecordInput {
                key,
                value,
                ..RecordInput::default()
            })
            .collect();
        let outcome = shard
            .append_as(partition, None, &inputs, Some(*stamp))
            .await;
        if let Ok(AppendOutcome::Duplicate { base_offset, .. }) = &outcome {
            assert_eq!(
                base_offset, original,
                "a retry is answered with its original"
            );
        }
        observed.retries.insert(*index, format!("{outcome:?}"));
    }
    observed
}

/// Opens the shard of `data_dir` and observes it; also says which checkpoint it used.
fn reopen(data_dir: &Path, stamped: &LastStamped) -> (Option<PathBuf>, Observed) {
    let engine = open_engine(config(data_dir));
    let stamped = stamped.clone();
    run_local(move || async move {
        let shard = engine.open_shard(ShardId(0)).await.unwrap();
        let used = shard.recovered_from_checkpoint().map(Path::to_owned);
        let observed = observe(&shard, &stamped).await;
        shard.close().await;
        (used, observed)
    })
}

fn write(data_dir: &Path, batch_count: u64, seed: u64) -> LastStamped {
    let engine = open_engine(config(data_dir));
    run_local(move || async move {
        let shard = engine.open_shard(ShardId(0)).await.unwrap();
        let stamped = write_workload(&shard, batch_count, seed).await;
        shard.close().await;
        stamped
    })
}

/// What a full scan of the log recovers: the same directory without its checkpoints.
fn observe_by_full_scan(data_dir: &Path, stamped: &LastStamped) -> Observed {
    let scratch = tempfile::tempdir().unwrap();
    let copy = scratch.path().join("data");
    copy_tree(data_dir, &copy, without_checkpoints);
    let (used, observed) = reopen(&copy, stamped);
    assert_eq!(used, None, "without checkpoints the whole log is scanned");
    observed
}

#[test]
fn a_shard_reopened_from_its_checkpoint_holds_what_a_scan_of_its_whole_log_gives() {
    let dir = tempfile::tempdir().unwrap();
    let stamped = write(dir.path(), 600, test_seed("checkpoint_equivalence"));
    let files = checkpoint_files(dir.path());
    assert!(
        (1..=2).contains(&files.len()),
        "checkpoints were taken and older ones removed: {files:?}"
    );
    let index_files = std::fs::read_dir(shard_dir(dir.path()))
        .unwrap()
        .filter(|entry| {
            let name = entry.as_ref().unwrap().file_name();
            name.to_string_lossy().ends_with(".index")
        })
        .count();
    assert!(
        index_files > 0,
        "the log rolled, so the newest checkpoint holds sealed segments too"
    );

    let expected = observe_by_full_scan(dir.path(), &stamped);
    assert!(
        expected.records.values().map(Vec::len).sum::<usize>() > 600,
        "the workload wrote what it should"
    );
    assert!(
        expected
            .retries
            .values()
            .all(|retry| retry.starts_with("Ok(Duplicate")),
        "producer retries are recognised: {:?}",
        expected.retries
    );
    let (used, observed) = reopen(dir.path(), &stamped);
    assert_eq!(
        used.as_ref(),
        files.first(),
        "opening resumed from the newest checkpoint"
    );
    assert_eq!(observed, expected);

    // Conditions after the restart see the restored key index: a key that exists is not
    // new, and its latest offset is what the full scan found.
    let engine = open_engine(config(dir.path()));
    let (existing_key, latest) = expected
        .latest
        .iter()
        .find(|((partition, _), _)| *partition == 0)
        .map(|((_, key), (latest, _))| (key.clone(), *latest))
        .unwrap();
    run_local(move || async move {
        let shard = engine.open_shard(ShardId(0)).await.unwrap();
        let partition = shard
            .topic("checkpointed")
            .unwrap()
            .partition_id(0)
            .unwrap();
        let record = |condition| RecordInput {
            key: &existing_key,
            value: b"after",
            condition,
            ..RecordInput::default()
        };
        let outcome = shard
            .append(partition, None, &[record(KeyCondition::NoKey)])
            .await
            .unwrap();
        assert!(
            matches!(outcome, AppendOutcome::ConditionFailed(_)),
            "no_key on a key the checkpoint holds: {outcome:?}"
        );
        let outcome = shard
            .append(partition, None, &[record(KeyCondition::At(Offset(latest)))])
            .await
            .unwrap();
        assert!(
            matches!(outcome, AppendOutcome::Appended { .. }),
            "at(latest) of the restored key: {outcome:?}"
        );
        shard.close().await;
    });
}

#[test]
fn a_damaged_torn_or_foreign_checkpoint_is_passed_over_for_an_older_one_or_a_full_scan() {
    let dir = tempfile::tempdir().unwrap();
    let stamped = write(dir.path(), 400, test_seed("checkpoint_fallback"));
    let files = checkpoint_files(dir.path());
    assert_eq!(files.len(), 2, "two checkpoints are kept: {files:?}");
    let expected = observe_by_full_scan(dir.path(), &stamped);

    // A flipped bit in the middle of the newest: the one before it is used.
    let mut bytes = std::fs::read(&files[0]).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(&files[0], &bytes).unwrap();
    let (used, observed) = reopen(dir.path(), &stamped);
    assert_eq!(
        used.as_ref(),
        Some(&files[1]),
        "the older checkpoint is used"
    );
    assert_eq!(observed, expected);

    // Both torn (cut short): the whole log is scanned.
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        std::fs::write(file, &bytes[..bytes.len() / 3]).unwrap();
    }
    let (used, observed) = reopen(dir.path(), &stamped);
    assert_eq!(used, None, "no torn checkpoint is used");
    assert_eq!(observed, expected);

    // Another log's checkpoint, well-formed and named as if it were this log's newest: its
    // last batch is not in this log, so it is refused.
    let other = tempfile::tempdir().unwrap();
    write(other.path(), 400, test_seed("checkpoint_fallback") ^ 1);
    for file in &files {
        std::fs::remove_file(file).unwrap();
    }
    let foreign = checkpoint_files(other.path()).remove(0);
    std::fs::copy(
        &foreign,
        shard_dir(dir.path()).join(foreign.file_name().unwrap()),
    )
    .unwrap();
    let (used, observed) = reopen(dir.path(), &stamped);
    assert_eq!(used, None, "another log's checkpoint is not believed");
    assert_eq!(observed, expected);
}

/// Fails every checkpoint write, as a full disk would, and counts the attempts.
struct NoCheckpointWrites(AtomicU64);

impl FaultPolicy for NoCheckpointWrites {
    fn fail(&self, point: FaultPoint, _path: &Path) -> Option<i32> {
        (point == FaultPoint::CheckpointWrite).then(|| {
            self.0.fetch_add(1, Ordering::Relaxed);
            28
        })
    }
}

#[test]
fn failed_checkpoint_writes_stop_no_append_and_are_tried_again_only_an_interval_later() {
    let dir = tempfile::tempdir().unwrap();
    let mut failing = config(dir.path());
    let policy = Arc::new(NoCheckpointWrites(AtomicU64::new(0)));
    failing.fault_hook = Some(FaultHook(policy.clone()));
    let interval_bytes = failing.checkpoint_interval_bytes;
    let engine = open_engine(failing);
    let (written_bytes, failures, written) = run_local(move || async move {
        let shard = engine.open_shard(ShardId(0)).await.unwrap();
        // Every append of the workload must succeed (it panics otherwise).
        write_workload(&shard, 600, test_seed("checkpoint_failures")).await;
        shard.close().await;
        let stats = shard.io_stats();
        (
            shard.stats().written_bytes,
            ShardIoStats::load(&stats.checkpoint_failures),
            ShardIoStats::load(&stats.checkpoints_written),
        )
    });
    assert_eq!(written, 0, "no checkpoint could be written");
    assert!(
        checkpoint_files(dir.path()).is_empty(),
        "and none is on disk"
    );
    let attempts = policy.0.load(Ordering::Relaxed);
    assert_eq!(failures, attempts, "every failed write is counted");
    // One attempt per interval of log, not one per group: 600 groups here.
    let intervals = written_bytes / interval_bytes;
    assert!(
        attempts >= 2 && attempts <= intervals + 1,
        "{attempts} attempts over {written_bytes} bytes of log ({intervals} intervals)"
    );

    // Without checkpoints the next open scans the whole log, and writes them again.
    let engine = open_engine(config(dir.path()));
    let records = run_local(move || async move {
        let shard = engine.open_shard(ShardId(0)).await.unwrap();
        assert_eq!(shard.recovered_from_checkpoint(), None);
        let topic = shard.topic("checkpointed").unwrap();
        let mut records = 0;
        for index in 0..PARTITION_COUNT {
            let (_, synced_end) = shard
                .end_offsets(topic.partition_id(index).unwrap())
                .unwrap();
            records += synced_end.0;
        }
        shard.close().await;
        records
    });
    assert!(records > 600, "every batch is there: {records} records");
}
