#!/usr/bin/env bash
# The peers issue #16 compares Cairn against, on this machine, each acknowledging a write
# only after fsync, 256-byte values, every client on its own connection:
#   Redis 7 (`redis-server`, appendonly yes, appendfsync always; AOF rewrites off so that
#       no background rewrite lands inside a run), and PostgreSQL 15 (a throwaway `initdb`
#       cluster, defaults: fsync on, synchronous_commit on; max_connections raised to 300
#       for the 256-client row), both on fresh data directories under DIR, the server
#       pinned to PEER_CPU and the load to LOAD_CPU (as Cairn's shard and load generator);
# and per peer the workloads Cairn is measured with:
#   append-c1       one client, one durable blind append in flight (p50/p99);
#   cycle-c1        one client, read the key's version then append conditionally on it,
#                   keys drawn from 1,000;
#   uncontended-cN  N clients (N in $UNCONTENDED), each conditionally appending to its own
#                   key (Redis also blind, with redis-benchmark: its tool's own figure);
#   hot-c64         64 clients on one key: successful cycles/s, conflicts per success.
# Tools: redis-benchmark (blind appends, Redis's own tool); pgbench with custom scripts
# (PostgreSQL's own tool: every row); scripts/peer-driver.py (an asyncio RESP driver) for
# Redis's read + conditional append cycles, with a Lua script as the condition. NATS
# JetStream is not measured: Debian's nats-server (2.9) has no `sync_interval: always`, so
# it cannot acknowledge after fsync.
#
# Usage: scripts/bench-peers.sh            run $ROUNDS rounds, then print the table
#        scripts/bench-peers.sh table      only print the table of what $OUT holds
# Environment: OUT (results, /tmp/cairn-peers-<time>), DIR (data directories, .), ROUNDS
#   (round labels, "1 2 3"), PEERS ("redis postgresql"), DURATION (seconds per run, 8),
#   UNCONTENDED ("64 256"), PEER_CPU (0), LOAD_CPU (1), REDIS_PORT (16379), PG_PORT (15432),
#   PG_USER (the non-root user PostgreSQL runs as, benchpg; created if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-${TMPDIR:-/tmp}/cairn-peers-$(date +%Y%m%d-%H%M%S)}
DIR=${DIR:-.}
ROUNDS=${ROUNDS:-"1 2 3"}
PEERS=${PEERS:-"redis postgresql"}
DURATION=${DURATION:-8}
UNCONTENDED=${UNCONTENDED:-"64 256"}
PEER_CPU=${PEER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
REDIS_PORT=${REDIS_PORT:-16379}
PG_PORT=${PG_PORT:-15432}
PG_USER=${PG_USER:-benchpg}
PG_BIN=${PG_BIN:-/usr/local/bin}
DRIVER="python3 scripts/peer-driver.py"
mkdir -p "$OUT/peers"

table() {
    # median NAME FIELD: median over rounds of FIELD of $OUT/peers/NAME-r*.json.
    median() {
        jq -s "map($2) | sort | .[length / 2 | floor] | if . == null then \"–\" else (. * 10 | round / 10) end" \
            "$OUT/peers/$1"-r*.json
    }
    runs() { jq -r -s "map($2 | floor | tostring) | join(\" / \")" "$OUT/peers/$1"-r*.json; }
    echo "| peer | workload | tool | clients | successes/s (rounds) | median | conflicts/success | p50 µs | p99 µs |"
    echo "|---|---|---|---:|---|---:|---:|---:|---:|"
    for file in "$OUT"/peers/*-r*.json; do basename "$file" | sed 's/-r[^-]*\.json$//'; done |
        sort -u | while read -r name; do
            first=$(ls "$OUT/peers/$name"-r*.json | head -1)
            echo "| $(jq -r .system "$first") | $(jq -r .workload "$first") | $(jq -r .tool "$first") | $(jq -r .clients "$first") | $(runs "$name" .successes_per_sec) | $(median "$name" .successes_per_sec) | $(median "$name" .conflicts_per_success) | $(median "$name" .p50_us) | $(median "$name" .p99_us) |"
        done
}
if [[ "${1:-}" == table ]]; then
    table | tee "$OUT/peers.md"
    exit 0
fi

command -v jq >/dev/null || { echo "bench-peers: needs jq" >&2; exit 1; }
command -v redis-server >/dev/null ||
    { echo "bench-peers: needs redis-server and redis-tools (apt-get install redis-server redis-tools)" >&2; exit 1; }
[[ -x "$PG_BIN/postgres" && -x "$PG_BIN/initdb" ]] ||
    { echo "bench-peers: needs PostgreSQL 15 in $PG_BIN (postgres, initdb)" >&2; exit 1; }
command -v pgbench >/dev/null || { echo "bench-peers: needs pgbench" >&2; exit 1; }
if [[ $(id -u) == 0 ]] && ! id "$PG_USER" >/dev/null 2>&1; then
    useradd --no-create-home --shell /usr/sbin/nologin "$PG_USER"
fi

WORK=
SERVER_PID=
stop_server() {
    if [[ -n "$SERVER_PID" ]]; then
        kill "$SERVER_PID" 2>/dev/null || true
        # PostgreSQL's postmaster is a child of `su` when started as root: wait for the port.
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=
    fi
    for _ in $(seq 100); do
        pgrep -u "$PG_USER" -x postgres >/dev/null 2>&1 || break
        sleep 0.1
    done
    [[ -n "$WORK" ]] && rm -rf "$WORK"
    WORK=
}
trap stop_server EXIT

# wait_for COMMAND...: until COMMAND succeeds, or fail after 10 s.
wait_for() {
    for _ in $(seq 100); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "bench-peers: the server did not come up ($*)" >&2
    return 1
}

load() { taskset -c "$LOAD_CPU" "$@"; }

redis_round() {
    local round=$1
    WORK=$(mktemp -d "$DIR/cairn-peers-redis.XXXXXX")
    taskset -c "$PEER_CPU" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$WORK" \
        --appendonly yes --appendfsync always --save '' --auto-aof-rewrite-percentage 0 \
        --maxclients 4096 --daemonize no >"$OUT/peers/redis-r$round.log" 2>&1 &
    SERVER_PID=$!
    wait_for redis-cli -p "$REDIS_PORT" ping
    [[ $(redis-cli -p "$REDIS_PORT" config get appendfsync | tail -1) == always ]]
    local rb_requests_c1=$(( DURATION * 3000 )) rb_requests_many=$(( DURATION * 40000 ))
    echo "== redis round $round" >&2
    load $DRIVER redis-benchmark --port "$REDIS_PORT" --clients 1 --requests "$rb_requests_c1" \
        --json "$OUT/peers/redis-append-c1-r$round.json" >/dev/null
    load $DRIVER redis-append --port "$REDIS_PORT" --clients 1 --seconds "$DURATION" \
        --json "$OUT/peers/redis-append-c1-driver-r$round.json" >/dev/null
    load $DRIVER redis-cycle --port "$REDIS_PORT" --clients 1 --keys 1000 --seconds "$DURATION" \
        --tag "r$round" --json "$OUT/peers/redis-cycle-c1-r$round.json" >/dev/null
    for clients in $UNCONTENDED; do
        load $DRIVER redis-benchmark --port "$REDIS_PORT" --clients "$clients" \
            --requests "$rb_requests_many" \
            --json "$OUT/peers/redis-blind-c$clients-r$round.json" >/dev/null
        load $DRIVER redis-cycle --port "$REDIS_PORT" --clients "$clients" --keys 0 \
            --seconds "$DURATION" --tag "r$round-c$clients" \
            --json "$OUT/peers/redis-uncontended-c$clients-r$round.json" >/dev/null
    done
    load $DRIVER redis-cycle --port "$REDIS_PORT" --clients 64 --keys 1 --seconds "$DURATION" \
        --tag "r$round-hot" --json "$OUT/peers/redis-hot-c64-r$round.json" >/dev/null
    stop_server
}

pg() { psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -qAt "$@"; }

postgresql_round() {
    local round=$1
    WORK=$(mktemp -d "$DIR/cairn-peers-pg.XXXXXX")
    chown "$PG_USER" "$WORK"
    local as_user=()
    [[ $(id -u) == 0 ]] && as_user=(runuser -u "$PG_USER" --)
    "${as_user[@]}" "$PG_BIN/initdb" -D "$WORK/data" -U postgres --auth=trust \
        >"$OUT/peers/postgresql-initdb-r$round.log" 2>&1
    "${as_user[@]}" taskset -c "$PEER_CPU" "$PG_BIN/postgres" -D "$WORK/data" -p "$PG_PORT" \
        -c listen_addresses=127.0.0.1 -c unix_socket_directories="$WORK" \
        -c max_connections=300 >"$OUT/peers/postgresql-r$round.log" 2>&1 &
    SERVER_PID=$!
    wait_for pg -c 'select 1'
    [[ $(pg -c 'show fsync') == on && $(pg -c 'show synchronous_commit') == on ]]
    pg -c "CREATE TABLE appends (key int NOT NULL, value text NOT NULL)" \
        -c "CREATE TABLE events (key int NOT NULL, version int NOT NULL, value text NOT NULL,
                                 PRIMARY KEY (key, version))"
    local value scripts=$WORK/scripts
    value=$(printf 'v%.0s' $(seq 256))
    mkdir -p "$scripts"
    # A blind append: one INSERT, no index.
    echo "INSERT INTO appends VALUES (:client_id, '$value');" >"$scripts/append.sql"
    # A conditional append to the client's own key: each client's version variable starts
    # at 0 (-D v=0) and is the inserted version after each append; the primary key makes
    # the insert conditional.
    echo "INSERT INTO events VALUES (:client_id, :v + 1, '$value') RETURNING version AS v \\gset" \
        >"$scripts/uncontended.sql"
    # A cycle: read the key's latest version, insert the next one unless a concurrent cycle
    # did (then no row: a conflict, counted from the rows the run added). Two statements,
    # two round trips, like Cairn's read then conditional append.
    for keys in 1000 1; do
        {
            echo "\\set k random(1, $keys)"
            echo "SELECT coalesce(max(version), 0) AS v FROM events WHERE key = :k \\gset"
            echo "INSERT INTO events VALUES (:k, :v + 1, '$value') ON CONFLICT DO NOTHING;"
        } >"$scripts/cycle-k$keys.sql"
    done
    echo "== postgresql round $round" >&2
    bench() {
        local name=$1 workload=$2 clients=$3
        shift 3
        pg -c "TRUNCATE appends, events" -c "CHECKPOINT"
        load $DRIVER pgbench --port "$PG_PORT" --clients "$clients" --seconds "$DURATION" \
            --workload "$workload" --json "$OUT/peers/postgresql-$name-r$round.json" "$@" \
            >/dev/null
    }
    bench append-c1 "blind append" 1 --script "$scripts/append.sql"
    bench cycle-c1 "cycle, 1000 keys" 1 --script "$scripts/cycle-k1000.sql" --table events
    for clients in $UNCONTENDED; do
        bench "uncontended-c$clients" uncontended "$clients" --script "$scripts/uncontended.sql" \
            --define v=0 --table events
    done
    bench hot-c64 "cycle, 1 keys" 64 --script "$scripts/cycle-k1.sql" --table events
    # A fast shutdown, so that the next round's cluster is the only one.
    kill -INT "$(head -1 "$WORK/data/postmaster.pid")" 2>/dev/null || true
    stop_server
}

index=0
for round in $ROUNDS; do
    # Alternate which peer goes first, so that a busy moment does not always hit one.
    order=$PEERS
    (( index % 2 == 1 )) && order=$(echo "$PEERS" | tr ' ' '\n' | tac | tr '\n' ' ')
    for peer in $order; do
        "${peer}_round" "$round"
    done
    index=$((index + 1))
done
table | tee "$OUT/peers.md"
