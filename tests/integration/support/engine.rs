//! Running the real engine in-process: one glommio executor, a temp data directory, small
//! segments so that rolls happen in tests.

use std::future::Future;
use std::path::Path;

use cairn_engine::{Engine, EngineConfig};
use glommio::{LocalExecutorBuilder, Placement};

/// Segment size for tests: the smallest allowed plus a little, so a few MiB roll.
pub const TEST_SEGMENT_SIZE_BYTES: u64 = 2 * 1024 * 1024 + 4096;

/// A config for a one-shard engine in `dir` with test-sized segments and groups.
pub fn test_config(dir: &Path) -> EngineConfig {
    let mut config = EngineConfig::new(dir, 1);
    config.segment_size_bytes = TEST_SEGMENT_SIZE_BYTES;
    config.group_size_bytes_max = 2 * 1024 * 1024;
    config.read_cache_bytes_max = 4 * 1024 * 1024;
    config
}

/// Runs `make()` to completion on a fresh executor thread with explicit options (io_memory
/// within the 8 MiB memlock limit that non-root users have here).
pub fn run_local<F, Fut, T>(make: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    LocalExecutorBuilder::new(Placement::Unbound)
        .name("test-shard")
        .io_memory(2 * 1024 * 1024)
        .spawn(make)
        .expect("test executor starts")
        .join()
        .expect("test executor finishes without panicking")
}

/// Opens the engine of `config`, failing the test with the error if it cannot.
pub fn open_engine(config: EngineConfig) -> Engine {
    Engine::open(config).expect("engine opens")
}
