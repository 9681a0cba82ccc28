//! A shard's life in the server: recover, join the mesh, listen, serve, shut down; its
//! accept loops (native on the shared and the shard's own port, Kafka on its broker port); and its receiving end of the mesh (requests other shards forward here,
//! topics to learn, replies, `Drained`).
//!
//! Shutdown runs in two phases, so that no shard stops answering the mesh while another
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
//!
//! A storage failure ends the process (fail-stop, `EXIT_STORAGE_FAILURE`); shards that
//! disagree on the topic catalog end it too (`EXIT_INTERNAL`).

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use cairn_engine::io::event::Event;
use cairn_engine::{Engine, ShardId};
use glommio::channels::channel_mesh::{Full, MeshBuilder};
use glommio::net::TcpListener;

use crate::admission::Admission;
use crate::config::{EXIT_INTERNAL, EXIT_STORAGE_FAILURE, Listening, ServerConfig, ShutdownSignal};
use crate::context::ShardContext;
use crate::kafka;
use crate::mesh::{Mesh, PeerStatus, ShardMessage};
use crate::metrics::Metrics;
use crate::native;
use crate::service;

/// How long a poisoned shard lets its connections send their error responses before the
/// process exits.
const FAIL_STOP_DRAIN: Duration = Duration::from_millis(200);

/// How often a shard looks at the shutdown signal.
const SHUTDOWN_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// One shard of the server, from recovery to shutdown. Returns `Err` with a description if
/// it cannot start.
#[expect(
    clippy::too_many_arguments,
    reason = "each is a separate piece the shard's executor is started with, moved in once"
)]
pub(crate) async fn run_shard(
    shard_id: ShardId,
    engine: Engine,
    mesh: MeshBuilder<ShardMessage, Full>,
    config: ServerConfig,
    listening: Listening,
    shutdown: ShutdownSignal,
    server_metrics: Arc<Metrics>,
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
    let metrics = server_metrics
        .shards
        .get(usize::from(shard_id.0))
        .cloned()
        .ok_or_else(|| fail("no metrics for this shard".into()))?;
    let _ = metrics.io.set(shard.io_stats());
    // Before the mesh: a forwarded commit must find the index complete.
    let group_offsets = service::load_group_offsets(&shard, config.shard_count)
        .await
        .map_err(|problem| fail(format!("reading committed offsets: {problem}")))?;
    let (senders, mut receivers) = mesh
        .join()
        .await
        .map_err(|error| fail(format!("mesh join failed: {error}")))?;
    let context = Rc::new(ShardContext {
        shard,
        shard_id,
        config: config.clone(),
        listening: listening.clone(),
        // Every shard derives the same id from the same file.
        cluster_id: kafka::cluster_id(&config.data_dir),
        stopping: Event::new(),
        is_stopping: Cell::new(false),
        mesh: Rc::new(Mesh::new(shard_id, senders)),
        open_connections: Cell::new(0),
        connection_closed: Event::new(),
        admission: Admission::new(config.shard_request_bytes_max, metrics.clone()),
        groups: crate::group::Groups::new(shard_id.0),
        group_offsets: RefCell::new(group_offsets),
        metrics,
        server_metrics,
    });
    let mesh = context.mesh.clone();

    // Say hello on every link, then serve what arrives on each until that peer closes it.
    for peer in mesh.other_peers() {
        if mesh
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
            context.mesh.peer_stopped(peer);
        })
        .detach();
    }
    while mesh.peer_of_shard.borrow().len() < usize::from(config.shard_count) {
        let listener =
            futures_lite::future::or(hello_received.listen(), mesh.peers_changed.listen());
        if let Some(peer) = mesh
            .other_peers()
            .into_iter()
            .find(|&peer| mesh.status_of(peer) == PeerStatus::Stopped)
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
        listeners.push((Protocol::Native, listener));
    }
    if let (Some(kafka), Some(&port)) = (
        &config.kafka,
        listening.kafka_ports.get(usize::from(shard_id.0)),
    ) {
        let address = SocketAddr::new(kafka.listen.ip(), port);
        let listener = TcpListener::bind(address)
            .map_err(|error| fail(format!("binding {address}: {error}")))?;
        listeners.push((Protocol::Kafka, listener));
    }
    for (protocol, listener) in listeners {
        glommio::spawn_local(accept_loop(context.clone(), listener, protocol)).detach();
    }
    {
        // Fail-stop: a storage failure ends the process; recovery decides what survived.
        let context = context.clone();
        glommio::spawn_local(async move {
            let error = context.shard.wait_poisoned().await;
            context.server_metrics.health.set_storage_failed();
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
    glommio::spawn_local(publish_gauges(context.clone())).detach();
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
    let mesh = &context.mesh;
    let peers = mesh.other_peers();
    for &peer in &peers {
        // A peer that stopped already needs no notice.
        let _ = mesh.send_to_peer(peer, ShardMessage::Drained).await;
    }
    tracing::debug!(
        shard = context.shard_id.0,
        "drained; waiting for the other shards"
    );

    // The barrier: until every peer has drained, one of its connections may still forward
    // a request here.
    loop {
        let listener = mesh.peers_changed.listen();
        if peers
            .iter()
            .all(|&peer| mesh.status_of(peer) != PeerStatus::Serving)
        {
            break;
        }
        listener.await;
    }
    // Answer what the peers forwarded before they drained (a staged append waits for its
    // sync, anything else is answered at once while stopping).
    mesh.tasks_done().await;

    // Phase 2. Every staged append is synced before its client hears of it, so this only
    // waits for the committer to finish what the drained connections left.
    context.shard.close().await;
    // Close this shard's end of every link, so that any peer still waiting on it sees the
    // end of the stream rather than waiting for the executor's tasks to be dropped.
    mesh.senders.close();
}

fn handle_message(context: &Rc<ShardContext>, peer: usize, message: ShardMessage, hello: &Event) {
    match message {
        ShardMessage::Hello { shard } => {
            context.mesh.peer_of_shard.borrow_mut().insert(shard, peer);
            hello.notify();
        }
        ShardMessage::Forward { token, request } => {
            let task_context = context.clone();
            context.mesh.spawn_task(async move {
                let context = task_context;
                let result = service::serve_forwarded(&context, request).await;
                let reply = ShardMessage::Reply {
                    token,
                    result: Box::new(result),
                };
                if let Err(error) = context.mesh.send_to_peer(peer, reply).await {
                    tracing::warn!(%error, "could not return a forwarded result");
                }
            });
        }
        ShardMessage::Reply { token, result } => {
            context.mesh.deliver(peer, token, Some(*result));
        }
        ShardMessage::TopicCreated { token, topic } => {
            if let Err(error) = context.shard.add_topic(&topic) {
                // Only shard 0 creates topics, so shards disagreeing on one is our bug, and
                // serving on would route one topic's requests to another's partitions.
                tracing::error!(shard = context.shard_id.0, %error, "topic catalogs disagree");
                eprintln!("cairn: shard {}: {error}", context.shard_id.0);
                std::process::exit(EXIT_INTERNAL);
            }
            let task_context = context.clone();
            context.mesh.spawn_task(async move {
                let reply = ShardMessage::TopicLearned { token };
                if let Err(error) = task_context.mesh.send_to_peer(peer, reply).await {
                    tracing::warn!(%error, "could not acknowledge a new topic");
                }
            });
        }
        ShardMessage::TopicLearned { token } => context.mesh.deliver(peer, token, None),
        ShardMessage::Drained => context.mesh.set_status(peer, PeerStatus::Drained),
    }
}

/// Which front end a listener's connections speak.
#[derive(Clone, Copy)]
enum Protocol {
    Native,
    Kafka,
}

async fn accept_loop(context: Rc<ShardContext>, listener: TcpListener, protocol: Protocol) {
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
            Some(Ok(stream)) => match protocol {
                Protocol::Native => {
                    glommio::spawn_local(native::connection::serve(context.clone(), stream))
                        .detach();
                }
                Protocol::Kafka => {
                    glommio::spawn_local(kafka::connection::serve(context.clone(), stream))
                        .detach();
                }
            },
            Some(Err(error)) => {
                // Out of file descriptors and the like: log, back off, keep serving.
                tracing::warn!(%error, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// How often a shard copies gauges derived from its state into its metrics.
const GAUGE_PUBLISH_INTERVAL: Duration = Duration::from_secs(1);

/// Copies the consumer-group gauges into the shard's metrics once a second until the
/// shard stops: a scrape reads atomics only and never reaches into a shard's state.
async fn publish_gauges(context: Rc<ShardContext>) {
    while !context.is_stopping.get() {
        let (group_count, member_count) = context.groups.counts();
        let store = |gauge: &std::sync::atomic::AtomicU64, value: usize| {
            gauge.store(
                u64::try_from(value).unwrap_or(u64::MAX),
                std::sync::atomic::Ordering::Relaxed,
            );
        };
        store(&context.metrics.kafka_groups, group_count);
        store(&context.metrics.kafka_group_members, member_count);
        glommio::timer::sleep(GAUGE_PUBLISH_INTERVAL).await;
    }
}
