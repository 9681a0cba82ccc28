//! What each client method sends, shared by the async and the blocking client: where the
//! request routes, its body, and how much longer than the request timeout it may take (a
//! long-polling fetch waits on the server by design).

use std::time::Duration;

use cairn_engine::core::{Offset, RecordInput};
use cairn_engine::{ProducerStamp, RetentionPolicy};

use cairn_wire::{
    AlterTopicRequest, AppendRecords, AppendRequest, BackupReadRequest, CommitOffsetsRequest,
    CreateTopicRequest, FetchOffsetsRequest, FetchRequest, KeyHistoryRequest, PartitionOffset,
    ReadKeyRequest, RequestBody,
};

use super::RetentionChange;
use super::routing::Destination;

/// One request as a client method builds it.
pub(super) struct Call<'a> {
    pub(super) destination: Destination<'a>,
    pub(super) body: RequestBody<'a>,
    /// Added to the request timeout.
    pub(super) wait_max: Duration,
}

impl<'a> Call<'a> {
    fn new(destination: Destination<'a>, body: RequestBody<'a>) -> Call<'a> {
        Call {
            destination,
            body,
            wait_max: Duration::ZERO,
        }
    }

    pub(super) fn ping() -> Call<'a> {
        Call::new(Destination::Bootstrap, RequestBody::Ping)
    }

    pub(super) fn create_topic(
        name: &'a str,
        partition_count: u32,
        retention: RetentionPolicy,
    ) -> Call<'a> {
        let body = RequestBody::CreateTopic(CreateTopicRequest {
            name,
            partition_count,
            retention,
        });
        Call::new(Destination::Bootstrap, body)
    }

    pub(super) fn alter_topic(name: &'a str, change: RetentionChange) -> Call<'a> {
        let body = RequestBody::AlterTopic(AlterTopicRequest {
            name,
            retention_ms: change.ms,
            retention_bytes: change.bytes,
        });
        Call::new(Destination::Bootstrap, body)
    }

    /// Routes by the first record's key when no partition is named.
    pub(super) fn append(
        topic: &'a str,
        partition: Option<u32>,
        expected_end_offset: Option<Offset>,
        records: &'a [RecordInput<'a>],
        producer: Option<ProducerStamp>,
    ) -> Call<'a> {
        let key = records.first().map_or(&[][..], |record| record.key);
        let body = RequestBody::Append(AppendRequest {
            topic,
            partition,
            expected_end_offset,
            records: AppendRecords::from_inputs(records),
            producer,
        });
        Call::new(
            Destination::Partition {
                topic,
                partition,
                key,
            },
            body,
        )
    }

    /// Any shard allocates producer ids; the configured address is as good as any.
    pub(super) fn init_producer() -> Call<'a> {
        Call::new(Destination::Bootstrap, RequestBody::InitProducer)
    }

    /// Any shard takes it and asks every shard for its backup point.
    pub(super) fn backup_begin() -> Call<'a> {
        Call::new(Destination::Bootstrap, RequestBody::BackupBegin)
    }

    /// Any shard takes it and forwards it to the shard read.
    pub(super) fn backup_read(read: BackupReadRequest) -> Call<'a> {
        Call::new(Destination::Bootstrap, RequestBody::BackupRead(read))
    }

    /// Any shard takes it and forwards it to the group's coordinator.
    pub(super) fn commit_offsets(
        group: &'a str,
        topic: &'a str,
        partitions: &[PartitionOffset<'a>],
    ) -> Call<'a> {
        let body = RequestBody::CommitOffsets(CommitOffsetsRequest {
            group,
            topic,
            partitions: partitions.to_vec(),
        });
        Call::new(Destination::Bootstrap, body)
    }

    /// Any shard takes it and forwards it to the group's coordinator.
    pub(super) fn fetch_offsets(group: &'a str, topic: &'a str, partitions: &[u32]) -> Call<'a> {
        let body = RequestBody::FetchOffsets(FetchOffsetsRequest {
            group,
            topic,
            partitions: partitions.to_vec(),
        });
        Call::new(Destination::Bootstrap, body)
    }

    pub(super) fn fetch(
        topic: &'a str,
        partition: u32,
        offset: Offset,
        size_bytes_max: u32,
        wait_max: Duration,
    ) -> Call<'a> {
        let body = RequestBody::Fetch(FetchRequest {
            topic,
            partition,
            offset,
            size_bytes_max,
            wait_max,
        });
        let destination = Destination::Partition {
            topic,
            partition: Some(partition),
            key: &[],
        };
        Call {
            wait_max,
            ..Call::new(destination, body)
        }
    }

    pub(super) fn read_key(
        topic: &'a str,
        partition: Option<u32>,
        key: &'a [u8],
        include_appended: bool,
    ) -> Call<'a> {
        let body = RequestBody::ReadKey(ReadKeyRequest {
            topic,
            partition,
            key,
            include_appended,
        });
        Call::new(
            Destination::Partition {
                topic,
                partition,
                key,
            },
            body,
        )
    }

    pub(super) fn key_history(
        topic: &'a str,
        partition: Option<u32>,
        key: &'a [u8],
        from_offset: Option<Offset>,
        record_count_max: u32,
    ) -> Call<'a> {
        let body = RequestBody::KeyHistory(KeyHistoryRequest {
            topic,
            partition,
            key,
            record_count_max,
            from_offset: from_offset.map(|offset| offset.0),
        });
        Call::new(
            Destination::Partition {
                topic,
                partition,
                key,
            },
            body,
        )
    }
}
