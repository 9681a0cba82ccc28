//! Verification: what makes a frame's bytes safe to read, and the errors when they are not.
//!
//! Two layers. First flatbuffers' verifier walks the whole buffer: every offset in bounds,
//! every string UTF-8, every union consistent, required fields present. Its work is bounded
//! by [`verifier_options`], proportional to the frame's size, so a crafted buffer that
//! references one object many times cannot make verification slow. Only after it passes
//! does anything read the buffer. Then the decoders in `request.rs` and `response.rs` check
//! what the verifier cannot know and report it as a [`Violation`]: limits, enum values and
//! union types this version does not know, fields the protocol requires.

use flatbuffers::{InvalidFlatbuffer, VerifierOptions};

use super::ErrorCode;

/// Deepest table nesting the verifier accepts. The schema's deepest paths have 4 tables
/// (Request > Append > Record > Header; Response > ErrorResponse > ConflictInfo >
/// KeyCondition), and it has no recursive types, so this only leaves room for growth.
const TABLE_DEPTH_MAX: usize = 8;

/// Every table starts with a 4-byte vtable offset at its own position, so a buffer built
/// without sharing holds at most one table per 4 bytes.
const FRAME_BYTES_PER_TABLE_MIN: usize = 4;

/// Bytes the verifier may read per byte of frame. It reads each field once per reference,
/// plus vtable entries once per table, which comes to under 3 per byte for our tables even
/// when every record is empty (`verify_budget_accepts_worst_case_legitimate_frames` in
/// `request.rs` pins it). A buffer that references a shared object many times exceeds it
/// and is rejected.
const APPARENT_SIZE_PER_FRAME_BYTE_MAX: usize = 8;

/// The verifier's limits for a frame of `frame_size_bytes`: explicit, never the crate's
/// defaults (they change between releases), and proportional to the frame so verification
/// time is linear in its size.
pub(super) fn verifier_options(frame_size_bytes: usize) -> VerifierOptions {
    VerifierOptions {
        max_depth: TABLE_DEPTH_MAX,
        max_tables: frame_size_bytes / FRAME_BYTES_PER_TABLE_MIN,
        max_apparent_size: frame_size_bytes.saturating_mul(APPARENT_SIZE_PER_FRAME_BYTE_MAX),
        ignore_missing_null_terminator: false,
    }
}

/// Why a frame could not be decoded as a message. The bytes come from a peer, so this is
/// returned, never asserted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The frame is not a flatbuffer with the expected root table, or it exceeds the
    /// verification budget. Nothing in it can be trusted, not even its correlation id.
    #[error("frame of {frame_size_bytes} bytes is not a valid {root} flatbuffer: {invalid}")]
    Malformed {
        root: &'static str,
        frame_size_bytes: usize,
        invalid: InvalidFlatbuffer,
    },
    /// The frame is a valid flatbuffer, but breaks a rule of the protocol.
    #[error("{root} {correlation_id}: {violation}")]
    Invalid {
        root: &'static str,
        correlation_id: u64,
        violation: Violation,
    },
}

impl WireError {
    /// The correlation id of the message, when the frame was valid enough to read it: an
    /// error response can then go back to the client before the connection closes.
    #[must_use]
    pub fn correlation_id(&self) -> Option<u64> {
        match self {
            WireError::Malformed { .. } => None,
            WireError::Invalid { correlation_id, .. } => Some(*correlation_id),
        }
    }

    /// The code an error response for this failure carries.
    #[must_use]
    pub fn error_code(&self) -> ErrorCode {
        match self {
            WireError::Malformed { .. } => ErrorCode::BadRequest,
            WireError::Invalid { violation, .. } => violation.error_code(),
        }
    }
}

/// A rule of the protocol that a verified message breaks: what the flatbuffers verifier
/// cannot check. Sizes and counts are the actual values, beside the limit they exceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// A field the protocol requires is absent (e.g. `Request.body`).
    #[error("{field} is required")]
    MissingField { field: &'static str },
    /// A field is present where the protocol says it must be absent.
    #[error("{field} must be absent {context}")]
    UnexpectedField {
        field: &'static str,
        context: &'static str,
    },
    /// A union member this version does not know: a newer peer, or garbage.
    #[error("unknown {union_name} type {type_value}")]
    UnknownUnionType {
        union_name: &'static str,
        type_value: u8,
    },
    /// An enum value this version does not know: a newer peer, or garbage.
    #[error("unknown {enum_name} value {value}")]
    UnknownEnumValue { enum_name: &'static str, value: u16 },
    /// A frame over its request kind's limit: [`super::NON_APPEND_FRAME_SIZE_BYTES_MAX`]
    /// for every kind but append (whose limit the frame reader enforces).
    #[error("{request_kind} frame of {frame_size_bytes} bytes exceeds {frame_size_bytes_max}")]
    FrameTooLarge {
        request_kind: &'static str,
        frame_size_bytes: usize,
        frame_size_bytes_max: usize,
    },
    /// A topic name of zero bytes.
    #[error("topic name is empty")]
    TopicNameEmpty,
    /// A topic name over [`super::TOPIC_NAME_SIZE_BYTES_MAX`].
    #[error("topic name of {name_size_bytes} bytes exceeds {name_size_bytes_max}")]
    TopicNameTooLong {
        name_size_bytes: usize,
        name_size_bytes_max: usize,
    },
    /// `CreateTopic.partition_count` is 0.
    #[error("partition_count is 0; a topic has at least one partition")]
    PartitionCountZero,
    /// An append with no records.
    #[error("append has no records; a batch holds at least one")]
    BatchEmpty,
    /// A ProducerStamp with a negative field.
    #[error(
        "producer stamp fields must be non-negative: producer_id {producer_id}, epoch \
         {epoch}, base_sequence {base_sequence}"
    )]
    ProducerStampNegative {
        producer_id: i64,
        epoch: i16,
        base_sequence: i32,
    },
    /// An append with more records than `BATCH_RECORD_COUNT_MAX`.
    #[error("append has {record_count} records, more than {record_count_max}")]
    BatchRecordCountTooLarge {
        record_count: usize,
        record_count_max: usize,
    },
    /// An append whose encoded batch (`cairn_engine::core::record::BatchSize`, the one
    /// definition) exceeds `BATCH_SIZE_BYTES_MAX`.
    #[error("the batch encodes to {batch_size_bytes} bytes, more than {batch_size_bytes_max}")]
    BatchTooLarge {
        batch_size_bytes: u64,
        batch_size_bytes_max: usize,
    },
    /// A key longer than `KEY_SIZE_BYTES_MAX` in an append.
    #[error("record {record_index}: key of {key_size_bytes} bytes exceeds {key_size_bytes_max}")]
    RecordKeyTooLong {
        record_index: usize,
        key_size_bytes: usize,
        key_size_bytes_max: usize,
    },
    /// A key longer than `KEY_SIZE_BYTES_MAX` in a read.
    #[error("key of {key_size_bytes} bytes exceeds {key_size_bytes_max}")]
    KeyTooLong {
        key_size_bytes: usize,
        key_size_bytes_max: usize,
    },
    /// CommitOffsets or FetchOffsets with an empty group id.
    #[error("group id is empty")]
    GroupIdEmpty,
    /// A group id longer than `GROUP_ID_SIZE_BYTES_MAX`.
    #[error("group id of {group_id_size_bytes} bytes exceeds {group_id_size_bytes_max}")]
    GroupIdTooLong {
        group_id_size_bytes: usize,
        group_id_size_bytes_max: usize,
    },
    /// CommitOffsets or FetchOffsets naming no partition.
    #[error("no partitions named; at least one is")]
    OffsetPartitionsEmpty,
    /// CommitOffsets or FetchOffsets naming more than `OFFSET_PARTITION_COUNT_MAX`.
    #[error("{partition_count} partitions named, more than {partition_count_max}")]
    OffsetPartitionCountTooLarge {
        partition_count: usize,
        partition_count_max: usize,
    },
    /// A committed offset's metadata longer than `OFFSET_METADATA_SIZE_BYTES_MAX`.
    #[error(
        "partition {partition}: metadata of {metadata_size_bytes} bytes exceeds \
         {metadata_size_bytes_max}"
    )]
    OffsetMetadataTooLong {
        partition: u32,
        metadata_size_bytes: usize,
        metadata_size_bytes_max: usize,
    },
    /// A record with more headers than `RECORD_HEADER_COUNT_MAX`.
    #[error("record {record_index}: {header_count} headers, more than {header_count_max}")]
    HeaderCountTooLarge {
        record_index: usize,
        header_count: usize,
        header_count_max: usize,
    },
    /// A header name longer than `HEADER_NAME_SIZE_BYTES_MAX`.
    #[error(
        "record {record_index}, header {header_index}: name of {name_size_bytes} bytes \
         exceeds {name_size_bytes_max}"
    )]
    HeaderNameTooLong {
        record_index: usize,
        header_index: usize,
        name_size_bytes: usize,
        name_size_bytes_max: usize,
    },
    /// An AlterTopic retention limit below -1 (-1 removes the limit; 1 or more sets it).
    #[error("{field} is {value}; -1 (no limit) or a positive number")]
    RetentionNegative { field: &'static str, value: i64 },
    /// A BackupRead asking for no bytes or more than `BACKUP_READ_SIZE_BYTES_MAX`.
    #[error("backup read of {length_bytes} bytes; 1 to {length_bytes_max} may be read at once")]
    BackupReadLength {
        length_bytes: u32,
        length_bytes_max: u32,
    },
}

impl Violation {
    /// The code an error response for this violation carries: `UnsupportedRequest` for a
    /// request kind this server does not know, `TooLarge` for a limit on sizes or counts,
    /// else `BadRequest`. A topic name over its limit is `BadRequest`, as the engine's
    /// other rules on names are: it is not a valid name, rather than too much data.
    #[must_use]
    pub fn error_code(&self) -> ErrorCode {
        match self {
            Violation::UnknownUnionType { .. } => ErrorCode::UnsupportedRequest,
            Violation::FrameTooLarge { .. }
            | Violation::BatchRecordCountTooLarge { .. }
            | Violation::BatchTooLarge { .. }
            | Violation::RecordKeyTooLong { .. }
            | Violation::KeyTooLong { .. }
            | Violation::HeaderCountTooLarge { .. }
            | Violation::HeaderNameTooLong { .. }
            | Violation::OffsetPartitionCountTooLarge { .. }
            | Violation::OffsetMetadataTooLong { .. } => ErrorCode::TooLarge,
            Violation::MissingField { .. }
            | Violation::UnexpectedField { .. }
            | Violation::UnknownEnumValue { .. }
            | Violation::TopicNameEmpty
            | Violation::TopicNameTooLong { .. }
            | Violation::PartitionCountZero
            | Violation::RetentionNegative { .. }
            | Violation::BatchEmpty
            | Violation::ProducerStampNegative { .. }
            | Violation::GroupIdEmpty
            | Violation::GroupIdTooLong { .. }
            | Violation::OffsetPartitionsEmpty
            | Violation::BackupReadLength { .. } => ErrorCode::BadRequest,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_options_scale_with_the_frame() {
        let options = verifier_options(4096);
        assert_eq!(options.max_depth, TABLE_DEPTH_MAX);
        assert_eq!(options.max_tables, 1024);
        assert_eq!(options.max_apparent_size, 32 * 1024);
        assert!(!options.ignore_missing_null_terminator);
        assert_eq!(verifier_options(usize::MAX).max_apparent_size, usize::MAX);
    }

    #[test]
    fn error_codes_follow_the_kind_of_violation() {
        let unknown = Violation::UnknownUnionType {
            union_name: "RequestBody",
            type_value: 99,
        };
        assert_eq!(unknown.error_code(), ErrorCode::UnsupportedRequest);
        assert_eq!(Violation::BatchEmpty.error_code(), ErrorCode::BadRequest);
        let name_too_long = Violation::TopicNameTooLong {
            name_size_bytes: 250,
            name_size_bytes_max: 249,
        };
        assert_eq!(name_too_long.error_code(), ErrorCode::BadRequest);
        let too_long = Violation::KeyTooLong {
            key_size_bytes: 5000,
            key_size_bytes_max: 4096,
        };
        assert_eq!(too_long.error_code(), ErrorCode::TooLarge);
        let error = WireError::Invalid {
            root: "Request",
            correlation_id: 7,
            violation: too_long,
        };
        assert_eq!(error.correlation_id(), Some(7));
        assert_eq!(error.error_code(), ErrorCode::TooLarge);
        assert_eq!(
            error.to_string(),
            "Request 7: key of 5000 bytes exceeds 4096"
        );
    }
}
