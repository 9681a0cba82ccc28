//! [`BlockingClient`]: the synchronous client, over `std::net::TcpStream`, for tools and
//! tests that run outside any executor.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use cairn_engine::ProducerStamp;
use cairn_engine::core::{Offset, RecordInput};

use cairn_wire::{
    BackupReadRequest, Encoder, FrameReader, Request, RequestBody, decode_response, write_frame,
};

use super::call::Call;
use super::reply::Reply;
use super::routing::{Resolution, TopicTable};
use super::{
    AppendResult, BackupManifest, ClientConfig, ClientError, CommittedOffset, ConnectionLoss,
    FetchResult, FetchedRecord, KeyHistoryPage, Metadata, PartitionOffset, ProducerId,
    RetentionChange, RetentionPolicy, TopicInfo,
};

/// Bytes asked of the socket per read.
const READ_SIZE_BYTES: usize = 64 * 1024;

/// A synchronous client: one request at a time, each waiting for its response.
///
/// Shard-aware like [`Client`](super::Client): one connection per server port, opened on
/// first use. A connection that fails, or whose request times out, is dropped, and the next
/// request opens a new one. Every call is bounded by [`ClientConfig::request_timeout`] (a
/// fetch also by its `wait_max`), connecting included.
pub struct BlockingClient {
    config: ClientConfig,
    topics: TopicTable,
    connections: HashMap<SocketAddr, BlockingConnection>,
    encoder: Encoder,
    /// The frame being sent, kept to reuse its capacity.
    outgoing: Vec<u8>,
    correlation_id_next: u64,
}

struct BlockingConnection {
    stream: TcpStream,
    frames: FrameReader,
    read_buffer: Box<[u8]>,
}

impl std::fmt::Debug for BlockingClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockingClient")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl BlockingClient {
    /// Connects to `config.address` and reads the server's metadata.
    pub fn connect(config: ClientConfig) -> Result<BlockingClient, ClientError> {
        let mut client = BlockingClient {
            config,
            topics: TopicTable::default(),
            connections: HashMap::new(),
            encoder: Encoder::new(),
            outgoing: Vec::new(),
            correlation_id_next: 1,
        };
        client.metadata()?;
        Ok(client)
    }

    /// The configuration the client was made with.
    #[must_use]
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Checks the server answers on the configured address.
    pub fn ping(&mut self) -> Result<(), ClientError> {
        self.call(Call::ping())?.into_pong()
    }

    /// Creates a topic of `partition_count` partitions (at least 1) and adds it to the
    /// cache. A taken name fails with [`ClientError::Server`], code `TopicExists`.
    pub fn create_topic(
        &mut self,
        name: &str,
        partition_count: u32,
    ) -> Result<TopicInfo, ClientError> {
        self.create_topic_with(name, partition_count, RetentionPolicy::FOREVER)
    }

    /// Creates a topic as [`create_topic`](Self::create_topic) does, keeping what
    /// `retention` says; a limit of 0 fails with code `InvalidConfig`.
    pub fn create_topic_with(
        &mut self,
        name: &str,
        partition_count: u32,
        retention: RetentionPolicy,
    ) -> Result<TopicInfo, ClientError> {
        let topic = self
            .call(Call::create_topic(name, partition_count, retention))?
            .into_topic_created()?;
        // The answer holds the topic's whole partition map, ports included: the same a
        // metadata refresh would bring, without the round trip.
        self.topics.insert(topic.clone());
        Ok(topic)
    }

    /// Changes `name`'s retention; returns the topic as it now is, once every shard applies
    /// the change and the catalog holding it is synced. An unknown topic fails with code
    /// `UnknownTopic`, a limit of 0 with `InvalidConfig`.
    pub fn alter_topic_retention(
        &mut self,
        name: &str,
        change: RetentionChange,
    ) -> Result<TopicInfo, ClientError> {
        let topic = self
            .call(Call::alter_topic(name, change))?
            .into_topic_altered()?;
        self.topics.insert(topic.clone());
        Ok(topic)
    }

    /// Reads the server's topics and shard ports, and refreshes the cache with them.
    pub fn metadata(&mut self) -> Result<Metadata, ClientError> {
        let (address, timeout) = (self.config.address, self.config.request_timeout);
        let metadata = self
            .call_at(address, RequestBody::Metadata, timeout)?
            .into_metadata()?;
        self.topics.replace(&metadata);
        Ok(metadata)
    }

    /// Appends `records` to one partition of `topic`, atomically; see
    /// [`Client::append`](super::Client::append).
    pub fn append(
        &mut self,
        topic: &str,
        partition: Option<u32>,
        expected_end_offset: Option<Offset>,
        records: &[RecordInput<'_>],
    ) -> Result<AppendResult, ClientError> {
        self.append_as(topic, partition, expected_end_offset, records, None)
    }

    /// Like [`BlockingClient::append`], stamped for idempotence (the schema's
    /// ProducerStamp); [`IdempotentProducer`](super::IdempotentProducer) keeps the stamps
    /// and resends.
    pub fn append_as(
        &mut self,
        topic: &str,
        partition: Option<u32>,
        expected_end_offset: Option<Offset>,
        records: &[RecordInput<'_>],
        producer: Option<ProducerStamp>,
    ) -> Result<AppendResult, ClientError> {
        let call = Call::append(topic, partition, expected_end_offset, records, producer);
        self.call(call)?.into_append()
    }

    /// Starts an online backup: the server's backup point (the schema's BackupBegin).
    pub fn backup_begin(&mut self) -> Result<BackupManifest, ClientError> {
        self.call(Call::backup_begin())?.into_backup_manifest()
    }

    /// Bytes of a segment of a shard's synced log, for a backup (the schema's BackupRead):
    /// exactly `read.length_bytes` of them.
    pub fn backup_read(&mut self, read: BackupReadRequest) -> Result<Vec<u8>, ClientError> {
        self.call(Call::backup_read(read))?.into_backup_chunk()
    }

    /// A new producer id for idempotent appends.
    pub fn init_producer(&mut self) -> Result<ProducerId, ClientError> {
        self.call(Call::init_producer())?.into_producer()
    }

    /// The partition of `topic` a request goes to: `partition` if named (the server
    /// answers UnknownPartition if the topic lacks it), else `key`'s
    /// ([`cairn_wire::partition_for_key`]), from the cached metadata, refreshed once if the
    /// topic is not in it.
    pub fn partition_for(
        &mut self,
        topic: &str,
        partition: Option<u32>,
        key: &[u8],
    ) -> Result<u32, ClientError> {
        if let Some(partition) = partition {
            return Ok(partition);
        }
        if self.topics.partition_count(topic).is_none() {
            self.metadata()?;
        }
        let partition_count = self
            .topics
            .partition_count(topic)
            .filter(|count| *count > 0)
            .ok_or_else(|| ClientError::UnknownTopic(topic.to_owned()))?;
        Ok(cairn_wire::partition_for_key(key, partition_count))
    }

    /// Reads synced records of one partition from `offset` on; see
    /// [`Client::fetch`](super::Client::fetch).
    pub fn fetch(
        &mut self,
        topic: &str,
        partition: u32,
        offset: Offset,
        size_bytes_max: u32,
        wait_max: Duration,
    ) -> Result<FetchResult, ClientError> {
        self.call(Call::fetch(
            topic,
            partition,
            offset,
            size_bytes_max,
            wait_max,
        ))?
        .into_fetched()
    }

    /// The latest record of `key`, if it has one; see
    /// [`Client::read_key`](super::Client::read_key).
    pub fn read_key(
        &mut self,
        topic: &str,
        partition: Option<u32>,
        key: &[u8],
        include_appended: bool,
    ) -> Result<Option<FetchedRecord>, ClientError> {
        self.call(Call::read_key(topic, partition, key, include_appended))?
            .into_key_record()
    }

    /// Stores consumer group `group`'s offsets of partitions of `topic`, all or none, once
    /// durable; see [`Client::commit_offsets`](super::Client::commit_offsets).
    pub fn commit_offsets(
        &mut self,
        group: &str,
        topic: &str,
        partitions: &[PartitionOffset<'_>],
    ) -> Result<(), ClientError> {
        self.call(Call::commit_offsets(group, topic, partitions))?
            .into_offsets_committed()
    }

    /// Consumer group `group`'s committed offsets of `partitions` of `topic`; see
    /// [`Client::fetch_offsets`](super::Client::fetch_offsets).
    pub fn fetch_offsets(
        &mut self,
        group: &str,
        topic: &str,
        partitions: &[u32],
    ) -> Result<Vec<CommittedOffset>, ClientError> {
        self.call(Call::fetch_offsets(group, topic, partitions))?
            .into_committed_offsets()
    }

    /// Up to `record_count_max` synced records of `key`, newest first.
    pub fn key_history(
        &mut self,
        topic: &str,
        partition: Option<u32>,
        key: &[u8],
        record_count_max: u32,
    ) -> Result<Vec<FetchedRecord>, ClientError> {
        Ok(self
            .key_history_from(topic, partition, key, None, record_count_max)?
            .records)
    }

    /// [`Client::key_history_from`](super::Client::key_history_from).
    pub fn key_history_from(
        &mut self,
        topic: &str,
        partition: Option<u32>,
        key: &[u8],
        from_offset: Option<Offset>,
        record_count_max: u32,
    ) -> Result<KeyHistoryPage, ClientError> {
        self.call(Call::key_history(
            topic,
            partition,
            key,
            from_offset,
            record_count_max,
        ))?
        .into_key_history()
    }

    /// Sends a request where its destination routes, refreshing the metadata once if its
    /// topic is not in the cache.
    fn call(&mut self, call: Call<'_>) -> Result<Reply, ClientError> {
        let Call {
            destination,
            body,
            wait_max,
        } = call;
        let timeout = self.config.request_timeout.saturating_add(wait_max);
        let address = match self.topics.resolve(&self.config, destination) {
            Resolution::Address(address) => address,
            Resolution::UnknownTopic(_) => {
                self.metadata()?;
                match self.topics.resolve(&self.config, destination) {
                    Resolution::Address(address) => address,
                    Resolution::UnknownTopic(topic) => {
                        return Err(ClientError::UnknownTopic(topic.to_owned()));
                    }
                }
            }
        };
        self.call_at(address, body, timeout)
    }

    /// Sends a request to `address` and waits for its response, for at most `timeout`.
    /// Drops the connection when the exchange leaves it in an unknown state.
    fn call_at(
        &mut self,
        address: SocketAddr,
        body: RequestBody<'_>,
        timeout: Duration,
    ) -> Result<Reply, ClientError> {
        let deadline = Deadline::after(timeout, address);
        let correlation_id = self.correlation_id_next;
        self.correlation_id_next = correlation_id.wrapping_add(1);
        let request = Request {
            correlation_id,
            body,
        };
        let frame = self.encoder.encode_request(&request);
        let frame_size_bytes_max = self.config.frame_size_bytes_max;
        if frame.len() > usize::try_from(frame_size_bytes_max).unwrap_or(usize::MAX) {
            return Err(ClientError::RequestTooLarge {
                frame_size_bytes: frame.len(),
                frame_size_bytes_max,
            });
        }
        self.outgoing.clear();
        write_frame(frame, &mut self.outgoing);

        let connection = match self.connections.entry(address) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => entry.insert(BlockingConnection::open(
                address,
                frame_size_bytes_max,
                &deadline,
            )?),
        };
        let result = connection.exchange(&self.outgoing, correlation_id, &deadline);
        if let Err(error) = &result
            && loses_connection(error)
        {
            self.connections.remove(&address);
        }
        result
    }
}

/// True if `error`, returned by an exchange, leaves its connection unusable: the stream may
/// be out of step, or a late response may still arrive on it.
fn loses_connection(error: &ClientError) -> bool {
    match error {
        ClientError::Wire(error) => error.correlation_id().is_none(),
        ClientError::Io { .. }
        | ClientError::Frame(_)
        | ClientError::Timeout { .. }
        | ClientError::Closed { .. } => true,
        ClientError::Connect { .. }
        | ClientError::Server { .. }
        | ClientError::BeforeLogStart { .. }
        | ClientError::UnexpectedResponse { .. }
        | ClientError::UnknownTopic(_)
        | ClientError::RequestTooLarge { .. } => false,
    }
}

/// When a call must be over, as each blocking socket operation needs it: the time left.
struct Deadline {
    /// `None` when the timeout reaches past what `Instant` can hold: no limit then.
    at: Option<Instant>,
    timeout: Duration,
    address: SocketAddr,
}

impl Deadline {
    fn after(timeout: Duration, address: SocketAddr) -> Deadline {
        Deadline {
            at: Instant::now().checked_add(timeout),
            timeout,
            address,
        }
    }

    /// The time left, as a socket timeout (`None` is no limit), or `Timeout` if none is
    /// left: std refuses a zero socket timeout.
    fn remaining(&self) -> Result<Option<Duration>, ClientError> {
        let Some(at) = self.at else {
            return Ok(None);
        };
        let remaining = at.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(self.expired());
        }
        Ok(Some(remaining))
    }

    fn expired(&self) -> ClientError {
        ClientError::Timeout {
            address: self.address,
            timeout: self.timeout,
        }
    }

    /// The error for a failed socket operation: a timeout if the socket timed out.
    fn io_error(&self, operation: &'static str, source: std::io::Error) -> ClientError {
        match source.kind() {
            // A socket timeout shows as WouldBlock on Unix and TimedOut on Windows.
            ErrorKind::WouldBlock | ErrorKind::TimedOut => self.expired(),
            _ => ClientError::Io {
                operation,
                address: self.address,
                source,
            },
        }
    }
}

impl BlockingConnection {
    fn open(
        address: SocketAddr,
        frame_size_bytes_max: u32,
        deadline: &Deadline,
    ) -> Result<BlockingConnection, ClientError> {
        let connect_error = |source| ClientError::Connect { address, source };
        let stream = match deadline.remaining()? {
            Some(remaining) => TcpStream::connect_timeout(&address, remaining),
            None => TcpStream::connect(address),
        }
        .map_err(|source| match source.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => deadline.expired(),
            _ => connect_error(source),
        })?;
        // One small request at a time: Nagle's algorithm would hold it back for nothing.
        stream.set_nodelay(true).map_err(connect_error)?;
        Ok(BlockingConnection {
            stream,
            frames: FrameReader::new(frame_size_bytes_max),
            read_buffer: vec![0_u8; READ_SIZE_BYTES].into_boxed_slice(),
        })
    }

    /// Writes one request frame, then reads until the response with its correlation id.
    fn exchange(
        &mut self,
        frame: &[u8],
        correlation_id: u64,
        deadline: &Deadline,
    ) -> Result<Reply, ClientError> {
        let address = deadline.address;
        self.stream
            .set_write_timeout(deadline.remaining()?)
            .map_err(|source| deadline.io_error("writing to", source))?;
        self.stream
            .write_all(frame)
            .map_err(|source| deadline.io_error("writing to", source))?;
        loop {
            while let Some(frame) = self.frames.next_frame()? {
                match decode_response(&frame) {
                    Ok(response) if response.correlation_id == correlation_id => {
                        return Ok(Reply::from_body(response.body));
                    }
                    // Only one request is out at a time, so this answers none of ours.
                    Ok(response) => tracing::debug!(
                        %address,
                        correlation_id = response.correlation_id,
                        "discarding a response to no pending request",
                    ),
                    Err(error) => match error.correlation_id() {
                        Some(id) if id != correlation_id => {
                            tracing::debug!(%address, %error, "discarding a bad response");
                        }
                        _ => return Err(error.into()),
                    },
                }
            }
            self.stream
                .set_read_timeout(deadline.remaining()?)
                .map_err(|source| deadline.io_error("reading from", source))?;
            let read_size_bytes = match self.stream.read(&mut self.read_buffer) {
                Ok(0) => {
                    self.frames.finish()?;
                    return Err(ClientError::Closed {
                        address,
                        cause: ConnectionLoss::EndOfStream,
                    });
                }
                Ok(read_size_bytes) => read_size_bytes,
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(error) => return Err(deadline.io_error("reading from", error)),
            };
            self.frames.feed(&self.read_buffer[..read_size_bytes]);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use cairn_engine::core::{KeyCondition, RecordHeader};

    use super::*;
    use crate::PartitionInfo;
    use crate::fake_server::{
        FakeServer, MODEL_END_OFFSET, MODEL_KEY_ABSENT, MODEL_KEY_OFFSET, MODEL_KEY_TAKEN,
        MODEL_PARTITION_COUNT, MODEL_TOPIC, Received, Step, key_on_shard, model_answer,
        model_record,
    };
    use crate::routing::Destination;
    use cairn_wire::{ConflictInfo, ErrorCode, partition_for_key};

    /// Long enough for any exchange with the fake server; short enough that a broken test
    /// fails quickly instead of hanging.
    const TEST_TIMEOUT: Duration = Duration::from_secs(2);

    const HEADERS: [RecordHeader<'static>; 1] = [RecordHeader {
        name: b"event-type",
        value: b"SeatBooked",
    }];

    fn config(address: SocketAddr) -> ClientConfig {
        ClientConfig {
            request_timeout: TEST_TIMEOUT,
            ..ClientConfig::new(address)
        }
    }

    fn record<'a>(key: &'a [u8], condition: KeyCondition) -> RecordInput<'a> {
        RecordInput {
            key,
            value: b"value",
            headers: &HEADERS,
            condition,
            ..RecordInput::default()
        }
    }

    /// What the server saw: (port, connection index, request kind, key or topic).
    type Log = Arc<Mutex<Vec<(u16, usize, &'static str, Vec<u8>)>>>;

    /// The model server, logging what it receives.
    fn logged_model(log: &Log) -> impl FnMut(Received<'_>) -> Vec<Step> + Send + 'static {
        let log = Arc::clone(log);
        move |received| {
            let (kind, key) = match &received.request.body {
                RequestBody::Ping => ("Ping", Vec::new()),
                RequestBody::Metadata => ("Metadata", Vec::new()),
                RequestBody::CreateTopic(create) => ("CreateTopic", create.name.into()),
                RequestBody::Append(append) => {
                    let key = append.records.get(0).map(|record| record.key.to_vec());
                    ("Append", key.unwrap_or_default())
                }
                RequestBody::Fetch(fetch) => ("Fetch", fetch.topic.into()),
                RequestBody::ReadKey(read) => ("ReadKey", read.key.to_vec()),
                RequestBody::KeyHistory(history) => ("KeyHistory", history.key.to_vec()),
                RequestBody::InitProducer => ("InitProducer", Vec::new()),
                RequestBody::CommitOffsets(commit) => ("CommitOffsets", commit.group.into()),
                RequestBody::FetchOffsets(fetch) => ("FetchOffsets", fetch.group.into()),
                RequestBody::BackupBegin => ("BackupBegin", Vec::new()),
                RequestBody::BackupRead(_) => ("BackupRead", Vec::new()),
                RequestBody::AlterTopic(alter) => ("AlterTopic", alter.name.into()),
            };
            let entry = (received.port, received.connection_index, kind, key);
            log.lock().unwrap().push(entry);
            model_answer(received)
        }
    }

    #[test]
    fn every_request_kind_round_trips() {
        // Checks, on the server's side, that the fields the answers cannot show arrived.
        let server = FakeServer::start(1, |received| {
            match &received.request.body {
                RequestBody::Append(append) => {
                    let first = append.records.get(0).unwrap();
                    assert_eq!(first.headers, HEADERS);
                    assert_eq!(first.value, b"value");
                }
                RequestBody::Fetch(fetch) => {
                    assert_eq!(fetch.size_bytes_max, 4096);
                    assert_eq!(fetch.wait_max, Duration::from_millis(250));
                }
                RequestBody::ReadKey(read) => {
                    assert_eq!(read.include_appended, read.key == b"seat-12A");
                }
                _ => {}
            }
            model_answer(received)
        });
        let port = server.port(0);
        let mut client = BlockingClient::connect(config(server.address(0))).unwrap();

        client.ping().unwrap();

        let metadata = client.metadata().unwrap();
        assert_eq!(metadata.shard_ports, [port]);
        let [topic] = metadata.topics.as_slice() else {
            panic!("expected one topic: {metadata:?}");
        };
        assert_eq!(topic.name, MODEL_TOPIC);
        assert_eq!(topic.partition_count(), MODEL_PARTITION_COUNT);
        assert_eq!(
            topic.partitions[1],
            PartitionInfo {
                partition: 1,
                partition_id: 1001,
                shard: 0,
                port,
            }
        );

        let created = client.create_topic("orders", 2).unwrap();
        assert_eq!(created.name, "orders");
        assert_eq!(created.partition_count(), 2);

        let records = [record(b"123456789", KeyCondition::Any)];
        assert_eq!(
            client
                .append(MODEL_TOPIC, None, Some(MODEL_END_OFFSET), &records)
                .unwrap(),
            AppendResult::Appended {
                partition: partition_for_key(b"123456789", MODEL_PARTITION_COUNT),
                base_offset: MODEL_END_OFFSET,
                record_count: 1,
                duplicate: false,
            }
        );
        // Conflicts are values, with what the condition saw.
        let AppendResult::Conflict { info, message } = client
            .append(MODEL_TOPIC, Some(1), Some(Offset(3)), &records)
            .unwrap()
        else {
            panic!("expected an end offset conflict");
        };
        assert_eq!(
            info,
            ConflictInfo::EndOffset {
                current_end_offset: MODEL_END_OFFSET
            }
        );
        assert_eq!(message, "condition failed");
        let batch = [
            record(b"other", KeyCondition::Any),
            record(MODEL_KEY_TAKEN, KeyCondition::NoKey),
        ];
        let result = client.append(MODEL_TOPIC, Some(0), None, &batch).unwrap();
        let AppendResult::Conflict { info, .. } = result else {
            panic!("expected a key conflict, got {result:?}");
        };
        assert_eq!(
            info,
            ConflictInfo::Key {
                record_index: 1,
                condition: KeyCondition::NoKey,
                current_offset: Some(MODEL_KEY_OFFSET),
            }
        );

        let fetched = client
            .fetch(MODEL_TOPIC, 2, Offset(10), 4096, Duration::from_millis(250))
            .unwrap();
        assert_eq!(
            fetched,
            FetchResult {
                partition: 2,
                records: vec![model_record(10, b"fetched"), model_record(11, b"fetched")],
                synced_end: Offset(12),
            }
        );

        assert_eq!(
            client
                .read_key(MODEL_TOPIC, None, b"seat-12A", true)
                .unwrap(),
            Some(model_record(MODEL_KEY_OFFSET.0, b"seat-12A"))
        );
        assert_eq!(
            client
                .read_key(MODEL_TOPIC, Some(1), MODEL_KEY_ABSENT, false)
                .unwrap(),
            None
        );

        assert_eq!(
            client
                .key_history(MODEL_TOPIC, None, b"seat-12A", 2)
                .unwrap(),
            [model_record(5, b"seat-12A"), model_record(3, b"seat-12A")]
        );
    }

    #[test]
    fn server_errors_carry_their_code() {
        let server = FakeServer::start(1, model_answer);
        let mut client = BlockingClient::connect(config(server.address(0))).unwrap();
        let error = client.create_topic(MODEL_TOPIC, 3).unwrap_err();
        assert!(
            matches!(&error, ClientError::Server { code: ErrorCode::TopicExists, message }
                if message == "topic seats exists"),
            "{error:?}"
        );
        // The cache cannot place partition 9, so the server decides.
        let records = [record(b"k", KeyCondition::Any)];
        let error = client
            .append(MODEL_TOPIC, Some(9), None, &records)
            .unwrap_err();
        assert_eq!(error.server_code(), Some(ErrorCode::UnknownPartition));
        // The connection carries on after an error response.
        client.ping().unwrap();
    }

    #[test]
    fn unknown_topic_refreshes_metadata_once_then_fails() {
        let log = Log::default();
        let server = FakeServer::start(1, logged_model(&log));
        let mut client = BlockingClient::connect(config(server.address(0))).unwrap();
        let error = client.read_key("nope", None, b"k", false).unwrap_err();
        assert!(matches!(&error, ClientError::UnknownTopic(topic) if topic == "nope"));
        let kinds: Vec<&str> = log.lock().unwrap().iter().map(|entry| entry.2).collect();
        assert_eq!(kinds, ["Metadata", "Metadata"]);

        // A topic created through this client is known without a refresh.
        client.create_topic("orders", 2).unwrap();
        assert_eq!(
            client.topics.resolve(
                &client.config,
                Destination::Partition {
                    topic: "orders",
                    partition: Some(1),
                    key: b"",
                }
            ),
            Resolution::Address(server.address(0))
        );
    }

    #[test]
    fn requests_go_to_the_port_of_the_owning_shard() {
        let log = Log::default();
        let server = FakeServer::start(2, logged_model(&log));
        let (port_0, port_1) = (server.port(0), server.port(1));
        let key_0 = key_on_shard(0, 2);
        let key_1 = key_on_shard(1, 2);

        let mut client = BlockingClient::connect(config(server.address(0))).unwrap();
        for key in [&key_0, &key_1] {
            let records = [record(key, KeyCondition::Any)];
            client.append(MODEL_TOPIC, None, None, &records).unwrap();
            client.read_key(MODEL_TOPIC, None, key, false).unwrap();
        }
        client
            .fetch(MODEL_TOPIC, 3, Offset(0), 4096, Duration::ZERO)
            .unwrap();
        client.ping().unwrap();
        let seen: Vec<(u16, &str, Vec<u8>)> = log
            .lock()
            .unwrap()
            .drain(..)
            .map(|(port, _, kind, key)| (port, kind, key))
            .collect();
        let topic = MODEL_TOPIC.as_bytes().to_vec();
        assert_eq!(
            seen,
            [
                (port_0, "Metadata", Vec::new()),
                (port_0, "Append", key_0.clone()),
                (port_0, "ReadKey", key_0.clone()),
                (port_1, "Append", key_1.clone()),
                (port_1, "ReadKey", key_1.clone()),
                (port_1, "Fetch", topic),
                (port_0, "Ping", Vec::new()),
            ]
        );

        // Not shard-aware: everything goes to the configured address, and the server
        // forwards.
        let unsharded = ClientConfig {
            shard_aware: false,
            ..config(server.address(0))
        };
        let mut client = BlockingClient::connect(unsharded).unwrap();
        client
            .append(
                MODEL_TOPIC,
                None,
                None,
                &[record(&key_1, KeyCondition::Any)],
            )
            .unwrap();
        let ports: Vec<u16> = log.lock().unwrap().iter().map(|entry| entry.0).collect();
        assert_eq!(ports, [port_0, port_0]);
    }

    #[test]
    fn a_dropped_connection_fails_its_request_and_the_next_reconnects() {
        let server = FakeServer::start(1, |received| {
            if received.connection_index == 0 && received.request.body == RequestBody::Ping {
                return vec![Step::Close];
            }
            model_answer(received)
        });
        let mut client = BlockingClient::connect(config(server.address(0))).unwrap();
        let error = client.ping().unwrap_err();
        assert!(
            matches!(
                error,
                ClientError::Closed {
                    cause: ConnectionLoss::EndOfStream,
                    ..
                } | ClientError::Io { .. }
            ),
            "{error:?}"
        );
        client.ping().unwrap();
    }

    #[test]
    fn a_request_without_answer_times_out_and_the_next_reconnects() {
        let server = FakeServer::start(1, |received| match received.request.body {
            RequestBody::Fetch(_) => Vec::new(),
            _ => model_answer(received),
        });
        let timeout = Duration::from_millis(200);
        let mut client = BlockingClient::connect(ClientConfig {
            request_timeout: timeout,
            ..ClientConfig::new(server.address(0))
        })
        .unwrap();
        let started = Instant::now();
        let error = client
            .fetch(MODEL_TOPIC, 0, Offset(0), 4096, Duration::ZERO)
            .unwrap_err();
        let elapsed = started.elapsed();
        assert!(
            matches!(error, ClientError::Timeout { timeout: actual, .. } if actual == timeout),
            "{error:?}"
        );
        assert!(elapsed >= timeout, "timed out after {elapsed:?}");
        assert!(elapsed < TEST_TIMEOUT, "timed out after {elapsed:?}");
        client.ping().unwrap();
    }

    #[test]
    fn an_oversized_request_is_refused_before_sending() {
        let server = FakeServer::start(1, model_answer);
        let mut client = BlockingClient::connect(ClientConfig {
            frame_size_bytes_max: 1024,
            ..config(server.address(0))
        })
        .unwrap();
        let value = vec![0_u8; 2048];
        let records = [RecordInput {
            key: b"k",
            value: &value,
            headers: &[],
            condition: KeyCondition::Any,
            ..RecordInput::default()
        }];
        let error = client
            .append(MODEL_TOPIC, Some(0), None, &records)
            .unwrap_err();
        assert!(
            matches!(
                error,
                ClientError::RequestTooLarge {
                    frame_size_bytes_max: 1024,
                    ..
                }
            ),
            "{error:?}"
        );
        client.ping().unwrap();
    }
}
