//! Arbitrary bytes as one batch (`decode_batch`) and as a segment's data (the recovery
//! scanner): each must give `Ok` or a typed error, never a panic, a hang or an allocation
//! that grows with absurd lengths, and what is accepted must re-encode to the same bytes.
//! See `cairn_engine::core::recovery::fuzz_bodies::record_scan` for the checks.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cairn_engine::core::recovery::fuzz_bodies::record_scan(data);
});
