//! Question: how long does a shard take to open (recover) a log of N records over K keys,
//! and how much memory do its indexes hold afterwards?
//!
//! Writes N records (default 10 million, 100-byte values, `--batch` records per append,
//! keys drawn round-robin from K = 1 million) through the real engine on one shard, closes
//! it, then times `open_shard`: reading every segment with O_DIRECT, scanning and verifying
//! every batch, rebuilding the key index and the offset index. A regression is a slower
//! open or more index bytes per record for the same N, K and batch size.
//!
//! `--checkpoint-interval BYTES` sets how often the writer checkpoints its state (the
//! engine's default, 128 MiB, when absent; 0: never, so the open scans the whole log).
//!
//! Run: `cargo bench --bench restart -- --records 10000000 --keys 1000000 --batch 1`.
//! Needs ~3 GB of free disk for the default (set CAIRN_BENCH_DIR to choose where).
//!
//! Also printed: the offset index's bytes per record after the open (sealed segments are
//! summarised through their index files, FORMAT.md "Segment index file") and the process's
//! resident memory. `--dense` deletes the index files and fails every index write before
//! the timed open, so every batch stays in memory: the figure without index files.

use std::rc::Rc;
use std::time::Instant;

use std::path::Path;
use std::sync::Arc;

use cairn_engine::io::stats::ShardIoStats;
use cairn_engine::{
    Engine, EngineConfig, FaultHook, FaultPoint, FaultPolicy, KeyCondition, PartitionId,
    RecordInput, ShardId,
};
use glommio::{LocalExecutorBuilder, Placement};

fn flag(arguments: &[String], name: &str, default: u64) -> u64 {
    arguments
        .iter()
        .position(|argument| argument == name)
        .and_then(|index| arguments.get(index + 1))
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// Fails every index write (`--dense`).
struct NoIndexWrites;

impl FaultPolicy for NoIndexWrites {
    fn fail(&self, point: FaultPoint, _path: &Path) -> Option<i32> {
        (point == FaultPoint::IndexWrite).then_some(28)
    }
}

/// This process's resident memory (VmRSS), in bytes.
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|value| {
                    value
                        .trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        })
        .map_or(0, |kib| kib * 1024)
}

fn main() {
    let arguments: Vec<String> = std::env::args().collect();
    if arguments.iter().any(|argument| argument == "--list") {
        return;
    }
    let record_count = flag(&arguments, "--records", 10_000_000);
    let key_count = flag(&arguments, "--keys", 1_000_000);
    let batch_record_count = flag(&arguments, "--batch", 1).max(1);
    let appender_count = 512u64;
    let dir = tempfile::tempdir_in(std::env::var("CAIRN_BENCH_DIR").unwrap_or_else(|_| ".".into()))
        .expect("bench temp dir");
    let mut config = EngineConfig::new(dir.path(), 1);
    config.segment_size_bytes = 256 * 1024 * 1024;
    config.checkpoint_interval_bytes = flag(
        &arguments,
        "--checkpoint-interval",
        config.checkpoint_interval_bytes,
    );

    let engine = Engine::open(config.clone()).expect("engine opens");
    let written = Instant::now();
    let (captures, checkpoints_written) = LocalExecutorBuilder::new(Placement::Fixed(0))
        .io_memory(8 * 1024 * 1024)
        .spawn(move || async move {
            let shard = Rc::new(engine.open_shard(ShardId(0)).await.expect("shard opens"));
            let topic = shard.create_topic("restart", 1).expect("topic");
            let partition = topic.partition_id(0).expect("partition 0");
            let batches_per_appender = record_count / batch_record_count / appender_count;
            let mut tasks = Vec::new();
            for appender in 0..appender_count {
                let shard = shard.clone();
                tasks.push(glommio::spawn_local(async move {
                    let value = [b'v'; 100];
                    let mut keys = Vec::new();
                    for batch in 0..batches_per_appender {
                        keys.clear();
                        for index in 0..batch_record_count {
                            let record =
                                (batch * appender_count + appender) * batch_record_count + index;
                            keys.push(format!("key-{:012}", record % key_count));
                        }
                        let records: Vec<RecordInput<'_>> = keys
                            .iter()
                            .map(|key| RecordInput {
                                key: key.as_bytes(),
                                value: &value,
                                headers: &[],
                                condition: KeyCondition::Any,
                                ..RecordInput::default()
                            })
                            .collect();
                        shard
                            .append(partition, None, &records)
                            .await
                            .expect("append");
                    }
                }));
            }
            for task in tasks {
                task.await;
            }
            let shard = Rc::try_unwrap(shard).ok().expect("appenders are done");
            shard.close().await;
            let stats = shard.io_stats();
            (
                stats.checkpoint_capture_us.snapshot(),
                ShardIoStats::load(&stats.checkpoints_written),
            )
        })
        .expect("writer starts")
        .join()
        .expect("writer finishes");
    // What checkpoints cost the writer: the pause of each capture on the shard.
    let capture_ms_mean = captures.sum as f64 / captures.count.max(1) as f64 / 1000.0;
    let capture_ms_max = captures
        .buckets
        .iter()
        .rev()
        .find(|(_, count)| *count > 0)
        .map_or(0.0, |(bound, _)| {
            bound.map_or(f64::INFINITY, |bound| bound as f64 / 1000.0)
        });
    let write_seconds = written.elapsed().as_secs_f64();
    let bytes_of = |suffix: &str| -> u64 {
        std::fs::read_dir(dir.path().join("core-0"))
            .expect("shard dir")
            .filter_map(|entry| {
                let entry = entry.ok()?;
                let named = entry.file_name().to_string_lossy().ends_with(suffix);
                named.then(|| entry.metadata().ok()).flatten()
            })
            .map(|metadata| metadata.len())
            .sum()
    };
    let log_bytes = bytes_of(".seg");
    let checkpoint_bytes = bytes_of(".ckpt");

    let dense = arguments.iter().any(|argument| argument == "--dense");
    let mut config = config;
    let index_file_count = std::fs::read_dir(dir.path().join("core-0"))
        .expect("shard dir")
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().ends_with(".index"))
        .inspect(|entry| {
            if dense {
                std::fs::remove_file(entry.path()).expect("index file removed");
            }
        })
        .count();
    if dense {
        config.fault_hook = Some(FaultHook(Arc::new(NoIndexWrites)));
    }
    let written = format!(
        "keys={key_count} batch={batch_record_count} segment_bytes_on_disk={log_bytes} \
         write_s={write_seconds:.1} index_files={index_file_count} dense={dense} \
         checkpoint_bytes={checkpoint_bytes} checkpoints_written={checkpoints_written} \
         capture_ms_mean={capture_ms_mean:.2} capture_ms_max_bucket={capture_ms_max:.2}"
    );
    open_and_report(&config, key_count, &written);
    if arguments
        .iter()
        .any(|argument| argument == "--full-scan-too")
    {
        // The same log opened again without its checkpoints: what a restart costs
        // without them (and what every restart cost before them).
        for entry in std::fs::read_dir(dir.path().join("core-0")).expect("shard dir") {
            let path = entry.expect("shard dir entry").path();
            if path
                .extension()
                .is_some_and(|extension| extension == "ckpt")
            {
                std::fs::remove_file(&path).expect("checkpoint removed");
            }
        }
        open_and_report(&config, key_count, &written);
    }
}

/// Opens shard 0 of `config`, timed, and prints one line of figures after `written`'s.
fn open_and_report(config: &EngineConfig, key_count: u64, written: &str) {
    let resident_bytes_before = resident_bytes();
    let engine = Engine::open(config.clone()).expect("engine reopens");
    let (open_seconds, records, key_index_bytes, offset_index, resident_bytes_opened, resumed) =
        LocalExecutorBuilder::new(Placement::Fixed(0))
            .io_memory(8 * 1024 * 1024)
            .spawn(move || async move {
                let opened = Instant::now();
                let shard = engine.open_shard(ShardId(0)).await.expect("shard recovers");
                let open_seconds = opened.elapsed().as_secs_f64();
                let (_, synced_end) = shard.end_offsets(PartitionId(0)).expect("partition 0");
                let resumed = shard.recovered_from_checkpoint().is_some();
                let figures = (
                    open_seconds,
                    synced_end.0,
                    shard.key_index_memory_bytes(),
                    shard.offset_index_memory(),
                    resident_bytes(),
                    resumed,
                );
                shard.close().await;
                figures
            })
            .expect("reader starts")
            .join()
            .expect("reader finishes");
    let offset_index_bytes = offset_index.sealed_bytes + offset_index.dense_bytes;
    println!(
        "records={records} {written} resumed_from_checkpoint={resumed} open_s={open_seconds:.2} \
         records_per_s_recovered={:.0} key_index_bytes_per_key={:.1} \
         offset_index_bytes={offset_index_bytes} offset_index_bytes_per_record={:.3} \
         sealed_batches={} sealed_bytes_per_batch={:.3} dense_batches={} dense_bytes={} \
         rss_bytes={resident_bytes_opened} rss_bytes_opened={}",
        records as f64 / open_seconds,
        key_index_bytes as f64 / key_count.min(records) as f64,
        offset_index_bytes as f64 / records as f64,
        offset_index.sealed_batch_count,
        offset_index.sealed_bytes as f64 / offset_index.sealed_batch_count.max(1) as f64,
        offset_index.dense_batch_count,
        offset_index.dense_bytes,
        resident_bytes_opened.saturating_sub(resident_bytes_before),
    );
}
