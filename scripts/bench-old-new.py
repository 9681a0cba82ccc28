#!/usr/bin/env python3
"""Two cairn-loadgen binaries (old and new), alternated run by run, on the same workloads.

    scripts/bench-old-new.py OLD_LOADGEN NEW_LOADGEN [--rounds 3] [--workload NAME ...]

Each binary uses its own embedded server (the loadgen's default: server on one core, load
on the other). Round r runs old first when r is even and new first when it is odd, so that
neither always gets the warmer disk. Prints, per workload, the median records/s and append
p50 of each, the ratio new/old, and every round's figure: the machine is shared and noisy,
so read the ratio with the spread next to it.
"""

import argparse
import json
import os
import statistics
import subprocess
import tempfile

WORKLOADS = {
    "zipf16": [],
    "uncontended64": ["--workload", "uncontended", "--clients", "64"],
    "uncontended1": ["--workload", "uncontended", "--clients", "1"],
    "blind-batch64": ["--workload", "blind", "--batch", "64", "--clients", "16"],
}


def run(loadgen, extra):
    handle, path = tempfile.mkstemp(suffix=".json")
    os.close(handle)
    subprocess.run([loadgen, "--duration", "8", "--warmup", "1", "--quiet", "--json", path] + extra,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(path) as report:
        summary = json.load(report)
    os.unlink(path)
    return summary["records_per_sec"], summary["append_latency_us"]["p50"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workload", action="append", choices=sorted(WORKLOADS))
    args = parser.parse_args()
    names = args.workload or list(WORKLOADS)
    results = {}
    for round_index in range(args.rounds):
        for name in names:
            order = ["old", "new"] if round_index % 2 == 0 else ["new", "old"]
            for which in order:
                binary = args.old if which == "old" else args.new
                results.setdefault((name, which), []).append(run(binary, WORKLOADS[name]))
    for name in names:
        old, new = results[(name, "old")], results[(name, "new")]
        old_rate = statistics.median(rate for rate, _ in old)
        new_rate = statistics.median(rate for rate, _ in new)
        print(f"{name:15} old {old_rate:>11,.0f} rec/s p50 {statistics.median(p for _, p in old)} us"
              f" | new {new_rate:>11,.0f} rec/s p50 {statistics.median(p for _, p in new)} us"
              f" | new/old {new_rate / old_rate:.2f}"
              f" | old {[round(rate) for rate, _ in old]} new {[round(rate) for rate, _ in new]}")


if __name__ == "__main__":
    main()
