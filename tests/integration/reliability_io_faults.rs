//! Storage failure is loud and safe, for the whole server (docs/DESIGN.md §3.5): `cairn serve` runs
//! with the test-only `CAIRN_FAULT_INJECT` making the Nth group write (or fdatasync) and
//! every later one fail with EIO, under a concurrent conditional workload. The server must
//! answer pending appends with `StorageFailure` (or drop their connections as it exits),
//! acknowledge nothing it could not sync, exit with status 74, and a restart without the
//! fault must recover every acknowledged record.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_client::AppendResult;
use cairn_engine::{KeyCondition, RecordInput};
use cairn_server::EXIT_STORAGE_FAILURE;

use crate::support::server::TestServer;
use crate::support::workload::{
    Control, Ledger, Outcome, StorageFailureRule, Workload, WriterShape, check_log, connect,
    run_writer,
};
use crate::support::{TestRng, test_seed};

const WRITER_COUNT: usize = 6;

#[test]
fn a_failed_write_or_sync_stops_the_server_with_74_and_loses_nothing_acknowledged() {
    let seed = test_seed("reliability_io_faults::a_failed_write_or_sync_stops_the_server");
    let mut rng = TestRng::new(seed);
    for point in ["write", "sync"] {
        let success_count = 10 + rng.below(150);
        let spec = format!("{point}:after={success_count}");
        let started = Instant::now();
        let temp = tempfile::tempdir().unwrap();
        let data_dir = temp.path().join("data");
        let workload = Arc::new(Workload::new("faults", 4, 32));
        let ledger = Arc::new(Mutex::new(Ledger::default()));

        let mut server =
            TestServer::start_with_env(&data_dir, &[], &[("CAIRN_FAULT_INJECT", &spec)]);
        connect(server.address)
            .unwrap()
            .create_topic(&workload.topic, workload.partition_count)
            .unwrap();
        let control = Arc::new(Control::default());
        // The server fails by design: every writer error is expected from the start.
        control.failures_expected.store(true, Ordering::SeqCst);
        let writers: Vec<_> = (0..WRITER_COUNT)
            .map(|_| {
                let (workload, ledger, control) =
                    (workload.clone(), ledger.clone(), control.clone());
                let address = server.address;
                let writer_seed = rng.next_u64();
                std::thread::spawn(move || {
                    run_writer(
                        address,
                        &workload,
                        &ledger,
                        &control,
                        WriterShape::default(),
                        writer_seed,
                    )
                })
            })
            .collect();
        let status = server.wait_exit(Duration::from_secs(60));
        control.stop.store(true, Ordering::SeqCst);
        let stats: Vec<_> = writers
            .into_iter()
            .map(|writer| writer.join().expect("writer"))
            .collect();
        assert_eq!(
            status.code(),
            Some(EXIT_STORAGE_FAILURE),
            "{spec}: the server must fail-stop with status 74, got {status:?}"
        );
        let storage_failure_count: u64 = stats.iter().map(|s| s.storage_failure_count).sum();
        let unknown_count: u64 = stats.iter().map(|s| s.unknown_count).sum();
        assert!(
            storage_failure_count + unknown_count > 0,
            "{spec}: some append must have been failed or cut off by the storage failure"
        );

        // Restart without the fault: every acknowledged batch is back, nothing refused is.
        let server = TestServer::start_on(&data_dir, &[]);
        let mut client = connect(server.address).unwrap();
        let check = check_log(
            &mut client,
            &workload,
            &mut ledger.lock().unwrap(),
            StorageFailureRule::MayBePresent,
            &format!("{spec} (seed {seed})"),
        );
        assert!(
            check.acknowledged_count > 0,
            "{spec}: something was acknowledged"
        );
        // And the recovered server takes conditional appends on top of what it recovered.
        let key = &workload.keys[0][0];
        let latest = client
            .read_key(&workload.topic, None, key, false)
            .unwrap()
            .map(|record| record.offset);
        let condition = latest.map_or(KeyCondition::NoKey, KeyCondition::At);
        let record = RecordInput {
            key,
            value: b"after the storage failure",
            headers: &[],
            condition,
            ..RecordInput::default()
        };
        assert!(matches!(
            client
                .append(&workload.topic, None, None, &[record])
                .unwrap(),
            AppendResult::Appended { .. }
        ));
        let ledger = ledger.lock().unwrap();
        eprintln!(
            "reliability_io_faults: {spec}: exit {status:?} in {:?}; {} acknowledged batches all \
             recovered, {storage_failure_count} StorageFailure answers, {unknown_count} cut off, \
             {} unacknowledged present, {} conflicts absent",
            started.elapsed(),
            check.acknowledged_count,
            check.unacknowledged_present_count,
            ledger.count(|outcome| *outcome == Outcome::Conflict)
        );
    }
}
