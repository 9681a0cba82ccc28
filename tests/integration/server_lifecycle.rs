//! The server's life at its edges, as a real `cairn serve` process: it refuses a listen
//! address another process holds, and SIGTERM ends it in bounded time even while requests
//! wait on another shard or long-poll (RELIABILITY.md, promises 9 and 10).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_client::{AppendResult, BlockingClient, ClientConfig};
use cairn_engine::{KeyCondition, Offset, RecordInput};
use cairn_wire::{
    Encoder, ErrorCode, FetchRequest, Request, RequestBody, ResponseBody, decode_response,
};

use crate::support::server::{TestServer, serve_until_exit};
use crate::support::{TestRng, test_seed};

const SIGTERM: i32 = 15;

/// How long a server may take to exit after SIGTERM, in these tests. Generous for a debug
/// build on 2 shared cores; the hangs these tests catch last 30 s or forever.
const SHUTDOWN_BOUND: Duration = Duration::from_secs(10);

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(default)
}

fn client_at(address: SocketAddr, shard_aware: bool) -> BlockingClient {
    let mut config = ClientConfig::new(address);
    config.shard_aware = shard_aware;
    // Bounded below the test's own bounds, so a hung server shows as a failed assertion
    // on the server, not as a client thread that never returns.
    config.request_timeout = Duration::from_secs(15);
    BlockingClient::connect(config).expect("client connects")
}

/// Asserts that a second server on an address the first one holds exits by itself, non-zero,
/// naming that address, and that the first server still serves everything afterwards.
fn assert_second_server_refused(first: &TestServer, taken: SocketAddr, extra_args: &[&str]) {
    let temp = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let second = serve_until_exit(
        &temp.path().join("data"),
        extra_args,
        Duration::from_secs(5),
    );
    let elapsed = started.elapsed();
    let status = second.status.unwrap_or_else(|| {
        panic!(
            "a second server with {extra_args:?} was still running after 5 s: it shares \
             {taken} with the first (stdout {:?})",
            second.stdout
        )
    });
    assert!(!status.success(), "second server exited {status:?}");
    assert!(
        second
            .stderr
            .contains(&format!("address {taken} is already in use")),
        "stderr names the address: {:?}",
        second.stderr
    );
    assert!(
        !second.stdout.contains("listening on"),
        "it never listened: {:?}",
        second.stdout
    );
    eprintln!(
        "second server refused in {elapsed:?}: {}",
        second.stderr.trim()
    );

    // The first server is untouched: new connections on the shared address, which the
    // kernel spreads over its shards' listeners, are all answered with its shard ports.
    for attempt in 0..16 {
        let mut client = client_at(first.address, false);
        client.ping().unwrap();
        let metadata = client.metadata().unwrap();
        assert_eq!(metadata.shard_ports, first.shard_ports, "attempt {attempt}");
    }
}

#[test]
fn a_second_server_on_a_listen_address_in_use_exits_naming_it() {
    let first = TestServer::start();
    client_at(first.address, true)
        .create_topic("mine", 2)
        .unwrap();

    let shared = first.address.to_string();
    assert_second_server_refused(&first, first.address, &["--listen", &shared]);

    // A fixed shard port (`--port-base`) that the first server's shard 0 holds.
    let shard_port = first.shard_ports[0];
    let taken = SocketAddr::new(first.address.ip(), shard_port);
    assert_second_server_refused(&first, taken, &["--port-base", &shard_port.to_string()]);

    let mut client = client_at(first.address, true);
    let metadata = client.metadata().unwrap();
    assert_eq!(metadata.topics.len(), 1, "the first server's catalog");
    assert_eq!(metadata.topics[0].name, "mine");
}

/// What one writer was told: (offset, value) of each acknowledged append.
type Acknowledged = Arc<Mutex<Vec<(Offset, Vec<u8>)>>>;

/// Every record of one partition, from offset 0 to its high watermark.
/// What a supervisor does after a crash: start the server again at once, on the same
/// addresses. A server killed with SIGKILL still listens for a few milliseconds after its
/// process is gone; the restart must wait that out rather than refuse the address.
#[test]
fn a_server_restarted_at_once_after_kill_9_gets_its_addresses_back() {
    let temp_dir = tempfile::tempdir().unwrap();
    let data_dir = temp_dir.path().join("data");
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = probe.local_addr().unwrap().to_string();
    drop(probe);
    let mut server = TestServer::start_on(&data_dir, &["--listen", &listen, "--port-base", "0"]);
    client_at(server.address, true)
        .create_topic("kept", 1)
        .unwrap();
    for _ in 0..3 {
        // A connection open at the kill, as a supervisor's clients would have.
        let _open = TcpStream::connect(server.address).unwrap();
        server.stop_with(9, Duration::from_secs(20));
        server = TestServer::start_on(&data_dir, &["--listen", &listen, "--port-base", "0"]);
    }
    assert_eq!(server.address.to_string(), listen);
    let metadata = client_at(server.address, true).metadata().unwrap();
    assert!(metadata.topics.iter().any(|topic| topic.name == "kept"));
}

fn read_partition(address: SocketAddr, topic: &str, partition: u32) -> Vec<(Offset, Vec<u8>)> {
    let mut client = client_at(address, true);
    let mut records = Vec::new();
    let mut next = Offset(0);
    loop {
        let fetched = client
            .fetch(topic, partition, next, 1 << 20, Duration::ZERO)
            .unwrap();
        for record in &fetched.records {
            records.push((record.offset, record.value.clone()));
            next = record.offset.plus(1);
        }
        if fetched.records.is_empty() || next >= fetched.synced_end {
            return records;
        }
    }
}

#[test]
fn sigterm_with_forwarded_appends_in_flight_exits_and_keeps_every_acknowledgement() {
    const WRITER_COUNT: u32 = 8;
    let seed = test_seed("server_lifecycle::sigterm_with_forwarded_appends_in_flight");
    let round_count = env_u64("CAIRN_SHUTDOWN_ROUNDS", 5);
    let mut rng = TestRng::new(seed);
    let temp = tempfile::tempdir().unwrap();
    let data_dir = temp.path().join("data");
    let acknowledged: Acknowledged = Arc::default();
    let mut partition = None;
    for round in 0..round_count {
        let mut server = TestServer::start_on(&data_dir, &[]);
        // The partition is owned by shard 1; every writer talks to shard 0's own port, so
        // every append is forwarded over the mesh and its connection waits on shard 1.
        let partition = *partition.get_or_insert_with(|| {
            let mut admin = client_at(server.address, true);
            let topic = admin.create_topic("forwarded", 2).unwrap();
            topic
                .partitions
                .iter()
                .find(|info| info.shard == 1)
                .expect("two partitions on two shards: one is shard 1's")
                .partition
        });
        check_acknowledged(&server, partition, &acknowledged, round);

        let shard_0 = SocketAddr::new(server.address.ip(), server.shard_ports[0]);
        let writers: Vec<_> = (0..WRITER_COUNT)
            .map(|writer| {
                let acknowledged = acknowledged.clone();
                std::thread::spawn(move || {
                    let mut client = client_at(shard_0, false);
                    for sequence in 0u64.. {
                        let value = format!("round {round} writer {writer} #{sequence}");
                        let key = format!("w{writer}");
                        let records = [RecordInput {
                            key: key.as_bytes(),
                            value: value.as_bytes(),
                            headers: &[],
                            condition: KeyCondition::Any,
                            ..RecordInput::default()
                        }];
                        match client.append("forwarded", Some(partition), None, &records) {
                            Ok(AppendResult::Appended { base_offset, .. }) => acknowledged
                                .lock()
                                .unwrap()
                                .push((base_offset, value.into_bytes())),
                            Ok(other) => panic!("unconditional append: {other:?}"),
                            // ShuttingDown, Overloaded, or the connection closed: the end.
                            Err(_) => return sequence,
                        }
                    }
                    unreachable!("the loop ends when the server stops")
                })
            })
            .collect();
        let load = Duration::from_millis(200 + rng.below(600));
        std::thread::sleep(load);
        let acknowledged_before = acknowledged.lock().unwrap().len();
        let stopping = Instant::now();
        let status = server.stop_with(SIGTERM, SHUTDOWN_BOUND);
        let stop_time = stopping.elapsed();
        assert!(
            status.success(),
            "round {round}: SIGTERM exits 0: {status:?}"
        );
        let attempts: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
        eprintln!(
            "round {round}: load {load:?}, {acknowledged_before} acknowledged at SIGTERM, \
             {attempts} appends this round, exited in {stop_time:?}"
        );
        assert!(attempts > 0, "round {round}: the writers got going");
    }
    let server = TestServer::start_on(&data_dir, &[]);
    check_acknowledged(&server, partition.unwrap(), &acknowledged, round_count);
}

/// Every acknowledged append is at its offset with its value.
fn check_acknowledged(
    server: &TestServer,
    partition: u32,
    acknowledged: &Acknowledged,
    round: u64,
) {
    let acknowledged = acknowledged.lock().unwrap();
    if acknowledged.is_empty() {
        return;
    }
    let present: std::collections::HashMap<Offset, Vec<u8>> =
        read_partition(server.address, "forwarded", partition)
            .into_iter()
            .collect();
    for (offset, value) in acknowledged.iter() {
        assert_eq!(
            present.get(offset),
            Some(value),
            "before round {round}: acknowledged append at {offset:?} is present"
        );
    }
    eprintln!(
        "before round {round}: all {} acknowledged appends present",
        acknowledged.len()
    );
}

fn write_request(stream: &mut TcpStream, encoder: &mut Encoder, request: &Request<'_>) {
    let mut out = Vec::new();
    encoder.write_request_frame(request, &mut out);
    stream.write_all(&out).unwrap();
}

/// One response frame, or `None` once the server closed the connection.
fn read_response(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut length = [0u8; 4];
    match stream.read_exact(&mut length) {
        Ok(()) => {}
        Err(error)
            if matches!(
                error.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
            ) =>
        {
            return None;
        }
        Err(error) => panic!("reading a response: {error}"),
    }
    let mut frame = vec![0u8; u32::from_le_bytes(length) as usize];
    stream.read_exact(&mut frame).expect("whole frame");
    Some(frame)
}

#[test]
fn sigterm_wakes_long_polling_fetches_and_exits_at_once() {
    let mut server = TestServer::start();
    let topic = client_at(server.address, true)
        .create_topic("quiet", 2)
        .unwrap();
    let owned_by = |shard: u16| {
        topic
            .partitions
            .iter()
            .find(|info| info.shard == shard)
            .expect("two partitions on two shards")
            .partition
    };
    // On shard 0's port: one fetch of shard 0's partition (long-polls here) and one of
    // shard 1's (forwarded; long-polls there while this connection waits for the reply),
    // then a ping. Requests are handled concurrently, so the pong coming back first means
    // both fetches were read and are being handled.
    let mut stream =
        TcpStream::connect(SocketAddr::new(server.address.ip(), server.shard_ports[0])).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut encoder = Encoder::new();
    let fetch = |partition| {
        RequestBody::Fetch(FetchRequest {
            topic: "quiet",
            partition,
            offset: Offset(0),
            size_bytes_max: 1 << 20,
            wait_max: Duration::from_secs(30),
        })
    };
    for (correlation_id, body) in [(1, fetch(owned_by(0))), (2, fetch(owned_by(1)))] {
        write_request(
            &mut stream,
            &mut encoder,
            &Request {
                correlation_id,
                body,
            },
        );
    }
    write_request(
        &mut stream,
        &mut encoder,
        &Request {
            correlation_id: 3,
            body: RequestBody::Ping,
        },
    );
    let pong = read_response(&mut stream).expect("the ping is answered");
    let pong = decode_response(&pong).unwrap();
    assert_eq!(pong.correlation_id, 3, "the fetches wait: {pong:?}");
    assert!(matches!(pong.body, ResponseBody::Pong), "{pong:?}");

    let stopping = Instant::now();
    let status = server.stop_with(SIGTERM, Duration::from_secs(5));
    let stop_time = stopping.elapsed();
    assert!(status.success(), "SIGTERM exits 0: {status:?}");
    eprintln!("exited {stop_time:?} after SIGTERM with two fetches long-polling");

    // Each fetch got its answer before the connection closed: empty (nothing was synced
    // beyond offset 0), or ShuttingDown.
    let mut answered = Vec::new();
    while let Some(frame) = read_response(&mut stream) {
        let response = decode_response(&frame).unwrap();
        match &response.body {
            ResponseBody::Fetched(fetched) => {
                assert!(fetched.records.is_empty(), "{response:?}");
                assert_eq!(fetched.synced_end, Offset(0), "{response:?}");
            }
            ResponseBody::Error(error) => {
                assert_eq!(error.code, ErrorCode::ShuttingDown, "{response:?}");
            }
            _ => panic!("a fetch answered with {response:?}"),
        }
        eprintln!(
            "fetch {} answered: {:?}",
            response.correlation_id, response.body
        );
        answered.push(response.correlation_id);
    }
    answered.sort_unstable();
    assert_eq!(answered, vec![1, 2], "both fetches answered before closing");
}

/// Bytes the files under `dir` hold on disk (allocated blocks, not apparent sizes).
fn allocated_bytes(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let metadata = entry.metadata().unwrap();
        total += if metadata.is_dir() {
            allocated_bytes(&entry.path())
        } else {
            metadata.blocks() * 512
        };
    }
    total
}

/// The segment files of `core`, as (index, size) in log order.
fn segment_sizes(data_dir: &std::path::Path, core: &str) -> Vec<u64> {
    let mut segments: Vec<(String, u64)> = std::fs::read_dir(data_dir.join(core))
        .unwrap()
        .map(|entry| entry.unwrap())
        .filter(|entry| entry.file_name().to_string_lossy().ends_with(".seg"))
        .map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            (name, entry.metadata().unwrap().len())
        })
        .collect();
    segments.sort();
    segments.into_iter().map(|(_, size)| size).collect()
}

#[test]
fn a_first_start_with_full_size_segments_preallocates_megabytes_not_a_gigabyte() {
    let temp = tempfile::tempdir().unwrap();
    let data_dir = temp.path().join("data");
    // The default segment size: the last round's first start took 2 × 256 MiB per shard.
    let args = ["--segment-size", "268435456"];
    let server = TestServer::start_on(&data_dir, &args);
    // The next segment is prepared in the background: wait until the directory stops
    // growing (or 10 s), then look.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut allocated = allocated_bytes(&data_dir);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = allocated_bytes(&data_dir);
        if now == allocated || Instant::now() > deadline {
            allocated = now;
            break;
        }
        allocated = now;
    }
    const MIB: u64 = 1024 * 1024;
    assert!(
        allocated <= 2 * 24 * MIB + 4 * MIB,
        "two shards preallocate at most 8 + 16 MiB each on a first start: {} MiB",
        allocated / MIB
    );
    for core in ["core-0", "core-1"] {
        let sizes = segment_sizes(&data_dir, core);
        assert_eq!(sizes.first(), Some(&(8 * MIB)), "{core}: {sizes:?}");
    }

    // Under load the segments grow, each twice the one before, towards the configured size.
    let mut client = client_at(server.address, true);
    client.create_topic("growing", 1).unwrap();
    let value = vec![7u8; 64 * 1024];
    let mut records = Vec::new();
    for _ in 0..8 {
        records.push(RecordInput {
            key: b"k",
            value: &value,
            ..RecordInput::default()
        });
    }
    for _ in 0..80 {
        let result = client.append("growing", Some(0), None, &records).unwrap();
        assert!(
            matches!(result, AppendResult::Appended { .. }),
            "{result:?}"
        );
    }
    let partition_shard = ["core-0", "core-1"]
        .into_iter()
        .max_by_key(|core| segment_sizes(&data_dir, core).len())
        .unwrap();
    let sizes = segment_sizes(&data_dir, partition_shard);
    assert!(sizes.len() >= 3, "40 MiB rolled the segments: {sizes:?}");
    for pair in sizes.windows(2) {
        assert_eq!(pair[1], pair[0] * 2, "segments double: {sizes:?}");
    }
}
