#!/usr/bin/env bash
# Where the CPU of one request goes, on the server and on the load generator (issue #16,
# BENCHMARKS.md §14): a release `cairn serve --cores 1` pinned to CPU 0 and a
# `cairn-loadgen` pinned to CPU 1, uncontended conditional appends of 256 B, then
#   1. `perf record -g` (DWARF call graphs, cpu-clock: this VM has no hardware counters)
#      of both processes over the same window, and `perf report` of each, flat (self) and
#      by caller (children), into $OUT;
#   2. `strace -c -f` of each over a second, shorter run, and the syscalls per
#      acknowledged append (strace slows both sides: the counts per append are what to
#      read, not its rate).
# The load runs longer than the profile window so that it covers no start or end.
#
# Usage: scripts/profile-load.sh [extra cairn-loadgen flags]
# Environment: CLIENTS (256), CONNECTIONS (per-client), SECONDS_PROFILE (8),
#   SECONDS_STRACE (5), FREQ (perf samples/s, 499), DIR (data directory parent, .),
#   OUT (/tmp/cairn-profile-<time>).
set -euo pipefail
cd "$(dirname "$0")/.."

CLIENTS=${CLIENTS:-256}
CONNECTIONS=${CONNECTIONS:-per-client}
SECONDS_PROFILE=${SECONDS_PROFILE:-8}
SECONDS_STRACE=${SECONDS_STRACE:-5}
FREQ=${FREQ:-499}
DIR=${DIR:-.}
OUT=${OUT:-${TMPDIR:-/tmp}/cairn-profile-$(date +%Y%m%d-%H%M%S)}
TARGET="${CARGO_TARGET_DIR:-target}/release"
EXTRA=("$@")
for tool in perf strace jq; do
    command -v "$tool" >/dev/null || { echo "profile-load: needs $tool" >&2; exit 1; }
done
mkdir -p "$OUT"
WORK=$(mktemp -d "$DIR/cairn-profile.XXXXXX")
SERVER_PID=
cleanup() {
    if [[ -n "$SERVER_PID" ]]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

taskset -c 0 "$TARGET/cairn" serve --data-dir "$WORK/data" --listen 127.0.0.1:0 --no-kafka \
    --cores 1 --log-level warn >"$WORK/serve.out" 2>"$OUT/serve.err" &
SERVER_PID=$!
for _ in $(seq 300); do
    grep -q '^listening on ' "$WORK/serve.out" && break
    sleep 0.1
done
ADDR=$(sed -n 's/^listening on \([^ ]*\) .*/\1/p' "$WORK/serve.out")
[[ -n "$ADDR" ]] || { echo "profile-load: the server did not start" >&2; exit 1; }

loadgen() {
    taskset -c 1 "$TARGET/cairn-loadgen" --addr "$ADDR" --workload uncontended \
        --clients "$CLIENTS" --connections "$CONNECTIONS" --value-bytes 256 --quiet "$@" \
        "${EXTRA[@]}"
}
# The server's CPU ticks (utime + stime) now.
server_ticks() { awk '{print $14 + $15}' "/proc/$SERVER_PID/stat"; }

# A first run grows the fresh log's segments to full size, so that the profile sees the
# steady state rather than segment preparation.
echo "== warming the log up" >&2
loadgen --topic warm --duration 20s --warmup 0s >/dev/null

echo "== perf, $SECONDS_PROFILE s of both sides" >&2
profile_run=$(( SECONDS_PROFILE + 6 ))
loadgen --topic perf --duration "${profile_run}s" --warmup 1s --json "$OUT/perf-run.json" \
    >"$OUT/perf-run.txt" &
LOAD_PID=$!
sleep 3
LOADGEN_PID=$(pgrep -P "$LOAD_PID" cairn-loadgen || echo "$LOAD_PID")
ticks_before=$(server_ticks)
perf record -F "$FREQ" -e cpu-clock --call-graph dwarf,32768 -p "$SERVER_PID" \
    -o "$OUT/server.perf" -- sleep "$SECONDS_PROFILE" 2>"$OUT/server.perf.log" &
PERF_SERVER=$!
perf record -F "$FREQ" -e cpu-clock --call-graph dwarf,32768 -p "$LOADGEN_PID" \
    -o "$OUT/loadgen.perf" -- sleep "$SECONDS_PROFILE" 2>"$OUT/loadgen.perf.log"
wait "$PERF_SERVER"
ticks_after=$(server_ticks)
wait "$LOAD_PID"
echo "server CPU over the profile window: $(( ticks_after - ticks_before )) ticks of $(getconf CLK_TCK)/s in $SECONDS_PROFILE s" \
    | tee "$OUT/server-cpu.txt"
for side in server loadgen; do
    perf report -i "$OUT/$side.perf" --no-children --sort dso,symbol --percent-limit 0.5 \
        --stdio -g none >"$OUT/$side-self.txt" 2>/dev/null
    perf report -i "$OUT/$side.perf" --children --sort symbol --percent-limit 2 \
        --stdio -g none >"$OUT/$side-children.txt" 2>/dev/null
done

echo "== strace -c, $SECONDS_STRACE s" >&2
strace -c -f -p "$SERVER_PID" -o "$OUT/server.strace" &
STRACE_SERVER=$!
sleep 0.5
strace -c -f -o "$OUT/loadgen.strace" -- taskset -c 1 "$TARGET/cairn-loadgen" --addr "$ADDR" \
    --topic strace --workload uncontended --clients "$CLIENTS" --connections "$CONNECTIONS" \
    --value-bytes 256 --quiet --duration "${SECONDS_STRACE}s" --warmup 0s \
    --json "$OUT/strace-run.json" "${EXTRA[@]}" >"$OUT/strace-run.txt"
kill -INT "$STRACE_SERVER"
wait "$STRACE_SERVER" 2>/dev/null || true
appends=$(jq .successes "$OUT/strace-run.json")
{
    echo "appends acknowledged during the strace run: $appends (the server's counts also include"
    echo "the loadgen's connection setup and topic creation)"
    for side in server loadgen; do
        echo
        echo "$side: syscalls per append"
        awk -v n="$appends" '$NF ~ /^[a-z_0-9]+$/ && $4 ~ /^[0-9]+$/ && $NF != "total" {
            printf "  %-20s %8.2f\n", $NF, $4 / n }' "$OUT/$side.strace" | sort -k2 -nr | head -15
    done
} | tee "$OUT/syscalls.txt"
