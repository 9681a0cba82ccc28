#!/usr/bin/env bash
# Append latency and throughput while retention rewrites segments, against the same load
# with retention off (issue #14; BENCHMARKS.md §16).
#
# Each round starts a fresh one-shard `cairn serve` (CPU 0) and loads it from CPU 1 with
# two load generators at once, blind appends of 256-byte values: `kept` keeps everything,
# `churn` keeps $RETAIN_BYTES per partition in the "on" rounds and everything in the "off"
# rounds. Both topics share the shard's segments, so in "on" rounds retention rewrites every
# segment it touches, copying `kept`'s batches forward while the load runs. Rounds alternate
# off, on, off, on, ... ($ROUNDS pairs). Each round's JSON summaries, the server's retention
# counters (from /metrics) and a table row go to $OUT; the table is printed at the end.
#
# Usage: scripts/bench-retention.sh
# Environment: ROUNDS (3), DURATION (40s), WARMUP (5s), CLIENTS (16 per loadgen),
#              RETAIN_BYTES (16777216), SEGMENT_BYTES (67108864), CHECKPOINT_BYTES
#              (16777216), COPY_BUDGET (67108864 B/s), DIR (data, default $TMPDIR),
#              OUT (/tmp/cairn-retention-<time>), SKIP_BUILD=1.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-40s}
WARMUP=${WARMUP:-5s}
CLIENTS=${CLIENTS:-16}
RETAIN_BYTES=${RETAIN_BYTES:-16777216}
SEGMENT_BYTES=${SEGMENT_BYTES:-67108864}
CHECKPOINT_BYTES=${CHECKPOINT_BYTES:-16777216}
COPY_BUDGET=${COPY_BUDGET:-67108864}
DIR=${DIR:-${TMPDIR:-/tmp}}
OUT=${OUT:-${TMPDIR:-/tmp}/cairn-retention-$(date +%Y%m%d-%H%M%S)}
BIN="${CARGO_TARGET_DIR:-target}/release"

command -v jq >/dev/null || { echo "bench-retention: needs jq" >&2; exit 1; }
command -v curl >/dev/null || { echo "bench-retention: needs curl" >&2; exit 1; }
if [[ -z "${SKIP_BUILD:-}" ]]; then
    cargo build --release --locked --bin cairn --bin cairn-loadgen
fi
mkdir -p "$OUT"
{
    echo "commit $(git rev-parse --short HEAD), $(date -u +%Y-%m-%dT%H:%MZ)"
    echo "$(nproc) CPUs ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)), $(uname -r)"
    echo "data on $(df --output=source "$DIR" | tail -1) ($(df --output=fstype "$DIR" | tail -1))"
    echo "rounds $ROUNDS x (off, on), $DURATION + $WARMUP warm-up, $CLIENTS clients per topic," \
        "segments $SEGMENT_BYTES B, checkpoints every $CHECKPOINT_BYTES B," \
        "churn keeps $RETAIN_BYTES B per partition, copy budget $COPY_BUDGET B/s"
} | tee "$OUT/machine.txt"

SERVER_PID=
SERVER_DIR=
stop_server() {
    if [[ -n "$SERVER_PID" ]]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        rm -rf "$SERVER_DIR"
        SERVER_PID=
    fi
}
trap stop_server EXIT

metric() { # metric NAME: the counter's value on the server's /metrics
    curl -s "http://127.0.0.1:9464/metrics" | awk -v name="$1" '$1 ~ "^"name"(_total)?({|$)" {sum += $2} END {print sum + 0}'
}

# round NAME MODE: one server, both topics loaded at once.
round() {
    local name=$1 mode=$2
    SERVER_DIR=$(mktemp -d "$DIR/cairn-retention.XXXXXX")
    taskset -c 0 "$BIN/cairn" serve --data-dir "$SERVER_DIR/data" --listen 127.0.0.1:0 --no-kafka \
        --cores 1 --segment-size "$SEGMENT_BYTES" --checkpoint-interval "$CHECKPOINT_BYTES" \
        --retention-check-interval-ms 1000 --retention-bytes-per-second "$COPY_BUDGET" \
        --metrics-listen 127.0.0.1:9464 --log-level warn >"$SERVER_DIR/out" 2>"$SERVER_DIR/err" &
    SERVER_PID=$!
    for _ in $(seq 300); do
        grep -q '^listening on ' "$SERVER_DIR/out" && break
        sleep 0.1
    done
    local addr
    addr=$(sed -n 's/^listening on \([^ ]*\) .*/\1/p' "$SERVER_DIR/out")
    [[ -n "$addr" ]] || { cat "$SERVER_DIR/err" >&2; exit 1; }
    local retention=()
    [[ $mode == on ]] && retention=(--retention-bytes "$RETAIN_BYTES")
    "$BIN/cairn" topic create kept --addr "$addr" --partitions 4 >/dev/null
    "$BIN/cairn" topic create churn --addr "$addr" --partitions 4 "${retention[@]}" >/dev/null
    echo "== $name ($mode)" >&2
    for topic in kept churn; do
        taskset -c 1 "$BIN/cairn-loadgen" --addr "$addr" --topic "$topic" --workload blind \
            --clients "$CLIENTS" --value-bytes 256 --loadgen-cores 1 --no-pin \
            --duration "$DURATION" --warmup "$WARMUP" --json "$OUT/$name-$topic.json" \
            --quiet >"$OUT/$name-$topic.txt" &
    done
    wait %2 %3 2>/dev/null || wait
    {
        echo "rewrites $(metric cairn_retention_rewrites)"
        echo "removed_segments $(metric cairn_retention_removed_segments)"
        echo "copied_bytes $(metric cairn_retention_copied_bytes)"
        echo "removed_bytes $(metric cairn_retention_removed_bytes)"
        echo "failures $(metric cairn_retention_failures)"
    } >"$OUT/$name-retention.txt"
    stop_server
}

for pair in $(seq "$ROUNDS"); do
    round "off-$pair" off
    round "on-$pair" on
done

{
    echo "| round | retention | appends/s (kept + churn) | p50 µs kept / churn | p99 µs kept / churn | rewrites | copied MB | removed MB |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|"
    for pair in $(seq "$ROUNDS"); do
        for mode in off on; do
            name="$mode-$pair"
            k="$OUT/$name-kept.json" c="$OUT/$name-churn.json"
            rate=$(jq -n --slurpfile k "$k" --slurpfile c "$c" '($k[0].successes_per_sec + $c[0].successes_per_sec) | floor')
            p50="$(jq '.append_latency_us.p50' "$k") / $(jq '.append_latency_us.p50' "$c")"
            p99="$(jq '.append_latency_us.p99' "$k") / $(jq '.append_latency_us.p99' "$c")"
            rewrites=$(awk '$1 == "rewrites" {print $2}' "$OUT/$name-retention.txt")
            copied=$(awk '$1 == "copied_bytes" {printf "%.0f", $2 / 1e6}' "$OUT/$name-retention.txt")
            removed=$(awk '$1 == "removed_bytes" {printf "%.0f", $2 / 1e6}' "$OUT/$name-retention.txt")
            echo "| $pair | $mode | $rate | $p50 | $p99 | $rewrites | $copied | $removed |"
        done
    done
} | tee "$OUT/tables.md"
