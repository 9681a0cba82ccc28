//! Responses: typed values, [`decode_response`], and the response half of [`Encoder`].
//!
//! Records read back ([`RecordOut`]) and their headers come in lists that are either
//! borrowed slices (the server encoding what the engine read) or views of a verified frame
//! (a client decoding). Decoding a `Fetched` allocates nothing: iterating the list reads
//! each record straight from the frame, which the verifier has already checked whole.

use bytes::BufMut;
use cairn_engine::core::limits::{BATCH_SIZE_BYTES_MAX, RECORD_HEADER_COUNT_MAX};
use cairn_engine::core::retention::RetentionPolicy;
use cairn_engine::core::{KeyCondition, Offset, PartitionId, RecordHeader, ShardId};
use flatbuffers::{ForwardsUOffset, UnionWIPOffset, Vector, VectorIter, WIPOffset};

use super::encoder::Encoder;
use super::generated::cairn as fb;
use super::request::{
    bytes_or_empty, decode_condition, encode_bytes, encode_condition, encode_headers,
};
use super::verify::{Violation, WireError, verifier_options};
use super::write_frame;

/// One server-to-client message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response<'a> {
    /// The correlation id of the request this answers.
    pub correlation_id: u64,
    /// The answer.
    pub body: ResponseBody<'a>,
}

/// The answer to a request; each request kind has its own, and any can fail with `Error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseBody<'a> {
    /// Answer to Ping.
    Pong,
    /// Answer to CreateTopic: the new topic and where its partitions live.
    TopicCreated(TopicMetadata<'a>),
    /// Answer to Metadata.
    Metadata(MetadataResult<'a>),
    /// Answer to a successful Append: the batch is synced.
    Appended(Appended),
    /// Answer to Fetch.
    Fetched(Fetched<'a>),
    /// Answer to ReadKey.
    KeyRecord(KeyRecord<'a>),
    /// Answer to KeyHistory.
    KeyHistory(KeyHistoryResult<'a>),
    /// Any request that failed.
    Error(ErrorResponse<'a>),
    /// Answer to InitProducer.
    ProducerInitialized(ProducerInitialized),
    /// Answer to CommitOffsets: every offset is durable.
    OffsetsCommitted,
    /// Answer to FetchOffsets: one entry per partition asked for, in that order.
    CommittedOffsets(Vec<CommittedOffset<'a>>),
    /// Answer to BackupBegin: the backup point.
    BackupManifest(BackupManifest<'a>),
    /// Answer to BackupRead: the bytes asked for.
    BackupChunk(&'a [u8]),
    /// Answer to AlterTopic: the topic with its settings as they now are.
    TopicAltered(TopicMetadata<'a>),
}

/// The backup point of every shard, and the catalog that goes with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupManifest<'a> {
    /// The data directory's shard count.
    pub shard_count: u16,
    /// One per shard, by shard id.
    pub shards: Vec<BackupShard>,
    /// `topics.meta` without its crc line.
    pub topics_meta: &'a str,
}

/// One shard at the backup point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupShard {
    /// The shard.
    pub shard: ShardId,
    /// Its segment files, in index order; the last is the one it writes now.
    pub segments: Vec<BackupSegment>,
    /// Its durable producer-id reservation.
    pub producer_id_counter_end: u64,
    /// The synced end offset of every partition it owns.
    pub partitions: Vec<BackupPartitionEnd>,
}

/// One segment file to copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupSegment {
    /// The segment's index.
    pub segment_index: u64,
    /// Bytes to copy from position 0.
    pub length_bytes: u64,
    /// The file's preallocated size.
    pub size_bytes: u64,
}

/// One partition's synced end offset at the backup point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupPartitionEnd {
    /// The partition's id.
    pub partition_id: PartitionId,
    /// Its synced end.
    pub end_offset: Offset,
}

/// A consumer group's committed offset of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommittedOffset<'a> {
    /// The partition within the topic.
    pub partition: u32,
    /// The next offset the group will read; `None`: nothing committed.
    pub offset: Option<i64>,
    /// As committed; empty when nothing is.
    pub metadata: &'a str,
}

/// A topic and where each of its partitions lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMetadata<'a> {
    /// The topic's name.
    pub name: &'a str,
    /// Every partition, in order: `partitions[i].partition == i`.
    pub partitions: Vec<PartitionMetadata>,
    /// What each partition keeps.
    pub retention: RetentionPolicy,
}

/// One partition of a topic and its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionMetadata {
    /// The partition's number within its topic.
    pub partition: u32,
    /// The partition's id, unique across the server's topics.
    pub partition_id: PartitionId,
    /// The shard that owns it.
    pub shard: ShardId,
    /// The owning shard's TCP port.
    pub port: u16,
}

/// Every topic, and the port of every shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataResult<'a> {
    /// Each shard's TCP port, indexed by shard number.
    pub shard_ports: Vec<u16>,
    /// Every topic, in no particular order.
    pub topics: Vec<TopicMetadata<'a>>,
}

impl MetadataResult<'_> {
    /// How many shards the server runs.
    #[must_use]
    pub fn shard_count(&self) -> usize {
        self.shard_ports.len()
    }
}

/// A synced append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The partition the batch went to.
    pub partition: u32,
    /// The batch's first offset; the others follow without gaps.
    pub base_offset: Offset,
    /// How many records the batch held.
    pub record_count: u32,
    /// The append repeated an earlier one of its producer: these are the original batch's
    /// offsets, and nothing was appended now.
    pub duplicate: bool,
}

/// A producer id for idempotent appends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerInitialized {
    /// Never handed out before by this data directory.
    pub producer_id: i64,
    /// The epoch to stamp appends with.
    pub epoch: i16,
}

/// Records read from a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetched<'a> {
    /// The partition read.
    pub partition: u32,
    /// In offset order.
    pub records: RecordOutList<'a>,
    /// The partition's synced end: the offset the next synced record will get.
    pub synced_end: Offset,
}

/// A key's latest record, if it has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRecord<'a> {
    /// The partition read.
    pub partition: u32,
    /// `None` when the key has no record in the partition.
    pub record: Option<RecordOut<'a>>,
}

/// A key's records, newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyHistoryResult<'a> {
    /// The partition read.
    pub partition: u32,
    /// Newest first.
    pub records: RecordOutList<'a>,
    /// The offset to continue the history from (`KeyHistoryRequest::from_offset`); `None`
    /// once the key's first record has been returned.
    pub next_offset: Option<u64>,
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorResponse<'a> {
    /// What kind of failure.
    pub code: ErrorCode,
    /// For people: what went wrong, with the values involved.
    pub message: &'a str,
    /// Present exactly when `code` is [`ErrorCode::Conflict`]; decoding enforces it.
    pub conflict: Option<ConflictInfo>,
    /// The partition's first kept offset; present exactly when `code` is
    /// [`ErrorCode::OffsetBeforeLogStart`]; decoding enforces it.
    pub log_start: Option<Offset>,
}

/// Why a request failed, as a client can act on it. The schema documents each code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// A bug or an unexpected state in the server.
    Internal,
    /// The request breaks a rule of the protocol.
    BadRequest,
    /// The server does not know this request kind.
    UnsupportedRequest,
    /// Something exceeds a limit.
    TooLarge,
    /// No topic with that name.
    UnknownTopic,
    /// The topic has no partition with that number.
    UnknownPartition,
    /// A topic with that name exists.
    TopicExists,
    /// An append's condition failed; nothing was appended.
    Conflict,
    /// The server could not write or sync, and stops.
    StorageFailure,
    /// Too much work queued; retry later.
    Overloaded,
    /// The server is stopping.
    ShuttingDown,
    /// An idempotent append's sequence does not follow its producer's batches.
    OutOfOrderSequence,
    /// An idempotent append's producer epoch is older than one the partition has seen.
    ProducerFenced,
    /// A read starts beyond the partition's synced end; the message names the end.
    OffsetOutOfRange,
    /// A BackupRead range outside the shard's synced log.
    BackupRangeUnavailable,
    /// A read starts below the partition's first kept offset (retention removed it);
    /// `ErrorResponse::log_start` is where a reader can resume.
    OffsetBeforeLogStart,
    /// A retention setting that is not valid; the message says which.
    InvalidConfig,
}

impl ErrorCode {
    /// Every code, in wire order.
    pub const ALL: [ErrorCode; 17] = [
        ErrorCode::Internal,
        ErrorCode::BadRequest,
        ErrorCode::UnsupportedRequest,
        ErrorCode::TooLarge,
        ErrorCode::UnknownTopic,
        ErrorCode::UnknownPartition,
        ErrorCode::TopicExists,
        ErrorCode::Conflict,
        ErrorCode::StorageFailure,
        ErrorCode::Overloaded,
        ErrorCode::ShuttingDown,
        ErrorCode::OutOfOrderSequence,
        ErrorCode::ProducerFenced,
        ErrorCode::OffsetOutOfRange,
        ErrorCode::BackupRangeUnavailable,
        ErrorCode::OffsetBeforeLogStart,
        ErrorCode::InvalidConfig,
    ];

    fn to_fb(self) -> fb::ErrorCode {
        match self {
            ErrorCode::Internal => fb::ErrorCode::Internal,
            ErrorCode::BadRequest => fb::ErrorCode::BadRequest,
            ErrorCode::UnsupportedRequest => fb::ErrorCode::UnsupportedRequest,
            ErrorCode::TooLarge => fb::ErrorCode::TooLarge,
            ErrorCode::UnknownTopic => fb::ErrorCode::UnknownTopic,
            ErrorCode::UnknownPartition => fb::ErrorCode::UnknownPartition,
            ErrorCode::TopicExists => fb::ErrorCode::TopicExists,
            ErrorCode::Conflict => fb::ErrorCode::Conflict,
            ErrorCode::StorageFailure => fb::ErrorCode::StorageFailure,
            ErrorCode::Overloaded => fb::ErrorCode::Overloaded,
            ErrorCode::ShuttingDown => fb::ErrorCode::ShuttingDown,
            ErrorCode::OutOfOrderSequence => fb::ErrorCode::OutOfOrderSequence,
            ErrorCode::ProducerFenced => fb::ErrorCode::ProducerFenced,
            ErrorCode::OffsetOutOfRange => fb::ErrorCode::OffsetOutOfRange,
            ErrorCode::BackupRangeUnavailable => fb::ErrorCode::BackupRangeUnavailable,
            ErrorCode::OffsetBeforeLogStart => fb::ErrorCode::OffsetBeforeLogStart,
            ErrorCode::InvalidConfig => fb::ErrorCode::InvalidConfig,
        }
    }

    fn from_fb(code: fb::ErrorCode) -> Result<ErrorCode, Violation> {
        Ok(match code {
            fb::ErrorCode::Internal => ErrorCode::Internal,
            fb::ErrorCode::BadRequest => ErrorCode::BadRequest,
            fb::ErrorCode::UnsupportedRequest => ErrorCode::UnsupportedRequest,
            fb::ErrorCode::TooLarge => ErrorCode::TooLarge,
            fb::ErrorCode::UnknownTopic => ErrorCode::UnknownTopic,
            fb::ErrorCode::UnknownPartition => ErrorCode::UnknownPartition,
            fb::ErrorCode::TopicExists => ErrorCode::TopicExists,
            fb::ErrorCode::Conflict => ErrorCode::Conflict,
            fb::ErrorCode::StorageFailure => ErrorCode::StorageFailure,
            fb::ErrorCode::Overloaded => ErrorCode::Overloaded,
            fb::ErrorCode::ShuttingDown => ErrorCode::ShuttingDown,
            fb::ErrorCode::OutOfOrderSequence => ErrorCode::OutOfOrderSequence,
            fb::ErrorCode::ProducerFenced => ErrorCode::ProducerFenced,
            fb::ErrorCode::OffsetOutOfRange => ErrorCode::OffsetOutOfRange,
            fb::ErrorCode::BackupRangeUnavailable => ErrorCode::BackupRangeUnavailable,
            fb::ErrorCode::OffsetBeforeLogStart => ErrorCode::OffsetBeforeLogStart,
            fb::ErrorCode::InvalidConfig => ErrorCode::InvalidConfig,
            fb::ErrorCode(value) => {
                return Err(Violation::UnknownEnumValue {
                    enum_name: "ErrorCode",
                    value,
                });
            }
        })
    }
}

/// Which condition of a rejected append failed, and the value it was checked against, so
/// the client can refresh and retry without another round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConflictInfo {
    /// `expected_end_offset` did not match.
    EndOffset {
        /// The partition's end offset now (pending records included).
        current_end_offset: Offset,
    },
    /// A record's key condition did not hold.
    Key {
        /// The record's index in the append's records.
        record_index: u32,
        /// The condition that failed.
        condition: KeyCondition,
        /// The key's latest offset (pending records included); `None` if never written.
        current_offset: Option<Offset>,
    },
}

/// A record as read back from a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordOut<'a> {
    /// The record's offset in its partition.
    pub offset: Offset,
    /// When the server appended it: milliseconds since the Unix epoch, UTC.
    pub timestamp_ms: u64,
    /// The record's key (possibly empty).
    pub key: &'a [u8],
    /// The record's value.
    pub value: &'a [u8],
    /// The record's headers, in order.
    pub headers: HeaderList<'a>,
    /// The previous record with the same key in this partition; `None` for the key's first.
    pub prev_key_offset: Option<Offset>,
}

/// Most bytes one [`RecordOut`] adds to a response beyond the bytes of its key, value and
/// headers, however the encoder lays it out: its vtable, counted as if never shared (16:
/// two u16 sizes and six field slots); its table, aligned for its u64 fields (at most 44:
/// the vtable offset, three u64s, three offsets, padding); the lengths and alignment
/// padding of its key, value and headers vectors (at most 7 each); its entry in the
/// records vector (4). 88 rounds the sum (86) up to a multiple of 8;
/// `encoded_size_stays_within_the_documented_bound` checks it against the encoder.
pub const RECORD_OUT_OVERHEAD_SIZE_BYTES_MAX: usize = 88;

/// Most bytes one header of a [`RecordOut`] adds beyond its name and value bytes: its
/// vtable (8), its table (12, and 3 of alignment), the lengths and padding of its name and
/// value vectors (at most 7 each), its entry in the headers vector (4): 41, rounded up.
pub const HEADER_OUT_OVERHEAD_SIZE_BYTES_MAX: usize = 48;

/// Most bytes of a `Fetched`, `KeyRecord` or `KeyHistoryResult` response besides its
/// records: the root offset, the `Response` and body tables with their vtables, the records
/// vector's length, and alignment (about 80 bytes; the rest is margin).
pub const RECORDS_RESPONSE_OVERHEAD_SIZE_BYTES_MAX: usize = 128;

/// Most bytes one record can add to a response: all of a batch's keys, values and headers
/// (`BATCH_SIZE_BYTES_MAX`, which an appended batch cannot exceed) in one record with the
/// most headers.
pub const RECORD_OUT_SIZE_BYTES_MAX: usize = RECORD_OUT_OVERHEAD_SIZE_BYTES_MAX
    + BATCH_SIZE_BYTES_MAX
    + RECORD_HEADER_COUNT_MAX * HEADER_OUT_OVERHEAD_SIZE_BYTES_MAX;

// A response carrying a single record, however large, fits in a client's default frame
// limit, so a reader can always get past any record.
const _: () = assert!(
    RECORDS_RESPONSE_OVERHEAD_SIZE_BYTES_MAX + RECORD_OUT_SIZE_BYTES_MAX
        <= super::FRAME_SIZE_BYTES_MAX_DEFAULT as usize
);

// The schema (Fetch.size_bytes_max) quotes these, for clients in other languages.
const _: () = assert!(RECORD_OUT_OVERHEAD_SIZE_BYTES_MAX == 88);
const _: () = assert!(HEADER_OUT_OVERHEAD_SIZE_BYTES_MAX == 48);
const _: () = assert!(RECORDS_RESPONSE_OVERHEAD_SIZE_BYTES_MAX == 128);

/// The most bytes a record with this key, value and headers adds to a `Fetched`,
/// `KeyRecord` or `KeyHistoryResult` response: its bytes plus
/// [`RECORD_OUT_OVERHEAD_SIZE_BYTES_MAX`], and [`HEADER_OUT_OVERHEAD_SIZE_BYTES_MAX`] per
/// header. A response's size is at most the sum over its records plus
/// [`RECORDS_RESPONSE_OVERHEAD_SIZE_BYTES_MAX`], so a server can bound a response by
/// adding records while the sum stays under its limit.
#[must_use]
pub fn record_out_size_bytes_max<'h>(
    key: &[u8],
    value: &[u8],
    headers: impl IntoIterator<Item = RecordHeader<'h>>,
) -> usize {
    headers.into_iter().fold(
        RECORD_OUT_OVERHEAD_SIZE_BYTES_MAX + key.len() + value.len(),
        |size_bytes, header| {
            size_bytes + HEADER_OUT_OVERHEAD_SIZE_BYTES_MAX + header.name.len() + header.value.len()
        },
    )
}

impl RecordOut<'_> {
    /// The most bytes this record adds to a response ([`record_out_size_bytes_max`]).
    #[must_use]
    pub fn encoded_size_bytes_max(&self) -> usize {
        record_out_size_bytes_max(self.key, self.value, self.headers.iter())
    }
}

/// A record's headers: a borrowed slice (to encode) or a view of a verified frame.
#[derive(Clone, Copy)]
pub struct HeaderList<'a> {
    repr: HeaderListRepr<'a>,
}

#[derive(Clone, Copy)]
enum HeaderListRepr<'a> {
    Slice(&'a [RecordHeader<'a>]),
    Frame(Vector<'a, ForwardsUOffset<fb::Header<'a>>>),
}

impl<'a> HeaderList<'a> {
    /// Headers to encode, borrowed as they are.
    #[must_use]
    pub fn from_slice(headers: &'a [RecordHeader<'a>]) -> HeaderList<'a> {
        HeaderList {
            repr: HeaderListRepr::Slice(headers),
        }
    }

    fn from_frame(headers: Option<Vector<'a, ForwardsUOffset<fb::Header<'a>>>>) -> HeaderList<'a> {
        match headers {
            Some(headers) => HeaderList {
                repr: HeaderListRepr::Frame(headers),
            },
            None => HeaderList::from_slice(&[]),
        }
    }

    /// How many headers.
    #[must_use]
    pub fn len(&self) -> usize {
        match self.repr {
            HeaderListRepr::Slice(headers) => headers.len(),
            HeaderListRepr::Frame(headers) => headers.len(),
        }
    }

    /// True if there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The headers in order.
    #[must_use]
    pub fn iter(&self) -> HeaderListIter<'a> {
        HeaderListIter {
            repr: match self.repr {
                HeaderListRepr::Slice(headers) => HeaderListIterRepr::Slice(headers.iter()),
                HeaderListRepr::Frame(headers) => HeaderListIterRepr::Frame(headers.iter()),
            },
        }
    }
}

impl Default for HeaderList<'_> {
    fn default() -> Self {
        HeaderList::from_slice(&[])
    }
}

impl<'a> From<&'a [RecordHeader<'a>]> for HeaderList<'a> {
    fn from(headers: &'a [RecordHeader<'a>]) -> HeaderList<'a> {
        HeaderList::from_slice(headers)
    }
}

impl PartialEq for HeaderList<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for HeaderList<'_> {}

impl std::fmt::Debug for HeaderList<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Iterator over a [`HeaderList`].
#[derive(Clone)]
pub struct HeaderListIter<'a> {
    repr: HeaderListIterRepr<'a>,
}

#[derive(Clone)]
enum HeaderListIterRepr<'a> {
    Slice(std::slice::Iter<'a, RecordHeader<'a>>),
    Frame(VectorIter<'a, ForwardsUOffset<fb::Header<'a>>>),
}

impl<'a> Iterator for HeaderListIter<'a> {
    type Item = RecordHeader<'a>;

    fn next(&mut self) -> Option<RecordHeader<'a>> {
        match &mut self.repr {
            HeaderListIterRepr::Slice(headers) => headers.next().copied(),
            HeaderListIterRepr::Frame(headers) => headers.next().map(|header| RecordHeader {
                name: header.name().bytes(),
                value: bytes_or_empty(header.value()),
            }),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match &self.repr {
            HeaderListIterRepr::Slice(headers) => headers.size_hint(),
            HeaderListIterRepr::Frame(headers) => headers.size_hint(),
        }
    }
}

impl ExactSizeIterator for HeaderListIter<'_> {}

/// Records read back: a borrowed slice (to encode) or a view of a verified frame.
#[derive(Clone, Copy)]
pub struct RecordOutList<'a> {
    repr: RecordOutListRepr<'a>,
}

#[derive(Clone, Copy)]
enum RecordOutListRepr<'a> {
    Slice(&'a [RecordOut<'a>]),
    Frame(Vector<'a, ForwardsUOffset<fb::RecordOut<'a>>>),
}

impl<'a> RecordOutList<'a> {
    /// Records to encode, borrowed as they are.
    #[must_use]
    pub fn from_slice(records: &'a [RecordOut<'a>]) -> RecordOutList<'a> {
        RecordOutList {
            repr: RecordOutListRepr::Slice(records),
        }
    }

    fn from_frame(
        records: Option<Vector<'a, ForwardsUOffset<fb::RecordOut<'a>>>>,
    ) -> RecordOutList<'a> {
        match records {
            Some(records) => RecordOutList {
                repr: RecordOutListRepr::Frame(records),
            },
            None => RecordOutList::from_slice(&[]),
        }
    }

    /// How many records.
    #[must_use]
    pub fn len(&self) -> usize {
        match self.repr {
            RecordOutListRepr::Slice(records) => records.len(),
            RecordOutListRepr::Frame(records) => records.len(),
        }
    }

    /// True if there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The records in order.
    #[must_use]
    pub fn iter(&self) -> RecordOutListIter<'a> {
        RecordOutListIter {
            repr: match self.repr {
                RecordOutListRepr::Slice(records) => RecordOutListIterRepr::Slice(records.iter()),
                RecordOutListRepr::Frame(records) => RecordOutListIterRepr::Frame(records.iter()),
            },
        }
    }
}

impl Default for RecordOutList<'_> {
    fn default() -> Self {
        RecordOutList::from_slice(&[])
    }
}

impl<'a> From<&'a [RecordOut<'a>]> for RecordOutList<'a> {
    fn from(records: &'a [RecordOut<'a>]) -> RecordOutList<'a> {
        RecordOutList::from_slice(records)
    }
}

impl PartialEq for RecordOutList<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for RecordOutList<'_> {}

impl std::fmt::Debug for RecordOutList<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Iterator over a [`RecordOutList`].
#[derive(Clone)]
pub struct RecordOutListIter<'a> {
    repr: RecordOutListIterRepr<'a>,
}

#[derive(Clone)]
enum RecordOutListIterRepr<'a> {
    Slice(std::slice::Iter<'a, RecordOut<'a>>),
    Frame(VectorIter<'a, ForwardsUOffset<fb::RecordOut<'a>>>),
}

impl<'a> Iterator for RecordOutListIter<'a> {
    type Item = RecordOut<'a>;

    fn next(&mut self) -> Option<RecordOut<'a>> {
        match &mut self.repr {
            RecordOutListIterRepr::Slice(records) => records.next().copied(),
            RecordOutListIterRepr::Frame(records) => records.next().map(decode_record_out),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match &self.repr {
            RecordOutListIterRepr::Slice(records) => records.size_hint(),
            RecordOutListIterRepr::Frame(records) => records.size_hint(),
        }
    }
}

impl ExactSizeIterator for RecordOutListIter<'_> {}

const ROOT: &str = "Response";

/// Decodes one frame (the flatbuffer, without its length) from a server.
///
/// Verifies the whole buffer first (see `verify.rs`), then checks what the verifier cannot:
/// enum values and union types, and that a Conflict carries its details. Never panics; the
/// result borrows from `frame`.
pub fn decode_response(frame: &[u8]) -> Result<Response<'_>, WireError> {
    let response = fb::root_as_response_with_opts(&verifier_options(frame.len()), frame).map_err(
        |invalid| WireError::Malformed {
            root: ROOT,
            frame_size_bytes: frame.len(),
            invalid,
        },
    )?;
    let correlation_id = response.correlation_id();
    let body = decode_body(&response).map_err(|violation| WireError::Invalid {
        root: ROOT,
        correlation_id,
        violation,
    })?;
    Ok(Response {
        correlation_id,
        body,
    })
}

fn decode_body<'a>(response: &fb::Response<'a>) -> Result<ResponseBody<'a>, Violation> {
    // The verifier rejects a union type without its value, so the `ok_or`s below only guard
    // against a verifier bug.
    let missing = Violation::MissingField {
        field: "Response.body",
    };
    Ok(match response.body_type() {
        fb::ResponseBody::NONE => return Err(missing),
        fb::ResponseBody::Pong => {
            response.body_as_pong().ok_or(missing)?;
            ResponseBody::Pong
        }
        fb::ResponseBody::TopicCreated => {
            let created = response.body_as_topic_created().ok_or(missing)?;
            ResponseBody::TopicCreated(decode_topic_metadata(created.topic()))
        }
        fb::ResponseBody::TopicAltered => {
            let altered = response.body_as_topic_altered().ok_or(missing)?;
            ResponseBody::TopicAltered(decode_topic_metadata(altered.topic()))
        }
        fb::ResponseBody::MetadataResult => {
            let metadata = response.body_as_metadata_result().ok_or(missing)?;
            ResponseBody::Metadata(MetadataResult {
                shard_ports: metadata
                    .shard_ports()
                    .map(|ports| ports.iter().collect())
                    .unwrap_or_default(),
                topics: metadata
                    .topics()
                    .map(|topics| topics.iter().map(decode_topic_metadata).collect())
                    .unwrap_or_default(),
            })
        }
        fb::ResponseBody::Appended => {
            let appended = response.body_as_appended().ok_or(missing)?;
            ResponseBody::Appended(Appended {
                partition: appended.partition(),
                base_offset: Offset(appended.base_offset()),
                record_count: appended.record_count(),
                duplicate: appended.duplicate(),
            })
        }
        fb::ResponseBody::Fetched => {
            let fetched = response.body_as_fetched().ok_or(missing)?;
            ResponseBody::Fetched(Fetched {
                partition: fetched.partition(),
                records: RecordOutList::from_frame(fetched.records()),
                synced_end: Offset(fetched.synced_end()),
            })
        }
        fb::ResponseBody::KeyRecord => {
            let found = response.body_as_key_record().ok_or(missing)?;
            ResponseBody::KeyRecord(KeyRecord {
                partition: found.partition(),
                record: found.record().map(decode_record_out),
            })
        }
        fb::ResponseBody::KeyHistoryResult => {
            let history = response.body_as_key_history_result().ok_or(missing)?;
            ResponseBody::KeyHistory(KeyHistoryResult {
                partition: history.partition(),
                records: RecordOutList::from_frame(history.records()),
                next_offset: history.next_offset(),
            })
        }
        fb::ResponseBody::ErrorResponse => {
            let error = response.body_as_error_response().ok_or(missing)?;
            ResponseBody::Error(decode_error(error)?)
        }
        fb::ResponseBody::ProducerInitialized => {
            let initialized = response.body_as_producer_initialized().ok_or(missing)?;
            ResponseBody::ProducerInitialized(ProducerInitialized {
                producer_id: initialized.producer_id(),
                epoch: initialized.epoch(),
            })
        }
        fb::ResponseBody::OffsetsCommitted => {
            response.body_as_offsets_committed().ok_or(missing)?;
            ResponseBody::OffsetsCommitted
        }
        fb::ResponseBody::CommittedOffsets => {
            let committed = response.body_as_committed_offsets().ok_or(missing)?;
            ResponseBody::CommittedOffsets(
                committed
                    .partitions()
                    .iter()
                    .map(|entry| CommittedOffset {
                        partition: entry.partition(),
                        offset: entry.offset(),
                        metadata: entry.metadata().unwrap_or_default(),
                    })
                    .collect(),
            )
        }
        fb::ResponseBody::BackupManifest => {
            let manifest = response.body_as_backup_manifest().ok_or(missing)?;
            ResponseBody::BackupManifest(BackupManifest {
                shard_count: manifest.shard_count(),
                shards: manifest
                    .shards()
                    .iter()
                    .map(|shard| BackupShard {
                        shard: ShardId(shard.shard()),
                        segments: shard
                            .segments()
                            .iter()
                            .map(|segment| BackupSegment {
                                segment_index: segment.segment_index(),
                                length_bytes: segment.length_bytes(),
                                size_bytes: segment.size_bytes(),
                            })
                            .collect(),
                        producer_id_counter_end: shard.producer_id_counter_end(),
                        partitions: shard
                            .partitions()
                            .iter()
                            .map(|end| BackupPartitionEnd {
                                partition_id: PartitionId(end.partition_id()),
                                end_offset: Offset(end.end_offset()),
                            })
                            .collect(),
                    })
                    .collect(),
                topics_meta: manifest.topics_meta(),
            })
        }
        fb::ResponseBody::BackupChunk => {
            let chunk = response.body_as_backup_chunk().ok_or(missing)?;
            ResponseBody::BackupChunk(chunk.bytes().bytes())
        }
        fb::ResponseBody(type_value) => {
            return Err(Violation::UnknownUnionType {
                union_name: "ResponseBody",
                type_value,
            });
        }
    })
}

fn decode_topic_metadata(topic: fb::TopicMetadata<'_>) -> TopicMetadata<'_> {
    let partitions = topic.partitions().map(|partitions| {
        partitions
            .iter()
            .map(|partition| PartitionMetadata {
                partition: partition.partition(),
                partition_id: PartitionId(partition.partition_id()),
                shard: ShardId(partition.shard()),
                port: partition.port(),
            })
            .collect()
    });
    TopicMetadata {
        name: topic.name(),
        partitions: partitions.unwrap_or_default(),
        retention: RetentionPolicy {
            ms: topic.retention_ms(),
            bytes: topic.retention_bytes(),
        },
    }
}

fn decode_record_out(record: fb::RecordOut<'_>) -> RecordOut<'_> {
    RecordOut {
        offset: Offset(record.offset()),
        timestamp_ms: record.timestamp_ms(),
        key: bytes_or_empty(record.key()),
        value: bytes_or_empty(record.value()),
        headers: HeaderList::from_frame(record.headers()),
        prev_key_offset: record.prev_key_offset().map(Offset),
    }
}

fn decode_error(error: fb::ErrorResponse<'_>) -> Result<ErrorResponse<'_>, Violation> {
    let code = ErrorCode::from_fb(error.code())?;
    let conflict = match (code, error.conflict()) {
        (ErrorCode::Conflict, Some(conflict)) => Some(decode_conflict(conflict)?),
        (ErrorCode::Conflict, None) => {
            return Err(Violation::MissingField {
                field: "ErrorResponse.conflict",
            });
        }
        (_, Some(_)) => {
            return Err(Violation::UnexpectedField {
                field: "ErrorResponse.conflict",
                context: "unless code is Conflict",
            });
        }
        (_, None) => None,
    };
    let log_start = match (code, error.log_start()) {
        (ErrorCode::OffsetBeforeLogStart, Some(log_start)) => Some(Offset(log_start)),
        (ErrorCode::OffsetBeforeLogStart, None) => {
            return Err(Violation::MissingField {
                field: "ErrorResponse.log_start",
            });
        }
        (_, Some(_)) => {
            return Err(Violation::UnexpectedField {
                field: "ErrorResponse.log_start",
                context: "unless code is OffsetBeforeLogStart",
            });
        }
        (_, None) => None,
    };
    Ok(ErrorResponse {
        code,
        message: error.message().unwrap_or_default(),
        conflict,
        log_start,
    })
}

fn decode_conflict(conflict: fb::ConflictInfo<'_>) -> Result<ConflictInfo, Violation> {
    match conflict.kind() {
        fb::ConflictKind::EndOffset => {
            let current_end_offset = conflict.current_offset().ok_or(Violation::MissingField {
                field: "ConflictInfo.current_offset",
            })?;
            Ok(ConflictInfo::EndOffset {
                current_end_offset: Offset(current_end_offset),
            })
        }
        fb::ConflictKind::Key => Ok(ConflictInfo::Key {
            record_index: conflict.record_index(),
            condition: decode_condition(conflict.condition())?,
            current_offset: conflict.current_offset().map(Offset),
        }),
        fb::ConflictKind(value) => Err(Violation::UnknownEnumValue {
            enum_name: "ConflictKind",
            value: u16::from(value),
        }),
    }
}

impl Encoder {
    /// Encodes `response` as one flatbuffer (no length prefix); the bytes live until the
    /// next call.
    pub fn encode_response(&mut self, response: &Response<'_>) -> &[u8] {
        self.builder.reset();
        let (body_type, body) = self.encode_response_body(&response.body);
        let root = fb::Response::create(
            &mut self.builder,
            &fb::ResponseArgs {
                correlation_id: response.correlation_id,
                body_type,
                body: Some(body),
            },
        );
        self.builder.finish_minimal(root);
        self.builder.finished_data()
    }

    /// Appends `response` to `out` as one frame: length, then flatbuffer.
    pub fn write_response_frame(&mut self, response: &Response<'_>, out: &mut impl BufMut) {
        write_frame(self.encode_response(response), out);
    }

    fn encode_response_body(
        &mut self,
        body: &ResponseBody<'_>,
    ) -> (fb::ResponseBody, WIPOffset<UnionWIPOffset>) {
        match body {
            ResponseBody::Pong => {
                let pong = fb::Pong::create(&mut self.builder, &fb::PongArgs {});
                (fb::ResponseBody::Pong, pong.as_union_value())
            }
            ResponseBody::TopicCreated(topic) => {
                let topic = self.encode_topic_metadata(topic);
                let args = fb::TopicCreatedArgs { topic: Some(topic) };
                let created = fb::TopicCreated::create(&mut self.builder, &args);
                (fb::ResponseBody::TopicCreated, created.as_union_value())
            }
            ResponseBody::TopicAltered(topic) => {
                let topic = self.encode_topic_metadata(topic);
                let args = fb::TopicAlteredArgs { topic: Some(topic) };
                let altered = fb::TopicAltered::create(&mut self.builder, &args);
                (fb::ResponseBody::TopicAltered, altered.as_union_value())
            }
            ResponseBody::Metadata(metadata) => {
                let topics: Vec<_> = metadata
                    .topics
                    .iter()
                    .map(|topic| self.encode_topic_metadata(topic))
                    .collect();
                let topics = self.builder.create_vector(&topics);
                let shard_ports = self.builder.create_vector(&metadata.shard_ports);
                let args = fb::MetadataResultArgs {
                    shard_ports: Some(shard_ports),
                    topics: Some(topics),
                };
                let result = fb::MetadataResult::create(&mut self.builder, &args);
                (fb::ResponseBody::MetadataResult, result.as_union_value())
            }
            ResponseBody::Appended(appended) => {
                let args = fb::AppendedArgs {
                    partition: appended.partition,
                    base_offset: appended.base_offset.0,
                    record_count: appended.record_count,
                    duplicate: appended.duplicate,
                };
                let appended = fb::Appended::create(&mut self.builder, &args);
                (fb::ResponseBody::Appended, appended.as_union_value())
            }
            ResponseBody::Fetched(fetched) => {
                let records = self.encode_record_outs(fetched.records);
                let args = fb::FetchedArgs {
                    partition: fetched.partition,
                    records,
                    synced_end: fetched.synced_end.0,
                };
                let fetched = fb::Fetched::create(&mut self.builder, &args);
                (fb::ResponseBody::Fetched, fetched.as_union_value())
            }
            ResponseBody::KeyRecord(found) => {
                let record = found.record.map(|record| self.encode_record_out(record));
                let args = fb::KeyRecordArgs {
                    partition: found.partition,
                    record,
                };
                let found = fb::KeyRecord::create(&mut self.builder, &args);
                (fb::ResponseBody::KeyRecord, found.as_union_value())
            }
            ResponseBody::KeyHistory(history) => {
                let records = self.encode_record_outs(history.records);
                let args = fb::KeyHistoryResultArgs {
                    partition: history.partition,
                    records,
                    next_offset: history.next_offset,
                };
                let history = fb::KeyHistoryResult::create(&mut self.builder, &args);
                (fb::ResponseBody::KeyHistoryResult, history.as_union_value())
            }
            ResponseBody::Error(error) => {
                debug_assert_eq!(
                    error.conflict.is_some(),
                    error.code == ErrorCode::Conflict,
                    "conflict details go with code Conflict and only with it: {error:?}"
                );
                debug_assert_eq!(
                    error.log_start.is_some(),
                    error.code == ErrorCode::OffsetBeforeLogStart,
                    "a log start goes with code OffsetBeforeLogStart and only with it: {error:?}"
                );
                let error = self.encode_error(error);
                (fb::ResponseBody::ErrorResponse, error.as_union_value())
            }
            ResponseBody::ProducerInitialized(initialized) => {
                let args = fb::ProducerInitializedArgs {
                    producer_id: initialized.producer_id,
                    epoch: initialized.epoch,
                };
                let initialized = fb::ProducerInitialized::create(&mut self.builder, &args);
                (
                    fb::ResponseBody::ProducerInitialized,
                    initialized.as_union_value(),
                )
            }
            ResponseBody::OffsetsCommitted => {
                let committed =
                    fb::OffsetsCommitted::create(&mut self.builder, &fb::OffsetsCommittedArgs {});
                (
                    fb::ResponseBody::OffsetsCommitted,
                    committed.as_union_value(),
                )
            }
            ResponseBody::CommittedOffsets(entries) => {
                let builder = &mut self.builder;
                let entries: Vec<_> = entries
                    .iter()
                    .map(|entry| {
                        let metadata = builder.create_string(entry.metadata);
                        let args = fb::CommittedOffsetArgs {
                            partition: entry.partition,
                            offset: entry.offset,
                            metadata: Some(metadata),
                        };
                        fb::CommittedOffset::create(builder, &args)
                    })
                    .collect();
                let partitions = builder.create_vector(&entries);
                let args = fb::CommittedOffsetsArgs {
                    partitions: Some(partitions),
                };
                let committed = fb::CommittedOffsets::create(builder, &args);
                (
                    fb::ResponseBody::CommittedOffsets,
                    committed.as_union_value(),
                )
            }
            ResponseBody::BackupManifest(manifest) => {
                let builder = &mut self.builder;
                let shards: Vec<_> = manifest
                    .shards
                    .iter()
                    .map(|shard| {
                        let segments: Vec<_> = shard
                            .segments
                            .iter()
                            .map(|segment| {
                                fb::BackupSegment::new(
                                    segment.segment_index,
                                    segment.length_bytes,
                                    segment.size_bytes,
                                )
                            })
                            .collect();
                        let segments = builder.create_vector(&segments);
                        let partitions: Vec<_> = shard
                            .partitions
                            .iter()
                            .map(|end| {
                                fb::BackupPartitionEnd::new(end.partition_id.0, end.end_offset.0)
                            })
                            .collect();
                        let partitions = builder.create_vector(&partitions);
                        let args = fb::BackupShardArgs {
                            shard: shard.shard.0,
                            segments: Some(segments),
                            producer_id_counter_end: shard.producer_id_counter_end,
                            partitions: Some(partitions),
                        };
                        fb::BackupShard::create(builder, &args)
                    })
                    .collect();
                let shards = builder.create_vector(&shards);
                let topics_meta = builder.create_string(manifest.topics_meta);
                let args = fb::BackupManifestArgs {
                    shard_count: manifest.shard_count,
                    shards: Some(shards),
                    topics_meta: Some(topics_meta),
                };
                let manifest = fb::BackupManifest::create(builder, &args);
                (fb::ResponseBody::BackupManifest, manifest.as_union_value())
            }
            ResponseBody::BackupChunk(bytes) => {
                let bytes = self.builder.create_vector(bytes);
                let args = fb::BackupChunkArgs { bytes: Some(bytes) };
                let chunk = fb::BackupChunk::create(&mut self.builder, &args);
                (fb::ResponseBody::BackupChunk, chunk.as_union_value())
            }
        }
    }

    fn encode_topic_metadata(
        &mut self,
        topic: &TopicMetadata<'_>,
    ) -> WIPOffset<fb::TopicMetadata<'static>> {
        let builder = &mut self.builder;
        // Metadata is rare and small: a Vec per topic is fine here.
        let partitions: Vec<_> = topic
            .partitions
            .iter()
            .map(|partition| {
                let args = fb::PartitionMetadataArgs {
                    partition: partition.partition,
                    partition_id: partition.partition_id.0,
                    shard: partition.shard.0,
                    port: partition.port,
                };
                fb::PartitionMetadata::create(builder, &args)
            })
            .collect();
        let partitions = builder.create_vector(&partitions);
        let name = builder.create_string(topic.name);
        let args = fb::TopicMetadataArgs {
            name: Some(name),
            partitions: Some(partitions),
            retention_ms: topic.retention.ms,
            retention_bytes: topic.retention.bytes,
        };
        fb::TopicMetadata::create(builder, &args)
    }

    fn encode_record_outs(
        &mut self,
        records: RecordOutList<'_>,
    ) -> Option<WIPOffset<Vector<'static, ForwardsUOffset<fb::RecordOut<'static>>>>> {
        if records.is_empty() {
            return None;
        }
        // `record_out_offsets` is taken out and put back so `encode_record_out` can borrow
        // `self` meanwhile; the Vec keeps its capacity.
        let mut offsets = std::mem::take(&mut self.record_out_offsets);
        offsets.clear();
        for record in records.iter() {
            offsets.push(self.encode_record_out(record));
        }
        let vector = self.builder.create_vector(&offsets);
        self.record_out_offsets = offsets;
        Some(vector)
    }

    fn encode_record_out(&mut self, record: RecordOut<'_>) -> WIPOffset<fb::RecordOut<'static>> {
        let Encoder {
            builder,
            header_offsets,
            ..
        } = self;
        let key = encode_bytes(builder, record.key);
        let value = encode_bytes(builder, record.value);
        let headers = encode_headers(builder, header_offsets, record.headers.iter());
        let args = fb::RecordOutArgs {
            offset: record.offset.0,
            timestamp_ms: record.timestamp_ms,
            key,
            value,
            headers,
            prev_key_offset: record.prev_key_offset.map(|offset| offset.0),
        };
        fb::RecordOut::create(builder, &args)
    }

    fn encode_error(&mut self, error: &ErrorResponse<'_>) -> WIPOffset<fb::ErrorResponse<'static>> {
        let builder = &mut self.builder;
        let conflict = error.conflict.map(|conflict| {
            let args = match conflict {
                ConflictInfo::EndOffset { current_end_offset } => fb::ConflictInfoArgs {
                    kind: fb::ConflictKind::EndOffset,
                    record_index: 0,
                    condition: None,
                    current_offset: Some(current_end_offset.0),
                },
                ConflictInfo::Key {
                    record_index,
                    condition,
                    current_offset,
                } => fb::ConflictInfoArgs {
                    kind: fb::ConflictKind::Key,
                    record_index,
                    condition: encode_condition(builder, condition),
                    current_offset: current_offset.map(|offset| offset.0),
                },
            };
            fb::ConflictInfo::create(builder, &args)
        });
        let message = (!error.message.is_empty()).then(|| builder.create_string(error.message));
        let args = fb::ErrorResponseArgs {
            code: error.code.to_fb(),
            message,
            conflict,
            log_start: error.log_start.map(|offset| offset.0),
        };
        fb::ErrorResponse::create(builder, &args)
    }
}

#[cfg(test)]
mod tests {
    use flatbuffers::FlatBufferBuilder;
    use proptest::prelude::*;

    use super::*;
    use crate::fuzz::fuzz_decode_response;

    fn encode(response: &Response<'_>) -> Vec<u8> {
        Encoder::new().encode_response(response).to_vec()
    }

    fn round_trip(response: &Response<'_>) {
        let frame = encode(response);
        assert_eq!(decode_response(&frame).as_ref(), Ok(response));
    }

    fn violation(frame: &[u8]) -> Violation {
        match decode_response(frame) {
            Err(WireError::Invalid { violation, .. }) => violation,
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    const HEADERS: [RecordHeader<'static>; 2] = [
        RecordHeader {
            name: b"event-type",
            value: b"SeatBooked",
        },
        RecordHeader {
            name: b"",
            value: b"",
        },
    ];

    fn records() -> [RecordOut<'static>; 3] {
        [
            RecordOut {
                offset: Offset(10),
                timestamp_ms: 1_700_000_000_000,
                key: b"seat-12A",
                value: b"booked",
                headers: HeaderList::from_slice(&HEADERS),
                prev_key_offset: Some(Offset(3)),
            },
            RecordOut {
                offset: Offset(11),
                timestamp_ms: 0,
                key: b"",
                value: b"",
                headers: HeaderList::default(),
                prev_key_offset: None,
            },
            RecordOut {
                offset: Offset(12),
                timestamp_ms: u64::MAX,
                key: b"seat-12B",
                value: &[0, 255],
                headers: HeaderList::from_slice(&HEADERS[..1]),
                prev_key_offset: Some(Offset(0)),
            },
        ]
    }

    fn topic() -> TopicMetadata<'static> {
        TopicMetadata {
            name: "seats",
            partitions: vec![
                PartitionMetadata {
                    partition: 0,
                    partition_id: PartitionId(4),
                    shard: ShardId(0),
                    port: 9000,
                },
                PartitionMetadata {
                    partition: 1,
                    partition_id: PartitionId(5),
                    shard: ShardId(1),
                    port: 9001,
                },
            ],
            retention: RetentionPolicy::FOREVER,
        }
    }

    #[test]
    fn every_response_kind_round_trips() {
        let records = records();
        let bodies = [
            ResponseBody::Pong,
            ResponseBody::TopicCreated(topic()),
            ResponseBody::TopicAltered(TopicMetadata {
                retention: RetentionPolicy {
                    ms: Some(86_400_000),
                    bytes: Some(1 << 30),
                },
                ..topic()
            }),
            ResponseBody::TopicAltered(TopicMetadata {
                retention: RetentionPolicy {
                    ms: None,
                    bytes: Some(1),
                },
                ..topic()
            }),
            ResponseBody::Metadata(MetadataResult {
                shard_ports: vec![],
                topics: vec![],
            }),
            ResponseBody::Metadata(MetadataResult {
                shard_ports: vec![9000, 9001],
                topics: vec![
                    topic(),
                    TopicMetadata {
                        name: "empty",
                        partitions: vec![],
                        retention: RetentionPolicy::FOREVER,
                    },
                ],
            }),
            ResponseBody::Appended(Appended {
                partition: 3,
                base_offset: Offset(1 << 50),
                record_count: 65_536,
                duplicate: false,
            }),
            ResponseBody::Appended(Appended {
                partition: 0,
                base_offset: Offset(7),
                record_count: 1,
                duplicate: true,
            }),
            ResponseBody::ProducerInitialized(ProducerInitialized {
                producer_id: i64::MAX,
                epoch: i16::MAX,
            }),
            ResponseBody::OffsetsCommitted,
            ResponseBody::CommittedOffsets(vec![
                CommittedOffset {
                    partition: 0,
                    offset: Some(42),
                    metadata: "checkpoint",
                },
                CommittedOffset {
                    partition: 3,
                    offset: None,
                    metadata: "",
                },
            ]),
            ResponseBody::Fetched(Fetched {
                partition: 1,
                records: RecordOutList::from_slice(&records),
                synced_end: Offset(13),
            }),
            ResponseBody::Fetched(Fetched {
                partition: 0,
                records: RecordOutList::default(),
                synced_end: Offset(0),
            }),
            ResponseBody::KeyRecord(KeyRecord {
                partition: 2,
                record: Some(records[0]),
            }),
            ResponseBody::KeyRecord(KeyRecord {
                partition: 2,
                record: None,
            }),
            ResponseBody::KeyHistory(KeyHistoryResult {
                partition: 5,
                records: RecordOutList::from_slice(&records[..2]),
                next_offset: Some(3),
            }),
            ResponseBody::Error(ErrorResponse {
                code: ErrorCode::Conflict,
                message: "record 1: key seat-12A is at 7, not 5",
                conflict: Some(ConflictInfo::Key {
                    record_index: 1,
                    condition: KeyCondition::At(Offset(5)),
                    current_offset: Some(Offset(7)),
                }),
                log_start: None,
            }),
            ResponseBody::Error(ErrorResponse {
                code: ErrorCode::Conflict,
                message: "",
                conflict: Some(ConflictInfo::Key {
                    record_index: 0,
                    condition: KeyCondition::KeyExists,
                    current_offset: None,
                }),
                log_start: None,
            }),
            ResponseBody::Error(ErrorResponse {
                code: ErrorCode::Conflict,
                message: "expected end 4, partition ends at 9",
                conflict: Some(ConflictInfo::EndOffset {
                    current_end_offset: Offset(9),
                }),
                log_start: None,
            }),
            ResponseBody::BackupManifest(BackupManifest {
                shard_count: 2,
                shards: vec![
                    BackupShard {
                        shard: ShardId(0),
                        segments: vec![
                            BackupSegment {
                                segment_index: 0,
                                length_bytes: 2 * 1024 * 1024,
                                size_bytes: 2 * 1024 * 1024,
                            },
                            BackupSegment {
                                segment_index: 1,
                                length_bytes: 8192,
                                size_bytes: 2 * 1024 * 1024,
                            },
                        ],
                        producer_id_counter_end: 1024,
                        partitions: vec![BackupPartitionEnd {
                            partition_id: PartitionId(0),
                            end_offset: Offset(u64::MAX),
                        }],
                    },
                    BackupShard {
                        shard: ShardId(1),
                        segments: Vec::new(),
                        producer_id_counter_end: 0,
                        partitions: Vec::new(),
                    },
                ],
                topics_meta: "topic seats 2 0\n",
            }),
            ResponseBody::BackupChunk(b"CAIRNSEG\0\x01"),
            ResponseBody::BackupChunk(b""),
        ];
        for (correlation_id, body) in (0..).zip(bodies) {
            round_trip(&Response {
                correlation_id,
                body,
            });
        }
        for code in ErrorCode::ALL
            .into_iter()
            .filter(|code| *code != ErrorCode::Conflict)
        {
            round_trip(&Response {
                correlation_id: u64::MAX,
                body: ResponseBody::Error(ErrorResponse {
                    code,
                    message: "why",
                    conflict: None,
                    log_start: (code == ErrorCode::OffsetBeforeLogStart).then_some(Offset(42)),
                }),
            });
        }
    }

    #[test]
    fn error_codes_cover_the_schema() {
        let from_schema: Vec<ErrorCode> = fb::ErrorCode::ENUM_VALUES
            .iter()
            .map(|code| ErrorCode::from_fb(*code).unwrap())
            .collect();
        assert_eq!(from_schema, ErrorCode::ALL);
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_fb(code.to_fb()), Ok(code));
        }
    }

    #[test]
    fn decoded_records_borrow_from_the_frame() {
        let records = records();
        let response = Response {
            correlation_id: 1,
            body: ResponseBody::Fetched(Fetched {
                partition: 1,
                records: RecordOutList::from_slice(&records),
                synced_end: Offset(13),
            }),
        };
        let frame = encode(&response);
        let Ok(Response {
            body: ResponseBody::Fetched(fetched),
            ..
        }) = decode_response(&frame)
        else {
            panic!("fetched did not decode");
        };
        assert_eq!(fetched.records.len(), 3);
        let first = fetched.records.iter().next().unwrap();
        assert!(frame.as_ptr_range().contains(&first.value.as_ptr()));
        let headers: Vec<_> = first.headers.iter().collect();
        assert_eq!(headers, HEADERS);
    }

    /// An ErrorResponse written by hand, to break rules the encoder keeps.
    fn error_frame(
        code: fb::ErrorCode,
        conflict: Option<(fb::ConflictKind, Option<u64>)>,
    ) -> Vec<u8> {
        let mut builder = FlatBufferBuilder::new();
        let conflict = conflict.map(|(kind, current_offset)| {
            fb::ConflictInfo::create(
                &mut builder,
                &fb::ConflictInfoArgs {
                    kind,
                    current_offset,
                    ..fb::ConflictInfoArgs::default()
                },
            )
        });
        let error = fb::ErrorResponse::create(
            &mut builder,
            &fb::ErrorResponseArgs {
                code,
                message: None,
                conflict,
                log_start: None,
            },
        );
        let response = fb::Response::create(
            &mut builder,
            &fb::ResponseArgs {
                correlation_id: 8,
                body_type: fb::ResponseBody::ErrorResponse,
                body: Some(error.as_union_value()),
            },
        );
        builder.finish_minimal(response);
        builder.finished_data().to_vec()
    }

    #[test]
    fn conflict_details_go_with_code_conflict_only() {
        assert_eq!(
            violation(&error_frame(fb::ErrorCode::Conflict, None)),
            Violation::MissingField {
                field: "ErrorResponse.conflict"
            }
        );
        assert_eq!(
            violation(&error_frame(
                fb::ErrorCode::Overloaded,
                Some((fb::ConflictKind::Key, None))
            )),
            Violation::UnexpectedField {
                field: "ErrorResponse.conflict",
                context: "unless code is Conflict"
            }
        );
        assert_eq!(
            violation(&error_frame(
                fb::ErrorCode::Conflict,
                Some((fb::ConflictKind::EndOffset, None))
            )),
            Violation::MissingField {
                field: "ConflictInfo.current_offset"
            }
        );
    }

    #[test]
    fn unknown_enum_values_in_responses_are_typed_errors() {
        assert_eq!(
            violation(&error_frame(
                fb::ErrorCode(fb::ErrorCode::ENUM_MAX + 1),
                None
            )),
            Violation::UnknownEnumValue {
                enum_name: "ErrorCode",
                value: fb::ErrorCode::ENUM_MAX + 1
            }
        );
        assert_eq!(
            violation(&error_frame(
                fb::ErrorCode::Conflict,
                Some((fb::ConflictKind(2), Some(1)))
            )),
            Violation::UnknownEnumValue {
                enum_name: "ConflictKind",
                value: 2
            }
        );
    }

    #[test]
    fn unknown_response_kind_is_a_typed_error() {
        let mut builder = FlatBufferBuilder::new();
        let pong = fb::Pong::create(&mut builder, &fb::PongArgs {});
        let response = fb::Response::create(
            &mut builder,
            &fb::ResponseArgs {
                correlation_id: 3,
                body_type: fb::ResponseBody(fb::ResponseBody::ENUM_MAX + 1),
                body: Some(pong.as_union_value()),
            },
        );
        builder.finish_minimal(response);
        let error = decode_response(builder.finished_data()).unwrap_err();
        assert_eq!(error.correlation_id(), Some(3));
        assert_eq!(
            error,
            WireError::Invalid {
                root: "Response",
                correlation_id: 3,
                violation: Violation::UnknownUnionType {
                    union_name: "ResponseBody",
                    type_value: fb::ResponseBody::ENUM_MAX + 1,
                },
            }
        );
    }

    #[test]
    fn bit_flipped_frames_decode_or_fail_without_panicking() {
        let records = records();
        let frames = [
            encode(&Response {
                correlation_id: 1,
                body: ResponseBody::Fetched(Fetched {
                    partition: 1,
                    records: RecordOutList::from_slice(&records),
                    synced_end: Offset(13),
                }),
            }),
            encode(&Response {
                correlation_id: 2,
                body: ResponseBody::Error(ErrorResponse {
                    code: ErrorCode::Conflict,
                    message: "m",
                    conflict: Some(ConflictInfo::Key {
                        record_index: 1,
                        condition: KeyCondition::At(Offset(5)),
                        current_offset: Some(Offset(7)),
                    }),
                    log_start: None,
                }),
            }),
            encode(&Response {
                correlation_id: 3,
                body: ResponseBody::Metadata(MetadataResult {
                    shard_ports: vec![9000, 9001],
                    topics: vec![topic()],
                }),
            }),
        ];
        for frame in frames {
            for bit in 0..frame.len() * 8 {
                let mut flipped = frame.clone();
                flipped[bit / 8] ^= 1 << (bit % 8);
                fuzz_decode_response(&flipped);
            }
            for len in 0..frame.len() {
                fuzz_decode_response(&frame[..len]);
            }
        }
    }

    type OwnedRecordOut = (
        u64,
        u64,
        Vec<u8>,
        Vec<u8>,
        Vec<(Vec<u8>, Vec<u8>)>,
        Option<u64>,
    );

    fn record_out_strategy() -> impl Strategy<Value = OwnedRecordOut> {
        let bytes = |len_max| prop::collection::vec(any::<u8>(), 0..len_max);
        (
            any::<u64>(),
            any::<u64>(),
            bytes(64),
            bytes(256),
            prop::collection::vec((bytes(16), bytes(32)), 0..4),
            proptest::option::of(any::<u64>()),
        )
    }

    /// The encoded size of a Fetched response holding `records`, and the bound the
    /// documented overheads give for it.
    fn fetched_size_and_bound(records: &[RecordOut<'_>]) -> (usize, usize) {
        let response = Response {
            correlation_id: u64::MAX,
            body: ResponseBody::Fetched(Fetched {
                partition: u32::MAX,
                records: RecordOutList::from_slice(records),
                synced_end: Offset(u64::MAX),
            }),
        };
        let bound = records
            .iter()
            .map(RecordOut::encoded_size_bytes_max)
            .sum::<usize>()
            + RECORDS_RESPONSE_OVERHEAD_SIZE_BYTES_MAX;
        (encode(&response).len(), bound)
    }

    #[test]
    fn encoded_size_stays_within_the_documented_bound() {
        let empty_header = [RecordHeader {
            name: b"",
            value: b"",
        }; RECORD_HEADER_COUNT_MAX];
        let record = |key: &'static [u8], value: &'static [u8], headers| RecordOut {
            offset: Offset(u64::MAX),
            timestamp_ms: u64::MAX,
            key,
            value,
            headers: HeaderList::from_slice(headers),
            prev_key_offset: Some(Offset(u64::MAX)),
        };
        // Shapes where the overhead weighs most: empty and 1-byte parts (every vector
        // padded), all headers empty, the optional field present or not, lists of one kind
        // (vtables shared) and mixed lists (alignment differing from record to record).
        let shapes = [
            record(b"", b"", &[]),
            record(b"k", b"v", &[]),
            record(b"ke", b"val", &empty_header[..1]),
            record(b"key", b"", &empty_header),
            RecordOut {
                prev_key_offset: None,
                ..record(b"k", b"", &[])
            },
        ];
        let (size_bytes, bound) = fetched_size_and_bound(&[]);
        assert!(size_bytes <= bound, "empty: {size_bytes} > {bound}");
        for shape in &shapes {
            for count in [1, 2, 3, 1000] {
                let records = vec![*shape; count];
                let (size_bytes, bound) = fetched_size_and_bound(&records);
                assert!(
                    size_bytes <= bound,
                    "{count} x {shape:?}: {size_bytes} > {bound}"
                );
            }
        }
        let mixed: Vec<RecordOut<'_>> = (0..1000).map(|index| shapes[index % 5]).collect();
        let (size_bytes, bound) = fetched_size_and_bound(&mixed);
        assert!(size_bytes <= bound, "mixed: {size_bytes} > {bound}");
        // And the bound is not wasteful: tiny records cost about 60 bytes each.
        let tiny = vec![shapes[1]; 1000];
        let (size_bytes, bound) = fetched_size_and_bound(&tiny);
        assert!(
            bound < size_bytes * 2,
            "tiny: {size_bytes} bytes, bound {bound}"
        );
    }

    #[test]
    fn a_single_record_of_a_whole_batch_fits_the_default_frame_limit() {
        // The largest record an append can make: one batch's worth of payload, all in the
        // value, with the most headers (whose names take their part of the payload).
        let names = vec![[b'n'; 256]; RECORD_HEADER_COUNT_MAX];
        let headers: Vec<RecordHeader<'_>> = names
            .iter()
            .map(|name| RecordHeader { name, value: b"" })
            .collect();
        let value = vec![7_u8; BATCH_SIZE_BYTES_MAX - 256 * RECORD_HEADER_COUNT_MAX];
        let record = RecordOut {
            offset: Offset(1),
            timestamp_ms: 2,
            key: b"",
            value: &value,
            headers: HeaderList::from_slice(&headers),
            prev_key_offset: Some(Offset(0)),
        };
        assert!(record.encoded_size_bytes_max() <= RECORD_OUT_SIZE_BYTES_MAX);
        let (size_bytes, bound) = fetched_size_and_bound(&[record]);
        assert!(size_bytes <= bound, "{size_bytes} > {bound}");
        assert!(size_bytes <= crate::FRAME_SIZE_BYTES_MAX_DEFAULT as usize);
    }

    proptest! {
        #[test]
        fn encoded_size_of_any_records_stays_within_the_bound(
            owned in prop::collection::vec(record_out_strategy(), 0..50),
        ) {
            let headers: Vec<Vec<RecordHeader<'_>>> = owned
                .iter()
                .map(|(.., headers, _)| {
                    headers.iter().map(|(name, value)| RecordHeader { name, value }).collect()
                })
                .collect();
            let records: Vec<RecordOut<'_>> = owned
                .iter()
                .zip(&headers)
                .map(|((offset, timestamp_ms, key, value, _, prev), headers)| RecordOut {
                    offset: Offset(*offset),
                    timestamp_ms: *timestamp_ms,
                    key,
                    value,
                    headers: HeaderList::from_slice(headers),
                    prev_key_offset: prev.map(Offset),
                })
                .collect();
            let (size_bytes, bound) = fetched_size_and_bound(&records);
            prop_assert!(size_bytes <= bound, "{} > {}", size_bytes, bound);
        }

        #[test]
        fn fetched_round_trips(
            correlation_id in any::<u64>(),
            partition in any::<u32>(),
            synced_end in any::<u64>(),
            owned in prop::collection::vec(record_out_strategy(), 0..50),
        ) {
            let headers: Vec<Vec<RecordHeader<'_>>> = owned
                .iter()
                .map(|(.., headers, _)| {
                    headers.iter().map(|(name, value)| RecordHeader { name, value }).collect()
                })
                .collect();
            let records: Vec<RecordOut<'_>> = owned
                .iter()
                .zip(&headers)
                .map(|((offset, timestamp_ms, key, value, _, prev), headers)| RecordOut {
                    offset: Offset(*offset),
                    timestamp_ms: *timestamp_ms,
                    key,
                    value,
                    headers: HeaderList::from_slice(headers),
                    prev_key_offset: prev.map(Offset),
                })
                .collect();
            let response = Response {
                correlation_id,
                body: ResponseBody::Fetched(Fetched {
                    partition,
                    records: RecordOutList::from_slice(&records),
                    synced_end: Offset(synced_end),
                }),
            };
            let frame = encode(&response);
            let decoded = decode_response(&frame);
            prop_assert_eq!(decoded.as_ref(), Ok(&response));
        }
    }
}
