//! `EngineConfig`: how the engine is set up, every durability- or memory-relevant value
//! explicit, and its validation.

use std::path::PathBuf;

use crate::core::limits::{
    BATCH_SIZE_BYTES_MAX, BLOCK_SIZE_BYTES, GROUP_SIZE_BYTES_MAX, SEGMENT_SIZE_BYTES_MAX,
    SEGMENT_SIZE_BYTES_MIN,
};
use crate::core::segment_header::SEGMENT_HEADER_SIZE_BYTES;
use crate::error::OpenError;
use crate::io::fault::FaultHook;

/// How the engine is set up. Every durability- or memory-relevant value is explicit.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Where the data directory lives.
    pub data_dir: PathBuf,
    /// Number of shards (cores); fixed when the data directory is created.
    pub shard_count: u16,
    /// Size each segment file is preallocated to. Block-aligned.
    pub segment_size_bytes: u64,
    /// Largest group written with one write + fdatasync. At least one largest batch.
    pub group_size_bytes_max: usize,
    /// Most appends of one shard waiting for their group to be synced; more wait to enter.
    pub pending_append_count_max: usize,
    /// Bytes of recently synced groups kept in memory per shard for reads.
    pub read_cache_bytes_max: usize,
    /// Log bytes written between two checkpoints of a shard's state (docs/DESIGN.md §3.7):
    /// what a restart scans at most after loading the newest one. 0: no checkpoints.
    pub checkpoint_interval_bytes: u64,
    /// How often each shard looks for what retention may remove.
    pub retention_check_interval: std::time::Duration,
    /// Bytes per second a shard's retention copies at most (reads and writes each), so
    /// that rewriting segments does not move append latency. 0: no limit.
    pub retention_bytes_per_second: u64,
    /// Test-only fault injection; `None` in production.
    pub fault_hook: Option<FaultHook>,
    /// What opening a shard does about damage a crash cannot explain (FORMAT.md, "Torn
    /// tail or damage"): `false`, refuse to open and change nothing; `true`, the operator's
    /// explicit repair: truncate the log before the damage, keep the dropped files aside,
    /// and report what was lost (`Shard::repair_report`). Never on by default.
    pub repair_damage: bool,
}

impl EngineConfig {
    /// Defaults: 256 MiB segments, 4 MiB groups, 64 Ki waiting appends, 64 MiB read cache,
    /// a checkpoint every 128 MiB of log, retention looked at every 30 s and copying at
    /// most 64 MiB/s.
    pub fn new(data_dir: impl Into<PathBuf>, shard_count: u16) -> Self {
        EngineConfig {
            data_dir: data_dir.into(),
            shard_count,
            segment_size_bytes: 256 * 1024 * 1024,
            group_size_bytes_max: 4 * 1024 * 1024,
            pending_append_count_max: 65_536,
            read_cache_bytes_max: 64 * 1024 * 1024,
            checkpoint_interval_bytes: 128 * 1024 * 1024,
            retention_check_interval: std::time::Duration::from_secs(30),
            retention_bytes_per_second: 64 * 1024 * 1024,
            fault_hook: None,
            repair_damage: false,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), OpenError> {
        let bad = |problem: String| Err(OpenError::BadConfig(problem));
        if !(SEGMENT_SIZE_BYTES_MIN..=SEGMENT_SIZE_BYTES_MAX).contains(&self.segment_size_bytes)
            || !self
                .segment_size_bytes
                .is_multiple_of(BLOCK_SIZE_BYTES as u64)
        {
            return bad(format!(
                "segment size {} must be a multiple of {BLOCK_SIZE_BYTES} in \
                 {SEGMENT_SIZE_BYTES_MIN}..={SEGMENT_SIZE_BYTES_MAX}",
                self.segment_size_bytes
            ));
        }
        let group_room = self.segment_size_bytes - SEGMENT_HEADER_SIZE_BYTES as u64;
        if self.group_size_bytes_max < BATCH_SIZE_BYTES_MAX
            || self.group_size_bytes_max as u64 > group_room
            || self.group_size_bytes_max > GROUP_SIZE_BYTES_MAX
        {
            return bad(format!(
                "group size {} must hold the largest batch ({BATCH_SIZE_BYTES_MAX}), fit in a \
                 segment ({group_room}) and be at most {GROUP_SIZE_BYTES_MAX}",
                self.group_size_bytes_max
            ));
        }
        if self.pending_append_count_max == 0 {
            return bad("pending append count must be at least 1".into());
        }
        Ok(())
    }
}
