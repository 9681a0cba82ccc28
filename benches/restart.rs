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
//! Needs ~2 GB of free disk for the default (set CAIRN_BENCH_DIR to choose where).

use std::rc::Rc;
use std::time::Instant;

use cairn_engine::{Engine, EngineConfig, KeyCondition, PartitionId, RecordInput, ShardId};
use glommio::{LocalExecutorBuilder, Placement};

fn flag(arguments: &[String], name: &str, default: u64) -> u64 {
    arguments
        .iter()
        .position(|argument| argument == name)
        .and_then(|index| arguments.get(index + 1))
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
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
    LocalExecutorBuilder::new(Placement::Fixed(0))
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
            Rc::try_unwrap(shard)
                .ok()
                .expect("appenders are done")
                .close()
                .await;
        })
        .expect("writer starts")
        .join()
        .expect("writer finishes");
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

    let engine = Engine::open(config).expect("engine reopens");
    let (open_seconds, records, key_index_bytes, resumed) =
        LocalExecutorBuilder::new(Placement::Fixed(0))
            .io_memory(8 * 1024 * 1024)
            .spawn(move || async move {
                let opened = Instant::now();
                let shard = engine.open_shard(ShardId(0)).await.expect("shard recovers");
                let open_seconds = opened.elapsed().as_secs_f64();
                let (_, synced_end) = shard.end_offsets(PartitionId(0)).expect("partition 0");
                let resumed = shard.recovered_from_checkpoint().is_some();
                (
                    open_seconds,
                    synced_end.0,
                    shard.key_index_memory_bytes(),
                    resumed,
                )
            })
            .expect("reader starts")
            .join()
            .expect("reader finishes");
    println!(
        "records={records} keys={key_count} batch={batch_record_count} segment_bytes_on_disk={log_bytes} \
         write_s={write_seconds:.1} open_s={open_seconds:.2} records_per_s_recovered={:.0} \
         key_index_bytes_per_key={:.1} checkpoint_bytes={checkpoint_bytes} \
         resumed_from_checkpoint={resumed}",
        records as f64 / open_seconds,
        key_index_bytes as f64 / key_count.min(records) as f64,
    );
}
