#!/usr/bin/env bash
# Hot keys under each contention policy (issue #16), for BENCHMARKS.md §13: one hot key
# at each client count of $CLIENTS, and Zipf 0.99 over 1,000 keys at 64 clients, every
# run with --read appended, policies alternated within each round so that a busy moment
# of the shared machine hits them alike; $ROUNDS rounds, the table gives the median.
# Embedded server (one shard, CPU 0), load generator on CPU 1, shared connections.
#
# Usage: scripts/bench-hot.sh [extra cairn-loadgen flags]
# Environment: DURATION (5s), WARMUP (1s), CLIENTS ("1 4 16 64 256"), ROUNDS (3),
#              POLICIES ("none backoff queue"), OUT (/tmp/cairn-hot-<time>), SKIP_BUILD=1.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-1s}
CLIENTS=${CLIENTS:-"1 4 16 64 256"}
ROUNDS=${ROUNDS:-3}
POLICIES=${POLICIES:-"none backoff queue"}
OUT=${OUT:-${TMPDIR:-/tmp}/cairn-hot-$(date +%Y%m%d-%H%M%S)}
EXTRA=("$@")
BIN="${CARGO_TARGET_DIR:-target}/release/cairn-loadgen"

command -v jq >/dev/null || { echo "bench-hot: needs jq (apt-get install jq)" >&2; exit 1; }
if [[ -z "${SKIP_BUILD:-}" ]]; then
    cargo build --release --locked --bin cairn-loadgen
fi
mkdir -p "$OUT"

run() {
    local name=$1
    shift
    "$BIN" --duration "$DURATION" --warmup "$WARMUP" --quiet --read appended \
        --json "$OUT/$name.json" "$@" "${EXTRA[@]}" >"$OUT/$name.txt"
}

for round in $(seq 1 "$ROUNDS"); do
    for clients in $CLIENTS; do
        for policy in $POLICIES; do
            echo "== round $round: one key, $clients clients, $policy" >&2
            run "k1-c$clients-$policy-r$round" --workload hot --keys 1 --clients "$clients" \
                --contention "$policy"
        done
    done
    for policy in $POLICIES; do
        echo "== round $round: zipf 0.99 over 1000 keys, 64 clients, $policy" >&2
        run "k1000-c64-$policy-r$round" --workload hot --keys 1000 --zipf 0.99 --clients 64 \
            --contention "$policy"
    done
done

# median NAME FIELD: the median over rounds of a JSON field of run NAME-r*.
median() {
    jq -s "map($2) | sort | .[length / 2 | floor]" "$OUT"/"$1"-r*.json
}
rounds() {
    jq -r -s "map($2 | if type == \"number\" then (. * 100 | round / 100) else . end) | map(tostring) | join(\" / \")" "$OUT"/"$1"-r*.json
}
{
    echo "| keys | clients | contention | successes/s (rounds) | median | conflicts/success (median) | abandoned (median) | cycle p50 µs | p99 µs |"
    echo "|---|---:|---|---|---:|---:|---:|---:|---:|"
    for row in $(for c in $CLIENTS; do echo "k1-c$c"; done) k1000-c64; do
        for policy in $POLICIES; do
            name="$row-$policy"
            keys=${row%%-*}; keys=${keys#k}; clients=${row##*-c}
            echo "| $keys | $clients | $policy | $(rounds "$name" .successes_per_sec) | $(median "$name" '.successes_per_sec | round') | $(median "$name" '.conflicts_per_success * 100 | round / 100') | $(median "$name" .abandoned) | $(median "$name" .cycle_latency_us.p50) | $(median "$name" .cycle_latency_us.p99) |"
        done
    done
} | tee "$OUT/table.md"
