//! What does the sans-I/O core's conditional check cost per record?
//!
//! `check_and_stage` (end-offset check, key conditions against a 1M-key partition, staging,
//! then the synced watermark catching up) for 100-byte values in batches of 1 and 64, and
//! the `KeyIndex` lookup and update underneath it at 1M and 10M 16-byte keys. Keys are
//! visited in an order unrelated to where the index stores them, so its cache misses
//! count as they would in production (1M keys are ~40 MB, beyond a 32 MiB L3).
//!
//! A regression is a median per-record time more than ~10% above the previous run on the
//! same machine (`BENCHMARKS.md` has the figures and commands).

use std::hint::black_box;

use cairn_engine::core::key_index::KeyIndex;
use cairn_engine::core::partition::PartitionState;
use cairn_engine::{KeyCondition, Offset, PartitionId, RecordInput};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const VALUE: [u8; 100] = [0x5a; 100];

/// A distinct 16-byte key per id, bytes spread like a UUID's.
fn key_16_bytes(id: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&id.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
    key[8..].copy_from_slice(&id.to_le_bytes());
    key
}

/// xorshift64: a key order with no locality, cheap next to a hash lookup.
struct KeyOrder {
    state: u64,
    key_count: u64,
}

impl KeyOrder {
    fn new(key_count: u64) -> Self {
        KeyOrder {
            state: 0x2545_f491_4f6c_dd1d,
            key_count,
        }
    }

    fn next_id(&mut self) -> u64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state % self.key_count
    }
}

#[derive(Clone, Copy)]
enum ConditionKind {
    /// `any` on every record.
    Any,
    /// `at(latest)` on every record: every batch is accepted.
    At,
    /// `at(latest)` on every record but the last, which is stale: every batch is rejected
    /// after all its records were checked.
    ConflictOnLast,
}

fn check_and_stage(c: &mut Criterion) {
    let mut group = c.benchmark_group("check_and_stage");
    // 10k keys stay in cache (the CPU cost alone); 1M keys (~40 MB) do not.
    for key_count in [10_000u64, 1_000_000] {
        check_and_stage_with_keys(&mut group, key_count);
    }
    group.finish();
}

fn check_and_stage_with_keys(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    key_count: u64,
) {
    // Odd and not a multiple of 5, so `i * STRIDE % key_count` visits every id once.
    const STRIDE: u64 = 2_654_435_761;
    let mut state = PartitionState::new(PartitionId(0));
    let mut prev_key_offsets = Vec::new();
    // Insert in a scattered id order, so the benchmark's sequential ids (which keep its own
    // `latest` bookkeeping out of the cache misses) land at scattered arena positions.
    let mut latest = vec![Offset(0); key_count as usize];
    for id_start in (0..key_count).step_by(1024) {
        let ids: Vec<u64> = (id_start..(id_start + 1024).min(key_count))
            .map(|step| step * STRIDE % key_count)
            .collect();
        let keys: Vec<[u8; 16]> = ids.iter().map(|&id| key_16_bytes(id)).collect();
        let records: Vec<RecordInput<'_>> = keys
            .iter()
            .map(|key| RecordInput {
                key,
                value: &VALUE,
                headers: &[],
                condition: KeyCondition::NoKey,
                ..RecordInput::default()
            })
            .collect();
        let base_offset = state
            .check_and_stage(None, &records, &mut prev_key_offsets)
            .expect("distinct new keys pass no_key");
        for (index, &id) in ids.iter().enumerate() {
            latest[id as usize] = base_offset.plus(index as u64);
        }
    }
    state.advance_written(state.appended_end());
    state.advance_synced(state.appended_end());

    // In the server the keys come from a hot request buffer: visiting ids in order keeps
    // these (and `latest`) sequential, so only the index's own accesses miss the cache.
    let keys: Vec<[u8; 16]> = (0..key_count).map(key_16_bytes).collect();
    let mut next_id = 0usize;
    let mut records: Vec<RecordInput<'_>> = Vec::with_capacity(64);
    for batch_record_count in [1usize, 64] {
        group.throughput(Throughput::Elements(batch_record_count as u64));
        for (name, kind) in [
            ("any", ConditionKind::Any),
            ("at", ConditionKind::At),
            ("conflict_on_last", ConditionKind::ConflictOnLast),
        ] {
            let id = BenchmarkId::new(
                format!("condition={name}"),
                format!("keys={key_count},batch_records={batch_record_count}"),
            );
            group.bench_function(id, |bencher| {
                bencher.iter(|| {
                    let base_offset = state.appended_end();
                    records.clear();
                    for index in 0..batch_record_count {
                        let key_id = next_id;
                        next_id = (next_id + 1) % keys.len();
                        let is_last = index + 1 == batch_record_count;
                        let condition = match kind {
                            ConditionKind::Any => KeyCondition::Any,
                            ConditionKind::At => KeyCondition::At(latest[key_id]),
                            ConditionKind::ConflictOnLast if is_last => {
                                KeyCondition::At(Offset(latest[key_id].0.wrapping_sub(1)))
                            }
                            ConditionKind::ConflictOnLast => KeyCondition::At(latest[key_id]),
                        };
                        if !matches!(kind, ConditionKind::ConflictOnLast) {
                            latest[key_id] = base_offset.plus(index as u64);
                        }
                        records.push(RecordInput {
                            key: &keys[key_id],
                            value: &VALUE,
                            headers: &[],
                            condition,
                            ..RecordInput::default()
                        });
                    }
                    let result = state.check_and_stage(None, &records, &mut prev_key_offsets);
                    let appended_end = state.appended_end();
                    state.advance_written(appended_end);
                    state.advance_synced(appended_end);
                    black_box(result)
                });
            });
        }
    }
}

fn key_index(c: &mut Criterion) {
    let mut group = c.benchmark_group("key_index");
    group.throughput(Throughput::Elements(1));
    for key_count in [1_000_000u64, 10_000_000] {
        // Built once, outside the timed loops: 10M keys take a few seconds.
        let mut index = KeyIndex::with_capacity(0);
        for id in 0..key_count {
            index.insert(&key_16_bytes(id), Offset(id));
        }
        let mut order = KeyOrder::new(key_count);
        group.bench_function(
            BenchmarkId::new("get", format!("keys={key_count}")),
            |bencher| {
                bencher.iter(|| index.get(black_box(&key_16_bytes(order.next_id()))));
            },
        );
        let mut order = KeyOrder::new(key_count);
        group.bench_function(
            BenchmarkId::new("get_missing", format!("keys={key_count}")),
            |bencher| {
                bencher.iter(|| index.get(black_box(&key_16_bytes(key_count + order.next_id()))));
            },
        );
        let mut order = KeyOrder::new(key_count);
        let mut next_offset = key_count;
        group.bench_function(
            BenchmarkId::new("insert_existing", format!("keys={key_count}")),
            |bencher| {
                bencher.iter(|| {
                    next_offset += 1;
                    index.insert(
                        black_box(&key_16_bytes(order.next_id())),
                        Offset(next_offset),
                    )
                });
            },
        );
    }
    group.finish();
}

criterion_group!(benches, check_and_stage, key_index);
criterion_main!(benches);
