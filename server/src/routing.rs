//! Partition -> owning shard: which shard serves a request.
//!
//! A topic's partition `i` has the global id `first_partition_id + i`, owned by shard
//! `id % shard_count` (`ShardId::owner_of`). A request names its partition, or names a key
//! whose partition is Kafka's `(murmur2(key) & 0x7fffffff) % partition_count`
//! (`cairn_wire::partition_for_key`, the hash every client computes). Routing happens once, on the shard a client reached; a
//! request for another shard's partition crosses the mesh already located.
//!
//! A consumer group's coordinator is the shard [`coordinator_shard`] names, by the same
//! hash of the group id; it keeps the group's committed offsets (in its partition of
//! `offsets::OFFSETS_TOPIC`) and, for Kafka, answers FindCoordinator, membership and
//! offset requests for the group.

use cairn_engine::core::RecordInput;
use cairn_engine::{Shard, ShardId, Topic};
use cairn_wire::{RouteError, partition_for_key};

use crate::operation::{Failure, FailureKind, Located};

/// The coordinator shard of consumer group `group_id` among `shard_count` shards:
/// `(murmur2(group_id) & 0x7fffffff) % shard_count`, Kafka's murmur2 over the id's UTF-8
/// bytes as in `cairn_wire::partition_for_key`. Stable for a data directory (its shard
/// count never changes), so a group's committed offsets are always found where they were
/// written. Every request about a group (FindCoordinator's answer, OffsetCommit,
/// OffsetFetch, membership, native CommitOffsets/FetchOffsets) goes by this one function.
pub(crate) fn coordinator_shard(group_id: &str, shard_count: u16) -> ShardId {
    let shard = partition_for_key(group_id.as_bytes(), u32::from(shard_count));
    ShardId(u16::try_from(shard).expect("a remainder of a u16 divisor fits in u16"))
}

/// The partition of `offsets_topic` (`offsets::OFFSETS_TOPIC`) that `shard` owns: with
/// the aligned placement the catalog gives it, partition `shard`.
pub(crate) fn offsets_partition(
    offsets_topic: &Topic,
    shard: ShardId,
    shard_count: u16,
) -> Result<Located, Failure> {
    (0..offsets_topic.partition_count)
        .find_map(|index| {
            let located = locate(offsets_topic, index, shard_count).ok()?;
            (located.owner == shard).then_some(located)
        })
        .ok_or_else(|| {
            Failure::new(
                FailureKind::Internal,
                format!(
                    "{} has no partition on shard {}",
                    offsets_topic.name, shard.0
                ),
            )
        })
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coordinator_is_the_key_partition_of_the_group_id() {
        for group in ["", "g", "orders-projection", "ümlaut"] {
            for shard_count in [1u16, 2, 3, 8] {
                let expected = partition_for_key(group.as_bytes(), u32::from(shard_count));
                assert_eq!(u32::from(coordinator_shard(group, shard_count).0), expected);
            }
        }
    }
}
