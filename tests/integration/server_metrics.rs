//! The metrics and health endpoint of a real `cairn serve --metrics-listen`: scraped
//! counters equal what a real `cairn-loadgen` run counted itself, while a scraper loops;
//! `/health/ready` is 503 until recovery finished and once storage failed; malformed or
//! huge HTTP requests are refused with 400 / 431 and the server keeps serving.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cairn_engine::{KeyCondition, RecordInput};

use crate::loadgen::{count, run_loadgen};
use crate::support::server::TestServer;
use crate::support::workload::connect;

const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends `request` as is and returns the status and body of the answer, or `None` if the
/// connection failed or closed without one.
fn http_raw(address: SocketAddr, request: &[u8]) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&address, HTTP_TIMEOUT).ok()?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT)).ok()?;
    // A server that answers before reading everything may reset the rest: ignore it.
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())?;
    Some((status, body))
}

fn get(address: SocketAddr, path: &str) -> Option<(u16, String)> {
    http_raw(
        address,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes(),
    )
}

/// The sum over every series of `name` (all shards, all labels) in a scrape, as a whole
/// number (a histogram's `_sum` is written as a float: "96.0").
fn metric_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .map(|line| {
            line.rsplit(' ')
                .next()
                .and_then(|value| value.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("{line:?} ends in a number"))
        })
        .sum::<f64>() as u64
}

fn scrape(address: SocketAddr) -> String {
    let (status, body) = get(address, "/metrics").expect("the metrics endpoint answers");
    assert_eq!(status, 200, "{body}");
    body
}

#[test]
fn scraped_counters_equal_the_loadgen_counts_under_a_scraper_loop() {
    let temp = tempfile::tempdir().unwrap();
    let server = TestServer::start_on(
        &temp.path().join("data"),
        &["--metrics-listen", "127.0.0.1:0"],
    );
    let metrics = server
        .metrics_address
        .expect("--metrics-listen names the address");
    let before = scrape(metrics);
    assert_eq!(metric_sum(&before, "cairn_appends_acknowledged_total"), 0);

    // A scraper in a loop for the whole run: every scrape answers, and counters never go
    // back.
    let stop = Arc::new(AtomicBool::new(false));
    let scrape_count = Arc::new(AtomicU64::new(0));
    let scraper = {
        let (stop, scrape_count) = (stop.clone(), scrape_count.clone());
        std::thread::spawn(move || {
            let mut acknowledged_seen = 0;
            while !stop.load(Ordering::SeqCst) {
                let text = scrape(metrics);
                let acknowledged = metric_sum(&text, "cairn_appends_acknowledged_total");
                assert!(acknowledged >= acknowledged_seen, "a counter went back");
                acknowledged_seen = acknowledged;
                scrape_count.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let dir = tempfile::tempdir().unwrap();
    let address = server.address.to_string();
    let batch = 2;
    let summary = run_loadgen(
        dir.path(),
        &[
            "--addr",
            &address,
            "--workload",
            "hot",
            "--keys",
            "4",
            "--clients",
            "8",
            "--batch",
            &batch.to_string(),
            "--value-bytes",
            "24",
            "--partitions",
            "2",
            "--duration",
            "1s",
            "--warmup",
            "0s",
            "--quiet",
        ],
    );
    stop.store(true, Ordering::SeqCst);
    scraper.join().expect("the scraper saw only good scrapes");
    assert!(scrape_count.load(Ordering::SeqCst) > 0);

    let successes = count(&summary, "successes");
    let conflicts = count(&summary, "conflicts");
    assert!(successes > 0 && conflicts > 0, "{summary}");
    assert_eq!(count(&summary, "errors"), 0, "{summary}");
    let text = scrape(metrics);
    assert_eq!(
        metric_sum(&text, "cairn_appends_acknowledged_total"),
        successes,
        "{summary}"
    );
    assert_eq!(
        metric_sum(&text, "cairn_appended_records_total"),
        successes * batch,
        "{summary}"
    );
    assert_eq!(
        metric_sum(&text, "cairn_append_conflicts_total"),
        conflicts,
        "{summary}"
    );
    assert_eq!(
        metric_sum(&text, "cairn_append_requests_total"),
        successes + conflicts,
        "{summary}"
    );
    assert_eq!(metric_sum(&text, "cairn_append_failures_total"), 0);
    assert_eq!(
        metric_sum(&text, "cairn_append_latency_seconds_count"),
        successes + conflicts
    );
    // Every acknowledged record was in some group that was written and synced.
    assert!(metric_sum(&text, "cairn_group_records_sum") >= successes * batch);
    assert!(metric_sum(&text, "cairn_group_write_latency_seconds_count") > 0);
    // The latency breakdown's stages: one of each per native append, one wait per group.
    assert!(metric_sum(&text, "cairn_group_wait_seconds_count") > 0);
    assert!(metric_sum(&text, "cairn_append_wake_seconds_count") >= successes);
    assert!(metric_sum(&text, "cairn_native_response_write_seconds_count") > 0);
    assert_eq!(
        metric_sum(&text, "cairn_native_append_stage_seconds_count"),
        2 * (successes + conflicts),
        "queued and service, once per native append"
    );
    assert!(metric_sum(&text, "cairn_connections_accepted_total") > 0);

    // The log holds exactly what was acknowledged: the scraper changed nothing.
    let mut client = connect(server.address).unwrap();
    let mut record_count = 0;
    for partition in 0..2 {
        let mut next = cairn_engine::Offset(0);
        loop {
            let fetched = client
                .fetch("loadgen", partition, next, 1024 * 1024, Duration::ZERO)
                .unwrap();
            let Some(last) = fetched.records.last() else {
                break;
            };
            next = last.offset.plus(1);
            record_count += fetched.records.len() as u64;
        }
    }
    assert_eq!(record_count, successes * batch, "{summary}");
}

/// Writes enough segments on `data_dir` that recovering them takes a while.
fn fill_data_dir(data_dir: &Path) {
    let server = TestServer::start_on(data_dir, &[]);
    let dir = tempfile::tempdir().unwrap();
    run_loadgen(
        dir.path(),
        &[
            "--addr",
            &server.address.to_string(),
            "--workload",
            "blind",
            "--clients",
            "4",
            "--batch",
            "16",
            "--value-bytes",
            "4000",
            "--duration",
            "1s",
            "--warmup",
            "0s",
            "--quiet",
        ],
    );
}

#[test]
fn health_ready_is_503_until_recovery_finished_and_200_once_listening() {
    let temp = tempfile::tempdir().unwrap();
    let data_dir = temp.path().join("data");
    fill_data_dir(&data_dir);
    let segment_count: usize = ["shard-000", "shard-001"]
        .iter()
        .filter_map(|shard| std::fs::read_dir(data_dir.join(shard)).ok())
        .map(|entries| entries.count())
        .sum();
    eprintln!("recovering {segment_count} files");

    // A fixed port, so the poller can start before the server prints anything.
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut statuses = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                if let Some((status, _)) = get(metrics, "/health/ready") {
                    statuses.push((status, get(metrics, "/health/live").map(|(s, _)| s)));
                } else {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            statuses
        })
    };
    let server = TestServer::start_on(&data_dir, &["--metrics-listen", &metrics.to_string()]);
    assert_eq!(server.metrics_address, Some(metrics));
    // Printed only once every shard listens: ready from now on.
    assert_eq!(get(metrics, "/health/ready").map(|(s, _)| s), Some(200));
    stop.store(true, Ordering::SeqCst);
    let statuses = poller.join().unwrap();
    let first_ready = statuses
        .iter()
        .position(|(status, _)| *status == 200)
        .unwrap_or(statuses.len());
    assert!(
        first_ready > 0,
        "some answer came during recovery, and it was not ready: {statuses:?}"
    );
    assert!(
        statuses[..first_ready]
            .iter()
            .all(|(status, _)| *status == 503),
        "{statuses:?}"
    );
    assert!(
        statuses[first_ready..]
            .iter()
            .all(|(status, _)| *status == 200),
        "once ready, ready until stopped: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|(_, live)| *live == Some(200)),
        "live while the process runs: {statuses:?}"
    );
}

#[test]
fn health_ready_is_503_once_storage_failed() {
    let temp = tempfile::tempdir().unwrap();
    let server = TestServer::start_with_env(
        &temp.path().join("data"),
        &["--metrics-listen", "127.0.0.1:0"],
        &[("CAIRN_FAULT_INJECT", "sync:after=20")],
    );
    let metrics = server.metrics_address.unwrap();
    assert_eq!(get(metrics, "/health/ready").map(|(s, _)| s), Some(200));
    let mut client = connect(server.address).unwrap();
    client.create_topic("faults", 1).unwrap();
    let record = RecordInput {
        key: b"k",
        value: b"v",
        condition: KeyCondition::Any,
        ..RecordInput::default()
    };
    let mut acknowledged = 0;
    while client.append("faults", Some(0), None, &[record]).is_ok() {
        acknowledged += 1;
        assert!(acknowledged < 1000, "the injected sync failure never came");
    }
    // The process exits shortly after (status 74); until then it is not ready.
    let status = get(metrics, "/health/ready").map(|(s, _)| s);
    assert!(status.is_none() || status == Some(503), "{status:?}");
}

#[test]
fn malformed_or_huge_http_requests_are_refused_and_the_server_keeps_serving() {
    let temp = tempfile::tempdir().unwrap();
    let server = TestServer::start_on(
        &temp.path().join("data"),
        &["--metrics-listen", "127.0.0.1:0"],
    );
    let metrics = server.metrics_address.unwrap();
    // Clients that connect and send nothing hold a connection each until its timeout;
    // the endpoint still answers others.
    let idle: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(metrics).unwrap())
        .collect();
    let cases: [(&[u8], u16); 6] = [
        (b"garbage\r\n\r\n", 400),
        (b"GET /metrics\r\n\r\n", 400),
        (b"\x00\xff\x10 / HTTP/1.1\r\n\r\n", 400),
        (b"POST /metrics HTTP/1.1\r\n\r\n", 405),
        (b"GET /nothing HTTP/1.1\r\n\r\n", 404),
        (b"GET /health/live HTTP/1.0\r\n\r\n", 200),
    ];
    for (request, expected) in cases {
        let answer = http_raw(metrics, request).map(|(status, _)| status);
        assert_eq!(
            answer,
            Some(expected),
            "{:?}",
            String::from_utf8_lossy(request)
        );
    }
    let huge = format!(
        "GET /metrics HTTP/1.1\r\nX-Padding: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    assert_eq!(
        http_raw(metrics, huge.as_bytes()).map(|(status, _)| status),
        Some(431)
    );
    // A request head that never ends is cut off at the same bound.
    assert_eq!(
        http_raw(metrics, &[b'a'; 20 * 1024]).map(|(status, _)| status),
        Some(431)
    );
    drop(idle);
    // The server serves both the endpoint and its clients as before.
    let text = scrape(metrics);
    assert!(text.contains("cairn_ready 1"), "{text}");
    let mut client = connect(server.address).unwrap();
    client.create_topic("after", 1).unwrap();
    let record = RecordInput {
        key: b"k",
        value: b"v",
        condition: KeyCondition::Any,
        ..RecordInput::default()
    };
    client.append("after", Some(0), None, &[record]).unwrap();
    assert_eq!(
        metric_sum(&scrape(metrics), "cairn_appends_acknowledged_total"),
        1
    );
}
