//! The real `cairn-loadgen` binary: each workload against its embedded server; the
//! single hot key against a `TestServer`, whose log must then hold exactly the
//! acknowledged appends as one unbroken chain, with every record in the ack log, under
//! every `--contention` policy; and both
//! connection modes, counted from the kernel's table of the server's TCP connections.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cairn_client::{BlockingClient, ClientConfig, FetchedRecord};
use cairn_engine::Offset;

use crate::support::server::TestServer;

const LOADGEN_BIN: &str = env!("CARGO_BIN_EXE_cairn-loadgen");

/// Longest a one-second run may take, server start and drain included.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `cairn-loadgen` with `args` plus `--json`, checks it succeeded, and returns the
/// JSON summary.
pub(crate) fn run_loadgen(dir: &Path, args: &[&str]) -> serde_json::Value {
    run_loadgen_watching(dir, args, || {})
}

/// [`run_loadgen`], calling `watch` every poll while the load generator runs.
fn run_loadgen_watching(dir: &Path, args: &[&str], mut watch: impl FnMut()) -> serde_json::Value {
    let json_path = dir.join("summary.json");
    let stdout_path = dir.join("stdout");
    let stderr_path = dir.join("stderr");
    let mut child = Command::new(LOADGEN_BIN)
        .args(args)
        .arg("--json")
        .arg(&json_path)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .expect("cairn-loadgen starts");
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        watch();
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cairn-loadgen {args:?} still running after {RUN_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = std::fs::read_to_string(&stdout_path).unwrap();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(
        status.success(),
        "cairn-loadgen {args:?}: {status}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    eprintln!("cairn-loadgen {args:?}\n{stdout}");
    let text = std::fs::read_to_string(&json_path).expect("--json file written");
    serde_json::from_str(&text).expect("--json file is JSON")
}

pub(crate) fn count(summary: &serde_json::Value, field: &str) -> u64 {
    summary[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} is a whole number in {summary}"))
}

#[test]
fn every_workload_runs_against_the_embedded_server() {
    let dir = tempfile::tempdir().unwrap();
    let common = [
        "--clients",
        "4",
        "--no-pin",
        "--quiet",
        "--server-segment-size-mib",
        "8",
    ];
    let report_dir = dir.path().join("report");
    let runs: [&[&str]; 3] = [
        &[
            "--workload",
            "uncontended",
            "--duration",
            "1s",
            "--warmup",
            "0s",
        ],
        // Pending reads and re-reads, a short warm-up, and the report files.
        &[
            "--workload",
            "hot",
            "--duration",
            "1s",
            "--warmup",
            "200ms",
            "--read",
            "pending",
            "--retry",
            "reread",
            "--report",
            report_dir.to_str().unwrap(),
        ],
        // Open loop with a fixed number of cycles: exactly that many are measured.
        &[
            "--workload",
            "blind",
            "--cycles",
            "2000",
            "--rate",
            "4000",
            "--warmup",
            "0s",
            "--batch",
            "4",
        ],
    ];
    let mut blind = serde_json::Value::Null;
    for run in runs {
        let args: Vec<&str> = run.iter().chain(&common).copied().collect();
        let summary = run_loadgen(dir.path(), &args);
        assert!(count(&summary, "successes") > 0, "{summary}");
        assert_eq!(count(&summary, "errors"), 0, "{summary}");
        assert!(summary["cycle_latency_us"]["p99"].as_u64().unwrap() > 0);
        blind = summary;
    }
    assert_eq!(blind["workload"], "blind");
    assert_eq!(count(&blind, "successes"), 2000, "{blind}");
    assert_eq!(count(&blind, "conflicts"), 0, "{blind}");
    for name in [
        "report.svg",
        "cycle_latency_ms.hgrm",
        "append_latency_ms.hgrm",
    ] {
        assert!(report_dir.join(name).exists(), "{name}");
    }
}

/// Every record of `partition` of `topic`, in offset order.
fn fetch_all(client: &mut BlockingClient, topic: &str, partition: u32) -> Vec<FetchedRecord> {
    let mut records: Vec<FetchedRecord> = Vec::new();
    loop {
        let next = records
            .last()
            .map_or(Offset(0), |record| record.offset.plus(1));
        let fetched = client
            .fetch(topic, partition, next, 1024 * 1024, Duration::ZERO)
            .unwrap();
        if fetched.records.is_empty() {
            assert_eq!(
                fetched.synced_end, next,
                "a fetch below the end returns records"
            );
            return records;
        }
        records.extend(fetched.records);
    }
}

#[test]
fn single_hot_key_conflicts_and_keeps_one_unbroken_chain() {
    let server = TestServer::start();
    let summary = run_single_hot_key(&server, "none", "hot-none", &[]);
    assert!(
        count(&summary, "conflicts") > 0,
        "8 clients on one key with no contention management conflict: {summary}"
    );
}

/// Each contention policy keeps the chain exact. Two executors, so that `queue`'s turns
/// (one executor's) still meet conflicts from the other, and its backoff runs too.
#[test]
fn single_hot_key_keeps_one_unbroken_chain_under_every_contention_policy() {
    let server = TestServer::start();
    for contention in ["backoff", "queue"] {
        let topic = format!("hot-{contention}");
        let summary = run_single_hot_key(&server, contention, &topic, &["--loadgen-cores", "2"]);
        assert!(
            summary["conflicts_per_success"].is_number(),
            "conflicts are still counted: {summary}"
        );
    }
}

/// Runs 8 `hot` clients on one key of a one-partition `topic` for a second with
/// `--contention contention` (and `extra` flags), checks that the summary names the policy,
/// that the partition holds exactly the acknowledged appends as one chain of the key, and
/// that the ack log names each of them; returns the summary.
fn run_single_hot_key(
    server: &TestServer,
    contention: &str,
    topic: &str,
    extra: &[&str],
) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let ack_log = dir.path().join("acks");
    let address = server.address.to_string();
    let batch = 2;
    let batch_flag = batch.to_string();
    let mut args = vec![
        "--addr",
        &address,
        "--topic",
        topic,
        "--workload",
        "hot",
        "--keys",
        "1",
        "--clients",
        "8",
        "--read",
        "appended",
        "--contention",
        contention,
        "--batch",
        &batch_flag,
        "--value-bytes",
        "24",
        "--partitions",
        "1",
        "--duration",
        "1s",
        "--warmup",
        "0s",
        "--ack-log",
        ack_log.to_str().unwrap(),
        "--quiet",
        "--no-pin",
    ];
    args.extend_from_slice(extra);
    let summary = run_loadgen(dir.path(), &args);
    assert_eq!(summary["contention"], contention, "{summary}");
    let successes = count(&summary, "successes");
    assert!(successes > 0, "{summary}");
    // An append that failed may still have happened; then the count below could not hold.
    assert_eq!(count(&summary, "errors"), 0, "{summary}");

    let mut client = BlockingClient::connect(ClientConfig::new(server.address)).unwrap();
    let records = fetch_all(&mut client, topic, 0);
    // No warm-up: every acknowledged append is counted, and abandoned ones wrote nothing.
    assert_eq!(records.len() as u64, successes * batch, "{summary}");
    let mut previous: Option<Offset> = None;
    for record in &records {
        assert_eq!(record.key, b"key-000000");
        assert_eq!(
            record.prev_key_offset, previous,
            "record {} does not chain to the key's previous record",
            record.offset
        );
        previous = Some(record.offset);
    }

    // The ack log names every record, by offset, with its value's checksum, once.
    let crc_by_offset: HashMap<u64, u32> = records
        .iter()
        .map(|record| (record.offset.0, crc32fast::hash(&record.value)))
        .collect();
    let text = std::fs::read_to_string(&ack_log).unwrap();
    let mut offsets_seen = std::collections::HashSet::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let [line_topic, partition, offset, key, crc] = fields[..] else {
            panic!("ack log line {line:?} has not 5 fields");
        };
        assert_eq!((line_topic, partition, key), (topic, "0", "key-000000"));
        let offset: u64 = offset.parse().unwrap();
        assert_eq!(
            crc_by_offset.get(&offset).copied(),
            Some(crc.parse().unwrap()),
            "{line}"
        );
        assert!(
            offsets_seen.insert(offset),
            "offset {offset} acknowledged twice"
        );
    }
    assert_eq!(offsets_seen.len(), records.len());
    summary
}

/// Established TCP connections whose local end is 127.0.0.1 on one of `ports`: the server's
/// side of its clients' connections, as the kernel lists them in /proc/net/tcp.
fn server_connection_count(ports: &[u16]) -> usize {
    const ESTABLISHED: &str = "01";
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp is readable");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state)) = (fields.get(1), fields.get(3)) else {
                return false;
            };
            let port = local
                .rsplit_once(':')
                .and_then(|(_, port)| u16::from_str_radix(port, 16).ok());
            *state == ESTABLISHED && port.is_some_and(|port| ports.contains(&port))
        })
        .count()
}

fn wait_for_no_server_connections(ports: &[u16]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while server_connection_count(ports) > 0 {
        assert!(
            Instant::now() < deadline,
            "the server still holds connections 10 s after the load generator exited"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs uncontended appends from `client_count` clients against `server` in `mode`, and
/// returns the summary and the most connections the server's shards held at once.
fn run_in_connection_mode(
    server: &TestServer,
    client_count: u32,
    topic: &str,
    mode: &str,
) -> (serde_json::Value, usize) {
    let dir = tempfile::tempdir().unwrap();
    let address = server.address.to_string();
    let clients = client_count.to_string();
    let mut connection_count_max = 0;
    let summary = run_loadgen_watching(
        dir.path(),
        &[
            "--addr",
            &address,
            "--topic",
            topic,
            "--workload",
            "uncontended",
            "--clients",
            &clients,
            "--partitions",
            "4",
            "--connections",
            mode,
            "--duration",
            "2s",
            "--warmup",
            "0s",
            "--quiet",
        ],
        || {
            connection_count_max =
                connection_count_max.max(server_connection_count(&server.shard_ports));
        },
    );
    assert_eq!(summary["connections"], mode, "{summary}");
    (summary, connection_count_max)
}

/// Every client's own key holds exactly its acknowledged appends as one chain.
fn assert_each_key_is_one_chain(server: &TestServer, topic: &str, summary: &serde_json::Value) {
    let mut client = BlockingClient::connect(ClientConfig::new(server.address)).unwrap();
    let mut records_by_key: HashMap<Vec<u8>, Vec<FetchedRecord>> = HashMap::new();
    for partition in 0..4 {
        for record in fetch_all(&mut client, topic, partition) {
            records_by_key
                .entry(record.key.clone())
                .or_default()
                .push(record);
        }
    }
    assert_eq!(
        records_by_key.len() as u64,
        count(summary, "clients"),
        "one key per client: {summary}"
    );
    let record_count: usize = records_by_key.values().map(Vec::len).sum();
    // No warm-up: every acknowledged append is counted.
    assert_eq!(
        record_count as u64,
        count(summary, "successes"),
        "{summary}"
    );
    for (key, records) in &records_by_key {
        let mut previous = None;
        for record in records {
            assert_eq!(
                record.prev_key_offset,
                previous,
                "key {} breaks its chain at {}",
                String::from_utf8_lossy(key),
                record.offset
            );
            previous = Some(record.offset);
        }
    }
}

#[test]
fn per_client_connections_open_one_connection_per_client() {
    let server = TestServer::start();
    assert_eq!(
        server.shard_ports.len(),
        2,
        "the test server has two shards"
    );
    let client_count = 6;
    let (shared, shared_connections) =
        run_in_connection_mode(&server, client_count, "shared", "shared");
    // The server may not yet have seen the shared run's connections close; left open they
    // would be counted as the per-client run's.
    wait_for_no_server_connections(&server.shard_ports);
    let (per_client, per_client_connections) =
        run_in_connection_mode(&server, client_count, "per-client", "per-client");
    eprintln!(
        "shard connections at most: shared {shared_connections}, per-client \
         {per_client_connections}"
    );
    for summary in [&shared, &per_client] {
        assert!(count(summary, "successes") > 0, "{summary}");
        assert_eq!(count(summary, "errors"), 0, "{summary}");
        assert_eq!(count(summary, "conflicts"), 0, "{summary}");
    }
    // Shared: one executor's client holds at most one connection per shard.
    assert!(
        (1..=2).contains(&shared_connections),
        "shared mode held {shared_connections} shard connections"
    );
    // Per client: each client has its own, to the shard that owns its key. CI once counted
    // 8 for 6 clients with none left from the shared run: most likely the load
    // generator's setup connections still closing as the run starts (not confirmed).
    // Allow one per shard, and nothing more.
    let shard_count = server.shard_ports.len();
    assert!(
        (client_count as usize..=client_count as usize + shard_count)
            .contains(&per_client_connections),
        "per-client mode held {per_client_connections} shard connections for {client_count} \
         clients"
    );
    assert_each_key_is_one_chain(&server, "shared", &shared);
    assert_each_key_is_one_chain(&server, "per-client", &per_client);
}
