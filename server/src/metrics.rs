//! What the server counts about itself and how a scrape sees it: one [`ShardMetrics`] per
//! shard (appends, conflicts, latencies, connections, requests by kind and front end,
//! back-pressure, Kafka fetch bytes and groups), the engine's per-shard I/O counters
//! (`cairn_engine::io::stats`), and the readiness the health endpoint answers
//! ([`Health`]). Encoding into the Prometheus / OpenMetrics text format is
//! `prometheus-client`'s (a [`Collector`] over these atomics).
//!
//! Cost on the hot path: each counter is a relaxed atomic add on memory only its shard's
//! executor writes, so no cache line moves between cores while serving; the scraper thread
//! only loads. Histograms have fixed power-of-two buckets (`Log2Histogram`), one per shard,
//! so observing is three relaxed adds and no lock. We do not use `prometheus-client`'s own
//! `Counter`/`Histogram` on the hot path: its histogram takes a lock per observation, and
//! its families a map lookup per label set. The engine does not depend on it either: its
//! counters are plain atomics the server reads here, and it stays free of any exposition
//! format.
//!
//! Gauges that are derived from a shard's state (consumer groups, members) are published
//! by the shard itself once a second (`shard::publish_gauges`), so a scrape never reaches
//! into a shard.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use cairn_engine::io::stats::{Log2Histogram, Log2Snapshot, ShardIoStats};
use kafka_protocol::messages::ApiKey;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::config::ShutdownSignal;

/// The native protocol's request kinds, as the `kind` label names them; `Malformed` is a
/// frame that did not decode.
pub(crate) const NATIVE_REQUEST_KINDS: [&str; 14] = [
    "Ping",
    "Metadata",
    "CreateTopic",
    "Append",
    "Fetch",
    "ReadKey",
    "KeyHistory",
    "InitProducer",
    "CommitOffsets",
    "FetchOffsets",
    "BackupBegin",
    "BackupRead",
    "AlterTopic",
    "Malformed",
];

/// Kafka requests are counted by raw API key below this; any other key counts in the last
/// slot (`kind="Unknown"`).
const KAFKA_API_KEY_SLOT_COUNT: usize = 128;

/// Which front end a connection or request came through.
#[derive(Clone, Copy, Debug)]
pub(crate) enum FrontEnd {
    Native = 0,
    Kafka = 1,
}

const FRONT_END_NAMES: [&str; 2] = ["native", "kafka"];

/// One shard's counters. Written only by that shard's executor (relaxed adds), read by the
/// scraper.
#[derive(Debug)]
pub(crate) struct ShardMetrics {
    /// Append requests that reached this shard, the partition's owner, whatever their outcome.
    pub(crate) append_requests: AtomicU64,
    /// Of those, acknowledged (synced; duplicates of an idempotent producer included).
    pub(crate) appends_acknowledged: AtomicU64,
    /// Of those, failed (storage, shutting down, bad batch, unknown partition, producer).
    pub(crate) append_failures: AtomicU64,
    /// Records of acknowledged appends (duplicates excluded: nothing new was written).
    pub(crate) appended_records: AtomicU64,
    /// Key and value bytes of those records.
    pub(crate) appended_bytes: AtomicU64,
    /// Appends refused because `expected_end` did not match.
    pub(crate) conflicts_end_offset: AtomicU64,
    /// Appends refused because a record's key condition failed.
    pub(crate) conflicts_key: AtomicU64,
    /// From the owning shard taking the append to its outcome (synced, or refused), µs.
    pub(crate) append_latency_us: Log2Histogram,
    /// Native appends: from the socket read that completed the frame to its handler
    /// starting (task spawn and the executor's queue), µs.
    pub(crate) native_append_queued_us: Log2Histogram,
    /// Native appends: from the handler starting to the service's answer (decode, route,
    /// the owning shard's append), µs.
    pub(crate) native_append_service_us: Log2Histogram,
    /// Native responses: from the first response of a socket write being encoded to the
    /// write completing, µs.
    pub(crate) native_response_write_us: Log2Histogram,
    /// Connections accepted, by front end.
    pub(crate) connections_accepted: [AtomicU64; 2],
    /// Connections open now, by front end.
    pub(crate) connections_open: [AtomicU64; 2],
    /// Connections refused over the shard's connection limit (the native ones were
    /// answered `Overloaded`).
    pub(crate) connections_refused: AtomicU64,
    /// Requests that waited for the shard's request-byte budget (their connection was
    /// not read meanwhile).
    pub(crate) request_budget_waits: AtomicU64,
    /// Bytes of the shard's request budget held now.
    pub(crate) request_bytes_held: AtomicU64,
    /// Native requests by kind (`NATIVE_REQUEST_KINDS`).
    pub(crate) native_requests: [AtomicU64; NATIVE_REQUEST_KINDS.len()],
    /// Kafka requests by API key.
    pub(crate) kafka_requests: [AtomicU64; KAFKA_API_KEY_SLOT_COUNT + 1],
    /// Bytes of record batches Kafka Fetch responses carried.
    pub(crate) kafka_fetch_bytes: AtomicU64,
    /// Consumer groups this shard coordinates (published once a second).
    pub(crate) kafka_groups: AtomicU64,
    /// Members of those groups (published once a second).
    pub(crate) kafka_group_members: AtomicU64,
    /// The engine shard's I/O counters, once it is open.
    pub(crate) io: OnceLock<Arc<ShardIoStats>>,
}

impl ShardMetrics {
    pub(crate) fn new() -> Self {
        ShardMetrics {
            append_requests: AtomicU64::new(0),
            appends_acknowledged: AtomicU64::new(0),
            append_failures: AtomicU64::new(0),
            appended_records: AtomicU64::new(0),
            appended_bytes: AtomicU64::new(0),
            conflicts_end_offset: AtomicU64::new(0),
            conflicts_key: AtomicU64::new(0),
            append_latency_us: Log2Histogram::new(),
            native_append_queued_us: Log2Histogram::new(),
            native_append_service_us: Log2Histogram::new(),
            native_response_write_us: Log2Histogram::new(),
            connections_accepted: std::array::from_fn(|_| AtomicU64::new(0)),
            connections_open: std::array::from_fn(|_| AtomicU64::new(0)),
            connections_refused: AtomicU64::new(0),
            request_budget_waits: AtomicU64::new(0),
            request_bytes_held: AtomicU64::new(0),
            native_requests: std::array::from_fn(|_| AtomicU64::new(0)),
            kafka_requests: std::array::from_fn(|_| AtomicU64::new(0)),
            kafka_fetch_bytes: AtomicU64::new(0),
            kafka_groups: AtomicU64::new(0),
            kafka_group_members: AtomicU64::new(0),
            io: OnceLock::new(),
        }
    }

    /// Adds `amount` to `counter` (written only by this shard's executor).
    pub(crate) fn add(counter: &AtomicU64, amount: u64) {
        cairn_engine::io::stats::single_writer_add(counter, amount);
    }

    /// Counts a Kafka request with raw API key `api_key`.
    pub(crate) fn count_kafka_request(&self, api_key: i16) {
        let slot = usize::try_from(api_key)
            .ok()
            .filter(|&slot| slot < KAFKA_API_KEY_SLOT_COUNT)
            .unwrap_or(KAFKA_API_KEY_SLOT_COUNT);
        if let Some(counter) = self.kafka_requests.get(slot) {
            Self::add(counter, 1);
        }
    }

    /// Counts a native request of kind `NATIVE_REQUEST_KINDS[kind]`.
    pub(crate) fn count_native_request(&self, kind: usize) {
        if let Some(counter) = self.native_requests.get(kind) {
            Self::add(counter, 1);
        }
    }

    /// A connection through `front_end` was accepted and is open.
    pub(crate) fn connection_opened(&self, front_end: FrontEnd) {
        let index = front_end as usize;
        if let (Some(accepted), Some(open)) = (
            self.connections_accepted.get(index),
            self.connections_open.get(index),
        ) {
            Self::add(accepted, 1);
            Self::add(open, 1);
        }
    }

    /// A connection through `front_end` closed.
    pub(crate) fn connection_closed(&self, front_end: FrontEnd) {
        if let Some(open) = self.connections_open.get(front_end as usize) {
            open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Whether the server should get traffic, for `/health/ready`.
#[derive(Debug)]
pub(crate) struct Health {
    /// Every shard recovered and listens.
    serving: AtomicBool,
    /// A shard's storage failed; the process is about to exit.
    storage_failed: AtomicBool,
    shutdown: ShutdownSignal,
}

impl Health {
    pub(crate) fn set_serving(&self) {
        self.serving.store(true, Ordering::SeqCst);
    }

    pub(crate) fn set_storage_failed(&self) {
        self.storage_failed.store(true, Ordering::SeqCst);
    }
}

/// Every shard's metrics and the server's health; shared (`Arc`) by the shards and the
/// metrics endpoint's thread.
#[derive(Debug)]
pub(crate) struct Metrics {
    pub(crate) shards: Vec<Arc<ShardMetrics>>,
    pub(crate) health: Health,
}

impl Metrics {
    /// Ready: every shard serves, no shard's storage failed, no shutdown asked for. The
    /// engine counts a storage failure before it fails the first append, so a client told
    /// `StorageFailure` finds the server not ready.
    pub(crate) fn is_ready(&self) -> bool {
        let health = &self.health;
        let storage_failed = health.storage_failed.load(Ordering::SeqCst)
            || self.shards.iter().any(|shard| {
                shard
                    .io
                    .get()
                    .is_some_and(|io| ShardIoStats::load(&io.storage_failures) > 0)
            });
        health.serving.load(Ordering::SeqCst) && !storage_failed && !health.shutdown.is_raised()
    }

    pub(crate) fn new(shard_count: u16, shutdown: ShutdownSignal) -> Arc<Metrics> {
        Arc::new(Metrics {
            shards: (0..shard_count)
                .map(|_| Arc::new(ShardMetrics::new()))
                .collect(),
            health: Health {
                serving: AtomicBool::new(false),
                storage_failed: AtomicBool::new(false),
                shutdown,
            },
        })
    }

    /// The OpenMetrics text of every metric now.
    pub(crate) fn encode(self: &Arc<Self>) -> Result<String, std::fmt::Error> {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Scrape(self.clone())));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry)?;
        Ok(text)
    }
}

/// The content type of [`Metrics::encode`]'s text.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug)]
struct Scrape(Arc<Metrics>);

type Labels = Vec<(&'static str, String)>;

fn shard_labels(shard: usize) -> Labels {
    vec![("shard", shard.to_string())]
}

/// One metric family: its series, each a label set and a value read now.
fn encode_family<T>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric_type: MetricType,
    series: impl IntoIterator<Item = (Labels, T)>,
    mut encode_value: impl FnMut(
        &mut prometheus_client::encoding::MetricEncoder,
        T,
    ) -> Result<(), std::fmt::Error>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, value) in series {
        let mut series_encoder = metric.encode_family(&labels)?;
        encode_value(&mut series_encoder, value)?;
    }
    Ok(())
}

fn counters(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Labels, u64)>,
) -> Result<(), std::fmt::Error> {
    encode_family(encoder, name, help, MetricType::Counter, series, |e, v| {
        e.encode_counter::<NoLabelSet, u64, u64>(&v, None)
    })
}

fn gauges(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Labels, u64)>,
) -> Result<(), std::fmt::Error> {
    encode_family(encoder, name, help, MetricType::Gauge, series, |e, v| {
        e.encode_gauge(&i64::try_from(v).unwrap_or(i64::MAX))
    })
}

/// `scale` turns the histogram's whole units into the exposed unit (1e-6: µs -> seconds).
fn histograms(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    scale: f64,
    series: impl IntoIterator<Item = (Labels, Log2Snapshot)>,
) -> Result<(), std::fmt::Error> {
    encode_family(
        encoder,
        name,
        help,
        MetricType::Histogram,
        series,
        |e, snapshot| {
            let buckets: Vec<(f64, u64)> = snapshot
                .buckets
                .iter()
                .map(|&(bound, count)| {
                    let bound = bound.map_or(f64::INFINITY, |bound| bound as f64 * scale);
                    (bound, count)
                })
                .collect();
            // The count is the buckets' sum, so that the exposition is consistent even when
            // the shard observed something between our loads.
            let count = buckets.iter().map(|(_, count)| count).sum();
            e.encode_histogram::<NoLabelSet>(snapshot.sum as f64 * scale, count, &buckets, None)
        },
    )
}

const MICROS: f64 = 1e-6;

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let metrics = &self.0;
        let shards = || metrics.shards.iter().enumerate();
        let per_shard = |read: fn(&ShardMetrics) -> &AtomicU64| {
            shards()
                .map(move |(shard, m)| (shard_labels(shard), read(m).load(Ordering::Relaxed)))
                .collect::<Vec<_>>()
        };
        let e = &mut encoder;
        counters(
            e,
            "cairn_append_requests",
            "Append requests taken by the partition's owning shard, any outcome",
            per_shard(|m| &m.append_requests),
        )?;
        counters(
            e,
            "cairn_appends_acknowledged",
            "Appends acknowledged (synced) to the client",
            per_shard(|m| &m.appends_acknowledged),
        )?;
        counters(
            e,
            "cairn_append_failures",
            "Appends failed (storage, shutdown, invalid batch, unknown partition, producer)",
            per_shard(|m| &m.append_failures),
        )?;
        counters(
            e,
            "cairn_appended_records",
            "Records of acknowledged appends",
            per_shard(|m| &m.appended_records),
        )?;
        counters(
            e,
            "cairn_appended_bytes",
            "Key and value bytes of acknowledged records",
            per_shard(|m| &m.appended_bytes),
        )?;
        let conflicts = shards().flat_map(|(shard, m)| {
            [
                ("end_offset", &m.conflicts_end_offset),
                ("key", &m.conflicts_key),
            ]
            .map(|(kind, counter)| {
                let mut labels = shard_labels(shard);
                labels.push(("kind", kind.to_owned()));
                (labels, counter.load(Ordering::Relaxed))
            })
        });
        counters(
            e,
            "cairn_append_conflicts",
            "Conditional appends refused, by the condition that failed",
            conflicts.collect::<Vec<_>>(),
        )?;
        histograms(
            e,
            "cairn_append_latency_seconds",
            "From the owning shard taking an append to its outcome (synced or refused)",
            MICROS,
            shards().map(|(shard, m)| (shard_labels(shard), m.append_latency_us.snapshot())),
        )?;
        let append_stages = shards().flat_map(|(shard, m)| {
            [
                ("queued", &m.native_append_queued_us),
                ("service", &m.native_append_service_us),
            ]
            .map(|(stage, histogram)| {
                let mut labels = shard_labels(shard);
                labels.push(("stage", stage.to_owned()));
                (labels, histogram.snapshot())
            })
        });
        histograms(
            e,
            "cairn_native_append_stage_seconds",
            "Native appends by stage: queued (frame read to handler start), service (handler \
             start to the service's answer, the owning shard's append included)",
            MICROS,
            append_stages.collect::<Vec<_>>(),
        )?;
        histograms(
            e,
            "cairn_native_response_write_seconds",
            "From the first response of a socket write being encoded to the write completing",
            MICROS,
            shards().map(|(shard, m)| (shard_labels(shard), m.native_response_write_us.snapshot())),
        )?;

        let by_front_end = |read: fn(&ShardMetrics) -> &[AtomicU64; 2]| {
            shards()
                .flat_map(move |(shard, m)| {
                    read(m)
                        .iter()
                        .zip(FRONT_END_NAMES)
                        .map(move |(value, name)| {
                            let mut labels = shard_labels(shard);
                            labels.push(("front_end", name.to_owned()));
                            (labels, value.load(Ordering::Relaxed))
                        })
                })
                .collect::<Vec<_>>()
        };
        counters(
            e,
            "cairn_connections_accepted",
            "Connections accepted and served",
            by_front_end(|m| &m.connections_accepted),
        )?;
        gauges(
            e,
            "cairn_connections_open",
            "Connections open now",
            by_front_end(|m| &m.connections_open),
        )?;
        counters(
            e,
            "cairn_connections_refused",
            "Connections refused over the shard's connection limit (native ones answered Overloaded)",
            per_shard(|m| &m.connections_refused),
        )?;
        counters(
            e,
            "cairn_request_budget_waits",
            "Requests that waited for the shard's request-byte budget, their connection paused",
            per_shard(|m| &m.request_budget_waits),
        )?;
        gauges(
            e,
            "cairn_request_bytes_held",
            "Bytes of the shard's request budget held now (requests read, not yet answered)",
            per_shard(|m| &m.request_bytes_held),
        )?;
        let mut requests: Vec<(Labels, u64)> = Vec::new();
        for (shard, m) in shards() {
            for (kind, counter) in NATIVE_REQUEST_KINDS.iter().zip(&m.native_requests) {
                let mut labels = shard_labels(shard);
                labels.push(("front_end", "native".to_owned()));
                labels.push(("kind", (*kind).to_owned()));
                requests.push((labels, counter.load(Ordering::Relaxed)));
            }
            for (slot, counter) in m.kafka_requests.iter().enumerate() {
                let name = i16::try_from(slot)
                    .ok()
                    .and_then(|key| ApiKey::try_from(key).ok())
                    .map(|key| format!("{key:?}"));
                let value = counter.load(Ordering::Relaxed);
                // Every named API key is a series, so that rate() sees the first one; an
                // unnamed slot only once something arrived there.
                let kind = match name {
                    Some(name) => name,
                    None if value > 0 => "Unknown".to_owned(),
                    None => continue,
                };
                let mut labels = shard_labels(shard);
                labels.push(("front_end", "kafka".to_owned()));
                labels.push(("kind", kind));
                requests.push((labels, value));
            }
        }
        counters(
            e,
            "cairn_requests",
            "Requests read, by front end and kind (Kafka: API key)",
            requests,
        )?;
        counters(
            e,
            "cairn_kafka_fetch_bytes",
            "Bytes of record batches sent in Kafka Fetch responses",
            per_shard(|m| &m.kafka_fetch_bytes),
        )?;
        gauges(
            e,
            "cairn_kafka_groups",
            "Consumer groups this shard coordinates (updated once a second)",
            per_shard(|m| &m.kafka_groups),
        )?;
        gauges(
            e,
            "cairn_kafka_group_members",
            "Members of the groups this shard coordinates (updated once a second)",
            per_shard(|m| &m.kafka_group_members),
        )?;

        // The engine's counters, for shards that have opened.
        let io: Vec<(Labels, &ShardIoStats)> = shards()
            .filter_map(|(shard, m)| m.io.get().map(|io| (shard_labels(shard), io.as_ref())))
            .collect();
        let io_histograms = |read: fn(&ShardIoStats) -> &Log2Histogram| {
            io.iter()
                .map(|(labels, stats)| (labels.clone(), read(stats).snapshot()))
                .collect::<Vec<_>>()
        };
        let io_counters = |read: fn(&ShardIoStats) -> &AtomicU64| {
            io.iter()
                .map(|(labels, stats)| (labels.clone(), ShardIoStats::load(read(stats))))
                .collect::<Vec<_>>()
        };
        histograms(
            e,
            "cairn_group_records",
            "Records in each group written with one durable write",
            1.0,
            io_histograms(|s| &s.group_records),
        )?;
        histograms(
            e,
            "cairn_group_bytes",
            "Bytes of batches in each group written (padding excluded)",
            1.0,
            io_histograms(|s| &s.group_bytes),
        )?;
        histograms(
            e,
            "cairn_group_wait_seconds",
            "From a group's first batch being staged to the group's write being submitted",
            MICROS,
            io_histograms(|s| &s.group_wait_us),
        )?;
        histograms(
            e,
            "cairn_group_write_latency_seconds",
            "Time of each group's write, submitted to durable (O_DSYNC)",
            MICROS,
            io_histograms(|s| &s.write_latency_us),
        )?;
        histograms(
            e,
            "cairn_append_wake_seconds",
            "From a group becoming durable to each of its appenders resuming",
            MICROS,
            io_histograms(|s| &s.completion_wake_us),
        )?;
        counters(
            e,
            "cairn_segment_rolls",
            "Times the shard's log moved on to a new segment",
            io_counters(|s| &s.segment_rolls),
        )?;
        histograms(
            e,
            "cairn_segment_preparation_seconds",
            "Time to create and preallocate each next segment (paced until needed)",
            MICROS,
            io_histograms(|s| &s.segment_preparation_us),
        )?;
        counters(
            e,
            "cairn_checkpoints_written",
            "Checkpoints of the shard's state installed (a restart resumes from the newest)",
            io_counters(|s| &s.checkpoints_written),
        )?;
        counters(
            e,
            "cairn_retention_rewrites",
            "Segments retention rewrote without the batches it removed",
            io_counters(|s| &s.retention_rewrites),
        )?;
        counters(
            e,
            "cairn_retention_removed_segments",
            "First segments retention removed once nothing in them was kept",
            io_counters(|s| &s.retention_removed_segments),
        )?;
        counters(
            e,
            "cairn_retention_failures",
            "Retention steps that failed (nothing changed; tried again at the next check)",
            io_counters(|s| &s.retention_failures),
        )?;
        counters(
            e,
            "cairn_retention_copied_bytes",
            "Bytes of kept batches retention copied into rewritten segments",
            io_counters(|s| &s.retention_copied_bytes),
        )?;
        counters(
            e,
            "cairn_retention_removed_bytes",
            "Bytes of batches retention removed",
            io_counters(|s| &s.retention_removed_bytes),
        )?;
        counters(
            e,
            "cairn_checkpoint_failures",
            "Checkpoints that could not be written (the log goes on; the next is due an interval later)",
            io_counters(|s| &s.checkpoint_failures),
        )?;
        histograms(
            e,
            "cairn_checkpoint_capture_seconds",
            "Time the shard spent copying its state for a checkpoint (appends wait behind it)",
            MICROS,
            io_histograms(|s| &s.checkpoint_capture_us),
        )?;
        histograms(
            e,
            "cairn_checkpoint_install_seconds",
            "From a checkpoint's capture to its install (written, synced, renamed: background)",
            MICROS,
            io_histograms(|s| &s.checkpoint_install_us),
        )?;
        counters(
            e,
            "cairn_read_cache_hits",
            "Batches read from memory (read cache or a group not yet synced)",
            io_counters(|s| &s.read_cache_hits),
        )?;
        counters(
            e,
            "cairn_read_cache_misses",
            "Batches read from the segment files",
            io_counters(|s| &s.read_cache_misses),
        )?;
        counters(
            e,
            "cairn_storage_failures",
            "Failed writes, syncs or segment preparations (each stops the server)",
            io_counters(|s| &s.storage_failures),
        )?;
        gauges(
            e,
            "cairn_ready",
            "1 when every shard recovered and serves, 0 otherwise (as /health/ready)",
            [(Vec::new(), u64::from(metrics.is_ready()))],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_names_every_shard_and_counts_what_was_added() {
        let metrics = Metrics::new(2, ShutdownSignal::new());
        let shard = &metrics.shards[1];
        ShardMetrics::add(&shard.appends_acknowledged, 3);
        ShardMetrics::add(&shard.conflicts_key, 2);
        shard.count_kafka_request(0);
        shard.count_kafka_request(-4);
        shard.append_latency_us.observe(1500);
        let text = metrics.encode().unwrap();
        assert!(
            text.contains("cairn_appends_acknowledged_total{shard=\"1\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("cairn_appends_acknowledged_total{shard=\"0\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("cairn_append_conflicts_total{shard=\"1\",kind=\"key\"} 2"),
            "{text}"
        );
        assert!(
            text.contains(
                "cairn_requests_total{shard=\"1\",front_end=\"kafka\",kind=\"Produce\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "cairn_requests_total{shard=\"1\",front_end=\"kafka\",kind=\"Unknown\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("cairn_append_latency_seconds_count{shard=\"1\"} 1"),
            "{text}"
        );
        assert!(text.contains("cairn_ready 0"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
