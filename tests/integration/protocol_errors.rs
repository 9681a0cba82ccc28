//! Hostile bytes on a real socket: each gets its error or a closed connection, and the
//! server keeps serving everyone else (docs/DESIGN.md §3.6).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use cairn_client::{BlockingClient, ClientConfig};
use cairn_engine::{KeyCondition, Offset, RecordInput};
use cairn_wire::{
    AppendRecords, AppendRequest, CreateTopicRequest, Encoder, ErrorCode, FetchRequest,
    ReadKeyRequest, Request, RequestBody, ResponseBody, decode_response, write_frame,
};

use crate::support::server::TestServer;

fn connect(address: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(address).expect("connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
}

/// Reads one response frame; `None` when the server closed the connection.
fn read_frame(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut length = [0u8; 4];
    match stream.read_exact(&mut length) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return None,
        Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return None,
        Err(error) => panic!("reading a response: {error}"),
    }
    let mut frame = vec![0u8; u32::from_le_bytes(length) as usize];
    stream.read_exact(&mut frame).expect("whole frame");
    Some(frame)
}

fn error_code(frame: &[u8]) -> ErrorCode {
    match decode_response(frame)
        .expect("the server's response decodes")
        .body
    {
        ResponseBody::Error(error) => error.code,
        other => panic!("expected an error response, got {other:?}"),
    }
}

fn assert_closed(stream: &mut TcpStream) {
    assert!(
        read_frame(stream).is_none(),
        "the server closes the connection"
    );
}

fn assert_still_serving(address: SocketAddr) {
    let mut client =
        BlockingClient::connect(ClientConfig::new(address)).expect("a new client connects");
    client.ping().expect("and is answered");
}

fn encode(request: &Request<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    Encoder::new().write_request_frame(request, &mut out);
    out
}

#[test]
fn an_oversized_frame_length_gets_too_large_and_a_closed_connection() {
    let server = TestServer::start();
    let mut stream = connect(server.address);
    stream.write_all(&u32::MAX.to_le_bytes()).unwrap();
    let response = read_frame(&mut stream).expect("an error response before closing");
    assert_eq!(error_code(&response), ErrorCode::TooLarge);
    assert_closed(&mut stream);
    assert_still_serving(server.address);
}

#[test]
fn bytes_that_are_not_a_flatbuffer_get_bad_request_and_a_closed_connection() {
    let server = TestServer::start();
    let mut stream = connect(server.address);
    let mut out = Vec::new();
    write_frame(&[0xAB; 64], &mut out);
    stream.write_all(&out).unwrap();
    let response = read_frame(&mut stream).expect("an error response before closing");
    assert_eq!(error_code(&response), ErrorCode::BadRequest);
    assert_closed(&mut stream);
    assert_still_serving(server.address);
}

#[test]
fn a_rule_violation_is_answered_and_the_connection_stays_usable() {
    let server = TestServer::start();
    let mut stream = connect(server.address);
    let empty: [RecordInput<'_>; 0] = [];
    let append = Request {
        correlation_id: 41,
        body: RequestBody::Append(AppendRequest {
            topic: "any",
            partition: Some(0),
            expected_end_offset: None,
            records: AppendRecords::from_inputs(&empty),
            producer: None,
        }),
    };
    stream.write_all(&encode(&append)).unwrap();
    let response = read_frame(&mut stream).expect("answered");
    let decoded = decode_response(&response).unwrap();
    assert_eq!(decoded.correlation_id, 41);
    assert_eq!(error_code(&response), ErrorCode::BadRequest);
    stream
        .write_all(&encode(&Request {
            correlation_id: 42,
            body: RequestBody::Ping,
        }))
        .unwrap();
    let pong = read_frame(&mut stream).expect("still open");
    assert!(matches!(
        decode_response(&pong).unwrap().body,
        ResponseBody::Pong
    ));
}

#[test]
fn truncated_frames_and_vanishing_clients_leave_the_server_serving() {
    let server = TestServer::start();
    for cut in [1usize, 3, 4, 10] {
        let mut stream = connect(server.address);
        let frame = encode(&Request {
            correlation_id: 1,
            body: RequestBody::Metadata,
        });
        stream
            .write_all(&frame[..cut.min(frame.len() - 1)])
            .unwrap();
        drop(stream);
    }
    assert_still_serving(server.address);
}

/// Resident memory of a process, from /proc.
fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[test]
fn a_client_that_never_reads_its_responses_stalls_only_itself() {
    let server = TestServer::start();
    let mut setup = BlockingClient::connect(ClientConfig::new(server.address)).unwrap();
    setup.create_topic("flood", 1).unwrap();
    // ~1 MiB of records, so that every fetch below is answered with ~1 MiB.
    let value = vec![7u8; 120 * 1024];
    for _ in 0..8 {
        let records = [RecordInput {
            key: b"k",
            value: &value,
            headers: &[],
            condition: KeyCondition::Any,
            ..RecordInput::default()
        }];
        setup.append("flood", Some(0), None, &records).unwrap();
    }
    let resident_before = resident_bytes(server.pid());
    let mut stream = connect(server.address);
    stream
        .set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let request_count_max = 200_000u64;
    let mut sent = 0u64;
    // Pipeline fetches without reading a single response: the server must stop reading
    // this connection (bounded in-flight requests and queued response bytes) until our
    // writes time out, instead of buffering ~1 MiB per request.
    for correlation_id in 0..request_count_max {
        let request = Request {
            correlation_id,
            body: RequestBody::Fetch(FetchRequest {
                topic: "flood",
                partition: 0,
                offset: Offset(0),
                size_bytes_max: 2 * 1024 * 1024,
                wait_max: Duration::ZERO,
            }),
        };
        if stream.write_all(&encode(&request)).is_err() {
            break;
        }
        sent += 1;
    }
    assert!(
        sent < request_count_max,
        "the server applied back-pressure after {sent} requests"
    );
    let resident_growth = resident_bytes(server.pid()).saturating_sub(resident_before);
    assert!(
        resident_growth < 256 * 1024 * 1024,
        "{sent} unread ~1 MiB responses grew the server by {resident_growth} bytes"
    );
    assert_still_serving(server.address);
    let fetched = setup
        .fetch("flood", 0, Offset(0), 1024, Duration::ZERO)
        .unwrap();
    assert_eq!(fetched.synced_end, Offset(8));
}

#[test]
fn many_connections_opened_and_dropped_leave_the_server_serving() {
    let server = TestServer::start();
    let streams: Vec<TcpStream> = (0..200).map(|_| connect(server.address)).collect();
    drop(streams);
    assert_still_serving(server.address);
}

/// Sends one request on `stream` and returns its response's error code (or `None` when
/// the request succeeded).
fn exchange_error_code(stream: &mut TcpStream, request: &Request<'_>) -> Option<ErrorCode> {
    stream.write_all(&encode(request)).unwrap();
    let response = read_frame(stream).expect("answered, connection open");
    let decoded = decode_response(&response).expect("the server's response decodes");
    assert_eq!(decoded.correlation_id, request.correlation_id);
    match decoded.body {
        ResponseBody::Error(error) => Some(error.code),
        _ => None,
    }
}

#[test]
fn topic_names_over_249_bytes_are_refused_by_the_wire_with_bad_request() {
    // The engine stores names of at most 249 bytes (Kafka's limit); the wire must refuse
    // longer ones itself, for every request kind, not only CreateTopic.
    let server = TestServer::start();
    let mut stream = connect(server.address);
    let name_max = "n".repeat(249);
    fn create(correlation_id: u64, name: &str) -> Request<'_> {
        Request {
            correlation_id,
            body: RequestBody::CreateTopic(CreateTopicRequest {
                name,
                partition_count: 1,
                retention: cairn_engine::RetentionPolicy::FOREVER,
            }),
        }
    }
    assert_eq!(
        exchange_error_code(&mut stream, &create(1, &name_max)),
        None
    );
    let fetch_max = Request {
        correlation_id: 2,
        body: RequestBody::Fetch(FetchRequest {
            topic: &name_max,
            partition: 0,
            offset: Offset(0),
            size_bytes_max: 1024,
            wait_max: Duration::ZERO,
        }),
    };
    assert_eq!(exchange_error_code(&mut stream, &fetch_max), None);
    for name_size_bytes in 250..=256 {
        let name = "n".repeat(name_size_bytes);
        let correlation_id = name_size_bytes as u64 * 10;
        assert_eq!(
            exchange_error_code(&mut stream, &create(correlation_id, &name)),
            Some(ErrorCode::BadRequest),
            "create_topic with a {name_size_bytes}-byte name"
        );
        // No topic can have this name, so UnknownTopic would mean the wire let it through.
        let fetch = Request {
            correlation_id: correlation_id + 1,
            body: RequestBody::Fetch(FetchRequest {
                topic: &name,
                partition: 0,
                offset: Offset(0),
                size_bytes_max: 1024,
                wait_max: Duration::ZERO,
            }),
        };
        assert_eq!(
            exchange_error_code(&mut stream, &fetch),
            Some(ErrorCode::BadRequest),
            "fetch from a {name_size_bytes}-byte topic name"
        );
        let read = Request {
            correlation_id: correlation_id + 2,
            body: RequestBody::ReadKey(ReadKeyRequest {
                topic: &name,
                partition: None,
                key: b"k",
                include_appended: false,
            }),
        };
        assert_eq!(
            exchange_error_code(&mut stream, &read),
            Some(ErrorCode::BadRequest),
            "read_key from a {name_size_bytes}-byte topic name"
        );
    }
    assert_still_serving(server.address);
}

#[test]
fn a_padded_fetch_gets_too_large_at_once_and_the_connection_stays_usable() {
    // Only appends need frames of megabytes. A fetch padded to 1 MiB (bytes after the
    // flatbuffer, which the verifier does not visit) used to be held for its whole long
    // poll, so a few thousand of them held gigabytes.
    let server = TestServer::start();
    let mut setup = BlockingClient::connect(ClientConfig::new(server.address)).unwrap();
    setup.create_topic("quiet", 1).unwrap();
    let mut stream = connect(server.address);
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let fetch = Request {
        correlation_id: 7,
        body: RequestBody::Fetch(FetchRequest {
            topic: "quiet",
            partition: 0,
            offset: Offset(0),
            size_bytes_max: 1024,
            wait_max: Duration::from_secs(30),
        }),
    };
    let mut payload = Encoder::new().encode_request(&fetch).to_vec();
    payload.resize(1024 * 1024, 0);
    let mut out = Vec::new();
    write_frame(&payload, &mut out);
    stream.write_all(&out).unwrap();
    let response = read_frame(&mut stream).expect("answered before the long poll's end");
    assert_eq!(decode_response(&response).unwrap().correlation_id, 7);
    assert_eq!(error_code(&response), ErrorCode::TooLarge);
    // The same fetch unpadded is served on the same connection.
    let fetch = Request {
        correlation_id: 8,
        body: RequestBody::Fetch(FetchRequest {
            topic: "quiet",
            partition: 0,
            offset: Offset(0),
            size_bytes_max: 1024,
            wait_max: Duration::ZERO,
        }),
    };
    assert_eq!(exchange_error_code(&mut stream, &fetch), None);
}

fn ping_frame(correlation_id: u64) -> Vec<u8> {
    encode(&Request {
        correlation_id,
        body: RequestBody::Ping,
    })
}

/// Pings on `stream`: `Ok` when answered with a pong, `Err(code)` when answered with an
/// error, and the connection then closed.
fn ping_on(stream: &mut TcpStream, correlation_id: u64) -> Result<(), ErrorCode> {
    stream.write_all(&ping_frame(correlation_id)).unwrap();
    let response = read_frame(stream).expect("an answer");
    match decode_response(&response).unwrap().body {
        ResponseBody::Pong => Ok(()),
        ResponseBody::Error(error) => Err(error.code),
        other => panic!("expected a pong or an error, got {other:?}"),
    }
}

#[test]
fn connections_over_the_shards_limit_are_told_overloaded_and_closed() {
    let temp = tempfile::tempdir().unwrap();
    let server = TestServer::start_on(
        &temp.path().join("data"),
        &["--max-connections-per-shard", "4"],
    );
    // Shard 0's own port: every connection lands on the same shard.
    let shard_address = SocketAddr::new(server.address.ip(), server.shard_ports[0]);
    let mut served: Vec<TcpStream> = (0..4).map(|_| connect(shard_address)).collect();
    for (index, stream) in served.iter_mut().enumerate() {
        assert_eq!(ping_on(stream, index as u64), Ok(()), "connection {index}");
    }
    // The fifth is answered Overloaded before it sends anything, then closed.
    let mut refused = connect(shard_address);
    let response = read_frame(&mut refused).expect("an answer before closing");
    assert_eq!(error_code(&response), ErrorCode::Overloaded);
    assert_closed(&mut refused);
    // The other shard is not affected.
    let mut other = connect(SocketAddr::new(server.address.ip(), server.shard_ports[1]));
    assert_eq!(ping_on(&mut other, 99), Ok(()));
    // Once one closes, a new connection is served again. The server learns of the close
    // asynchronously, so a new connection may still be refused for a moment: bounded
    // retries, each of which ends in an answer.
    drop(served.pop());
    let served_again = (0..200).any(|attempt| {
        let mut stream = connect(shard_address);
        match ping_on(&mut stream, attempt) {
            Ok(()) => true,
            Err(code) => {
                assert_eq!(code, ErrorCode::Overloaded);
                std::thread::sleep(Duration::from_millis(10));
                false
            }
        }
    });
    assert!(served_again, "a connection is served once another closed");
    for (index, stream) in served.iter_mut().enumerate() {
        assert_eq!(
            ping_on(stream, 100 + index as u64),
            Ok(()),
            "connection {index}"
        );
    }
}

#[test]
fn a_frame_larger_than_the_whole_request_budget_is_still_served() {
    // A shard budget of 64 KiB and frames of 9 MiB (over the connection's 8 MiB too): each
    // takes the whole budget in turn and is served; nothing deadlocks, and small requests
    // on other connections get through meanwhile.
    let temp = tempfile::tempdir().unwrap();
    let server = TestServer::start_on(
        &temp.path().join("data"),
        &[
            "--max-request-bytes-per-shard",
            "65536",
            "--max-frame-bytes",
            &(12 * 1024 * 1024).to_string(),
        ],
    );
    let mut setup = BlockingClient::connect(ClientConfig::new(server.address)).unwrap();
    let topic = setup.create_topic("big", 1).unwrap();
    let owner = SocketAddr::new(server.address.ip(), topic.partitions[0].port);
    let value = vec![b'v'; 512 * 1024];
    let records = [RecordInput {
        key: b"k",
        value: &value,
        headers: &[],
        condition: KeyCondition::Any,
        ..RecordInput::default()
    }];
    let mut stream = connect(owner);
    let mut pipelined = Vec::new();
    for correlation_id in 0..3 {
        let append = Request {
            correlation_id,
            body: RequestBody::Append(AppendRequest {
                topic: "big",
                partition: Some(0),
                expected_end_offset: None,
                records: AppendRecords::from_inputs(&records),
                producer: None,
            }),
        };
        let mut payload = Encoder::new().encode_request(&append).to_vec();
        payload.resize(9 * 1024 * 1024, 0);
        write_frame(&payload, &mut pipelined);
    }
    let writer = {
        let mut stream = stream.try_clone().unwrap();
        std::thread::spawn(move || stream.write_all(&pipelined).unwrap())
    };
    assert_still_serving(owner);
    let mut appended = 0;
    for _ in 0..3 {
        let response = read_frame(&mut stream).expect("answered");
        match decode_response(&response).unwrap().body {
            ResponseBody::Appended(_) => appended += 1,
            other => panic!("expected Appended, got {other:?}"),
        }
    }
    writer.join().unwrap();
    assert_eq!(appended, 3);
    let fetched = setup
        .fetch("big", 0, Offset(0), 1024, Duration::ZERO)
        .unwrap();
    assert_eq!(fetched.synced_end, Offset(3));
}
