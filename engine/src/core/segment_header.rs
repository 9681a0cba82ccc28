//! The segment header: block 0 of every segment file (FORMAT.md, Segment header).
//!
//! It says which shard's core log the file belongs to, its place in that log and its
//! preallocated size. The shell writes it once, when it prepares the file (before any batch),
//! and checks it with [`SegmentHeader::decode`] before handing the segment's data to the
//! recovery scanner, which trusts `segment_size_bytes` from then on. So `decode` validates
//! every field the CRC covers, including the relationships between them.

#![deny(clippy::indexing_slicing)]

use crate::core::ShardId;
use crate::core::limits::{BLOCK_SIZE_BYTES, SEGMENT_SIZE_BYTES_MAX, SEGMENT_SIZE_BYTES_MIN};

/// Bytes of the segment header: one whole block, so data starts block-aligned.
pub const SEGMENT_HEADER_SIZE_BYTES: usize = BLOCK_SIZE_BYTES;

/// The segment header's own format version. Batches carry theirs (`record::FORMAT_VERSION`):
/// format version 2 changed only the batch layout, so segments keep header version 1 and a
/// segment written before version 2 opens unchanged.
pub const SEGMENT_FORMAT_VERSION: u16 = 1;

/// First eight bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"CAIRNSEG";

/// Bytes of the header's fields, which `header_crc` covers; the crc follows them.
const FIELDS_SIZE_BYTES: usize = 32;

/// Bytes of the fields and the crc; zeros follow up to the end of the block.
const FIELDS_AND_CRC_SIZE_BYTES: usize = FIELDS_SIZE_BYTES + 4;

const _: () = assert!(8 + 2 + 2 + 2 + 2 + 8 + 8 == FIELDS_SIZE_BYTES);
const _: () = assert!(FIELDS_AND_CRC_SIZE_BYTES <= SEGMENT_HEADER_SIZE_BYTES);

/// The decoded segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The shard whose core log this segment belongs to.
    pub shard_id: ShardId,
    /// Shard count of the data directory; `shard_id < shard_count`.
    pub shard_count: u16,
    /// The segment's place in the core log; equals the number in the file name.
    pub segment_index: u64,
    /// The file's preallocated size: a multiple of the block size within
    /// `SEGMENT_SIZE_BYTES_MIN..=SEGMENT_SIZE_BYTES_MAX`.
    pub segment_size_bytes: u64,
    /// How many times retention rewrote the segment without the batches it removed: 0 for
    /// a segment as the log wrote it. Its index file carries the same number, so an index
    /// of an earlier generation is never taken for this one's.
    pub generation: u16,
}

/// Why block 0 of a segment is not a valid header. From disk, so returned, never asserted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SegmentHeaderError {
    /// Fewer bytes than a header block were given.
    #[error("segment header needs {needed_bytes} bytes, {available_bytes} available")]
    Truncated {
        needed_bytes: usize,
        available_bytes: usize,
    },
    /// Bytes 0..36 are all zero: the file was created but never given its header (a crash
    /// while preparing it), so it holds no data and is prepared again. Every other error
    /// means corruption, and the shard refuses to open (FORMAT.md, Segment header).
    #[error("segment header is blank: the segment was never prepared")]
    Blank,
    /// The first eight bytes are not `CAIRNSEG`.
    #[error("segment magic {actual:#018x} is not CAIRNSEG")]
    BadMagic { actual: u64 },
    /// A format version this code cannot read.
    #[error("segment format version {actual} is not the supported {expected}")]
    UnsupportedVersion { expected: u16, actual: u16 },
    /// The bytes do not match `header_crc`.
    #[error("segment header checksum {actual:#010x} does not match header {expected:#010x}")]
    ChecksumMismatch { expected: u32, actual: u32 },
    /// `shard_id` is not below `shard_count` (which is then also caught when 0).
    #[error("shard {shard_id} is not below the shard count {shard_count}")]
    ShardOutOfRange { shard_id: u16, shard_count: u16 },
    /// `segment_size_bytes` is not a whole number of blocks within the limits.
    #[error(
        "segment size {segment_size_bytes} is not a multiple of {block_size_bytes} within \
         {segment_size_bytes_min}..={segment_size_bytes_max}"
    )]
    SegmentSizeInvalid {
        segment_size_bytes: u64,
        block_size_bytes: u64,
        segment_size_bytes_min: u64,
        segment_size_bytes_max: u64,
    },
}

impl SegmentHeader {
    /// Writes the whole header block, zeros included, into `out[..SEGMENT_HEADER_SIZE_BYTES]`.
    ///
    /// # Panics
    ///
    /// If `out` is shorter than a block or the header is one `decode` would reject: both are
    /// bugs of the code preparing the segment.
    pub fn encode(&self, out: &mut [u8]) {
        assert!(
            out.len() >= SEGMENT_HEADER_SIZE_BYTES,
            "segment header needs {SEGMENT_HEADER_SIZE_BYTES} bytes, buffer has {}",
            out.len()
        );
        assert!(
            self.shard_id.0 < self.shard_count,
            "shard {:?} not below shard count {}",
            self.shard_id,
            self.shard_count
        );
        assert!(
            segment_size_is_valid(self.segment_size_bytes),
            "segment size {} invalid",
            self.segment_size_bytes
        );
        let block = out
            .get_mut(..SEGMENT_HEADER_SIZE_BYTES)
            .expect("length asserted above");
        block.fill(0);
        let (fields, rest) = block
            .split_first_chunk_mut::<FIELDS_SIZE_BYTES>()
            .expect("a block holds the header fields");
        let mut cursor = 0;
        let mut put = |bytes: &[u8]| {
            fields
                .get_mut(cursor..cursor + bytes.len())
                .expect("field sizes add up to FIELDS_SIZE_BYTES")
                .copy_from_slice(bytes);
            cursor += bytes.len();
        };
        put(&SEGMENT_MAGIC);
        put(&SEGMENT_FORMAT_VERSION.to_le_bytes());
        put(&self.shard_id.0.to_le_bytes());
        put(&self.shard_count.to_le_bytes());
        put(&self.generation.to_le_bytes());
        put(&self.segment_index.to_le_bytes());
        put(&self.segment_size_bytes.to_le_bytes());
        assert_eq!(cursor, FIELDS_SIZE_BYTES, "every header field was written");
        let crc = crc32fast::hash(fields);
        let (crc_bytes, _) = rest
            .split_first_chunk_mut::<4>()
            .expect("a block holds the header crc");
        *crc_bytes = crc.to_le_bytes();
        debug_assert_eq!(
            SegmentHeader::decode(block),
            Ok(*self),
            "encoded header decodes"
        );
    }

    /// Decodes and validates a header block. Only the first `SEGMENT_HEADER_SIZE_BYTES` of
    /// `bytes` are read.
    ///
    /// The zeros after the crc are not checked: no checksum covers them, and a flipped bit
    /// there must not make a segment full of synced data look unprepared.
    ///
    /// # Errors
    ///
    /// The first check that fails: length, blank, magic, version, crc, then the fields.
    pub fn decode(bytes: &[u8]) -> Result<SegmentHeader, SegmentHeaderError> {
        let Some(block) = bytes.get(..SEGMENT_HEADER_SIZE_BYTES) else {
            return Err(SegmentHeaderError::Truncated {
                needed_bytes: SEGMENT_HEADER_SIZE_BYTES,
                available_bytes: bytes.len(),
            });
        };
        let (fields, rest) = block
            .split_first_chunk::<FIELDS_SIZE_BYTES>()
            .expect("a block holds the header fields");
        let (crc_bytes, _) = rest
            .split_first_chunk::<4>()
            .expect("a block holds the header crc");
        if fields.iter().chain(crc_bytes).all(|byte| *byte == 0) {
            return Err(SegmentHeaderError::Blank);
        }

        let mut rest: &[u8] = fields;
        let magic = read::<8>(&mut rest);
        if magic != SEGMENT_MAGIC {
            return Err(SegmentHeaderError::BadMagic {
                // Big-endian so that the hex digits read in file order, like the ASCII.
                actual: u64::from_be_bytes(magic),
            });
        }
        let format_version = u16::from_le_bytes(read(&mut rest));
        if format_version != SEGMENT_FORMAT_VERSION {
            return Err(SegmentHeaderError::UnsupportedVersion {
                expected: SEGMENT_FORMAT_VERSION,
                actual: format_version,
            });
        }
        let expected = u32::from_le_bytes(*crc_bytes);
        let actual = crc32fast::hash(fields);
        if actual != expected {
            return Err(SegmentHeaderError::ChecksumMismatch { expected, actual });
        }
        let shard_id = u16::from_le_bytes(read(&mut rest));
        let shard_count = u16::from_le_bytes(read(&mut rest));
        let generation = u16::from_le_bytes(read(&mut rest));
        let segment_index = u64::from_le_bytes(read(&mut rest));
        let segment_size_bytes = u64::from_le_bytes(read(&mut rest));
        debug_assert!(rest.is_empty(), "every header field was read");
        if shard_id >= shard_count {
            return Err(SegmentHeaderError::ShardOutOfRange {
                shard_id,
                shard_count,
            });
        }
        if !segment_size_is_valid(segment_size_bytes) {
            return Err(SegmentHeaderError::SegmentSizeInvalid {
                segment_size_bytes,
                block_size_bytes: block_size_bytes(),
                segment_size_bytes_min: SEGMENT_SIZE_BYTES_MIN,
                segment_size_bytes_max: SEGMENT_SIZE_BYTES_MAX,
            });
        }
        Ok(SegmentHeader {
            shard_id: ShardId(shard_id),
            shard_count,
            segment_index,
            segment_size_bytes,
            generation,
        })
    }
}

/// Takes the next `N` bytes of the header fields.
fn read<const N: usize>(rest: &mut &[u8]) -> [u8; N] {
    let (head, tail) = rest
        .split_first_chunk::<N>()
        .expect("field sizes add up to FIELDS_SIZE_BYTES");
    *rest = tail;
    *head
}

fn block_size_bytes() -> u64 {
    u64::try_from(BLOCK_SIZE_BYTES).expect("the block size fits in u64")
}

fn segment_size_is_valid(segment_size_bytes: u64) -> bool {
    segment_size_bytes.is_multiple_of(block_size_bytes())
        && (SEGMENT_SIZE_BYTES_MIN..=SEGMENT_SIZE_BYTES_MAX).contains(&segment_size_bytes)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn header() -> SegmentHeader {
        SegmentHeader {
            shard_id: ShardId(1),
            shard_count: 2,
            segment_index: 42,
            segment_size_bytes: SEGMENT_SIZE_BYTES_MIN * 4,
            generation: 0,
        }
    }

    fn encoded(header: &SegmentHeader) -> Vec<u8> {
        let mut block = vec![0xAA; SEGMENT_HEADER_SIZE_BYTES + 10];
        header.encode(&mut block);
        block
    }

    /// Patches a field and recomputes the crc, as a buggy writer would have written it.
    fn patched(position: usize, field: &[u8]) -> Vec<u8> {
        let mut block = encoded(&header());
        block[position..position + field.len()].copy_from_slice(field);
        let crc = crc32fast::hash(&block[..FIELDS_SIZE_BYTES]);
        block[FIELDS_SIZE_BYTES..FIELDS_AND_CRC_SIZE_BYTES].copy_from_slice(&crc.to_le_bytes());
        block
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn segment_header_round_trips(
            shard_count in 1_u16..,
            shard_seed: u16,
            segment_index: u64,
            block_count in (SEGMENT_SIZE_BYTES_MIN / 4096)..=(SEGMENT_SIZE_BYTES_MAX / 4096),
        ) {
            let header = SegmentHeader {
                shard_id: ShardId(shard_seed % shard_count),
                shard_count,
                segment_index,
                segment_size_bytes: block_count * 4096,
                generation: 0,
            };
            let block = encoded(&header);
            prop_assert_eq!(&block[..4], b"CAIR");
            prop_assert!(block[FIELDS_AND_CRC_SIZE_BYTES..SEGMENT_HEADER_SIZE_BYTES].iter().all(|b| *b == 0));
            prop_assert!(block[SEGMENT_HEADER_SIZE_BYTES..].iter().all(|b| *b == 0xAA), "wrote past the block");
            prop_assert_eq!(SegmentHeader::decode(&block), Ok(header));
        }

        #[test]
        fn segment_header_decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..=4200)) {
            let _ = SegmentHeader::decode(&bytes);
        }

        #[test]
        fn segment_header_detects_every_bit_flip_in_its_fields(bit in 0_usize..FIELDS_AND_CRC_SIZE_BYTES * 8) {
            let mut block = encoded(&header());
            block[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(SegmentHeader::decode(&block).is_err());
        }
    }

    #[test]
    fn segment_header_ignores_the_zeros_after_its_crc() {
        let mut block = encoded(&header());
        block[FIELDS_AND_CRC_SIZE_BYTES] = 1;
        block[SEGMENT_HEADER_SIZE_BYTES - 1] = 1;
        assert_eq!(SegmentHeader::decode(&block), Ok(header()));
    }

    #[test]
    fn segment_header_rejects_each_fault_with_its_error() {
        let good = encoded(&header());
        let expected_crc = u32::from_le_bytes(good[32..36].try_into().unwrap());
        let mut flipped = good.clone();
        flipped[20] ^= 0x10;
        let size_invalid = |segment_size_bytes| SegmentHeaderError::SegmentSizeInvalid {
            segment_size_bytes,
            block_size_bytes: 4096,
            segment_size_bytes_min: SEGMENT_SIZE_BYTES_MIN,
            segment_size_bytes_max: SEGMENT_SIZE_BYTES_MAX,
        };
        let cases = [
            (
                "short",
                good[..4095].to_vec(),
                SegmentHeaderError::Truncated {
                    needed_bytes: 4096,
                    available_bytes: 4095,
                },
            ),
            ("blank", vec![0; 4096], SegmentHeaderError::Blank),
            (
                "magic",
                patched(0, b"CAIRNLOG"),
                SegmentHeaderError::BadMagic {
                    actual: u64::from_be_bytes(*b"CAIRNLOG"),
                },
            ),
            (
                "version",
                patched(8, &7_u16.to_le_bytes()),
                SegmentHeaderError::UnsupportedVersion {
                    expected: 1,
                    actual: 7,
                },
            ),
            (
                "checksum",
                flipped.clone(),
                SegmentHeaderError::ChecksumMismatch {
                    expected: expected_crc,
                    actual: crc32fast::hash(&flipped[..32]),
                },
            ),
            (
                "shard id",
                patched(10, &2_u16.to_le_bytes()),
                SegmentHeaderError::ShardOutOfRange {
                    shard_id: 2,
                    shard_count: 2,
                },
            ),
            (
                "shard count",
                patched(10, &[0, 0, 0, 0]),
                SegmentHeaderError::ShardOutOfRange {
                    shard_id: 0,
                    shard_count: 0,
                },
            ),
            (
                "unaligned size",
                patched(24, &(SEGMENT_SIZE_BYTES_MIN + 512).to_le_bytes()),
                size_invalid(SEGMENT_SIZE_BYTES_MIN + 512),
            ),
            (
                "size too small",
                patched(24, &(SEGMENT_SIZE_BYTES_MIN - 4096).to_le_bytes()),
                size_invalid(SEGMENT_SIZE_BYTES_MIN - 4096),
            ),
            (
                "size too large",
                patched(24, &(SEGMENT_SIZE_BYTES_MAX + 4096).to_le_bytes()),
                size_invalid(SEGMENT_SIZE_BYTES_MAX + 4096),
            ),
        ];
        for (name, block, expected) in cases {
            assert_eq!(SegmentHeader::decode(&block), Err(expected), "{name}");
        }
    }

    #[test]
    #[should_panic(expected = "segment header needs 4096 bytes")]
    fn segment_header_encode_panics_on_a_short_buffer() {
        header().encode(&mut [0; 4095]);
    }

    #[test]
    #[should_panic(expected = "not below shard count")]
    fn segment_header_encode_panics_on_an_invalid_shard() {
        let header = SegmentHeader {
            shard_id: ShardId(2),
            ..header()
        };
        header.encode(&mut [0; 4096]);
    }
}
