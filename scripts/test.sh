#!/usr/bin/env bash
# Every test, on a fresh machine: installs the Kafka clients the tests drive
# (scripts/install-test-clients.sh), then runs the whole workspace's tests. Extra
# arguments go to cargo nextest (e.g. `-E 'test(/kafka/)'`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-clients.sh
exec cargo nextest run --workspace --locked "$@"
