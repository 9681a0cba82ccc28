//! Hostile clients against a live server (docs/DESIGN.md §3.6), for a bounded time: random and
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

use cairn_client::AppendResult;
use cairn_engine::{KeyCondition, Offset, RecordHeader, RecordInput, ShardId};
use cairn_wire::{
    AppendRecords, AppendRequest, BackupReadRequest, CommitOffsetsRequest, CreateTopicRequest,
    Encoder, FetchOffsetsRequest, FetchRequest, KeyHistoryRequest, PartitionOffset, ReadKeyRequest,
    Request, RequestBody, ResponseBody, decode_response, write_frame,
};

use crate::support::server::TestServer;
use crate::support::workload::{
    Control, Ledger, StorageFailureRule, Workload, WriterShape, check_log, connect, run_writer,
};
use crate::support::{TestRng, test_seed};

/// The server's frame limit (its default), for lengths just over it.
const FRAME_SIZE_BYTES_MAX: u32 = cairn_wire::FRAME_SIZE_BYTES_MAX_DEFAULT;

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
            retention: cairn_engine::RetentionPolicy {
                ms: *pick(rng, &[None, Some(0), Some(u64::MAX)]),
                bytes: *pick(rng, &[None, Some(0), Some(u64::MAX)]),
            },
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
                    ..RecordInput::default()
                })
                .collect();
            let request = Request {
                correlation_id,
                body: RequestBody::Append(AppendRequest {
                    topic: pick::<&str>(rng, &write_topics),
                    partition: (rng.below(2) == 0).then_some(partition % 4),
                    expected_end_offset: (rng.below(3) == 0).then(|| Offset(*pick(rng, &offsets))),
                    records: AppendRecords::from_inputs(&inputs),
                    producer: None,
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
            include_appended: rng.below(2) == 0,
        }),
        // Committed offsets: groups of every size (1024 bytes is the most), to existing
        // and missing topics and the internal one, metadata up to past its 4096 bytes.
        89..=92 => {
            let group = String::from_utf8_lossy(&key).into_owned();
            let metadata = "m".repeat(*pick(rng, &[0usize, 5, 4096, 4097]));
            let partition_count = *pick(rng, &[0usize, 1, 3, 4097]);
            let partitions: Vec<PartitionOffset<'_>> = (0..partition_count)
                .map(|index| PartitionOffset {
                    partition: if index == 0 { partition } else { partition % 4 },
                    offset: *pick(rng, &[-1i64, 0, 7, i64::MAX]),
                    metadata: &metadata,
                })
                .collect();
            let request = Request {
                correlation_id,
                body: RequestBody::CommitOffsets(CommitOffsetsRequest {
                    group: &group,
                    topic: pick::<&str>(rng, &["fuzz", "nope", "__cairn_offsets", ""]),
                    partitions,
                }),
            };
            return encoder.encode_request(&request).to_vec();
        }
        93..=95 => {
            let group = String::from_utf8_lossy(&key).into_owned();
            let partition_count = *pick(rng, &[0usize, 1, 3, 4097]);
            let request = Request {
                correlation_id,
                body: RequestBody::FetchOffsets(FetchOffsetsRequest {
                    group: &group,
                    topic: pick::<&str>(rng, &read_topics),
                    partitions: (0..partition_count).map(|_| partition).collect(),
                }),
            };
            return encoder.encode_request(&request).to_vec();
        }
        96 => RequestBody::BackupBegin,
        97 => RequestBody::BackupRead(BackupReadRequest {
            shard: ShardId(*pick(rng, &[0u16, 1, 2, u16::MAX])),
            segment_index: *pick(rng, &[0u64, 1, 2, u64::MAX]),
            position: *pick(rng, &[0u64, 4095, 4096, u64::MAX - 1]),
            length_bytes: *pick(rng, &[0u32, 1, 4096, 1024 * 1024, u32::MAX]),
        }),
        _ => RequestBody::KeyHistory(KeyHistoryRequest {
            topic: pick::<&str>(rng, &read_topics),
            partition: (rng.below(2) == 0).then_some(partition),
            key: &key,
            record_count_max: *pick(rng, &[0, 1, 5, u32::MAX]),
            from_offset: (rng.below(2) == 0).then(|| rng.below(64)),
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
            ..RecordInput::default()
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

/// Resident memory of process `pid` (VmRSS in /proc), in bytes.
fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

const MIB: u64 = 1024 * 1024;

/// A fetch of `partition` of `quiet` (which stays empty, so it waits all of `wait_max`),
/// padded to `frame_size_bytes` with bytes after the flatbuffer, which the verifier never
/// visits: one whole frame, length included.
fn padded_long_poll(partition: u32, frame_size_bytes: usize, wait_max: Duration) -> Vec<u8> {
    let request = Request {
        correlation_id: u64::from(partition),
        body: RequestBody::Fetch(FetchRequest {
            topic: "quiet",
            partition,
            offset: Offset(0),
            size_bytes_max: 1024,
            wait_max,
        }),
    };
    let mut payload = Encoder::new().encode_request(&request).to_vec();
    payload.resize(frame_size_bytes, 0);
    let mut frame = Vec::new();
    write_frame(&payload, &mut frame);
    frame
}

/// What one hostile run did and what the server's memory did meanwhile.
struct HostileRun {
    sent_request_count: u64,
    sent_bytes: u64,
    resident_before: u64,
    resident_peak: u64,
    /// Resident memory once the hostile connections had closed and it settled.
    resident_after: u64,
    canary_cycle_count: u64,
    canary_latency_max: Duration,
}

/// Opens `connection_count` connections, spread over the shards' own ports, and on each
/// pipelines up to `request_count` long-poll fetches padded to `frame_size_bytes` (of a
/// partition the shard owns, so nothing is forwarded) without reading a response, until
/// the server stops reading it; holds them a moment, then closes them all. Meanwhile
/// samples the server's RSS every 10 ms and runs a canary client, which must be served
/// throughout.
fn run_hostile_long_polls(
    server: &TestServer,
    connection_count: usize,
    request_count: u64,
    frame_size_bytes: usize,
    wait_max: Duration,
) -> HostileRun {
    let pid = server.pid();
    let mut client = connect(server.address).unwrap();
    let quiet = match client.create_topic("quiet", 2) {
        Ok(topic) => topic,
        Err(_) => client
            .metadata()
            .unwrap()
            .topics
            .into_iter()
            .find(|topic| topic.name == "quiet")
            .unwrap(),
    };
    let resident_before = resident_bytes(pid);
    let done = Arc::new(AtomicBool::new(false));
    let resident_peak = Arc::new(AtomicU64::new(resident_before));
    let sampler = {
        let (done, resident_peak) = (done.clone(), resident_peak.clone());
        std::thread::spawn(move || {
            // Bounded: the test sets `done` within seconds.
            while !done.load(Ordering::SeqCst) {
                resident_peak.fetch_max(resident_bytes(pid), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let canary = {
        let (done, address) = (done.clone(), server.address);
        std::thread::spawn(move || {
            let mut client = connect(address).unwrap();
            let mut cycle_count = 0u64;
            let mut latency_max = Duration::ZERO;
            while !done.load(Ordering::SeqCst) {
                let started = Instant::now();
                client.ping().expect("canary ping");
                for partition in 0..2 {
                    client
                        .fetch("quiet", partition, Offset(0), 1024, Duration::ZERO)
                        .expect("canary fetch");
                }
                latency_max = latency_max.max(started.elapsed());
                cycle_count += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            (cycle_count, latency_max)
        })
    };
    let senders: Vec<_> = (0..connection_count)
        .map(|index| {
            let partition = &quiet.partitions[index % quiet.partitions.len()];
            let address = SocketAddr::new(server.address.ip(), partition.port);
            let frame = padded_long_poll(partition.partition, frame_size_bytes, wait_max);
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(address).unwrap();
                stream
                    .set_write_timeout(Some(Duration::from_millis(300)))
                    .unwrap();
                let mut sent_count = 0u64;
                // Bounded by the count, and by the write timeout once the server stops
                // reading this connection.
                while sent_count < request_count && stream.write_all(&frame).is_ok() {
                    sent_count += 1;
                }
                (stream, sent_count)
            })
        })
        .collect();
    let mut streams = Vec::new();
    let mut sent_request_count = 0;
    for sender in senders {
        let (stream, sent_count) = sender.join().expect("sender");
        sent_request_count += sent_count;
        streams.push(stream);
    }
    // Let the server catch up with what the sockets hold, while the canary keeps going.
    std::thread::sleep(Duration::from_millis(500));
    drop(streams);
    // The closed connections' requests must let go of their memory: wait (bounded) for
    // RSS to come back near where it started.
    let settled_by = Instant::now() + Duration::from_secs(5);
    let mut resident_after = resident_bytes(pid);
    while resident_after > resident_before + 32 * MIB && Instant::now() < settled_by {
        std::thread::sleep(Duration::from_millis(50));
        resident_after = resident_bytes(pid);
    }
    done.store(true, Ordering::SeqCst);
    sampler.join().expect("sampler");
    let (canary_cycle_count, canary_latency_max) = canary.join().expect("canary");
    HostileRun {
        sent_request_count,
        sent_bytes: sent_request_count * frame_size_bytes as u64,
        resident_before,
        resident_peak: resident_peak.load(Ordering::SeqCst),
        resident_after,
        canary_cycle_count,
        canary_latency_max,
    }
}

/// How much a hostile run may grow the server: both shards' request memory budgets, and a
/// margin for per-connection buffers, allocator slack and the canary.
fn hostile_growth_bytes_max() -> u64 {
    let config = cairn_server::ServerConfig::new();
    2 * config.shard_request_bytes_max as u64 + 48 * MIB
}

fn check_hostile_run(name: &str, run: &HostileRun) {
    eprintln!(
        "{name}: {} requests ({} MiB) sent; RSS {} MiB before, {} MiB at the peak, {} MiB \
         after closing; canary {} cycles, slowest {:?}",
        run.sent_request_count,
        run.sent_bytes / MIB,
        run.resident_before / MIB,
        run.resident_peak / MIB,
        run.resident_after / MIB,
        run.canary_cycle_count,
        run.canary_latency_max,
    );
    let growth_bytes = run.resident_peak.saturating_sub(run.resident_before);
    assert!(
        growth_bytes <= hostile_growth_bytes_max(),
        "{name}: the server grew by {} MiB, more than {} MiB",
        growth_bytes / MIB,
        hostile_growth_bytes_max() / MIB
    );
    assert!(
        run.resident_after <= run.resident_before + 32 * MIB,
        "{name}: {} MiB still resident after the clients closed ({} MiB before)",
        run.resident_after / MIB,
        run.resident_before / MIB
    );
    assert!(run.canary_cycle_count > 0, "{name}: the canary was served");
}

/// A server whose RSS follows what it holds: glibc keeps freed heap memory resident (and
/// raises its mmap threshold after each large free), so a server that released every
/// frame could still show their bytes in VmRSS. With a fixed 32 KiB threshold every frame
/// of these tests gets its own mapping, returned to the OS when it is freed.
fn server_with_faithful_rss(data_dir: &std::path::Path) -> TestServer {
    TestServer::start_with_env(data_dir, &[], &[("MALLOC_MMAP_THRESHOLD_", "32768")])
}

/// Regression: one connection pipelining 1024 long-poll fetches padded to megabytes (each
/// passed the verifier and held its frame for the whole poll) made the server hold
/// 7 GiB, still resident after the client closed.
#[test]
fn one_connection_of_padded_long_polls_cannot_make_the_server_hold_its_frames() {
    let temp = tempfile::tempdir().unwrap();
    let server = server_with_faithful_rss(&temp.path().join("data"));
    let run = run_hostile_long_polls(&server, 1, 1024, 1024 * 1024, Duration::from_secs(30));
    check_hostile_run("one connection, 1024 x 1 MiB", &run);
}

/// The same with many connections and frames just under a fetch's frame limit, which the
/// server accepts and long-polls: each connection and each shard may hold only so much,
/// and the canary, one request at a time, is still served. The polls wait 2 s, so that
/// their memory visibly comes back once the clients have gone (a client that leaves while
/// its connection is not being read is noticed when its requests end).
#[test]
fn many_connections_of_padded_long_polls_cannot_make_the_server_hold_their_frames() {
    let temp = tempfile::tempdir().unwrap();
    let server = server_with_faithful_rss(&temp.path().join("data"));
    let run = run_hostile_long_polls(&server, 16, 1024, 60 * 1024, Duration::from_secs(2));
    check_hostile_run("16 connections, 1024 x 60 KiB", &run);
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
                    ..RecordInput::default()
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
