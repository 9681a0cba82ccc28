//! Cairn's server: TCP, flatbuffers frames, routing between shards, and a Rust client.

pub mod client;
pub mod wire;
