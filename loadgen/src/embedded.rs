//! The embedded server: `cairn-loadgen` without `--addr` runs a real Cairn server in this
//! process, on a temporary data directory, so that one command gives a benchmark.
//!
//! The server runs on its own thread with its own executors (`cairn_server::run`), exactly
//! as `cairn serve` would, and is reached over TCP on 127.0.0.1 like any other: the load
//! generator measures the same path a remote client takes, minus the network. Stopping
//! raises its shutdown signal, waits for it to finish, and removes the directory.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, anyhow};
use cairn_server::{ServerConfig, ServerError, ShutdownSignal};

/// How long the server may take to recover its (empty) directory and start listening.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A server running inside this process.
#[derive(Debug)]
pub struct EmbeddedServer {
    /// Where it accepts connections.
    pub address: SocketAddr,
    shutdown: ShutdownSignal,
    thread: Option<JoinHandle<Result<(), ServerError>>>,
    data_dir: tempfile::TempDir,
}

impl EmbeddedServer {
    /// Starts a server of `shard_count` shards (pinned to CPUs `0..shard_count` when
    /// `pin_shards`) with segments of `segment_size_bytes`, on a fresh temporary directory.
    pub fn start(
        shard_count: u16,
        pin_shards: bool,
        segment_size_bytes: u64,
    ) -> anyhow::Result<EmbeddedServer> {
        let data_dir = tempfile::Builder::new()
            .prefix("cairn-loadgen-")
            .tempdir()
            .context("creating the embedded server's temporary data directory")?;
        let mut config = ServerConfig::new();
        config.data_dir = data_dir.path().join("data");
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.port_base = Some(0);
        config.shard_count = shard_count;
        config.pin_shards = pin_shards;
        config.segment_size_bytes = segment_size_bytes;
        // The load speaks the native protocol; a Kafka listener on the default port would
        // only collide with another server's.
        config.kafka = None;
        let shutdown = ShutdownSignal::new();
        let (listening_sender, listening_receiver) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("cairn-embedded-server".to_owned())
            .spawn({
                let shutdown = shutdown.clone();
                move || {
                    cairn_server::run(config, shutdown, |listening| {
                        // The receiver only goes away once start() has given up waiting.
                        let _ = listening_sender.send(listening.address);
                    })
                }
            })
            .context("starting the embedded server's thread")?;
        let mut server = EmbeddedServer {
            address: SocketAddr::from(([127, 0, 0, 1], 0)),
            shutdown,
            thread: Some(thread),
            data_dir,
        };
        match listening_receiver.recv_timeout(START_TIMEOUT) {
            Ok(address) => {
                server.address = address;
                Ok(server)
            }
            // The server returned before listening: its error says why.
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(server
                .stop()
                .err()
                .unwrap_or_else(|| anyhow!("the embedded server stopped before it was listening"))),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(anyhow!(
                "the embedded server was not listening after {START_TIMEOUT:?}"
            )),
        }
    }

    /// The temporary data directory, removed when the server stops.
    #[must_use]
    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// Stops the server (it finishes in-flight requests and syncs), waits for it, and
    /// removes its data directory.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.join()
    }

    fn join(&mut self) -> anyhow::Result<()> {
        self.shutdown.raise();
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        thread
            .join()
            .map_err(|_| anyhow!("the embedded server's thread panicked"))?
            .context("the embedded server failed")
    }
}

impl Drop for EmbeddedServer {
    fn drop(&mut self) {
        // On an early return the server must still stop before its directory is removed.
        let _ = self.join();
    }
}
