//! The gate an OffsetCommit passes before its offsets are stored: does the committer
//! belong to the group's current generation? The one boundary between committed offsets
//! (`offset_commit`, `offset_delete`) and group membership (JoinGroup, SyncGroup, ...).
//!
//! Until membership exists every group is empty, and this answers what Kafka answers for
//! a group with no members:
//!
//! | generation_id | member_id | answer |
//! |---|---|---|
//! | < 0 | empty | accepted: a "simple consumer" commit (`assign()`-based consumers, admin tools) |
//! | any | non-empty | UNKNOWN_MEMBER_ID: no member has that id |
//! | >= 0 | empty | ILLEGAL_GENERATION: the group has no such generation |
//!
//! OffsetDelete asks [`check_delete`] per topic (default: accepted).
//!
//! Membership replaces the bodies of [`check_commit`] and [`check_delete`] with lookups in
//! its group state (on this shard, the group's coordinator: the caller has checked that),
//! keeping the signatures: `Ok(())` to store the commit, or the error code every
//! partition of the request is answered with (REBALANCE_IN_PROGRESS, FENCED_INSTANCE_ID,
//! ...).

use kafka_protocol::ResponseError;

use crate::context::ShardContext;

/// Whether `member_id` (with `group_instance_id`, for static members) of `group_id` may
/// commit offsets for generation `generation_id`. Called on the group's coordinator shard,
/// once per OffsetCommit, before anything is written. See the module docs.
pub(super) fn check_commit(
    _context: &ShardContext,
    _group_id: &str,
    generation_id: i32,
    member_id: &str,
    _group_instance_id: Option<&str>,
) -> Result<(), ResponseError> {
    if !member_id.is_empty() {
        return Err(ResponseError::UnknownMemberId);
    }
    if generation_id >= 0 {
        return Err(ResponseError::IllegalGeneration);
    }
    Ok(())
}

/// Whether `group_id`'s committed offsets of `topic` may be deleted (OffsetDelete). Kafka
/// refuses a topic the group's members consume (GROUP_SUBSCRIBED_TO_TOPIC); a group with
/// no members has none, so this accepts. Membership replaces the body too.
pub(super) fn check_delete(
    _context: &ShardContext,
    _group_id: &str,
    _topic: &str,
) -> Result<(), ResponseError> {
    Ok(())
}
