//! What a shard's tasks share: its engine shard, its end of the mesh, its admission state,
//! where the server listens, the shutdown flag its connections watch, its connection count,
//! the consumer groups it coordinates and the index of those whose offsets it keeps. Lives on one
//! executor; nothing in it is shared with another shard.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use cairn_engine::io::event::Event;
use cairn_engine::{Shard, ShardId};

use crate::admission::Admission;
use crate::config::{Listening, ServerConfig};
use crate::group::Groups;
use crate::mesh::Mesh;
use crate::metrics::{Metrics, ShardMetrics};
use crate::offsets::GroupOffsetsIndex;

/// Everything a shard's tasks share.
pub(crate) struct ShardContext {
    pub(crate) shard: Shard,
    pub(crate) shard_id: ShardId,
    pub(crate) config: ServerConfig,
    pub(crate) listening: Listening,
    /// The Kafka cluster id Metadata and DescribeCluster answer (`kafka::cluster_id`).
    pub(crate) cluster_id: String,
    /// Raised when the server is shutting down: connections stop reading new requests.
    pub(crate) stopping: Event,
    pub(crate) is_stopping: Cell<bool>,
    pub(crate) mesh: Rc<Mesh>,
    /// Connections currently open, to wait for on shutdown.
    pub(crate) open_connections: Cell<usize>,
    pub(crate) connection_closed: Event,
    /// The shard's request memory budget and connection limit.
    pub(crate) admission: Admission,
    /// The consumer groups this shard coordinates (Kafka's group protocol).
    pub(crate) groups: Groups,
    /// The groups with committed offsets in this shard's partition of the offsets topic
    /// (the groups this shard coordinates that have any).
    pub(crate) group_offsets: RefCell<GroupOffsetsIndex>,
    /// What this shard counts (written only here; read by the metrics endpoint).
    pub(crate) metrics: Arc<ShardMetrics>,
    /// Every shard's metrics and the server's health (this shard marks a storage failure).
    pub(crate) server_metrics: Arc<Metrics>,
}
