//! Routing between shards: each partition has one owning shard, and requests that arrive on
//! another shard cross to it over glommio's channel mesh — the only link between shards.
//!
//! A forwarded request travels as its original frame; the owner handles it like any other
//! and sends back the encoded response, which the origin writes to its client unchanged.
//! Topic creation runs on shard 0 (which owns the catalog file) and is answered only after
//! every shard has learned the new partitions, so no client can see a topic that some shard
//! does not know.
//!
//! This module also owns a shard's lifecycle in the server: recover, join the mesh, listen,
//! and on shutdown stop accepting, drain, and close the engine shard (which syncs).

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use cairn_engine::io::event::Event;
use cairn_engine::{Engine, Shard, ShardId, Topic};
use glommio::channels::channel_mesh::{Full, MeshBuilder, Senders};
use glommio::net::TcpListener;
use hashbrown::HashMap;

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
}

/// Replies a shard is waiting for, by token.
#[derive(Default)]
struct ReplySlot {
    replies: RefCell<Vec<Vec<u8>>>,
    arrived: Event,
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
    waiting: RefCell<HashMap<u64, Rc<ReplySlot>>>,
    next_token: Cell<u64>,
    /// Connections currently open, to wait for on shutdown.
    pub(crate) open_connections: Cell<usize>,
    pub(crate) connection_closed: Event,
    /// The shard's request memory budget and connection limit.
    pub(crate) admission: Admission,
}

impl ShardContext {
    fn register(&self, expected_reply_count: usize) -> (u64, Rc<ReplySlot>) {
        let token = self.next_token.get();
        self.next_token.set(token + 1);
        let slot = Rc::new(ReplySlot::default());
        self.waiting.borrow_mut().insert(token, slot.clone());
        debug_assert!(expected_reply_count > 0);
        (token, slot)
    }

    async fn wait_replies(&self, token: u64, slot: &ReplySlot, reply_count: usize) -> Vec<Vec<u8>> {
        loop {
            let listener = slot.arrived.listen();
            if slot.replies.borrow().len() >= reply_count {
                self.waiting.borrow_mut().remove(&token);
                return std::mem::take(&mut *slot.replies.borrow_mut());
            }
            listener.await;
        }
    }

    fn deliver(&self, token: u64, frame: Vec<u8>) {
        let slot = self.waiting.borrow().get(&token).cloned();
        match slot {
            Some(slot) => {
                slot.replies.borrow_mut().push(frame);
                slot.arrived.notify();
            }
            None => tracing::warn!(token, "reply for a request nobody waits for"),
        }
    }

    fn peer(&self, shard: ShardId) -> usize {
        *self
            .peer_of_shard
            .borrow()
            .get(&shard.0)
            .expect("every shard said hello before the server was ready")
    }

    /// Sends `frame` to the shard that owns its partition and returns that shard's
    /// encoded response.
    pub(crate) async fn forward(&self, owner: ShardId, frame: &[u8]) -> Result<Vec<u8>, String> {
        assert_ne!(owner, self.shard_id, "a shard never forwards to itself");
        let (token, slot) = self.register(1);
        let message = ShardMessage::Forward {
            token,
            frame: frame.to_vec(),
        };
        if self
            .senders
            .send_to(self.peer(owner), message)
            .await
            .is_err()
        {
            self.waiting.borrow_mut().remove(&token);
            return Err(format!("shard {} is unavailable", owner.0));
        }
        let mut replies = self.wait_replies(token, &slot, 1).await;
        replies.pop().ok_or_else(|| "no reply".to_owned())
    }

    /// Tells every other shard about a topic created here (shard 0) and waits until all of
    /// them know it.
    pub(crate) async fn broadcast_topic(&self, topic: &Topic) {
        let other_count = usize::from(self.config.shard_count) - 1;
        if other_count == 0 {
            return;
        }
        let (token, slot) = self.register(other_count);
        for shard in (0..self.config.shard_count).filter(|shard| *shard != self.shard_id.0) {
            let message = ShardMessage::TopicCreated {
                token,
                topic: topic.clone(),
            };
            if self
                .senders
                .send_to(self.peer(ShardId(shard)), message)
                .await
                .is_err()
            {
                tracing::error!(shard, "could not tell a shard about a new topic");
            }
        }
        self.wait_replies(token, &slot, other_count).await;
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
        senders,
        peer_of_shard: RefCell::new(HashMap::new()),
        waiting: RefCell::new(HashMap::new()),
        next_token: Cell::new(0),
        open_connections: Cell::new(0),
        connection_closed: Event::new(),
        admission: Admission::new(config.shard_request_bytes_max),
    });
    context
        .peer_of_shard
        .borrow_mut()
        .insert(shard_id.0, context.senders.peer_id());

    // Say hello on every link, then serve what arrives on each.
    let peer_count = context.senders.nr_consumers();
    for peer in (0..peer_count).filter(|peer| *peer != context.senders.peer_id()) {
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
        })
        .detach();
    }
    while context.peer_of_shard.borrow().len() < usize::from(config.shard_count) {
        hello_received.listen().await;
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
    context.is_stopping.set(true);
    context.stopping.notify();
    // Connections finish the requests they have read, then close.
    while context.open_connections.get() > 0 {
        let listener = context.connection_closed.listen();
        if context.open_connections.get() == 0 {
            break;
        }
        futures_lite::future::or(listener, glommio::timer::sleep(SHUTDOWN_POLL_INTERVAL)).await;
    }
    // Every staged append is synced before its client hears of it, so this only waits for
    // the committer to finish what the drained connections left.
    context.shard.close().await;
    Ok(())
}

fn handle_message(context: &Rc<ShardContext>, peer: usize, message: ShardMessage, hello: &Event) {
    match message {
        ShardMessage::Hello { shard } => {
            context.peer_of_shard.borrow_mut().insert(shard, peer);
            hello.notify();
        }
        ShardMessage::Forward { token, frame } => {
            let context = context.clone();
            glommio::spawn_local(async move {
                let response = crate::handlers::handle_frame(&context, &frame, None)
                    .await
                    .response;
                let reply = ShardMessage::Reply {
                    token,
                    frame: response,
                };
                if context.senders.send_to(peer, reply).await.is_err() {
                    tracing::warn!(peer, "could not return a forwarded response");
                }
            })
            .detach();
        }
        ShardMessage::Reply { token, frame } => context.deliver(token, frame),
        ShardMessage::TopicCreated { token, topic } => {
            context.shard.add_topic(&topic);
            let context = context.clone();
            glommio::spawn_local(async move {
                let _ = context
                    .senders
                    .send_to(peer, ShardMessage::TopicLearned { token })
                    .await;
            })
            .detach();
        }
        ShardMessage::TopicLearned { token } => context.deliver(token, Vec::new()),
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
