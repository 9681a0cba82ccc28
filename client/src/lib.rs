//! The Rust client of Cairn's wire protocol: what the CLI, the load generator and the tests
//! speak to a server with.
//!
//! Two clients share one set of result types and one conversion from decoded responses
//! (`reply.rs`), and route requests the same way (`routing.rs`):
//!
//! - [`Client`] runs on a glommio executor and pipelines: any number of tasks of that
//!   executor may call it at once, and each connection carries up to
//!   [`ClientConfig::in_flight_request_count_max`] requests whose responses come back in any
//!   order, matched by correlation id (`connection.rs`).
//! - [`BlockingClient`] is a synchronous facade over `std::net::TcpStream` for tools and
//!   tests that run outside any executor: one request at a time per connection.
//!
//! Both are shard-aware by default: they read the server's metadata, send each request
//! straight to the port of the shard owning its partition (the one named, or the first
//! key's, [`wire::partition_for_key`]), and keep one connection per port, opened on first
//! use and reopened after a failure. Results own their bytes; nothing borrows from frames.
//!
//! A failed append condition is an expected outcome under contention, so it is a value
//! ([`AppendResult::Conflict`]), not an error; [`ClientError`] carries only real failures.

pub mod backup;
mod blocking;
mod call;
mod connection;
pub mod contention;
#[cfg(test)]
mod fake_server;
mod pipelined;
mod producer;
mod reply;
mod routing;

use std::net::SocketAddr;
use std::time::Duration;

use cairn_engine::core::Offset;

use cairn_wire::{self as wire, FrameError, WireError};

pub use blocking::BlockingClient;
pub use cairn_engine::RetentionPolicy;
pub use cairn_wire::PartitionOffset;
pub use contention::{Backoff, Contention, ContentionPolicy, Turn};
pub use pipelined::Client;
pub use producer::{IdempotentProducer, RetryPolicy};

/// How long a request may take, connecting included, unless configured otherwise. A fetch
/// may take its `wait_max` longer.
pub const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);

/// Requests one connection of a [`Client`] carries at once unless configured otherwise.
/// Further callers wait for a response to free a slot, which bounds the memory of pending
/// requests and of frames queued for the socket.
pub const IN_FLIGHT_REQUEST_COUNT_MAX_DEFAULT: u32 = 1024;

/// Where a client connects and the limits it works within.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// The server's address: the bootstrap connection, and every request's destination when
    /// `shard_aware` is false. Shard ports from metadata are used on this address's host.
    pub address: SocketAddr,
    /// Longest a request may take, from the call to its response, including waiting for a
    /// connection or an in-flight slot. A fetch gets its `wait_max` on top.
    pub request_timeout: Duration,
    /// Largest frame (flatbuffer bytes, without the 4-byte length) the client sends or
    /// accepts. A larger request fails before it is sent; a larger response closes the
    /// connection.
    pub frame_size_bytes_max: u32,
    /// Send each request to the port of the shard that owns its partition, as metadata says;
    /// when false, everything goes to `address` and the server forwards.
    pub shard_aware: bool,
    /// Most requests one connection of a [`Client`] carries at once; at least 1.
    /// [`BlockingClient`] always has at most one.
    pub in_flight_request_count_max: u32,
}

impl ClientConfig {
    /// A shard-aware configuration for the server at `address`, with
    /// [`REQUEST_TIMEOUT_DEFAULT`], [`wire::FRAME_SIZE_BYTES_MAX_DEFAULT`] and
    /// [`IN_FLIGHT_REQUEST_COUNT_MAX_DEFAULT`].
    #[must_use]
    pub fn new(address: SocketAddr) -> ClientConfig {
        ClientConfig {
            address,
            request_timeout: REQUEST_TIMEOUT_DEFAULT,
            frame_size_bytes_max: wire::FRAME_SIZE_BYTES_MAX_DEFAULT,
            shard_aware: true,
            in_flight_request_count_max: IN_FLIGHT_REQUEST_COUNT_MAX_DEFAULT,
        }
    }
}

/// One partition of a topic and where it lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionInfo {
    /// The partition's number within its topic, `0..partition_count`.
    pub partition: u32,
    /// The partition's id, unique across the server's topics.
    pub partition_id: u32,
    /// The shard that owns it.
    pub shard: u16,
    /// The owning shard's TCP port.
    pub port: u16,
}

/// A topic and its partitions, in partition order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    /// The topic's name.
    pub name: String,
    /// Every partition: `partitions[i].partition == i`.
    pub partitions: Vec<PartitionInfo>,
    /// What each partition keeps (`RetentionPolicy::FOREVER`, the default: everything).
    pub retention: RetentionPolicy,
}

/// A change to a topic's retention, limit by limit (`alter_topic_retention`): `None`
/// leaves a limit as it is, `Some(None)` removes it (keep forever), `Some(Some(n))` sets
/// it (at least 1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionChange {
    /// Kafka's `retention.ms`.
    pub ms: Option<Option<u64>>,
    /// Kafka's `retention.bytes`.
    pub bytes: Option<Option<u64>>,
}

impl TopicInfo {
    /// How many partitions the topic has.
    #[must_use]
    pub fn partition_count(&self) -> u32 {
        u32::try_from(self.partitions.len()).unwrap_or(u32::MAX)
    }
}

/// The server's topics and shard ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// Each shard's TCP port, indexed by shard number.
    pub shard_ports: Vec<u16>,
    /// Every topic, in no particular order.
    pub topics: Vec<TopicInfo>,
}

/// A record read back from a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedRecord {
    /// The record's offset in its partition.
    pub offset: Offset,
    /// When the server appended it: milliseconds since the Unix epoch, UTC.
    pub timestamp_ms: u64,
    /// The record's key (possibly empty).
    pub key: Vec<u8>,
    /// The record's value.
    pub value: Vec<u8>,
    /// The record's headers, in order, as (name, value).
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// The previous record with the same key in this partition; `None` for the key's first.
    pub prev_key_offset: Option<Offset>,
}

/// One page of a key's history, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyHistoryPage {
    /// The partition read (derived from the key if none was named).
    pub partition: u32,
    /// Synced records of the key, newest first.
    pub records: Vec<FetchedRecord>,
    /// Where the history goes on: pass it as `from_offset` for the next page. `None` once
    /// the key's first record has been returned.
    pub next_offset: Option<Offset>,
}

/// What became of an append: synced, or refused because a condition failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendResult {
    /// The whole batch is synced, at consecutive offsets from `base_offset`.
    Appended {
        /// The partition the batch went to (derived from the first key if none was named).
        partition: u32,
        /// The batch's first offset.
        base_offset: Offset,
        /// How many records the batch held.
        record_count: u32,
        /// An idempotent append's retry found its batch appended before: these are the
        /// original offsets, and nothing was appended again.
        duplicate: bool,
    },
    /// A condition failed and nothing was appended. `info` says which and holds the value it
    /// was checked against, so the caller can refresh and retry without another read.
    Conflict {
        /// Which condition failed, and the current offset it saw.
        info: wire::ConflictInfo,
        /// The server's explanation, for people.
        message: String,
    },
}

/// A producer id and epoch from the server, to stamp idempotent appends with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerId {
    /// Never handed out before by the server's data directory.
    pub producer_id: i64,
    /// The epoch to stamp appends with.
    pub epoch: i16,
}

/// A server's backup point (the schema's BackupManifest), owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupManifest {
    /// The data directory's shard count.
    pub shard_count: u16,
    /// One per shard, by shard id.
    pub shards: Vec<cairn_wire::BackupShard>,
    /// `topics.meta` without its crc line.
    pub topics_meta: String,
}

/// A consumer group's committed offset of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    /// The partition.
    pub partition: u32,
    /// The next offset the group reads; `None`: nothing committed.
    pub offset: Option<i64>,
    /// As committed (empty when nothing is).
    pub metadata: String,
}

/// Records read from one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchResult {
    /// The partition read.
    pub partition: u32,
    /// Synced records in offset order, starting at the requested offset (or the first one
    /// still available).
    pub records: Vec<FetchedRecord>,
    /// The partition's synced end: the offset the next synced record will get. A reader
    /// whose next offset equals it is caught up.
    pub synced_end: Offset,
}

/// Why a connection stopped carrying requests. Every request waiting on it fails with
/// [`ClientError::Closed`] and this cause; the next request reconnects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionLoss {
    /// The server closed the connection between frames.
    #[error("the server closed the connection")]
    EndOfStream,
    /// Reading from the socket failed.
    #[error("reading failed: {0}")]
    Read(std::io::ErrorKind),
    /// Writing to the socket failed.
    #[error("writing failed: {0}")]
    Write(std::io::ErrorKind),
    /// The server sent something that is not a frame within the limit, or ended inside one.
    #[error(transparent)]
    Frame(FrameError),
    /// The server sent a frame that is not a Response flatbuffer; with no trustworthy
    /// correlation id, nothing after it can be matched either. Boxed: it is large, and
    /// rare.
    #[error(transparent)]
    Wire(Box<WireError>),
    /// The client let go of the connection.
    #[error("the client dropped the connection")]
    Dropped,
}

/// Why a request failed. A failed append condition is not here: it is
/// [`AppendResult::Conflict`].
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Opening a connection failed.
    #[error("connecting to {address}: {source}")]
    Connect {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing a [`BlockingClient`]'s connection failed; the connection is
    /// dropped. ([`Client`] reports these as [`ClientError::Closed`]: its connection's
    /// failure reaches every request waiting on it.)
    #[error("{operation} {address}: {source}")]
    Io {
        /// "writing to" or "reading from".
        operation: &'static str,
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The server's bytes are not frames within the limit; the [`BlockingClient`]'s
    /// connection is dropped. ([`Client`] reports it as [`ClientError::Closed`].)
    #[error("framing: {0}")]
    Frame(#[from] FrameError),
    /// A response frame could not be decoded (e.g. a code this client does not know).
    /// Boxed: it is large, and rare, and would otherwise make every result larger.
    #[error("decoding a response: {0}")]
    Wire(Box<WireError>),
    /// The server answered with an error.
    #[error("server error {code:?}: {message}")]
    Server {
        code: wire::ErrorCode,
        message: String,
    },
    /// The server answered with a response of the wrong kind for the request.
    #[error("expected a {expected} response, got {actual}")]
    UnexpectedResponse {
        expected: &'static str,
        actual: &'static str,
    },
    /// The topic is not in the server's metadata, even after refreshing it.
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    /// The server answered `OffsetBeforeLogStart`: retention removed the offset asked for;
    /// the partition's records start at `log_start`, where a reader can resume.
    #[error("server error OffsetBeforeLogStart: {message}")]
    BeforeLogStart {
        log_start: cairn_engine::core::Offset,
        message: String,
    },
    /// The encoded request exceeds the frame limit; it was not sent.
    #[error("request of {frame_size_bytes} bytes exceeds the frame limit {frame_size_bytes_max}")]
    RequestTooLarge {
        frame_size_bytes: usize,
        frame_size_bytes_max: u32,
    },
    /// No response within the timeout. The request may still take effect on the server.
    #[error("no response from {address} within {timeout:?}")]
    Timeout {
        address: SocketAddr,
        timeout: Duration,
    },
    /// The connection closed before the response arrived. The request may still have taken
    /// effect on the server.
    #[error("connection to {address} lost: {cause}")]
    Closed {
        address: SocketAddr,
        cause: ConnectionLoss,
    },
}

impl From<WireError> for ClientError {
    fn from(error: WireError) -> ClientError {
        ClientError::Wire(Box::new(error))
    }
}

impl ClientError {
    /// True when the request may or may not have taken effect: the connection was lost or
    /// timed out before the answer, or the server answered with a code that does not say
    /// (the schema's OUTCOME OF AN APPEND THAT FAILED lists them). An idempotent append may
    /// be resent after these, and only these. Overloaded is counted too, although the server
    /// sends it only when refusing a connection, before reading any request: resending is
    /// what a caller should do after it.
    #[must_use]
    pub fn is_outcome_unknown(&self) -> bool {
        match self {
            ClientError::Io { .. }
            | ClientError::Frame(_)
            | ClientError::Timeout { .. }
            | ClientError::Closed { .. }
            // Refused before it was sent, but a retry does no harm: the server that moved
            // (restarted on other ports) is found again through the metadata.
            | ClientError::Connect { .. } => true,
            ClientError::Server { code, .. } => matches!(
                code,
                wire::ErrorCode::Overloaded
                    | wire::ErrorCode::ShuttingDown
                    | wire::ErrorCode::Internal
                    | wire::ErrorCode::StorageFailure
            ),
            ClientError::Wire(_)
            | ClientError::UnexpectedResponse { .. }
            | ClientError::UnknownTopic(_)
            | ClientError::BeforeLogStart { .. }
            | ClientError::RequestTooLarge { .. } => false,
        }
    }

    /// The server's error code, when the server answered with an error.
    #[must_use]
    pub fn server_code(&self) -> Option<wire::ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            ClientError::BeforeLogStart { .. } => Some(wire::ErrorCode::OffsetBeforeLogStart),
            _ => None,
        }
    }
}
