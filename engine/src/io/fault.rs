//! Fault injection for the I/O shell: tests make a chosen write, sync or segment
//! preparation fail, and observe the real engine's reaction (docs/DESIGN.md §3.5). Production
//! configurations carry no hook.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use crate::error::StorageError;

/// Where the shell asks the hook before doing I/O.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FaultPoint {
    /// Before writing a group.
    Write,
    /// After a group's write succeeded, before its fdatasync.
    Sync,
    /// Before preparing a segment file.
    Prepare,
    /// Before writing a sealed segment's index file.
    IndexWrite,
    /// Before writing a checkpoint file.
    CheckpointWrite,
}

/// Decides, at each fault point, whether the I/O there fails. Shared by all shards, so it
/// must be `Send + Sync`; tests usually count calls with atomics.
pub trait FaultPolicy: Send + Sync {
    /// `Some(errno)` makes the operation fail with that OS error.
    fn fail(&self, point: FaultPoint, path: &Path) -> Option<i32>;
}

/// A cloneable handle on a fault policy, carried in the engine configuration.
#[derive(Clone)]
pub struct FaultHook(pub Arc<dyn FaultPolicy>);

impl FaultHook {
    /// `Err` when the policy says the operation at `point` fails.
    pub fn check(&self, point: FaultPoint, path: &Path) -> Result<(), StorageError> {
        match self.0.fail(point, path) {
            None => Ok(()),
            Some(errno) => Err(StorageError::from_io(
                match point {
                    FaultPoint::Write => "write",
                    FaultPoint::Sync => "fdatasync",
                    FaultPoint::Prepare => "prepare segment",
                    FaultPoint::IndexWrite => "write index",
                    FaultPoint::CheckpointWrite => "write checkpoint",
                },
                path,
                &std::io::Error::from_raw_os_error(errno),
            )),
        }
    }
}

impl fmt::Debug for FaultHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FaultHook")
    }
}
