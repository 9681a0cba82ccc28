#!/usr/bin/env bash
# The floor under one durable append on this machine, and Cairn's single-client figures as
# multiples of it, in one run (issue #16):
#   (a) the disk: O_DIRECT 4 KiB write + fdatasync on a preallocated, already written file
#       in DIR's filesystem (examples/floor.rs);
#   (b) loopback TCP round trips of 64 B, both ends on CPU 0, and across CPUs 1 -> 0;
#   (c) Cairn: a release `cairn serve` (one shard, pinned to CPU 0) on a fresh data
#       directory under DIR, driven by cairn-loadgen with one client, one request in flight:
#       durable appends of one 256 B record (blind), and read + conditional append cycles
#       (hot over 1000 keys, reads of synced records); the load generator on CPU 1 (across)
#       and on CPU 0 (beside the shard);
#   (d) each Cairn figure over its floor: an append is disk + one round trip, a cycle is
#       disk + two round trips (its read and its append), of the same placement.
# The tables are printed as markdown and saved, with every raw result, in $OUT.
#
# Usage: scripts/floor.sh [DIR]   (default: a temp directory in ., the filesystem of
#                                  ./cairn-data; it must not be tmpfs: O_DIRECT)
# Environment: DURATION (10s per Cairn run), WARMUP (2s), DISK_COUNT (2000),
#              LOOPBACK_COUNT (20000), OUT (/tmp/cairn-floor-<time>), SKIP_BUILD=1,
#              SERVER_WARMUP (20s; 0s for none): a blind batch load before the measured
#              runs, so that they meet the log's full-size segments, not a new log's
#              growing ones being prepared (docs/DESIGN.md §2).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
SERVER_WARMUP=${SERVER_WARMUP:-20s}
DISK_COUNT=${DISK_COUNT:-2000}
LOOPBACK_COUNT=${LOOPBACK_COUNT:-20000}
OUT=${OUT:-${TMPDIR:-/tmp}/cairn-floor-$(date +%Y%m%d-%H%M%S)}
TARGET="${CARGO_TARGET_DIR:-target}/release"

command -v jq >/dev/null || { echo "floor: needs jq (apt-get install jq)" >&2; exit 1; }
command -v taskset >/dev/null || { echo "floor: needs taskset (util-linux)" >&2; exit 1; }
if (( $(nproc) < 2 )); then
    echo "floor: needs 2 CPUs (one for the server, one for the load)" >&2
    exit 1
fi
if [[ -z "${SKIP_BUILD:-}" ]]; then
    cargo build --release --locked --bin cairn --bin cairn-loadgen --example floor
fi
mkdir -p "$OUT"

if [[ $# -ge 1 ]]; then
    mkdir -p "$1"
    WORK=$(mktemp -d "$1/cairn-floor.XXXXXX")
else
    WORK=$(mktemp -d ./cairn-floor.XXXXXX)
fi
SERVER_PID=
cleanup() {
    if [[ -n "$SERVER_PID" ]]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

echo "== floor: disk in $WORK ($(df --output=fstype "$WORK" | tail -1)), loopback" >&2
"$TARGET/examples/floor" disk "$WORK" "$DISK_COUNT" | tee "$OUT/disk.json" >&2
"$TARGET/examples/floor" loopback 0 0 "$LOOPBACK_COUNT" | tee "$OUT/loopback-same.json" >&2
"$TARGET/examples/floor" loopback 1 0 "$LOOPBACK_COUNT" | tee "$OUT/loopback-across.json" >&2

echo "== cairn serve on $WORK/data, shard on CPU 0" >&2
"$TARGET/cairn" serve --data-dir "$WORK/data" --listen 127.0.0.1:0 --no-kafka --cores 1 \
    --log-level warn >"$OUT/serve.out" 2>"$OUT/serve.err" &
SERVER_PID=$!
for _ in $(seq 300); do
    grep -q '^listening on ' "$OUT/serve.out" && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$OUT/serve.err" >&2; exit 1; }
    sleep 0.1
done
ADDR=$(sed -n 's/^listening on \([^ ]*\) .*/\1/p' "$OUT/serve.out")
[[ -n "$ADDR" ]] || { echo "floor: the server did not say where it listens" >&2; exit 1; }

if [[ $SERVER_WARMUP != 0s && $SERVER_WARMUP != 0 ]]; then
    echo "== warming the log up for $SERVER_WARMUP" >&2
    taskset -c 1 "$TARGET/cairn-loadgen" --addr "$ADDR" --topic warm --partitions 1 \
        --workload blind --clients 16 --batch 64 --value-bytes 256 \
        --duration "$SERVER_WARMUP" --warmup 0s --quiet >"$OUT/warm.txt"
fi

# cairn NAME CPU FLAGS...: one cairn-loadgen run on CPU into $OUT/NAME.{json,txt}.
cairn() {
    local name=$1 cpu=$2
    shift 2
    echo "== $name (load on CPU $cpu): $*" >&2
    taskset -c "$cpu" "$TARGET/cairn-loadgen" --addr "$ADDR" --clients 1 --value-bytes 256 \
        --partitions 1 --duration "$DURATION" --warmup "$WARMUP" --quiet \
        --json "$OUT/$name.json" "$@" | tee "$OUT/$name.txt" >&2
}
for placement in across same; do
    cpu=$([[ $placement == across ]] && echo 1 || echo 0)
    cairn "append-$placement" "$cpu" --workload blind --topic "append-$placement"
    cairn "cycle-$placement" "$cpu" --workload hot --keys 1000 --read synced \
        --topic "cycle-$placement"
done

# field FILE JQ: one value from a result.
field() { jq -r "$2" "$OUT/$1.json"; }
# ratio A B: A / B to two decimals.
ratio() { jq -rn "($1) / ($2) * 100 | round / 100"; }
disk50=$(field disk .p50_us)
disk99=$(field disk .p99_us)
{
    echo "commit $(git rev-parse --short HEAD), $(nproc) CPUs ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)), $(uname -r), $(date -u +%Y-%m-%dT%H:%MZ)"
    echo "disk: $WORK on $(df --output=source "$WORK" | tail -1) ($(df --output=fstype "$WORK" | tail -1)); Cairn runs: $DURATION after $WARMUP warm-up, the server warmed up for $SERVER_WARMUP first"
    echo
    echo "| floor | count | p50 µs | p99 µs |"
    echo "|---|---:|---:|---:|"
    echo "| 4 KiB O_DIRECT write + fdatasync | $(field disk .count) | $disk50 | $disk99 |"
    echo "| loopback round trip, 64 B, one CPU (0 ↔ 0) | $(field loopback-same .count) | $(field loopback-same .p50_us) | $(field loopback-same .p99_us) |"
    echo "| loopback round trip, 64 B, across CPUs (1 ↔ 0) | $(field loopback-across .count) | $(field loopback-across .p50_us) | $(field loopback-across .p99_us) |"
    echo
    echo "| Cairn, one client, one in flight, 256 B | load on | Cairn p50 µs | floor p50 µs | ratio | Cairn p99 µs | floor p99 µs | ratio | rate /s | floor rate /s |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for placement in across same; do
        label=$([[ $placement == across ]] && echo "CPU 1 (across)" || echo "CPU 0 (beside the shard)")
        rtt50=$(field "loopback-$placement" .p50_us)
        rtt99=$(field "loopback-$placement" .p99_us)
        a50=$(field "append-$placement" .append_latency_us.p50)
        a99=$(field "append-$placement" .append_latency_us.p99)
        f50=$(jq -rn "$disk50 + $rtt50 | . * 100 | round / 100")
        f99=$(jq -rn "$disk99 + $rtt99 | . * 100 | round / 100")
        arate=$(field "append-$placement" '.successes_per_sec | floor')
        echo "| durable append (disk + 1 round trip) | $label | $a50 | $f50 | $(ratio "$a50" "$f50") | $a99 | $f99 | $(ratio "$a99" "$f99") | $arate | $(jq -rn "1e6 / $f50 | floor") |"
        c50=$(field "cycle-$placement" .cycle_latency_us.p50)
        c99=$(field "cycle-$placement" .cycle_latency_us.p99)
        g50=$(jq -rn "$disk50 + 2 * $rtt50 | . * 100 | round / 100")
        g99=$(jq -rn "$disk99 + 2 * $rtt99 | . * 100 | round / 100")
        crate=$(field "cycle-$placement" '.successes_per_sec | floor')
        echo "| read + conditional append cycle (disk + 2 round trips) | $label | $c50 | $g50 | $(ratio "$c50" "$g50") | $c99 | $g99 | $(ratio "$c99" "$g99") | $crate | $(jq -rn "1e6 / $g50 | floor") |"
    done
    echo
    echo "Floor p99s are sums of p99s: a loose bound, not a measurement of the two together."
} | tee "$OUT/floor.md"
