//! Hostile clients against a live server (DESIGN §3.6), for a bounded time: random and
//! mutated frames (bit flips and byte edits of valid frames built with `wire::Encoder`,
//! truncations, wrong and absurd length prefixes, random bytes, pipelined mixes), floods of
//! connections holding partial frames, a client that never reads, a client that drips a
//! frame byte by byte. Meanwhile a canary client must be served throughout; afterwards the
//! server answers normal clients, every response it sent was a valid frame, the log
//! written before the fuzzing is intact, and a restart recovers it.
//!
//! `CAIRN_FUZZ_SECONDS` sets the duration (CI: 5); `TEST_SEED` replays the frames.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_engine::{KeyCondition, Offset, RecordHeader, RecordInput};
use cairn_server::client::AppendResult;
use cairn_server::wire::{
    AppendRecords, AppendRequest, CreateTopicRequest, Encoder, FetchRequest, KeyHistoryRequest,
    ReadKeyRequest, Request, RequestBody, ResponseBody, decode_response, write_frame,
};

use crate::support::server::TestServer;
use crate::support::workload::{
    Control, Ledger, StorageFailureRule, Workload, WriterShape, check_log, connect, run_writer,
};
use crate::support::{TestRng, test_seed};

/// The server's frame limit (its default), for lengths just over it.
const FRAME_SIZE_BYTES_MAX: u32 = cairn_server::wire::FRAME_SIZE_BYTES_MAX_DEFAULT;

fn fuzz_duration() -> Duration {
    let seconds = std::env::var("CAIRN_FUZZ_SECONDS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(5);
    Duration::from_secs(seconds)
}

/// What the fuzzers did and saw, for the report.
#[derive(Default)]
struct Tally {
    frames_sent: AtomicU64,
    bytes_sent: AtomicU64,
    connections: AtomicU64,
    responses: AtomicU64,
    /// Connections the server closed on us before we were done sending.
    closed_by_server: AtomicU64,
    /// Connections still waiting for answers when we stopped reading (long polls that a
    /// mutation made long, frames whose length promised more bytes).
    unanswered: AtomicU64,
    /// Responses by kind ("Pong", "Error(BadRequest)", ...).
    kinds: Mutex<BTreeMap<String, u64>>,
}

impl Tally {
    fn add(counter: &AtomicU64, count: u64) {
        counter.fetch_add(count, Ordering::Relaxed);
    }
}

fn pick<'a, T>(rng: &mut TestRng, items: &'a [T]) -> &'a T {
    &items[rng.below(items.len() as u64) as usize]
}

fn random_bytes(rng: &mut TestRng, len_bytes: usize) -> Vec<u8> {
    (0..len_bytes).map(|_| rng.next_u64() as u8).collect()
}

/// One valid flatbuffer request (the payload of a frame), of a random kind with random
/// (often invalid) field values. Appends go to the `fuzz` topic or to topics that do not
/// exist, never to `precious`.
fn random_request(rng: &mut TestRng, encoder: &mut Encoder) -> Vec<u8> {
    let correlation_id = rng.next_u64();
    let long_name = "t".repeat(300);
    let fresh_name = format!("fz-{}", rng.below(16));
    let read_topics = ["fuzz", "precious", "", "nope", long_name.as_str()];
    let write_topics = ["fuzz", "fuzz", "", "nope", long_name.as_str()];
    let offsets = [0, 1, 7, 1 << 40, u64::MAX - 1, u64::MAX];
    let sizes = [0, 1, 4096, 1 << 20, u32::MAX];
    let key_len = *pick(rng, &[0usize, 1, 8, 300, 5000]);
    let key = random_bytes(rng, key_len);
    let partition = *pick(rng, &[0u32, 1, 2, 3, 1000, u32::MAX]);
    let body = match rng.below(100) {
        0..=4 => RequestBody::Ping,
        5..=9 => RequestBody::Metadata,
        10 => RequestBody::CreateTopic(CreateTopicRequest {
            name: if rng.below(2) == 0 {
                &fresh_name
            } else {
                pick::<&str>(rng, &read_topics)
            },
            partition_count: *pick(rng, &[0, 1, 3, 4097, u32::MAX]),
        }),
        11..=50 => {
            let record_count = *pick(rng, &[0usize, 1, 2, 4, 40]);
            let values: Vec<Vec<u8>> = (0..record_count)
                .map(|_| {
                    // Large values only in small batches: megabytes per frame would make
                    // this a bandwidth test of a debug build.
                    let len_bytes = if record_count > 4 {
                        *pick(rng, &[0usize, 10])
                    } else if rng.below(10) == 0 {
                        70_000
                    } else {
                        *pick(rng, &[0usize, 10, 1000])
                    };
                    random_bytes(rng, len_bytes)
                })
                .collect();
            let header_value = random_bytes(rng, 20);
            let headers = [RecordHeader {
                name: b"type",
                value: &header_value,
            }];
            let conditions: Vec<KeyCondition> = (0..record_count)
                .map(|_| match rng.below(4) {
                    0 => KeyCondition::Any,
                    1 => KeyCondition::NoKey,
                    2 => KeyCondition::KeyExists,
                    _ => KeyCondition::At(Offset(*pick(rng, &offsets))),
                })
                .collect();
            let with_headers = rng.below(2) == 0;
            let inputs: Vec<RecordInput<'_>> = values
                .iter()
                .zip(&conditions)
                .map(|(value, condition)| RecordInput {
                    key: &key,
                    value,
                    headers: if with_headers { &headers } else { &[] },
                    condition: *condition,
                })
                .collect();
            let request = Request {
                correlation_id,
                body: RequestBody::Append(AppendRequest {
                    topic: pick::<&str>(rng, &write_topics),
                    partition: (rng.below(2) == 0).then_some(partition % 4),
                    expected_end_offset: (rng.below(3) == 0).then(|| Offset(*pick(rng, &offsets))),
                    records: AppendRecords::from_inputs(&inputs),
                }),
            };
            return encoder.encode_request(&request).to_vec();
        }
        51..=75 => RequestBody::Fetch(FetchRequest {
            topic: pick::<&str>(rng, &read_topics),
            partition,
            offset: Offset(*pick(rng, &offsets)),
            size_bytes_max: *pick(rng, &sizes),
            // Short: a long poll would only make this fuzzer wait.
            wait_max: Duration::from_millis(rng.below(30)),
        }),
        76..=88 => RequestBody::ReadKey(ReadKeyRequest {
            topic: pick::<&str>(rng, &read_topics),
            partition: (rng.below(2) == 0).then_some(partition),
            key: &key,
            include_pending: rng.below(2) == 0,
        }),
        _ => RequestBody::KeyHistory(KeyHistoryRequest {
            topic: pick::<&str>(rng, &read_topics),
            partition: (rng.below(2) == 0).then_some(partition),
            key: &key,
            record_count_max: *pick(rng, &[0, 1, 5, u32::MAX]),
        }),
    };
    encoder
        .encode_request(&Request {
            correlation_id,
            body,
        })
        .to_vec()
}

/// A payload derived from a valid one: bit flips, byte edits, interesting u32s, cuts,
/// garbage tails, or nothing but random bytes.
fn mutate(rng: &mut TestRng, mut payload: Vec<u8>) -> Vec<u8> {
    if payload.is_empty() {
        return payload;
    }
    match rng.below(6) {
        0 => {
            for _ in 0..1 + rng.below(8) {
                let bit = rng.below(payload.len() as u64 * 8) as usize;
                payload[bit / 8] ^= 1 << (bit % 8);
            }
        }
        1 => {
            for _ in 0..1 + rng.below(4) {
                let position = rng.below(payload.len() as u64) as usize;
                payload[position] = rng.next_u64() as u8;
            }
        }
        2 => {
            let position = (rng.below(payload.len() as u64) as usize) & !3;
            let len_bytes = payload.len() as u32;
            let value = *pick(
                rng,
                &[
                    0,
                    1,
                    0x7FFF_FFFF,
                    u32::MAX,
                    len_bytes,
                    len_bytes + 1,
                    0x8000_0000,
                ],
            );
            let end = (position + 4).min(payload.len());
            payload[position..end].copy_from_slice(&value.to_le_bytes()[..end - position]);
        }
        3 => payload.truncate(rng.below(payload.len() as u64) as usize),
        4 => {
            let tail_bytes = rng.below(64) as usize;
            payload.extend(random_bytes(rng, tail_bytes));
        }
        _ => {
            let len_bytes = rng.below(512) as usize;
            payload = random_bytes(rng, len_bytes);
        }
    }
    payload
}

/// The bytes one fuzz connection sends, and how many frames they claim to hold.
fn random_stream(rng: &mut TestRng, encoder: &mut Encoder) -> (Vec<u8>, u64) {
    let mut out = Vec::new();
    let frame_count = match rng.below(10) {
        0..=5 => 1,
        6..=8 => 2 + rng.below(8),
        _ => 10 + rng.below(40),
    };
    for _ in 0..frame_count {
        let payload = random_request(rng, encoder);
        match rng.below(20) {
            0..=3 => write_frame(&payload, &mut out),
            4..=15 => write_frame(&mutate(rng, payload), &mut out),
            16 => {
                // A length that promises more than follows (the rest never comes).
                out.extend_from_slice(
                    &(payload.len() as u32 + 1 + rng.below(100) as u32).to_le_bytes(),
                );
                out.extend_from_slice(&payload);
            }
            17 => {
                // A length that cuts the payload: the rest is read as the next frame.
                let cut = rng.below(payload.len() as u64) as u32;
                out.extend_from_slice(&cut.to_le_bytes());
                out.extend_from_slice(&payload);
            }
            18 => {
                // Absurd lengths, then a few bytes.
                let length = *pick(
                    rng,
                    &[u32::MAX, FRAME_SIZE_BYTES_MAX + 1, 1 << 31, 0x00FF_FFFF],
                );
                out.extend_from_slice(&length.to_le_bytes());
                out.extend(random_bytes(rng, 16));
            }
            _ => {
                // An empty frame, or half a length prefix.
                if rng.below(2) == 0 {
                    out.extend_from_slice(&0u32.to_le_bytes());
                } else {
                    out.extend_from_slice(&payload.len().to_le_bytes()[..2]);
                }
            }
        }
    }
    (out, frame_count)
}

/// Reads response frames until the server closes or `timeout` passes without a byte;
/// every frame must decode as a response. Returns (responses, closed by the server).
fn read_responses(stream: &mut TcpStream, timeout: Duration, tally: &Tally) -> (u64, bool) {
    stream.set_read_timeout(Some(timeout)).unwrap();
    let mut buffered = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut response_count = 0;
    // Bounded: each read either makes progress, ends, or times out.
    for _ in 0..100_000 {
        let read = match stream.read(&mut chunk) {
            Ok(0) => return (response_count, true),
            Ok(read) => read,
            Err(error) if error.kind() == ErrorKind::ConnectionReset => {
                return (response_count, true);
            }
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return (response_count, false);
            }
            Err(error) => panic!("reading responses: {error}"),
        };
        buffered.extend_from_slice(&chunk[..read]);
        while buffered.len() >= 4 {
            let length = u32::from_le_bytes(buffered[..4].try_into().unwrap()) as usize;
            assert!(
                length <= 8 * 1024 * 1024,
                "the server sent a frame of {length} bytes"
            );
            if buffered.len() < 4 + length {
                break;
            }
            let frame: Vec<u8> = buffered.drain(..4 + length).skip(4).collect();
            let response = decode_response(&frame)
                .unwrap_or_else(|error| panic!("the server sent an invalid response: {error}"));
            let kind = match &response.body {
                ResponseBody::Error(error) => format!("Error({:?})", error.code),
                other => format!("{other:?}")
                    .split(['(', ' ', '{'])
                    .next()
                    .unwrap_or("?")
                    .to_owned(),
            };
            *tally.kinds.lock().unwrap().entry(kind).or_default() += 1;
            response_count += 1;
        }
    }
    (response_count, false)
}

fn fuzz_connections(address: SocketAddr, seed: u64, deadline: Instant, tally: &Tally) {
    let mut rng = TestRng::new(seed);
    let mut encoder = Encoder::new();
    // Bounded by the deadline and by count.
    for _ in 0..1_000_000 {
        if Instant::now() >= deadline {
            return;
        }
        let (bytes, frame_count) = random_stream(&mut rng, &mut encoder);
        let mut stream = TcpStream::connect(address).expect("the server accepts");
        stream
            .set_write_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        Tally::add(&tally.connections, 1);
        // Split the bytes at random points, as a network would.
        let mut sent_all = true;
        let mut position = 0;
        while position < bytes.len() {
            let end = (position + 1 + rng.below(bytes.len() as u64) as usize).min(bytes.len());
            if stream.write_all(&bytes[position..end]).is_err() {
                sent_all = false;
                break;
            }
            position = end;
        }
        Tally::add(&tally.frames_sent, frame_count);
        Tally::add(&tally.bytes_sent, position as u64);
        if !sent_all {
            Tally::add(&tally.closed_by_server, 1);
        }
        // Half-close: the server answers what it read, then closes.
        let _ = stream.shutdown(Shutdown::Write);
        let (responses, closed) = read_responses(&mut stream, Duration::from_secs(2), tally);
        Tally::add(&tally.responses, responses);
        if !closed {
            Tally::add(&tally.unanswered, 1);
        }
    }
}

/// Opens many connections, each holding part of a frame, keeps them while a normal client
/// is served, then drops them; until the deadline.
fn flood_connections(address: SocketAddr, seed: u64, deadline: Instant, tally: &Tally) -> u64 {
    let mut rng = TestRng::new(seed);
    let mut encoder = Encoder::new();
    let mut flood_count = 0;
    while Instant::now() < deadline && flood_count < 20 {
        let mut held = Vec::new();
        for _ in 0..256 {
            let Ok(mut stream) = TcpStream::connect(address) else {
                break;
            };
            let payload = random_request(&mut rng, &mut encoder);
            let mut frame = Vec::new();
            write_frame(&payload, &mut frame);
            let cut = rng.below(frame.len() as u64) as usize;
            let _ = stream.write_all(&frame[..cut]);
            held.push(stream);
        }
        Tally::add(&tally.connections, held.len() as u64);
        let mut client = connect(address).expect("a normal client connects during a flood");
        client.ping().expect("and is answered");
        drop(held);
        flood_count += 1;
    }
    flood_count
}

/// Pipelines large fetches without ever reading a response, until the server stops reading
/// this connection; holds it open until the deadline.
fn never_read(address: SocketAddr, deadline: Instant) -> u64 {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_write_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut encoder = Encoder::new();
    let mut sent = 0u64;
    let mut out = Vec::new();
    for correlation_id in 0..200_000u64 {
        out.clear();
        encoder.write_request_frame(
            &Request {
                correlation_id,
                body: RequestBody::Fetch(FetchRequest {
                    topic: "precious",
                    partition: 0,
                    offset: Offset(0),
                    size_bytes_max: 2 * 1024 * 1024,
                    wait_max: Duration::ZERO,
                }),
            },
            &mut out,
        );
        // Bounded: the server stops reading within ~1024 requests plus socket buffers,
        // and then a write times out.
        if stream.write_all(&out).is_err() {
            break;
        }
        sent += 1;
    }
    // Hold the connection, with the server's responses unread, until the deadline.
    let remaining = deadline.saturating_duration_since(Instant::now());
    std::thread::sleep(remaining);
    sent
}

/// CPU time the process has used (user + system), from /proc.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let ticks_per_second: u64 = String::from_utf8(
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    Duration::from_millis(ticks * 1000 / ticks_per_second)
}

/// Regression: a client that pipelined ~1000 large fetches and vanished without reading
/// them used to leave its shard building and discarding every response (seconds of CPU in
/// a debug build, while the shard's other clients waited ~1.7 s per ping). Now the
/// connection is abandoned when its responses cannot be written.
#[test]
fn a_client_that_vanishes_with_unread_fetches_leaves_no_work_behind() {
    let server = TestServer::start();
    let mut client = connect(server.address).unwrap();
    client.create_topic("precious", 3).unwrap();
    let value = vec![7u8; 100 * 1024];
    for _ in 0..10 {
        let records = [RecordInput {
            key: b"k",
            value: &value,
            headers: &[],
            condition: KeyCondition::Any,
        }];
        client.append("precious", Some(0), None, &records).unwrap();
    }
    // Blocks once the server stops reading the connection (bounded by its write timeout).
    let unread_count = never_read(server.address, Instant::now());
    let cpu_before = cpu_time(server.pid());
    let window_started = Instant::now();
    let mut ping_latency_max = Duration::ZERO;
    // Two seconds of pings, to the shard owning partition 0 and to the shared port.
    let owner_port = client.metadata().unwrap().topics[0].partitions[0].port;
    let mut owner = connect(SocketAddr::new(server.address.ip(), owner_port)).expect("owner shard");
    while window_started.elapsed() < Duration::from_secs(2) {
        let ping_started = Instant::now();
        owner.ping().unwrap();
        client.ping().unwrap();
        ping_latency_max = ping_latency_max.max(ping_started.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
    let cpu_used = cpu_time(server.pid()).saturating_sub(cpu_before);
    eprintln!(
        "after a client vanished with {unread_count} fetches unread: server CPU {cpu_used:?} \
         in {:?}, slowest ping {ping_latency_max:?}",
        window_started.elapsed()
    );
    assert!(
        cpu_used < Duration::from_millis(700),
        "the server spent {cpu_used:?} of CPU after the client vanished"
    );
}

/// Sends a ping one byte at a time, then waits for the pong.
fn drip(address: SocketAddr, deadline: Instant, tally: &Tally) -> u64 {
    let mut encoder = Encoder::new();
    let mut pong_count = 0;
    while Instant::now() < deadline && pong_count < 50 {
        let mut stream = TcpStream::connect(address).unwrap();
        stream.set_nodelay(true).unwrap();
        let mut frame = Vec::new();
        encoder.write_request_frame(
            &Request {
                correlation_id: pong_count,
                body: RequestBody::Ping,
            },
            &mut frame,
        );
        for byte in &frame {
            stream.write_all(std::slice::from_ref(byte)).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = stream.shutdown(Shutdown::Write);
        let waited = Instant::now();
        let (responses, closed) = read_responses(&mut stream, Duration::from_secs(5), tally);
        assert_eq!(
            responses,
            1,
            "a dripped ping is answered (closed by the server: {closed}, after {:?})",
            waited.elapsed()
        );
        pong_count += 1;
    }
    pong_count
}

#[test]
fn hostile_clients_neither_crash_the_server_nor_touch_the_log() {
    let seed = test_seed("reliability_fuzz::hostile_clients");
    let mut rng = TestRng::new(seed);
    let temp = tempfile::tempdir().unwrap();
    let data_dir = temp.path().join("data");
    let mut server = TestServer::start_on(&data_dir, &[]);
    let workload = Workload::new("precious", 3, 24);
    let ledger = Mutex::new(Ledger::default());
    {
        let mut client = connect(server.address).unwrap();
        client.create_topic("precious", 3).unwrap();
        client.create_topic("fuzz", 4).unwrap();
        let control = Control::default();
        let shape = WriterShape {
            batch_count_max: 150,
            ..WriterShape::default()
        };
        run_writer(
            server.address,
            &workload,
            &ledger,
            &control,
            shape,
            rng.next_u64(),
        );
    }
    let before = check_log(
        &mut connect(server.address).unwrap(),
        &workload,
        &mut ledger.lock().unwrap(),
        StorageFailureRule::MustBeAbsent,
        "before fuzzing",
    );
    let resident_before = server.resident_bytes();

    let duration = fuzz_duration();
    let started = Instant::now();
    let deadline = started + duration;
    let tally = Arc::new(Tally::default());
    let canary_done = Arc::new(AtomicBool::new(false));
    let address = server.address;
    let mut fuzzers = Vec::new();
    for _ in 0..3 {
        let (tally, fuzz_seed) = (tally.clone(), rng.next_u64());
        fuzzers.push(std::thread::spawn(move || {
            fuzz_connections(address, fuzz_seed, deadline, &tally);
        }));
    }
    let flood = {
        let (tally, flood_seed) = (tally.clone(), rng.next_u64());
        std::thread::spawn(move || flood_connections(address, flood_seed, deadline, &tally))
    };
    let silent = { std::thread::spawn(move || never_read(address, deadline)) };
    let dripper = {
        let tally = tally.clone();
        std::thread::spawn(move || drip(address, deadline, &tally))
    };
    // The canary: a normal client that appends, reads and pings throughout.
    let canary = {
        let canary_done = canary_done.clone();
        std::thread::spawn(move || {
            let mut client = connect(address).unwrap();
            let mut latency_max = Duration::ZERO;
            let mut cycle_count = 0u64;
            let mut latest = None;
            while Instant::now() < deadline {
                let cycle_started = Instant::now();
                client.ping().expect("canary ping during fuzzing");
                let record = RecordInput {
                    key: b"canary",
                    value: b"still here",
                    headers: &[],
                    condition: latest.map_or(KeyCondition::NoKey, KeyCondition::At),
                };
                match client.append("fuzz", Some(0), None, &[record]) {
                    Ok(AppendResult::Appended { base_offset, .. }) => latest = Some(base_offset),
                    // A fuzz frame may append to the canary's key too; refresh and go on.
                    Ok(AppendResult::Conflict { .. }) => {
                        latest = client
                            .read_key("fuzz", Some(0), b"canary", false)
                            .expect("canary read during fuzzing")
                            .map(|record| record.offset);
                    }
                    Err(error) => panic!("canary append during fuzzing: {error}"),
                }
                latency_max = latency_max.max(cycle_started.elapsed());
                cycle_count += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            canary_done.store(true, Ordering::SeqCst);
            (cycle_count, latency_max)
        })
    };
    for fuzzer in fuzzers {
        fuzzer.join().expect("fuzzer");
    }
    let flood_count = flood.join().expect("flood");
    let unread_request_count = silent.join().expect("never-reader");
    let drip_count = dripper.join().expect("dripper");
    let (canary_cycle_count, canary_latency_max) = canary.join().expect("canary");
    assert!(canary_done.load(Ordering::SeqCst));

    assert!(
        server.try_exit_status().is_none(),
        "the server survived the fuzzing"
    );
    let resident_after = server.resident_bytes();
    let mut client = connect(server.address).expect("a normal client connects after fuzzing");
    client.ping().unwrap();
    let after = check_log(
        &mut client,
        &workload,
        &mut ledger.lock().unwrap(),
        StorageFailureRule::MustBeAbsent,
        &format!("after fuzzing (seed {seed})"),
    );
    assert!(
        after.records == before.records,
        "the log written before fuzzing changed"
    );
    assert!(
        resident_after < resident_before + 256 * 1024 * 1024,
        "fuzzing grew the server from {resident_before} to {resident_after} bytes"
    );
    drop(client);
    drop(server);
    // Whatever the fuzzers managed to append or create must not stop recovery either.
    let server = TestServer::start_on(&data_dir, &[]);
    let recovered = check_log(
        &mut connect(server.address).unwrap(),
        &workload,
        &mut ledger.lock().unwrap(),
        StorageFailureRule::MustBeAbsent,
        &format!("recovered after fuzzing (seed {seed})"),
    );
    assert!(recovered.records == before.records);

    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    eprintln!(
        "reliability_fuzz: seed {seed}, {:?}: {} frames ({} bytes) on {} connections, {} \
         responses (all valid), {} connections closed by the server mid-send, {} left \
         unanswered at 2 s, {flood_count} floods of 256 connections, {unread_request_count} \
         requests never read, {drip_count} dripped pings; canary {canary_cycle_count} cycles, \
         slowest {canary_latency_max:?}; RSS {} -> {} MiB; {} records intact",
        started.elapsed(),
        load(&tally.frames_sent),
        load(&tally.bytes_sent),
        load(&tally.connections),
        load(&tally.responses),
        load(&tally.closed_by_server),
        load(&tally.unanswered),
        resident_before / (1024 * 1024),
        resident_after / (1024 * 1024),
        after.record_count
    );
    eprintln!(
        "reliability_fuzz: responses by kind: {:?}",
        tally.kinds.lock().unwrap()
    );
}
