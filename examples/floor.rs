//! The machine's floor under one durable append: what the disk and loopback TCP cost with
//! nothing of Cairn in between. `scripts/floor.sh` runs this next to a real server and
//! prints Cairn's single-client figures as multiples of these.
//!
//! - `floor disk DIR`: durable 4 KiB writes (O_DIRECT `pwrite` then `fdatasync`, the two
//!   calls a shard makes per group commit) to a file in DIR that is preallocated and already
//!   written, so that no write extends the file or converts unwritten extents: the steady
//!   state of a segment being appended to. Offsets advance 4 KiB per write, like a log.
//! - `floor loopback CLIENT_CPU SERVER_CPU`: ping-pong of 64-byte messages over
//!   127.0.0.1 with `TCP_NODELAY`, each end a thread pinned to its CPU (the same CPU for
//!   the one-core figure).
//!
//! Each prints one JSON line: `{"measure", "count", "p50_us", "p99_us", "mean_us"}`, from
//! every timed call (after an untimed warm-up), in microseconds with two decimals.
//! Compiled code only on the timed path: no interpreter or `dd` process per call.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use nix::sched::{CpuSet, sched_setaffinity};
use nix::unistd::Pid;

/// The block a durable append writes at least: one page, the device's logical block.
const BLOCK_SIZE_BYTES: usize = 4096;
/// Blocks of the test file; writes wrap around it.
const DISK_FILE_BLOCK_COUNT: usize = 4096;
/// Untimed writes before timing, so the first timed one finds caches and queues warm.
const DISK_WARMUP_COUNT: usize = 100;
/// Bytes each way of one loopback round trip: about a small request's frame.
const MESSAGE_SIZE_BYTES: usize = 64;
/// Untimed round trips before timing.
const LOOPBACK_WARMUP_COUNT: usize = 1000;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let count = |text: Option<&String>, default: usize| -> anyhow::Result<usize> {
        text.map_or(Ok(default), |text| {
            text.parse().with_context(|| format!("count {text:?}"))
        })
    };
    match args.first().map(String::as_str) {
        Some("disk") => {
            let dir = args.get(1).context("floor disk DIR [COUNT]")?;
            let samples = disk(Path::new(dir), count(args.get(2), 2000)?)?;
            print_line("disk_write_fdatasync_4k", &samples);
        }
        Some("loopback") => {
            let cpu = |index: usize| -> anyhow::Result<usize> {
                let text = args
                    .get(index)
                    .context("floor loopback CLIENT_CPU SERVER_CPU [COUNT]")?;
                text.parse().with_context(|| format!("CPU {text:?}"))
            };
            let (client_cpu, server_cpu) = (cpu(1)?, cpu(2)?);
            let samples = loopback(client_cpu, server_cpu, count(args.get(3), 20_000)?)?;
            let measure = format!("loopback_round_trip_cpu{client_cpu}_cpu{server_cpu}");
            print_line(&measure, &samples);
        }
        _ => bail!("usage: floor disk DIR [COUNT] | floor loopback CLIENT_CPU SERVER_CPU [COUNT]"),
    }
    Ok(())
}

/// Times `count` O_DIRECT 4 KiB writes, each followed by `fdatasync`, to a written file.
fn disk(dir: &Path, count: usize) -> anyhow::Result<Vec<Duration>> {
    ensure!(count > 0, "count is at least 1");
    let path = dir.join(format!("floor-{}.tmp", std::process::id()));
    let _remove = RemoveOnDrop(path.clone());
    // Written through the page cache first and synced: every block exists on the device,
    // so the timed writes overwrite and fdatasync has no metadata to write.
    {
        let mut file =
            File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let zeros = vec![0u8; BLOCK_SIZE_BYTES * 256];
        for _ in 0..DISK_FILE_BLOCK_COUNT / 256 {
            file.write_all(&zeros)?;
        }
        file.sync_all()?;
    }
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(nix::fcntl::OFlag::O_DIRECT.bits())
        .open(&path)
        .with_context(|| {
            format!(
                "opening {} with O_DIRECT (tmpfs and some overlay filesystems refuse it: \
                 point at the data directory's filesystem)",
                path.display()
            )
        })?;
    // O_DIRECT needs an aligned buffer; take the aligned block inside a larger one.
    let mut buffer = vec![0xA5u8; BLOCK_SIZE_BYTES * 2];
    let start = buffer.as_ptr().align_offset(BLOCK_SIZE_BYTES);
    let block = buffer
        .get_mut(start..start + BLOCK_SIZE_BYTES)
        .context("aligned block inside the buffer")?;
    let mut samples = Vec::with_capacity(count);
    for index in 0..DISK_WARMUP_COUNT + count {
        let position = ((index % DISK_FILE_BLOCK_COUNT) * BLOCK_SIZE_BYTES) as u64;
        let started = Instant::now();
        file.write_all_at(block, position)
            .with_context(|| format!("O_DIRECT write at {position}"))?;
        file.sync_data().context("fdatasync")?;
        if index >= DISK_WARMUP_COUNT {
            samples.push(started.elapsed());
        }
    }
    Ok(samples)
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) -> anyhow::Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu).with_context(|| format!("CPU {cpu}"))?;
    sched_setaffinity(Pid::from_raw(0), &set).with_context(|| format!("pinning to CPU {cpu}"))
}

/// Times `count` round trips of a 64-byte message between two pinned threads.
fn loopback(client_cpu: usize, server_cpu: usize, count: usize) -> anyhow::Result<Vec<Duration>> {
    ensure!(count > 0, "count is at least 1");
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    let address = listener.local_addr()?;
    let server = std::thread::spawn(move || -> anyhow::Result<()> {
        pin_to(server_cpu)?;
        let (mut stream, _) = listener.accept()?;
        stream.set_nodelay(true)?;
        let mut message = [0u8; MESSAGE_SIZE_BYTES];
        loop {
            match stream.read_exact(&mut message) {
                Ok(()) => stream.write_all(&message)?,
                // The client hung up: done.
                Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(error) => return Err(error.into()),
            }
        }
    });
    pin_to(client_cpu)?;
    let mut stream = TcpStream::connect(address)?;
    stream.set_nodelay(true)?;
    let mut message = [0x5Au8; MESSAGE_SIZE_BYTES];
    let mut samples = Vec::with_capacity(count);
    for index in 0..LOOPBACK_WARMUP_COUNT + count {
        let started = Instant::now();
        stream.write_all(&message)?;
        stream.read_exact(&mut message)?;
        if index >= LOOPBACK_WARMUP_COUNT {
            samples.push(started.elapsed());
        }
    }
    drop(stream);
    server
        .join()
        .map_err(|_| anyhow::anyhow!("the echo thread panicked"))??;
    Ok(samples)
}

/// Prints `samples`' summary as one JSON line.
fn print_line(measure: &str, samples: &[Duration]) {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let micros = |duration: Duration| (duration.as_secs_f64() * 1e8).round() / 100.0;
    // Nearest rank: the smallest sample at or above the fraction of all samples.
    let percentile = |fraction: f64| {
        let rank = ((fraction * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted.get(rank - 1).copied().map_or(0.0, micros)
    };
    let total: Duration = sorted.iter().sum();
    let mean = micros(total / u32::try_from(sorted.len()).unwrap_or(u32::MAX).max(1));
    println!(
        "{}",
        serde_json::json!({
            "measure": measure,
            "count": sorted.len(),
            "p50_us": percentile(0.50),
            "p99_us": percentile(0.99),
            "mean_us": mean,
        })
    );
}
