//! The consumer groups this shard coordinates: their membership in memory (soft state,
//! lost on restart; members rejoin), the timers that drive it, and the long-polls of
//! JoinGroup and SyncGroup (docs/DESIGN.md, "Consumer groups").
//!
//! A group's coordinator is shard `coordinator_shard(group_id, shard_count)`
//! (`routing`); only that shard keeps the group, so nothing here is shared between
//! executors. `state` is the sans-I/O state machine; this shell owns, per group, the
//! `Group`, an `Event` raised after every change, and one timer task on the shard's
//! executor that sleeps until the group's next deadline (or its next change) and calls
//! `Group::tick`.
//!
//! A parked join or sync waits on the group's event until its outcome is there. The state
//! machine bounds that wait (the rebalance or sync deadline, at most
//! `REBALANCE_TIMEOUT_MAX`); shutdown ends it at once with COORDINATOR_NOT_AVAILABLE, so a
//! parked request never holds up a stopping server. Only the connection that sent it
//! waits: others are served meanwhile.

pub(crate) mod state;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use cairn_engine::io::event::Event;
use hashbrown::HashMap;

pub(crate) use state::{
    Group, GroupError, GroupState, JoinRequest, JoinResult, JoinStart, SyncRequest, SyncResult,
    SyncStart,
};

/// Most groups one shard keeps; a join that would create one more is answered
/// COORDINATOR_NOT_AVAILABLE (retriable) rather than growing memory without bound.
/// Empty groups beyond it are dropped first.
pub(crate) const SHARD_GROUP_COUNT_MAX: usize = 10_000;

/// One group, its change event and whether it is gone.
pub(crate) struct GroupCell {
    pub(crate) group: RefCell<Group>,
    changed: Event,
    deleted: Cell<bool>,
}

impl GroupCell {
    /// Runs `change` on the group and wakes its waiters and its timer.
    pub(crate) fn update<T>(&self, change: impl FnOnce(&mut Group) -> T) -> T {
        let output = change(&mut self.group.borrow_mut());
        self.changed.notify();
        output
    }
}

/// The groups this shard coordinates.
pub(crate) struct Groups {
    groups: RefCell<HashMap<String, Rc<GroupCell>>>,
    /// Makes member ids unique across restarts: a stale client's old id never names a
    /// new member.
    member_id_prefix: String,
    member_id_next: Cell<u64>,
}

impl Groups {
    pub(crate) fn new(shard: u16) -> Groups {
        let started_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos());
        Groups {
            groups: RefCell::new(HashMap::new()),
            member_id_prefix: format!("{shard}-{started_ns:x}"),
            member_id_next: Cell::new(0),
        }
    }

    /// A member id never handed out before: `<client id>-<shard>-<start time>-<n>`, like
    /// Kafka's `<client id>-<uuid>`.
    pub(crate) fn new_member_id(&self, client_id: &str) -> String {
        let next = self.member_id_next.get() + 1;
        self.member_id_next.set(next);
        let client_id: String = client_id.chars().take(64).collect();
        format!("{client_id}-{}-{next}", self.member_id_prefix)
    }

    pub(crate) fn get(&self, group_id: &str) -> Option<Rc<GroupCell>> {
        self.groups.borrow().get(group_id).cloned()
    }

    /// The group, created (with its timer task) if it does not exist; `None` if this shard
    /// has as many groups as it keeps.
    pub(crate) fn get_or_create(&self, group_id: &str) -> Option<Rc<GroupCell>> {
        if let Some(cell) = self.get(group_id) {
            return Some(cell);
        }
        let mut groups = self.groups.borrow_mut();
        if groups.len() >= SHARD_GROUP_COUNT_MAX {
            let empty = groups
                .iter()
                .find(|(_, cell)| cell.group.borrow().state() == GroupState::Empty)
                .map(|(id, _)| id.clone());
            let empty = empty?;
            if let Some(cell) = groups.remove(&empty) {
                cell.deleted.set(true);
                cell.changed.notify();
            }
        }
        let cell = Rc::new(GroupCell {
            group: RefCell::new(Group::new()),
            changed: Event::new(),
            deleted: Cell::new(false),
        });
        groups.insert(group_id.to_owned(), cell.clone());
        glommio::spawn_local(run_timer(cell.clone())).detach();
        Some(cell)
    }

    /// Groups and their members, for the metrics.
    pub(crate) fn counts(&self) -> (usize, usize) {
        let groups = self.groups.borrow();
        let member_count = groups
            .values()
            .map(|cell| cell.group.borrow().member_count())
            .sum();
        (groups.len(), member_count)
    }

    /// Every group's id, state and protocol type, for ListGroups.
    pub(crate) fn list(&self) -> Vec<(String, GroupState, String)> {
        self.groups
            .borrow()
            .iter()
            .map(|(id, cell)| {
                let group = cell.group.borrow();
                (
                    id.clone(),
                    group.state(),
                    group.protocol_type().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    /// Removes an Empty group (DeleteGroups): `Err(false)` if there is none, `Err(true)`
    /// if it has members.
    pub(crate) fn delete(&self, group_id: &str) -> Result<(), bool> {
        let mut groups = self.groups.borrow_mut();
        let Some(cell) = groups.get(group_id) else {
            return Err(false);
        };
        if cell.group.borrow().state() != GroupState::Empty {
            return Err(true);
        }
        if let Some(cell) = groups.remove(group_id) {
            cell.deleted.set(true);
            cell.changed.notify();
        }
        Ok(())
    }
}

/// The group's timer: sleeps until its next deadline or its next change, then ticks.
/// Ends when the group is deleted (or the executor ends with the shard).
async fn run_timer(cell: Rc<GroupCell>) {
    loop {
        if cell.deleted.get() {
            return;
        }
        let changed = cell.changed.listen();
        let next_deadline = cell.group.borrow().next_deadline();
        match next_deadline {
            Some(deadline) => {
                let sleep =
                    glommio::timer::sleep(deadline.saturating_duration_since(Instant::now()));
                futures_lite::future::or(sleep, changed).await;
            }
            None => changed.await,
        }
        let now = Instant::now();
        let due = cell
            .group
            .borrow()
            .next_deadline()
            .is_some_and(|deadline| deadline <= now);
        if due {
            cell.update(|group| group.tick(now));
        }
    }
}

/// Waits for a parked request's outcome: `take` collects it once it is there. `None` when
/// the server started stopping first (the ticket is then abandoned by the caller), or
/// after `bound` as a last resort should the state machine never answer.
pub(crate) async fn wait_for<T>(
    cell: &GroupCell,
    stopping: &Event,
    is_stopping: &Cell<bool>,
    bound: Duration,
    mut take: impl FnMut(&mut Group) -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + bound;
    loop {
        let changed = cell.changed.listen();
        let stop = stopping.listen();
        if let Some(outcome) = take(&mut cell.group.borrow_mut()) {
            return Some(outcome);
        }
        let now = Instant::now();
        if is_stopping.get() || now >= deadline || cell.deleted.get() {
            return None;
        }
        let sleep = glommio::timer::sleep(deadline - now);
        futures_lite::future::or(futures_lite::future::or(changed, stop), sleep).await;
    }
}
