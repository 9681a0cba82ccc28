//! [`Encoder`]: typed messages to flatbuffer bytes, reusing its buffers between messages.
//!
//! The request and response halves live in `request.rs` and `response.rs`, beside the types
//! they encode; this file holds the shared state.

use flatbuffers::{FlatBufferBuilder, WIPOffset};

use super::generated::cairn as fb;

/// Bytes the builder starts with; it grows as needed and keeps its largest size.
const BUILDER_SIZE_BYTES_INITIAL: usize = 4096;

/// Encodes requests and responses into flatbuffers.
///
/// One per connection (or per client): the builder and the scratch lists of offsets keep
/// their capacity, so steady-state encoding does not allocate. They grow to the largest
/// message encoded, which frame limits bound.
pub struct Encoder {
    pub(super) builder: FlatBufferBuilder<'static>,
    pub(super) record_offsets: Vec<WIPOffset<fb::Record<'static>>>,
    pub(super) record_out_offsets: Vec<WIPOffset<fb::RecordOut<'static>>>,
    pub(super) header_offsets: Vec<WIPOffset<fb::Header<'static>>>,
}

impl Encoder {
    /// An encoder with small initial buffers.
    #[must_use]
    pub fn new() -> Encoder {
        Encoder {
            builder: FlatBufferBuilder::with_capacity(BUILDER_SIZE_BYTES_INITIAL),
            record_offsets: Vec::new(),
            record_out_offsets: Vec::new(),
            header_offsets: Vec::new(),
        }
    }
}

impl Default for Encoder {
    fn default() -> Encoder {
        Encoder::new()
    }
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder").finish_non_exhaustive()
    }
}
