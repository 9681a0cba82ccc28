#!/usr/bin/env bash
# The load generator's benchmark tables (issue #5), in one command, for BENCHMARKS.md:
#   1. uncontended conditional appends, clients 1/16/64/256;
#   2. hot keys: Zipf(0.99) over 1000 keys and one single hot key, clients 1/16/64/256,
#      reads synced and appended;
#      (1 and 2 in each --connections mode of $CONNECTIONS: shared, where the clients of
#      the executor multiplex one connection per shard, and per-client, where each client
#      has its own as a separate process would; the peers comparison is per-client;)
#   3. blind (unconditional) vs conditional appends at equal load: same clients closed
#      loop, and the same fixed rates open loop;
#   4. batches of 64 records of 100 bytes: records/s and MB/s (3 and 4 shared only).
# Every run writes its --json summary and its printed report into $OUT; the tables are
# printed as markdown at the end (and saved as $OUT/tables.md). Runs use the embedded
# server (one core for it, the other for the load) unless extra flags say otherwise.
#
# Usage: scripts/bench-loadgen.sh [extra cairn-loadgen flags, e.g. --addr HOST:PORT]
# Environment: DURATION (30s), WARMUP (5s), CLIENTS ("1 16 64 256"), RATES ("5000 20000"),
#              BATCH_CLIENTS ("1 16 64"), CONNECTIONS ("shared per-client"),
#              OUT (/tmp/cairn-bench-<time>), SKIP_BUILD=1.
# Takes about (runs = 52) x (DURATION + WARMUP + ~1 s): ~32 minutes with the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-30s}
WARMUP=${WARMUP:-5s}
CLIENTS=${CLIENTS:-"1 16 64 256"}
RATES=${RATES:-"5000 20000"}
BATCH_CLIENTS=${BATCH_CLIENTS:-"1 16 64"}
CONNECTIONS=${CONNECTIONS:-"shared per-client"}
OUT=${OUT:-${TMPDIR:-/tmp}/cairn-bench-$(date +%Y%m%d-%H%M%S)}
EXTRA=("$@")
BIN="${CARGO_TARGET_DIR:-target}/release/cairn-loadgen"

command -v jq >/dev/null || { echo "bench-loadgen: needs jq (apt-get install jq)" >&2; exit 1; }
if [[ -z "${SKIP_BUILD:-}" ]]; then
    cargo build --release --locked --bin cairn-loadgen
fi
mkdir -p "$OUT"

# run NAME FLAGS...: one cairn-loadgen run into $OUT/NAME.{json,txt}.
run() {
    local name=$1
    shift
    echo "== $name: $*" >&2
    "$BIN" --duration "$DURATION" --warmup "$WARMUP" --quiet \
        --json "$OUT/$name.json" "$@" "${EXTRA[@]}" | tee "$OUT/$name.txt" >&2
}

for connections in $CONNECTIONS; do
    for clients in $CLIENTS; do
        run "uncontended-$connections-c$clients" --workload uncontended --clients "$clients" \
            --connections "$connections"
    done
done
for connections in $CONNECTIONS; do
    for keys in 1000 1; do
        for read in synced appended; do
            for clients in $CLIENTS; do
                run "hot-$connections-k$keys-$read-c$clients" --workload hot --keys "$keys" \
                    --zipf 0.99 --read "$read" --clients "$clients" --connections "$connections"
            done
        done
    done
done
for workload in blind uncontended; do
    run "equal-$workload-closed-c64" --workload "$workload" --clients 64
    for rate in $RATES; do
        run "equal-$workload-rate$rate-c64" --workload "$workload" --clients 64 --rate "$rate"
    done
done
for workload in blind uncontended; do
    for clients in $BATCH_CLIENTS; do
        run "batch64-$workload-c$clients" --workload "$workload" --clients "$clients" \
            --batch 64 --value-bytes 100
    done
done

# row FILE JQ: one markdown row from a summary.
row() { jq -r "$2" "$OUT/$1.json"; }
latency='"\(.cycle_latency_us.p50) | \(.cycle_latency_us.p99) | \(.cycle_latency_us.p999)"'
append_latency='"\(.append_latency_us.p50) | \(.append_latency_us.p99) | \(.append_latency_us.p999)"'
{
    echo "commit $(git rev-parse --short HEAD), $(nproc) CPUs, duration $DURATION after warm-up $WARMUP"
    echo
    echo "### 1. Uncontended conditional appends (1 record of 100 B)"
    echo
    echo "| connections | clients | appends/s | p50 µs | p99 µs | p99.9 µs |"
    echo "|---|---:|---:|---:|---:|---:|"
    for clients in $CLIENTS; do
        for connections in $CONNECTIONS; do
            row "uncontended-$connections-c$clients" "\"| \(.connections) | \(.clients) | \(.successes_per_sec | floor) | \($latency) |\""
        done
    done
    echo
    echo "### 2. Hot keys: read, append at what was read, retry from the conflict (max 10)"
    echo
    echo "| keys | read | connections | clients | cycles/s | conflicts/success | abandoned | cycle p50 µs | p99 µs | p99.9 µs |"
    echo "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"
    for keys in 1000 1; do
        for read in synced appended; do
            for clients in $CLIENTS; do
                for connections in $CONNECTIONS; do
                    label=$([[ $keys == 1 ]] && echo "1 (single hot key)" || echo "$keys, Zipf 0.99")
                    row "hot-$connections-k$keys-$read-c$clients" "\"| $label | $read | \(.connections) | \(.clients) | \(.successes_per_sec | floor) | \(.conflicts_per_success * 1000 | round / 1000) | \(.abandoned) | \($latency) |\""
                done
            done
        done
    done
    echo
    echo "### 3. Blind vs conditional appends at equal load (64 clients)"
    echo
    echo "| load | workload | appends/s | cycle p50 µs | p99 µs | p99.9 µs | append p50 µs | p99 µs | p99.9 µs |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
    for load in closed $(for rate in $RATES; do echo "rate$rate"; done); do
        for workload in blind uncontended; do
            label=$([[ $load == closed ]] && echo "closed loop" || echo "${load#rate}/s open loop")
            row "equal-$workload-$load-c64" "\"| $label | \(.workload) | \(.successes_per_sec | floor) | \($latency) | \($append_latency) |\""
        done
    done
    echo
    echo "### 4. Batches of 64 records of 100 B"
    echo
    echo "| workload | clients | records/s | MB/s | append p50 µs | p99 µs | p99.9 µs |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    for workload in blind uncontended; do
        for clients in $BATCH_CLIENTS; do
            row "batch64-$workload-c$clients" "\"| \(.workload) | \(.clients) | \(.records_per_sec | floor) | \(.bytes_per_sec / 1e6 * 10 | round / 10) | \($append_latency) |\""
        done
    done
} | tee "$OUT/tables.md"
