//! Cairn's server: TCP, flatbuffers frames, routing between shards, and a Rust client.

pub mod wire;
