//! Question: how many durable, conditional appends per second does one shard sustain on a
//! real file, with 1, 64 and 1024 concurrent appenders, what group size does that reach,
//! and what bandwidth do large batches get?
//!
//! In-process (no network): one glommio executor, one shard, a temp data directory on the
//! machine's disk. Each appender owns a key and appends single 100-byte records
//! conditionally on its previous offset (`no_key`, then `at(offset)`), so every append is a
//! real check. A regression is a drop in records/s at 1024 appenders or in MB/s for 1 MiB
//! groups, compared in the same run on the same machine.
//!
//! Run: `cargo bench --bench append_path` (add `-- --seconds 10` for longer runs). A plain
//! harness (not criterion): durable throughput needs many concurrent tasks and a
//! latency histogram, not a timed closure.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use cairn_engine::{
    AppendOutcome, Engine, EngineConfig, KeyCondition, Offset, RecordInput, ShardId,
};
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;

struct Outcome {
    appender_count: usize,
    records_per_batch: usize,
    value_bytes: usize,
    records: u64,
    elapsed: Duration,
    latency_us: Histogram<u64>,
    group_count: u64,
    batch_bytes: u64,
}

fn run_case(
    appender_count: usize,
    records_per_batch: usize,
    value_bytes: usize,
    duration: Duration,
) -> Outcome {
    let dir = tempfile::tempdir_in(std::env::var("CAIRN_BENCH_DIR").unwrap_or_else(|_| ".".into()))
        .expect("bench temp dir");
    let mut config = EngineConfig::new(dir.path(), 1);
    config.segment_size_bytes = 1024 * 1024 * 1024;
    config.group_size_bytes_max = 4 * 1024 * 1024;
    let engine = Engine::open(config).expect("engine opens");
    LocalExecutorBuilder::new(Placement::Fixed(0))
        .io_memory(8 * 1024 * 1024)
        .spawn(move || async move {
            let shard = Rc::new(engine.open_shard(ShardId(0)).await.expect("shard opens"));
            let topic = shard.create_topic("bench", 1).expect("topic");
            let partition = topic.partition_id(0).expect("partition 0");
            let latency_us = Rc::new(RefCell::new(
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
            ));
            let records = Rc::new(RefCell::new(0u64));
            let before = shard.stats();
            let started = Instant::now();
            let deadline = started + duration;
            let mut tasks = Vec::new();
            for appender in 0..appender_count {
                let shard = shard.clone();
                let latency_us = latency_us.clone();
                let records = records.clone();
                tasks.push(glommio::spawn_local(async move {
                    let key = format!("appender-{appender:06}").into_bytes();
                    let value = vec![b'v'; value_bytes];
                    let mut latest: Option<Offset> = None;
                    while Instant::now() < deadline {
                        let batch: Vec<RecordInput<'_>> = (0..records_per_batch)
                            .map(|index| RecordInput {
                                key: &key,
                                value: &value,
                                headers: &[],
                                condition: match (index, latest) {
                                    (0, None) => KeyCondition::NoKey,
                                    (0, Some(offset)) => KeyCondition::At(offset),
                                    _ => KeyCondition::Any,
                                },
                                ..RecordInput::default()
                            })
                            .collect();
                        let sent = Instant::now();
                        match shard.append(partition, None, &batch).await {
                            Ok(AppendOutcome::Appended {
                                base_offset,
                                record_count,
                            }) => {
                                latest = Some(base_offset.plus(u64::from(record_count) - 1));
                                *records.borrow_mut() += u64::from(record_count);
                                let micros = sent.elapsed().as_micros() as u64;
                                latency_us.borrow_mut().saturating_record(micros.max(1));
                            }
                            other => panic!("bench append failed: {other:?}"),
                        }
                    }
                }));
            }
            for task in tasks {
                task.await;
            }
            let elapsed = started.elapsed();
            let after = shard.stats();
            let latency_us = latency_us.borrow().clone();
            let records = *records.borrow();
            Outcome {
                appender_count,
                records_per_batch,
                value_bytes,
                records,
                elapsed,
                latency_us,
                group_count: after.group_count - before.group_count,
                batch_bytes: after.batch_bytes - before.batch_bytes,
            }
        })
        .expect("bench executor starts")
        .join()
        .expect("bench executor finishes")
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing useful either.
    let arguments: Vec<String> = std::env::args().collect();
    let seconds: u64 = arguments
        .iter()
        .position(|argument| argument == "--seconds")
        .and_then(|index| arguments.get(index + 1))
        .and_then(|value| value.parse().ok())
        .unwrap_or(5);
    if arguments.iter().any(|argument| argument == "--list") {
        return;
    }
    let duration = Duration::from_secs(seconds);
    println!(
        "{:>9} {:>7} {:>6} {:>12} {:>9} {:>12} {:>9} {:>9} {:>10}",
        "appenders",
        "records",
        "value",
        "records_per_s",
        "MB_per_s",
        "group_batches",
        "p50_us",
        "p99_us",
        "p999_us"
    );
    let cases = [
        (1, 1, 100),
        (64, 1, 100),
        (1024, 1, 100),
        (4, 63, 16 * 1024),
    ];
    for (appender_count, records_per_batch, value_bytes) in cases {
        let outcome = run_case(appender_count, records_per_batch, value_bytes, duration);
        let seconds = outcome.elapsed.as_secs_f64();
        println!(
            "{:>9} {:>7} {:>6} {:>12.0} {:>9.1} {:>12.1} {:>9} {:>9} {:>10}",
            outcome.appender_count,
            outcome.records_per_batch,
            outcome.value_bytes,
            outcome.records as f64 / seconds,
            outcome.batch_bytes as f64 / seconds / 1e6,
            outcome.records as f64
                / outcome.records_per_batch as f64
                / outcome.group_count.max(1) as f64,
            outcome.latency_us.value_at_quantile(0.5),
            outcome.latency_us.value_at_quantile(0.99),
            outcome.latency_us.value_at_quantile(0.999),
        );
    }
}
