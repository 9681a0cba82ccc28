#!/usr/bin/env bash
# Every test, on a fresh machine: installs the clients the tests drive
# (scripts/install-test-clients.sh), runs the whole workspace's tests, then the Python
# client's: mypy --strict over the package and its pytest suite against target/debug/cairn.
# Extra arguments go to cargo nextest (e.g. `-E 'test(/kafka/)'`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-clients.sh
cargo nextest run --workspace --locked "$@"
# nextest builds the binary for the integration tests; build it anyway when a filter
# skipped them.
cargo build --locked --bin cairn
(cd clients/python && python3 -m mypy --strict -p cairn)
(cd clients/python && CAIRN_BIN="$(pwd)/../../target/debug/cairn" python3 -m pytest -q)
