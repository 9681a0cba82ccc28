#!/usr/bin/env bash
# Runs N seeds of the power-loss simulator in release mode (default 10000, the release
# check); the last line is the summary: `simulated S seeds, C crashes, A acknowledged
# batches checked, violations V`. Extra arguments go to cairn-simulate (--first-seed, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
seeds="${1:-10000}"
shift || true
cargo run --release --locked --quiet --bin cairn-simulate -- --seeds "$seeds" "$@"
