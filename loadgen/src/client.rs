//! The glommio side: load generator executors, their client tasks, pacing and timing.
//!
//! Each executor (one thread, `--loadgen-cores` of them) runs its share of the clients as
//! tasks. With `--connections shared` they share one shard-aware [`Client`], which
//! pipelines their requests over one connection per server shard; with `per-client` each
//! task connects its own `Client`, bootstrapped at the port of the shard that owns its key
//! so that a task on one key holds exactly one connection, as a separate command-handler
//! process would. All connections are open before the schedule starts. A client task runs
//! cycles (`workload::run_cycle`) back to back (closed loop), or each at its intended start time
//! (open loop, `--rate`): then its latency counts from the intended start, so that time
//! spent waiting behind a slow server is measured instead of omitted (coordinated
//! omission). Every executor follows the same [`Schedule`], sent by the main thread once all
//! have connected, and reports to the main thread by message only: an
//! [`IntervalSample`] a second, and its [`Totals`] at the end.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use cairn_client::{AppendResult, Client, ClientConfig, ClientError, Contention};
use cairn_engine::core::{Offset, RecordInput};
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};

use crate::ack_log::AckLog;
use crate::config::{Args, ConnectionMode, ReadMode, Workload};
use crate::rng::Rng;
use crate::stats::{IntervalSample, Recorder, Totals};
use crate::workload::{self, CycleOutcome, CyclePolicy, Latest, LogOps, Values};
use crate::zipf::Zipf;

/// io_uring buffer memory of a load generator executor: it does no file I/O, and the
/// embedded server's shards need the memory-lock allowance (8 MiB here for non-root).
const EXECUTOR_IO_MEMORY_BYTES: usize = 512 * 1024;

/// How often an executor waiting for its schedule looks for it.
const SCHEDULE_POLL_INTERVAL: Duration = Duration::from_millis(1);

/// Pause of a client after a failed cycle, so that a server that is down is not hammered
/// by a tight loop of instant failures.
const ERROR_BACKOFF: Duration = Duration::from_millis(10);

/// How long after the window an open loop may keep working through cycles it planned
/// inside the window; what is still unstarted then is reported as unstarted.
const OPEN_LOOP_DRAIN_MAX: Duration = Duration::from_secs(5);

/// The run's timeline, the same for every executor.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// When clients start their first cycles (warm-up starts).
    pub start: Instant,
    /// Cycles (intended to) start at or after this are measured.
    pub measure_start: Instant,
    /// No cycle starts at or after this; `None` with `--cycles`.
    pub measure_end: Option<Instant>,
}

/// Everything an executor needs, moved to its thread.
#[derive(Debug)]
pub struct ExecutorPlan {
    /// Which executor, `0..loadgen_cores`.
    pub executor_index: u16,
    /// Where its thread runs.
    pub placement: Placement,
    /// The clients it runs, by global index `0..clients`.
    pub client_indexes: Vec<u32>,
    /// The validated flags.
    pub args: Args,
    /// The server.
    pub address: SocketAddr,
    /// The port of the shard owning each partition of the topic, by partition number.
    pub partition_ports: Vec<u16>,
    /// Told once the executor has connected (or failed to).
    pub ready: mpsc::Sender<Result<(), String>>,
    /// Brings the schedule once every executor is ready.
    pub schedule: mpsc::Receiver<Schedule>,
    /// Where interval samples go.
    pub samples: mpsc::SyncSender<IntervalSample>,
    /// Raised to end the run early (Ctrl-C).
    pub stop: Arc<AtomicBool>,
}

/// Starts an executor thread running `plan`; its join handle yields the executor's totals.
pub fn spawn(plan: ExecutorPlan) -> anyhow::Result<ExecutorJoinHandle<anyhow::Result<Totals>>> {
    let name = format!("cairn-loadgen-{}", plan.executor_index);
    LocalExecutorBuilder::new(plan.placement.clone())
        .name(&name)
        .io_memory(EXECUTOR_IO_MEMORY_BYTES)
        .spawn(move || run_executor(plan))
        .map_err(|error| anyhow!("starting executor {name}: {error}"))
}

/// What the tasks of one executor share.
struct ExecutorContext {
    args: Args,
    policy: CyclePolicy,
    /// Shared by the executor's clients, whatever `--connections`: they are one process's
    /// command handlers.
    contention: Contention,
    schedule: Schedule,
    recorder: Rc<RefCell<Recorder>>,
    ack_log: Option<RefCell<AckLog>>,
    stop: Arc<AtomicBool>,
    /// A failure that ends this executor's run (e.g. the ack log cannot be written).
    fatal: RefCell<Option<anyhow::Error>>,
}

async fn run_executor(plan: ExecutorPlan) -> anyhow::Result<Totals> {
    let recorder = Rc::new(RefCell::new(Recorder::default()));
    let next_interval_index = Rc::new(Cell::new(0u64));
    let executor_index = plan.executor_index;
    let samples = plan.samples.clone();
    let result = drive(plan, recorder.clone(), next_interval_index.clone()).await;
    // A last sample always, even after a failure: the main thread waits for it.
    let last = recorder
        .borrow_mut()
        .take_interval(executor_index, next_interval_index.get(), true);
    // The main thread only hangs up once every executor has sent its last sample.
    let _ = samples.send(last);
    let totals = recorder.borrow_mut().take_totals();
    result.map(|()| totals)
}

async fn drive(
    plan: ExecutorPlan,
    recorder: Rc<RefCell<Recorder>>,
    next_interval_index: Rc<Cell<u64>>,
) -> anyhow::Result<()> {
    let ExecutorPlan {
        executor_index,
        client_indexes,
        args,
        address,
        partition_ports,
        ready,
        schedule,
        samples,
        stop,
        ..
    } = plan;
    let setup = async {
        let clients = connect_clients(&args, address, &partition_ports, &client_indexes).await?;
        let ack_log = args.ack_log.as_deref().map(AckLog::open).transpose()?;
        anyhow::Ok((clients, ack_log))
    };
    let (clients, ack_log) = match setup.await {
        Ok(setup) => {
            let _ = ready.send(Ok(()));
            setup
        }
        Err(error) => {
            let _ = ready.send(Err(format!("{error:#}")));
            return Err(error);
        }
    };
    let schedule = loop {
        match schedule.try_recv() {
            Ok(schedule) => break schedule,
            Err(mpsc::TryRecvError::Empty) => glommio::timer::sleep(SCHEDULE_POLL_INTERVAL).await,
            Err(mpsc::TryRecvError::Disconnected) => bail!("the run was called off"),
        }
    };
    let policy = CyclePolicy {
        workload: args.workload,
        read: args.read,
        retry: args.retry,
        retry_count_max: args.max_retries,
    };
    let contention = Contention::new(
        args.contention.policy(),
        args.seed ^ u64::from(executor_index).wrapping_mul(0xA076_1D64_78BD_642F),
    );
    let context = Rc::new(ExecutorContext {
        args,
        policy,
        contention,
        schedule,
        recorder: recorder.clone(),
        ack_log: ack_log.map(RefCell::new),
        stop,
        fatal: RefCell::new(None),
    });
    let ticker = glommio::spawn_local(tick(
        schedule.start,
        recorder,
        next_interval_index,
        samples,
        executor_index,
    ));
    let tasks: Vec<_> = client_indexes
        .into_iter()
        .zip(clients)
        .map(|(client_index, client)| {
            glommio::spawn_local(client_loop(context.clone(), client, client_index))
        })
        .collect();
    for task in tasks {
        task.await;
    }
    ticker.cancel().await;
    match context.fatal.take() {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// One [`Client`] per entry of `client_indexes`, connected: clones of a single one with
/// `--connections shared`, each its own with `per-client`.
async fn connect_clients(
    args: &Args,
    address: SocketAddr,
    partition_ports: &[u16],
    client_indexes: &[u32],
) -> anyhow::Result<Vec<Client>> {
    match args.connections {
        ConnectionMode::Shared => {
            let client = Client::connect(ClientConfig::new(address))
                .await
                .with_context(|| format!("connecting to {address}"))?;
            Ok(vec![client; client_indexes.len()])
        }
        ConnectionMode::PerClient => {
            let mut clients = Vec::with_capacity(client_indexes.len());
            for &client_index in client_indexes {
                let bootstrap = per_client_bootstrap(args, address, partition_ports, client_index);
                let client = Client::connect(ClientConfig::new(bootstrap))
                    .await
                    .with_context(|| format!("connecting client {client_index} to {bootstrap}"))?;
                clients.push(client);
            }
            Ok(clients)
        }
    }
}

/// Where a per-client connection starts: the port of the shard owning the client's own key
/// (`uncontended`, `blind`), so that the bootstrap connection is the one its requests use
/// and it holds no idle second one. `hot` clients draw keys from every shard; theirs start
/// on the shard of partition `client_index % partitions`, spreading them evenly.
fn per_client_bootstrap(
    args: &Args,
    address: SocketAddr,
    partition_ports: &[u16],
    client_index: u32,
) -> SocketAddr {
    let partition_count = u32::try_from(partition_ports.len()).unwrap_or(u32::MAX);
    if partition_count == 0 {
        return address;
    }
    let partition = match args.workload {
        Workload::Uncontended | Workload::Blind => {
            let own_key = workload::key_name(u64::from(client_index), u64::from(args.clients));
            cairn_wire::partition_for_key(&own_key, partition_count)
        }
        Workload::Hot => client_index % partition_count,
    };
    let port = usize::try_from(partition)
        .ok()
        .and_then(|partition| partition_ports.get(partition))
        .copied();
    port.map_or(address, |port| SocketAddr::new(address.ip(), port))
}

/// Sends the figures of each second of the run as it ends, until cancelled.
async fn tick(
    start: Instant,
    recorder: Rc<RefCell<Recorder>>,
    next_interval_index: Rc<Cell<u64>>,
    samples: mpsc::SyncSender<IntervalSample>,
    executor_index: u16,
) {
    loop {
        let interval_index = next_interval_index.get();
        let due = start + Duration::from_secs(interval_index + 1);
        sleep_until(due).await;
        let sample = recorder
            .borrow_mut()
            .take_interval(executor_index, interval_index, false);
        next_interval_index.set(interval_index + 1);
        // Blocks only if the main thread is more than a queue behind; it never is for long.
        if samples.send(sample).is_err() {
            return;
        }
    }
}

async fn sleep_until(deadline: Instant) {
    let now = Instant::now();
    if deadline > now {
        glommio::timer::sleep(deadline - now).await;
    }
}

/// The measured cycles of client `client_index` when `cycle_count` are shared by
/// `client_count` clients: as even as can be.
fn cycle_quota(cycle_count: u64, client_count: u32, client_index: u32) -> u64 {
    let client_count = u64::from(client_count);
    cycle_count / client_count + u64::from(u64::from(client_index) < cycle_count % client_count)
}

/// One client: cycles until the window ends, its quota is done, or the run is stopped.
async fn client_loop(context: Rc<ExecutorContext>, client: Client, client_index: u32) {
    let args = &context.args;
    let schedule = context.schedule;
    let mut rng = Rng::for_stream(args.seed, u64::from(client_index));
    let zipf = Zipf::new(args.keys, args.zipf);
    let own_key = workload::key_name(u64::from(client_index), u64::from(args.clients));
    let mut values = Values::new(&mut rng, args.batch, args.value_bytes);
    let ops = ClientOps {
        client,
        topic: &args.topic,
        recorder: &context.recorder,
        measured: Cell::new(false),
    };
    let quota = args
        .cycles
        .map(|cycle_count| cycle_quota(cycle_count, args.clients, client_index));
    // Open loop: this client's share of --rate, its starts spread evenly between clients'.
    let period = args
        .rate
        .map(|rate| Duration::from_secs_f64(f64::from(args.clients) / rate));
    let mut intended_next = period.map(|period| {
        schedule.start + period.mul_f64(f64::from(client_index) / f64::from(args.clients))
    });
    let mut latest = Latest::Absent;
    let mut measured_count = 0u64;
    for sequence in 0u64.. {
        if context.stop.load(Ordering::Relaxed) || context.fatal.borrow().is_some() {
            break;
        }
        if quota.is_some_and(|quota| measured_count >= quota) {
            break;
        }
        let now = Instant::now();
        let start = match (period, intended_next.as_mut()) {
            (Some(period), Some(intended)) => {
                let start = *intended;
                *intended += period;
                start
            }
            _ => now,
        };
        if let Some(end) = schedule.measure_end {
            if start >= end {
                break;
            }
            if let Some(period) = period
                && now > end + OPEN_LOOP_DRAIN_MAX
            {
                let behind = end.saturating_duration_since(start);
                let unstarted = (behind.as_secs_f64() / period.as_secs_f64()).ceil() as u64;
                context.recorder.borrow_mut().record_unstarted(unstarted);
                break;
            }
        }
        sleep_until(start).await;
        let measured = start >= schedule.measure_start;
        ops.measured.set(measured);
        let key = match args.workload {
            Workload::Hot => workload::key_name(zipf.sample(&mut rng) - 1, args.keys),
            Workload::Uncontended | Workload::Blind => own_key.clone(),
        };
        values.stamp(client_index, sequence);
        let outcome = workload::run_cycle(
            &ops,
            &context.policy,
            &context.contention,
            &key,
            values.as_slices(),
            &mut latest,
        )
        .await;
        let completed = Instant::now();
        if let CycleOutcome::Succeeded {
            partition,
            base_offset,
            ..
        } = &outcome
            && let Some(ack_log) = &context.ack_log
            && let Err(error) = ack_log.borrow_mut().record_batch(
                &args.topic,
                *partition,
                *base_offset,
                &key,
                values.as_slices(),
            )
        {
            *context.fatal.borrow_mut() = Some(anyhow!(error).context("writing --ack-log"));
        }
        let latency_us = duration_us(completed.saturating_duration_since(start));
        context
            .recorder
            .borrow_mut()
            .record_cycle(&outcome, latency_us, measured, completed);
        if measured {
            measured_count += 1;
        }
        if matches!(outcome, CycleOutcome::Failed { .. }) {
            glommio::timer::sleep(ERROR_BACKOFF).await;
        }
    }
}

fn duration_us(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// [`LogOps`] over the real client, timing acknowledged appends of measured cycles.
struct ClientOps<'a> {
    client: Client,
    topic: &'a str,
    recorder: &'a RefCell<Recorder>,
    /// Whether the cycle under way is measured.
    measured: Cell<bool>,
}

impl LogOps for ClientOps<'_> {
    async fn read_latest(&self, key: &[u8], read: ReadMode) -> Result<Option<Offset>, ClientError> {
        let include_appended = read == ReadMode::Appended;
        let record = self
            .client
            .read_key(self.topic, None, key, include_appended)
            .await?;
        Ok(record.map(|record| record.offset))
    }

    async fn append(&self, records: &[RecordInput<'_>]) -> Result<AppendResult, ClientError> {
        let sent = Instant::now();
        let result = self.client.append(self.topic, None, None, records).await;
        // Only acknowledged appends: a conflict returns before any fsync, and mixing the
        // two would make contention look like a faster disk.
        if self.measured.get() && matches!(result, Ok(AppendResult::Appended { .. })) {
            self.recorder
                .borrow_mut()
                .record_append(duration_us(sent.elapsed()));
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycle_quotas_add_up_and_differ_by_at_most_one() {
        for (cycle_count, client_count) in [(10, 3), (2, 8), (1000, 16), (7, 7)] {
            let quotas: Vec<u64> = (0..client_count)
                .map(|index| cycle_quota(cycle_count, client_count, index))
                .collect();
            assert_eq!(quotas.iter().sum::<u64>(), cycle_count);
            let spread = quotas.iter().max().unwrap() - quotas.iter().min().unwrap();
            assert!(spread <= 1, "{quotas:?}");
        }
    }
}
