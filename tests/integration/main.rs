//! Cairn's integration tests: one binary (each `tests/*.rs` would link separately, and CI
//! has 2 cores), a module per concern, all against real parts — real files in temp
//! directories, the real engine, the real server process over TCP on 127.0.0.1.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions: a failed unwrap is a failed test"
)]

mod engine_admission;
mod engine_checkpoints;
mod engine_damage;
mod engine_data_dir;
mod engine_durability;
mod engine_kafka;
mod engine_retention;
mod group_offsets;
mod kafka_clients;
mod kafka_group_clients;
mod kafka_groups;
mod kafka_protocol;
mod kafka_retention;
mod loadgen;
mod ops_check;
mod ops_config;
mod protocol_errors;
mod reliability_crash;
mod reliability_disk_full;
mod reliability_fuzz;
mod reliability_io_faults;
mod reliability_kafka_fuzz;
mod reliability_retention;
mod reliability_soak;
mod segment_index;
mod server_backup;
mod server_e2e;
mod server_idempotent;
mod server_lifecycle;
mod server_metrics;
mod support;
mod tidy;
mod topic_retention;
mod wire_contract;
