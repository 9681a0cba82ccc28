//! Soak: a bounded mixed workload (conditional read-check-append cycles, long-polling
//! followers, key reads) against one server, sampling its resident memory (VmRSS) and the
//! latency of every cycle, then checking that neither drifts:
//!
//! - memory: RSS growth from the second quarter of the run to the last must stay within
//!   what the server is allowed to accumulate: the read cache fills with recently synced
//!   batches (at most 64 MiB per shard, and at most what was appended: values plus 256
//!   bytes of headers and keys per batch; in a long run it is full before the window
//!   starts and may grow no more), the per-partition offset index keeps ~40 bytes
//!   per batch in memory (Vec doubling: count 96), plus 8 MiB of slack for allocator
//!   noise. A leak of a few hundred bytes per request fails it over a long run; the read
//!   cache's old ~4 KiB of resident memory per small group failed it in 10 s.
//! - latency: the median cycle latency of the last quarter must be within 3x (plus 2 ms)
//!   of the second quarter's. The factor is generous on purpose: client and server share 2
//!   cores, the server is a debug build in CI and fsync latency on a virtio disk varies by
//!   2x between seconds; a real drift (a scan that grows with the log, a queue that never
//!   drains) grows without bound and blows through it in a long run.
//! - exactness: every partition's high watermark equals the records acknowledged to it
//!   (nothing lost, nothing doubled), and followers saw dense offsets.
//!
//! `CAIRN_SOAK_SECONDS` sets the duration (CI: 10). RELIABILITY.md records a long run.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_client::AppendResult;
use cairn_engine::{KeyCondition, Offset, RecordInput};

use crate::support::server::TestServer;
use crate::support::workload::{Workload, connect};
use crate::support::{TestRng, test_seed};

const PARTITION_COUNT: u32 = 4;
const KEY_COUNT: u32 = 256;
const WRITER_COUNT: usize = 4;
/// Per shard, the engine's default read cache (`EngineConfig::read_cache_bytes_max`).
const READ_CACHE_BYTES_MAX: u64 = 64 * 1024 * 1024;
const SHARD_COUNT: u64 = 2;
/// Bytes a batch holds in the read cache beyond its values: batch and record headers, keys.
const ENCODING_BYTES_PER_BATCH: u64 = 256;
/// Bytes a batch holds in the offset index: a 40-byte entry, twice while its Vec grows.
const INDEX_BYTES_PER_BATCH: u64 = 96;
const RSS_SLACK_BYTES: u64 = 8 * 1024 * 1024;
const LATENCY_FACTOR: u32 = 3;
const LATENCY_FLOOR: Duration = Duration::from_millis(2);

fn soak_duration() -> Duration {
    let seconds = std::env::var("CAIRN_SOAK_SECONDS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(10);
    Duration::from_secs(seconds)
}

/// One read-check-append cycle, as a writer timed it.
#[derive(Clone, Copy)]
struct Cycle {
    /// When it ended, since the start of the run.
    at: Duration,
    latency: Duration,
    partition: u32,
    appended_bytes: u64,
}

fn median(mut values: Vec<Duration>) -> Duration {
    assert!(!values.is_empty(), "no samples");
    values.sort_unstable();
    values[values.len() / 2]
}

#[test]
fn a_mixed_workload_keeps_memory_flat_and_latency_steady() {
    let seed = test_seed("reliability_soak::a_mixed_workload");
    let mut rng = TestRng::new(seed);
    let duration = soak_duration();
    let server = TestServer::start();
    let workload = Arc::new(Workload::new("soak", PARTITION_COUNT, KEY_COUNT));
    connect(server.address)
        .unwrap()
        .create_topic(&workload.topic, PARTITION_COUNT)
        .unwrap();
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged_records: Arc<Vec<AtomicU64>> =
        Arc::new((0..PARTITION_COUNT).map(|_| AtomicU64::new(0)).collect());
    let conflict_count = Arc::new(AtomicU64::new(0));
    let cycles = Arc::new(Mutex::new(Vec::<Cycle>::new()));

    let mut writers = Vec::new();
    for _ in 0..WRITER_COUNT {
        let (workload, stop, acknowledged_records, conflict_count, cycles) = (
            workload.clone(),
            stop.clone(),
            acknowledged_records.clone(),
            conflict_count.clone(),
            cycles.clone(),
        );
        let address = server.address;
        let mut rng = TestRng::new(rng.next_u64());
        writers.push(std::thread::spawn(move || {
            let mut client = connect(address).unwrap();
            let mut local = Vec::new();
            // Bounded by the stop flag and by count.
            for _ in 0..100_000_000u64 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let cycle_started = Instant::now();
                let partition = rng.below(u64::from(PARTITION_COUNT)) as usize;
                let bucket = &workload.keys[partition];
                let key = &bucket[rng.below(bucket.len() as u64) as usize];
                let latest = client
                    .read_key(&workload.topic, None, key, false)
                    .expect("read_key during the soak")
                    .map(|record| record.offset);
                let record_count = 1 + rng.below(4) as usize;
                let values: Vec<Vec<u8>> = (0..record_count)
                    .map(|_| vec![b'v'; 64 + rng.below(448) as usize])
                    .collect();
                let records: Vec<RecordInput<'_>> = values
                    .iter()
                    .enumerate()
                    .map(|(index, value)| RecordInput {
                        key,
                        value,
                        headers: &[],
                        condition: match (index, latest) {
                            (0, None) => KeyCondition::NoKey,
                            (0, Some(offset)) => KeyCondition::At(offset),
                            _ => KeyCondition::KeyExists,
                        },
                        ..RecordInput::default()
                    })
                    .collect();
                let appended_bytes: u64 = values.iter().map(|value| value.len() as u64).sum();
                match client
                    .append(&workload.topic, None, None, &records)
                    .expect("append during the soak")
                {
                    AppendResult::Appended { partition, .. } => {
                        acknowledged_records[partition as usize]
                            .fetch_add(record_count as u64, Ordering::Relaxed);
                        local.push(Cycle {
                            at: started.elapsed(),
                            latency: cycle_started.elapsed(),
                            partition,
                            appended_bytes,
                        });
                    }
                    AppendResult::Conflict { .. } => {
                        conflict_count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            cycles.lock().unwrap().extend(local);
        }));
    }
    let mut followers = Vec::new();
    for partition in 0..PARTITION_COUNT {
        let (workload, stop) = (workload.clone(), stop.clone());
        let address = server.address;
        followers.push(std::thread::spawn(move || {
            let mut client = connect(address).unwrap();
            let mut next = Offset(0);
            for _ in 0..100_000_000u64 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let fetched = client
                    .fetch(
                        &workload.topic,
                        partition,
                        next,
                        256 * 1024,
                        Duration::from_millis(500),
                    )
                    .expect("fetch during the soak");
                for record in &fetched.records {
                    assert_eq!(record.offset, next, "partition {partition}: dense offsets");
                    next = next.plus(1);
                }
            }
            next
        }));
    }

    // Sample RSS every 100 ms for the duration (bounded by it).
    let mut rss_samples: Vec<(Duration, u64)> = Vec::new();
    while started.elapsed() < duration {
        rss_samples.push((started.elapsed(), server.resident_bytes()));
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::SeqCst);
    for writer in writers {
        writer.join().expect("writer");
    }
    let followed: Vec<Offset> = followers
        .into_iter()
        .map(|follower| follower.join().expect("follower"))
        .collect();
    let elapsed = started.elapsed();

    // Exactness: every acknowledged record is there, once.
    let mut client = connect(server.address).unwrap();
    for partition in 0..PARTITION_COUNT {
        let synced_end = client
            .fetch(&workload.topic, partition, Offset(0), 1, Duration::ZERO)
            .unwrap()
            .synced_end;
        assert_eq!(
            synced_end.0,
            acknowledged_records[partition as usize].load(Ordering::SeqCst),
            "partition {partition}: high watermark vs acknowledged records"
        );
        assert!(followed[partition as usize] <= synced_end);
    }

    let quarter = duration / 4;
    let in_window = |at: Duration, index: u32| at >= quarter * index && at < quarter * (index + 1);
    let rss_max = |index: u32| {
        rss_samples
            .iter()
            .filter(|(at, _)| in_window(*at, index))
            .map(|(_, rss)| *rss)
            .max()
            .expect("RSS samples in every quarter")
    };
    let cycles = cycles.lock().unwrap();
    let (rss_second, rss_last) = (rss_max(1), rss_max(3));
    // What each shard's read cache may still take on after the window starts: what was
    // appended to it since, but no more than the room its cap left at the start.
    let shard_of: Vec<u16> = client.metadata().unwrap().topics[0]
        .partitions
        .iter()
        .map(|partition| partition.shard)
        .collect();
    let cached_bytes = |cycle: &Cycle| cycle.appended_bytes + ENCODING_BYTES_PER_BATCH;
    let cache_allowance: u64 = (0..SHARD_COUNT as u16)
        .map(|shard| {
            let on_shard = |cycle: &&Cycle| shard_of[cycle.partition as usize] == shard;
            let before: u64 = cycles
                .iter()
                .filter(on_shard)
                .filter(|cycle| cycle.at < quarter)
                .map(cached_bytes)
                .sum();
            let later: u64 = cycles
                .iter()
                .filter(on_shard)
                .filter(|cycle| cycle.at >= quarter)
                .map(cached_bytes)
                .sum();
            later.min(READ_CACHE_BYTES_MAX.saturating_sub(before))
        })
        .sum();
    let batch_count_later = cycles.iter().filter(|cycle| cycle.at >= quarter).count() as u64;
    let allowed_growth =
        cache_allowance + batch_count_later * INDEX_BYTES_PER_BATCH + RSS_SLACK_BYTES;
    let growth = rss_last.saturating_sub(rss_second);
    let latency_median = |index: u32| {
        median(
            cycles
                .iter()
                .filter(|cycle| in_window(cycle.at, index))
                .map(|cycle| cycle.latency)
                .collect(),
        )
    };
    let (latency_second, latency_last) = (latency_median(1), latency_median(3));
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    eprintln!(
        "reliability_soak: seed {seed}, {elapsed:?}: {} cycles ({:.0}/s), {} conflicts, {} \
         records; RSS first {:.1} MiB, max of 2nd quarter {:.1} MiB, max of last quarter {:.1} \
         MiB (growth {:.1} MiB, allowed {:.1} MiB); median cycle latency 2nd quarter \
         {latency_second:?}, last quarter {latency_last:?}",
        cycles.len(),
        cycles.len() as f64 / elapsed.as_secs_f64(),
        conflict_count.load(Ordering::SeqCst),
        acknowledged_records
            .iter()
            .map(|count| count.load(Ordering::SeqCst))
            .sum::<u64>(),
        mib(rss_samples.first().map_or(0, |(_, rss)| *rss)),
        mib(rss_second),
        mib(rss_last),
        mib(growth),
        mib(allowed_growth),
    );
    assert!(
        growth <= allowed_growth,
        "RSS grew by {growth} bytes from the 2nd quarter to the last, more than the \
         {allowed_growth} bytes that read cache and offset index account for"
    );
    assert!(
        latency_last <= latency_second * LATENCY_FACTOR + LATENCY_FLOOR,
        "median cycle latency drifted from {latency_second:?} to {latency_last:?}"
    );
}

/// Clients that connect, ask one thing and leave (the CLI, scripts, reconnecting clients)
/// must leave nothing behind. Each closed connection used to keep ~750 bytes alive (its
/// task, held by a waker registered on the never-notified shutdown event), and every later
/// read on every connection scanned those wakers.
#[test]
fn connection_churn_leaves_no_memory_behind() {
    let server = TestServer::start();
    let churn = |count: usize| {
        for _ in 0..count {
            let mut client = connect(server.address).unwrap();
            client.ping().unwrap();
        }
    };
    churn(300);
    let before = server.resident_bytes();
    let connection_count = 3000;
    churn(connection_count);
    let growth = server.resident_bytes().saturating_sub(before);
    eprintln!(
        "connection churn: {connection_count} connections grew the server by {growth} bytes \
         ({} per connection)",
        growth / connection_count as u64
    );
    assert!(
        growth < 1024 * 1024,
        "{connection_count} closed connections grew the server by {growth} bytes"
    );
}
