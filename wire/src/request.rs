//! Requests: typed values, [`decode_request`], and the request half of [`Encoder`].
//!
//! A decoded request borrows its topic, keys, values and header bytes from the frame. An
//! append's records come out as [`RecordInput`]s, the engine's own type, so the server hands
//! them to the engine without copying a byte; only the small per-record structs and one list
//! of all the batch's headers are allocated.

use std::ops::Range;
use std::time::Duration;

use bytes::BufMut;
use cairn_engine::core::limits::{
    BATCH_RECORD_COUNT_MAX, BATCH_SIZE_BYTES_MAX, HEADER_NAME_SIZE_BYTES_MAX, KEY_SIZE_BYTES_MAX,
    RECORD_HEADER_COUNT_MAX,
};
use cairn_engine::core::record::BatchSize;
use cairn_engine::core::retention::RetentionPolicy;
use cairn_engine::core::{KeyCondition, Offset, ProducerStamp, RecordHeader, RecordInput, ShardId};
use flatbuffers::{FlatBufferBuilder, UnionWIPOffset, Vector, WIPOffset};

use super::encoder::Encoder;
use super::generated::cairn as fb;
use super::verify::{Violation, WireError, verifier_options};
use super::{
    NON_APPEND_FRAME_SIZE_BYTES_MAX, RouteError, TOPIC_NAME_SIZE_BYTES_MAX, partition_for_key,
    route, write_frame,
};

/// One client-to-server message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// Chosen by the client; the response carries it back.
    pub correlation_id: u64,
    /// What the client asks for.
    pub body: RequestBody<'a>,
}

/// What a request asks for. See the schema for each kind's contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestBody<'a> {
    /// Liveness check.
    Ping,
    /// Create a topic.
    CreateTopic(CreateTopicRequest<'a>),
    /// Topics, partitions, and which shard owns each.
    Metadata,
    /// Append a batch to one partition, atomically and conditionally.
    Append(AppendRequest<'a>),
    /// Read synced records from an offset on.
    Fetch(FetchRequest<'a>),
    /// Read a key's latest record.
    ReadKey(ReadKeyRequest<'a>),
    /// Read a key's records, newest first.
    KeyHistory(KeyHistoryRequest<'a>),
    /// Allocate a producer id for idempotent appends.
    InitProducer,
    /// Store a consumer group's offsets of a topic's partitions.
    CommitOffsets(CommitOffsetsRequest<'a>),
    /// Read a consumer group's committed offsets of a topic's partitions.
    FetchOffsets(FetchOffsetsRequest<'a>),
    /// Start an online backup: the backup point of every shard.
    BackupBegin,
    /// Read a range of one segment file of a shard's synced log, for a backup.
    BackupRead(BackupReadRequest),
    /// Change a topic's retention.
    AlterTopic(AlterTopicRequest<'a>),
}

/// Change a topic's retention, limit by limit: `None` leaves a limit as it is,
/// `Some(None)` removes it (keep forever; -1 on the wire), `Some(Some(n))` sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlterTopicRequest<'a> {
    /// The topic's name.
    pub name: &'a str,
    /// Kafka's `retention.ms`.
    pub retention_ms: Option<Option<u64>>,
    /// Kafka's `retention.bytes`.
    pub retention_bytes: Option<Option<u64>>,
}

/// Most bytes one BackupRead asks for.
pub const BACKUP_READ_SIZE_BYTES_MAX: u32 = 1024 * 1024;

/// Read `length_bytes` bytes at `position` of segment `segment_index` of shard `shard`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupReadRequest {
    /// The shard whose core log is read.
    pub shard: ShardId,
    /// The segment's index (its file name), never a path.
    pub segment_index: u64,
    /// Byte position in the segment file.
    pub position: u64,
    /// 1 to [`BACKUP_READ_SIZE_BYTES_MAX`].
    pub length_bytes: u32,
}

/// Store consumer group `group`'s offsets of partitions of `topic`, all or none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitOffsetsRequest<'a> {
    /// 1 to [`super::GROUP_ID_SIZE_BYTES_MAX`] bytes.
    pub group: &'a str,
    /// The topic's name.
    pub topic: &'a str,
    /// 1 to [`super::OFFSET_PARTITION_COUNT_MAX`] partitions.
    pub partitions: Vec<PartitionOffset<'a>>,
}

/// One partition's offset to commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionOffset<'a> {
    /// The partition within the topic.
    pub partition: u32,
    /// The next offset the group will read.
    pub offset: i64,
    /// At most [`super::OFFSET_METADATA_SIZE_BYTES_MAX`] bytes, returned as is.
    pub metadata: &'a str,
}

/// Read consumer group `group`'s committed offsets of partitions of `topic`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchOffsetsRequest<'a> {
    /// 1 to [`super::GROUP_ID_SIZE_BYTES_MAX`] bytes.
    pub group: &'a str,
    /// The topic's name.
    pub topic: &'a str,
    /// 1 to [`super::OFFSET_PARTITION_COUNT_MAX`] partition indexes.
    pub partitions: Vec<u32>,
}

/// Create a topic with a fixed number of partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreateTopicRequest<'a> {
    /// 1 to [`TOPIC_NAME_SIZE_BYTES_MAX`] bytes.
    pub name: &'a str,
    /// At least 1.
    pub partition_count: u32,
    /// What each partition keeps (`RetentionPolicy::FOREVER`: everything).
    pub retention: RetentionPolicy,
}

/// Append a batch of records to one partition: all of them, at consecutive offsets, or none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendRequest<'a> {
    /// The topic's name.
    pub topic: &'a str,
    /// The partition within the topic; `None` routes by the first record's key (see
    /// [`AppendRequest::route`]).
    pub partition: Option<u32>,
    /// When set, the partition's end offset must equal it (else a Conflict).
    pub expected_end_offset: Option<Offset>,
    /// 1 to `BATCH_RECORD_COUNT_MAX` records, in offset order.
    pub records: AppendRecords<'a>,
    /// Set for an idempotent append: a retry with the same stamp is answered with the
    /// original offsets instead of being appended again (the schema's ProducerStamp).
    pub producer: Option<ProducerStamp>,
}

impl AppendRequest<'_> {
    /// The partition this batch goes to in a topic of `partition_count` partitions: the
    /// named one if it exists, else the first record's key's ([`partition_for_key`]), which
    /// every other record's key must share.
    ///
    /// # Panics
    ///
    /// If `partition_count` is 0 (see [`partition_for_key`]).
    pub fn route(&self, partition_count: u32) -> Result<u32, RouteError> {
        let mut keys = self.records.iter().map(|record| record.key);
        let key_first = keys.next().unwrap_or_default();
        let partition_first = route(self.partition, key_first, partition_count)?;
        if self.partition.is_some() {
            return Ok(partition_first);
        }
        for (index, key) in keys.enumerate() {
            // Batches for one entity repeat its key; skip the hash for those.
            if key == key_first {
                continue;
            }
            let partition_record = partition_for_key(key, partition_count);
            if partition_record != partition_first {
                return Err(RouteError::KeysSpanPartitions {
                    record_index: index + 1,
                    partition_first,
                    partition_record,
                });
            }
        }
        Ok(partition_first)
    }
}

/// The records of an append: either borrowed from the caller (to encode) or decoded from a
/// frame. Either way [`iter`](Self::iter) yields the engine's [`RecordInput`]s; collect them
/// to pass the engine a `&[RecordInput]`.
#[derive(Clone)]
pub struct AppendRecords<'a> {
    repr: AppendRecordsRepr<'a>,
}

#[derive(Clone)]
enum AppendRecordsRepr<'a> {
    Inputs(&'a [RecordInput<'a>]),
    // A `RecordInput` borrows its headers as a slice, so decoded headers need an owner: one
    // list for the whole batch, which each record indexes into.
    Decoded {
        records: Vec<DecodedRecord<'a>>,
        headers: Vec<RecordHeader<'a>>,
    },
}

#[derive(Clone)]
struct DecodedRecord<'a> {
    key: &'a [u8],
    value: &'a [u8],
    condition: KeyCondition,
    headers: Range<usize>,
}

impl<'a> AppendRecords<'a> {
    /// Records to encode, borrowed as they are.
    #[must_use]
    pub fn from_inputs(inputs: &'a [RecordInput<'a>]) -> AppendRecords<'a> {
        AppendRecords {
            repr: AppendRecordsRepr::Inputs(inputs),
        }
    }

    /// How many records.
    #[must_use]
    pub fn len(&self) -> usize {
        match &self.repr {
            AppendRecordsRepr::Inputs(inputs) => inputs.len(),
            AppendRecordsRepr::Decoded { records, .. } => records.len(),
        }
    }

    /// True if there are no records (never for a decoded append).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The record at `index`, if there is one.
    #[must_use]
    pub fn get(&self, index: usize) -> Option<RecordInput<'_>> {
        match &self.repr {
            AppendRecordsRepr::Inputs(inputs) => inputs.get(index).copied(),
            AppendRecordsRepr::Decoded { records, headers } => {
                let record = records.get(index)?;
                let headers = headers
                    .get(record.headers.clone())
                    .expect("a decoded record's header range lies within the batch's headers");
                Some(RecordInput {
                    key: record.key,
                    value: record.value,
                    headers,
                    condition: record.condition,
                    ..RecordInput::default()
                })
            }
        }
    }

    /// The records in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = RecordInput<'_>> {
        (0..self.len()).map(|index| self.get(index).expect("every index below len has a record"))
    }
}

impl<'a> From<&'a [RecordInput<'a>]> for AppendRecords<'a> {
    fn from(inputs: &'a [RecordInput<'a>]) -> AppendRecords<'a> {
        AppendRecords::from_inputs(inputs)
    }
}

impl PartialEq for AppendRecords<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for AppendRecords<'_> {}

impl std::fmt::Debug for AppendRecords<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Read synced records of one partition from an offset on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchRequest<'a> {
    /// The topic's name.
    pub topic: &'a str,
    /// The partition within the topic.
    pub partition: u32,
    /// The first offset to return.
    pub offset: Offset,
    /// Soft limit on the records' bytes as the response encodes them
    /// ([`super::record_out_size_bytes_max`]); at least one record comes back if any is
    /// available.
    pub size_bytes_max: u32,
    /// How long to wait for a record when none is available. Travels in whole milliseconds
    /// (truncated, and capped at `u32::MAX` ms).
    pub wait_max: Duration,
}

/// Read a key's latest record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadKeyRequest<'a> {
    /// The topic's name.
    pub topic: &'a str,
    /// The partition within the topic; `None` routes by `key` ([`super::route`]).
    pub partition: Option<u32>,
    /// At most `KEY_SIZE_BYTES_MAX` bytes.
    pub key: &'a [u8],
    /// Also consider appended records that are not synced yet.
    pub include_appended: bool,
}

/// Read a key's synced records, newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyHistoryRequest<'a> {
    /// The topic's name.
    pub topic: &'a str,
    /// The partition within the topic; `None` routes by `key` ([`super::route`]).
    pub partition: Option<u32>,
    /// At most `KEY_SIZE_BYTES_MAX` bytes.
    pub key: &'a [u8],
    /// Most records to return.
    pub record_count_max: u32,
    /// Start at this record of the key (a previous answer's `next_offset`) instead of at
    /// its latest synced one.
    pub from_offset: Option<u64>,
}

const ROOT: &str = "Request";

/// Decodes one frame (the flatbuffer, without its length) from a client.
///
/// Verifies the whole buffer first (see `verify.rs`), then checks the frame's size against
/// its kind's limit (only appends may exceed [`NON_APPEND_FRAME_SIZE_BYTES_MAX`]), then the
/// protocol's rules and the engine's limits. Never panics; the result borrows from `frame`.
pub fn decode_request(frame: &[u8]) -> Result<Request<'_>, WireError> {
    let request = fb::root_as_request_with_opts(&verifier_options(frame.len()), frame).map_err(
        |invalid| WireError::Malformed {
            root: ROOT,
            frame_size_bytes: frame.len(),
            invalid,
        },
    )?;
    let correlation_id = request.correlation_id();
    let invalid = |violation| WireError::Invalid {
        root: ROOT,
        correlation_id,
        violation,
    };
    check_frame_size(request.body_type(), frame.len()).map_err(invalid)?;
    let body = decode_body(&request).map_err(invalid)?;
    Ok(Request {
        correlation_id,
        body,
    })
}

/// Refuses a frame over its kind's limit. Kinds this version does not know are left to
/// `decode_body`, which answers them with `UnsupportedRequest` whatever their size.
fn check_frame_size(body_type: fb::RequestBody, frame_size_bytes: usize) -> Result<(), Violation> {
    let frame_size_bytes_max = NON_APPEND_FRAME_SIZE_BYTES_MAX as usize;
    if frame_size_bytes <= frame_size_bytes_max || body_type == fb::RequestBody::Append {
        return Ok(());
    }
    let request_kind = match body_type {
        fb::RequestBody::Ping => "Ping",
        fb::RequestBody::CreateTopic => "CreateTopic",
        fb::RequestBody::Metadata => "Metadata",
        fb::RequestBody::Fetch => "Fetch",
        fb::RequestBody::ReadKey => "ReadKey",
        fb::RequestBody::KeyHistory => "KeyHistory",
        fb::RequestBody::InitProducer => "InitProducer",
        fb::RequestBody::CommitOffsets => "CommitOffsets",
        fb::RequestBody::FetchOffsets => "FetchOffsets",
        fb::RequestBody::BackupBegin => "BackupBegin",
        fb::RequestBody::BackupRead => "BackupRead",
        fb::RequestBody::AlterTopic => "AlterTopic",
        _ => return Ok(()),
    };
    Err(Violation::FrameTooLarge {
        request_kind,
        frame_size_bytes,
        frame_size_bytes_max,
    })
}

fn decode_body<'a>(request: &fb::Request<'a>) -> Result<RequestBody<'a>, Violation> {
    // The verifier rejects a union type without its value, so the `ok_or`s below only guard
    // against a verifier bug.
    let missing = Violation::MissingField {
        field: "Request.body",
    };
    Ok(match request.body_type() {
        fb::RequestBody::NONE => return Err(missing),
        fb::RequestBody::Ping => {
            request.body_as_ping().ok_or(missing)?;
            RequestBody::Ping
        }
        fb::RequestBody::CreateTopic => {
            let create = request.body_as_create_topic().ok_or(missing)?;
            RequestBody::CreateTopic(decode_create_topic(create)?)
        }
        fb::RequestBody::Metadata => {
            request.body_as_metadata().ok_or(missing)?;
            RequestBody::Metadata
        }
        fb::RequestBody::Append => {
            RequestBody::Append(decode_append(request.body_as_append().ok_or(missing)?)?)
        }
        fb::RequestBody::Fetch => {
            RequestBody::Fetch(decode_fetch(request.body_as_fetch().ok_or(missing)?)?)
        }
        fb::RequestBody::ReadKey => {
            RequestBody::ReadKey(decode_read_key(request.body_as_read_key().ok_or(missing)?)?)
        }
        fb::RequestBody::KeyHistory => {
            let history = request.body_as_key_history().ok_or(missing)?;
            RequestBody::KeyHistory(decode_key_history(history)?)
        }
        fb::RequestBody::InitProducer => {
            request.body_as_init_producer().ok_or(missing)?;
            RequestBody::InitProducer
        }
        fb::RequestBody::CommitOffsets => {
            let commit = request.body_as_commit_offsets().ok_or(missing)?;
            RequestBody::CommitOffsets(decode_commit_offsets(commit)?)
        }
        fb::RequestBody::FetchOffsets => {
            let fetch = request.body_as_fetch_offsets().ok_or(missing)?;
            RequestBody::FetchOffsets(decode_fetch_offsets(fetch)?)
        }
        fb::RequestBody::BackupBegin => {
            request.body_as_backup_begin().ok_or(missing)?;
            RequestBody::BackupBegin
        }
        fb::RequestBody::BackupRead => {
            let read = request.body_as_backup_read().ok_or(missing)?;
            RequestBody::BackupRead(decode_backup_read(read)?)
        }
        fb::RequestBody::AlterTopic => {
            let alter = request.body_as_alter_topic().ok_or(missing)?;
            RequestBody::AlterTopic(decode_alter_topic(alter)?)
        }
        fb::RequestBody(type_value) => {
            return Err(Violation::UnknownUnionType {
                union_name: "RequestBody",
                type_value,
            });
        }
    })
}

fn decode_create_topic(create: fb::CreateTopic<'_>) -> Result<CreateTopicRequest<'_>, Violation> {
    let name = checked_topic(create.name())?;
    let partition_count = create.partition_count();
    if partition_count == 0 {
        return Err(Violation::PartitionCountZero);
    }
    Ok(CreateTopicRequest {
        name,
        partition_count,
        retention: RetentionPolicy {
            ms: create.retention_ms(),
            bytes: create.retention_bytes(),
        },
    })
}

fn decode_alter_topic(alter: fb::AlterTopic<'_>) -> Result<AlterTopicRequest<'_>, Violation> {
    let name = checked_topic(alter.name())?;
    Ok(AlterTopicRequest {
        name,
        retention_ms: decode_retention_change("AlterTopic.retention_ms", alter.retention_ms())?,
        retention_bytes: decode_retention_change(
            "AlterTopic.retention_bytes",
            alter.retention_bytes(),
        )?,
    })
}

/// -1 removes a limit; 0 passes through for the server to refuse as an invalid setting
/// (`InvalidConfig`), as CreateTopic's 0 does.
fn decode_retention_change(
    field: &'static str,
    value: Option<i64>,
) -> Result<Option<Option<u64>>, Violation> {
    match value {
        None => Ok(None),
        Some(-1) => Ok(Some(None)),
        Some(value) => u64::try_from(value)
            .map(|limit| Some(Some(limit)))
            .map_err(|_| Violation::RetentionNegative { field, value }),
    }
}

fn encode_retention_change(limit: Option<Option<u64>>) -> Option<i64> {
    limit.map(|limit| limit.map_or(-1, |value| i64::try_from(value).unwrap_or(i64::MAX)))
}

fn decode_append(append: fb::Append<'_>) -> Result<AppendRequest<'_>, Violation> {
    let topic = checked_topic(append.topic())?;
    let fb_records = append.records();
    let record_count = fb_records.len();
    if record_count == 0 {
        return Err(Violation::BatchEmpty);
    }
    if record_count > BATCH_RECORD_COUNT_MAX {
        return Err(Violation::BatchRecordCountTooLarge {
            record_count,
            record_count_max: BATCH_RECORD_COUNT_MAX,
        });
    }
    // Both lists are bounded by the frame: the verifier has seen every record and header in
    // it, and each takes at least 4 bytes.
    let mut records = Vec::with_capacity(record_count);
    let mut headers = Vec::new();
    let mut batch_size = BatchSize::new();
    for (record_index, record) in fb_records.iter().enumerate() {
        let key = bytes_or_empty(record.key());
        if key.len() > KEY_SIZE_BYTES_MAX {
            return Err(Violation::RecordKeyTooLong {
                record_index,
                key_size_bytes: key.len(),
                key_size_bytes_max: KEY_SIZE_BYTES_MAX,
            });
        }
        let value = bytes_or_empty(record.value());
        batch_size.add_record(key.len(), value.len());
        let headers_start = headers.len();
        if let Some(fb_headers) = record.headers() {
            let header_count = fb_headers.len();
            if header_count > RECORD_HEADER_COUNT_MAX {
                return Err(Violation::HeaderCountTooLarge {
                    record_index,
                    header_count,
                    header_count_max: RECORD_HEADER_COUNT_MAX,
                });
            }
            for (header_index, header) in fb_headers.iter().enumerate() {
                let name = header.name().bytes();
                if name.len() > HEADER_NAME_SIZE_BYTES_MAX {
                    return Err(Violation::HeaderNameTooLong {
                        record_index,
                        header_index,
                        name_size_bytes: name.len(),
                        name_size_bytes_max: HEADER_NAME_SIZE_BYTES_MAX,
                    });
                }
                let value = bytes_or_empty(header.value());
                batch_size.add_header(name.len(), value.len());
                headers.push(RecordHeader { name, value });
            }
        }
        let condition = decode_condition(record.condition())?;
        records.push(DecodedRecord {
            key,
            value,
            condition,
            headers: headers_start..headers.len(),
        });
    }
    // The engine's own definition, checked once here: the engine finds the same number.
    if batch_size.is_too_large() {
        return Err(Violation::BatchTooLarge {
            batch_size_bytes: batch_size.bytes(),
            batch_size_bytes_max: BATCH_SIZE_BYTES_MAX,
        });
    }
    Ok(AppendRequest {
        topic,
        partition: append.partition(),
        expected_end_offset: append.expected_end_offset().map(Offset),
        records: AppendRecords {
            repr: AppendRecordsRepr::Decoded { records, headers },
        },
        producer: append.producer().map(decode_producer).transpose()?,
    })
}

fn decode_producer(stamp: fb::ProducerStamp<'_>) -> Result<ProducerStamp, Violation> {
    let (producer_id, epoch, base_sequence) =
        (stamp.producer_id(), stamp.epoch(), stamp.base_sequence());
    if producer_id < 0 || epoch < 0 || base_sequence < 0 {
        return Err(Violation::ProducerStampNegative {
            producer_id,
            epoch,
            base_sequence,
        });
    }
    Ok(ProducerStamp {
        producer_id,
        epoch,
        base_sequence,
    })
}

fn decode_fetch(fetch: fb::Fetch<'_>) -> Result<FetchRequest<'_>, Violation> {
    Ok(FetchRequest {
        topic: checked_topic(fetch.topic())?,
        partition: fetch.partition(),
        offset: Offset(fetch.offset()),
        size_bytes_max: fetch.size_bytes_max(),
        wait_max: Duration::from_millis(u64::from(fetch.wait_ms_max())),
    })
}

fn decode_read_key(read: fb::ReadKey<'_>) -> Result<ReadKeyRequest<'_>, Violation> {
    Ok(ReadKeyRequest {
        topic: checked_topic(read.topic())?,
        partition: read.partition(),
        key: checked_key(bytes_or_empty(read.key()))?,
        include_appended: read.include_appended(),
    })
}

fn decode_commit_offsets(
    commit: fb::CommitOffsets<'_>,
) -> Result<CommitOffsetsRequest<'_>, Violation> {
    let entries = commit.partitions();
    checked_offset_partition_count(entries.len())?;
    let mut partitions = Vec::with_capacity(entries.len());
    for entry in entries {
        let metadata = entry.metadata().unwrap_or_default();
        if metadata.len() > super::OFFSET_METADATA_SIZE_BYTES_MAX {
            return Err(Violation::OffsetMetadataTooLong {
                partition: entry.partition(),
                metadata_size_bytes: metadata.len(),
                metadata_size_bytes_max: super::OFFSET_METADATA_SIZE_BYTES_MAX,
            });
        }
        partitions.push(PartitionOffset {
            partition: entry.partition(),
            offset: entry.offset(),
            metadata,
        });
    }
    Ok(CommitOffsetsRequest {
        group: checked_group(commit.group())?,
        topic: checked_topic(commit.topic())?,
        partitions,
    })
}

fn decode_fetch_offsets(fetch: fb::FetchOffsets<'_>) -> Result<FetchOffsetsRequest<'_>, Violation> {
    let partitions = fetch.partitions();
    checked_offset_partition_count(partitions.len())?;
    Ok(FetchOffsetsRequest {
        group: checked_group(fetch.group())?,
        topic: checked_topic(fetch.topic())?,
        partitions: partitions.iter().collect(),
    })
}

fn decode_backup_read(read: fb::BackupRead<'_>) -> Result<BackupReadRequest, Violation> {
    let length_bytes = read.length_bytes();
    if length_bytes == 0 || length_bytes > BACKUP_READ_SIZE_BYTES_MAX {
        return Err(Violation::BackupReadLength {
            length_bytes,
            length_bytes_max: BACKUP_READ_SIZE_BYTES_MAX,
        });
    }
    Ok(BackupReadRequest {
        shard: ShardId(read.shard()),
        segment_index: read.segment_index(),
        position: read.position(),
        length_bytes,
    })
}

fn checked_group(group: &str) -> Result<&str, Violation> {
    if group.is_empty() {
        return Err(Violation::GroupIdEmpty);
    }
    if group.len() > super::GROUP_ID_SIZE_BYTES_MAX {
        return Err(Violation::GroupIdTooLong {
            group_id_size_bytes: group.len(),
            group_id_size_bytes_max: super::GROUP_ID_SIZE_BYTES_MAX,
        });
    }
    Ok(group)
}

fn checked_offset_partition_count(partition_count: usize) -> Result<(), Violation> {
    if partition_count == 0 {
        return Err(Violation::OffsetPartitionsEmpty);
    }
    if partition_count > super::OFFSET_PARTITION_COUNT_MAX {
        return Err(Violation::OffsetPartitionCountTooLarge {
            partition_count,
            partition_count_max: super::OFFSET_PARTITION_COUNT_MAX,
        });
    }
    Ok(())
}

fn decode_key_history(history: fb::KeyHistory<'_>) -> Result<KeyHistoryRequest<'_>, Violation> {
    Ok(KeyHistoryRequest {
        topic: checked_topic(history.topic())?,
        partition: history.partition(),
        key: checked_key(bytes_or_empty(history.key()))?,
        record_count_max: history.record_count_max(),
        from_offset: history.from_offset(),
    })
}

/// Decodes a key condition; an absent one is `Any`.
pub(super) fn decode_condition(
    condition: Option<fb::KeyCondition<'_>>,
) -> Result<KeyCondition, Violation> {
    let Some(condition) = condition else {
        return Ok(KeyCondition::Any);
    };
    let offset = condition.offset();
    let decoded = match condition.kind() {
        fb::ConditionKind::At => {
            let offset = offset.ok_or(Violation::MissingField {
                field: "KeyCondition.offset",
            })?;
            return Ok(KeyCondition::At(Offset(offset)));
        }
        fb::ConditionKind::Any => KeyCondition::Any,
        fb::ConditionKind::NoKey => KeyCondition::NoKey,
        fb::ConditionKind::KeyExists => KeyCondition::KeyExists,
        fb::ConditionKind(value) => {
            return Err(Violation::UnknownEnumValue {
                enum_name: "ConditionKind",
                value: u16::from(value),
            });
        }
    };
    if offset.is_some() {
        return Err(Violation::UnexpectedField {
            field: "KeyCondition.offset",
            context: "unless kind is At",
        });
    }
    Ok(decoded)
}

/// Encodes a key condition; `Any` is left out, which decodes as `Any`.
pub(super) fn encode_condition(
    builder: &mut FlatBufferBuilder<'static>,
    condition: KeyCondition,
) -> Option<WIPOffset<fb::KeyCondition<'static>>> {
    let (kind, offset) = match condition {
        KeyCondition::Any => return None,
        KeyCondition::NoKey => (fb::ConditionKind::NoKey, None),
        KeyCondition::KeyExists => (fb::ConditionKind::KeyExists, None),
        KeyCondition::At(offset) => (fb::ConditionKind::At, Some(offset.0)),
    };
    Some(fb::KeyCondition::create(
        builder,
        &fb::KeyConditionArgs { kind, offset },
    ))
}

/// The bytes of an optional byte vector; absent means empty.
pub(super) fn bytes_or_empty<'a>(vector: Option<Vector<'a, u8>>) -> &'a [u8] {
    vector.map_or(&[], |vector| vector.bytes())
}

fn checked_topic(name: &str) -> Result<&str, Violation> {
    if name.is_empty() {
        return Err(Violation::TopicNameEmpty);
    }
    if name.len() > TOPIC_NAME_SIZE_BYTES_MAX {
        return Err(Violation::TopicNameTooLong {
            name_size_bytes: name.len(),
            name_size_bytes_max: TOPIC_NAME_SIZE_BYTES_MAX,
        });
    }
    Ok(name)
}

fn checked_key(key: &[u8]) -> Result<&[u8], Violation> {
    if key.len() > KEY_SIZE_BYTES_MAX {
        return Err(Violation::KeyTooLong {
            key_size_bytes: key.len(),
            key_size_bytes_max: KEY_SIZE_BYTES_MAX,
        });
    }
    Ok(key)
}

/// A byte vector, or nothing when empty (absent decodes as empty, and costs no bytes).
pub(super) fn encode_bytes(
    builder: &mut FlatBufferBuilder<'static>,
    bytes: &[u8],
) -> Option<WIPOffset<Vector<'static, u8>>> {
    (!bytes.is_empty()).then(|| builder.create_vector(bytes))
}

/// Encodes headers into a vector, or nothing when there are none. `header_offsets` is
/// scratch space, kept to avoid an allocation per record.
pub(super) fn encode_headers<'h>(
    builder: &mut FlatBufferBuilder<'static>,
    header_offsets: &mut Vec<WIPOffset<fb::Header<'static>>>,
    headers: impl ExactSizeIterator<Item = RecordHeader<'h>>,
) -> Option<WIPOffset<Vector<'static, flatbuffers::ForwardsUOffset<fb::Header<'static>>>>> {
    if headers.len() == 0 {
        return None;
    }
    header_offsets.clear();
    for header in headers {
        let name = builder.create_vector(header.name);
        let value = encode_bytes(builder, header.value);
        header_offsets.push(fb::Header::create(
            builder,
            &fb::HeaderArgs {
                name: Some(name),
                value,
            },
        ));
    }
    Some(builder.create_vector(header_offsets))
}

impl Encoder {
    /// Encodes `request` as one flatbuffer (no length prefix); the bytes live until the next
    /// call.
    pub fn encode_request(&mut self, request: &Request<'_>) -> &[u8] {
        self.builder.reset();
        let (body_type, body) = self.encode_request_body(&request.body);
        let root = fb::Request::create(
            &mut self.builder,
            &fb::RequestArgs {
                correlation_id: request.correlation_id,
                body_type,
                body: Some(body),
            },
        );
        self.builder.finish_minimal(root);
        self.builder.finished_data()
    }

    /// Appends `request` to `out` as one frame: length, then flatbuffer.
    pub fn write_request_frame(&mut self, request: &Request<'_>, out: &mut impl BufMut) {
        write_frame(self.encode_request(request), out);
    }

    fn encode_request_body(
        &mut self,
        body: &RequestBody<'_>,
    ) -> (fb::RequestBody, WIPOffset<UnionWIPOffset>) {
        let builder = &mut self.builder;
        match body {
            RequestBody::Ping => {
                let ping = fb::Ping::create(builder, &fb::PingArgs {});
                (fb::RequestBody::Ping, ping.as_union_value())
            }
            RequestBody::CreateTopic(create) => {
                let name = builder.create_string(create.name);
                let args = fb::CreateTopicArgs {
                    name: Some(name),
                    partition_count: create.partition_count,
                    retention_ms: create.retention.ms,
                    retention_bytes: create.retention.bytes,
                };
                let create = fb::CreateTopic::create(builder, &args);
                (fb::RequestBody::CreateTopic, create.as_union_value())
            }
            RequestBody::Metadata => {
                let metadata = fb::Metadata::create(builder, &fb::MetadataArgs {});
                (fb::RequestBody::Metadata, metadata.as_union_value())
            }
            RequestBody::Append(append) => (
                fb::RequestBody::Append,
                self.encode_append(append).as_union_value(),
            ),
            RequestBody::Fetch(fetch) => {
                let topic = builder.create_string(fetch.topic);
                let args = fb::FetchArgs {
                    topic: Some(topic),
                    partition: fetch.partition,
                    offset: fetch.offset.0,
                    size_bytes_max: fetch.size_bytes_max,
                    wait_ms_max: u32::try_from(fetch.wait_max.as_millis()).unwrap_or(u32::MAX),
                };
                (
                    fb::RequestBody::Fetch,
                    fb::Fetch::create(builder, &args).as_union_value(),
                )
            }
            RequestBody::ReadKey(read) => {
                let topic = builder.create_string(read.topic);
                let key = encode_bytes(builder, read.key);
                let args = fb::ReadKeyArgs {
                    topic: Some(topic),
                    partition: read.partition,
                    key,
                    include_appended: read.include_appended,
                };
                (
                    fb::RequestBody::ReadKey,
                    fb::ReadKey::create(builder, &args).as_union_value(),
                )
            }
            RequestBody::KeyHistory(history) => {
                let topic = builder.create_string(history.topic);
                let key = encode_bytes(builder, history.key);
                let args = fb::KeyHistoryArgs {
                    topic: Some(topic),
                    partition: history.partition,
                    key,
                    record_count_max: history.record_count_max,
                    from_offset: history.from_offset,
                };
                let history = fb::KeyHistory::create(builder, &args);
                (fb::RequestBody::KeyHistory, history.as_union_value())
            }
            RequestBody::InitProducer => {
                let init = fb::InitProducer::create(builder, &fb::InitProducerArgs {});
                (fb::RequestBody::InitProducer, init.as_union_value())
            }
            RequestBody::CommitOffsets(commit) => {
                let entries: Vec<_> = commit
                    .partitions
                    .iter()
                    .map(|entry| {
                        let metadata = builder.create_string(entry.metadata);
                        let args = fb::PartitionOffsetArgs {
                            partition: entry.partition,
                            offset: entry.offset,
                            metadata: Some(metadata),
                        };
                        fb::PartitionOffset::create(builder, &args)
                    })
                    .collect();
                let partitions = builder.create_vector(&entries);
                let group = builder.create_string(commit.group);
                let topic = builder.create_string(commit.topic);
                let args = fb::CommitOffsetsArgs {
                    group: Some(group),
                    topic: Some(topic),
                    partitions: Some(partitions),
                };
                let commit = fb::CommitOffsets::create(builder, &args);
                (fb::RequestBody::CommitOffsets, commit.as_union_value())
            }
            RequestBody::FetchOffsets(fetch) => {
                let partitions = builder.create_vector(&fetch.partitions);
                let group = builder.create_string(fetch.group);
                let topic = builder.create_string(fetch.topic);
                let args = fb::FetchOffsetsArgs {
                    group: Some(group),
                    topic: Some(topic),
                    partitions: Some(partitions),
                };
                let fetch = fb::FetchOffsets::create(builder, &args);
                (fb::RequestBody::FetchOffsets, fetch.as_union_value())
            }
            RequestBody::BackupBegin => {
                let begin = fb::BackupBegin::create(builder, &fb::BackupBeginArgs {});
                (fb::RequestBody::BackupBegin, begin.as_union_value())
            }
            RequestBody::BackupRead(read) => {
                let args = fb::BackupReadArgs {
                    shard: read.shard.0,
                    segment_index: read.segment_index,
                    position: read.position,
                    length_bytes: read.length_bytes,
                };
                let read = fb::BackupRead::create(builder, &args);
                (fb::RequestBody::BackupRead, read.as_union_value())
            }
            RequestBody::AlterTopic(alter) => {
                let name = builder.create_string(alter.name);
                let args = fb::AlterTopicArgs {
                    name: Some(name),
                    retention_ms: encode_retention_change(alter.retention_ms),
                    retention_bytes: encode_retention_change(alter.retention_bytes),
                };
                let alter = fb::AlterTopic::create(builder, &args);
                (fb::RequestBody::AlterTopic, alter.as_union_value())
            }
        }
    }

    fn encode_append(&mut self, append: &AppendRequest<'_>) -> WIPOffset<fb::Append<'static>> {
        let Encoder {
            builder,
            record_offsets,
            header_offsets,
            ..
        } = self;
        record_offsets.clear();
        for record in append.records.iter() {
            let key = encode_bytes(builder, record.key);
            let value = encode_bytes(builder, record.value);
            let headers = encode_headers(builder, header_offsets, record.headers.iter().copied());
            let condition = encode_condition(builder, record.condition);
            let args = fb::RecordArgs {
                key,
                value,
                headers,
                condition,
            };
            record_offsets.push(fb::Record::create(builder, &args));
        }
        let records = builder.create_vector(record_offsets);
        let topic = builder.create_string(append.topic);
        let producer = append.producer.map(|stamp| {
            let args = fb::ProducerStampArgs {
                producer_id: stamp.producer_id,
                epoch: stamp.epoch,
                base_sequence: stamp.base_sequence,
            };
            fb::ProducerStamp::create(builder, &args)
        });
        let args = fb::AppendArgs {
            topic: Some(topic),
            partition: append.partition,
            expected_end_offset: append.expected_end_offset.map(|offset| offset.0),
            records: Some(records),
            producer,
        };
        fb::Append::create(builder, &args)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::fuzz::fuzz_decode_request;
    use crate::{ErrorCode, FrameReader, RouteError};

    fn round_trip(request: &Request<'_>) {
        let mut encoder = Encoder::new();
        let frame = encoder.encode_request(request).to_vec();
        assert_eq!(decode_request(&frame).as_ref(), Ok(request));

        // And through the framing, as a connection sees it.
        let mut stream = Vec::new();
        encoder.write_request_frame(request, &mut stream);
        let mut reader = FrameReader::new(u32::MAX);
        reader.feed(&stream);
        let frame = reader.next_frame().unwrap().unwrap();
        assert_eq!(decode_request(&frame).as_ref(), Ok(request));
    }

    fn violation(frame: &[u8]) -> Violation {
        match decode_request(frame) {
            Err(WireError::Invalid { violation, .. }) => violation,
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    fn encode(request: &Request<'_>) -> Vec<u8> {
        Encoder::new().encode_request(request).to_vec()
    }

    fn append_of<'a>(records: &'a [RecordInput<'a>]) -> Request<'a> {
        Request {
            correlation_id: 42,
            body: RequestBody::Append(AppendRequest {
                topic: "seats",
                partition: None,
                expected_end_offset: None,
                records: AppendRecords::from_inputs(records),
                producer: None,
            }),
        }
    }

    fn record(key: &'static [u8]) -> RecordInput<'static> {
        RecordInput {
            key,
            value: b"v",
            headers: &[],
            condition: KeyCondition::Any,
            ..RecordInput::default()
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

    /// A request that uses every field of every table an append has.
    fn rich_append_records() -> [RecordInput<'static>; 4] {
        [
            RecordInput {
                key: b"seat-12A",
                value: b"booked by 7",
                headers: &HEADERS,
                condition: KeyCondition::NoKey,
                ..RecordInput::default()
            },
            RecordInput {
                key: b"",
                value: b"",
                headers: &[],
                condition: KeyCondition::Any,
                ..RecordInput::default()
            },
            RecordInput {
                key: b"seat-12B",
                value: &[0, 1, 2, 255],
                headers: &HEADERS[..1],
                condition: KeyCondition::At(Offset(17)),
                ..RecordInput::default()
            },
            RecordInput {
                key: b"seat-12C",
                value: b"x",
                headers: &[],
                condition: KeyCondition::KeyExists,
                ..RecordInput::default()
            },
        ]
    }

    #[test]
    fn every_request_kind_round_trips() {
        let records = rich_append_records();
        let requests = [
            Request {
                correlation_id: 0,
                body: RequestBody::Ping,
            },
            Request {
                correlation_id: u64::MAX,
                body: RequestBody::Metadata,
            },
            Request {
                correlation_id: 1,
                body: RequestBody::CreateTopic(CreateTopicRequest {
                    name: "seats",
                    partition_count: 16,
                    retention: RetentionPolicy {
                        ms: Some(604_800_000),
                        bytes: Some(1 << 30),
                    },
                }),
            },
            Request {
                correlation_id: 11,
                body: RequestBody::AlterTopic(AlterTopicRequest {
                    name: "seats",
                    retention_ms: Some(None),
                    retention_bytes: Some(Some(4096)),
                }),
            },
            Request {
                correlation_id: 12,
                body: RequestBody::AlterTopic(AlterTopicRequest {
                    name: "seats",
                    retention_ms: None,
                    retention_bytes: None,
                }),
            },
            Request {
                correlation_id: 2,
                body: RequestBody::Append(AppendRequest {
                    topic: "seats",
                    partition: Some(0),
                    expected_end_offset: Some(Offset(0)),
                    records: AppendRecords::from_inputs(&records),
                    producer: None,
                }),
            },
            Request {
                correlation_id: 7,
                body: RequestBody::Append(AppendRequest {
                    topic: "seats",
                    partition: None,
                    expected_end_offset: None,
                    records: AppendRecords::from_inputs(&records),
                    producer: Some(ProducerStamp {
                        producer_id: i64::MAX,
                        epoch: 0,
                        base_sequence: i32::MAX,
                    }),
                }),
            },
            Request {
                correlation_id: 8,
                body: RequestBody::InitProducer,
            },
            Request {
                correlation_id: 9,
                body: RequestBody::CommitOffsets(CommitOffsetsRequest {
                    group: "projections",
                    topic: "seats",
                    partitions: vec![
                        PartitionOffset {
                            partition: 0,
                            offset: 12,
                            metadata: "",
                        },
                        PartitionOffset {
                            partition: u32::MAX,
                            offset: i64::MIN,
                            metadata: "checkpoint ✓",
                        },
                    ],
                }),
            },
            Request {
                correlation_id: 10,
                body: RequestBody::FetchOffsets(FetchOffsetsRequest {
                    group: "g",
                    topic: "seats",
                    partitions: vec![0, 7, u32::MAX],
                }),
            },
            Request {
                correlation_id: 11,
                body: RequestBody::BackupBegin,
            },
            Request {
                correlation_id: 12,
                body: RequestBody::BackupRead(BackupReadRequest {
                    shard: ShardId(3),
                    segment_index: u64::MAX,
                    position: 4096,
                    length_bytes: BACKUP_READ_SIZE_BYTES_MAX,
                }),
            },
            append_of(&records),
            Request {
                correlation_id: 3,
                body: RequestBody::Fetch(FetchRequest {
                    topic: "seats",
                    partition: 3,
                    offset: Offset(1 << 40),
                    size_bytes_max: 65_536,
                    wait_max: Duration::from_millis(250),
                }),
            },
            Request {
                correlation_id: 4,
                body: RequestBody::ReadKey(ReadKeyRequest {
                    topic: "seats",
                    partition: None,
                    key: b"seat-12A",
                    include_appended: true,
                }),
            },
            Request {
                correlation_id: 5,
                body: RequestBody::ReadKey(ReadKeyRequest {
                    topic: "seats",
                    partition: Some(7),
                    key: b"",
                    include_appended: false,
                }),
            },
            Request {
                correlation_id: 6,
                body: RequestBody::KeyHistory(KeyHistoryRequest {
                    topic: "seats",
                    partition: Some(2),
                    key: b"seat-12A",
                    record_count_max: 10,
                    from_offset: Some(3),
                }),
            },
        ];
        for request in &requests {
            round_trip(request);
        }
    }

    #[test]
    fn a_negative_producer_stamp_is_a_bad_request() {
        let records = rich_append_records();
        for (producer_id, epoch, base_sequence) in [(-1, 0, 0), (0, -1, 0), (0, 0, -1)] {
            let request = Request {
                correlation_id: 11,
                body: RequestBody::Append(AppendRequest {
                    topic: "seats",
                    partition: Some(0),
                    expected_end_offset: None,
                    records: AppendRecords::from_inputs(&records),
                    producer: Some(ProducerStamp {
                        producer_id,
                        epoch,
                        base_sequence,
                    }),
                }),
            };
            let frame = encode(&request);
            match decode_request(&frame) {
                Err(WireError::Invalid {
                    correlation_id: 11,
                    violation: violation @ Violation::ProducerStampNegative { .. },
                    ..
                }) => assert_eq!(violation.error_code(), ErrorCode::BadRequest),
                other => panic!("expected ProducerStampNegative, got {other:?}"),
            }
        }
    }

    #[test]
    fn offset_requests_are_checked_against_their_limits() {
        let long_metadata = "m".repeat(crate::OFFSET_METADATA_SIZE_BYTES_MAX + 1);
        let long_group = "g".repeat(crate::GROUP_ID_SIZE_BYTES_MAX + 1);
        let commit = |group: &'static str, partitions: Vec<PartitionOffset<'static>>| Request {
            correlation_id: 21,
            body: RequestBody::CommitOffsets(CommitOffsetsRequest {
                group,
                topic: "seats",
                partitions,
            }),
        };
        let one = |metadata: &'static str| {
            vec![PartitionOffset {
                partition: 0,
                offset: 1,
                metadata,
            }]
        };
        let long_metadata: &'static str = Box::leak(long_metadata.into_boxed_str());
        let long_group: &'static str = Box::leak(long_group.into_boxed_str());
        let cases = [
            (commit("", one("")), ErrorCode::BadRequest),
            (commit(long_group, one("")), ErrorCode::BadRequest),
            (commit("g", vec![]), ErrorCode::BadRequest),
            (commit("g", one(long_metadata)), ErrorCode::TooLarge),
            (
                Request {
                    correlation_id: 21,
                    body: RequestBody::FetchOffsets(FetchOffsetsRequest {
                        group: "g",
                        topic: "seats",
                        partitions: vec![0; crate::OFFSET_PARTITION_COUNT_MAX + 1],
                    }),
                },
                ErrorCode::TooLarge,
            ),
        ];
        for (request, code) in cases {
            let frame = encode(&request);
            match decode_request(&frame) {
                Err(error @ WireError::Invalid { .. }) => assert_eq!(error.error_code(), code),
                other => panic!("expected a violation, got {other:?}"),
            }
        }
    }

    #[test]
    fn one_encoder_encodes_many_requests() {
        let records = rich_append_records();
        let big = append_of(&records);
        let small = Request {
            correlation_id: 9,
            body: RequestBody::Ping,
        };
        let mut encoder = Encoder::new();
        for request in [&big, &small, &big, &small] {
            let frame = encoder.encode_request(request).to_vec();
            assert_eq!(decode_request(&frame).as_ref(), Ok(request));
        }
    }

    #[test]
    fn decoded_append_yields_engine_inputs() {
        let records = rich_append_records();
        let frame = encode(&append_of(&records));
        let Ok(Request {
            body: RequestBody::Append(append),
            ..
        }) = decode_request(&frame)
        else {
            panic!("append did not decode");
        };
        let inputs: Vec<RecordInput<'_>> = append.records.iter().collect();
        assert_eq!(inputs, records);
        // Zero-copy: keys and values point into the frame.
        let frame_range = frame.as_ptr_range();
        assert!(frame_range.contains(&inputs[0].key.as_ptr()));
        assert!(frame_range.contains(&inputs[0].headers[0].value.as_ptr()));
        assert_eq!(append.records.get(4), None);
    }

    #[test]
    fn empty_batch_is_a_bad_request_naming_the_problem() {
        let error = decode_request(&encode(&append_of(&[]))).unwrap_err();
        assert_eq!(error.correlation_id(), Some(42));
        assert_eq!(error.error_code(), ErrorCode::BadRequest);
        assert_eq!(
            error.to_string(),
            "Request 42: append has no records; a batch holds at least one"
        );
    }

    #[test]
    fn batch_over_the_record_count_limit_is_too_large() {
        let records = vec![record(b""); BATCH_RECORD_COUNT_MAX + 1];
        let error = decode_request(&encode(&append_of(&records))).unwrap_err();
        assert_eq!(
            error,
            WireError::Invalid {
                root: "Request",
                correlation_id: 42,
                violation: Violation::BatchRecordCountTooLarge {
                    record_count: BATCH_RECORD_COUNT_MAX + 1,
                    record_count_max: BATCH_RECORD_COUNT_MAX,
                },
            }
        );
        assert_eq!(error.error_code(), ErrorCode::TooLarge);
    }

    #[test]
    fn batch_over_the_size_limit_is_too_large() {
        let value = vec![7; BATCH_SIZE_BYTES_MAX];
        let records = [RecordInput {
            key: b"k",
            value: &value,
            headers: &[],
            condition: KeyCondition::Any,
            ..RecordInput::default()
        }];
        assert_eq!(
            violation(&encode(&append_of(&records))),
            Violation::BatchTooLarge {
                // Batch header, record fields, 1 key byte, 1 MiB: the encoded batch, as the
                // engine counts it.
                batch_size_bytes: (BATCH_SIZE_BYTES_MAX
                    + cairn_engine::core::record::BATCH_HEADER_SIZE_BYTES
                    + cairn_engine::core::record::RECORD_FIXED_SIZE_BYTES
                    + 1) as u64,
                batch_size_bytes_max: BATCH_SIZE_BYTES_MAX,
            }
        );
    }

    #[test]
    fn the_wire_and_the_engine_draw_the_batch_size_line_at_the_same_byte() {
        let header_value = vec![3u8; 100];
        let headers = [RecordHeader {
            name: b"type",
            value: &header_value,
        }];
        for extra in [0usize, 1] {
            // Batch header + 2 x (record fields + 1) + 6 + 4 + 100 bytes of overhead: exactly
            // at the limit with `extra` 0, one byte over with 1.
            let value_len = BATCH_SIZE_BYTES_MAX
                - cairn_engine::core::record::BATCH_HEADER_SIZE_BYTES
                - 2 * (cairn_engine::core::record::RECORD_FIXED_SIZE_BYTES + 1)
                - (6 + 4 + 100)
                - 10
                + extra;
            let value = vec![7u8; value_len];
            let records = [
                RecordInput {
                    key: b"k",
                    value: &value,
                    headers: &headers,
                    condition: KeyCondition::Any,
                    ..RecordInput::default()
                },
                RecordInput {
                    key: b"j",
                    value: &[0u8; 10],
                    headers: &[],
                    condition: KeyCondition::Any,
                    ..RecordInput::default()
                },
            ];
            let engine = cairn_engine::core::record::batch_encoded_len(&records);
            let wire = decode_request(&encode(&append_of(&records))).map(|_| ());
            assert_eq!(engine.is_ok(), extra == 0, "engine at +{extra}: {engine:?}");
            assert_eq!(wire.is_ok(), extra == 0, "wire at +{extra}");
        }
    }

    #[test]
    fn key_at_the_limit_is_accepted_and_one_byte_more_is_not() {
        let key_max = vec![b'k'; KEY_SIZE_BYTES_MAX];
        let key_over = vec![b'k'; KEY_SIZE_BYTES_MAX + 1];
        let at_limit = [RecordInput {
            key: &key_max,
            ..record(b"")
        }];
        round_trip(&append_of(&at_limit));

        let over = [
            record(b"a"),
            RecordInput {
                key: &key_over,
                ..record(b"")
            },
        ];
        assert_eq!(
            violation(&encode(&append_of(&over))),
            Violation::RecordKeyTooLong {
                record_index: 1,
                key_size_bytes: KEY_SIZE_BYTES_MAX + 1,
                key_size_bytes_max: KEY_SIZE_BYTES_MAX,
            }
        );

        let read = Request {
            correlation_id: 1,
            body: RequestBody::ReadKey(ReadKeyRequest {
                topic: "t",
                partition: None,
                key: &key_over,
                include_appended: false,
            }),
        };
        let too_long = Violation::KeyTooLong {
            key_size_bytes: KEY_SIZE_BYTES_MAX + 1,
            key_size_bytes_max: KEY_SIZE_BYTES_MAX,
        };
        assert_eq!(violation(&encode(&read)), too_long);
        let history = Request {
            correlation_id: 1,
            body: RequestBody::KeyHistory(KeyHistoryRequest {
                topic: "t",
                partition: None,
                key: &key_over,
                record_count_max: 1,
                from_offset: None,
            }),
        };
        assert_eq!(violation(&encode(&history)), too_long);
    }

    #[test]
    fn header_limits_are_enforced() {
        let headers = vec![HEADERS[0]; RECORD_HEADER_COUNT_MAX + 1];
        let records = [RecordInput {
            headers: &headers,
            ..record(b"k")
        }];
        assert_eq!(
            violation(&encode(&append_of(&records))),
            Violation::HeaderCountTooLarge {
                record_index: 0,
                header_count: RECORD_HEADER_COUNT_MAX + 1,
                header_count_max: RECORD_HEADER_COUNT_MAX,
            }
        );
        round_trip(&append_of(&[RecordInput {
            headers: &headers[..RECORD_HEADER_COUNT_MAX],
            ..record(b"k")
        }]));

        let name = vec![b'n'; HEADER_NAME_SIZE_BYTES_MAX + 1];
        let headers = [
            HEADERS[0],
            RecordHeader {
                name: &name,
                value: b"",
            },
        ];
        let records = [
            record(b"a"),
            record(b"b"),
            RecordInput {
                headers: &headers,
                ..record(b"k")
            },
        ];
        assert_eq!(
            violation(&encode(&append_of(&records))),
            Violation::HeaderNameTooLong {
                record_index: 2,
                header_index: 1,
                name_size_bytes: HEADER_NAME_SIZE_BYTES_MAX + 1,
                name_size_bytes_max: HEADER_NAME_SIZE_BYTES_MAX,
            }
        );
    }

    #[test]
    fn topic_names_and_partition_counts_are_checked() {
        let create = |name, partition_count| Request {
            correlation_id: 1,
            body: RequestBody::CreateTopic(CreateTopicRequest {
                name,
                partition_count,
                retention: RetentionPolicy::FOREVER,
            }),
        };
        assert_eq!(
            violation(&encode(&create("", 1))),
            Violation::TopicNameEmpty
        );
        assert_eq!(
            violation(&encode(&create("t", 0))),
            Violation::PartitionCountZero
        );
        let name_max = "n".repeat(TOPIC_NAME_SIZE_BYTES_MAX);
        round_trip(&create(&name_max, 1));
        let name_over = "n".repeat(TOPIC_NAME_SIZE_BYTES_MAX + 1);
        assert_eq!(
            violation(&encode(&create(&name_over, 1))),
            Violation::TopicNameTooLong {
                name_size_bytes: TOPIC_NAME_SIZE_BYTES_MAX + 1,
                name_size_bytes_max: TOPIC_NAME_SIZE_BYTES_MAX,
            }
        );
        let fetch = Request {
            correlation_id: 1,
            body: RequestBody::Fetch(FetchRequest {
                topic: "",
                partition: 0,
                offset: Offset(0),
                size_bytes_max: 1,
                wait_max: Duration::ZERO,
            }),
        };
        assert_eq!(violation(&encode(&fetch)), Violation::TopicNameEmpty);
    }

    /// `request` encoded, then padded with zeros to `frame_size_bytes`: bytes after the
    /// flatbuffer, which the verifier never visits.
    fn padded(request: &Request<'_>, frame_size_bytes: usize) -> Vec<u8> {
        let mut frame = encode(request);
        assert!(frame.len() <= frame_size_bytes);
        frame.resize(frame_size_bytes, 0);
        frame
    }

    #[test]
    fn only_appends_may_exceed_the_small_frame_limit() {
        let key_max = vec![b'k'; KEY_SIZE_BYTES_MAX];
        let topic_max = "t".repeat(TOPIC_NAME_SIZE_BYTES_MAX);
        let bodies = [
            ("Ping", RequestBody::Ping),
            ("Metadata", RequestBody::Metadata),
            (
                "CreateTopic",
                RequestBody::CreateTopic(CreateTopicRequest {
                    name: &topic_max,
                    partition_count: 1,
                    retention: RetentionPolicy::FOREVER,
                }),
            ),
            (
                "Fetch",
                RequestBody::Fetch(FetchRequest {
                    topic: &topic_max,
                    partition: 0,
                    offset: Offset(0),
                    size_bytes_max: 1,
                    wait_max: Duration::from_secs(30),
                }),
            ),
            (
                "ReadKey",
                RequestBody::ReadKey(ReadKeyRequest {
                    topic: &topic_max,
                    partition: None,
                    key: &key_max,
                    include_appended: true,
                }),
            ),
            (
                "KeyHistory",
                RequestBody::KeyHistory(KeyHistoryRequest {
                    topic: &topic_max,
                    partition: Some(1),
                    key: &key_max,
                    record_count_max: 1,
                    from_offset: None,
                }),
            ),
        ];
        let limit = NON_APPEND_FRAME_SIZE_BYTES_MAX as usize;
        for (request_kind, body) in bodies {
            let request = Request {
                correlation_id: 9,
                body,
            };
            // The largest legitimate frame of each kind, and one padded to the limit, pass.
            assert!(encode(&request).len() < 5 * 1024, "{request_kind}");
            round_trip(&request);
            assert_eq!(
                decode_request(&padded(&request, limit)),
                Ok(request.clone())
            );
            let error = decode_request(&padded(&request, limit + 1)).unwrap_err();
            assert_eq!(
                error,
                WireError::Invalid {
                    root: "Request",
                    correlation_id: 9,
                    violation: Violation::FrameTooLarge {
                        request_kind,
                        frame_size_bytes: limit + 1,
                        frame_size_bytes_max: limit,
                    },
                }
            );
            assert_eq!(error.error_code(), ErrorCode::TooLarge);
        }
        let records = [record(b"k")];
        let append = append_of(&records);
        assert!(decode_request(&padded(&append, 1024 * 1024)).is_ok());
    }

    #[test]
    fn fetch_wait_travels_in_whole_milliseconds() {
        let fetch = |wait_max| FetchRequest {
            topic: "t",
            partition: 0,
            offset: Offset(0),
            size_bytes_max: 1,
            wait_max,
        };
        for (sent, received) in [
            (Duration::from_micros(1500), Duration::from_millis(1)),
            (
                Duration::from_secs(u64::MAX),
                Duration::from_millis(u64::from(u32::MAX)),
            ),
        ] {
            let frame = encode(&Request {
                correlation_id: 1,
                body: RequestBody::Fetch(fetch(sent)),
            });
            let decoded = decode_request(&frame).unwrap();
            assert_eq!(decoded.body, RequestBody::Fetch(fetch(received)));
        }
    }

    /// Builds a one-record append whose condition table is written by hand.
    fn append_with_condition(kind: fb::ConditionKind, offset: Option<u64>) -> Vec<u8> {
        let mut builder = FlatBufferBuilder::new();
        let condition =
            fb::KeyCondition::create(&mut builder, &fb::KeyConditionArgs { kind, offset });
        let record = fb::Record::create(
            &mut builder,
            &fb::RecordArgs {
                condition: Some(condition),
                ..fb::RecordArgs::default()
            },
        );
        let records = builder.create_vector(&[record]);
        let topic = builder.create_string("t");
        let append = fb::Append::create(
            &mut builder,
            &fb::AppendArgs {
                topic: Some(topic),
                records: Some(records),
                ..fb::AppendArgs::default()
            },
        );
        let request = fb::Request::create(
            &mut builder,
            &fb::RequestArgs {
                correlation_id: 5,
                body_type: fb::RequestBody::Append,
                body: Some(append.as_union_value()),
            },
        );
        builder.finish_minimal(request);
        builder.finished_data().to_vec()
    }

    #[test]
    fn key_condition_offset_goes_with_kind_at_only() {
        assert_eq!(
            violation(&append_with_condition(fb::ConditionKind::At, None)),
            Violation::MissingField {
                field: "KeyCondition.offset"
            }
        );
        assert_eq!(
            violation(&append_with_condition(fb::ConditionKind::NoKey, Some(0))),
            Violation::UnexpectedField {
                field: "KeyCondition.offset",
                context: "unless kind is At"
            }
        );
        // An explicit Any decodes like an absent condition.
        assert!(decode_request(&append_with_condition(fb::ConditionKind::Any, None)).is_ok());
    }

    #[test]
    fn unknown_condition_kind_is_a_typed_error() {
        let error = decode_request(&append_with_condition(fb::ConditionKind(4), None)).unwrap_err();
        assert_eq!(
            error,
            WireError::Invalid {
                root: "Request",
                correlation_id: 5,
                violation: Violation::UnknownEnumValue {
                    enum_name: "ConditionKind",
                    value: 4
                },
            }
        );
        assert_eq!(error.error_code(), ErrorCode::BadRequest);
    }

    fn alter_topic_with(retention_ms: Option<i64>) -> Vec<u8> {
        let mut builder = FlatBufferBuilder::new();
        let name = builder.create_string("seats");
        let alter = fb::AlterTopic::create(
            &mut builder,
            &fb::AlterTopicArgs {
                name: Some(name),
                retention_ms,
                retention_bytes: None,
            },
        );
        let request = fb::Request::create(
            &mut builder,
            &fb::RequestArgs {
                correlation_id: 9,
                body_type: fb::RequestBody::AlterTopic,
                body: Some(alter.as_union_value()),
            },
        );
        builder.finish_minimal(request);
        builder.finished_data().to_vec()
    }

    #[test]
    fn alter_topic_takes_minus_one_as_no_limit_and_refuses_other_negatives() {
        let decoded = |retention_ms| match decode_request(&alter_topic_with(retention_ms)) {
            Ok(Request {
                body: RequestBody::AlterTopic(alter),
                ..
            }) => Ok((alter.retention_ms, alter.retention_bytes)),
            Ok(other) => panic!("decoded as {other:?}"),
            Err(error) => Err(error),
        };
        assert_eq!(decoded(None), Ok((None, None)));
        assert_eq!(decoded(Some(-1)), Ok((Some(None), None)));
        // 0 is the server's to refuse (InvalidConfig), as CreateTopic's 0 is.
        assert_eq!(decoded(Some(0)), Ok((Some(Some(0)), None)));
        assert_eq!(
            decoded(Some(i64::MAX)),
            Ok((Some(Some(i64::MAX as u64)), None))
        );
        let error = decoded(Some(-2)).unwrap_err();
        assert_eq!(
            error,
            WireError::Invalid {
                root: "Request",
                correlation_id: 9,
                violation: Violation::RetentionNegative {
                    field: "AlterTopic.retention_ms",
                    value: -2
                },
            }
        );
        assert_eq!(error.error_code(), ErrorCode::BadRequest);
    }

    fn request_with_body_type(body_type: fb::RequestBody, with_body: bool) -> Vec<u8> {
        let mut builder = FlatBufferBuilder::new();
        let body =
            with_body.then(|| fb::Ping::create(&mut builder, &fb::PingArgs {}).as_union_value());
        let request = fb::Request::create(
            &mut builder,
            &fb::RequestArgs {
                correlation_id: 77,
                body_type,
                body,
            },
        );
        builder.finish_minimal(request);
        builder.finished_data().to_vec()
    }

    #[test]
    fn unknown_request_kind_is_unsupported_and_keeps_the_correlation_id() {
        for type_value in [fb::RequestBody::ENUM_MAX + 1, u8::MAX] {
            let error = decode_request(&request_with_body_type(fb::RequestBody(type_value), true))
                .unwrap_err();
            assert_eq!(
                error,
                WireError::Invalid {
                    root: "Request",
                    correlation_id: 77,
                    violation: Violation::UnknownUnionType {
                        union_name: "RequestBody",
                        type_value
                    },
                }
            );
            assert_eq!(error.error_code(), ErrorCode::UnsupportedRequest);
        }
    }

    #[test]
    fn request_without_body_is_rejected() {
        assert_eq!(
            violation(&request_with_body_type(fb::RequestBody::NONE, false)),
            Violation::MissingField {
                field: "Request.body"
            }
        );
        // A type without its value is an inconsistent union: the verifier refuses it.
        let frame = request_with_body_type(fb::RequestBody::Ping, false);
        let error = decode_request(&frame);
        assert!(
            matches!(error, Err(WireError::Malformed { .. })),
            "{error:?}"
        );
    }

    #[test]
    fn garbage_and_truncated_frames_are_malformed() {
        for garbage in [
            &b""[..],
            b"\0",
            b"\0\0\0",
            b"\xff\xff\xff\xff\xff\xff\xff\xff",
            b"hello, world",
        ] {
            let error = decode_request(garbage).unwrap_err();
            assert!(matches!(error, WireError::Malformed { .. }), "{error:?}");
            assert_eq!(error.correlation_id(), None);
        }
        // Four zero bytes are a valid flatbuffer: a root table whose vtable (at position 0,
        // length 0) has no fields. The verifier passes it; the protocol does not.
        assert_eq!(
            violation(b"\0\0\0\0"),
            Violation::MissingField {
                field: "Request.body"
            }
        );
        let records = rich_append_records();
        let frame = encode(&append_of(&records));
        for len in 0..frame.len() {
            // Cut anywhere, the frame must fail cleanly; most cuts move the root offset's
            // target out of bounds.
            let _ = decode_request(&frame[..len]);
        }
        assert!(decode_request(&frame[..frame.len() - 1]).is_err());
    }

    #[test]
    fn bit_flipped_frames_decode_or_fail_without_panicking() {
        let records = rich_append_records();
        let frames = [
            encode(&append_of(&records)),
            encode(&Request {
                correlation_id: 3,
                body: RequestBody::KeyHistory(KeyHistoryRequest {
                    topic: "seats",
                    partition: Some(2),
                    key: b"seat-12A",
                    record_count_max: 10,
                    from_offset: None,
                }),
            }),
        ];
        for frame in frames {
            for bit in 0..frame.len() * 8 {
                let mut flipped = frame.clone();
                flipped[bit / 8] ^= 1 << (bit % 8);
                // Decodes (then re-encodes identically) or fails; never panics.
                fuzz_decode_request(&flipped);
            }
        }
    }

    #[test]
    fn shared_objects_cannot_blow_up_verification() {
        // One 64 KiB value referenced by 1000 records: a 70 KiB frame that would make the
        // verifier read 64 MB.
        let mut builder = FlatBufferBuilder::new();
        let value = builder.create_vector(&[0_u8; 64 * 1024][..]);
        let records: Vec<_> = (0..1000)
            .map(|_| {
                fb::Record::create(
                    &mut builder,
                    &fb::RecordArgs {
                        value: Some(value),
                        ..fb::RecordArgs::default()
                    },
                )
            })
            .collect();
        let records = builder.create_vector(&records);
        let topic = builder.create_string("t");
        let append = fb::Append::create(
            &mut builder,
            &fb::AppendArgs {
                topic: Some(topic),
                records: Some(records),
                ..fb::AppendArgs::default()
            },
        );
        let request = fb::Request::create(
            &mut builder,
            &fb::RequestArgs {
                correlation_id: 1,
                body_type: fb::RequestBody::Append,
                body: Some(append.as_union_value()),
            },
        );
        builder.finish_minimal(request);
        let frame = builder.finished_data();
        assert!(frame.len() < 80 * 1024, "frame of {} bytes", frame.len());
        match decode_request(frame) {
            Err(WireError::Malformed { invalid, .. }) => {
                assert_eq!(
                    invalid,
                    flatbuffers::InvalidFlatbuffer::ApparentSizeTooLarge
                );
            }
            other => panic!("expected the verification budget to refuse it, got {other:?}"),
        }
    }

    #[test]
    fn verify_budget_accepts_worst_case_legitimate_frames() {
        // Tiny records are where tables and vtable reads weigh most against frame bytes.
        // Verified here with 3 bytes read per frame byte, well inside the budget of 8.
        let tiny = [RecordInput {
            key: b"",
            value: b"",
            headers: &[RecordHeader {
                name: b"",
                value: b"",
            }],
            condition: KeyCondition::At(Offset(0)),
            ..RecordInput::default()
        }];
        // As many as one batch holds (its header, then per record its fixed fields and 6
        // bytes per header): the record count limit itself cannot be reached with headers,
        // or even without.
        let header_bytes = cairn_engine::core::record::BATCH_HEADER_SIZE_BYTES;
        let count_max = |record: RecordInput<'_>| {
            let per_record =
                cairn_engine::core::record::batch_encoded_len(&[record]).unwrap() - header_bytes;
            (BATCH_SIZE_BYTES_MAX - header_bytes) / per_record
        };
        let tiny_count_max = count_max(tiny[0]);
        let empty_count_max = count_max(record(b""));
        let many_tiny = vec![tiny[0]; tiny_count_max];
        let empty = vec![record(b""); empty_count_max];
        assert!(decode_request(&encode(&append_of(&vec![tiny[0]; tiny_count_max + 1]))).is_err());
        assert!(
            decode_request(&encode(&append_of(&vec![record(b""); empty_count_max + 1]))).is_err()
        );
        let headers = [RecordHeader {
            name: b"",
            value: b"",
        }; RECORD_HEADER_COUNT_MAX];
        let many_headers = [RecordInput {
            headers: &headers,
            ..record(b"")
        }];
        for records in [&many_tiny[..], &empty, &many_headers] {
            let frame = encode(&append_of(records));
            let tight = flatbuffers::VerifierOptions {
                max_apparent_size: frame.len() * 3,
                ..verifier_options(frame.len())
            };
            assert!(flatbuffers::root_with_opts::<fb::Request>(&tight, &frame).is_ok());
            let decoded = decode_request(&frame).map(|_| ());
            assert!(decoded.is_ok(), "{decoded:?}");
            assert!(frame.len() < super::super::FRAME_SIZE_BYTES_MAX_DEFAULT as usize);
        }
    }

    #[test]
    fn append_routes_by_the_first_key_or_the_named_partition() {
        let records = [record(b"123456789"), record(b"123456789")];
        let mut request = AppendRequest {
            topic: "t",
            partition: None,
            expected_end_offset: None,
            records: AppendRecords::from_inputs(&records),
            producer: None,
        };
        assert_eq!(request.route(10), Ok(6));
        request.partition = Some(9);
        assert_eq!(request.route(10), Ok(9));
        request.partition = Some(10);
        assert_eq!(
            request.route(10),
            Err(RouteError::UnknownPartition {
                partition: 10,
                partition_count: 10
            })
        );

        // "a" goes to partition 5 of 7, "123456789" to 325246566 % 7 = 1.
        let spanning = [record(b"a"), record(b"a"), record(b"123456789")];
        let request = AppendRequest {
            topic: "t",
            partition: None,
            expected_end_offset: None,
            records: AppendRecords::from_inputs(&spanning),
            producer: None,
        };
        assert_eq!(
            request.route(7),
            Err(RouteError::KeysSpanPartitions {
                record_index: 2,
                partition_first: 5,
                partition_record: 1
            })
        );
        assert_eq!(request.route(1), Ok(0));
    }

    fn condition_strategy() -> impl Strategy<Value = KeyCondition> {
        prop_oneof![
            Just(KeyCondition::Any),
            Just(KeyCondition::NoKey),
            Just(KeyCondition::KeyExists),
            any::<u64>().prop_map(|offset| KeyCondition::At(Offset(offset))),
        ]
    }

    type OwnedRecord = (Vec<u8>, Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>, KeyCondition);

    fn record_strategy() -> impl Strategy<Value = OwnedRecord> {
        let bytes = |len_max| prop::collection::vec(any::<u8>(), 0..len_max);
        (
            bytes(64),
            bytes(256),
            prop::collection::vec((bytes(16), bytes(32)), 0..4),
            condition_strategy(),
        )
    }

    proptest! {
        #[test]
        fn append_round_trips(
            correlation_id in any::<u64>(),
            topic in "[a-z.-]{1,40}",
            partition in proptest::option::of(any::<u32>()),
            expected_end_offset in proptest::option::of(any::<u64>()),
            owned in prop::collection::vec(record_strategy(), 1..50),
            producer in proptest::option::of((0..=i64::MAX, 0..=i16::MAX, 0..=i32::MAX)),
        ) {
            let headers: Vec<Vec<RecordHeader<'_>>> = owned
                .iter()
                .map(|(_, _, headers, _)| {
                    headers.iter().map(|(name, value)| RecordHeader { name, value }).collect()
                })
                .collect();
            let records: Vec<RecordInput<'_>> = owned
                .iter()
                .zip(&headers)
                .map(|((key, value, _, condition), headers)| RecordInput {
                    key,
                    value,
                    headers,
                    condition: *condition,
                    ..RecordInput::default()
                })
                .collect();
            let request = Request {
                correlation_id,
                body: RequestBody::Append(AppendRequest {
                    topic: &topic,
                    partition,
                    expected_end_offset: expected_end_offset.map(Offset),
                    records: AppendRecords::from_inputs(&records),
                    producer: producer.map(|(producer_id, epoch, base_sequence)| ProducerStamp {
                        producer_id,
                        epoch,
                        base_sequence,
                    }),
                }),
            };
            let frame = encode(&request);
            let decoded = decode_request(&frame);
            prop_assert_eq!(decoded.as_ref(), Ok(&request));
        }
    }
}
