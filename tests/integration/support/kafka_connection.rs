//! `KafkaConnection`: a blocking Kafka client of one connection, one request at a time,
//! every request and response encoded with the `kafka-protocol` crate, for the tests that
//! speak Kafka's protocol by hand (`kafka_protocol`, `kafka_groups`, `group_offsets`).
//! It can also send what no client would: undecodable bodies and raw frames.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

/// A blocking Kafka connection that speaks one request at a time.
pub struct KafkaConnection {
    /// The socket itself, for tests that write what no request encoder would.
    pub stream: TcpStream,
    correlation_id: i32,
}

impl KafkaConnection {
    pub fn connect(port: u16) -> KafkaConnection {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the Kafka port");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        KafkaConnection {
            stream,
            correlation_id: 0,
        }
    }

    /// Sends one request frame.
    pub fn send<T: Encodable>(&mut self, api_key: ApiKey, version: i16, body: &T) -> i32 {
        self.correlation_id += 1;
        let mut header = RequestHeader::default();
        header.request_api_key = api_key as i16;
        header.request_api_version = version;
        header.correlation_id = self.correlation_id;
        header.client_id = Some(StrBytes::from_static_str("cairn-test"));
        let mut buf = BytesMut::new();
        header
            .encode(&mut buf, api_key.request_header_version(version))
            .unwrap();
        body.encode(&mut buf, version).unwrap();
        self.send_frame(&buf);
        self.correlation_id
    }

    /// Sends a request of a version the crate cannot encode: a v1 header (API key,
    /// version, correlation id, null client id) and `body`.
    pub fn send_unencodable(&mut self, api_key: i16, version: i16, body: &[u8]) -> i32 {
        self.correlation_id += 1;
        let mut frame = Vec::new();
        frame.extend_from_slice(&api_key.to_be_bytes());
        frame.extend_from_slice(&version.to_be_bytes());
        frame.extend_from_slice(&self.correlation_id.to_be_bytes());
        frame.extend_from_slice(&(-1i16).to_be_bytes());
        frame.extend_from_slice(body);
        self.send_frame(&frame);
        self.correlation_id
    }

    pub fn send_frame(&mut self, frame: &[u8]) {
        let size = u32::try_from(frame.len()).unwrap();
        self.stream.write_all(&size.to_be_bytes()).unwrap();
        self.stream.write_all(frame).unwrap();
    }

    /// Reads one response frame; `None` if the server closed the connection.
    pub fn read_frame(&mut self) -> Option<Bytes> {
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size).ok()?;
        let mut frame = vec![0u8; u32::from_be_bytes(size) as usize];
        self.stream.read_exact(&mut frame).ok()?;
        Some(Bytes::from(frame))
    }

    pub fn receive<R: Decodable>(
        &mut self,
        api_key: ApiKey,
        version: i16,
        correlation_id: i32,
    ) -> R {
        let mut frame = self.read_frame().expect("a response");
        let header =
            ResponseHeader::decode(&mut frame, api_key.response_header_version(version)).unwrap();
        assert_eq!(header.correlation_id, correlation_id);
        R::decode(&mut frame, version).unwrap()
    }

    pub fn call<T: Encodable, R: Decodable>(
        &mut self,
        api_key: ApiKey,
        version: i16,
        body: &T,
    ) -> R {
        let correlation_id = self.send(api_key, version, body);
        self.receive(api_key, version, correlation_id)
    }

    /// Whether the server closed the connection (reads end of stream or a reset).
    pub fn is_closed_by_server(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.stream.read(&mut byte), Ok(0) | Err(_))
    }
}
