//! Retention: how much of a partition's history its topic keeps.
//!
//! A topic keeps its history forever unless it says otherwise: an event store's log is its
//! source of truth, so removing records is something an operator asks for, never a default.

/// How long and how much of each partition's history a topic keeps. `None` keeps
/// everything; both limits may be set, and a batch goes once either says so.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RetentionPolicy {
    /// Kafka's `retention.ms`: a batch may go once its newest record is older than this.
    pub ms: Option<u64>,
    /// Kafka's `retention.bytes`: per partition, the oldest batches may go while the
    /// partition holds more than this without them.
    pub bytes: Option<u64>,
}

impl RetentionPolicy {
    /// Keeps everything.
    pub const FOREVER: RetentionPolicy = RetentionPolicy {
        ms: None,
        bytes: None,
    };

    /// Whether the policy ever removes anything.
    pub fn is_forever(&self) -> bool {
        self.ms.is_none() && self.bytes.is_none()
    }
}
