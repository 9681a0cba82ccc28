//! Question: how many bytes per second does the recovery scanner get through (docs/DESIGN.md §5,
//! restart time)? The input is a 64 MiB segment of a synthetic core log laid out as the
//! shell writes it: groups of 16 batches at block boundaries, zero-padded, 8 partitions
//! interleaved, checksums chained, 16-byte keys and 100-byte values, in batches of 1 and of
//! 64 records. The whole segment is one chunk, so this is the CPU cost alone (validation,
//! CRC-32, the chain and offset checks); a restart also pays the disk's read time.
//!
//! A regression is a drop of more than ~10% in MiB/s, compared on one machine.

use std::hint::black_box;

use cairn_engine::core::limits::BLOCK_SIZE_BYTES;
use cairn_engine::core::record::{BatchMeta, batch_encoded_len, encode_batch};
use cairn_engine::core::recovery::{RecoveryScanner, ScanProgress};
use cairn_engine::core::segment_header::SEGMENT_HEADER_SIZE_BYTES;
use cairn_engine::core::{KeyCondition, Offset, PartitionId, RecordInput};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const SEGMENT_DATA_SIZE_BYTES: usize = 64 * 1024 * 1024;
const KEY_SIZE_BYTES: usize = 16;
const VALUE_SIZE_BYTES: usize = 100;
const BATCHES_PER_GROUP: usize = 16;
const PARTITION_COUNT: u32 = 8;
const RECORDS_PER_BATCH: [usize; 2] = [1, 64];

/// A segment (header block left zero: the scanner never reads it) filled with groups until
/// the next one does not fit. Returns the segment and the bytes of log data in it.
fn synthetic_segment(record_count: usize) -> (Vec<u8>, usize) {
    let mut segment = vec![0; SEGMENT_HEADER_SIZE_BYTES + SEGMENT_DATA_SIZE_BYTES];
    let value = [0x5A_u8; VALUE_SIZE_BYTES];
    let mut next_offsets = [0_u64; PARTITION_COUNT as usize];
    let mut chain_crc = 0;
    let mut write_position = SEGMENT_HEADER_SIZE_BYTES;
    let mut batch_index = 0_u64;
    let mut group = Vec::new();
    loop {
        group.clear();
        for _ in 0..BATCHES_PER_GROUP {
            let partition = (batch_index % u64::from(PARTITION_COUNT)) as u32;
            let base_offset = next_offsets[partition as usize];
            let keys: Vec<[u8; KEY_SIZE_BYTES]> = (0..record_count as u64)
                .map(|index| u128::from(base_offset + index).to_le_bytes())
                .collect();
            let records: Vec<RecordInput<'_>> = keys
                .iter()
                .map(|key| RecordInput {
                    key,
                    value: &value,
                    headers: &[],
                    condition: KeyCondition::Any,
                    ..RecordInput::default()
                })
                .collect();
            let meta = BatchMeta {
                partition_id: PartitionId(partition),
                base_offset: Offset(base_offset),
                timestamp_ms: 1_790_000_000_000 + batch_index,
                prev_batch_crc: chain_crc,
                producer: None,
            };
            let start = group.len();
            group.resize(
                start + batch_encoded_len(&records).expect("within limits"),
                0,
            );
            let encoded = encode_batch(
                &mut group[start..],
                &meta,
                &records,
                &vec![None; record_count],
            )
            .expect("the bench batch encodes");
            chain_crc = encoded.crc;
            next_offsets[partition as usize] += record_count as u64;
            batch_index += 1;
        }
        let padded_len_bytes = group.len().div_ceil(BLOCK_SIZE_BYTES) * BLOCK_SIZE_BYTES;
        if write_position + padded_len_bytes > segment.len() {
            return (segment, write_position - SEGMENT_HEADER_SIZE_BYTES);
        }
        segment[write_position..write_position + group.len()].copy_from_slice(&group);
        write_position += padded_len_bytes;
    }
}

fn recovery_scan(c: &mut Criterion) {
    let mut group = c.benchmark_group("scan");
    group.sample_size(10);
    for record_count in RECORDS_PER_BATCH {
        let (segment, data_len_bytes) = synthetic_segment(record_count);
        let data = &segment[SEGMENT_HEADER_SIZE_BYTES..];
        group.throughput(Throughput::Bytes(data_len_bytes as u64));
        let id = BenchmarkId::new(
            format!("value_bytes={VALUE_SIZE_BYTES}"),
            format!("records_per_batch={record_count}"),
        );
        group.bench_function(id, |b| {
            b.iter(|| {
                let mut scanner = RecoveryScanner::new();
                scanner.begin_segment(segment.len() as u64);
                let mut accepted_record_count = 0_u64;
                let progress = scanner.scan(
                    black_box(data),
                    SEGMENT_HEADER_SIZE_BYTES as u64,
                    &mut |_, view| accepted_record_count += u64::from(view.record_count()),
                );
                assert!(matches!(progress, ScanProgress::SegmentEnd { .. }));
                accepted_record_count
            });
        });
    }
    group.finish();
}

criterion_group!(benches, recovery_scan);
criterion_main!(benches);
