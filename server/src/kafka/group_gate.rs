//! The gate an OffsetCommit passes before its offsets are stored: does the committer
//! belong to the group's current generation? The one boundary between committed offsets
//! (`offset_commit`, `offset_delete`) and group membership (JoinGroup, SyncGroup, ...).
//!
//! A group this shard keeps membership for answers by its state
//! (`group::Group::validate_commit`, Kafka's rules):
//!
//! - a member of the current generation commits while the group is Stable or
//!   PreparingRebalance (consumers commit what they consumed when a rebalance revokes
//!   their partitions);
//! - in CompletingRebalance, a member of the current or the previous generation is told
//!   REBALANCE_IN_PROGRESS: it retries once it has synced;
//! - otherwise ILLEGAL_GENERATION for another generation, UNKNOWN_MEMBER_ID for an id the
//!   group does not have, FENCED_INSTANCE_ID for a static instance's old id;
//! - generation -1 without a member id (an `assign()`-based consumer, a tool) only while
//!   the group has no members.
//!
//! A group with no membership state (never joined, or joined before a restart) is an
//! empty group:
//!
//! | generation_id | member_id | answer |
//! |---|---|---|
//! | < 0 | empty | accepted: a "simple consumer" commit (`assign()`-based consumers, admin tools) |
//! | any | non-empty | UNKNOWN_MEMBER_ID: no member has that id (after a restart it rejoins) |
//! | >= 0 | empty | ILLEGAL_GENERATION: the group has no such generation |
//!
//! OffsetDelete asks [`check_delete`] per topic (accepted: Kafka's GROUP_SUBSCRIBED_TO_TOPIC
//! would need the members' subscriptions, which are opaque bytes here).

use kafka_protocol::ResponseError;

use super::codes;
use crate::context::ShardContext;

/// Whether `member_id` (with `group_instance_id`, for static members) of `group_id` may
/// commit offsets for generation `generation_id`. Called on the group's coordinator shard,
/// once per OffsetCommit, before anything is written. See the module docs.
pub(super) fn check_commit(
    context: &ShardContext,
    group_id: &str,
    generation_id: i32,
    member_id: &str,
    group_instance_id: Option<&str>,
) -> Result<(), ResponseError> {
    if let Some(cell) = context.groups.get(group_id) {
        let instance_id = group_instance_id.filter(|id| !id.is_empty());
        return cell
            .group
            .borrow()
            .validate_commit(member_id, instance_id, generation_id)
            .map_err(codes::group_error);
    }
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
/// no members has none; one with members is accepted too (see the module docs).
pub(super) fn check_delete(
    _context: &ShardContext,
    _group_id: &str,
    _topic: &str,
) -> Result<(), ResponseError> {
    Ok(())
}
