//! Question: what does the sans-I/O core pay per record to encode a batch and checksum it
//! (docs/DESIGN.md §5, "per-record CPU cost of the sans-I/O core")? Records have 16-byte keys and
//! 100-byte values, in batches of 1 and of 64 records. `encode` is `encode_batch` (limit
//! checks, encoding, CRC-32); `decode` is `decode_batch` plus iterating every record, what
//! recovery and fetch pay per record. Reports read records/s.
//!
//! A regression is a rise of more than ~10% in time per record, compared on one machine.

use std::hint::black_box;

use cairn_engine::core::record::{BatchMeta, batch_encoded_len, decode_batch, encode_batch};
use cairn_engine::core::{KeyCondition, Offset, PartitionId, RecordInput};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const KEY_SIZE_BYTES: usize = 16;
const VALUE_SIZE_BYTES: usize = 100;
const RECORDS_PER_BATCH: [usize; 2] = [1, 64];

fn record_codec(c: &mut Criterion) {
    let value = [0xA5_u8; VALUE_SIZE_BYTES];
    let keys: Vec<[u8; KEY_SIZE_BYTES]> = (0..RECORDS_PER_BATCH[1] as u128)
        .map(u128::to_le_bytes)
        .collect();
    let meta = BatchMeta {
        partition_id: PartitionId(3),
        base_offset: Offset(1_000_000),
        timestamp_ms: 1_790_000_000_000,
        prev_batch_crc: 0x1234_5678,
        producer: None,
    };

    for record_count in RECORDS_PER_BATCH {
        let records: Vec<RecordInput<'_>> = keys[..record_count]
            .iter()
            .map(|key| RecordInput {
                key,
                value: &value,
                headers: &[],
                condition: KeyCondition::Any,
                ..RecordInput::default()
            })
            .collect();
        // Half the keys were seen before, as under a steady workload.
        let prev_key_offsets: Vec<Option<Offset>> = (0..record_count)
            .map(|index| (index % 2 == 0).then_some(Offset(index as u64)))
            .collect();
        let len_bytes = batch_encoded_len(&records).expect("the bench batch is within limits");
        let mut out = vec![0; len_bytes];
        let id = BenchmarkId::new(
            format!("value_bytes={VALUE_SIZE_BYTES}"),
            format!("records_per_batch={record_count}"),
        );

        let mut group = c.benchmark_group("encode");
        group.throughput(Throughput::Elements(record_count as u64));
        group.bench_function(id.clone(), |b| {
            b.iter(|| {
                encode_batch(
                    black_box(&mut out),
                    black_box(&meta),
                    black_box(&records),
                    black_box(&prev_key_offsets),
                )
                .expect("the bench batch encodes")
            });
        });
        group.finish();

        let mut group = c.benchmark_group("decode");
        group.throughput(Throughput::Elements(record_count as u64));
        group.bench_function(id, |b| {
            b.iter(|| {
                let view = decode_batch(black_box(&out)).expect("the bench batch decodes");
                view.records()
                    .map(|record| record.value.len())
                    .sum::<usize>()
            });
        });
        group.finish();
    }
}

criterion_group!(benches, record_codec);
criterion_main!(benches);
