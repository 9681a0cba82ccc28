//! The glommio shell: the only code that touches files or executors.
//!
//! It moves bytes and waits; every decision is delegated to `crate::core`. `shard` owns a
//! core's partitions and its core log, `group_commit` its committer, `recovery` the reading
//! of the log at open (and the refusal to open on damage), `segment` the segment files,
//! `index_file` the segment index files,
//! `data_dir` the directory's identity, lock and topic catalog, `stats` the counters a
//! shard keeps about its I/O for the server's metrics.

pub mod backup;
pub mod checkpoint;
pub mod config;
pub mod data_dir;
pub mod event;
pub mod fault;
pub(crate) mod group_commit;
pub mod index_file;
pub mod reads;
pub mod recovery;
pub(crate) mod retention;
pub mod segment;
pub mod shard;
pub(crate) mod state;
pub mod stats;
