//! The glommio shell: the only code that touches files or executors.
//!
//! It moves bytes and waits; every decision is delegated to `crate::core`. `shard` owns a
//! core's partitions and its core log, `group_commit` its committer, `segment` the segment
//! files, `data_dir` the directory's identity and topic catalog.

pub mod data_dir;
pub mod event;
pub mod fault;
pub(crate) mod group_commit;
pub mod read_cache;
pub mod segment;
pub mod shard;
