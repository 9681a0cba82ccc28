//! Kafka record batches <-> Cairn records: the produce side decodes one RecordBatch v2
//! (CRC32C checked, decompressed, by the `kafka-protocol` crate) into records and their
//! conditions; the fetch side encodes one Cairn batch as one uncompressed RecordBatch v2.
//!
//! Conditions travel in record headers and are stripped from the stored record:
//! `cairn.expect` on any record (`no-key`, `exists`, or a decimal offset: the key's latest
//! record is there) and `cairn.expect-end-offset` (decimal) on a batch's first record only.
//! A fetched record carries `cairn.prev-key-offset` (decimal) when its key has an earlier
//! record.
//!
//! The batch header is read first (`decode_batch_info`, no records decoded): its record
//! count is checked against `BATCH_RECORD_COUNT_MAX` and transactional or control batches
//! are refused before any record is decompressed or decoded. Decompression is bounded by
//! `DECOMPRESSED_SIZE_BYTES_MAX` (the crate's own decompressors are not), so that a small
//! compressed batch cannot expand into gigabytes.

use bytes::{Bytes, BytesMut};
use cairn_engine::core::limits::{BATCH_RECORD_COUNT_MAX, BATCH_SIZE_BYTES_MAX};
use cairn_engine::core::record::BatchView;
use cairn_engine::core::{KeyCondition, Offset, ProducerStamp};
use kafka_protocol::ResponseError;
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, NO_PRODUCER_EPOCH, NO_PRODUCER_ID, NO_SEQUENCE, Record, RecordBatchDecoder,
    RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

/// The header that states a record's key condition.
pub(super) const EXPECT_HEADER: &str = "cairn.expect";
/// The header, on a batch's first record, that states the partition's expected end offset.
pub(super) const EXPECT_END_OFFSET_HEADER: &str = "cairn.expect-end-offset";
/// The header a fetched record carries when its key has an earlier record.
pub(super) const PREV_KEY_OFFSET_HEADER: &str = "cairn.prev-key-offset";

/// Most bytes a produced batch's records may take decompressed: twice the largest Cairn
/// batch (Kafka's record framing is a little smaller than Cairn's, never half), so any
/// batch the engine could take fits, and a larger one is MESSAGE_TOO_LARGE before it is
/// expanded further.
const DECOMPRESSED_SIZE_BYTES_MAX: usize = 2 * BATCH_SIZE_BYTES_MAX;

/// Why a produced batch was refused before it reached the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct BatchError {
    /// The Kafka error code.
    pub(super) code: i16,
    /// The record it is about, if one (Kafka's `batch_index`).
    pub(super) record_index: Option<u32>,
    pub(super) message: String,
}

impl BatchError {
    fn new(error: ResponseError, message: impl Into<String>) -> BatchError {
        BatchError {
            code: error.code(),
            record_index: None,
            message: message.into(),
        }
    }

    fn record(record_index: usize, message: impl Into<String>) -> BatchError {
        BatchError {
            code: ResponseError::InvalidRecord.code(),
            record_index: u32::try_from(record_index).ok(),
            message: message.into(),
        }
    }
}

/// One produced batch, decoded, with its conditions.
pub(super) struct ProducedBatch {
    pub(super) records: Vec<Record>,
    /// Each record's key condition, by index.
    pub(super) conditions: Vec<KeyCondition>,
    pub(super) expected_end: Option<Offset>,
    /// The idempotent producer's stamp, if the batch has a producer id.
    pub(super) producer: Option<ProducerStamp>,
}

/// Decodes the `records` of one partition of a Produce request: exactly one RecordBatch
/// v2, not transactional, not a control batch.
pub(super) fn decode_produced(records: Bytes) -> Result<ProducedBatch, BatchError> {
    let infos = RecordBatchDecoder::decode_batch_info(&mut records.clone())
        .map_err(|error| BatchError::new(ResponseError::CorruptMessage, error.to_string()))?;
    let info = match infos.as_slice() {
        [info] => info,
        [] => {
            return Err(BatchError::new(
                ResponseError::UnsupportedForMessageFormat,
                "not a record batch v2 (message formats v0 and v1 are not supported)",
            ));
        }
        _ => {
            return Err(BatchError::new(
                ResponseError::InvalidRecord,
                format!("{} record batches for one partition; send one", infos.len()),
            ));
        }
    };
    if info.transactional {
        return Err(BatchError::new(
            ResponseError::TransactionalIdAuthorizationFailed,
            "transactions are not supported",
        ));
    }
    if info.control {
        return Err(BatchError::new(
            ResponseError::InvalidRecord,
            "control batches are not accepted from producers",
        ));
    }
    let record_count = usize::try_from(info.record_count).unwrap_or(usize::MAX);
    if record_count == 0 || record_count > BATCH_RECORD_COUNT_MAX {
        return Err(BatchError::new(
            ResponseError::InvalidRecord,
            format!("a batch has 1 to {BATCH_RECORD_COUNT_MAX} records, not {record_count}"),
        ));
    }
    let producer = (info.producer_id >= 0).then_some(ProducerStamp {
        producer_id: info.producer_id,
        epoch: info.producer_epoch,
        base_sequence: info.base_sequence,
    });
    let timestamps_are_create_time = info.timestamp_type == TimestampType::Creation;
    let mut records_buf = records;
    let too_large = std::cell::Cell::new(false);
    let decompress = |buf: &mut Bytes, compression: Compression| {
        let decompressed = decompress_bounded(buf, compression);
        if decompressed.is_err() && exceeds_bound(buf, compression) {
            too_large.set(true);
        }
        decompressed
    };
    let set =
        RecordBatchDecoder::decode_with_custom_compression(&mut records_buf, Some(decompress))
            .map_err(|error| {
                if too_large.get() {
                    BatchError::new(
                        ResponseError::MessageTooLarge,
                        format!("the batch's records exceed {DECOMPRESSED_SIZE_BYTES_MAX} bytes"),
                    )
                } else {
                    BatchError::new(ResponseError::CorruptMessage, error.to_string())
                }
            })?;
    let mut records = set.records;
    if !timestamps_are_create_time {
        // LogAppendTime from a producer means "the broker's": Cairn stamps the append.
        for record in &mut records {
            record.timestamp = -1;
        }
    }
    let (conditions, expected_end) = conditions(&records)?;
    Ok(ProducedBatch {
        records,
        conditions,
        expected_end,
        producer,
    })
}

/// The records of a batch, decompressed, at most `DECOMPRESSED_SIZE_BYTES_MAX` of them.
fn decompress_bounded(buf: &mut Bytes, compression: Compression) -> anyhow::Result<Bytes> {
    use kafka_protocol::compression::{Decompressor, Snappy};
    match compression {
        Compression::None => Ok(buf.clone()),
        Compression::Gzip => read_bounded(flate2::read::GzDecoder::new(&buf[..])),
        Compression::Zstd => read_bounded(zstd::stream::read::Decoder::new(&buf[..])?),
        Compression::Lz4 => read_bounded(lz4::Decoder::new(&buf[..])?),
        Compression::Snappy => {
            // Snappy states its lengths up front: check them, then the crate's decoder
            // (with Kafka's xerial framing) allocates only what they say.
            if snappy_size_bytes(buf).is_none_or(|size| size > DECOMPRESSED_SIZE_BYTES_MAX) {
                anyhow::bail!(
                    "snappy batch over {DECOMPRESSED_SIZE_BYTES_MAX} bytes, or no lengths"
                );
            }
            Snappy::decompress(buf, |out: &mut Bytes| Ok(out.clone()))
        }
    }
}

/// Whether `buf` decompresses to more than the bound (asked only once decompression
/// failed, to tell a batch too large from a corrupt one).
fn exceeds_bound(buf: &Bytes, compression: Compression) -> bool {
    match compression {
        Compression::None => false,
        Compression::Snappy => {
            snappy_size_bytes(buf).is_some_and(|size| size > DECOMPRESSED_SIZE_BYTES_MAX)
        }
        Compression::Gzip => bounded_len(flate2::read::GzDecoder::new(&buf[..])),
        Compression::Zstd => zstd::stream::read::Decoder::new(&buf[..]).is_ok_and(bounded_len),
        Compression::Lz4 => lz4::Decoder::new(&buf[..]).is_ok_and(bounded_len),
    }
}

/// Whether `reader` yields more than the bound before it ends or fails.
fn bounded_len(reader: impl std::io::Read) -> bool {
    let bound = u64::try_from(DECOMPRESSED_SIZE_BYTES_MAX).unwrap_or(u64::MAX);
    std::io::copy(&mut reader.take(bound + 1), &mut std::io::sink()).is_ok_and(|len| len > bound)
}

fn read_bounded(reader: impl std::io::Read) -> anyhow::Result<Bytes> {
    use std::io::Read as _;
    let bound = u64::try_from(DECOMPRESSED_SIZE_BYTES_MAX).unwrap_or(u64::MAX);
    let mut out = Vec::new();
    reader.take(bound + 1).read_to_end(&mut out)?;
    if out.len() > DECOMPRESSED_SIZE_BYTES_MAX {
        anyhow::bail!("decompressed records exceed {DECOMPRESSED_SIZE_BYTES_MAX} bytes");
    }
    Ok(Bytes::from(out))
}

/// The decompressed size snappy data states: one raw snappy block, or Kafka's xerial
/// framing (a 16-byte magic header, then blocks each prefixed by a 4-byte big-endian
/// length). `None` if the lengths cannot be read (the crate's decoder then says why).
fn snappy_size_bytes(buf: &[u8]) -> Option<usize> {
    const XERIAL_MAGIC: &[u8; 16] = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01";
    let Some(mut rest) = buf.strip_prefix(XERIAL_MAGIC) else {
        return snap::raw::decompress_len(buf).ok();
    };
    let mut size_bytes: usize = 0;
    while !rest.is_empty() {
        let (len, after) = rest.split_first_chunk::<4>()?;
        let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
        let (block, after) = after.split_at_checked(len)?;
        size_bytes = size_bytes.checked_add(snap::raw::decompress_len(block).ok()?)?;
        rest = after;
    }
    Some(size_bytes)
}

/// Whether a header name is one of the condition headers, stripped before storing.
pub(super) fn is_condition_header(name: &str) -> bool {
    name == EXPECT_HEADER || name == EXPECT_END_OFFSET_HEADER
}

/// Each record's key condition and the batch's expected end offset, from their headers.
fn conditions(records: &[Record]) -> Result<(Vec<KeyCondition>, Option<Offset>), BatchError> {
    let mut conditions = Vec::with_capacity(records.len());
    let mut expected_end = None;
    for (index, record) in records.iter().enumerate() {
        let mut condition = KeyCondition::Any;
        for (name, value) in &record.headers {
            let name: &str = name;
            if !is_condition_header(name) {
                continue;
            }
            let Some(value) = value
                .as_ref()
                .and_then(|value| std::str::from_utf8(value).ok())
            else {
                return Err(BatchError::record(
                    index,
                    format!("invalid condition: record {index}: {name} has no text value"),
                ));
            };
            if name == EXPECT_HEADER {
                condition = match value {
                    "no-key" => KeyCondition::NoKey,
                    "exists" => KeyCondition::KeyExists,
                    offset => match parse_offset(offset) {
                        Some(offset) => KeyCondition::At(offset),
                        None => {
                            return Err(BatchError::record(
                                index,
                                format!(
                                    "invalid condition: record {index}: {EXPECT_HEADER} is \
                                     no-key, exists or a decimal offset, not {value:?}"
                                ),
                            ));
                        }
                    },
                };
                if record.key.is_none() {
                    return Err(BatchError::record(
                        index,
                        format!(
                            "invalid condition: record {index}: a record with a null key has \
                             no key to check ({EXPECT_HEADER})"
                        ),
                    ));
                }
            } else {
                if index != 0 {
                    return Err(BatchError::record(
                        index,
                        format!(
                            "invalid condition: record {index}: {EXPECT_END_OFFSET_HEADER} \
                             belongs on a batch's first record"
                        ),
                    ));
                }
                expected_end = Some(parse_offset(value).ok_or_else(|| {
                    BatchError::record(
                        index,
                        format!(
                            "invalid condition: record {index}: {EXPECT_END_OFFSET_HEADER} is \
                             a decimal offset, not {value:?}"
                        ),
                    )
                })?);
            }
        }
        conditions.push(condition);
    }
    Ok((conditions, expected_end))
}

/// A decimal offset: digits only (no sign, no spaces), fitting in `u64`.
fn parse_offset(text: &str) -> Option<Offset> {
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().map(Offset)
}

/// Appends `view` to `out` as one uncompressed RecordBatch v2 (CreateTime) with the
/// batch's own offsets and producer stamp, each record with its timestamp, its headers and
/// `cairn.prev-key-offset`; null keys and values stay null.
pub(super) fn encode_fetched(view: &BatchView<'_>, out: &mut BytesMut) -> Result<(), String> {
    let (producer_id, producer_epoch, base_sequence) = match view.producer() {
        Some(stamp) => (stamp.producer_id, stamp.epoch, stamp.base_sequence),
        None => (NO_PRODUCER_ID, NO_PRODUCER_EPOCH, NO_SEQUENCE),
    };
    let mut records = Vec::with_capacity(usize::try_from(view.record_count()).unwrap_or(0));
    for (delta, record) in view.records().enumerate() {
        let mut headers = IndexMap::with_capacity(usize::from(record.header_count()) + 1);
        for header in record.headers() {
            let name = String::from_utf8_lossy(header.name).into_owned();
            headers.insert(
                StrBytes::from_string(name),
                Some(Bytes::copy_from_slice(header.value)),
            );
        }
        if let Some(prev) = record.prev_key_offset {
            headers.insert(
                StrBytes::from_static_str(PREV_KEY_OFFSET_HEADER),
                Some(Bytes::from(prev.0.to_string())),
            );
        }
        let delta = i32::try_from(delta).unwrap_or(i32::MAX);
        records.push(Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id,
            producer_epoch,
            timestamp_type: TimestampType::Creation,
            offset: i64::try_from(record.offset.0).unwrap_or(i64::MAX),
            // The encoder keeps records in one batch while offset - sequence is constant:
            // the base sequence for the first (NO_SEQUENCE without a producer), counting up.
            sequence: base_sequence.wrapping_add(delta),
            timestamp: record.timestamp_ms(),
            key: (!record.is_null_key()).then(|| Bytes::copy_from_slice(record.key)),
            value: (!record.is_null_value()).then(|| Bytes::copy_from_slice(record.value)),
            headers,
        });
    }
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(out, &records, &options).map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(value_size_bytes: usize, compression: Compression) -> Bytes {
        let record = Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
            timestamp_type: TimestampType::Creation,
            offset: 0,
            sequence: NO_SEQUENCE,
            timestamp: 1,
            key: Some(Bytes::from_static(b"k")),
            value: Some(Bytes::from(vec![0u8; value_size_bytes])),
            headers: IndexMap::new(),
        };
        let mut buf = BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression,
        };
        RecordBatchEncoder::encode(&mut buf, [&record], &options).expect("encodes");
        buf.freeze()
    }

    #[test]
    fn every_compression_decodes() {
        for compression in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let batch = decode_produced(encoded(1000, compression)).expect("decodes");
            assert_eq!(batch.records.len(), 1, "{compression:?}");
            assert_eq!(batch.records[0].value.as_ref().map(Bytes::len), Some(1000));
        }
    }

    #[test]
    fn a_compressed_batch_that_expands_too_far_is_too_large_not_decoded() {
        for compression in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let bytes = encoded(DECOMPRESSED_SIZE_BYTES_MAX + 1, compression);
            assert!(
                bytes.len() < DECOMPRESSED_SIZE_BYTES_MAX / 10,
                "{compression:?}"
            );
            let Err(error) = decode_produced(bytes) else {
                panic!("{compression:?} decoded");
            };
            assert_eq!(
                error.code,
                ResponseError::MessageTooLarge.code(),
                "{compression:?}"
            );
        }
    }

    #[test]
    fn offsets_are_plain_decimals() {
        assert_eq!(parse_offset("17"), Some(Offset(17)));
        assert_eq!(parse_offset(""), None);
        assert_eq!(parse_offset("+1"), None);
        assert_eq!(parse_offset("-1"), None);
        assert_eq!(parse_offset("1 "), None);
        assert_eq!(parse_offset("99999999999999999999999"), None);
    }
}
