//! Arbitrary bytes as a request frame: decoding returns Ok or Err, never panics, never
//! allocates beyond a small multiple of the input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    cairn_wire::fuzz::fuzz_decode_request(bytes);
});
