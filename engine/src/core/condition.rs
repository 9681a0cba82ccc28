//! Key conditions: whether one record's `KeyCondition` holds against its key's latest
//! offset, and `Conflict`, the answer a rejected append gets (docs/DESIGN.md §1).
//!
//! The check itself is a pure function of the condition and the latest offset the record
//! sees; which offset that is (pending records and earlier records of the same batch
//! included) is decided by `core::partition`.

use std::fmt;

use crate::core::{KeyCondition, Offset};

/// Why an append was rejected; carries what the client needs to retry without another
/// round trip. A conflict is a normal outcome under contention, not an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conflict {
    /// `expected_end_offset` did not match the partition's end (pending records included).
    EndOffset { expected: Offset, actual: Offset },
    /// Record `record_index` of the batch failed its key condition. `actual` is the key's
    /// latest offset in the log (pending records included), `None` if never written. When
    /// an earlier record of the same batch writes the key, the condition was checked
    /// against that record instead, and `earlier_in_batch` says which one: the batch
    /// contradicts itself, and `actual` still names an offset that exists.
    Key {
        record_index: u32,
        condition: KeyCondition,
        actual: Option<Offset>,
        earlier_in_batch: Option<u32>,
    },
}

/// Whether `condition` holds for a key whose latest record is at `latest` (`None`: the key
/// was never written).
#[must_use]
pub fn condition_holds(condition: KeyCondition, latest: Option<Offset>) -> bool {
    match condition {
        KeyCondition::Any => true,
        KeyCondition::NoKey => latest.is_none(),
        KeyCondition::KeyExists => latest.is_some(),
        KeyCondition::At(expected) => latest == Some(expected),
    }
}

/// The condition as docs/DESIGN.md §1 spells it: `any`, `no_key`, `key_exists`, `at(offset)`.
struct ConditionDisplay(KeyCondition);

impl fmt::Display for ConditionDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            KeyCondition::Any => f.write_str("any"),
            KeyCondition::NoKey => f.write_str("no_key"),
            KeyCondition::KeyExists => f.write_str("key_exists"),
            KeyCondition::At(offset) => write!(f, "at({offset})"),
        }
    }
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Conflict::EndOffset { expected, actual } => {
                write!(
                    f,
                    "expected end offset {expected}, partition ends at {actual}"
                )
            }
            Conflict::Key {
                record_index,
                condition,
                earlier_in_batch: Some(earlier),
                ..
            } => write!(
                f,
                "record {record_index}: condition {} failed: record {earlier} of the same batch \
                 writes the key first",
                ConditionDisplay(condition)
            ),
            Conflict::Key {
                record_index,
                condition,
                actual: Some(actual),
                earlier_in_batch: None,
            } => write!(
                f,
                "record {record_index}: condition {} failed, key's latest offset is {actual}",
                ConditionDisplay(condition)
            ),
            Conflict::Key {
                record_index,
                condition,
                actual: None,
                earlier_in_batch: None,
            } => write!(
                f,
                "record {record_index}: condition {} failed, key was never written",
                ConditionDisplay(condition)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_always_holds() {
        assert!(condition_holds(KeyCondition::Any, None));
        assert!(condition_holds(KeyCondition::Any, Some(Offset(7))));
    }

    #[test]
    fn no_key_holds_only_for_a_never_written_key() {
        assert!(condition_holds(KeyCondition::NoKey, None));
        assert!(!condition_holds(KeyCondition::NoKey, Some(Offset(0))));
    }

    #[test]
    fn key_exists_holds_only_for_a_written_key() {
        assert!(!condition_holds(KeyCondition::KeyExists, None));
        assert!(condition_holds(KeyCondition::KeyExists, Some(Offset(0))));
    }

    #[test]
    fn at_holds_only_at_the_current_latest_offset() {
        let at = KeyCondition::At(Offset(5));
        assert!(condition_holds(at, Some(Offset(5))));
        assert!(
            !condition_holds(at, Some(Offset(6))),
            "stale: the key moved on"
        );
        assert!(!condition_holds(at, Some(Offset(4))));
        assert!(!condition_holds(at, None));
    }

    #[test]
    fn conflicts_display_what_failed_and_the_current_value() {
        let end = Conflict::EndOffset {
            expected: Offset(5),
            actual: Offset(7),
        };
        assert_eq!(
            end.to_string(),
            "expected end offset 5, partition ends at 7"
        );
        let stale = Conflict::Key {
            record_index: 3,
            condition: KeyCondition::At(Offset(12)),
            actual: Some(Offset(15)),
            earlier_in_batch: None,
        };
        assert_eq!(
            stale.to_string(),
            "record 3: condition at(12) failed, key's latest offset is 15"
        );
        let missing = Conflict::Key {
            record_index: 0,
            condition: KeyCondition::KeyExists,
            actual: None,
            earlier_in_batch: None,
        };
        assert_eq!(
            missing.to_string(),
            "record 0: condition key_exists failed, key was never written"
        );
        let contradiction = Conflict::Key {
            record_index: 2,
            condition: KeyCondition::NoKey,
            actual: None,
            earlier_in_batch: Some(0),
        };
        assert_eq!(
            contradiction.to_string(),
            "record 2: condition no_key failed: record 0 of the same batch writes the key first"
        );
    }
}
