//! Partition -> owning shard: which shard serves a request.
//!
//! A topic's partition `i` has the global id `first_partition_id + i`, owned by shard
//! `id % shard_count` (`ShardId::owner_of`). A request names its partition, or names a key
//! whose partition is Kafka's `(murmur2(key) & 0x7fffffff) % partition_count`
//! (`cairn_wire::partition_for_key`, the hash every client computes). Routing happens once, on the shard a client reached; a
//! request for another shard's partition crosses the mesh already located.

use cairn_engine::core::RecordInput;
use cairn_engine::{Shard, ShardId, Topic};
use cairn_wire::{RouteError, partition_for_key};

use crate::operation::{Failure, FailureKind, Located};

/// The topic named `name`, as this shard knows it.
pub(crate) fn topic(shard: &Shard, name: &str) -> Result<Topic, Failure> {
    shard.topic(name).ok_or_else(|| {
        Failure::new(
            FailureKind::UnknownTopic,
            format!("no topic named {name:?}"),
        )
    })
}

/// Partition `partition_index` of `topic` and its owner among `shard_count` shards.
pub(crate) fn locate(
    topic: &Topic,
    partition_index: u32,
    shard_count: u16,
) -> Result<Located, Failure> {
    let partition_id = topic.partition_id(partition_index).ok_or_else(|| {
        Failure::new(
            FailureKind::UnknownPartition,
            format!(
                "topic {} has {} partitions, not {partition_index}",
                topic.name, topic.partition_count
            ),
        )
    })?;
    Ok(Located {
        partition_index,
        partition_id,
        owner: ShardId::owner_of(partition_id, shard_count),
    })
}

/// The partition a read of `key` goes to: `partition` if named, else the key's.
pub(crate) fn locate_key(
    topic: &Topic,
    partition: Option<u32>,
    key: &[u8],
    shard_count: u16,
) -> Result<Located, Failure> {
    let index = cairn_wire::route(partition, key, topic.partition_count).map_err(route_failure)?;
    locate(topic, index, shard_count)
}

/// The partition a batch goes to: `partition` if named, else the first record's key's,
/// which every other record's key must share.
pub(crate) fn locate_batch(
    topic: &Topic,
    partition: Option<u32>,
    records: &[RecordInput<'_>],
    shard_count: u16,
) -> Result<Located, Failure> {
    let key_first = records.first().map(|record| record.key).unwrap_or_default();
    let partition_first =
        cairn_wire::route(partition, key_first, topic.partition_count).map_err(route_failure)?;
    if partition.is_none() {
        for (index, record) in records.iter().enumerate().skip(1) {
            // Batches for one entity repeat its key; skip the hash for those.
            if record.key == key_first {
                continue;
            }
            let partition_record = partition_for_key(record.key, topic.partition_count);
            if partition_record != partition_first {
                return Err(route_failure(RouteError::KeysSpanPartitions {
                    record_index: index,
                    partition_first,
                    partition_record,
                }));
            }
        }
    }
    locate(topic, partition_first, shard_count)
}

fn route_failure(route_error: RouteError) -> Failure {
    let kind = match route_error {
        RouteError::UnknownPartition { .. } => FailureKind::UnknownPartition,
        RouteError::KeysSpanPartitions { .. } => FailureKind::BadRequest,
    };
    Failure::new(kind, route_error.to_string())
}

/// The shard that coordinates consumer group `group_id`: `(murmur2(group_id) & 0x7fffffff)
/// % shard_count`, the hash keys are routed by (`cairn_wire::partition_for_key`), so any
/// client or tool can compute it. Its Kafka broker is FindCoordinator's answer.
pub(crate) fn coordinator_shard(group_id: &str, shard_count: u16) -> ShardId {
    let shard = partition_for_key(group_id.as_bytes(), u32::from(shard_count.max(1)));
    ShardId(u16::try_from(shard).expect("a shard index is below shard_count, a u16"))
}
