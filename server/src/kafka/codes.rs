//! Kafka error codes for the service's failures, and the one grammar of the message a
//! produce gets when a condition fails (docs/DESIGN.md, "The Kafka front end").
//!
//! A failed condition is answered INVALID_RECORD (87) with `record_errors` =
//! `[{batch_index: i, message}]` and the same `message` as `error_message`:
//!
//! ```text
//! message     = "conflict: " (end-offset / key-failure) [in-batch]
//! end-offset  = "expected end offset " N ", end offset is " N
//! key-failure = "record " I " expected " expectation ", key is " actual
//! expectation = "no key" / "key to exist" / "key " KEY " at offset " N
//! actual      = "at offset " N / "new"
//! in-batch    = " (record " I " of this batch writes the key first)"
//! N, I        = decimal digits (offsets; record indexes within the batch, from 0)
//! KEY         = the key's bytes if all are printable ASCII other than space and ',', and
//!               the key does not start with "0x"; otherwise "0x" and its bytes in lowercase
//!               hex ("0x" alone: the empty key)
//! ```
//!
//! e.g. `conflict: record 2 expected key 12A at offset 5, key is at offset 7`,
//! `conflict: record 0 expected no key, key is at offset 7`,
//! `conflict: record 1 expected key to exist, key is new`,
//! `conflict: expected end offset 5, end offset is 7`. For an end-offset conflict
//! `batch_index` is 0 (the record that carried the condition).

use std::fmt::Write as _;

use cairn_engine::ProducerError;
use cairn_engine::core::KeyCondition;
use cairn_engine::core::condition::Conflict;
use kafka_protocol::ResponseError;

use crate::group::GroupError;
use crate::operation::{Failure, FailureKind};

/// No error.
pub(super) const NONE: i16 = 0;

/// The code of a service failure, for a request that touched a partition.
pub(super) fn failure_code(failure: &Failure) -> i16 {
    let error = match failure.kind {
        FailureKind::BadRequest | FailureKind::BackupRangeUnavailable => {
            ResponseError::InvalidRequest
        }
        FailureKind::TooLarge => ResponseError::MessageTooLarge,
        // Below the log start too: the consumer resets by its auto.offset.reset policy,
        // and ListOffsets EARLIEST gives it the first kept offset.
        FailureKind::OffsetOutOfRange | FailureKind::BeforeLogStart { .. } => {
            ResponseError::OffsetOutOfRange
        }
        FailureKind::InvalidConfig => ResponseError::InvalidConfig,
        FailureKind::UnknownTopic | FailureKind::UnknownPartition => {
            ResponseError::UnknownTopicOrPartition
        }
        FailureKind::TopicExists => ResponseError::TopicAlreadyExists,
        // Kafka's answer to a client writing one of its internal topics.
        FailureKind::InternalTopic => ResponseError::InvalidTopicException,
        FailureKind::Producer(ProducerError::Fenced { .. }) => ResponseError::InvalidProducerEpoch,
        FailureKind::Producer(ProducerError::OutOfOrder { .. }) => {
            ResponseError::OutOfOrderSequenceNumber
        }
        FailureKind::StorageFailure => ResponseError::KafkaStorageError,
        // Retriable: clients refresh their metadata and retry, by when a server is back.
        FailureKind::ShuttingDown => ResponseError::NotLeaderOrFollower,
        FailureKind::Internal => ResponseError::UnknownServerError,
    };
    error.code()
}

/// The code of a refused group request.
pub(super) fn group_error_code(error: GroupError) -> i16 {
    group_error(error).code()
}

/// The Kafka error of a refused group request.
pub(super) fn group_error(error: GroupError) -> ResponseError {
    match error {
        GroupError::UnknownMemberId => ResponseError::UnknownMemberId,
        GroupError::IllegalGeneration => ResponseError::IllegalGeneration,
        GroupError::RebalanceInProgress => ResponseError::RebalanceInProgress,
        GroupError::FencedInstanceId => ResponseError::FencedInstanceId,
        GroupError::InconsistentGroupProtocol => ResponseError::InconsistentGroupProtocol,
        GroupError::InvalidSessionTimeout => ResponseError::InvalidSessionTimeout,
        GroupError::GroupMaxSizeReached => ResponseError::GroupMaxSizeReached,
        GroupError::MemberIdRequired => ResponseError::MemberIdRequired,
        GroupError::InvalidRequest => ResponseError::InvalidRequest,
        GroupError::CoordinatorNotAvailable => ResponseError::CoordinatorNotAvailable,
    }
}

/// Shorthand for a code.
pub(super) fn code(error: ResponseError) -> i16 {
    error.code()
}

/// The message of a failed condition (see the module docs); `key_of(i)` is record `i`'s
/// key.
pub(super) fn conflict_message<'a>(
    conflict: &Conflict,
    key_of: impl Fn(u32) -> Option<&'a [u8]>,
) -> String {
    match *conflict {
        Conflict::EndOffset { expected, actual } => {
            format!("conflict: expected end offset {expected}, end offset is {actual}")
        }
        Conflict::Key {
            record_index,
            condition,
            actual,
            earlier_in_batch,
        } => {
            let mut message = format!("conflict: record {record_index} expected ");
            match condition {
                KeyCondition::NoKey => message.push_str("no key"),
                KeyCondition::KeyExists => message.push_str("key to exist"),
                KeyCondition::At(offset) => {
                    let key = key_of(record_index).unwrap_or_default();
                    let _ = write!(message, "key {} at offset {offset}", render_key(key));
                }
                // Never fails; rendered anyway rather than asserted on.
                KeyCondition::Any => message.push_str("any"),
            }
            match actual {
                Some(offset) => {
                    let _ = write!(message, ", key is at offset {offset}");
                }
                None => message.push_str(", key is new"),
            }
            if let Some(earlier) = earlier_in_batch {
                let _ = write!(
                    message,
                    " (record {earlier} of this batch writes the key first)"
                );
            }
            message
        }
    }
}

/// The record a conflict names (Kafka's `batch_index`).
pub(super) fn conflict_record_index(conflict: &Conflict) -> u32 {
    match *conflict {
        Conflict::EndOffset { .. } => 0,
        Conflict::Key { record_index, .. } => record_index,
    }
}

/// A key as messages show it (see KEY in the module docs).
pub(super) fn render_key(key: &[u8]) -> String {
    let plain = !key.is_empty()
        && !key.starts_with(b"0x")
        && key
            .iter()
            .all(|&byte| byte.is_ascii_graphic() && byte != b',');
    if plain {
        return String::from_utf8_lossy(key).into_owned();
    }
    let mut rendered = String::with_capacity(2 + key.len() * 2);
    rendered.push_str("0x");
    for byte in key {
        let _ = write!(rendered, "{byte:02x}");
    }
    rendered
}

#[cfg(test)]
mod tests {
    use cairn_engine::Offset;

    use super::*;

    fn key_12a(_: u32) -> Option<&'static [u8]> {
        Some(b"12A")
    }

    #[test]
    fn a_read_below_the_log_start_is_offset_out_of_range_and_a_bad_setting_invalid_config() {
        let below = Failure::new(
            FailureKind::BeforeLogStart {
                log_start: Offset(10),
            },
            "removed",
        );
        assert_eq!(failure_code(&below), ResponseError::OffsetOutOfRange.code());
        let invalid = Failure::new(
            FailureKind::InvalidConfig,
            "retention.ms must be at least 1",
        );
        assert_eq!(failure_code(&invalid), ResponseError::InvalidConfig.code());
    }

    #[test]
    fn messages_follow_the_grammar() {
        let at = Conflict::Key {
            record_index: 2,
            condition: KeyCondition::At(Offset(5)),
            actual: Some(Offset(7)),
            earlier_in_batch: None,
        };
        assert_eq!(
            conflict_message(&at, key_12a),
            "conflict: record 2 expected key 12A at offset 5, key is at offset 7"
        );
        let no_key = Conflict::Key {
            record_index: 0,
            condition: KeyCondition::NoKey,
            actual: Some(Offset(7)),
            earlier_in_batch: None,
        };
        assert_eq!(
            conflict_message(&no_key, key_12a),
            "conflict: record 0 expected no key, key is at offset 7"
        );
        let exists = Conflict::Key {
            record_index: 1,
            condition: KeyCondition::KeyExists,
            actual: None,
            earlier_in_batch: None,
        };
        assert_eq!(
            conflict_message(&exists, key_12a),
            "conflict: record 1 expected key to exist, key is new"
        );
        let end = Conflict::EndOffset {
            expected: Offset(5),
            actual: Offset(7),
        };
        assert_eq!(
            conflict_message(&end, key_12a),
            "conflict: expected end offset 5, end offset is 7"
        );
        let in_batch = Conflict::Key {
            record_index: 3,
            condition: KeyCondition::NoKey,
            actual: None,
            earlier_in_batch: Some(1),
        };
        assert_eq!(
            conflict_message(&in_batch, key_12a),
            "conflict: record 3 expected no key, key is new (record 1 of this batch writes the \
             key first)"
        );
    }

    #[test]
    fn keys_are_shown_plain_only_when_unambiguous() {
        assert_eq!(render_key(b"order-17"), "order-17");
        assert_eq!(render_key(b"a b"), "0x612062");
        assert_eq!(render_key(b"a,b"), "0x612c62");
        assert_eq!(render_key(b"0x12"), "0x30783132");
        assert_eq!(render_key(&[0xff, 0x00]), "0xff00");
        assert_eq!(render_key(b""), "0x");
    }
}
