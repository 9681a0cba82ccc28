//! Committed offsets: how consumers' progress is stored (docs/DESIGN.md, "Committed
//! offsets"). Sans-I/O: names, encodings and bounds; the service appends and reads.
//!
//! Every group's commits live in the internal topic [`OFFSETS_TOPIC`], which has one
//! partition per shard, partition `i` owned by shard `i` (the catalog places it aligned:
//! `Engine::ensure_topic_aligned`). A group's commits go to the partition of its
//! coordinator shard (`routing::coordinator_shard`), one record per (group, topic,
//! partition) with the key [`encode_key`], so the partition's key index holds the latest
//! commit of each directly, and one commit request is one atomic batch. A record with a
//! null value (a tombstone) means "no committed offset".
//!
//! Key (big-endian, lengths in bytes):
//!
//! | bytes | field |
//! |---|---|
//! | 1 | key version, 1 |
//! | 2 | group id length *g* |
//! | *g* | group id, UTF-8 |
//! | 2 | topic name length *t* |
//! | *t* | topic name |
//! | 4 | partition index |
//!
//! Value, version 1 (big-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 1 | value version, 1 |
//! | 8 | committed offset (i64: the next offset the consumer will read) |
//! | 4 | leader epoch (i32; -1: unknown) |
//! | 8 | commit timestamp, ms since the Unix epoch (server time) |
//! | 2 | metadata length *m*, at most [`METADATA_SIZE_BYTES_MAX`] |
//! | *m* | metadata string, UTF-8, as the client committed it |
//!
//! A value of another version, or one that does not parse, is reported, never guessed at:
//! a newer server's commit read by an older one is an error, not a wrong offset.

#![deny(clippy::indexing_slicing)]

/// Names starting with this are internal: hidden from Metadata, refused to client
/// produces and topic creation.
pub(crate) const INTERNAL_TOPIC_PREFIX: &str = "__cairn";

/// The internal topic holding every group's committed offsets.
pub(crate) const OFFSETS_TOPIC: &str = "__cairn_offsets";

/// Whether `topic` is internal (see [`INTERNAL_TOPIC_PREFIX`]).
pub(crate) fn is_internal(topic: &str) -> bool {
    topic.starts_with(INTERNAL_TOPIC_PREFIX)
}

/// Longest group id, in bytes. Kafka sets none below its string limit; ours keeps every
/// key within the engine's `KEY_SIZE_BYTES_MAX`.
pub(crate) const GROUP_ID_SIZE_BYTES_MAX: usize = 1024;

/// Longest metadata string of one commit, in bytes: Kafka's `offset.metadata.max.bytes`
/// default. Longer is OFFSET_METADATA_TOO_LARGE.
pub(crate) const METADATA_SIZE_BYTES_MAX: usize = 4096;

const KEY_VERSION: u8 = 1;
const VALUE_VERSION: u8 = 1;
const VALUE_FIXED_SIZE_BYTES: usize = 1 + 8 + 4 + 8 + 2;

const _: () = assert!(
    1 + 2 + GROUP_ID_SIZE_BYTES_MAX + 2 + cairn_engine::io::data_dir::TOPIC_NAME_SIZE_BYTES_MAX + 4
        <= cairn_engine::core::limits::KEY_SIZE_BYTES_MAX
);
const _: () = assert!(METADATA_SIZE_BYTES_MAX <= u16::MAX as usize);

/// One committed offset, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CommittedOffset {
    /// The next offset the group will read in the partition (Kafka's convention).
    pub(crate) offset: i64,
    /// The leader epoch the client saw, or -1.
    pub(crate) leader_epoch: i32,
    /// The client's metadata string, kept and returned as is.
    pub(crate) metadata: String,
    /// When the commit was appended, ms since the Unix epoch.
    pub(crate) commit_timestamp_ms: i64,
}

/// Why a stored commit record could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum OffsetRecordError {
    #[error("committed-offset value of version {version} (this server reads version 1)")]
    UnknownVersion { version: u8 },
    #[error("committed-offset value of {size_bytes} bytes does not parse")]
    Malformed { size_bytes: usize },
}

/// The key of (group, topic, partition) in [`OFFSETS_TOPIC`]; see the module docs. The
/// caller bounds `group` by [`GROUP_ID_SIZE_BYTES_MAX`] and `topic` by the topic name
/// limit, so both lengths fit their u16.
pub(crate) fn encode_key(group: &str, topic: &str, partition: u32) -> Vec<u8> {
    let group_len = u16::try_from(group.len()).expect("group ids are bounded below 64 KiB");
    let topic_len = u16::try_from(topic.len()).expect("topic names are bounded below 64 KiB");
    let mut key = Vec::with_capacity(1 + 2 + group.len() + 2 + topic.len() + 4);
    key.push(KEY_VERSION);
    key.extend_from_slice(&group_len.to_be_bytes());
    key.extend_from_slice(group.as_bytes());
    key.extend_from_slice(&topic_len.to_be_bytes());
    key.extend_from_slice(topic.as_bytes());
    key.extend_from_slice(&partition.to_be_bytes());
    key
}

/// The (group, topic, partition) of a key made by [`encode_key`], or `None` if `key` is
/// not one.
pub(crate) fn decode_key(key: &[u8]) -> Option<(String, String, u32)> {
    let (&version, rest) = key.split_first()?;
    if version != KEY_VERSION {
        return None;
    }
    let (group, rest) = take_string(rest)?;
    let (topic, rest) = take_string(rest)?;
    let partition = u32::from_be_bytes(rest.try_into().ok()?);
    Some((group, topic, partition))
}

fn take_string(bytes: &[u8]) -> Option<(String, &[u8])> {
    let (len, rest) = bytes.split_first_chunk::<2>()?;
    let len = usize::from(u16::from_be_bytes(*len));
    let (text, rest) = rest.split_at_checked(len)?;
    Some((String::from_utf8(text.to_vec()).ok()?, rest))
}

/// The value of a commit; see the module docs. The caller bounds `metadata` by
/// [`METADATA_SIZE_BYTES_MAX`].
pub(crate) fn encode_value(committed: &CommittedOffset) -> Vec<u8> {
    let metadata_len = u16::try_from(committed.metadata.len())
        .expect("metadata is bounded by METADATA_SIZE_BYTES_MAX");
    let mut value = Vec::with_capacity(VALUE_FIXED_SIZE_BYTES + committed.metadata.len());
    value.push(VALUE_VERSION);
    value.extend_from_slice(&committed.offset.to_be_bytes());
    value.extend_from_slice(&committed.leader_epoch.to_be_bytes());
    value.extend_from_slice(&committed.commit_timestamp_ms.to_be_bytes());
    value.extend_from_slice(&metadata_len.to_be_bytes());
    value.extend_from_slice(committed.metadata.as_bytes());
    value
}

/// The commit a stored value holds; `Ok(None)` for a tombstone (an empty value: every
/// commit's value has at least its version byte).
pub(crate) fn decode_value(value: &[u8]) -> Result<Option<CommittedOffset>, OffsetRecordError> {
    let malformed = OffsetRecordError::Malformed {
        size_bytes: value.len(),
    };
    let Some((&version, rest)) = value.split_first() else {
        return Ok(None);
    };
    if version != VALUE_VERSION {
        return Err(OffsetRecordError::UnknownVersion { version });
    }
    let (offset, rest) = rest.split_first_chunk::<8>().ok_or(malformed.clone())?;
    let (leader_epoch, rest) = rest.split_first_chunk::<4>().ok_or(malformed.clone())?;
    let (timestamp, rest) = rest.split_first_chunk::<8>().ok_or(malformed.clone())?;
    let (metadata_len, rest) = rest.split_first_chunk::<2>().ok_or(malformed.clone())?;
    if rest.len() != usize::from(u16::from_be_bytes(*metadata_len)) {
        return Err(malformed);
    }
    let metadata = String::from_utf8(rest.to_vec()).map_err(|_| malformed)?;
    Ok(Some(CommittedOffset {
        offset: i64::from_be_bytes(*offset),
        leader_epoch: i32::from_be_bytes(*leader_epoch),
        metadata,
        commit_timestamp_ms: i64::from_be_bytes(*timestamp),
    }))
}

/// Which (topic, partition)s each group has a committed offset for, in one coordinator
/// partition: what the key index cannot list (it finds a key, it does not enumerate a
/// group's). Rebuilt at start from the partition's records, in offset order, and kept up
/// to date by each synced commit; one entry per committed (group, topic, partition), as
/// the key index has. Answers "every offset of the group" (OffsetFetch with topics null)
/// and "delete the group's offsets" (DeleteGroups).
#[derive(Debug, Default)]
pub(crate) struct GroupOffsetsIndex {
    groups: std::collections::BTreeMap<String, std::collections::BTreeSet<(String, u32)>>,
}

impl GroupOffsetsIndex {
    /// Applies one record of the offsets partition, read back in offset order: a commit
    /// adds its key, a tombstone removes it. A key that is not one of ours changes nothing
    /// (nothing else is ever written there).
    pub(crate) fn apply_record(&mut self, key: &[u8], value: &[u8]) {
        if let Some((group, topic, partition)) = decode_key(key) {
            self.apply(&group, &topic, partition, !value.is_empty());
        }
    }

    /// Records that `group` now has (`committed`) or no longer has a committed offset of
    /// `partition` of `topic`.
    pub(crate) fn apply(&mut self, group: &str, topic: &str, partition: u32, committed: bool) {
        if committed {
            self.groups
                .entry(group.to_owned())
                .or_default()
                .insert((topic.to_owned(), partition));
        } else if let Some(partitions) = self.groups.get_mut(group) {
            partitions.remove(&(topic.to_owned(), partition));
            if partitions.is_empty() {
                self.groups.remove(group);
            }
        }
    }

    /// Every (topic, partition) `group` has a committed offset for, in order.
    pub(crate) fn partitions_of(&self, group: &str) -> Vec<(String, u32)> {
        self.groups
            .get(group)
            .map(|partitions| partitions.iter().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_key_is_laid_out_as_documented() {
        assert_eq!(
            encode_key("g", "ab", 3),
            vec![1, 0, 1, b'g', 0, 2, b'a', b'b', 0, 0, 0, 3]
        );
    }

    #[test]
    fn a_value_is_laid_out_as_documented() {
        let value = encode_value(&CommittedOffset {
            offset: 5,
            leader_epoch: -1,
            metadata: "m".into(),
            commit_timestamp_ms: 7,
        });
        let mut expected = vec![1];
        expected.extend_from_slice(&5i64.to_be_bytes());
        expected.extend_from_slice(&(-1i32).to_be_bytes());
        expected.extend_from_slice(&7i64.to_be_bytes());
        expected.extend_from_slice(&[0, 1, b'm']);
        assert_eq!(value, expected);
    }

    #[test]
    fn an_empty_value_is_a_tombstone_and_others_are_checked() {
        assert_eq!(decode_value(&[]), Ok(None));
        assert_eq!(
            decode_value(&[2, 0]),
            Err(OffsetRecordError::UnknownVersion { version: 2 })
        );
        assert_eq!(
            decode_value(&[1, 0]),
            Err(OffsetRecordError::Malformed { size_bytes: 2 })
        );
    }

    #[test]
    fn internal_names_are_recognised() {
        assert!(is_internal(OFFSETS_TOPIC));
        assert!(is_internal("__cairn_anything"));
        assert!(!is_internal("_cairn"));
        assert!(!is_internal("__consumer_offsets"));
    }

    #[test]
    fn the_group_index_follows_commits_and_tombstones() {
        let mut index = GroupOffsetsIndex::default();
        let commit = encode_value(&CommittedOffset {
            offset: 1,
            leader_epoch: -1,
            metadata: String::new(),
            commit_timestamp_ms: 0,
        });
        index.apply_record(&encode_key("g", "b", 1), &commit);
        index.apply_record(&encode_key("g", "a", 0), &commit);
        index.apply_record(&encode_key("h", "a", 0), &commit);
        index.apply_record(&encode_key("g", "a", 0), &commit);
        index.apply_record(b"not a key", &commit);
        assert_eq!(
            index.partitions_of("g"),
            vec![("a".to_owned(), 0), ("b".to_owned(), 1)]
        );
        index.apply_record(&encode_key("h", "a", 0), &[]);
        assert_eq!(index.groups.keys().collect::<Vec<_>>(), vec!["g"]);
        assert!(index.partitions_of("h").is_empty());
    }

    proptest! {
        #[test]
        fn keys_round_trip(group in ".{0,40}", topic in "[a-z._-]{1,40}", partition: u32) {
            let key = encode_key(&group, &topic, partition);
            prop_assert_eq!(decode_key(&key), Some((group, topic, partition)));
        }

        #[test]
        fn values_round_trip(
            offset: i64, leader_epoch: i32, metadata in ".{0,60}", commit_timestamp_ms: i64,
        ) {
            let committed = CommittedOffset { offset, leader_epoch, metadata, commit_timestamp_ms };
            prop_assert_eq!(decode_value(&encode_value(&committed)), Ok(Some(committed)));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_key(&bytes);
            let _ = decode_value(&bytes);
        }
    }
}
