//! What a server is told (`ServerConfig`), where it listens (`Listening`), how it is
//! stopped (`ShutdownSignal`), and why it fails (`ServerError`, exit statuses). Plain data:
//! every other module of the server may use it, and it uses none of them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cairn_engine::{EngineConfig, FaultHook, OpenError};

/// Exit status of the server when a shard's storage failed (EX_IOERR): recovery on restart
/// decides what survived (docs/DESIGN.md §3.5).
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
    /// Shard `i` also listens on `port_base + i`; 0 picks free ports. `None` (the default):
    /// on `listen`'s port + 1 + `i`, stable across restarts (free ports when that is 0).
    pub port_base: Option<u16>,
    /// Shards (executors, one per core).
    pub shard_count: u16,
    /// Pin shard `i` to CPU `i` (modulo the CPUs there are).
    pub pin_shards: bool,
    /// Preallocated size of each segment file.
    pub segment_size_bytes: u64,
    /// Log bytes between two checkpoints of a shard's state (`EngineConfig`); 0: none.
    pub checkpoint_interval_bytes: u64,
    /// How often each shard looks for what retention may remove (`EngineConfig`).
    pub retention_check_interval: Duration,
    /// Most bytes per second a shard's retention copies (`EngineConfig`); 0: no limit.
    pub retention_bytes_per_second: u64,
    /// Largest frame a client may send.
    pub frame_size_bytes_max: u32,
    /// Most requests of one connection being handled at once; beyond it the connection is
    /// not read until one completes.
    pub connection_request_count_max: usize,
    /// Most bytes of request frames one shard holds at once, over all its connections, from
    /// when a frame's length is known until it is answered; a connection that would exceed
    /// it is not read until enough is answered (see `native::connection`, request memory).
    pub shard_request_bytes_max: usize,
    /// Most connections one shard serves at once; a connection beyond it is answered
    /// `Overloaded` and closed.
    pub shard_connection_count_max: usize,
    /// Longest a fetch may long-poll.
    pub fetch_wait_max: Duration,
    /// The Kafka front end's listeners, `None` when it is off (`--no-kafka`).
    pub kafka: Option<KafkaConfig>,
    /// Where the metrics and health HTTP endpoint listens (`--metrics-listen`); `None`: off.
    pub metrics_listen: Option<SocketAddr>,
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
            port_base: None,
            shard_count: u16::try_from(cpu_count).unwrap_or(u16::MAX),
            pin_shards: true,
            segment_size_bytes: 256 * 1024 * 1024,
            checkpoint_interval_bytes: 128 * 1024 * 1024,
            retention_check_interval: Duration::from_secs(30),
            retention_bytes_per_second: 64 * 1024 * 1024,
            frame_size_bytes_max: cairn_wire::FRAME_SIZE_BYTES_MAX_DEFAULT,
            connection_request_count_max: 1024,
            shard_request_bytes_max: 64 * 1024 * 1024,
            shard_connection_count_max: 1024,
            fetch_wait_max: Duration::from_secs(30),
            kafka: Some(KafkaConfig::new()),
            metrics_listen: None,
            fault_hook: None,
        }
    }

    pub(crate) fn engine_config(&self) -> EngineConfig {
        let mut config = EngineConfig::new(&self.data_dir, self.shard_count);
        config.segment_size_bytes = self.segment_size_bytes;
        config.checkpoint_interval_bytes = self.checkpoint_interval_bytes;
        config.retention_check_interval = self.retention_check_interval;
        config.retention_bytes_per_second = self.retention_bytes_per_second;
        // A group never spans segments; small (test) segments get smaller groups.
        let segment_room = usize::try_from(self.segment_size_bytes)
            .unwrap_or(usize::MAX)
            .saturating_sub(cairn_engine::core::limits::BLOCK_SIZE_BYTES);
        config.group_size_bytes_max = config.group_size_bytes_max.min(segment_room);
        config.fault_hook = self.fault_hook.clone();
        config
    }
}

/// Where the Kafka front end listens. Each shard is one Kafka broker (node id = shard
/// index) on its own port: shard `i` listens on `listen`'s port + `i`, or on any free port
/// when that port is 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaConfig {
    /// Shard 0's Kafka address; the IP every shard's Kafka listener binds.
    pub listen: SocketAddr,
    /// The host Metadata names for every broker; `None`: `listen`'s IP, which must then be
    /// a specified one (a client cannot connect to 0.0.0.0).
    pub advertised_host: Option<String>,
}

impl KafkaConfig {
    /// Defaults: `127.0.0.1:9092`, advertised as `127.0.0.1`.
    pub fn new() -> Self {
        KafkaConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9092)),
            advertised_host: None,
        }
    }

    /// The host brokers are advertised as, or `None` if `listen` is unspecified and no
    /// host was given.
    pub fn advertised_host(&self) -> Option<String> {
        match &self.advertised_host {
            Some(host) => Some(host.clone()),
            None if self.listen.ip().is_unspecified() => None,
            None => Some(self.listen.ip().to_string()),
        }
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig::new()
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
    /// An internal topic (the committed offsets') could not be created.
    #[error("creating the internal topic {topic}")]
    InternalTopic {
        /// The topic.
        topic: &'static str,
        /// Why.
        source: cairn_engine::TopicError,
    },
    /// A fixed address (`--listen`, or a shard port from `--port-base`) has a listening
    /// socket already, most likely another server's. Refused rather than joined: our
    /// listeners use SO_REUSEPORT, and the kernel would split the connections between the
    /// two processes.
    #[error("address {address} is already in use by another process")]
    AddressInUse {
        /// The address.
        address: SocketAddr,
    },
    /// Two of the server's own listeners would share an address (`--listen`, the ports
    /// from `--port-base` and from `--kafka-listen` overlap).
    #[error(
        "address {address} is asked for twice (--listen, --port-base and --kafka-listen overlap)"
    )]
    AddressTwice {
        /// The address.
        address: SocketAddr,
    },
    /// The metrics endpoint could not listen.
    #[error("starting the metrics endpoint on {address}")]
    Metrics {
        /// The address.
        address: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A listening socket could not be set up.
    #[error("binding {address}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// `--kafka-listen` is an unspecified address (0.0.0.0, ::) and no
    /// `--kafka-advertised-host` says what clients should connect to.
    #[error(
        "the Kafka listener on {address} needs an advertised host (--kafka-advertised-host): \
         clients cannot connect to an unspecified address"
    )]
    KafkaAdvertisedHostMissing {
        /// The Kafka listen address.
        address: SocketAddr,
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
    /// Each shard's Kafka port (its broker's), by shard id; empty when Kafka is off.
    pub kafka_ports: Vec<u16>,
    /// The metrics and health endpoint's address; `None` when it is off.
    pub metrics_address: Option<SocketAddr>,
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
