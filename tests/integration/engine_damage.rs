//! Damage in the middle of a core log is loud: the shard refuses to open, names the place
//! and changes nothing on disk; only damage a torn write can explain (the tail) is
//! truncated by itself, and `repair` truncates the rest explicitly, saying what it drops.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use cairn_engine::{
    Engine, EngineConfig, KeyCondition, Offset, OpenError, PartitionId, RecordInput, ShardId,
};

use crate::support::engine::{open_engine, run_local};
use crate::support::files_under;
use crate::support::server::CAIRN_BIN;

/// Segments larger than the tear window (one group, 4 MiB), so that damage in one segment
/// with data after it in the same segment is told from a torn tail.
const SEGMENT_SIZE_BYTES: u64 = 6 * 1024 * 1024;
const VALUE_SIZE_BYTES: usize = 100 * 1024;
/// A 100 KiB batch, written alone, takes 26 blocks: 59 of them fill a segment.
const GROUP_SIZE_ON_DISK_BYTES: u64 = 26 * 4096;
const BATCH_COUNT: u64 = 200;

fn config(dir: &Path) -> EngineConfig {
    let mut config = EngineConfig::new(dir, 1);
    config.segment_size_bytes = SEGMENT_SIZE_BYTES;
    config.group_size_bytes_max = 2 * 1024 * 1024;
    config.read_cache_bytes_max = 4 * 1024 * 1024;
    config
}

fn segment_path(dir: &Path, index: u64) -> PathBuf {
    dir.join("core-0").join(format!("{index:020}.seg"))
}

/// 200 acknowledged 100 KiB batches of one record each (offset i holds value byte i % 251),
/// one group each, over four segments.
fn write_log(dir: &Path) {
    let engine = open_engine(config(dir));
    run_local(move || async move {
        let shard = engine.open_shard(ShardId(0)).await.unwrap();
        let topic = shard.create_topic("damage", 1).unwrap();
        let partition = topic.partition_id(0).unwrap();
        for index in 0..BATCH_COUNT {
            let value = vec![(index % 251) as u8; VALUE_SIZE_BYTES];
            let record = RecordInput {
                key: b"k",
                value: &value,
                headers: &[],
                condition: KeyCondition::Any,
                ..RecordInput::default()
            };
            shard
                .append(partition, Some(Offset(index)), &[record])
                .await
                .unwrap();
        }
        shard.close().await;
    });
    assert!(segment_path(dir, 3).exists(), "the log spans four segments");
}

fn flip_bit(path: &Path, position: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[position as usize] ^= 0x10;
    std::fs::write(path, bytes).unwrap();
}

/// Every file of the data directory and its bytes' hash, to prove nothing was touched.
fn fingerprint(dir: &Path) -> BTreeMap<PathBuf, u32> {
    let mut files = BTreeMap::new();
    for entry in files_under(dir) {
        if entry
            .extension()
            .is_some_and(|extension| extension == "seg")
        {
            files.insert(
                entry.clone(),
                crc32fast::hash(&std::fs::read(&entry).unwrap()),
            );
        }
    }
    files
}

/// Opens shard 0 and returns its partition's (appended, synced) end, or the open error.
fn open_end(dir: &Path) -> Result<Offset, String> {
    let engine = Engine::open(config(dir)).map_err(|error| error.to_string())?;
    run_local(move || async move {
        match engine.open_shard(ShardId(0)).await {
            Ok(shard) => {
                let end = shard.end_offsets(PartitionId(0)).unwrap().1;
                shard.close().await;
                Ok(end)
            }
            Err(error) => {
                assert!(
                    matches!(
                        error,
                        OpenError::Damaged { .. } | OpenError::MissingSegment { .. }
                    ),
                    "a typed damage error: {error:?}"
                );
                Err(error.to_string())
            }
        }
    })
}

#[test]
fn a_flipped_bit_mid_log_stops_the_shard_from_opening_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path());
    // Inside the third batch of segment 0: acknowledged, with 197 batches after it.
    let third_batch = 4096 + 2 * GROUP_SIZE_ON_DISK_BYTES;
    flip_bit(&segment_path(dir.path(), 0), third_batch + 5000);
    let before = fingerprint(dir.path());
    for attempt in 0..2 {
        let error = open_end(dir.path()).expect_err("mid-log damage must not open");
        assert!(
            error.contains("00000000000000000000.seg") && error.contains(&third_batch.to_string()),
            "attempt {attempt}: the error names the segment and position: {error}"
        );
        assert_eq!(
            fingerprint(dir.path()),
            before,
            "attempt {attempt}: no segment was zero-filled, prepared or written"
        );
    }
}

#[test]
fn damage_in_the_last_batch_of_a_segment_with_more_segments_after_it_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path());
    // The last batch of segment 1 (59 per segment): the log goes on in segments 2 and 3.
    let last_batch = 4096 + 58 * GROUP_SIZE_ON_DISK_BYTES;
    flip_bit(&segment_path(dir.path(), 1), last_batch + 100);
    let error = open_end(dir.path()).expect_err("damage before later segments must not open");
    assert!(
        error.contains("00000000000000000001.seg") && error.contains(&last_batch.to_string()),
        "{error}"
    );
}

#[test]
fn a_missing_segment_in_the_middle_stops_the_shard_from_opening() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path());
    std::fs::remove_file(segment_path(dir.path(), 1)).unwrap();
    let before = fingerprint(dir.path());
    let error = open_end(dir.path()).expect_err("a hole in the log must not open");
    assert!(
        error.contains("00000000000000000001.seg"),
        "the error names the missing segment: {error}"
    );
    assert_eq!(fingerprint(dir.path()), before, "nothing was touched");
    assert!(
        !segment_path(dir.path(), 1).exists(),
        "the missing segment was not re-prepared"
    );
}

#[test]
fn damage_a_torn_write_explains_truncates_the_tail_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path());
    // The last batch of the log: 200 = 3 * 59 + 23, so batch 22 of segment 3.
    let last_batch = 4096 + 22 * GROUP_SIZE_ON_DISK_BYTES;
    flip_bit(&segment_path(dir.path(), 3), last_batch + 100);
    assert_eq!(open_end(dir.path()), Ok(Offset(BATCH_COUNT - 1)));
}

#[test]
fn repair_truncates_mid_log_damage_says_what_it_dropped_and_keeps_the_damaged_files() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    write_log(&data_dir);
    let third_batch = 4096 + 2 * GROUP_SIZE_ON_DISK_BYTES;
    flip_bit(&segment_path(&data_dir, 0), third_batch + 5000);
    let original: Vec<u32> = (0..4)
        .map(|index| crc32fast::hash(&std::fs::read(segment_path(&data_dir, index)).unwrap()))
        .collect();

    // The server refuses to start on it, and says where and what to do.
    let serve = Command::new(CAIRN_BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--kafka-listen",
            "127.0.0.1:0",
            "--cores",
            "1",
            "--no-pin",
        ])
        .args(["--segment-size", &SEGMENT_SIZE_BYTES.to_string()])
        .arg("--data-dir")
        .arg(&data_dir)
        .output()
        .unwrap();
    assert!(!serve.status.success());
    let stderr = String::from_utf8_lossy(&serve.stderr);
    assert!(
        stderr.contains("00000000000000000000.seg")
            && stderr.contains(&third_batch.to_string())
            && stderr.contains("cairn repair"),
        "serve explains the damage and the way out: {stderr}"
    );

    let repair = Command::new(CAIRN_BIN)
        .args(["repair", "--truncate-at-damage", "--data-dir"])
        .arg(&data_dir)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&repair.stdout);
    assert!(
        repair.status.success(),
        "repair succeeds: {report} {}",
        String::from_utf8_lossy(&repair.stderr)
    );
    assert!(
        report.contains("partition 0") && report.contains("offsets 2..200"),
        "the report names the lost offsets: {report}"
    );
    // The damaged segments are kept aside, byte for byte, for whoever investigates.
    let quarantined: Vec<u32> = files_under(&data_dir)
        .into_iter()
        .filter(|path| path.to_string_lossy().contains("damaged-"))
        .map(|path| crc32fast::hash(&std::fs::read(path).unwrap()))
        .collect();
    for crc in &original {
        assert!(quarantined.contains(crc), "every damaged segment is kept");
    }
    // Now it opens, at the end before the damage, and takes appends again.
    assert_eq!(open_end(&data_dir), Ok(Offset(2)));
    let engine = open_engine(config(&data_dir));
    run_local(move || async move {
        let shard = engine.open_shard(ShardId(0)).await.unwrap();
        let record = RecordInput {
            key: b"k",
            value: b"after repair",
            headers: &[],
            condition: KeyCondition::At(Offset(1)),
            ..RecordInput::default()
        };
        shard
            .append(PartitionId(0), Some(Offset(2)), &[record])
            .await
            .unwrap();
        shard.close().await;
    });
    assert_eq!(open_end(&data_dir), Ok(Offset(3)));
}

/// Found by the power-loss simulator: a segment prepared again in place (over bytes a torn
/// group of an earlier life left) whose new header was torn by the crash has a header that
/// does not verify in front of non-zero bytes. That is what a crash leaves, not damage.
#[test]
fn a_torn_header_over_stale_bytes_beyond_the_end_does_not_stop_the_shard() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path());
    let prepared_ahead = segment_path(dir.path(), 4);
    let mut bytes = std::fs::read(&prepared_ahead).unwrap();
    // Stale: a batch of an earlier life (a copy of one in segment 3, which chains to
    // segment 2, not to the log's end), then the header torn.
    let stale = std::fs::read(segment_path(dir.path(), 3)).unwrap();
    bytes[4096..4096 + 106_496].copy_from_slice(&stale[4096..4096 + 106_496]);
    bytes[..512].fill(0xA5);
    std::fs::write(&prepared_ahead, bytes).unwrap();
    assert_eq!(open_end(dir.path()), Ok(Offset(BATCH_COUNT)));
}
