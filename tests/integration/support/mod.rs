//! Shared helpers for the integration tests: executors with explicit options, temp data
//! directories, seeds.

pub mod client_process;
pub mod engine;
pub mod kafka_connection;
pub mod loop_fs;
pub mod server;
pub mod workload;

/// The seed of a randomized test: `TEST_SEED` when set, else fresh; printed either way so a
/// failure can be replayed.
pub fn test_seed(test_name: &str) -> u64 {
    let seed = std::env::var("TEST_SEED")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |elapsed| elapsed.as_nanos() as u64)
        });
    eprintln!("{test_name}: TEST_SEED={seed}");
    seed
}

/// A small deterministic generator (splitmix64), enough to drive test workloads.
pub struct TestRng(u64);

impl TestRng {
    pub fn new(seed: u64) -> Self {
        TestRng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound`.
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }
}

/// Shard 0's checkpoint files under a data directory, newest first.
pub fn checkpoint_files(data_dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found: Vec<std::path::PathBuf> = std::fs::read_dir(data_dir.join("core-0"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.extension()
                .is_some_and(|extension| extension == "ckpt")
        })
        .collect();
    found.sort();
    found.reverse();
    found
}

/// Every file under `dir`, recursively, in no particular order.
pub fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Copies every file under `from` that `keep` accepts to the same place under `to`.
pub fn copy_tree(
    from: &std::path::Path,
    to: &std::path::Path,
    keep: impl Fn(&std::path::Path) -> bool,
) {
    for file in files_under(from) {
        if keep(&file) {
            let target = to.join(file.strip_prefix(from).unwrap());
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            std::fs::copy(&file, &target).unwrap();
        }
    }
}
