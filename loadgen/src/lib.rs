//! Cairn's load generator: what conditional appends and contention on hot keys cost.
//!
//! A run, `run(args)`:
//! 1. validates the flags (`config`), starts an embedded server when no `--addr` is given
//!    (`embedded`), and creates the topic if it is missing;
//! 2. starts `--loadgen-cores` executors (`client`), each with its share of `--clients`
//!    client tasks and either one pipelining client they all share (`--connections shared`)
//!    or one per task (`per-client`); once all have connected, they follow one schedule:
//!    warm-up, then the measured window (`--duration`) or quota (`--cycles`);
//! 3. each client task runs cycles (`workload`): `uncontended`, `hot` (read, conditional
//!    append, retry or abandon on conflicts, keys drawn by `zipf`) or `blind`, with its own
//!    seeded random stream (`rng`), closed loop or at a fixed rate (`--rate`, latency from
//!    the intended start);
//! 4. executors count and time cycles (`stats`), send a sample every second (the progress
//!    line on stderr) and their totals at the end; the main thread merges them into the
//!    final report (`report`: text, `--json`, `--report DIR` with .hgrm files and an SVG),
//!    and every acknowledged record can be logged for crash checks (`ack_log`).

pub mod ack_log;
mod client;
pub mod config;
pub mod embedded;
mod progress;
pub mod report;
pub mod rng;
pub mod stats;
pub mod workload;
pub mod zipf;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use cairn_client::{BlockingClient, ClientConfig, TopicInfo};
use cairn_wire::ErrorCode;
use glommio::Placement;

pub use crate::config::Args;
use crate::config::Workload;
use crate::embedded::EmbeddedServer;
use crate::progress::Progress;
use crate::report::{Summary, TimelinePoint, thousands, thousands_f64};
use crate::stats::Totals;

/// The commit the binary was built from (`git rev-parse --short HEAD`), or "unknown".
pub const COMMIT: &str = env!("CAIRN_COMMIT");

/// Interval samples that may wait for the main thread; executors block beyond it.
const SAMPLE_QUEUE_COUNT_MAX: usize = 256;

/// How long executors may take to connect before the run is given up.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How often the main thread looks at the stop flag while no sample arrives.
const PROGRESS_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Runs the load described by `args` and reports it: the configuration and the final report
/// on stdout, progress on stderr, and the files `--json`, `--report` and `--ack-log` name.
pub fn run(args: Args) -> anyhow::Result<Summary> {
    args.validate()?;
    let stop = Arc::new(AtomicBool::new(false));
    let _signals = StopOnSignal::install(&stop)?;
    let (server, address) = match args.resolve_addr()? {
        Some(address) => (None, address),
        None => {
            let server = EmbeddedServer::start(
                args.server_cores,
                !args.no_pin,
                args.server_segment_size_bytes(),
            )?;
            let address = server.address;
            (Some(server), address)
        }
    };
    let topic = prepare_topic(address, &args)?;
    println!(
        "{}",
        describe(&args, server.as_ref(), address, topic.partition_count())
    );
    if let Some(path) = &args.ack_log {
        ack_log::create(path)?;
    }
    let partition_ports = topic
        .partitions
        .iter()
        .map(|partition| partition.port)
        .collect();
    let measured = drive(&args, address, partition_ports, &stop)?;
    let summary = Summary::new(&args, &measured.totals, measured.duration_s);
    print!("{}", summary.to_text());
    if measured.totals.unstarted_cycles > 0 {
        println!(
            "  {} cycles planned by --rate in the window never started: the server fell \
             behind the rate (they are in no figure above)",
            thousands(measured.totals.unstarted_cycles)
        );
    }
    if let Some(error) = &measured.totals.first_error {
        println!("  first error: {error}");
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&summary.to_json())
            .context("encoding the JSON summary")?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("writing --json {}", path.display()))?;
    }
    if let Some(dir) = &args.report {
        report::write_report_dir(
            dir,
            &summary,
            &measured.totals,
            &measured.timeline,
            args.warmup.as_secs_f64(),
        )?;
        println!("  report files in {}", dir.display());
    }
    if let Some(server) = server {
        server.stop()?;
    }
    Ok(summary)
}

/// The configuration, for the top of the report: enough to rerun it.
fn describe(
    args: &Args,
    server: Option<&EmbeddedServer>,
    address: SocketAddr,
    partition_count: u32,
) -> String {
    let keys = match args.workload {
        Workload::Hot => format!(
            "keys {}, zipf {}, read {}, retry {}, max-retries {}, contention {}",
            args.keys,
            args.zipf,
            config::flag_name(args.read),
            config::flag_name(args.retry),
            args.max_retries,
            args.contention.name()
        ),
        Workload::Uncontended | Workload::Blind => "one key per client".to_owned(),
    };
    let load = match args.rate {
        Some(rate) => format!("open loop at {} cycles/s", thousands_f64(rate)),
        None => "closed loop".to_owned(),
    };
    let amount = match args.cycles {
        Some(cycles) => format!("{} cycles", thousands(cycles)),
        None => config::format_duration(args.duration),
    };
    let server = match server {
        Some(server) => format!(
            "embedded, server-cores {}, segments of {} MiB, data in {}",
            args.server_cores,
            args.server_segment_size_mib,
            server.data_dir().display()
        ),
        None => address.to_string(),
    };
    format!(
        "cairn-loadgen {} (commit {COMMIT})\n\
         workload {}: clients {}, {keys}\n\
         appends: batch {} x value-bytes {}, topic {} with partitions {partition_count}\n\
         load: {load}, warm-up {} then {amount}, seed {}\n\
         server: {server}; loadgen-cores {}, connections {}",
        env!("CARGO_PKG_VERSION"),
        args.workload.name(),
        args.clients,
        args.batch,
        args.value_bytes,
        args.topic,
        config::format_duration(args.warmup),
        args.seed,
        args.loadgen_cores,
        args.connections.name(),
    )
}

/// Creates the topic if it is missing; returns it (its partitions and their shards' ports).
fn prepare_topic(address: SocketAddr, args: &Args) -> anyhow::Result<TopicInfo> {
    let mut client = BlockingClient::connect(ClientConfig::new(address))
        .with_context(|| format!("connecting to {address}"))?;
    match client.create_topic(&args.topic, args.partitions) {
        Ok(topic) => Ok(topic),
        Err(error) if error.server_code() == Some(ErrorCode::TopicExists) => {
            let metadata = client.metadata().context("reading metadata")?;
            metadata
                .topics
                .into_iter()
                .find(|topic| topic.name == args.topic)
                .ok_or_else(|| anyhow!("topic {} exists but is not in metadata", args.topic))
        }
        Err(error) => Err(error).with_context(|| format!("creating topic {}", args.topic)),
    }
}

/// What the executors measured.
struct Measured {
    totals: Totals,
    timeline: Vec<TimelinePoint>,
    duration_s: f64,
}

/// Starts the executors, gives them one schedule, shows progress, and merges their totals.
fn drive(
    args: &Args,
    address: SocketAddr,
    partition_ports: Vec<u16>,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<Measured> {
    let executor_count = args.loadgen_cores;
    let cpu_count = std::thread::available_parallelism().map_or(1, |count| count.get());
    let (ready_sender, ready_receiver) = mpsc::channel();
    let (sample_sender, sample_receiver) = mpsc::sync_channel(SAMPLE_QUEUE_COUNT_MAX);
    let mut schedule_senders = Vec::new();
    let mut handles = Vec::new();
    for executor_index in 0..executor_count {
        let (schedule_sender, schedule_receiver) = mpsc::channel();
        // Beside the embedded server's shards (CPUs 0..server_cores), not on them.
        let placement = if args.no_pin || args.addr.is_some() {
            Placement::Unbound
        } else {
            Placement::Fixed(usize::from(args.server_cores + executor_index) % cpu_count)
        };
        let client_indexes = (0..args.clients)
            .filter(|client| client % u32::from(executor_count) == u32::from(executor_index))
            .collect();
        handles.push(client::spawn(client::ExecutorPlan {
            executor_index,
            placement,
            client_indexes,
            args: args.clone(),
            address,
            partition_ports: partition_ports.clone(),
            ready: ready_sender.clone(),
            schedule: schedule_receiver,
            samples: sample_sender.clone(),
            stop: stop.clone(),
        })?);
        schedule_senders.push(schedule_sender);
    }
    drop(ready_sender);
    drop(sample_sender);

    let mut setup_error = None;
    for _ in 0..executor_count {
        match ready_receiver.recv_timeout(READY_TIMEOUT) {
            Ok(Ok(())) => {}
            Ok(Err(problem)) => {
                setup_error = Some(anyhow!(problem));
                break;
            }
            Err(_) => {
                setup_error = Some(anyhow!("executors not connected after {READY_TIMEOUT:?}"));
                break;
            }
        }
    }
    if let Some(error) = setup_error {
        // Without a schedule the executors give up; wait for them before returning.
        drop(schedule_senders);
        drop(sample_receiver);
        for handle in handles {
            let _ = handle.join();
        }
        return Err(error);
    }

    let start = Instant::now();
    let measure_start = start + args.warmup;
    let schedule = client::Schedule {
        start,
        measure_start,
        measure_end: args.cycles.is_none().then(|| measure_start + args.duration),
    };
    for sender in schedule_senders {
        // An executor that is gone has failed; its join below says why.
        let _ = sender.send(schedule);
    }

    let window_end = args.cycles.is_none().then(|| args.warmup + args.duration);
    let mut progress = Progress::new(executor_count, start, args.warmup, window_end, args.quiet);
    let mut interrupted_at = None;
    while !progress.all_finished() {
        match sample_receiver.recv_timeout(PROGRESS_POLL_INTERVAL) {
            Ok(sample) => progress.add(sample),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if interrupted_at.is_none() && stop.load(Ordering::Relaxed) {
            interrupted_at = Some(Instant::now());
            eprintln!("interrupted: finishing the cycles under way (again to quit at once)");
        }
    }
    let timeline = progress.finish();

    let mut totals = Totals::default();
    let mut first_error = None;
    for handle in handles {
        match handle.join() {
            Ok(Ok(executor_totals)) => totals.merge(&executor_totals),
            Ok(Err(error)) => {
                first_error.get_or_insert(error);
            }
            Err(error) => {
                first_error.get_or_insert(anyhow!("a load generator executor failed: {error}"));
            }
        }
    }
    if let Some(error) = first_error {
        return Err(error);
    }
    let measured_end = match schedule.measure_end {
        // A duration run measures its window (cut short by an interrupt).
        Some(end) => interrupted_at.map_or(end, |interrupted| interrupted.min(end)),
        // A --cycles run ends when its last measured cycle does.
        None => totals.measured_end.unwrap_or(measure_start),
    };
    let duration_s = measured_end
        .saturating_duration_since(measure_start)
        .as_secs_f64();
    Ok(Measured {
        totals,
        timeline,
        duration_s,
    })
}

/// Ctrl-C (SIGINT) or SIGTERM ends the run early but cleanly: cycles under way finish, the
/// report covers what was measured, and the embedded server's directory is removed. A
/// second signal exits at once (status 130).
struct StopOnSignal {
    ids: Vec<signal_hook::SigId>,
}

impl StopOnSignal {
    fn install(stop: &Arc<AtomicBool>) -> anyhow::Result<StopOnSignal> {
        let mut ids = Vec::new();
        for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            // Registered first, so it sees the flag before the second handler raises it.
            ids.push(
                signal_hook::flag::register_conditional_shutdown(signal, 130, stop.clone())
                    .context("installing a signal handler")?,
            );
            ids.push(
                signal_hook::flag::register(signal, stop.clone())
                    .context("installing a signal handler")?,
            );
        }
        Ok(StopOnSignal { ids })
    }
}

impl Drop for StopOnSignal {
    fn drop(&mut self) {
        for id in self.ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}
