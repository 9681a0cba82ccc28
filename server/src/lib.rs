//! Cairn's server: shards over the engine, a protocol-agnostic service, and two front
//! ends over it: the flatbuffers protocol and Kafka's.
//!
//! `run` opens the data directory, starts one pinned glommio executor per shard, and on
//! each: recovers the shard, joins the channel mesh that links the shards, and accepts
//! connections on the shared port (SO_REUSEPORT, so the kernel spreads connections over
//! the shards) and on the shard's own port (so shard-aware clients reach a partition's
//! owner directly). Because SO_REUSEPORT would just as well let a second server join those
//! addresses, `run` first checks that no socket listens on any fixed one and refuses to
//! start otherwise (`ServerError::AddressInUse`). A request for a partition of another
//! shard moves over the mesh to its owner, decoded and routed once; nothing is shared
//! between shards but messages.
//!
//! Modules, in dependency order (each uses only those before it; none uses `lib.rs`):
//!
//! - `config`: `ServerConfig`, `Listening`, `ShutdownSignal`, errors, exit statuses.
//! - `metrics`: each shard's counters (plain atomics), the server's health, and their
//!   encoding for Prometheus (`prometheus-client`).
//! - `metrics_endpoint`: the metrics and health HTTP listener on its own threads.
//! - `admission`: a shard's request memory budget and connection limit.
//! - `offsets`: the committed-offsets store's internal topic and its key and value
//!   encodings (sans-I/O).
//! - `operation`: the service's typed results and failures, and the owned form in which
//!   a request and its result cross the mesh.
//! - `routing`: partition -> owning shard; group id -> coordinator shard
//!   (`coordinator_shard`).
//! - `mesh`: sending to other shards and waiting for their replies.
//! - `group`: the consumer groups a shard coordinates: membership as a sans-I/O state
//!   machine (`group::state`), its timers and long-polls.
//! - `context`: what a shard's tasks share.
//! - `service`: append, fetch, read_key, key_history, metadata, create_topic, each run on
//!   the owning shard.
//! - `native`: the flatbuffers front end (`cairn-wire`): `connection` plus one module per
//!   request kind, decode -> service -> encode into the connection's write buffer.
//! - `kafka`: the Kafka front end (`kafka-protocol`): each shard is one broker on its own
//!   port; `connection` plus one module per API key, decode -> service (on this shard
//!   only: a partition of another shard is answered NOT_LEADER_OR_FOLLOWER) -> encode.
//! - `shard`: a shard's lifecycle and two-phase shutdown, its accept loops, and its
//!   receiving end of the mesh.
//!
//! The wire codec is the `cairn-wire` crate; the Rust client is `cairn-client`.

mod admission;
mod config;
mod context;
mod group;
mod kafka;
mod mesh;
mod metrics;
mod metrics_endpoint;
mod native;
mod offsets;
mod operation;
mod routing;
mod service;
mod shard;

use std::net::SocketAddr;

use cairn_engine::{Engine, ShardId};
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorBuilder, Placement};

pub use crate::config::{
    EXIT_INTERNAL, EXIT_STORAGE_FAILURE, KafkaConfig, Listening, ServerConfig, ServerError,
    ShutdownSignal,
};
use crate::mesh::ShardMessage;
use crate::metrics::Metrics;

/// The port shard `shard` is asked to listen on: `port_base + shard` when it is set, else
/// the shared port + 1 + `shard`, so that a restart keeps every port clients cached from
/// Metadata; 0 (any free port) when the one they derive from is 0 (tests). A port past
/// 65535 saturates, and the start fails naming the address asked for twice.
fn shard_port(config: &ServerConfig, shard: u16) -> u16 {
    let base = match config.port_base {
        Some(port_base) => port_base,
        None => match config.listen.port() {
            0 => 0,
            port => port.saturating_add(1),
        },
    };
    if base == 0 {
        0
    } else {
        base.saturating_add(shard)
    }
}

/// The port shard `shard`'s Kafka broker is asked to listen on: the Kafka port + `shard`,
/// or 0 (any free port) when that is 0.
fn kafka_shard_port(kafka: &KafkaConfig, shard: u16) -> u16 {
    match kafka.listen.port() {
        0 => 0,
        port => port.saturating_add(shard),
    }
}

/// Fails with `AddressInUse` if a socket listens on `address` already.
///
/// Binds a probe socket *without* SO_REUSEPORT, which the kernel refuses while any
/// listening socket holds the address (also one on the wildcard address of the same port),
/// whatever options that socket has. The probe sets SO_REUSEADDR like our reservations, so
/// that connections of an earlier run still in TIME_WAIT do not keep a restarted server
/// from its port.
///
/// A race remains: a socket bound with SO_REUSEADDR but not listening yet passes the probe,
/// and such are another server's reservations during its start-up (`run` holds them,
/// unlistened, until its shards listen). So two servers whose start-ups overlap can still
/// share an address; one started while the other already serves is refused. A stricter
/// probe (without SO_REUSEADDR) cannot tell those reservations from TIME_WAIT leftovers,
/// and SO_REUSEPORT, which the shards need to share the address, lets any socket of the
/// same user join.
fn ensure_address_free(address: SocketAddr) -> Result<(), ServerError> {
    let released_by = std::time::Instant::now() + ADDRESS_RELEASE_WAIT_MAX;
    loop {
        match probe_address(address) {
            Err(ServerError::AddressInUse { .. }) if std::time::Instant::now() < released_by => {
                std::thread::sleep(ADDRESS_RELEASE_POLL_INTERVAL);
            }
            outcome => return outcome,
        }
    }
}

/// How long a start waits for a held address to be let go before refusing it. A server
/// killed with SIGKILL keeps listening for a moment after its process is gone (the kernel
/// tears its io_uring instances down in the background, and their pending accepts hold
/// the listening sockets: ~20 ms measured here), so a supervisor that restarts it at once
/// would otherwise be refused. A server that is alive holds the address for longer.
const ADDRESS_RELEASE_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(1);

const ADDRESS_RELEASE_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);

fn probe_address(address: SocketAddr) -> Result<(), ServerError> {
    let bind_error = |source| ServerError::Bind { address, source };
    let probe = socket2::Socket::new(
        socket2::Domain::for_address(address),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .map_err(bind_error)?;
    probe.set_reuse_address(true).map_err(bind_error)?;
    match probe.bind(&address.into()) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => {
            if someone_listens_on(address) {
                Err(ServerError::AddressInUse { address })
            } else {
                // Only connections of an earlier run hold the port: the sockets a killed
                // server had accepted linger in FIN_WAIT_2 for up to a minute, and, made
                // without SO_REUSEADDR (glommio's listeners do not set it, so neither do
                // their connections), they fail the bind above. Our own listeners share
                // the port with them through SO_REUSEPORT.
                Ok(())
            }
        }
        Err(error) => Err(bind_error(error)),
    }
}

/// Whether a connection to `address` (the loopback address for a wildcard one) is
/// accepted: a listener holds it.
fn someone_listens_on(address: SocketAddr) -> bool {
    let mut target = address;
    if target.ip().is_unspecified() {
        target.set_ip(match address {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    std::net::TcpStream::connect_timeout(&target, LISTENER_PROBE_TIMEOUT).is_ok()
}

/// A listener on this host answers a connect in microseconds; a refusal is as fast.
const LISTENER_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

/// Binds a socket with SO_REUSEPORT so that every shard can bind the same address after it,
/// and returns it with the address it got (port 0 picks a free one).
fn reserve_address(address: SocketAddr) -> Result<(socket2::Socket, SocketAddr), ServerError> {
    let bind_error = |source| ServerError::Bind { address, source };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(address),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .map_err(bind_error)?;
    socket.set_reuse_port(true).map_err(bind_error)?;
    socket.set_reuse_address(true).map_err(bind_error)?;
    socket.bind(&address.into()).map_err(bind_error)?;
    let bound = socket
        .local_addr()
        .map_err(bind_error)?
        .as_socket()
        .ok_or_else(|| bind_error(std::io::Error::other("not an IP socket")))?;
    Ok((socket, bound))
}

/// Runs the server until `shutdown` is raised (then returns `Ok`) or a shard's storage
/// fails (then the process exits with `EXIT_STORAGE_FAILURE`). `on_listening` is called
/// once every shard accepts connections.
pub fn run(
    config: ServerConfig,
    shutdown: ShutdownSignal,
    on_listening: impl FnOnce(&Listening),
) -> Result<(), ServerError> {
    if let Some(kafka) = &config.kafka
        && kafka.advertised_host().is_none()
    {
        return Err(ServerError::KafkaAdvertisedHostMissing {
            address: kafka.listen,
        });
    }
    // Before anything else, so that a server started by mistake on a taken address stops
    // at once, before it opens (or creates) its data directory. Port 0 is always free.
    let shard_addresses = (0..config.shard_count)
        .map(|shard| SocketAddr::new(config.listen.ip(), shard_port(&config, shard)));
    let kafka_addresses = config.kafka.iter().flat_map(|kafka| {
        (0..config.shard_count)
            .map(|shard| SocketAddr::new(kafka.listen.ip(), kafka_shard_port(kafka, shard)))
    });
    let mut fixed_addresses: Vec<SocketAddr> = std::iter::once(config.listen)
        .chain(shard_addresses)
        .chain(kafka_addresses)
        .chain(config.metrics_listen)
        .filter(|address| address.port() != 0)
        .collect();
    // Our own listeners use SO_REUSEPORT, so two of them on one address would split its
    // connections between them (say a Kafka client reaching the native protocol).
    fixed_addresses.sort_unstable();
    if let Some(pair) = fixed_addresses.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(ServerError::AddressTwice { address: pair[0] });
    }
    for &address in &fixed_addresses {
        ensure_address_free(address)?;
    }
    // Before recovery, so that /health/ready answers "not yet" while it runs and
    // /health/live says the process is up.
    let metrics = Metrics::new(config.shard_count, shutdown.clone());
    let metrics_address = match config.metrics_listen {
        Some(address) => Some(
            metrics_endpoint::start(address, metrics.clone())
                .map_err(|source| ServerError::Metrics { address, source })?,
        ),
        None => None,
    };
    let mut engine = Engine::open(config.engine_config())?;
    // Before any shard opens, so that every shard learns it with the catalog: a data
    // directory from before committed offsets gets the topic on its next start.
    engine
        .ensure_topic_aligned(offsets::OFFSETS_TOPIC, u32::from(config.shard_count))
        .map_err(|source| ServerError::InternalTopic {
            topic: offsets::OFFSETS_TOPIC,
            source,
        })?;

    // Reserve every address before the executors start, so that all shards know all ports
    // (for `metadata`) and the shared port is the same for everyone even when it was 0.
    let (shared_socket, address) = reserve_address(config.listen)?;
    let mut reserved = vec![shared_socket];
    let mut shard_ports = Vec::with_capacity(usize::from(config.shard_count));
    for shard in 0..config.shard_count {
        let port = shard_port(&config, shard);
        let (socket, bound) = reserve_address(SocketAddr::new(address.ip(), port))?;
        reserved.push(socket);
        shard_ports.push(bound.port());
    }
    let mut kafka_ports = Vec::new();
    if let Some(kafka) = &config.kafka {
        for shard in 0..config.shard_count {
            let port = kafka_shard_port(kafka, shard);
            let (socket, bound) = reserve_address(SocketAddr::new(kafka.listen.ip(), port))?;
            reserved.push(socket);
            kafka_ports.push(bound.port());
        }
    }
    let listening = Listening {
        address,
        shard_ports,
        kafka_ports,
        metrics_address,
    };

    let mesh = MeshBuilder::<ShardMessage, _>::full(usize::from(config.shard_count), 1024);
    let cpu_count = std::thread::available_parallelism().map_or(1, |count| count.get());
    let (ready_sender, ready_receiver) = std::sync::mpsc::channel::<Result<u16, String>>();
    let mut executors = Vec::new();
    for shard in 0..config.shard_count {
        let placement = if config.pin_shards {
            Placement::Fixed(usize::from(shard) % cpu_count)
        } else {
            Placement::Unbound
        };
        let engine = engine.clone();
        let mesh = mesh.clone();
        let config = config.clone();
        let listening = listening.clone();
        let shutdown = shutdown.clone();
        let ready_sender = ready_sender.clone();
        let metrics = metrics.clone();
        let executor = LocalExecutorBuilder::new(placement)
            .name(&format!("cairn-shard-{shard}"))
            // Explicit: DMA buffers for group writes come from here first; 8 MiB is what a
            // non-root memlock limit allows on these machines.
            .io_memory(8 * 1024 * 1024)
            .spawn(move || async move {
                shard::run_shard(
                    ShardId(shard),
                    engine,
                    mesh,
                    config,
                    listening,
                    shutdown,
                    metrics,
                    ready_sender,
                )
                .await
            })
            .map_err(|error| ServerError::Shard {
                shard,
                problem: error.to_string(),
            })?;
        executors.push((shard, executor));
    }
    drop(ready_sender);
    for _ in 0..config.shard_count {
        match ready_receiver.recv() {
            Ok(Ok(_shard)) => {}
            Ok(Err(problem)) => {
                return Err(ServerError::Shard {
                    shard: u16::MAX,
                    problem,
                });
            }
            Err(_) => {
                return Err(ServerError::Shard {
                    shard: u16::MAX,
                    problem: "a shard stopped before it was ready".into(),
                });
            }
        }
    }
    // Every shard has bound its own listeners; the reservations have done their job.
    drop(reserved);
    metrics.health.set_serving();
    on_listening(&listening);

    let mut first_error = None;
    for (shard, executor) in executors {
        let outcome = executor
            .join()
            .map_err(|error| ServerError::Shard {
                shard,
                problem: error.to_string(),
            })
            .and_then(|result| result.map_err(|problem| ServerError::Shard { shard, problem }));
        if let Err(error) = outcome {
            first_error.get_or_insert(error);
        }
    }
    first_error.map_or(Ok(()), Err)
}
