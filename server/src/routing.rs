//! Routing between shards: each partition has one owning shard, and requests that arrive on
//! another shard cross to it over glommio's channel mesh — the only link between shards.
//!
//! A forwarded request travels as its original frame; the owner handles it like any other
//! and sends back the encoded response, which the origin writes to its client unchanged.
//! Topic creation runs on shard 0 (which owns the catalog file) and is answered only after
//! every shard has learned the new partitions, so no client can see a topic that some shard
//! does not know. Every wait for another shard ends when that shard's link closes (its
//! receiving loop here sees the end of the stream): the request then fails with
//! `MeshError`, it does not wait for a reply that cannot come.
//!
//! This module also owns a shard's lifecycle in the server: recover, join the mesh, listen,
//! and shut down in two phases, so that no shard stops answering the mesh while another
//! shard's connection may still wait on it:
//!
//! 1. Stop accepting, stop reading requests, answer those already read (including ones
//!    forwarded to other shards) and close the connections; meanwhile keep serving the
//!    mesh, answering what other shards forward (`ShuttingDown` for new work; a staged
//!    append gets its real outcome). Then send `Drained` to every peer.
//! 2. Once every peer has sent `Drained` (or its link closed), and the requests they
//!    forwarded here are answered, close the engine shard (which syncs) and close this
//!    shard's end of every link.
//!
//! A peer's `Drained` arrives after everything it forwarded (one link is one FIFO), and a
//! peer sends it only once its connections, and so every request it forwarded, are done:
//! after the barrier no shard forwards anything to any other.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use cairn_engine::io::event::Event;
use cairn_engine::{Engine, Shard, ShardId, Topic};
use glommio::channels::channel_mesh::{Full, MeshBuilder, Senders};
use glommio::net::TcpListener;
use hashbrown::{HashMap, HashSet};

use crate::admission::Admission;
use crate::{EXIT_STORAGE_FAILURE, Listening, ServerConfig, ShutdownSignal, connection};

/// How long a poisoned shard lets its connections send their error responses before the
/// process exits.
const FAIL_STOP_DRAIN: Duration = Duration::from_millis(200);

/// How often a shard looks at the shutdown signal.
const SHUTDOWN_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// What shards send each other.
pub(crate) enum ShardMessage {
    /// First message on every link: which shard is at this end of the mesh.
    Hello { shard: u16 },
    /// A client's request frame for a partition the receiver owns.
    Forward { token: u64, frame: Vec<u8> },
    /// The encoded response to a `Forward`.
    Reply { token: u64, frame: Vec<u8> },
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
enum PeerStatus {
    /// Serving clients; it may forward requests here.
    Serving,
    /// Sent `Drained`: it forwards nothing more, and still answers.
    Drained,
    /// Its link to this shard closed: it neither sends nor answers anything again.
    Stopped,
}

/// Replies a shard is waiting for under one token.
#[derive(Default)]
struct ReplySlot {
    /// Mesh peers that still owe a reply.
    awaiting: RefCell<HashSet<usize>>,
    replies: RefCell<Vec<Vec<u8>>>,
    /// A peer that owed a reply stopped: none will come.
    stopped: Cell<Option<MeshError>>,
    /// A reply arrived or a peer stopped.
    changed: Event,
}

/// A registered wait for replies; unregisters itself when dropped, however the wait ends.
struct PendingReplies<'a> {
    context: &'a ShardContext,
    token: u64,
    slot: Rc<ReplySlot>,
}

impl PendingReplies<'_> {
    /// Every awaited reply, or `Err` as soon as one of the awaited peers stops.
    async fn wait(self) -> Result<Vec<Vec<u8>>, MeshError> {
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
        self.context.waiting.borrow_mut().remove(&self.token);
    }
}

/// Everything a shard's tasks share. Lives on one executor.
pub(crate) struct ShardContext {
    pub(crate) shard: Shard,
    pub(crate) shard_id: ShardId,
    pub(crate) config: ServerConfig,
    pub(crate) listening: Listening,
    /// Raised when the server is shutting down: connections stop reading new requests.
    pub(crate) stopping: Event,
    pub(crate) is_stopping: Cell<bool>,
    senders: Senders<ShardMessage>,
    /// Mesh peer index of each shard, learned from `Hello`s.
    peer_of_shard: RefCell<HashMap<u16, usize>>,
    /// By mesh peer index (this shard's own entry is unused).
    peer_status: RefCell<Vec<PeerStatus>>,
    /// A peer drained or stopped.
    peers_changed: Event,
    waiting: RefCell<HashMap<u64, Rc<ReplySlot>>>,
    next_token: Cell<u64>,
    /// Connections currently open, to wait for on shutdown.
    pub(crate) open_connections: Cell<usize>,
    pub(crate) connection_closed: Event,
    /// Messages from peers being handled here (forwarded requests, topics to learn), to
    /// answer before the shard stops.
    mesh_tasks_in_flight: Cell<usize>,
    mesh_task_done: Event,
    /// The shard's request memory budget and connection limit.
    pub(crate) admission: Admission,
}

impl ShardContext {
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
            context: self,
            token,
            slot,
        }
    }

    /// A reply from `peer` for `token`.
    fn deliver(&self, peer: usize, token: u64, frame: Vec<u8>) {
        let slot = self.waiting.borrow().get(&token).cloned();
        match slot {
            Some(slot) if slot.awaiting.borrow_mut().remove(&peer) => {
                slot.replies.borrow_mut().push(frame);
                slot.changed.notify();
            }
            // The wait ended already (another awaited peer stopped).
            _ => tracing::debug!(token, peer, "reply for a request nobody waits for"),
        }
    }

    fn status_of(&self, peer: usize) -> PeerStatus {
        self.peer_status
            .borrow()
            .get(peer)
            .copied()
            .unwrap_or(PeerStatus::Stopped)
    }

    fn set_status(&self, peer: usize, status: PeerStatus) {
        if let Some(slot) = self.peer_status.borrow_mut().get_mut(peer) {
            // Stopped is final: a `Drained` read after the link closed changes nothing.
            if *slot != PeerStatus::Stopped {
                *slot = status;
            }
        }
        self.peers_changed.notify();
    }

    /// `peer`'s link to this shard closed: fail every wait for a reply from it.
    fn peer_stopped(&self, peer: usize) {
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
    async fn send_to_peer(&self, peer: usize, message: ShardMessage) -> Result<(), MeshError> {
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
    fn other_peers(&self) -> Vec<usize> {
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

    /// Sends `frame` to the shard that owns its partition and returns that shard's
    /// encoded response; `Err` if that shard has stopped before answering.
    pub(crate) async fn forward(&self, owner: ShardId, frame: &[u8]) -> Result<Vec<u8>, MeshError> {
        assert_ne!(owner, self.shard_id, "a shard never forwards to itself");
        let peer = self.peer(owner);
        let pending = self.register(&[peer]);
        let message = ShardMessage::Forward {
            token: pending.token,
            frame: frame.to_vec(),
        };
        self.send_to_peer(peer, message).await?;
        let mut replies = pending.wait().await?;
        Ok(replies
            .pop()
            .expect("a completed wait has one reply per awaited peer"))
    }

    /// Tells every other shard about a topic created here (shard 0) and waits until all of
    /// them know it; `Err` if one of them has stopped (the topic is in the catalog anyway,
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
    /// it before it stops.
    fn spawn_mesh_task(self: &Rc<Self>, task: impl std::future::Future<Output = ()> + 'static) {
        self.mesh_tasks_in_flight
            .set(self.mesh_tasks_in_flight.get() + 1);
        let context = self.clone();
        glommio::spawn_local(async move {
            task.await;
            context
                .mesh_tasks_in_flight
                .set(context.mesh_tasks_in_flight.get() - 1);
            context.mesh_task_done.notify();
        })
        .detach();
    }
}

/// One shard of the server, from recovery to shutdown. Returns `Err` with a description if
/// it cannot start.
pub(crate) async fn run_shard(
    shard_id: ShardId,
    engine: Engine,
    mesh: MeshBuilder<ShardMessage, Full>,
    config: ServerConfig,
    listening: Listening,
    shutdown: ShutdownSignal,
    ready: std::sync::mpsc::Sender<Result<u16, String>>,
) -> Result<(), String> {
    let fail = |problem: String| {
        let _ = ready.send(Err(format!("shard {}: {problem}", shard_id.0)));
        problem
    };
    let shard = engine
        .open_shard(shard_id)
        .await
        .map_err(|error| fail(error.to_string()))?;
    let (senders, mut receivers) = mesh
        .join()
        .await
        .map_err(|error| fail(format!("mesh join failed: {error}")))?;
    let context = Rc::new(ShardContext {
        shard,
        shard_id,
        config: config.clone(),
        listening: listening.clone(),
        stopping: Event::new(),
        is_stopping: Cell::new(false),
        peer_status: RefCell::new(vec![PeerStatus::Serving; senders.nr_consumers()]),
        senders,
        peer_of_shard: RefCell::new(HashMap::new()),
        peers_changed: Event::new(),
        waiting: RefCell::new(HashMap::new()),
        next_token: Cell::new(0),
        open_connections: Cell::new(0),
        connection_closed: Event::new(),
        mesh_tasks_in_flight: Cell::new(0),
        mesh_task_done: Event::new(),
        admission: Admission::new(config.shard_request_bytes_max),
    });
    context
        .peer_of_shard
        .borrow_mut()
        .insert(shard_id.0, context.senders.peer_id());

    // Say hello on every link, then serve what arrives on each until that peer closes it.
    for peer in context.other_peers() {
        if context
            .senders
            .send_to(peer, ShardMessage::Hello { shard: shard_id.0 })
            .await
            .is_err()
        {
            return Err(fail(format!("mesh peer {peer} is gone")));
        }
    }
    let hello_received = Event::new();
    for (peer, receiver) in receivers.streams() {
        let context = context.clone();
        let hello_received = hello_received.clone();
        glommio::spawn_local(async move {
            while let Some(message) = receiver.recv().await {
                handle_message(&context, peer, message, &hello_received);
            }
            context.peer_stopped(peer);
        })
        .detach();
    }
    while context.peer_of_shard.borrow().len() < usize::from(config.shard_count) {
        let listener =
            futures_lite::future::or(hello_received.listen(), context.peers_changed.listen());
        if let Some(peer) = context
            .other_peers()
            .into_iter()
            .find(|&peer| context.status_of(peer) == PeerStatus::Stopped)
        {
            return Err(fail(format!(
                "mesh peer {peer} stopped before it said hello"
            )));
        }
        listener.await;
    }

    let addresses = [
        listening.address,
        SocketAddr::new(
            listening.address.ip(),
            listening
                .shard_ports
                .get(usize::from(shard_id.0))
                .copied()
                .ok_or_else(|| fail("no port for this shard".into()))?,
        ),
    ];
    let mut listeners = Vec::new();
    for address in addresses {
        let listener = TcpListener::bind(address)
            .map_err(|error| fail(format!("binding {address}: {error}")))?;
        listeners.push(listener);
    }
    for listener in listeners {
        glommio::spawn_local(accept_loop(context.clone(), listener)).detach();
    }
    {
        // Fail-stop: a storage failure ends the process; recovery decides what survived.
        let context = context.clone();
        glommio::spawn_local(async move {
            let error = context.shard.wait_poisoned().await;
            tracing::error!(shard = context.shard_id.0, %error, "storage failure, exiting");
            eprintln!(
                "cairn: storage failure on shard {}: {error}",
                context.shard_id.0
            );
            // The poisoned shard failed every waiting append; give their connections a
            // moment to send those StorageFailure responses, so clients can tell a storage
            // failure from a crash. Bounded: nothing more is acknowledged on this shard, and
            // what other shards acknowledge meanwhile is synced on their own logs.
            glommio::timer::sleep(FAIL_STOP_DRAIN).await;
            std::process::exit(EXIT_STORAGE_FAILURE);
        })
        .detach();
    }
    let _ = ready.send(Ok(shard_id.0));
    tracing::info!(shard = shard_id.0, "shard serving");

    while !shutdown.is_raised() {
        glommio::timer::sleep(SHUTDOWN_POLL_INTERVAL).await;
    }
    tracing::info!(shard = shard_id.0, "shutting down");
    shut_down(&context).await;
    Ok(())
}

/// The two phases of shutdown (see the module docs).
async fn shut_down(context: &Rc<ShardContext>) {
    // Phase 1. Connections finish the requests they have read, then close. Those requests
    // may wait on other shards, which keep serving the mesh until every shard is here.
    context.is_stopping.set(true);
    context.stopping.notify();
    while context.open_connections.get() > 0 {
        let listener = context.connection_closed.listen();
        if context.open_connections.get() == 0 {
            break;
        }
        futures_lite::future::or(listener, glommio::timer::sleep(SHUTDOWN_POLL_INTERVAL)).await;
    }
    let peers = context.other_peers();
    for &peer in &peers {
        // A peer that stopped already needs no notice.
        let _ = context.send_to_peer(peer, ShardMessage::Drained).await;
    }
    tracing::debug!(
        shard = context.shard_id.0,
        "drained; waiting for the other shards"
    );

    // The barrier: until every peer has drained, one of its connections may still forward
    // a request here.
    loop {
        let listener = context.peers_changed.listen();
        if peers
            .iter()
            .all(|&peer| context.status_of(peer) != PeerStatus::Serving)
        {
            break;
        }
        listener.await;
    }
    // Answer what the peers forwarded before they drained (a staged append waits for its
    // sync, anything else is answered at once while stopping).
    while context.mesh_tasks_in_flight.get() > 0 {
        let listener = context.mesh_task_done.listen();
        if context.mesh_tasks_in_flight.get() == 0 {
            break;
        }
        listener.await;
    }

    // Phase 2. Every staged append is synced before its client hears of it, so this only
    // waits for the committer to finish what the drained connections left.
    context.shard.close().await;
    // Close this shard's end of every link, so that any peer still waiting on it sees the
    // end of the stream rather than waiting for the executor's tasks to be dropped.
    context.senders.close();
}

fn handle_message(context: &Rc<ShardContext>, peer: usize, message: ShardMessage, hello: &Event) {
    match message {
        ShardMessage::Hello { shard } => {
            context.peer_of_shard.borrow_mut().insert(shard, peer);
            hello.notify();
        }
        ShardMessage::Forward { token, frame } => {
            let task_context = context.clone();
            context.spawn_mesh_task(async move {
                let context = task_context;
                let response = crate::handlers::handle_frame(&context, &frame, None)
                    .await
                    .response;
                let reply = ShardMessage::Reply {
                    token,
                    frame: response,
                };
                if let Err(error) = context.send_to_peer(peer, reply).await {
                    tracing::warn!(%error, "could not return a forwarded response");
                }
            });
        }
        ShardMessage::Reply { token, frame } => context.deliver(peer, token, frame),
        ShardMessage::TopicCreated { token, topic } => {
            if let Err(error) = context.shard.add_topic(&topic) {
                // Only shard 0 creates topics, so shards disagreeing on one is our bug, and
                // serving on would route one topic's requests to another's partitions.
                tracing::error!(shard = context.shard_id.0, %error, "topic catalogs disagree");
                eprintln!("cairn: shard {}: {error}", context.shard_id.0);
                std::process::exit(crate::EXIT_INTERNAL);
            }
            let task_context = context.clone();
            context.spawn_mesh_task(async move {
                let reply = ShardMessage::TopicLearned { token };
                if let Err(error) = task_context.send_to_peer(peer, reply).await {
                    tracing::warn!(%error, "could not acknowledge a new topic");
                }
            });
        }
        ShardMessage::TopicLearned { token } => context.deliver(peer, token, Vec::new()),
        ShardMessage::Drained => context.set_status(peer, PeerStatus::Drained),
    }
}

async fn accept_loop(context: Rc<ShardContext>, listener: TcpListener) {
    loop {
        let stopping = context.stopping.listen();
        if context.is_stopping.get() {
            return;
        }
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            stopping.await;
            None
        })
        .await;
        match accepted {
            None => return,
            Some(Ok(stream)) => {
                glommio::spawn_local(connection::serve(context.clone(), stream)).detach();
            }
            Some(Err(error)) => {
                // Out of file descriptors and the like: log, back off, keep serving.
                tracing::warn!(%error, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
