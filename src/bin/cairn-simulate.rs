//! `cairn-simulate`: runs the seeded power-loss simulator (`cairn_engine::sim`) over many
//! seeds and ends with one line:
//! `simulated <S> seeds, <C> crashes, <A> acknowledged batches checked, violations <V>`.
//! Every violation is printed with the seed that replays it (`--seed N`). Exit status 1 if
//! any seed broke an invariant.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};

use cairn_engine::sim::{SimConfig, SimReport, simulate};
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "cairn-simulate",
    about = "Power-loss simulation of the shard log"
)]
struct Args {
    /// How many seeds to run.
    #[arg(long, default_value_t = 1000)]
    seeds: u64,
    /// The first seed; seeds run from it upwards.
    #[arg(long, default_value_t = 1)]
    first_seed: u64,
    /// Replay exactly this one seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Threads to run seeds on.
    #[arg(long, default_value_t = 2)]
    threads: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let (first, count) = match args.seed {
        Some(seed) => (seed, 1),
        None => (args.first_seed, args.seeds),
    };
    let config = SimConfig::default();
    let next = AtomicU64::new(0);
    let reports: Vec<SimReport> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..args.threads.max(1))
            .map(|_| {
                scope.spawn(|| {
                    let mut reports = Vec::new();
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        if index >= count {
                            return reports;
                        }
                        reports.push(simulate(first + index, &config));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| worker.join().unwrap_or_default())
            .collect()
    });
    let crash_count: u64 = reports.iter().map(|report| report.crash_count).sum();
    let acknowledged: u64 = reports
        .iter()
        .map(|report| report.acknowledged_checked_count)
        .sum();
    let mut violations: Vec<&SimReport> = reports
        .iter()
        .filter(|report| report.violation.is_some())
        .collect();
    violations.sort_by_key(|report| report.seed);
    for report in &violations {
        if let Some(violation) = &report.violation {
            println!(
                "{violation} (replay: cairn-simulate --seed {})",
                report.seed
            );
        }
    }
    println!(
        "simulated {} seeds, {crash_count} crashes, {acknowledged} acknowledged batches checked, \
         violations {}",
        reports.len(),
        violations.len()
    );
    if violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
