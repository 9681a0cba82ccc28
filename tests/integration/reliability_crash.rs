//! Crash under load (docs/DESIGN.md §3.1-3.4, for the whole server): `cairn serve` runs as a child
//! process on a temp data directory while writers append conditional batches over TCP and
//! followers long-poll; it is killed with SIGKILL at a random moment (or, one round in
//! three, stopped with SIGTERM and must drain and exit 0), restarted on the same
//! directory (sometimes after another SIGKILL in the middle of recovery), and the
//! recovered log is checked against everything the clients were told
//! (`workload::check_log`). Then the next round loads the recovered server. At the end,
//! a second recovery must give exactly the same log.
//!
//! Seeded: `TEST_SEED` replays a run; `CAIRN_CRASH_ROUNDS` sets the number of rounds (CI: 6).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_engine::Offset;

use crate::support::server::TestServer;
use crate::support::workload::{
    Control, Ledger, Outcome, StorageFailureRule, Workload, WriterShape, check_log, connect,
    run_follower, run_writer,
};
use crate::support::{TestRng, copy_tree, test_seed};

const WRITER_COUNT: u64 = 8;
const PARTITION_COUNT: u32 = 4;
const KEY_COUNT: u32 = 48;
/// Small segments (2 MiB + 4 KiB), so that rounds roll segments often and kills also land
/// in segment preparation and rolls; a checkpoint every 32 KiB of log (about every eight
/// groups), so kills also land while checkpoints are captured, written and installed, and
/// restarts resume from them.
const SERVER_ARGS: &[&str] = &[
    "--segment-size",
    "2101248",
    "--checkpoint-interval",
    "32768",
];

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(default)
}

/// How a round ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    Kill,
    Terminate,
}

#[test]
fn kill_9_under_conditional_load_loses_no_acknowledged_record() {
    let seed = test_seed("reliability_crash::kill_9_under_conditional_load");
    let round_count = env_u64("CAIRN_CRASH_ROUNDS", 6);
    let mut rng = TestRng::new(seed);
    let temp = tempfile::tempdir().unwrap();
    let data_dir = temp.path().join("data");
    let workload = Arc::new(Workload::new("crash", PARTITION_COUNT, KEY_COUNT));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let started = Instant::now();
    let mut killed_count = 0;
    let mut checked_record_count;

    let mut killed_while_starting_count = 0;
    for round in 0..round_count {
        if round > 0 && rng.below(3) == 0 {
            // A crash during recovery: it must leave the log as it found it.
            let after = Duration::from_millis(rng.below(120));
            TestServer::kill_while_starting(&data_dir, SERVER_ARGS, after);
            killed_while_starting_count += 1;
        }
        let mut server = TestServer::start_on(&data_dir, SERVER_ARGS);
        let mut client = connect(server.address).unwrap();
        if round == 0 {
            client
                .create_topic(&workload.topic, PARTITION_COUNT)
                .unwrap();
        }
        let check = check_log(
            &mut client,
            &workload,
            &mut ledger.lock().unwrap(),
            StorageFailureRule::MayBePresent,
            &format!("round {round} (seed {seed})"),
        );
        checked_record_count = check.record_count;
        let follow_from: Vec<Offset> = check
            .records
            .iter()
            .map(|records| Offset(records.len() as u64))
            .collect();
        drop(client);

        // Kill after a random number of acknowledged batches in this round: 0 kills during
        // start-up (segment preparation still running), larger ones mid-load and across
        // segment rolls. A few ms of jitter lands the signal anywhere in a group commit.
        let acknowledged_target = match rng.below(6) {
            0 => 0,
            _ => 20 + rng.below(600),
        };
        let jitter = Duration::from_micros(rng.below(15_000));
        let stop = if round % 3 == 2 {
            Stop::Terminate
        } else {
            Stop::Kill
        };
        let control = Arc::new(Control::default());
        let mut threads = Vec::new();
        for _ in 0..WRITER_COUNT {
            let (workload, ledger, control) = (workload.clone(), ledger.clone(), control.clone());
            let address = server.address;
            let writer_seed = rng.next_u64();
            threads.push(std::thread::spawn(move || {
                let shape = WriterShape::default();
                let stats = run_writer(address, &workload, &ledger, &control, shape, writer_seed);
                stats.acknowledged_count
            }));
        }
        for partition in [0, PARTITION_COUNT - 1] {
            let (workload, ledger, control) = (workload.clone(), ledger.clone(), control.clone());
            let address = server.address;
            let from = follow_from[partition as usize];
            threads.push(std::thread::spawn(move || {
                run_follower(address, &workload, partition, from, &ledger, &control)
            }));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while control.acknowledged_count.load(Ordering::SeqCst) < acknowledged_target {
            assert!(
                Instant::now() < deadline,
                "round {round}: only {} of {acknowledged_target} batches acknowledged in 20 s",
                control.acknowledged_count.load(Ordering::SeqCst)
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(jitter);
        control.failures_expected.store(true, Ordering::SeqCst);
        let status = match stop {
            Stop::Kill => {
                killed_count += 1;
                server.stop_with(9, Duration::from_secs(20))
            }
            Stop::Terminate => server.stop_with(15, Duration::from_secs(30)),
        };
        control.stop.store(true, Ordering::SeqCst);
        for thread in threads {
            thread.join().expect("workload thread");
        }
        if stop == Stop::Terminate {
            assert!(
                status.success(),
                "round {round}: SIGTERM under load must drain and exit 0, got {status:?}"
            );
        }
        let ledger = ledger.lock().unwrap();
        eprintln!(
            "round {round}: {stop:?} after {} acknowledged batches in the round (target \
             {acknowledged_target}); log held {checked_record_count} records before it",
            control.acknowledged_count.load(Ordering::SeqCst)
        );
        drop(ledger);
    }

    // Recovering twice gives the same log: check, kill idle, recover, compare.
    let server = TestServer::start_on(&data_dir, SERVER_ARGS);
    let mut client = connect(server.address).unwrap();
    let first = check_log(
        &mut client,
        &workload,
        &mut ledger.lock().unwrap(),
        StorageFailureRule::MayBePresent,
        &format!("final (seed {seed})"),
    );
    drop(client);
    drop(server);
    let server = TestServer::start_on(&data_dir, SERVER_ARGS);
    let mut client = connect(server.address).unwrap();
    let second = check_log(
        &mut client,
        &workload,
        &mut ledger.lock().unwrap(),
        StorageFailureRule::MayBePresent,
        &format!("recovered again (seed {seed})"),
    );
    assert!(
        first.records == second.records,
        "a second recovery changed the log"
    );
    drop(client);
    drop(server);

    // Checkpoints were written under the kills, and what the server recovers from them is
    // what it recovers from a scan of the whole log: the same directory without them.
    let files_named = |suffix: &str| {
        ["core-0", "core-1"]
            .iter()
            .flat_map(|core| std::fs::read_dir(data_dir.join(core)).unwrap())
            .filter(|entry| {
                let entry = entry.as_ref().unwrap();
                entry.file_name().to_string_lossy().ends_with(suffix)
            })
            .count()
    };
    let checkpoint_count = files_named(".ckpt");
    assert!(
        checkpoint_count >= 2,
        "checkpoints were written on both shards ({checkpoint_count} files)"
    );
    let scanned_dir = temp.path().join("without-checkpoints");
    copy_tree(&data_dir, &scanned_dir, |file| {
        !file.to_string_lossy().ends_with(".ckpt")
    });
    let server = TestServer::start_on(&scanned_dir, SERVER_ARGS);
    let mut client = connect(server.address).unwrap();
    let scanned = check_log(
        &mut client,
        &workload,
        &mut ledger.lock().unwrap(),
        StorageFailureRule::MayBePresent,
        &format!("recovered without checkpoints (seed {seed})"),
    );
    assert!(
        scanned.records == second.records,
        "recovery from checkpoints differs from a scan of the whole log"
    );
    drop(client);
    drop(server);

    let ledger = ledger.lock().unwrap();
    let segment_count = files_named(".seg");
    eprintln!(
        "reliability_crash: seed {seed}: {round_count} rounds ({killed_count} kill -9 under load, \
         {killed_while_starting_count} while starting) in {:?}; \
         {} records in {} batches verified, {} acknowledged batches all present, {} \
         unacknowledged batches present, {} conflicts absent, {} follower sightings kept; \
         {segment_count} segment files, {checkpoint_count} checkpoints",
        started.elapsed(),
        second.record_count,
        second.batch_count,
        second.acknowledged_count,
        second.unacknowledged_present_count,
        ledger.count(|outcome| *outcome == Outcome::Conflict),
        second.sighting_count
    );
    assert!(
        second.acknowledged_count > 0,
        "the workload got something acknowledged"
    );
}
