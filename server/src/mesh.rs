//! The mesh: glommio's channel mesh between a server's shards, the only link between them.
//!
//! A request for another shard's partition travels as a [`Forwarded`], decoded and routed
//! already, and its typed result comes back as a [`ForwardedResult`], which the front end
//! of the origin encodes. Topic creation runs on shard 0 (which owns the catalog file) and
//! is broadcast to every other shard, which acknowledges once it knows the topic. Every
//! wait for another shard ends when that shard's link closes (its receiving loop, in
//! `shard`, sees the end of the stream): the request then fails with `MeshError`, it does
//! not wait for a reply that cannot come.
//!
//! This module sends and waits; `shard` runs the receiving loops and the shutdown barrier
//! built on `ShardMessage::Drained`.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use cairn_engine::io::event::Event;
use cairn_engine::{ShardId, Topic};
use glommio::channels::channel_mesh::Senders;
use hashbrown::{HashMap, HashSet};

use crate::operation::{Forwarded, ForwardedResult};

/// What shards send each other.
pub(crate) enum ShardMessage {
    /// First message on every link: which shard is at this end of the mesh.
    Hello { shard: u16 },
    /// A request for a partition the receiver owns (or, for topic creation, shard 0).
    Forward { token: u64, request: Forwarded },
    /// The result of a `Forward`.
    Reply {
        token: u64,
        result: Box<ForwardedResult>,
    },
    /// Shard 0 created a topic; learn its partitions and acknowledge.
    TopicCreated { token: u64, topic: Topic },
    /// The receiver of `TopicCreated` learned the topic.
    TopicLearned { token: u64 },
    /// Shutdown, end of phase 1: the sender's connections are closed and it will send no
    /// more requests; it still answers requests until every shard has drained.
    Drained,
}

/// Why a request that needed another shard got no answer from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum MeshError {
    /// The shard closed its end of the mesh (it has shut down), so it can neither take the
    /// request nor answer it.
    #[error("shard {shard} has stopped")]
    ShardStopped {
        /// The shard that stopped.
        shard: u16,
    },
}

/// How far a peer's shutdown has got, as far as this shard can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PeerStatus {
    /// Serving clients; it may forward requests here.
    Serving,
    /// Sent `Drained`: it forwards nothing more, and still answers.
    Drained,
    /// Its link to this shard closed: it neither sends nor answers anything again.
    Stopped,
}

/// Replies a shard is waiting for under one token (`None` for a `TopicLearned`).
#[derive(Default)]
struct ReplySlot {
    /// Mesh peers that still owe a reply.
    awaiting: RefCell<HashSet<usize>>,
    replies: RefCell<Vec<Option<ForwardedResult>>>,
    /// A peer that owed a reply stopped: none will come.
    stopped: Cell<Option<MeshError>>,
    /// A reply arrived or a peer stopped.
    changed: Event,
}

/// A registered wait for replies; unregisters itself when dropped, however the wait ends.
struct PendingReplies<'a> {
    mesh: &'a Mesh,
    token: u64,
    slot: Rc<ReplySlot>,
}

impl PendingReplies<'_> {
    /// Every awaited reply, or `Err` as soon as one of the awaited peers stops.
    async fn wait(self) -> Result<Vec<Option<ForwardedResult>>, MeshError> {
        loop {
            let listener = self.slot.changed.listen();
            if let Some(error) = self.slot.stopped.get() {
                return Err(error);
            }
            if self.slot.awaiting.borrow().is_empty() {
                return Ok(std::mem::take(&mut *self.slot.replies.borrow_mut()));
            }
            listener.await;
        }
    }
}

impl Drop for PendingReplies<'_> {
    fn drop(&mut self) {
        self.mesh.waiting.borrow_mut().remove(&self.token);
    }
}

/// One shard's end of the mesh. Lives on that shard's executor.
pub(crate) struct Mesh {
    shard_id: ShardId,
    pub(crate) senders: Senders<ShardMessage>,
    /// Mesh peer index of each shard, learned from `Hello`s.
    pub(crate) peer_of_shard: RefCell<HashMap<u16, usize>>,
    /// By mesh peer index (this shard's own entry is unused).
    peer_status: RefCell<Vec<PeerStatus>>,
    /// A peer drained or stopped.
    pub(crate) peers_changed: Event,
    waiting: RefCell<HashMap<u64, Rc<ReplySlot>>>,
    next_token: Cell<u64>,
    /// Messages from peers being handled here (forwarded requests, topics to learn), to
    /// answer before the shard stops.
    tasks_in_flight: Cell<usize>,
    task_done: Event,
    /// One catalog change (topic creation, retention change) at a time, from the change on
    /// shard 0 to the last acknowledgement: without it, two changes of one topic could
    /// reach a shard in the other order (a send waits when a link is full) and leave it
    /// on the older policy.
    announcing: glommio::sync::Semaphore,
}

impl Mesh {
    /// This shard's end, over the senders it got from joining the mesh.
    pub(crate) fn new(shard_id: ShardId, senders: Senders<ShardMessage>) -> Mesh {
        let mesh = Mesh {
            shard_id,
            peer_status: RefCell::new(vec![PeerStatus::Serving; senders.nr_consumers()]),
            peer_of_shard: RefCell::new(HashMap::new()),
            senders,
            peers_changed: Event::new(),
            waiting: RefCell::new(HashMap::new()),
            next_token: Cell::new(0),
            tasks_in_flight: Cell::new(0),
            task_done: Event::new(),
            announcing: glommio::sync::Semaphore::new(1),
        };
        mesh.peer_of_shard
            .borrow_mut()
            .insert(shard_id.0, mesh.senders.peer_id());
        mesh
    }

    /// Registers a wait for one reply from each of `peers`. A peer that has stopped
    /// already fails the wait at once.
    fn register(&self, peers: &[usize]) -> PendingReplies<'_> {
        assert!(!peers.is_empty(), "a wait for no reply would end at once");
        let token = self.next_token.get();
        self.next_token.set(token + 1);
        let slot = Rc::new(ReplySlot::default());
        slot.awaiting.borrow_mut().extend(peers.iter().copied());
        if let Some(&peer) = peers
            .iter()
            .find(|&&peer| self.status_of(peer) == PeerStatus::Stopped)
        {
            slot.stopped.set(Some(self.stopped_error(peer)));
        }
        self.waiting.borrow_mut().insert(token, slot.clone());
        PendingReplies {
            mesh: self,
            token,
            slot,
        }
    }

    /// A reply from `peer` for `token`.
    pub(crate) fn deliver(&self, peer: usize, token: u64, reply: Option<ForwardedResult>) {
        let slot = self.waiting.borrow().get(&token).cloned();
        match slot {
            Some(slot) if slot.awaiting.borrow_mut().remove(&peer) => {
                slot.replies.borrow_mut().push(reply);
                slot.changed.notify();
            }
            // The wait ended already (another awaited peer stopped).
            _ => tracing::debug!(token, peer, "reply for a request nobody waits for"),
        }
    }

    pub(crate) fn status_of(&self, peer: usize) -> PeerStatus {
        self.peer_status
            .borrow()
            .get(peer)
            .copied()
            .unwrap_or(PeerStatus::Stopped)
    }

    pub(crate) fn set_status(&self, peer: usize, status: PeerStatus) {
        if let Some(slot) = self.peer_status.borrow_mut().get_mut(peer) {
            // Stopped is final: a `Drained` read after the link closed changes nothing.
            if *slot != PeerStatus::Stopped {
                *slot = status;
            }
        }
        self.peers_changed.notify();
    }

    /// `peer`'s link to this shard closed: fail every wait for a reply from it.
    pub(crate) fn peer_stopped(&self, peer: usize) {
        self.set_status(peer, PeerStatus::Stopped);
        let error = self.stopped_error(peer);
        for slot in self.waiting.borrow().values() {
            if slot.awaiting.borrow().contains(&peer) {
                slot.stopped.set(Some(error));
                slot.changed.notify();
            }
        }
    }

    fn stopped_error(&self, peer: usize) -> MeshError {
        let shard = self
            .peer_of_shard
            .borrow()
            .iter()
            .find(|&(_, &index)| index == peer)
            .map_or(u16::MAX, |(&shard, _)| shard);
        MeshError::ShardStopped { shard }
    }

    /// Completes once `peer` has stopped.
    async fn wait_peer_stopped(&self, peer: usize) {
        loop {
            let listener = self.peers_changed.listen();
            if self.status_of(peer) == PeerStatus::Stopped {
                return;
            }
            listener.await;
        }
    }

    /// Sends `message` to `peer`; fails if the peer has stopped, also while this waits for
    /// room in a full link.
    pub(crate) async fn send_to_peer(
        &self,
        peer: usize,
        message: ShardMessage,
    ) -> Result<(), MeshError> {
        let error = self.stopped_error(peer);
        if self.status_of(peer) == PeerStatus::Stopped {
            return Err(error);
        }
        let sent = futures_lite::future::or(
            async { self.senders.send_to(peer, message).await.is_ok() },
            async {
                self.wait_peer_stopped(peer).await;
                false
            },
        )
        .await;
        if sent { Ok(()) } else { Err(error) }
    }

    /// The mesh peer indices of every other shard.
    pub(crate) fn other_peers(&self) -> Vec<usize> {
        let own = self.senders.peer_id();
        (0..self.senders.nr_consumers())
            .filter(|peer| *peer != own)
            .collect()
    }

    fn peer(&self, shard: ShardId) -> usize {
        *self
            .peer_of_shard
            .borrow()
            .get(&shard.0)
            .expect("every shard said hello before the server was ready")
    }

    /// Moves `request` to `owner` and returns its result; `Err` if that shard has stopped
    /// before answering.
    pub(crate) async fn forward(
        &self,
        owner: ShardId,
        request: Forwarded,
    ) -> Result<ForwardedResult, MeshError> {
        assert_ne!(owner, self.shard_id, "a shard never forwards to itself");
        let peer = self.peer(owner);
        let pending = self.register(&[peer]);
        let message = ShardMessage::Forward {
            token: pending.token,
            request,
        };
        self.send_to_peer(peer, message).await?;
        let mut replies = pending.wait().await?;
        Ok(replies
            .pop()
            .flatten()
            .expect("the reply to a Forward carries a result"))
    }

    /// Waits for this shard's turn to change the catalog and announce it (held until the
    /// permit is dropped).
    pub(crate) async fn announcing(&self) -> Option<glommio::sync::Permit<'_>> {
        // The semaphore is never closed, so acquiring fails only if it were; no turn is
        // then needed, as nothing is announced any more.
        self.announcing.acquire_permit(1).await.ok()
    }

    /// Tells every other shard about a topic created or changed here (shard 0), as the
    /// catalog now holds it, and waits until all of them know it; `Err` if one of them has stopped (the topic is in the catalog anyway,
    /// and every shard learns it from there when it starts).
    pub(crate) async fn broadcast_topic(&self, topic: &Topic) -> Result<(), MeshError> {
        let peers = self.other_peers();
        if peers.is_empty() {
            return Ok(());
        }
        let pending = self.register(&peers);
        let mut first_error = None;
        for &peer in &peers {
            let message = ShardMessage::TopicCreated {
                token: pending.token,
                topic: topic.clone(),
            };
            // Tell the others even if one has stopped: they can then serve the topic.
            if let Err(error) = self.send_to_peer(peer, message).await {
                first_error.get_or_insert(error);
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => pending.wait().await.map(|_| ()),
        }
    }

    /// Runs a task that handles a message from a peer, counted so that the shard answers
    /// it before it stops (`tasks_done`).
    pub(crate) fn spawn_task(
        self: &Rc<Self>,
        task: impl std::future::Future<Output = ()> + 'static,
    ) {
        self.tasks_in_flight.set(self.tasks_in_flight.get() + 1);
        let mesh = self.clone();
        glommio::spawn_local(async move {
            task.await;
            mesh.tasks_in_flight.set(mesh.tasks_in_flight.get() - 1);
            mesh.task_done.notify();
        })
        .detach();
    }

    /// Completes once every task started by `spawn_task` has ended.
    pub(crate) async fn tasks_done(&self) {
        while self.tasks_in_flight.get() > 0 {
            let listener = self.task_done.listen();
            if self.tasks_in_flight.get() == 0 {
                break;
            }
            listener.await;
        }
    }
}
