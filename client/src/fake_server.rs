//! A scripted stand-in for the server, for the clients' tests.
//!
//! It listens on one or more ports of 127.0.0.1 (as a server's shards do), decodes every
//! request with the wire codec, and hands it to the test's script, which says what to send
//! back and when: answers now, answers later (out of order), or drop the connection. Plain
//! std threads, so it serves async and blocking clients alike. Dropping it stops every
//! thread, joins them, and re-raises a panic from any of them (a failed assertion inside a
//! script, a request the codec refused).

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use cairn_engine::core::{KeyCondition, Offset, PartitionId, RecordHeader, ShardId};

use super::FetchedRecord;
use cairn_wire::{
    Appended, ConflictInfo, Encoder, ErrorCode, ErrorResponse, Fetched, FrameReader, HeaderList,
    KeyHistoryResult, KeyRecord, MetadataResult, PartitionMetadata, RecordOut, RecordOutList,
    Request, RequestBody, Response, ResponseBody, TopicMetadata, decode_request, partition_for_key,
    route,
};

/// How often connection threads look at the stop flag while idle.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// A request as the script sees it.
pub(super) struct Received<'a> {
    /// Every port the server listens on, as metadata would list them.
    pub ports: &'a [u16],
    /// The port it arrived on.
    pub port: u16,
    /// Which connection, counting from 0 in accept order across all ports.
    pub connection_index: usize,
    pub request: &'a Request<'a>,
}

/// What the server does next, in order.
pub(super) enum Step {
    /// Writes one frame on the connection the request came on.
    Send(Vec<u8>),
    /// Closes that connection, without reading what else it holds.
    Close,
}

type Script = dyn FnMut(Received<'_>) -> Vec<Step> + Send;

pub(super) struct FakeServer {
    ports: Vec<u16>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl FakeServer {
    /// Listens on `port_count` ports and answers with `script`, which every connection
    /// shares (calls are serialised).
    pub(super) fn start(
        port_count: usize,
        script: impl FnMut(Received<'_>) -> Vec<Step> + Send + 'static,
    ) -> FakeServer {
        let script: Arc<Mutex<Box<Script>>> = Arc::new(Mutex::new(Box::new(script)));
        let stop = Arc::new(AtomicBool::new(false));
        let connection_count = Arc::new(AtomicUsize::new(0));
        let mut ports = Vec::new();
        let mut threads = Vec::new();
        let mut listeners = Vec::new();
        for _ in 0..port_count {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            ports.push(listener.local_addr().unwrap().port());
            listeners.push(listener);
        }
        for listener in listeners {
            let (script, stop, connection_count) = (
                Arc::clone(&script),
                Arc::clone(&stop),
                Arc::clone(&connection_count),
            );
            let ports = ports.clone();
            threads.push(std::thread::spawn(move || {
                accept(&listener, &ports, &script, &stop, &connection_count);
            }));
        }
        FakeServer {
            ports,
            stop,
            threads,
        }
    }

    /// The port of listener `index`.
    pub(super) fn port(&self, index: usize) -> u16 {
        self.ports[index]
    }

    /// The address of listener `index`.
    pub(super) fn address(&self, index: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port(index)))
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake each accept loop so it sees the flag.
        for port in &self.ports {
            let _ = TcpStream::connect(("127.0.0.1", *port));
        }
        let mut panicked = false;
        for thread in self.threads.drain(..) {
            panicked |= thread.join().is_err();
        }
        if panicked && !std::thread::panicking() {
            panic!("a fake server thread panicked; see its message above");
        }
    }
}

fn accept(
    listener: &TcpListener,
    ports: &[u16],
    script: &Arc<Mutex<Box<Script>>>,
    stop: &Arc<AtomicBool>,
    connection_count: &Arc<AtomicUsize>,
) {
    let port = listener.local_addr().unwrap().port();
    let mut connections = Vec::new();
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let stream = stream.unwrap();
        let connection_index = connection_count.fetch_add(1, Ordering::SeqCst);
        let (script, stop, ports) = (Arc::clone(script), Arc::clone(stop), ports.to_vec());
        connections.push(std::thread::spawn(move || {
            serve(stream, &ports, port, connection_index, &script, &stop);
        }));
    }
    let mut panicked = false;
    for connection in connections {
        panicked |= connection.join().is_err();
    }
    assert!(!panicked, "a connection thread of port {port} panicked");
}

fn serve(
    mut stream: TcpStream,
    ports: &[u16],
    port: u16,
    connection_index: usize,
    script: &Mutex<Box<Script>>,
    stop: &AtomicBool,
) {
    stream.set_read_timeout(Some(POLL_INTERVAL)).unwrap();
    let mut frames = FrameReader::new(u32::MAX);
    let mut buffer = vec![0_u8; 64 * 1024];
    while !stop.load(Ordering::SeqCst) {
        let read_size_bytes = match stream.read(&mut buffer) {
            Ok(0) => return,
            Ok(read_size_bytes) => read_size_bytes,
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                continue;
            }
            // The client went away (it may reset the connection); that is its business.
            Err(_) => return,
        };
        frames.feed(&buffer[..read_size_bytes]);
        while let Some(frame) = frames.next_frame().unwrap() {
            let request = decode_request(&frame).unwrap();
            let steps = {
                let mut script = script.lock().unwrap();
                script(Received {
                    ports,
                    port,
                    connection_index,
                    request: &request,
                })
            };
            for step in steps {
                match step {
                    Step::Send(bytes) => {
                        if stream.write_all(&bytes).is_err() {
                            return;
                        }
                    }
                    Step::Close => {
                        let _ = stream.shutdown(Shutdown::Both);
                        return;
                    }
                }
            }
        }
    }
}

/// One response frame, length included.
pub(super) fn response(correlation_id: u64, body: ResponseBody<'_>) -> Vec<u8> {
    let mut frame = Vec::new();
    Encoder::new().write_response_frame(
        &Response {
            correlation_id,
            body,
        },
        &mut frame,
    );
    frame
}

/// Sends one response now.
pub(super) fn send(correlation_id: u64, body: ResponseBody<'_>) -> Vec<Step> {
    vec![Step::Send(response(correlation_id, body))]
}

/// A topic of `partition_count` partitions spread over `ports` as a server spreads them
/// over its shards: partition `p` on shard `p % shard count`.
pub(super) fn topic_metadata<'a>(
    name: &'a str,
    partition_count: u32,
    ports: &[u16],
) -> TopicMetadata<'a> {
    let shard_count = u32::try_from(ports.len()).unwrap();
    let partitions = (0..partition_count)
        .map(|partition| {
            let shard = partition % shard_count;
            PartitionMetadata {
                partition,
                partition_id: PartitionId(1000 + partition),
                shard: ShardId(u16::try_from(shard).unwrap()),
                port: ports[usize::try_from(shard).unwrap()],
            }
        })
        .collect();
    TopicMetadata {
        name,
        partitions,
        retention: cairn_engine::RetentionPolicy::FOREVER,
    }
}

/// The topic the model server knows from the start.
pub(super) const MODEL_TOPIC: &str = "seats";

/// Partitions of [`MODEL_TOPIC`].
pub(super) const MODEL_PARTITION_COUNT: u32 = 4;

/// The end offset of every partition of the model server, and the base offset it gives
/// every append.
pub(super) const MODEL_END_OFFSET: Offset = Offset(7);

/// The latest offset of every key of the model server.
pub(super) const MODEL_KEY_OFFSET: Offset = Offset(3);

/// A key the model server says is taken (a NoKey condition on it fails), and one it says
/// has no record.
pub(super) const MODEL_KEY_TAKEN: &[u8] = b"taken";
pub(super) const MODEL_KEY_ABSENT: &[u8] = b"absent";

const MODEL_HEADERS: [RecordHeader<'static>; 2] = [
    RecordHeader {
        name: b"event-type",
        value: b"SeatBooked",
    },
    RecordHeader {
        name: b"empty",
        value: b"",
    },
];

/// The producer id the model hands out.
pub(super) const MODEL_PRODUCER_ID: i64 = 65_536;

/// Answers every request as a server with one topic ([`MODEL_TOPIC`], spread over all the
/// ports) would, with values the tests can predict: see the `MODEL_*` constants and
/// [`model_record`].
pub(super) fn model_answer(received: Received<'_>) -> Vec<Step> {
    let id = received.request.correlation_id;
    let ports = received.ports;
    let topic = match &received.request.body {
        RequestBody::Ping => return send(id, ResponseBody::Pong),
        RequestBody::Metadata => {
            let metadata = MetadataResult {
                shard_ports: ports.to_vec(),
                topics: vec![topic_metadata(MODEL_TOPIC, MODEL_PARTITION_COUNT, ports)],
            };
            return send(id, ResponseBody::Metadata(metadata));
        }
        RequestBody::CreateTopic(create) if create.name == MODEL_TOPIC => {
            return send(id, error(ErrorCode::TopicExists, "topic seats exists"));
        }
        RequestBody::CreateTopic(create) => {
            let topic = topic_metadata(create.name, create.partition_count, ports);
            return send(id, ResponseBody::TopicCreated(topic));
        }
        RequestBody::AlterTopic(alter) => {
            let topic = topic_metadata(alter.name, MODEL_PARTITION_COUNT, ports);
            return send(id, ResponseBody::TopicAltered(topic));
        }
        RequestBody::Append(append) => append.topic,
        RequestBody::Fetch(fetch) => fetch.topic,
        RequestBody::ReadKey(read) => read.topic,
        RequestBody::KeyHistory(history) => history.topic,
        RequestBody::InitProducer => {
            let initialized = cairn_wire::ProducerInitialized {
                producer_id: MODEL_PRODUCER_ID,
                epoch: 0,
            };
            return send(id, ResponseBody::ProducerInitialized(initialized));
        }
        // The model keeps no offsets: nothing is ever committed.
        RequestBody::CommitOffsets(_) => return send(id, ResponseBody::OffsetsCommitted),
        RequestBody::FetchOffsets(fetch) => {
            let entries = fetch
                .partitions
                .iter()
                .map(|&partition| cairn_wire::CommittedOffset {
                    partition,
                    offset: None,
                    metadata: "",
                })
                .collect();
            return send(id, ResponseBody::CommittedOffsets(entries));
        }
        RequestBody::BackupBegin | RequestBody::BackupRead(_) => {
            return send(
                id,
                error(ErrorCode::UnsupportedRequest, "the model takes no backups"),
            );
        }
    };
    if topic != MODEL_TOPIC {
        return send(id, error(ErrorCode::UnknownTopic, "no such topic"));
    }
    match &received.request.body {
        RequestBody::Append(append) => {
            let partition = match append.route(MODEL_PARTITION_COUNT) {
                Ok(partition) => partition,
                Err(route) => return send(id, error(route.error_code(), "cannot route")),
            };
            if let Some(expected) = append.expected_end_offset
                && expected != MODEL_END_OFFSET
            {
                let conflict = ConflictInfo::EndOffset {
                    current_end_offset: MODEL_END_OFFSET,
                };
                return send(id, conflict_error(conflict));
            }
            let taken = append.records.iter().position(|record| {
                record.key == MODEL_KEY_TAKEN && record.condition == KeyCondition::NoKey
            });
            if let Some(record_index) = taken {
                let conflict = ConflictInfo::Key {
                    record_index: u32::try_from(record_index).unwrap(),
                    condition: KeyCondition::NoKey,
                    current_offset: Some(MODEL_KEY_OFFSET),
                };
                return send(id, conflict_error(conflict));
            }
            let appended = Appended {
                partition,
                base_offset: MODEL_END_OFFSET,
                record_count: u32::try_from(append.records.len()).unwrap(),
                duplicate: false,
            };
            send(id, ResponseBody::Appended(appended))
        }
        RequestBody::Fetch(fetch) => {
            let records = [
                record_out(fetch.offset, b"fetched"),
                record_out(fetch.offset.plus(1), b"fetched"),
            ];
            let fetched = Fetched {
                partition: fetch.partition,
                records: RecordOutList::from_slice(&records),
                synced_end: fetch.offset.plus(2),
            };
            send(id, ResponseBody::Fetched(fetched))
        }
        RequestBody::ReadKey(read) => {
            let Ok(partition) = route(read.partition, read.key, MODEL_PARTITION_COUNT) else {
                return send(id, error(ErrorCode::UnknownPartition, "no such partition"));
            };
            let record =
                (read.key != MODEL_KEY_ABSENT).then(|| record_out(MODEL_KEY_OFFSET, read.key));
            send(id, ResponseBody::KeyRecord(KeyRecord { partition, record }))
        }
        RequestBody::KeyHistory(history) => {
            let Ok(partition) = route(history.partition, history.key, MODEL_PARTITION_COUNT) else {
                return send(id, error(ErrorCode::UnknownPartition, "no such partition"));
            };
            // Newest first, following the back-pointers: 5, 3, 1.
            let records: Vec<RecordOut<'_>> = [5, 3, 1]
                .into_iter()
                .take(usize::try_from(history.record_count_max).unwrap())
                .map(|offset| record_out(Offset(offset), history.key))
                .collect();
            let result = KeyHistoryResult {
                partition,
                records: RecordOutList::from_slice(&records),
                next_offset: None,
            };
            send(id, ResponseBody::KeyHistory(result))
        }
        _ => unreachable!("requests without a topic were answered above"),
    }
}

/// The record the model server reads back at `offset` for `key`.
fn record_out(offset: Offset, key: &[u8]) -> RecordOut<'_> {
    RecordOut {
        offset,
        timestamp_ms: 1_700_000_000_000 + offset.0,
        key,
        value: b"value",
        headers: HeaderList::from_slice(&MODEL_HEADERS),
        prev_key_offset: offset.0.checked_sub(2).map(Offset),
    }
}

/// What a client should make of [`record_out`]`(offset, key)`.
pub(super) fn model_record(offset: u64, key: &[u8]) -> FetchedRecord {
    FetchedRecord {
        offset: Offset(offset),
        timestamp_ms: 1_700_000_000_000 + offset,
        key: key.to_vec(),
        value: b"value".to_vec(),
        headers: MODEL_HEADERS
            .iter()
            .map(|header| (header.name.to_vec(), header.value.to_vec()))
            .collect(),
        prev_key_offset: offset.checked_sub(2).map(Offset),
    }
}

/// An error response.
pub(super) fn error(code: ErrorCode, message: &str) -> ResponseBody<'_> {
    ResponseBody::Error(ErrorResponse {
        code,
        message,
        conflict: None,
        log_start: None,
    })
}

fn conflict_error(conflict: ConflictInfo) -> ResponseBody<'static> {
    ResponseBody::Error(ErrorResponse {
        code: ErrorCode::Conflict,
        message: "condition failed",
        conflict: Some(conflict),
        log_start: None,
    })
}

/// A key whose partition of [`MODEL_TOPIC`] lives on shard `shard` of `shard_count`.
pub(super) fn key_on_shard(shard: u32, shard_count: u32) -> Vec<u8> {
    (0..1000)
        .map(|index| format!("key-{index}").into_bytes())
        .find(|key| partition_for_key(key, MODEL_PARTITION_COUNT) % shard_count == shard)
        .unwrap()
}
