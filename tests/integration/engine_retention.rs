//! Retention on a real disk (docs/DESIGN.md, "Retention"): a partition whose policy lets
//! its oldest batches go loses exactly those, below a log start that moves forward and is
//! answered as `BeforeLogStart`; a partition that keeps everything, sharing the same
//! segments, keeps every record byte for byte through the rewrites; keys whose records
//! were removed still exist for conditions; and all of it survives a restart from either
//! checkpoint, while a log without usable checkpoints refuses to open rather than scan.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_engine::io::stats::ShardIoStats;
use cairn_engine::{
    AppendOutcome, EngineConfig, FaultHook, FaultPoint, FaultPolicy, KeyCondition, Offset,
    OpenError, PartitionId, ReadError, RecordInput, RetentionPolicy, Shard, ShardId,
};

use cairn_engine::io::recovery::scan_data_dir;

use crate::support::engine::{open_engine, run_local, test_config};
use crate::support::{checkpoint_files, copy_tree};

/// Records written to each partition.
const RECORD_COUNT: u64 = 3_000;
const VALUE_BYTES: usize = 1_500;
/// What the short partition keeps: about one test segment and a half.
const SHORT_RETENTION_BYTES: u64 = 3 * 1024 * 1024;

fn config(dir: &Path) -> EngineConfig {
    let mut config = test_config(dir);
    config.checkpoint_interval_bytes = 256 * 1024;
    config.retention_check_interval = Duration::from_millis(20);
    config.retention_bytes_per_second = 0;
    config
}

/// `config` with retention looking only once an hour: an open that must see the log as
/// it was left, not retention going on.
fn without_retention_runs(dir: &Path) -> EngineConfig {
    let mut config = config(dir);
    config.retention_check_interval = Duration::from_secs(3600);
    config
}

fn value(partition: &str, index: u64) -> Vec<u8> {
    let mut value = format!("{partition}-{index}-").into_bytes();
    value.resize(VALUE_BYTES, b'a' + (index % 26) as u8);
    value
}

/// Every record of `partition` from `from` to its end: (offset, key, value).
async fn read_all(
    shard: &Shard,
    partition: PartitionId,
    from: Offset,
) -> Vec<(u64, Vec<u8>, Vec<u8>)> {
    let mut records = Vec::new();
    let mut next = from;
    loop {
        let fetched = shard.fetch(partition, next, 256 * 1024).await.unwrap();
        if fetched.batches.is_empty() {
            return records;
        }
        for record in fetched.records() {
            records.push((record.offset.0, record.key.to_vec(), record.value.to_vec()));
            next = record.offset.plus(1);
        }
    }
}

/// What a reader sees after retention ran: checked after the rewrites, again after a
/// restart from the newest checkpoint, and again from the older one.
async fn check_retained(shard: &Shard, keep: PartitionId, short: PartitionId) -> Offset {
    let kept = read_all(shard, keep, Offset(0)).await;
    assert_eq!(
        kept.len() as u64,
        RECORD_COUNT,
        "the forever partition lost records"
    );
    for (index, (offset, key, record_value)) in kept.iter().enumerate() {
        assert_eq!(*offset, index as u64);
        assert_eq!(key, &format!("keep-{}", index % 10).into_bytes());
        assert_eq!(
            record_value,
            &value("keep", index as u64),
            "record {index} changed"
        );
    }

    let log_start = shard.log_start(short).unwrap();
    assert!(log_start > Offset(0), "retention removed nothing");
    match shard.fetch(short, Offset(0), 1024).await {
        Err(ReadError::BeforeLogStart {
            requested: 0,
            log_start: answered,
        }) => assert_eq!(answered, log_start.0),
        other => panic!(
            "a fetch below the log start answered {:?}",
            other.map(|f| f.batches.len())
        ),
    }
    let short_records = read_all(shard, short, log_start).await;
    let first = log_start.0;
    assert_eq!(short_records.len() as u64, RECORD_COUNT - first);
    for (offset, _, record_value) in &short_records {
        assert_eq!(record_value, &value("short", *offset));
    }
    // A one-record batch of these is its value, its key and 95 bytes of headers.
    let short_bytes = (RECORD_COUNT - first) * (VALUE_BYTES as u64 + 95 + 7);
    assert!(
        short_bytes >= SHORT_RETENTION_BYTES,
        "retention removed more than the policy allows: {short_bytes} bytes kept"
    );

    // "old" was written only at the start: its records are gone, the key is not.
    let removed_key = b"old".as_slice();
    match shard.read_key(short, removed_key, false).await {
        Err(ReadError::BeforeLogStart { requested, .. }) => assert_eq!(requested, 0),
        other => panic!("reading a removed key's latest record answered {other:?}"),
    }
    let no_key = [RecordInput {
        key: removed_key,
        value: b"again",
        condition: KeyCondition::NoKey,
        ..RecordInput::default()
    }];
    let outcome = shard.append(short, None, &no_key).await.unwrap();
    assert!(
        matches!(outcome, AppendOutcome::ConditionFailed(_)),
        "no_key passed for a key whose records retention removed: {outcome:?}"
    );
    // The history of a key whose oldest records went ends at the log start.
    let history = shard
        .key_history(short, b"short-0", None, usize::MAX, usize::MAX)
        .await
        .unwrap();
    assert!(history.iter().all(|record| record.offset >= log_start));
    assert!(!history.is_empty());
    log_start
}

/// Appends one record to `partition`, unconditionally.
async fn append_one(shard: &Shard, partition: PartitionId, key: &[u8], value: &[u8]) {
    let records = [RecordInput {
        key,
        value,
        ..RecordInput::default()
    }];
    shard.append(partition, None, &records).await.unwrap();
}

/// Two partitions written side by side, so every segment holds both: "keep" keeps
/// everything, "short" keeps `SHORT_RETENTION_BYTES`; "old" is a key of "short" written
/// only first.
async fn write_workload(shard: &Shard) -> (PartitionId, PartitionId) {
    let keep = shard
        .create_topic("keep", 1)
        .unwrap()
        .partition_id(0)
        .unwrap();
    let short = shard
        .create_topic("short", 1)
        .unwrap()
        .partition_id(0)
        .unwrap();
    set_short_retention(shard);
    let old = [RecordInput {
        key: b"old",
        value: b"only at the start",
        condition: KeyCondition::NoKey,
        ..RecordInput::default()
    }];
    shard.append(short, None, &old).await.unwrap();
    for index in 0..RECORD_COUNT {
        let keep_key = format!("keep-{}", index % 10).into_bytes();
        append_one(shard, keep, &keep_key, &value("keep", index)).await;
        if index + 1 < RECORD_COUNT {
            let short_key = format!("short-{}", index % 10).into_bytes();
            append_one(shard, short, &short_key, &value("short", index + 1)).await;
        }
    }
    (keep, short)
}

/// Gives topic "short" its retention the way a user does: in the catalog, durably.
fn set_short_retention(shard: &Shard) {
    shard
        .set_topic_retention(
            "short",
            RetentionPolicy {
                ms: None,
                bytes: Some(SHORT_RETENTION_BYTES),
            },
        )
        .unwrap();
}

async fn wait_for_rewrites(shard: &Shard, count: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while ShardIoStats::load(&shard.io_stats().retention_rewrites) < count {
        assert!(
            Instant::now() < deadline,
            "retention never rewrote a segment"
        );
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn retention_removes_a_partitions_oldest_batches_and_copies_its_neighbours_forward() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_owned();
    let (keep, short, log_start) = run_local({
        let data_dir = data_dir.clone();
        move || async move {
            let engine = open_engine(config(&data_dir));
            let shard = engine.open_shard(ShardId(0)).await.unwrap();
            let (keep, short) = write_workload(&shard).await;
            wait_for_rewrites(&shard, 2).await;
            let log_start = check_retained(&shard, keep, short).await;
            assert!(ShardIoStats::load(&shard.io_stats().retention_copied_bytes) > 0);
            shard.close().await;
            (keep, short, log_start)
        }
    });

    // A restart resumes from a checkpoint, whichever generation of each segment it saw.
    let reopened_start = run_local({
        let data_dir = data_dir.clone();
        move || async move {
            let engine = open_engine(config(&data_dir));
            let shard = engine.open_shard(ShardId(0)).await.unwrap();
            assert!(shard.recovered_from_checkpoint().is_some());
            let start = check_retained(&shard, keep, short).await;
            shard.close().await;
            start
        }
    });
    assert!(
        reopened_start >= log_start,
        "the log start went back after a restart"
    );

    // The older checkpoint, taken before some rewrites, reconciles with them.
    let checkpoints = checkpoint_files(&data_dir);
    assert_eq!(checkpoints.len(), 2);
    std::fs::remove_file(&checkpoints[0]).unwrap();
    run_local({
        let data_dir = data_dir.clone();
        move || async move {
            let engine = open_engine(without_retention_runs(&data_dir));
            let shard = engine.open_shard(ShardId(0)).await.unwrap();
            check_retained(&shard, keep, short).await;
            shard.close().await;
        }
    });

    // `cairn check` opens it as serve would and also verifies the segments that open
    // skips: clean now; a bit flipped inside a rewritten segment is damage, by place.
    let (_, scans) = scan_data_dir(&data_dir, &mut |_, _, _, _, _| {}).unwrap();
    assert!(scans[0].damage.is_none(), "{:?}", scans[0].damage);
    let segment = data_dir.join("core-0").join(format!("{:020}.seg", 0));
    let mut bytes = std::fs::read(&segment).unwrap();
    assert!(
        u16::from_le_bytes([bytes[14], bytes[15]]) > 0,
        "segment 0 was rewritten"
    );
    bytes[4096 + 200] ^= 0x10;
    std::fs::write(&segment, &bytes).unwrap();
    let (_, scans) = scan_data_dir(&data_dir, &mut |_, _, _, _, _| {}).unwrap();
    match &scans[0].damage {
        Some(OpenError::CoveredDamage { path, position, .. }) => {
            assert_eq!((path, *position), (&segment, 4096));
        }
        other => panic!("a flipped bit in a rewritten segment: {other:?}"),
    }

    refused_without_checkpoints(data_dir);
}

/// A crash can leave a rewrite half swapped in: the new segment beside the old index (the
/// index is renamed second). Every such state, for every segment retention rewrote, opens
/// from the checkpoints of before the rewrite and serves exactly what a reader must see.
#[test]
fn a_crash_between_a_rewritten_segment_and_its_index_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let before = dir.path().join("before");
    let after = dir.path().join("after");
    let (keep, short) = run_local({
        let before = before.clone();
        move || async move {
            let engine = open_engine(without_retention_runs(&before));
            let shard = engine.open_shard(ShardId(0)).await.unwrap();
            let ids = write_workload(&shard).await;
            shard.close().await;
            ids
        }
    });
    copy_tree(&before, &after, |_| true);
    run_local({
        let after = after.clone();
        move || async move {
            let engine = open_engine(config(&after));
            let shard = engine.open_shard(ShardId(0)).await.unwrap();
            // The policy set before the restart is in the catalog.
            assert!(
                shard
                    .partition_retention(short)
                    .is_some_and(|policy| !policy.is_forever())
            );
            wait_for_rewrites(&shard, 2).await;
            shard.close().await;
        }
    });
    let shard_dir = |root: &Path| root.join("core-0");
    let mut rewritten: Vec<String> = std::fs::read_dir(shard_dir(&after))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".seg"))
        .filter(|name| {
            std::fs::read(shard_dir(&after).join(name)).unwrap()
                != std::fs::read(shard_dir(&before).join(name)).unwrap()
        })
        .collect();
    // Rewrites go oldest first, as names sort.
    rewritten.sort();
    assert!(rewritten.len() >= 2, "rewritten: {rewritten:?}");
    for (case, name) in rewritten.iter().enumerate() {
        // The crash came after this segment's rename and before its index's, with the
        // segments rewritten before it complete.
        let crashed = dir.path().join(format!("crashed-{case}"));
        copy_tree(&before, &crashed, |_| true);
        for earlier in &rewritten[..case] {
            for file in [earlier.clone(), format!("{earlier}.index")] {
                std::fs::copy(
                    shard_dir(&after).join(&file),
                    shard_dir(&crashed).join(&file),
                )
                .unwrap();
            }
        }
        std::fs::copy(shard_dir(&after).join(name), shard_dir(&crashed).join(name)).unwrap();
        run_local(move || async move {
            let engine = open_engine(without_retention_runs(&crashed));
            let shard = engine.open_shard(ShardId(0)).await.unwrap();
            assert!(shard.recovered_from_checkpoint().is_some());
            check_retained(&shard, keep, short).await;
            shard.close().await;
        });
    }
}

/// A log whose only partition lets its oldest batches go loses its first segments' files:
/// the log start file says where the log begins now, a restart opens from there (and
/// removes a file a crash left behind it), and without checkpoints it refuses to open.
#[test]
fn segments_nothing_is_kept_in_are_removed_from_the_front() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_owned();
    let shard_dir = data_dir.join("core-0");
    let before_removal = dir.path().join("segment-0");
    let short = run_local({
        let data_dir = data_dir.clone();
        let before_removal = before_removal.clone();
        move || async move {
            let engine = open_engine(config(&data_dir));
            let shard = engine.open_shard(ShardId(0)).await.unwrap();
            let short = shard
                .create_topic("short", 1)
                .unwrap()
                .partition_id(0)
                .unwrap();
            set_short_retention(&shard);
            for index in 0..RECORD_COUNT * 2 {
                append_one(&shard, short, b"k", &value("short", index)).await;
                if index == 0 {
                    let segment = data_dir.join("core-0").join(format!("{:020}.seg", 0));
                    std::fs::copy(&segment, &before_removal).unwrap();
                }
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            while ShardIoStats::load(&shard.io_stats().retention_removed_segments) < 2 {
                assert!(Instant::now() < deadline, "no segment was removed");
                glommio::timer::sleep(Duration::from_millis(20)).await;
            }
            shard.close().await;
            short
        }
    });
    let first_segment = |dir: &Path| {
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|entry| {
                let name = entry.unwrap().file_name().into_string().unwrap();
                name.strip_suffix(".seg")
                    .map(|index| index.parse::<u64>().unwrap())
            })
            .min()
            .unwrap()
    };
    let first = first_segment(&shard_dir);
    assert!(first >= 2, "the first segments are still there");
    let log_start_file = std::fs::read_to_string(shard_dir.join("log-start")).unwrap();
    assert!(
        log_start_file.starts_with(&format!("first_segment {first}\n")),
        "{log_start_file}"
    );

    // A crash after the log start moved and before the file went leaves it behind.
    std::fs::copy(&before_removal, shard_dir.join(format!("{:020}.seg", 0))).unwrap();
    let log_start = run_local({
        let data_dir = data_dir.clone();
        move || async move {
            let engine = open_engine(without_retention_runs(&data_dir));
            let shard = engine.open_shard(ShardId(0)).await.unwrap();
            let log_start = shard.log_start(short).unwrap();
            assert!(log_start > Offset(0));
            let records = read_all(&shard, short, log_start).await;
            assert_eq!(records.len() as u64, RECORD_COUNT * 2 - log_start.0);
            for (offset, _, record_value) in &records {
                assert_eq!(record_value, &value("short", *offset));
            }
            shard.close().await;
            log_start
        }
    });
    assert_eq!(first_segment(&shard_dir), first, "the leftover was removed");
    assert!(log_start.0 > 0);

    refused_without_checkpoints(data_dir);
}

/// Fails every index file write: sealed segments stay unsealed, as on a full disk.
struct NoIndexWrites;

impl FaultPolicy for NoIndexWrites {
    fn fail(&self, point: FaultPoint, _path: &Path) -> Option<i32> {
        (point == FaultPoint::IndexWrite).then_some(28)
    }
}

/// A checkpoint captured while sealed segments' index writes were failing holds their
/// batches unsealed; once those segments are indexed and then rewritten by retention, a
/// restart from that checkpoint seals them against the rewritten index and reconciles them
/// like any run.
#[test]
fn a_checkpoint_holding_unsealed_batches_of_a_rewritten_segment_still_opens() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let saved_dir = dir.path().join("saved");
    std::fs::create_dir(&saved_dir).unwrap();
    let (keep, short) = run_local({
        let (data_dir, saved_dir) = (data_dir.clone(), saved_dir.clone());
        move || async move {
            let mut failing = config(&data_dir);
            failing.fault_hook = Some(FaultHook(Arc::new(NoIndexWrites)));
            let engine = open_engine(failing);
            let shard = engine.open_shard(ShardId(0)).await.unwrap();
            let ids = write_workload(&shard).await;
            assert!(
                shard.index_pending_count() >= 2,
                "index writes were not failing"
            );
            shard.close().await;
            let newest = checkpoint_files(&data_dir).remove(0);
            std::fs::copy(&newest, saved_dir.join(newest.file_name().unwrap())).unwrap();
            ids
        }
    });
    run_local({
        let data_dir = data_dir.clone();
        move || async move {
            let engine = open_engine(config(&data_dir));
            let shard = engine.open_shard(ShardId(0)).await.unwrap();
            // Only the forever topic grows: what retention may remove is "short"'s oldest
            // runs, in segments the saved checkpoint covers.
            for index in RECORD_COUNT..RECORD_COUNT + 2_000 {
                append_one(&shard, keep, b"keep-0", &value("keep", index)).await;
            }
            wait_for_rewrites(&shard, 1).await;
            shard.close().await;
        }
    });
    for checkpoint in checkpoint_files(&data_dir) {
        std::fs::remove_file(checkpoint).unwrap();
    }
    copy_tree(&saved_dir, &data_dir.join("core-0"), |_| true);
    run_local(move || async move {
        let engine = open_engine(without_retention_runs(&data_dir));
        let shard = engine.open_shard(ShardId(0)).await.unwrap();
        assert!(shard.recovered_from_checkpoint().is_some());
        let kept = read_all(&shard, keep, Offset(0)).await;
        assert_eq!(kept.len() as u64, RECORD_COUNT + 2_000);
        for (offset, _, record_value) in &kept {
            assert_eq!(record_value, &value("keep", *offset), "keep@{offset}");
        }
        let log_start = shard.log_start(short).unwrap();
        assert!(
            log_start > Offset(0),
            "the rewrite's removal was not reconciled"
        );
        let short_records = read_all(&shard, short, log_start).await;
        assert_eq!(short_records.len() as u64, RECORD_COUNT - log_start.0);
        for (offset, _, record_value) in &short_records {
            assert_eq!(record_value, &value("short", *offset));
        }
        shard.close().await;
    });
}

/// Without checkpoints, what the removed batches left is unknown: the shard refuses to open
/// rather than scan what is left.
fn refused_without_checkpoints(data_dir: std::path::PathBuf) {
    for checkpoint in checkpoint_files(&data_dir) {
        std::fs::remove_file(checkpoint).unwrap();
    }
    let refused = run_local(move || async move {
        let engine = open_engine(config(&data_dir));
        engine.open_shard(ShardId(0)).await.err()
    });
    assert!(
        matches!(refused, Some(OpenError::CheckpointRequired { .. })),
        "opened without checkpoints: {refused:?}"
    );
}
