//! The load generator's flags, their defaults and their bounds.
//!
//! `Args` is what `cairn-loadgen` parses (clap); [`Args::validate`] checks every value
//! against a bound before anything starts, so a run never fails half-way on a flag, and
//! every buffer the run allocates is sized from validated numbers.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use cairn_engine::core::limits::{BATCH_RECORD_COUNT_MAX, BATCH_SIZE_BYTES_MAX};
use cairn_engine::core::record::{BATCH_HEADER_SIZE_BYTES, RECORD_FIXED_SIZE_BYTES};
use clap::{Parser, ValueEnum};

use crate::workload;

/// Most clients (concurrent command handlers) one run drives.
pub const CLIENT_COUNT_MAX: u32 = 4096;
/// Most distinct keys `hot` draws from.
pub const KEY_COUNT_MAX: u64 = 1_000_000_000;
/// Most retries of one cycle after conflicts.
pub const RETRY_COUNT_MAX: u32 = 10_000;
/// Longest measured run; also bounds the progress timeline (one sample a second).
pub const DURATION_MAX: Duration = Duration::from_secs(24 * 3600);
/// Longest warm-up.
pub const WARMUP_MAX: Duration = Duration::from_secs(3600);
/// Most measured cycles with `--cycles`.
pub const CYCLE_COUNT_MAX: u64 = 1_000_000_000_000;
/// Highest `--rate`, in cycles per second.
pub const RATE_PER_SEC_MAX: f64 = 100_000_000.0;
/// Most partitions of a topic the load generator creates.
pub const PARTITION_COUNT_MAX: u32 = 65_536;
/// Most executors on either side (server shards, load generator executors).
pub const CORE_COUNT_MAX: u16 = 256;

/// What each client does in a cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Each client appends to its own key, conditionally on the offset its previous append
    /// returned (`no_key` first): what conditions cost when nobody competes.
    Uncontended,
    /// Command handlers on Zipf-distributed keys: read the key's latest offset, append
    /// conditionally on it, and on a conflict retry or re-read.
    Hot,
    /// Unconditional appends to each client's own key: the baseline without conditions.
    Blind,
}

impl Workload {
    /// The flag's spelling, for reports.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Workload::Uncontended => "uncontended",
            Workload::Hot => "hot",
            Workload::Blind => "blind",
        }
    }
}

/// Which latest offset a `hot` cycle reads before appending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReadMode {
    /// Synced records only: what any reader of the log sees. (`durable` is its old name,
    /// still accepted so that scripts keep working.)
    #[value(alias = "durable")]
    Synced,
    /// Including appended records not synced yet: what a condition is checked against.
    /// (`pending` is its old name, still accepted.)
    #[value(alias = "pending")]
    Appended,
}

/// How the clients of an executor reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConnectionMode {
    /// All clients of an executor share one pipelining client: one connection per server
    /// shard, their requests multiplexed on it.
    Shared,
    /// Every client has its own connection to each shard it talks to, as separate
    /// command-handler processes would: what the peers' clients do.
    PerClient,
}

impl ConnectionMode {
    /// The flag's spelling, for reports.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            ConnectionMode::Shared => "shared",
            ConnectionMode::PerClient => "per-client",
        }
    }
}

/// How the clients of an executor manage contention on a key (`cairn_client::contention`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ContentionMode {
    /// Nothing: read and append at once, retry at once. The log alone.
    None,
    /// Randomized exponential backoff after each conflict.
    Backoff,
    /// The executor's clients take turns on each key (read, send the append, pass the turn
    /// on), with backoff after the conflicts that remain.
    Queue,
}

impl ContentionMode {
    /// The client library's policy for this mode, with its default backoff.
    #[must_use]
    pub fn policy(self) -> cairn_client::ContentionPolicy {
        let backoff = cairn_client::Backoff::default();
        match self {
            ContentionMode::None => cairn_client::ContentionPolicy::None,
            ContentionMode::Backoff => cairn_client::ContentionPolicy::Backoff(backoff),
            ContentionMode::Queue => cairn_client::ContentionPolicy::Queue(backoff),
        }
    }

    /// The flag's spelling, for reports.
    #[must_use]
    pub fn name(self) -> &'static str {
        self.policy().name()
    }
}

/// What a cycle does after a conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RetryMode {
    /// Append again at once, conditionally on the current offset the conflict carries.
    FromConflict,
    /// Read the key again (`--read`), then append.
    Reread,
}

/// Drive a Cairn server with concurrent clients and report throughput, conflicts and
/// latency. Without --addr, starts an embedded server on a temporary directory.
#[derive(Debug, Clone, Parser)]
#[command(name = "cairn-loadgen", version)]
pub struct Args {
    /// What each client does: uncontended, hot (command handlers on Zipf keys) or blind.
    #[arg(long, value_enum, default_value = "hot")]
    pub workload: Workload,
    /// A running server (HOST:PORT). Without it, an embedded server runs in-process on a
    /// temporary data directory that is removed afterwards.
    #[arg(long)]
    pub addr: Option<String>,
    /// Topic to append to; created with --partitions if missing.
    #[arg(long, default_value = "loadgen")]
    pub topic: String,
    /// Partitions of the topic when the load generator creates it.
    #[arg(long, default_value_t = 8)]
    pub partitions: u32,
    /// Concurrent clients (command handlers), spread over the load generator's executors.
    #[arg(long, default_value_t = 16)]
    pub clients: u32,
    /// Keys `hot` draws from (1 = a single hot key). Other workloads use one key per client.
    #[arg(long, default_value_t = 1000)]
    pub keys: u64,
    /// Zipf exponent of `hot`'s key choice (0 = uniform).
    #[arg(long, default_value_t = 0.99)]
    pub zipf: f64,
    /// What `hot` reads before appending: synced records only, or appended ones too (what
    /// conditions see).
    #[arg(long, value_enum, default_value = "synced")]
    pub read: ReadMode,
    /// After a conflict: from-conflict (use the offset it carries) or reread.
    #[arg(long, value_enum, default_value = "from-conflict")]
    pub retry: RetryMode,
    /// How `hot` clients of one executor manage contention: none, backoff (randomized
    /// exponential after each conflict), or queue (take turns per key locally, and back off
    /// after the conflicts that remain).
    #[arg(long, value_enum, default_value = "queue")]
    pub contention: ContentionMode,
    /// Retries of a cycle after conflicts before it is abandoned.
    #[arg(long, default_value_t = 10)]
    pub max_retries: u32,
    /// Records per append (all of the cycle's key).
    #[arg(long, default_value_t = 1)]
    pub batch: u32,
    /// Bytes of each record's value.
    #[arg(long, default_value_t = 100)]
    pub value_bytes: u32,
    /// Measured time, e.g. 10s, 500ms, 2m (ignored with --cycles).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Measured cycles in total, instead of a duration.
    #[arg(long)]
    pub cycles: Option<u64>,
    /// Unmeasured time before measuring, e.g. 2s or 0s.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Open loop: start this many cycles per second in total, latency measured from each
    /// cycle's intended start. Without it, closed loop: each client starts its next cycle
    /// when the previous one ends.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seed of every random choice (keys, values).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write the summary as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write HdrHistogram percentile files (.hgrm) and an SVG chart into this directory.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Write `topic partition offset key value_crc32` for every acknowledged record.
    #[arg(long)]
    pub ack_log: Option<PathBuf>,
    /// Shards of the embedded server.
    #[arg(long, default_value_t = 1)]
    pub server_cores: u16,
    /// Segment file size of the embedded server, in MiB.
    #[arg(long, default_value_t = 256)]
    pub server_segment_size_mib: u32,
    /// Executors (one thread each) the clients run on; each has its own connections.
    #[arg(long, default_value_t = 1)]
    pub loadgen_cores: u16,
    /// shared: the clients of an executor multiplex one connection per server shard;
    /// per-client: every client opens its own (the server must admit that many, see
    /// `shard_connection_count_max`).
    #[arg(long, value_enum, default_value = "shared")]
    pub connections: ConnectionMode,
    /// Do not pin the embedded server's shards and the load generator's executors to CPUs.
    #[arg(long)]
    pub no_pin: bool,
    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
}

impl Args {
    /// Checks every flag against its bound and the flags against each other.
    pub fn validate(&self) -> anyhow::Result<()> {
        ensure!(
            (1..=CLIENT_COUNT_MAX).contains(&self.clients),
            "--clients {} is not in 1..={CLIENT_COUNT_MAX}",
            self.clients
        );
        ensure!(
            (1..=KEY_COUNT_MAX).contains(&self.keys),
            "--keys {} is not in 1..={KEY_COUNT_MAX}",
            self.keys
        );
        ensure!(
            self.zipf.is_finite() && (0.0..=100.0).contains(&self.zipf),
            "--zipf {} is not in 0..=100",
            self.zipf
        );
        ensure!(
            self.max_retries <= RETRY_COUNT_MAX,
            "--max-retries {} exceeds {RETRY_COUNT_MAX}",
            self.max_retries
        );
        ensure!(
            (1..=PARTITION_COUNT_MAX).contains(&self.partitions),
            "--partitions {} is not in 1..={PARTITION_COUNT_MAX}",
            self.partitions
        );
        let batch_record_count_max = u32::try_from(BATCH_RECORD_COUNT_MAX).unwrap_or(u32::MAX);
        ensure!(
            (1..=batch_record_count_max).contains(&self.batch),
            "--batch {} is not in 1..={batch_record_count_max}",
            self.batch
        );
        let batch_size_bytes = self.batch_size_bytes();
        ensure!(
            batch_size_bytes <= BATCH_SIZE_BYTES_MAX as u64,
            "--batch {} of --value-bytes {} encodes to {batch_size_bytes} bytes, more than a \
             batch may hold ({BATCH_SIZE_BYTES_MAX})",
            self.batch,
            self.value_bytes
        );
        ensure!(
            self.duration > Duration::ZERO && self.duration <= DURATION_MAX,
            "--duration {:?} is not in (0, {DURATION_MAX:?}]",
            self.duration
        );
        ensure!(
            self.warmup <= WARMUP_MAX,
            "--warmup {:?} exceeds {WARMUP_MAX:?}",
            self.warmup
        );
        if let Some(cycles) = self.cycles {
            ensure!(
                (1..=CYCLE_COUNT_MAX).contains(&cycles),
                "--cycles {cycles} is not in 1..={CYCLE_COUNT_MAX}"
            );
        }
        if let Some(rate) = self.rate {
            ensure!(
                rate.is_finite() && rate > 0.0 && rate <= RATE_PER_SEC_MAX,
                "--rate {rate} is not in (0, {RATE_PER_SEC_MAX}]"
            );
        }
        for (flag, cores) in [
            ("--server-cores", self.server_cores),
            ("--loadgen-cores", self.loadgen_cores),
        ] {
            ensure!(
                (1..=CORE_COUNT_MAX).contains(&cores),
                "{flag} {cores} is not in 1..={CORE_COUNT_MAX}"
            );
        }
        ensure!(
            u32::from(self.loadgen_cores) <= self.clients,
            "--loadgen-cores {} exceeds --clients {}: an executor would have no client",
            self.loadgen_cores,
            self.clients
        );
        let segment_size_bytes = self.server_segment_size_bytes();
        ensure!(
            (cairn_engine::core::limits::SEGMENT_SIZE_BYTES_MIN
                ..=cairn_engine::core::limits::SEGMENT_SIZE_BYTES_MAX)
                .contains(&segment_size_bytes),
            "--server-segment-size-mib {} is out of the engine's range",
            self.server_segment_size_mib
        );
        ensure!(
            !self.topic.is_empty() && self.topic.len() <= cairn_wire::TOPIC_NAME_SIZE_BYTES_MAX,
            "--topic must be 1..={} bytes",
            cairn_wire::TOPIC_NAME_SIZE_BYTES_MAX
        );
        // The ack log separates fields with spaces.
        ensure!(
            !self.topic.contains(char::is_whitespace),
            "--topic {:?} contains whitespace",
            self.topic
        );
        Ok(())
    }

    /// The encoded size of one append's batch (FORMAT.md, Batch header and Record), keys at
    /// their longest.
    #[must_use]
    pub fn batch_size_bytes(&self) -> u64 {
        let record_size_bytes = RECORD_FIXED_SIZE_BYTES as u64
            + workload::key_size_bytes(self.key_count()) as u64
            + u64::from(self.value_bytes);
        BATCH_HEADER_SIZE_BYTES as u64 + u64::from(self.batch) * record_size_bytes
    }

    /// How many distinct keys the workload touches: `--keys` for `hot`, one per client
    /// otherwise.
    #[must_use]
    pub fn key_count(&self) -> u64 {
        match self.workload {
            Workload::Hot => self.keys,
            Workload::Uncontended | Workload::Blind => u64::from(self.clients),
        }
    }

    /// The embedded server's segment size in bytes.
    #[must_use]
    pub fn server_segment_size_bytes(&self) -> u64 {
        u64::from(self.server_segment_size_mib) * 1024 * 1024
    }

    /// `--addr` resolved to its first address, if given.
    pub fn resolve_addr(&self) -> anyhow::Result<Option<SocketAddr>> {
        let Some(addr) = &self.addr else {
            return Ok(None);
        };
        let address = addr
            .to_socket_addrs()
            .with_context(|| format!("resolving --addr {addr}"))?
            .next()
            .with_context(|| format!("--addr {addr} resolves to no address"))?;
        Ok(Some(address))
    }
}

/// How `value` is spelled on the command line, e.g. `from-conflict`.
#[must_use]
pub fn flag_name(value: impl ValueEnum) -> String {
    value
        .to_possible_value()
        .map_or_else(String::new, |possible| possible.get_name().to_owned())
}

/// `duration` as the flags spell it: `2s`, `200ms`, `1.500s`.
#[must_use]
pub fn format_duration(duration: Duration) -> String {
    if duration.subsec_nanos() == 0 {
        format!("{}s", duration.as_secs())
    } else if duration < Duration::from_secs(1) && duration.subsec_nanos().is_multiple_of(1_000_000)
    {
        format!("{}ms", duration.as_millis())
    } else {
        format!("{:.3}s", duration.as_secs_f64())
    }
}

/// Parses `1500ms`, `2s`, `1.5s`, `2m`, `1h` (a bare number is seconds).
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .with_context(|| format!("{text:?} is not a duration such as 10s or 500ms"))?;
    let seconds_per_unit = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => bail!("unknown unit {other:?} in {text:?}: use ms, s, m or h"),
    };
    Duration::try_from_secs_f64(number * seconds_per_unit)
        .with_context(|| format!("{text:?} is not a duration"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(flags: &[&str]) -> Args {
        let mut argv = vec!["cairn-loadgen"];
        argv.extend_from_slice(flags);
        Args::try_parse_from(argv).unwrap()
    }

    #[test]
    fn defaults_are_the_hot_key_workload_and_valid() {
        let args = parse(&[]);
        assert_eq!(args.workload, Workload::Hot);
        assert_eq!(args.keys, 1000);
        assert!((args.zipf - 0.99).abs() < f64::EPSILON);
        assert_eq!(args.retry, RetryMode::FromConflict);
        assert_eq!(args.server_cores, 1);
        assert_eq!(args.connections, ConnectionMode::Shared);
        assert!(args.addr.is_none());
        args.validate().unwrap();
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("soon").is_err());
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(Duration::from_millis(200)), "200ms");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.500s");
        assert_eq!(format_duration(Duration::from_secs(10)), "10s");
        assert!(parse_duration("5 fortnights").is_err());
    }

    #[test]
    fn out_of_bound_flags_are_refused() {
        for flags in [
            &["--clients", "0"][..],
            &["--keys", "0"],
            &["--zipf=-1"],
            &["--batch", "0"],
            &["--batch", "65536", "--value-bytes", "100"],
            &["--rate", "0"],
            &["--loadgen-cores", "4", "--clients", "2"],
            &["--duration", "0s"],
            &["--server-segment-size-mib", "0"],
        ] {
            assert!(parse(flags).validate().is_err(), "{flags:?} accepted");
        }
        parse(&[
            "--batch",
            "64",
            "--value-bytes",
            "100",
            "--workload",
            "blind",
        ])
        .validate()
        .unwrap();
    }
}
