//! Cairn's server: TCP, flatbuffers frames and routing between shards.
//!
//! `run` opens the data directory, starts one pinned glommio executor per shard, and on
//! each: recovers the shard, joins the channel mesh that links the shards, and accepts
//! connections on the shared port (SO_REUSEPORT, so the kernel spreads connections over
//! the shards) and on the shard's own port (so shard-aware clients reach a partition's
//! owner directly). Because SO_REUSEPORT would just as well let a second server join those
//! addresses, `run` first checks that no socket listens on any fixed one and refuses to
//! start otherwise (`ServerError::AddressInUse`). A request for a partition of another
//! shard is forwarded over the mesh (`routing`); nothing is shared between shards but
//! messages.
//!
//! Module map (the wire codec is the `cairn-wire` crate): `connection` (frames over one
//! socket, limits, pipelining), `admission` (a shard's request memory budget and connection limit),
//! `handlers` (request -> engine -> response), `routing` (the mesh). The Rust client
//! is the `cairn-client` crate.

mod admission;
mod connection;
mod handlers;
mod routing;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cairn_engine::{Engine, EngineConfig, FaultHook, OpenError, ShardId};
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorBuilder, Placement};

use crate::routing::ShardMessage;

/// Exit status of the server when a shard's storage failed (EX_IOERR): recovery on restart
/// decides what survived (DESIGN §3.5).
pub const EXIT_STORAGE_FAILURE: i32 = 74;

/// Exit status when the server finds its own state contradicting itself (EX_SOFTWARE).
pub const EXIT_INTERNAL: i32 = 70;

/// Everything `cairn serve` can be told.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The data directory.
    pub data_dir: PathBuf,
    /// The shared address every shard accepts on.
    pub listen: SocketAddr,
    /// Shard `i` also listens on `port_base + i`; 0 picks free ports.
    pub port_base: u16,
    /// Shards (executors, one per core).
    pub shard_count: u16,
    /// Pin shard `i` to CPU `i` (modulo the CPUs there are).
    pub pin_shards: bool,
    /// Preallocated size of each segment file.
    pub segment_size_bytes: u64,
    /// Largest frame a client may send.
    pub frame_size_bytes_max: u32,
    /// Most requests of one connection being handled at once; beyond it the connection is
    /// not read until one completes.
    pub connection_request_count_max: usize,
    /// Most bytes of request frames one shard holds at once, over all its connections, from
    /// when a frame's length is known until it is answered; a connection that would exceed
    /// it is not read until enough is answered (see `connection`, request memory).
    pub shard_request_bytes_max: usize,
    /// Most connections one shard serves at once; a connection beyond it is answered
    /// `Overloaded` and closed.
    pub shard_connection_count_max: usize,
    /// Longest a fetch may long-poll.
    pub fetch_wait_max: Duration,
    /// Test-only fault injection, passed to the engine (`EngineConfig::fault_hook`); `None`
    /// in production.
    pub fault_hook: Option<FaultHook>,
}

impl ServerConfig {
    /// Defaults: `./cairn-data`, `127.0.0.1:7878`, one shard per CPU, 256 MiB segments.
    pub fn new() -> Self {
        let cpu_count = std::thread::available_parallelism().map_or(1, |count| count.get());
        ServerConfig {
            data_dir: PathBuf::from("cairn-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 7878)),
            port_base: 0,
            shard_count: u16::try_from(cpu_count).unwrap_or(u16::MAX),
            pin_shards: true,
            segment_size_bytes: 256 * 1024 * 1024,
            frame_size_bytes_max: cairn_wire::FRAME_SIZE_BYTES_MAX_DEFAULT,
            connection_request_count_max: 1024,
            shard_request_bytes_max: 64 * 1024 * 1024,
            shard_connection_count_max: 1024,
            fetch_wait_max: Duration::from_secs(30),
            fault_hook: None,
        }
    }

    fn engine_config(&self) -> EngineConfig {
        let mut config = EngineConfig::new(&self.data_dir, self.shard_count);
        config.segment_size_bytes = self.segment_size_bytes;
        // A group never spans segments; small (test) segments get smaller groups.
        let segment_room = usize::try_from(self.segment_size_bytes)
            .unwrap_or(usize::MAX)
            .saturating_sub(cairn_engine::core::limits::BLOCK_SIZE_BYTES);
        config.group_size_bytes_max = config.group_size_bytes_max.min(segment_room);
        config.fault_hook = self.fault_hook.clone();
        config
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig::new()
    }
}

/// Why the server could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The data directory could not be opened or recovered.
    #[error("opening the data directory")]
    Open(#[from] OpenError),
    /// A fixed address (`--listen`, or a shard port from `--port-base`) has a listening
    /// socket already, most likely another server's. Refused rather than joined: our
    /// listeners use SO_REUSEPORT, and the kernel would split the connections between the
    /// two processes.
    #[error("address {address} is already in use by another process")]
    AddressInUse {
        /// The address.
        address: SocketAddr,
    },
    /// A listening socket could not be set up.
    #[error("binding {address}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// An executor could not be started or failed.
    #[error("shard {shard}: {problem}")]
    Shard {
        /// Which shard.
        shard: u16,
        /// What went wrong.
        problem: String,
    },
}

/// Where the server listens, known once every socket is bound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listening {
    /// The shared address.
    pub address: SocketAddr,
    /// Each shard's own port, by shard id.
    pub shard_ports: Vec<u16>,
}

/// Asks a running server to stop: stop accepting, finish in-flight requests, sync, exit.
#[derive(Clone, Default, Debug)]
pub struct ShutdownSignal(Arc<AtomicBool>);

impl ShutdownSignal {
    /// A signal not yet raised.
    pub fn new() -> Self {
        Self::default()
    }

    /// Raises it.
    pub fn raise(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether it was raised.
    pub fn is_raised(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// The flag behind it, for signal handlers (`signal_hook::flag::register`).
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.0.clone()
    }
}

/// The port shard `shard` is asked to listen on: `port_base + shard`, or 0 (any free port)
/// when `port_base` is 0.
fn shard_port(config: &ServerConfig, shard: u16) -> u16 {
    if config.port_base == 0 {
        0
    } else {
        config.port_base.saturating_add(shard)
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
            Err(ServerError::AddressInUse { address })
        }
        Err(error) => Err(bind_error(error)),
    }
}

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
    // Before anything else, so that a server started by mistake on a taken address stops
    // at once, before it opens (or creates) its data directory. Port 0 is always free.
    let shard_addresses = (0..config.shard_count)
        .map(|shard| SocketAddr::new(config.listen.ip(), shard_port(&config, shard)));
    for address in std::iter::once(config.listen)
        .chain(shard_addresses)
        .filter(|address| address.port() != 0)
    {
        ensure_address_free(address)?;
    }
    let engine = Engine::open(config.engine_config())?;

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
    let listening = Listening {
        address,
        shard_ports,
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
        let executor = LocalExecutorBuilder::new(placement)
            .name(&format!("cairn-shard-{shard}"))
            // Explicit: DMA buffers for group writes come from here first; 8 MiB is what a
            // non-root memlock limit allows on these machines.
            .io_memory(8 * 1024 * 1024)
            .spawn(move || async move {
                routing::run_shard(
                    ShardId(shard),
                    engine,
                    mesh,
                    config,
                    listening,
                    shutdown,
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
