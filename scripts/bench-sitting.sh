#!/usr/bin/env bash
# Every table of issue #16's targets, and the peers beside them, in one sitting
# (BENCHMARKS.md §14). $ROUNDS rounds; each round runs every row once, Cairn's block and
# the peers' block in alternating order, and the rows that compare (connection modes,
# contention policies, the peers) alternate their order from round to round, so that a
# busy moment of the shared machine does not always land on the same side. The tables give
# the median of the rounds, with every round's figure beside it.
#
# Cairn's rows (256-byte values unless said; one shard on CPU 0 and the load's executor on
# CPU 1, unless "2-core server"). With SERVERS=warm (the default) each block's rows run
# against one `cairn serve` of the block, warmed up first with SERVER_WARMUP of blind
# batches so that its log has reached full-size segments (a new log's segments grow from
# 8 MiB, each prepared while the log is written: docs/DESIGN.md §2); SERVERS=fresh gives
# every run cairn-loadgen's embedded server on a new data directory instead, as the
# older sections measured:
#   floor          scripts/floor.sh: the disk's durable 4 KiB write, loopback round trips,
#                  `cairn serve` under one client: durable append p50, read + conditional
#                  append cycle (load on CPU 1, across; and CPU 0, beside the shard);
#   uncontended    64 and 256 clients, conditional appends to own keys, shared and
#                  per-client connections; blind the same, for the peers' blind rows;
#   hot            one key, 64 clients, --read appended, --contention none/backoff/queue
#                  (shared), and none with per-client connections (as the peers' clients);
#   zipf           Zipf 0.99 over 1,000 keys, 64 clients, --read appended, the same policies;
#   batch100       a 2-core server (two shards, two load executors, unpinned from each
#                  other: both on the same 2 CPUs), 64 clients, blind batches of 100 × 256 B;
#   record16k      the same server, 8 clients, blind batches of 63 records of 16 KiB;
#   kafka          scripts/bench-kafka.py --rounds 1 (its own native/Kafka alternation);
# and the peers: scripts/bench-peers.sh (Redis, PostgreSQL) for one round each time.
#
# Raw outputs (every run's --json summary and printed report, the floor's and the peers'
# results, `uptime` before each block) go to $RES; the tables to $RES/tables.md.
#
# Usage: scripts/bench-sitting.sh            (builds release once unless SKIP_BUILD=1)
# Environment: RES (results, /tmp/cairn-sitting-<time>), DIR (data directories, on the
#   filesystem under test; default ./cairn-sitting-data, removed at the end), ROUNDS (3),
#   DURATION (8s per loadgen run), WARMUP (2s), FLOOR_DURATION (10s per floor.sh Cairn
#   run, after its 2 s warm-up), PEER_SECONDS (8), KAFKA_RECORDS (400000),
#   BLOCKS ("floor uncontended hot batch kafka peers": which blocks to run), SERVERS (warm
#   or fresh), SERVER_WARMUP (10s of load before a warm server's rows; floor.sh and
#   bench-kafka.py warm theirs alike).
# Takes about 8 minutes per round with the defaults (24 for the 3 rounds).
set -euo pipefail
cd "$(dirname "$0")/.."

RES=${RES:-${TMPDIR:-/tmp}/cairn-sitting-$(date +%Y%m%d-%H%M%S)}
DIR=${DIR:-./cairn-sitting-data}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8s}
WARMUP=${WARMUP:-2s}
PEER_SECONDS=${PEER_SECONDS:-8}
FLOOR_DURATION=${FLOOR_DURATION:-10s}
KAFKA_RECORDS=${KAFKA_RECORDS:-400000}
BLOCKS=${BLOCKS:-"floor uncontended hot batch kafka peers"}
SERVERS=${SERVERS:-warm}
SERVER_WARMUP=${SERVER_WARMUP:-10s}
BIN="${CARGO_TARGET_DIR:-target}/release"
command -v jq >/dev/null || { echo "bench-sitting: needs jq" >&2; exit 1; }
if [[ -z "${SKIP_BUILD:-}" ]]; then
    cargo build --release --locked --bin cairn --bin cairn-loadgen --example floor
fi
mkdir -p "$RES" "$DIR"
RES=$(cd "$RES" && pwd)
DIR=$(cd "$DIR" && pwd)
started=$(date -u +%Y-%m-%dT%H:%MZ)
{
    echo "commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!BENCHMARKS.md' || echo ' (dirty)'), started $started"
    echo "$(nproc) CPUs ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)), $(uname -r), $(free -g | awk '/^Mem:/ {print $2}') GiB"
    echo "data: $DIR on $(df --output=source "$DIR" | tail -1) ($(df --output=fstype "$DIR" | tail -1)); servers: $SERVERS (warm-up $SERVER_WARMUP)"
} | tee "$RES/machine.txt"

has() { [[ " $BLOCKS " == *" $1 "* ]]; }
note_load() { echo "$(date -u +%H:%M:%S) $1: $(uptime | sed 's/.*load average: //')" >>"$RES/uptime.log"; }

ADDR=
SERVER_PID=
SERVER_CORES=1
SERVER_DIR=
# start_server CORES [WARMUP]: a `cairn serve` of CORES shards (one: pinned to CPU 0, its
# default) on a new data directory, warmed up for WARMUP ($SERVER_WARMUP); the block's runs
# then go to it (warm mode only).
start_server() {
    [[ $SERVERS == warm ]] || return 0
    SERVER_CORES=$1
    local warmup=${2:-$SERVER_WARMUP}
    SERVER_DIR=$(mktemp -d "$DIR/cairn-serve.XXXXXX")
    "$BIN/cairn" serve --data-dir "$SERVER_DIR/data" --listen 127.0.0.1:0 --no-kafka \
        --cores "$SERVER_CORES" --log-level warn >"$SERVER_DIR/out" 2>"$SERVER_DIR/err" &
    SERVER_PID=$!
    for _ in $(seq 300); do
        grep -q '^listening on ' "$SERVER_DIR/out" && break
        sleep 0.1
    done
    ADDR=$(sed -n 's/^listening on \([^ ]*\) .*/\1/p' "$SERVER_DIR/out")
    [[ -n "$ADDR" ]] || { cat "$SERVER_DIR/err" >&2; exit 1; }
    load "$BIN/cairn-loadgen" --addr "$ADDR" --topic warm --workload blind --clients 16 \
        --batch 64 --value-bytes 256 --loadgen-cores "$SERVER_CORES" \
        --duration "$warmup" --warmup 0s --quiet >/dev/null
}
stop_server() {
    if [[ -n "$SERVER_PID" ]]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        rm -rf "$SERVER_DIR"
    fi
    SERVER_PID= ADDR=
}
trap stop_server EXIT
# load COMMAND...: on CPU 1 beside a one-shard server on CPU 0; anywhere beside two shards.
load() {
    if [[ $SERVER_CORES == 1 ]]; then taskset -c 1 "$@"; else "$@"; fi
}

# run NAME FLAGS...: one cairn-loadgen run into $RES/NAME.{json,txt}, on the block's warm
# server (topic NAME), or on an embedded server with data under $DIR; 256-byte values
# unless FLAGS say otherwise.
run() {
    local name=$1
    shift
    local value=(--value-bytes 256) flags=() target=()
    [[ " $* " == *" --value-bytes "* ]] && value=()
    while [[ $# -gt 0 ]]; do
        # The block's server has its own shards.
        if [[ $1 == --server-cores && -n "$ADDR" ]]; then shift 2; continue; fi
        flags+=("$1")
        shift
    done
    [[ -n "$ADDR" ]] && target=(--addr "$ADDR" --topic "$name")
    echo "== $name: ${flags[*]}" >&2
    if [[ -n "$ADDR" ]]; then
        load "$BIN/cairn-loadgen" "${target[@]}" --duration "$DURATION" --warmup "$WARMUP" \
            --quiet "${value[@]}" --json "$RES/$name.json" "${flags[@]}" >"$RES/$name.txt"
    else
        TMPDIR=$DIR "$BIN/cairn-loadgen" --duration "$DURATION" --warmup "$WARMUP" --quiet \
            "${value[@]}" --json "$RES/$name.json" "${flags[@]}" >"$RES/$name.txt"
    fi
}
# in_turn ROUND WORDS...: WORDS rotated by ROUND, so that each goes first in turn.
in_turn() {
    local round=$1
    shift
    local words=("$@") count=$# index
    for index in $(seq 0 $((count - 1))); do
        echo "${words[$(( (index + round) % count ))]}"
    done
}

cairn_round() {
    local r=$1 mode clients policy
    if has floor; then
        note_load "round $r floor"
        local floor_warm=0s
        [[ $SERVERS == warm ]] && floor_warm=$SERVER_WARMUP
        OUT="$RES/floor-r$r" SKIP_BUILD=1 DURATION=$FLOOR_DURATION SERVER_WARMUP=$floor_warm \
            scripts/floor.sh "$DIR" >"$RES/floor-r$r.log" 2>&1
    fi
    if has uncontended; then
        note_load "round $r uncontended"
        start_server 1
        for clients in 64 256; do
            for workload in uncontended blind; do
                for mode in $(in_turn "$r" shared per-client); do
                    run "$workload-$mode-c$clients-r$r" --workload "$workload" \
                        --clients "$clients" --connections "$mode"
                done
            done
        done
        stop_server
    fi
    if has hot; then
        note_load "round $r hot"
        start_server 1
        for policy in $(in_turn "$r" none backoff queue); do
            run "hot-k1-$policy-r$r" --workload hot --keys 1 --clients 64 --read appended \
                --contention "$policy"
        done
        run "hot-k1-none-per-client-r$r" --workload hot --keys 1 --clients 64 --read appended \
            --contention none --connections per-client
        for policy in $(in_turn "$r" none backoff queue); do
            run "zipf-k1000-$policy-r$r" --workload hot --keys 1000 --zipf 0.99 --clients 64 \
                --read appended --contention "$policy"
        done
        stop_server
    fi
    if has batch; then
        note_load "round $r batch"
        # A server per row, briefly warmed (at these rates segments reach full size in a
        # second or two): each row writes gigabytes, and the disk is shared.
        start_server 2 4s
        run "batch100-r$r" --server-cores 2 --loadgen-cores 2 --workload blind --clients 64 \
            --batch 100
        stop_server
        start_server 2 4s
        run "record16k-r$r" --server-cores 2 --loadgen-cores 2 --workload blind --clients 8 \
            --batch 63 --value-bytes 16384
        stop_server
    fi
    if has kafka; then
        note_load "round $r kafka"
        local kafka_warm=0
        [[ $SERVERS == warm ]] && kafka_warm=${SERVER_WARMUP%s}
        scripts/bench-kafka.py --rounds 1 --records "$KAFKA_RECORDS" --dir "$DIR" \
            --warm "$kafka_warm" \
            --json "$RES/kafka-r$r.json" >"$RES/kafka-r$r.log" 2>&1
    fi
}

peers_round() {
    local r=$1
    has peers || return 0
    note_load "round $r peers"
    OUT=$RES DIR=$DIR ROUNDS=$r DURATION=$PEER_SECONDS \
        PEERS="$(in_turn "$r" redis postgresql | tr '\n' ' ')" \
        scripts/bench-peers.sh >"$RES/peers-r$r.log" 2>&1
}

for r in $(seq 1 "$ROUNDS"); do
    if (( r % 2 == 1 )); then
        cairn_round "$r"
        peers_round "$r"
    else
        peers_round "$r"
        cairn_round "$r"
    fi
done
note_load "end"
rmdir "$DIR" 2>/dev/null || true

# median GLOB JQ: the median over the rounds' files of a number (one decimal).
median() {
    # shellcheck disable=SC2086
    jq -s "map($2) | sort | .[length / 2 | floor] | . * 10 | round / 10" $1
}
# each GLOB JQ: every round's figure, rounded, in round order.
each() {
    # shellcheck disable=SC2086
    jq -r -s "map($2 | round | tostring) | join(\" / \")" $1
}
{
    cat "$RES/machine.txt"
    echo "ended $(date -u +%Y-%m-%dT%H:%MZ); load averages (1, 5, 15 min) before each block:"
    echo
    sed 's/^/    /' "$RES/uptime.log"
    if has floor; then
        echo
        echo "### Floor and one client (medians of $ROUNDS rounds; each round's figure in brackets)"
        echo
        echo "| measure | p50 µs | p99 µs |"
        echo "|---|---:|---:|"
        for file in disk loopback-same loopback-across; do
            echo "| $file | $(median "$RES/floor-r*/$file.json" .p50_us) ($(each "$RES/floor-r*/$file.json" .p50_us)) | $(median "$RES/floor-r*/$file.json" .p99_us) |"
        done
        for placement in across same; do
            echo "| cairn durable append, load $placement | $(median "$RES/floor-r*/append-$placement.json" .append_latency_us.p50) ($(each "$RES/floor-r*/append-$placement.json" .append_latency_us.p50)) | $(median "$RES/floor-r*/append-$placement.json" .append_latency_us.p99) |"
            echo "| cairn read + conditional append cycle, load $placement | $(median "$RES/floor-r*/cycle-$placement.json" .cycle_latency_us.p50) ($(each "$RES/floor-r*/cycle-$placement.json" .cycle_latency_us.p50)) | $(median "$RES/floor-r*/cycle-$placement.json" .cycle_latency_us.p99) |"
            echo "| cairn cycles/s, load $placement | $(median "$RES/floor-r*/cycle-$placement.json" .successes_per_sec) ($(each "$RES/floor-r*/cycle-$placement.json" .successes_per_sec)) | |"
        done
    fi
    if has uncontended; then
        echo
        echo "### Uncontended appends (1 record of 256 B, own key per client)"
        echo
        echo "| workload | clients | connections | appends/s (rounds) | median | p50 µs | p99 µs |"
        echo "|---|---:|---|---|---:|---:|---:|"
        for workload in uncontended blind; do
            for clients in 64 256; do
                for mode in shared per-client; do
                    glob="$RES/$workload-$mode-c$clients-r*.json"
                    echo "| $workload | $clients | $mode | $(each "$glob" .successes_per_sec) | $(median "$glob" '.successes_per_sec | round') | $(median "$glob" .cycle_latency_us.p50) | $(median "$glob" .cycle_latency_us.p99) |"
                done
            done
        done
    fi
    if has hot; then
        echo
        echo "### Hot keys, 64 clients, --read appended"
        echo
        echo "| keys | contention | connections | successes/s (rounds) | median | conflicts/success | abandoned | cycle p50 µs | p99 µs |"
        echo "|---|---|---|---|---:|---:|---:|---:|---:|"
        for row in hot-k1-none hot-k1-backoff hot-k1-queue hot-k1-none-per-client zipf-k1000-none zipf-k1000-backoff zipf-k1000-queue; do
            glob="$RES/$row-r*.json"
            first=$(ls $glob | head -1)
            keys=$([[ $row == hot-* ]] && echo "1" || echo "1,000 (Zipf 0.99)")
            echo "| $keys | $(jq -r .contention "$first") | $(jq -r .connections "$first") | $(each "$glob" .successes_per_sec) | $(median "$glob" '.successes_per_sec | round') | $(median "$glob" .conflicts_per_success) | $(median "$glob" .abandoned) | $(median "$glob" .cycle_latency_us.p50) | $(median "$glob" .cycle_latency_us.p99) |"
        done
    fi
    if has batch; then
        echo
        echo "### Throughput on a 2-core server (blind batches)"
        echo
        echo "| batch | clients | records/s (rounds) | median | GB/s (median) | append p50 µs | p99 µs |"
        echo "|---|---:|---|---:|---:|---:|---:|"
        for row in batch100 record16k; do
            glob="$RES/$row-r*.json"
            first=$(ls $glob | head -1)
            echo "| $(jq -r .batch "$first") × $(jq -r .value_bytes "$first") B | $(jq -r .clients "$first") | $(each "$glob" .records_per_sec) | $(median "$glob" '.records_per_sec | round') | $(jq -s 'map(.bytes_per_sec / 1e9) | sort | .[length / 2 | floor] * 1000 | round / 1000' $glob) | $(median "$glob" .append_latency_us.p50) | $(median "$glob" .append_latency_us.p99) |"
        done
    fi
    if has kafka; then
        echo
        echo "### Kafka produce and fetch against native appends (scripts/bench-kafka.py, one server of 2 shards)"
        echo
        echo "| path | records/s (rounds) | median | server CPU µs per record (median) |"
        echo "|---|---|---:|---:|"
        for path in "native, batch 64" "native, batch 1024" "kafka produce" "kafka consume"; do
            echo "| $path | $(jq -r -s "map(.rounds[\"$path\"][0].records_per_s | round | tostring) | join(\" / \")" "$RES"/kafka-r*.json) | $(jq -s "map(.rounds[\"$path\"][0].records_per_s) | sort | .[length / 2 | floor] | round" "$RES"/kafka-r*.json) | $(jq -s "map(.rounds[\"$path\"][0].cpu_us_per_record) | sort | .[length / 2 | floor] * 100 | round / 100" "$RES"/kafka-r*.json) |"
        done
    fi
    if has peers; then
        echo
        echo "### Peers (scripts/bench-peers.sh; server on CPU 0, load on CPU 1, one connection per client)"
        echo
        OUT=$RES scripts/bench-peers.sh table
    fi
} | tee "$RES/tables.md"
