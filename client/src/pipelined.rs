//! [`Client`]: the async, pipelining client, for tasks of one glommio executor.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use cairn_engine::core::{Offset, RecordInput};
use glommio::sync::Semaphore;

use cairn_wire::{Request, RequestBody};

use super::call::Call;
use super::connection::{Connection, ConnectionShared};
use super::reply::Reply;
use super::routing::{Destination, Resolution, TopicTable};
use super::{
    AppendResult, ClientConfig, ClientError, CommittedOffset, FetchResult, FetchedRecord,
    KeyHistoryPage, Metadata, PartitionOffset, RetentionChange, RetentionPolicy, TopicInfo,
};

/// A client for the tasks of one glommio executor: cheap to clone (clones share the
/// connections and the topic cache), and any number of tasks may call it at once.
///
/// It keeps one connection per server port it talks to, opened on first use, and pipelines
/// every call over it: requests go out as soon as they are made, and each caller gets its
/// own response whatever order they come back in. Each connection carries at most
/// [`ClientConfig::in_flight_request_count_max`] requests; further callers wait for a slot.
/// A failed connection fails the requests waiting on it with [`ClientError::Closed`], and
/// the next call opens a new one.
///
/// Every call is bounded by [`ClientConfig::request_timeout`] (a fetch also by its
/// `wait_max`). A call that times out or fails on a lost connection may still take effect on
/// the server.
///
/// It is not `Send`: it lives on the executor that created it. Give each executor its own.
#[derive(Clone)]
pub struct Client {
    inner: Rc<ClientInner>,
}

struct ClientInner {
    config: ClientConfig,
    topics: RefCell<TopicTable>,
    connections: RefCell<HashMap<SocketAddr, Connection>>,
    /// One connection opens at a time, so that callers arriving together while a port has
    /// none share the one the first of them opens.
    connecting: Semaphore,
    correlation_id_next: Cell<u64>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to `config.address` and reads the server's metadata.
    ///
    /// Must run on a glommio executor, which the client and its connections' tasks then
    /// belong to.
    ///
    /// # Panics
    ///
    /// If `config.in_flight_request_count_max` is 0: no request could ever be sent.
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        assert!(
            config.in_flight_request_count_max > 0,
            "in_flight_request_count_max is at least 1",
        );
        let client = Client {
            inner: Rc::new(ClientInner {
                config,
                topics: RefCell::new(TopicTable::default()),
                connections: RefCell::new(HashMap::new()),
                connecting: Semaphore::new(1),
                correlation_id_next: Cell::new(1),
            }),
        };
        client.metadata().await?;
        Ok(client)
    }

    /// The configuration the client was made with.
    #[must_use]
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// Checks the server answers on the configured address.
    pub async fn ping(&self) -> Result<(), ClientError> {
        self.call(Call::ping()).await?.into_pong()
    }

    /// Creates a topic of `partition_count` partitions (at least 1) and adds it to the
    /// cache. A taken name fails with [`ClientError::Server`], code `TopicExists`.
    pub async fn create_topic(
        &self,
        name: &str,
        partition_count: u32,
    ) -> Result<TopicInfo, ClientError> {
        self.create_topic_with(name, partition_count, RetentionPolicy::FOREVER)
            .await
    }

    /// Creates a topic as [`create_topic`](Self::create_topic) does, keeping what
    /// `retention` says; a limit of 0 fails with code `InvalidConfig`.
    pub async fn create_topic_with(
        &self,
        name: &str,
        partition_count: u32,
        retention: RetentionPolicy,
    ) -> Result<TopicInfo, ClientError> {
        let topic = self
            .call(Call::create_topic(name, partition_count, retention))
            .await?
            .into_topic_created()?;
        // The answer holds the topic's whole partition map, ports included: the same a
        // metadata refresh would bring, without the round trip.
        self.inner.topics.borrow_mut().insert(topic.clone());
        Ok(topic)
    }

    /// Changes `name`'s retention; returns the topic as it now is, once every shard applies
    /// the change and the catalog holding it is synced. An unknown topic fails with code
    /// `UnknownTopic`, a limit of 0 with `InvalidConfig`.
    pub async fn alter_topic_retention(
        &self,
        name: &str,
        change: RetentionChange,
    ) -> Result<TopicInfo, ClientError> {
        let topic = self
            .call(Call::alter_topic(name, change))
            .await?
            .into_topic_altered()?;
        self.inner.topics.borrow_mut().insert(topic.clone());
        Ok(topic)
    }

    /// Reads the server's topics and shard ports, and refreshes the cache with them.
    pub async fn metadata(&self) -> Result<Metadata, ClientError> {
        let address = self.inner.config.address;
        let metadata = self
            .call_at(address, RequestBody::Metadata, self.timeout())
            .await?
            .into_metadata()?;
        self.inner.topics.borrow_mut().replace(&metadata);
        Ok(metadata)
    }

    /// Appends `records` to one partition of `topic`, atomically: `partition`, or the one
    /// the first record's key routes to (then every key must route there). With
    /// `expected_end_offset`, the partition's end offset must equal it.
    ///
    /// A failed condition is [`AppendResult::Conflict`], not an error. `Appended` means the
    /// batch is synced.
    pub async fn append(
        &self,
        topic: &str,
        partition: Option<u32>,
        expected_end_offset: Option<Offset>,
        records: &[RecordInput<'_>],
    ) -> Result<AppendResult, ClientError> {
        self.call(Call::append(
            topic,
            partition,
            expected_end_offset,
            records,
            None,
        ))
        .await?
        .into_append()
    }

    /// Reads synced records of one partition from `offset` on, about `size_bytes_max` of
    /// them as encoded in the response ([`cairn_wire::record_out_size_bytes_max`]; at least one
    /// record if any is available). When none is, the server waits up to
    /// `wait_max` (in whole milliseconds) for one; the call's timeout grows by as much.
    pub async fn fetch(
        &self,
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
        ))
        .await?
        .into_fetched()
    }

    /// The latest record of `key` in `partition` (or the key's own), if it has one: synced
    /// only, or including appended (not yet synced) records when `include_appended` (its offset is what an
    /// `At` condition is checked against right now).
    pub async fn read_key(
        &self,
        topic: &str,
        partition: Option<u32>,
        key: &[u8],
        include_appended: bool,
    ) -> Result<Option<FetchedRecord>, ClientError> {
        self.call(Call::read_key(topic, partition, key, include_appended))
            .await?
            .into_key_record()
    }

    /// Stores consumer group `group`'s offsets of partitions of `topic` (each the next
    /// offset the group reads, with a metadata string of at most 4096 bytes), all or none;
    /// returns once they are durable. The same store Kafka consumers of the group use.
    pub async fn commit_offsets(
        &self,
        group: &str,
        topic: &str,
        partitions: &[PartitionOffset<'_>],
    ) -> Result<(), ClientError> {
        self.call(Call::commit_offsets(group, topic, partitions))
            .await?
            .into_offsets_committed()
    }

    /// Consumer group `group`'s committed offsets of `partitions` of `topic`, in that
    /// order (`offset: None` where nothing is committed).
    pub async fn fetch_offsets(
        &self,
        group: &str,
        topic: &str,
        partitions: &[u32],
    ) -> Result<Vec<CommittedOffset>, ClientError> {
        self.call(Call::fetch_offsets(group, topic, partitions))
            .await?
            .into_committed_offsets()
    }

    /// Up to `record_count_max` synced records of `key`, newest first.
    pub async fn key_history(
        &self,
        topic: &str,
        partition: Option<u32>,
        key: &[u8],
        record_count_max: u32,
    ) -> Result<Vec<FetchedRecord>, ClientError> {
        Ok(self
            .key_history_from(topic, partition, key, None, record_count_max)
            .await?
            .records)
    }

    /// One page of `key`'s history, newest first: from its latest synced record, or from
    /// `from_offset`, a previous page's `next_offset` (which must hold a synced record of
    /// `key`: another key's is `BadRequest`, one at or past the synced end
    /// `OffsetOutOfRange`). Repeat with each page's `next_offset` until it is `None` to
    /// read the whole history, however long.
    pub async fn key_history_from(
        &self,
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
        ))
        .await?
        .into_key_history()
    }

    fn timeout(&self) -> Duration {
        self.inner.config.request_timeout
    }

    /// Sends a request where its destination routes, refreshing the metadata once if its
    /// topic is not in the cache.
    async fn call(&self, call: Call<'_>) -> Result<Reply, ClientError> {
        let Call {
            destination,
            body,
            wait_max,
        } = call;
        let timeout = self.timeout().saturating_add(wait_max);
        let address = match self.resolve(destination) {
            Resolution::Address(address) => address,
            Resolution::UnknownTopic(_) => {
                self.metadata().await?;
                match self.resolve(destination) {
                    Resolution::Address(address) => address,
                    Resolution::UnknownTopic(topic) => {
                        return Err(ClientError::UnknownTopic(topic.to_owned()));
                    }
                }
            }
        };
        self.call_at(address, body, timeout).await
    }

    fn resolve<'a>(&self, destination: Destination<'a>) -> Resolution<'a> {
        self.inner
            .topics
            .borrow()
            .resolve(&self.inner.config, destination)
    }

    /// Sends a request to `address` and waits for its response, for at most `timeout`.
    async fn call_at(
        &self,
        address: SocketAddr,
        body: RequestBody<'_>,
        timeout: Duration,
    ) -> Result<Reply, ClientError> {
        let correlation_id = self.inner.correlation_id_next.get();
        self.inner
            .correlation_id_next
            .set(correlation_id.wrapping_add(1));
        let request = Request {
            correlation_id,
            body,
        };
        let exchange = async {
            let connection = self.connection(address).await?;
            connection.exchange(&request).await
        };
        let expiry = async {
            expire(timeout).await;
            Err(ClientError::Timeout { address, timeout })
        };
        futures_lite::future::or(exchange, expiry).await
    }

    /// The live connection to `address`, opened (or reopened after a failure) if needed.
    async fn connection(&self, address: SocketAddr) -> Result<Rc<ConnectionShared>, ClientError> {
        if let Some(connection) = self.live_connection(address) {
            return Ok(connection);
        }
        let _connecting = self
            .inner
            .connecting
            .acquire_permit(1)
            .await
            .expect("the connecting semaphore is never closed");
        // Another caller may have opened it while this one waited.
        if let Some(connection) = self.live_connection(address) {
            return Ok(connection);
        }
        let connection = Connection::open(address, &self.inner.config).await?;
        let shared = connection.shared();
        let replaced = self
            .inner
            .connections
            .borrow_mut()
            .insert(address, connection);
        // Dropped outside the borrow: this cancels the failed connection's tasks.
        drop(replaced);
        Ok(shared)
    }

    fn live_connection(&self, address: SocketAddr) -> Option<Rc<ConnectionShared>> {
        self.inner
            .connections
            .borrow()
            .get(&address)
            .filter(|connection| !connection.is_lost())
            .map(Connection::shared)
    }
}

/// Completes after `timeout`, or never if the deadline is past what `Instant` can hold
/// (glommio's timer would panic on the overflow).
async fn expire(timeout: Duration) {
    // A second of margin covers the time between this check and the timer's own `now()`.
    let margin = Duration::from_secs(1);
    if Instant::now()
        .checked_add(timeout.saturating_add(margin))
        .is_some()
    {
        glommio::timer::Timer::new(timeout).await;
    } else {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::future::Future;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use cairn_engine::core::KeyCondition;
    use glommio::{LocalExecutorBuilder, Placement};

    use super::*;
    use crate::ConnectionLoss;
    use crate::fake_server::{
        FakeServer, MODEL_END_OFFSET, MODEL_KEY_ABSENT, MODEL_KEY_OFFSET, MODEL_PARTITION_COUNT,
        MODEL_TOPIC, Step, key_on_shard, model_answer, model_record, response,
    };
    use cairn_wire::{Appended, ConflictInfo, ErrorCode, ResponseBody, partition_for_key};

    /// Long enough for any exchange with the fake server; short enough that a broken test
    /// fails quickly instead of hanging.
    const TEST_TIMEOUT: Duration = Duration::from_secs(2);

    fn config(address: SocketAddr) -> ClientConfig {
        ClientConfig {
            request_timeout: TEST_TIMEOUT,
            ..ClientConfig::new(address)
        }
    }

    /// Runs `make()`'s future on a fresh executor with a small io_uring buffer (the test
    /// machines lock at most 8 MiB), and returns its output. Shared with the crate's other
    /// tests.
    pub(crate) fn run<T, F>(make: impl FnOnce() -> F + Send + 'static) -> T
    where
        T: Send + 'static,
        F: Future<Output = T> + 'static,
    {
        LocalExecutorBuilder::new(Placement::Unbound)
            .io_memory(2 << 20)
            .spawn(make)
            .unwrap()
            .join()
            .unwrap()
    }

    fn record(key: &[u8]) -> RecordInput<'_> {
        RecordInput {
            key,
            value: b"value",
            headers: &[],
            condition: KeyCondition::Any,
            ..RecordInput::default()
        }
    }

    #[test]
    fn every_request_kind_round_trips() {
        let server = FakeServer::start(1, model_answer);
        let address = server.address(0);
        run(move || async move {
            let client = Client::connect(config(address)).await.unwrap();
            client.ping().await.unwrap();
            let metadata = client.metadata().await.unwrap();
            assert_eq!(metadata.shard_ports, [address.port()]);
            assert_eq!(
                client.create_topic("orders", 2).await.unwrap().name,
                "orders"
            );
            let error = client.create_topic(MODEL_TOPIC, 2).await.unwrap_err();
            assert_eq!(error.server_code(), Some(ErrorCode::TopicExists));

            let records = [record(b"seat-12A")];
            assert_eq!(
                client
                    .append(MODEL_TOPIC, None, None, &records)
                    .await
                    .unwrap(),
                AppendResult::Appended {
                    partition: partition_for_key(b"seat-12A", MODEL_PARTITION_COUNT),
                    base_offset: MODEL_END_OFFSET,
                    record_count: 1,
                    duplicate: false,
                }
            );
            let result = client
                .append(MODEL_TOPIC, None, Some(Offset(0)), &records)
                .await
                .unwrap();
            let expected = ConflictInfo::EndOffset {
                current_end_offset: MODEL_END_OFFSET,
            };
            assert!(
                matches!(result, AppendResult::Conflict { info, .. } if info == expected),
                "{result:?}"
            );

            let fetched = client
                .fetch(MODEL_TOPIC, 1, Offset(4), 4096, Duration::ZERO)
                .await
                .unwrap();
            assert_eq!(
                fetched.records,
                [model_record(4, b"fetched"), model_record(5, b"fetched")]
            );
            assert_eq!(fetched.synced_end, Offset(6));
            assert_eq!(
                client
                    .read_key(MODEL_TOPIC, None, b"seat-12A", false)
                    .await
                    .unwrap(),
                Some(model_record(MODEL_KEY_OFFSET.0, b"seat-12A"))
            );
            assert_eq!(
                client
                    .read_key(MODEL_TOPIC, None, MODEL_KEY_ABSENT, true)
                    .await
                    .unwrap(),
                None
            );
            let history = client
                .key_history(MODEL_TOPIC, Some(0), b"seat-12A", 10)
                .await
                .unwrap();
            let offsets: Vec<Offset> = history.iter().map(|record| record.offset).collect();
            assert_eq!(offsets, [Offset(5), Offset(3), Offset(1)]);
            let error = client
                .key_history("nope", None, b"k", 10)
                .await
                .unwrap_err();
            assert!(matches!(&error, ClientError::UnknownTopic(topic) if topic == "nope"));
        });
    }

    #[test]
    fn pipelined_appends_each_get_their_own_answer_in_reverse_order() {
        const APPEND_COUNT: u64 = 100;
        let connections = Arc::new(Mutex::new(Vec::new()));
        let mut held = Vec::new();
        let server = FakeServer::start(1, {
            let connections = Arc::clone(&connections);
            move |received| {
                let RequestBody::Append(append) = &received.request.body else {
                    return model_answer(received);
                };
                connections.lock().unwrap().push(received.connection_index);
                let key = append.records.get(0).unwrap().key;
                let index: u64 = std::str::from_utf8(key).unwrap().parse().unwrap();
                held.push((received.request.correlation_id, index));
                if held.len() < usize::try_from(APPEND_COUNT).unwrap() {
                    return Vec::new();
                }
                // Every append is now in flight at once: answer them last first, each
                // with its own index as base offset.
                held.drain(..)
                    .rev()
                    .map(|(correlation_id, index)| {
                        let appended = Appended {
                            partition: 0,
                            base_offset: Offset(index),
                            record_count: 1,
                            duplicate: false,
                        };
                        Step::Send(response(correlation_id, ResponseBody::Appended(appended)))
                    })
                    .collect()
            }
        });
        let address = server.address(0);
        run(move || async move {
            let client = Client::connect(config(address)).await.unwrap();
            let tasks: Vec<_> = (0..APPEND_COUNT)
                .map(|index| {
                    let client = client.clone();
                    glommio::spawn_local(async move {
                        let key = index.to_string();
                        let records = [record(key.as_bytes())];
                        client.append(MODEL_TOPIC, Some(0), None, &records).await
                    })
                })
                .collect();
            for (index, task) in (0..APPEND_COUNT).zip(tasks) {
                let expected = AppendResult::Appended {
                    partition: 0,
                    base_offset: Offset(index),
                    record_count: 1,
                    duplicate: false,
                };
                assert_eq!(task.await.unwrap(), expected);
            }
        });
        // All over the bootstrap connection, the one metadata came on.
        let connections = connections.lock().unwrap();
        assert_eq!(connections.len(), 100);
        assert!(
            connections.iter().all(|&index| index == 0),
            "{connections:?}"
        );
    }

    #[test]
    fn a_dropped_connection_fails_waiting_requests_and_the_next_reconnects() {
        const PING_COUNT: usize = 10;
        let mut pings_held = 0;
        let server = FakeServer::start(1, move |received| {
            if received.connection_index == 0 && received.request.body == RequestBody::Ping {
                // Drop the connection only once every ping is waiting on it.
                pings_held += 1;
                return if pings_held == PING_COUNT {
                    vec![Step::Close]
                } else {
                    Vec::new()
                };
            }
            model_answer(received)
        });
        let address = server.address(0);
        run(move || async move {
            let client = Client::connect(config(address)).await.unwrap();
            let tasks: Vec<_> = (0..PING_COUNT)
                .map(|_| {
                    let client = client.clone();
                    glommio::spawn_local(async move { client.ping().await })
                })
                .collect();
            for task in tasks {
                let error = task.await.unwrap_err();
                assert!(
                    matches!(
                        error,
                        ClientError::Closed {
                            cause: ConnectionLoss::EndOfStream | ConnectionLoss::Read(_),
                            ..
                        }
                    ),
                    "{error:?}"
                );
            }
            client.ping().await.unwrap();
            client
                .append(MODEL_TOPIC, Some(0), None, &[record(b"k")])
                .await
                .unwrap();
        });
    }

    #[test]
    fn requests_go_to_the_port_of_the_owning_shard() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let server = FakeServer::start(2, {
            let log = Arc::clone(&log);
            move |received| {
                if let RequestBody::Append(append) = &received.request.body {
                    let key = append.records.get(0).unwrap().key.to_vec();
                    log.lock().unwrap().push((received.port, key));
                }
                model_answer(received)
            }
        });
        let (port_0, port_1) = (server.port(0), server.port(1));
        let address = server.address(0);
        let key_0 = key_on_shard(0, 2);
        let key_1 = key_on_shard(1, 2);
        let keys = [key_0.clone(), key_1.clone()];
        run(move || async move {
            for shard_aware in [true, false] {
                let client = Client::connect(ClientConfig {
                    shard_aware,
                    ..config(address)
                })
                .await
                .unwrap();
                for key in &keys {
                    client
                        .append(MODEL_TOPIC, None, None, &[record(key)])
                        .await
                        .unwrap();
                }
            }
        });
        assert_eq!(
            *log.lock().unwrap(),
            [
                (port_0, key_0.clone()),
                (port_1, key_1.clone()),
                // Not shard-aware: all to the configured address; the server forwards.
                (port_0, key_0),
                (port_0, key_1),
            ]
        );
    }

    #[test]
    fn in_flight_requests_are_bounded_per_connection() {
        let fetch_count = Arc::new(AtomicUsize::new(0));
        let ping_count = Arc::new(AtomicUsize::new(0));
        let server = FakeServer::start(1, {
            let (fetch_count, ping_count) = (Arc::clone(&fetch_count), Arc::clone(&ping_count));
            move |received| match received.request.body {
                // Never answered: each holds its slot until it times out.
                RequestBody::Fetch(_) => {
                    fetch_count.fetch_add(1, Ordering::SeqCst);
                    Vec::new()
                }
                RequestBody::Ping => {
                    ping_count.fetch_add(1, Ordering::SeqCst);
                    model_answer(received)
                }
                _ => model_answer(received),
            }
        });
        let address = server.address(0);
        let request_timeout = Duration::from_millis(100);
        let fetch_wait_max = Duration::from_millis(400);
        run(move || async move {
            let client = Client::connect(ClientConfig {
                request_timeout,
                in_flight_request_count_max: 2,
                ..ClientConfig::new(address)
            })
            .await
            .unwrap();
            let fetches: Vec<_> = (0..2)
                .map(|_| {
                    let client = client.clone();
                    glommio::spawn_local(async move {
                        client
                            .fetch(MODEL_TOPIC, 0, Offset(0), 4096, fetch_wait_max)
                            .await
                    })
                })
                .collect();
            // Both slots are taken for 500 ms, so this ping waits for one, never goes out,
            // and times out after 100 ms.
            let error = client.ping().await.unwrap_err();
            assert!(matches!(error, ClientError::Timeout { .. }), "{error:?}");
            for fetch in fetches {
                let error = fetch.await.unwrap_err();
                assert!(matches!(error, ClientError::Timeout { .. }), "{error:?}");
            }
            // The slots are free again.
            client.ping().await.unwrap();
        });
        assert_eq!(fetch_count.load(Ordering::SeqCst), 2);
        assert_eq!(ping_count.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_late_answer_to_a_timed_out_request_is_discarded() {
        let mut fetch_held = None;
        let server = FakeServer::start(1, move |received| {
            let id = received.request.correlation_id;
            match received.request.body {
                RequestBody::Fetch(_) => {
                    fetch_held = Some(id);
                    Vec::new()
                }
                // Answer the timed-out fetch first, as a slow server would, then the ping.
                RequestBody::Ping if received.connection_index == 0 => {
                    let late = fetch_held.take().expect("the fetch came first");
                    let mut steps = model_answer(received);
                    steps.insert(0, Step::Send(response(late, ResponseBody::Pong)));
                    steps
                }
                _ => model_answer(received),
            }
        });
        let address = server.address(0);
        let request_timeout = Duration::from_millis(100);
        run(move || async move {
            let client = Client::connect(ClientConfig {
                request_timeout,
                ..ClientConfig::new(address)
            })
            .await
            .unwrap();
            let started = Instant::now();
            let error = client
                .fetch(MODEL_TOPIC, 0, Offset(0), 4096, Duration::ZERO)
                .await
                .unwrap_err();
            let elapsed = started.elapsed();
            assert!(
                matches!(error, ClientError::Timeout { timeout, .. } if timeout == request_timeout),
                "{error:?}"
            );
            assert!(elapsed >= request_timeout, "timed out after {elapsed:?}");
            assert!(elapsed < TEST_TIMEOUT, "timed out after {elapsed:?}");
            // Same connection: the late answer goes nowhere, the ping gets its own.
            client.ping().await.unwrap();
        });
    }
}
