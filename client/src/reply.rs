//! Decoded responses to owned results, shared by both clients.
//!
//! A decoded [`ResponseBody`] borrows from its frame, which the connection reuses, so a
//! connection turns it into a [`Reply`] (owned, any kind) as soon as it is decoded. The
//! caller, which knows what it asked for, then takes the result it expects with one of the
//! `into_*` methods: an error response becomes [`ClientError::Server`], a response of
//! another kind [`ClientError::UnexpectedResponse`], and a conflicting append's error
//! response the value [`AppendResult::Conflict`].

use cairn_wire::{
    ConflictInfo, ErrorCode, MetadataResult, RecordOut, RecordOutList, ResponseBody, TopicMetadata,
};

use super::{
    AppendResult, BackupManifest, ClientError, CommittedOffset, FetchResult, FetchedRecord,
    KeyHistoryPage, Metadata, PartitionInfo, ProducerId, TopicInfo,
};

/// Any response, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Reply {
    Pong,
    TopicCreated(TopicInfo),
    TopicAltered(TopicInfo),
    Metadata(Metadata),
    Appended {
        partition: u32,
        base_offset: cairn_engine::core::Offset,
        record_count: u32,
        duplicate: bool,
    },
    ProducerInitialized(ProducerId),
    Fetched(FetchResult),
    KeyRecord(Option<FetchedRecord>),
    KeyHistory(KeyHistoryPage),
    OffsetsCommitted,
    CommittedOffsets(Vec<CommittedOffset>),
    BackupManifest(BackupManifest),
    BackupChunk(Vec<u8>),
    Error {
        code: ErrorCode,
        message: String,
        conflict: Option<ConflictInfo>,
        log_start: Option<cairn_engine::core::Offset>,
    },
}

impl Reply {
    /// Copies a decoded response body out of its frame.
    pub(super) fn from_body(body: ResponseBody<'_>) -> Reply {
        match body {
            ResponseBody::Pong => Reply::Pong,
            ResponseBody::TopicCreated(topic) => Reply::TopicCreated(topic_info(&topic)),
            ResponseBody::TopicAltered(topic) => Reply::TopicAltered(topic_info(&topic)),
            ResponseBody::Metadata(metadata) => Reply::Metadata(metadata_from(&metadata)),
            ResponseBody::Appended(appended) => Reply::Appended {
                partition: appended.partition,
                base_offset: appended.base_offset,
                record_count: appended.record_count,
                duplicate: appended.duplicate,
            },
            ResponseBody::ProducerInitialized(initialized) => {
                Reply::ProducerInitialized(ProducerId {
                    producer_id: initialized.producer_id,
                    epoch: initialized.epoch,
                })
            }
            ResponseBody::Fetched(fetched) => Reply::Fetched(FetchResult {
                partition: fetched.partition,
                records: fetched_records(fetched.records),
                synced_end: fetched.synced_end,
            }),
            ResponseBody::KeyRecord(found) => Reply::KeyRecord(found.record.map(fetched_record)),
            ResponseBody::KeyHistory(history) => Reply::KeyHistory(KeyHistoryPage {
                partition: history.partition,
                records: fetched_records(history.records),
                next_offset: history.next_offset.map(cairn_engine::core::Offset),
            }),
            ResponseBody::OffsetsCommitted => Reply::OffsetsCommitted,
            ResponseBody::CommittedOffsets(entries) => Reply::CommittedOffsets(
                entries
                    .iter()
                    .map(|entry| CommittedOffset {
                        partition: entry.partition,
                        offset: entry.offset,
                        metadata: entry.metadata.to_owned(),
                    })
                    .collect(),
            ),
            ResponseBody::BackupManifest(manifest) => Reply::BackupManifest(BackupManifest {
                shard_count: manifest.shard_count,
                shards: manifest.shards,
                topics_meta: manifest.topics_meta.to_owned(),
            }),
            ResponseBody::BackupChunk(bytes) => Reply::BackupChunk(bytes.to_vec()),
            ResponseBody::Error(error) => Reply::Error {
                code: error.code,
                message: error.message.to_owned(),
                conflict: error.conflict,
                log_start: error.log_start,
            },
        }
    }

    /// The answer to Ping.
    pub(super) fn into_pong(self) -> Result<(), ClientError> {
        match self {
            Reply::Pong => Ok(()),
            other => Err(other.unexpected("Pong")),
        }
    }

    /// The answer to CreateTopic.
    pub(super) fn into_topic_created(self) -> Result<TopicInfo, ClientError> {
        match self {
            Reply::TopicCreated(topic) => Ok(topic),
            other => Err(other.unexpected("TopicCreated")),
        }
    }

    /// The answer to AlterTopic.
    pub(super) fn into_topic_altered(self) -> Result<TopicInfo, ClientError> {
        match self {
            Reply::TopicAltered(topic) => Ok(topic),
            other => Err(other.unexpected("TopicAltered")),
        }
    }

    /// The answer to Metadata.
    pub(super) fn into_metadata(self) -> Result<Metadata, ClientError> {
        match self {
            Reply::Metadata(metadata) => Ok(metadata),
            other => Err(other.unexpected("MetadataResult")),
        }
    }

    /// The answer to Append: a conflict is a value, any other error an error.
    pub(super) fn into_append(self) -> Result<AppendResult, ClientError> {
        match self {
            Reply::Appended {
                partition,
                base_offset,
                record_count,
                duplicate,
            } => Ok(AppendResult::Appended {
                partition,
                base_offset,
                record_count,
                duplicate,
            }),
            // Decoding guarantees a Conflict code comes with its details and only with it.
            Reply::Error {
                code: ErrorCode::Conflict,
                message,
                conflict: Some(info),
                ..
            } => Ok(AppendResult::Conflict { info, message }),
            other => Err(other.unexpected("Appended")),
        }
    }

    /// The answer to InitProducer.
    pub(super) fn into_producer(self) -> Result<ProducerId, ClientError> {
        match self {
            Reply::ProducerInitialized(producer) => Ok(producer),
            other => Err(other.unexpected("ProducerInitialized")),
        }
    }

    /// The answer to Fetch.
    pub(super) fn into_fetched(self) -> Result<FetchResult, ClientError> {
        match self {
            Reply::Fetched(fetched) => Ok(fetched),
            other => Err(other.unexpected("Fetched")),
        }
    }

    /// The answer to ReadKey.
    pub(super) fn into_key_record(self) -> Result<Option<FetchedRecord>, ClientError> {
        match self {
            Reply::KeyRecord(record) => Ok(record),
            other => Err(other.unexpected("KeyRecord")),
        }
    }

    /// The answer to KeyHistory.
    pub(super) fn into_key_history(self) -> Result<KeyHistoryPage, ClientError> {
        match self {
            Reply::KeyHistory(page) => Ok(page),
            other => Err(other.unexpected("KeyHistoryResult")),
        }
    }

    /// The answer to CommitOffsets.
    pub(super) fn into_offsets_committed(self) -> Result<(), ClientError> {
        match self {
            Reply::OffsetsCommitted => Ok(()),
            other => Err(other.unexpected("OffsetsCommitted")),
        }
    }

    /// The answer to FetchOffsets.
    pub(super) fn into_committed_offsets(self) -> Result<Vec<CommittedOffset>, ClientError> {
        match self {
            Reply::CommittedOffsets(entries) => Ok(entries),
            other => Err(other.unexpected("CommittedOffsets")),
        }
    }

    /// The answer to BackupBegin.
    pub(super) fn into_backup_manifest(self) -> Result<BackupManifest, ClientError> {
        match self {
            Reply::BackupManifest(manifest) => Ok(manifest),
            other => Err(other.unexpected("BackupManifest")),
        }
    }

    /// The answer to BackupRead.
    pub(super) fn into_backup_chunk(self) -> Result<Vec<u8>, ClientError> {
        match self {
            Reply::BackupChunk(bytes) => Ok(bytes),
            other => Err(other.unexpected("BackupChunk")),
        }
    }

    /// The error for a reply that is not the `expected` kind: the server's own error if it
    /// sent one.
    fn unexpected(self, expected: &'static str) -> ClientError {
        match self {
            // Decoding guarantees the log start comes with its code and only with it.
            Reply::Error {
                message,
                log_start: Some(log_start),
                ..
            } => ClientError::BeforeLogStart { log_start, message },
            Reply::Error { code, message, .. } => ClientError::Server { code, message },
            other => ClientError::UnexpectedResponse {
                expected,
                actual: other.kind_name(),
            },
        }
    }

    /// The schema's name for this kind of response.
    fn kind_name(&self) -> &'static str {
        match self {
            Reply::Pong => "Pong",
            Reply::TopicCreated(_) => "TopicCreated",
            Reply::Metadata(_) => "MetadataResult",
            Reply::Appended { .. } => "Appended",
            Reply::Fetched(_) => "Fetched",
            Reply::KeyRecord(_) => "KeyRecord",
            Reply::KeyHistory(_) => "KeyHistoryResult",
            Reply::Error { .. } => "ErrorResponse",
            Reply::TopicAltered(_) => "TopicAltered",
            Reply::ProducerInitialized(_) => "ProducerInitialized",
            Reply::OffsetsCommitted => "OffsetsCommitted",
            Reply::CommittedOffsets(_) => "CommittedOffsets",
            Reply::BackupManifest(_) => "BackupManifest",
            Reply::BackupChunk(_) => "BackupChunk",
        }
    }
}

fn topic_info(topic: &TopicMetadata<'_>) -> TopicInfo {
    TopicInfo {
        name: topic.name.to_owned(),
        partitions: topic
            .partitions
            .iter()
            .map(|partition| PartitionInfo {
                partition: partition.partition,
                partition_id: partition.partition_id.0,
                shard: partition.shard.0,
                port: partition.port,
            })
            .collect(),
        retention: topic.retention,
    }
}

fn metadata_from(metadata: &MetadataResult<'_>) -> Metadata {
    Metadata {
        shard_ports: metadata.shard_ports.clone(),
        topics: metadata.topics.iter().map(topic_info).collect(),
    }
}

fn fetched_records(records: RecordOutList<'_>) -> Vec<FetchedRecord> {
    records.iter().map(fetched_record).collect()
}

fn fetched_record(record: RecordOut<'_>) -> FetchedRecord {
    FetchedRecord {
        offset: record.offset,
        timestamp_ms: record.timestamp_ms,
        key: record.key.to_vec(),
        value: record.value.to_vec(),
        headers: record
            .headers
            .iter()
            .map(|header| (header.name.to_vec(), header.value.to_vec()))
            .collect(),
        prev_key_offset: record.prev_key_offset,
    }
}

#[cfg(test)]
mod tests {
    use cairn_engine::core::{KeyCondition, Offset, RecordHeader};

    use super::*;
    use cairn_wire::{Appended, ErrorResponse, Fetched, HeaderList, KeyRecord};

    #[test]
    fn conflict_is_a_value_of_append_and_an_error_elsewhere() {
        let info = ConflictInfo::Key {
            record_index: 2,
            condition: KeyCondition::At(Offset(7)),
            current_offset: Some(Offset(9)),
        };
        let reply = Reply::from_body(ResponseBody::Error(ErrorResponse {
            code: ErrorCode::Conflict,
            message: "key moved",
            conflict: Some(info),
            log_start: None,
        }));
        assert_eq!(
            reply.clone().into_append().unwrap(),
            AppendResult::Conflict {
                info,
                message: "key moved".to_owned()
            }
        );
        let error = reply.into_fetched().unwrap_err();
        assert_eq!(error.server_code(), Some(ErrorCode::Conflict));
    }

    #[test]
    fn wrong_kind_is_unexpected_and_error_is_server() {
        let appended = Reply::from_body(ResponseBody::Appended(Appended {
            partition: 1,
            base_offset: Offset(5),
            record_count: 2,
            duplicate: false,
        }));
        match appended.into_pong() {
            Err(ClientError::UnexpectedResponse { expected, actual }) => {
                assert_eq!((expected, actual), ("Pong", "Appended"));
            }
            other => panic!("expected UnexpectedResponse, got {other:?}"),
        }
        let error = Reply::from_body(ResponseBody::Error(ErrorResponse {
            code: ErrorCode::UnknownPartition,
            message: "no partition 9",
            conflict: None,
            log_start: None,
        }));
        match error.into_append() {
            Err(ClientError::Server { code, message }) => {
                assert_eq!(code, ErrorCode::UnknownPartition);
                assert_eq!(message, "no partition 9");
            }
            other => panic!("expected Server, got {other:?}"),
        }
    }

    #[test]
    fn records_are_copied_with_headers_and_back_pointers() {
        let headers = [RecordHeader {
            name: b"event-type",
            value: b"SeatBooked",
        }];
        let records = [RecordOut {
            offset: Offset(3),
            timestamp_ms: 1_700_000_000_000,
            key: b"seat-12A",
            value: b"alice",
            headers: HeaderList::from_slice(&headers),
            prev_key_offset: Some(Offset(1)),
        }];
        let expected = FetchedRecord {
            offset: Offset(3),
            timestamp_ms: 1_700_000_000_000,
            key: b"seat-12A".to_vec(),
            value: b"alice".to_vec(),
            headers: vec![(b"event-type".to_vec(), b"SeatBooked".to_vec())],
            prev_key_offset: Some(Offset(1)),
        };
        let fetched = Reply::from_body(ResponseBody::Fetched(Fetched {
            partition: 4,
            records: RecordOutList::from_slice(&records),
            synced_end: Offset(4),
        }));
        assert_eq!(
            fetched.into_fetched().unwrap(),
            FetchResult {
                partition: 4,
                records: vec![expected.clone()],
                synced_end: Offset(4),
            }
        );
        let found = Reply::from_body(ResponseBody::KeyRecord(KeyRecord {
            partition: 4,
            record: records.first().copied(),
        }));
        assert_eq!(found.into_key_record().unwrap(), Some(expected));
    }
}
