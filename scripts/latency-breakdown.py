#!/usr/bin/env python3
"""Where one durable append's time goes (issue #16): a release `cairn serve` with one shard
pinned to CPU 0, one `cairn-loadgen` client (one append in flight, 256 B blind appends) on
CPU 1, then the server's own stage histograms from /metrics as means per append, beside the
client's end-to-end latency.

Usage: scripts/latency-breakdown.py [--cairn BIN] [--loadgen BIN] [--seconds N]
                                    [--runs N] [--dir DIR]

Every histogram the server exposes of the append path is reported, so an older binary
(with fewer stages) gives its own, coarser breakdown: run it with --cairn pointing at the
old binary to compare. Means come from each histogram's _sum / _count; the client's p50 and
mean from the load generator's summary. With --runs N the runs alternate nothing: each run
is a fresh server and data directory, and the table shows the median of the runs' means.
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

# (metric family, label filter, what the stage is)
STAGES = [
    ("cairn_native_append_stage_seconds", 'stage="queued"',
     "frame read -> handler start (spawn, executor queue)"),
    ("cairn_native_append_stage_seconds", 'stage="service"',
     "handler start -> service answer (decode, route, engine append)"),
    ("cairn_append_latency_seconds", "", "engine append: owning shard takes it -> outcome"),
    ("cairn_group_wait_seconds", "", "  batch staged -> group write submitted"),
    ("cairn_group_write_latency_seconds", "", "  group write submitted -> completed"),
    ("cairn_group_sync_latency_seconds", "", "  group fdatasync submitted -> completed"),
    ("cairn_append_wake_seconds", "", "  group durable -> appender resumed"),
    ("cairn_native_response_write_seconds", "",
     "response encoded -> socket write completed"),
]


def scrape(address):
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        return response.read().decode()


def mean_us(text, family, label_filter):
    total = count = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{family}_(sum|count)\{{([^}}]*)\}} (\S+)$", line)
        if not match or label_filter not in match.group(2):
            continue
        if match.group(1) == "sum":
            total += float(match.group(3))
        else:
            count += float(match.group(3))
    return None if count == 0 else total / count * 1e6


def one_run(args, work):
    data_dir = os.path.join(work, "data")
    server = subprocess.Popen(
        ["taskset", "-c", "0", args.cairn, "serve", "--data-dir", data_dir,
         "--listen", "127.0.0.1:0", "--no-kafka", "--cores", "1", "--log-level", "warn",
         "--metrics-listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = server.stdout.readline()
        match = re.match(r"^listening on (\S+) .*metrics=(\S+)", line)
        if not match:
            sys.exit(f"latency-breakdown: unexpected first line from the server: {line!r}")
        address, metrics = match.group(1), match.group(2)
        summary_path = os.path.join(work, "summary.json")
        subprocess.run(
            ["taskset", "-c", "1", args.loadgen, "--addr", address, "--clients", "1",
             "--value-bytes", "256", "--partitions", "1", "--workload", "blind",
             "--duration", f"{args.seconds}s", "--warmup", "0s", "--quiet",
             "--json", summary_path],
            check=True, stdout=subprocess.DEVNULL)
        text = scrape(metrics)
        with open(summary_path) as summary_file:
            summary = json.load(summary_file)
    finally:
        server.terminate()
        server.wait()
    stages = [mean_us(text, family, label) for family, label, _ in STAGES]
    return stages, summary


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cairn", default="target/release/cairn")
    parser.add_argument("--loadgen", default="target/release/cairn-loadgen")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", default=".", help="where the data directories go (not tmpfs)")
    args = parser.parse_args()
    for tool in ("taskset",):
        if shutil.which(tool) is None:
            sys.exit(f"latency-breakdown: needs {tool}")
    runs = []
    for _ in range(args.runs):
        work = tempfile.mkdtemp(prefix="cairn-breakdown.", dir=args.dir)
        try:
            runs.append(one_run(args, work))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        time.sleep(0.5)

    def median(values):
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    print(f"binary: {args.cairn}; {args.runs} runs of {args.seconds} s; medians of the runs")
    print()
    print("| stage | mean µs |")
    print("|---|---:|")
    for index, (_, _, name) in enumerate(STAGES):
        value = median(run[0][index] for run in runs)
        if value is not None:
            print(f"| {name} | {value:.1f} |")
    p50 = median(run[1]["append_latency_us"]["p50"] for run in runs)
    rate = median(run[1]["successes_per_sec"] for run in runs)
    print(f"| client end to end, p50 | {p50:.1f} |")
    print(f"| client end to end, mean (1 s / rate) | {1e6 / rate:.1f} |")


if __name__ == "__main__":
    main()
