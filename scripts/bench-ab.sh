#!/usr/bin/env bash
# Alternates two `cairn` server binaries under one load generator, a fresh data directory
# per run, and prints each run's rate, p50s and the server's CPU per success (utime +
# stime from /proc over the successes): the before/after figures of BENCHMARKS.md §12.
#
# Usage: scripts/bench-ab.sh ROUNDS LOADGEN_ARGS...
# Environment: BINS ("old new": names), BIN_<name> (the cairn binary of each), LOADGEN
#   (cairn-loadgen), SCPU (server CPUs, 0), LGCPU (load CPUs, 1), CORES (server shards, 1),
#   PARTS (partitions, 1), DUR (5s), DIR (where data directories go, .).
set -euo pipefail
ROUNDS=$1
shift
LOADGEN=${LOADGEN:-target/release/cairn-loadgen}
DIR=${DIR:-.}
for _ in $(seq "$ROUNDS"); do
    for name in ${BINS:-old new}; do
        binary_var="BIN_$name"
        binary=${!binary_var}
        work=$(mktemp -d "$DIR/cairn-ab.XXXXXX")
        taskset -c "${SCPU:-0}" "$binary" serve --data-dir "$work/data" --listen 127.0.0.1:0 \
            --no-kafka --cores "${CORES:-1}" --log-level warn >"$work/out" 2>"$work/err" &
        pid=$!
        for _ in $(seq 100); do
            grep -q '^listening on ' "$work/out" 2>/dev/null && break
            sleep 0.1
        done
        address=$(sed -n 's/^listening on \([^ ]*\) .*/\1/p' "$work/out")
        taskset -c "${LGCPU:-1}" "$LOADGEN" --addr "$address" --value-bytes 256 \
            --partitions "${PARTS:-1}" --duration "${DUR:-5s}" --warmup 1s --quiet \
            --json "$work/s.json" "$@" >/dev/null
        ticks=$(awk '{print $14 + $15}' "/proc/$pid/stat")
        successes=$(jq .successes "$work/s.json")
        summary=$(jq -c '[.successes_per_sec, .append_latency_us.p50, .conflicts_per_success]' \
            "$work/s.json")
        cpu_us=$(python3 -c "print(round($ticks * 1e6 / $(getconf CLK_TCK) / $successes, 2))")
        echo "$name $summary server_cpu_us_per_success=$cpu_us"
        kill "$pid"
        wait "$pid" 2>/dev/null || true
        rm -rf "$work"
    done
done
