#!/usr/bin/env python3
"""One measured run against a peer of Cairn (Redis or PostgreSQL), written as one JSON
summary in the shape scripts/bench-peers.sh tabulates (issue #16). Used by that script;
each subcommand is one run.

    peer-driver.py redis-benchmark --port P --clients N --requests R --json OUT
        redis-benchmark (the peer's own tool) running RPUSH of a 256-byte value to a
        random key of 1,000,000: blind durable appends, p50/p99 from its --csv output.
    peer-driver.py redis-cycle --port P --clients N --keys K --seconds S --json OUT
        A stdlib asyncio RESP driver (one connection per client): read the key's version
        (LLEN), then append conditionally on it with a Lua script that RPUSHes only if LLEN
        is still that version and otherwise answers the current one; on a conflict it
        retries at once from the version the conflict carries, up to --max-retries times,
        then abandons the cycle (as cairn-loadgen's `hot --retry from-conflict`). --keys 0
        gives every client its own key (uncontended conditional appends).
    peer-driver.py redis-append --port P --clients N --seconds S --json OUT
        The same driver doing blind RPUSHes: its overhead against redis-benchmark's.
    peer-driver.py pgbench --port P --clients N --script F --seconds S --json OUT
        pgbench (the peer's own tool) with a custom script and per-transaction logs
        (p50/p99 from them); with --table, successes are the rows the run added to it and
        conflicts the transactions that added none (INSERT ... ON CONFLICT DO NOTHING).

Latencies are in microseconds, rates per second over the measured time.
"""

import argparse
import asyncio
import csv
import glob
import json
import os
import random
import resource
import socket
import subprocess
import sys
import tempfile
import time

VALUE = b"v" * 256
# Appends ARGV[2] to list KEYS[1] if its length is still ARGV[1]; answers -1 on success,
# else the current length (the version a retry should be conditional on).
CONDITIONAL_APPEND = (
    b"local n = redis.call('LLEN', KEYS[1]) "
    b"if n == tonumber(ARGV[1]) then redis.call('RPUSH', KEYS[1], ARGV[2]) return -1 "
    b"else return n end"
)


def percentile(sorted_values, fraction):
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, int(fraction * len(sorted_values)))
    return sorted_values[index]


def write_summary(path, summary):
    with open(path, "w") as file:
        json.dump(summary, file, indent=1)
    print(json.dumps(summary))


def encode(*parts):
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        if isinstance(part, int):
            part = str(part).encode()
        elif isinstance(part, str):
            part = part.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


async def reply(reader):
    line = await reader.readline()
    if not line:
        raise ConnectionError("redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b":":
        return int(rest)
    if kind == b"+":
        return rest
    if kind == b"$":
        length = int(rest)
        if length < 0:
            return None
        return (await reader.readexactly(length + 2))[:-2]
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b"*":
        return [await reply(reader) for _ in range(int(rest))]
    raise RuntimeError(f"unexpected reply {line!r}")


async def call(reader, writer, *parts):
    writer.write(encode(*parts))
    return await reply(reader)


class Run:
    """Counts what the clients did inside the measured window."""

    def __init__(self, warmup, seconds):
        now = time.monotonic()
        self.start = now + warmup
        self.end = self.start + seconds
        self.latencies = []
        self.successes = 0
        self.conflicts = 0
        self.abandoned = 0

    def measuring(self, at):
        return self.start <= at < self.end


async def connect(port):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return reader, writer


async def redis_client(args, run, index, sha, opener=None):
    reader, writer = await (opener or connect)(args.port)
    rng = random.Random(args.seed * 1_000_003 + index)
    own_key = f"own:{args.tag}:{index}"
    while True:
        started = time.monotonic()
        if started >= run.end:
            break
        if args.workload == "append":
            await call(reader, writer, b"RPUSH", own_key, VALUE)
            conflicts, success = 0, True
        else:
            key = own_key if args.keys == 0 else f"hot:{args.tag}:{rng.randrange(args.keys)}"
            version = await call(reader, writer, b"LLEN", key)
            conflicts, success = 0, False
            while True:
                answer = await call(reader, writer, b"EVALSHA", sha, 1, key, version, VALUE)
                if answer == -1:
                    success = True
                    break
                conflicts += 1
                if conflicts > args.max_retries:
                    break
                version = answer
        finished = time.monotonic()
        if run.measuring(started):
            run.conflicts += conflicts
            if success:
                run.successes += 1
                run.latencies.append((finished - started) * 1e6)
            else:
                run.abandoned += 1
    writer.close()


async def redis_main(args):
    reader, writer = await connect(args.port)
    sha = (await call(reader, writer, b"SCRIPT", b"LOAD", CONDITIONAL_APPEND)).decode()
    writer.close()
    run = Run(args.warmup, args.seconds)
    await asyncio.gather(*(redis_client(args, run, index, sha) for index in range(args.clients)))
    return run


class SyncConnection:
    """A blocking RESP connection: one client needs no event loop, and skipping it keeps
    the driver's own time per round trip to a few microseconds."""

    def __init__(self, port):
        self.socket = socket.create_connection(("127.0.0.1", port))
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.socket.makefile("rb")

    def write(self, data):
        self.socket.sendall(data)

    async def readline(self):
        return self.file.readline()

    async def readexactly(self, count):
        return self.file.read(count)

    def close(self):
        self.socket.close()


def redis_single(args):
    """One client over a blocking socket, driving the same coroutine without a loop (its
    awaits never suspend)."""
    connection = SyncConnection(args.port)
    sha_call = call(connection, connection, b"SCRIPT", b"LOAD", CONDITIONAL_APPEND)
    sha = run_to_end(sha_call).decode()
    connection.close()

    async def connect_sync(port):
        single = SyncConnection(port)
        return single, single

    run = Run(args.warmup, args.seconds)
    run_to_end(redis_client(args, run, 0, sha, connect_sync))
    return run


def run_to_end(coroutine):
    try:
        coroutine.send(None)
    except StopIteration as stop:
        return stop.value
    raise RuntimeError("a blocking call suspended")


def redis_driver(args):
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    if args.clients == 1:
        run = redis_single(args)
    else:
        try:
            import uvloop
            run = uvloop.run(redis_main(args))
            args.loop = "uvloop"
        except ImportError:
            run = asyncio.run(redis_main(args))
    elapsed = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    driver_cpu = (after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime) / elapsed
    run.latencies.sort()
    write_summary(args.json, {
        "system": "redis",
        "tool": "peer-driver.py (" + ("blocking socket" if args.clients == 1 else
                                      getattr(args, "loop", "asyncio")) + ")",
        "workload": args.workload if args.workload == "append" else
        ("uncontended" if args.keys == 0 else f"cycle, {args.keys} keys"),
        "clients": args.clients, "successes": run.successes,
        "successes_per_sec": run.successes / args.seconds,
        "conflicts_per_success": run.conflicts / max(run.successes, 1),
        "abandoned": run.abandoned,
        "p50_us": percentile(run.latencies, 0.50), "p99_us": percentile(run.latencies, 0.99),
        "driver_cpu_fraction": round(driver_cpu, 3),
    })


def redis_benchmark(args):
    value = "v" * 256
    output = subprocess.run(
        ["redis-benchmark", "-h", "127.0.0.1", "-p", str(args.port), "-c", str(args.clients),
         "-n", str(args.requests), "-r", "1000000", "--csv", "RPUSH", "bench:__rand_int__",
         value], check=True, capture_output=True, text=True).stdout
    rows = list(csv.DictReader(output.splitlines()))
    if not rows:
        sys.exit(f"redis-benchmark printed no result: {output!r}")
    row = rows[-1]
    write_summary(args.json, {
        "system": "redis", "tool": "redis-benchmark", "workload": "blind append",
        "clients": args.clients, "successes": args.requests,
        "successes_per_sec": float(row["rps"]), "conflicts_per_success": 0, "abandoned": 0,
        "p50_us": float(row["p50_latency_ms"]) * 1000,
        "p99_us": float(row["p99_latency_ms"]) * 1000,
    })


def psql(args, sql):
    return subprocess.run(
        ["psql", "-h", "127.0.0.1", "-p", str(args.port), "-U", "postgres", "-d", "postgres", "-At", "-c", sql],
        check=True, capture_output=True, text=True).stdout.strip()


def pgbench(args):
    before = int(psql(args, f"SELECT count(*) FROM {args.table}")) if args.table else 0
    with tempfile.TemporaryDirectory() as logs:
        command = ["pgbench", "-h", "127.0.0.1", "-p", str(args.port), "-U", "postgres", "-d", "postgres", "-n",
                   "-M", "prepared", "-c", str(args.clients), "-j", "1",
                   "-T", str(int(args.seconds)), "-f", args.script, "-l",
                   "--log-prefix", os.path.join(logs, "tx")]
        for define in args.define:
            command += ["-D", define]
        started = time.monotonic()
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"pgbench failed ({result.returncode}): {result.stdout}{result.stderr}")
        output = result.stdout
        elapsed = time.monotonic() - started
        latencies = []
        for path in glob.glob(os.path.join(logs, "tx*")):
            with open(path) as file:
                # client_id transaction_no latency_us script_no epoch_s epoch_us
                latencies.extend(int(line.split()[2]) for line in file)
    latencies.sort()
    transactions = len(latencies)
    duration = args.seconds if abs(elapsed - args.seconds) < 2 else elapsed
    if args.table:
        successes = int(psql(args, f"SELECT count(*) FROM {args.table}")) - before
    else:
        successes = transactions
    if "number of failed transactions: 0" not in output and "failed transactions" in output:
        print(output, file=sys.stderr)
    write_summary(args.json, {
        "system": "postgresql", "tool": "pgbench", "workload": args.workload,
        "clients": args.clients, "transactions": transactions, "successes": successes,
        "successes_per_sec": successes / duration,
        "conflicts_per_success": (transactions - successes) / max(successes, 1),
        "abandoned": 0,
        "p50_us": percentile(latencies, 0.50), "p99_us": percentile(latencies, 0.99),
    })


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("redis-benchmark", "redis-cycle", "redis-append", "pgbench"):
        command = sub.add_parser(name)
        command.add_argument("--port", type=int, required=True)
        command.add_argument("--clients", type=int, required=True)
        command.add_argument("--json", required=True)
        command.add_argument("--seconds", type=float, default=8)
        command.add_argument("--warmup", type=float, default=1)
        command.add_argument("--requests", type=int, default=100_000)
        command.add_argument("--keys", type=int, default=1000)
        command.add_argument("--max-retries", type=int, default=10)
        command.add_argument("--seed", type=int, default=1)
        command.add_argument("--tag", default=str(os.getpid()))
        command.add_argument("--script")
        command.add_argument("--table")
        command.add_argument("--workload", default="append" if name == "redis-append" else "")
        command.add_argument("--define", action="append", default=[])
    args = parser.parse_args()
    if args.command == "redis-benchmark":
        redis_benchmark(args)
    elif args.command in ("redis-cycle", "redis-append"):
        if args.command == "redis-cycle":
            args.workload = "cycle"
        redis_driver(args)
    else:
        pgbench(args)


if __name__ == "__main__":
    main()
