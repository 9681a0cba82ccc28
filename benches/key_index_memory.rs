//! How many bytes does the key index hold per 16-byte key (docs/DESIGN.md §5 target: at most 48)?
//!
//! Not a criterion bench: it builds indexes of 1M and 10M distinct keys, and of the key
//! counts just past a table growth (the emptiest table, so the worst bytes per key), and
//! prints a table. Beside `KeyIndex::memory_bytes` it prints what the allocator actually
//! handed out while building, so the reported figure is checked against the truth.
//! A regression is any row above 48 bytes per key, or the two columns disagreeing.
//!
//! Run: `cargo bench --bench key_index_memory`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use cairn_engine::Offset;
use cairn_engine::core::key_index::KeyIndex;

/// The system allocator, counting the bytes currently allocated.
struct CountingAllocator;

static ALLOCATED_BYTES: AtomicUsize = AtomicUsize::new(0);

#[expect(
    unsafe_code,
    reason = "a GlobalAlloc is an unsafe trait; this one only counts and delegates"
)]
// SAFETY: every method delegates to `System` with the caller's arguments unchanged.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which `System` needs.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        ALLOCATED_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` above with this `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn key_16_bytes(id: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&id.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
    key[8..].copy_from_slice(&id.to_le_bytes());
    key
}

fn main() {
    // 917_505 and 7_340_033 are one past the capacity of 2^20 and 2^23 buckets (7/8 full):
    // the table has just doubled, the emptiest it gets.
    let key_counts: [u64; 4] = [917_505, 1_000_000, 7_340_033, 10_000_000];
    println!(
        "{:>10}  {:>14}  {:>14}  {:>13}  {:>13}  {:>8}",
        "keys", "memory_bytes", "allocated_bytes", "bytes_per_key", "alloc_per_key", "build_ms"
    );
    for key_count in key_counts {
        let allocated_before = ALLOCATED_BYTES.load(Ordering::Relaxed);
        let build_start = Instant::now();
        let mut index = KeyIndex::new();
        for id in 0..key_count {
            index.insert(&key_16_bytes(id), Offset(id));
        }
        let build_ms = build_start.elapsed().as_millis();
        let allocated_bytes = ALLOCATED_BYTES.load(Ordering::Relaxed) - allocated_before;
        assert_eq!(index.len() as u64, key_count);
        let memory_bytes = index.memory_bytes();
        println!(
            "{key_count:>10}  {memory_bytes:>14}  {allocated_bytes:>14}  {:>13.2}  {:>13.2}  {build_ms:>8}",
            memory_bytes as f64 / key_count as f64,
            allocated_bytes as f64 / key_count as f64,
        );
    }
}
