"""Append throughput of one Python process against a running `cairn serve`.

    python bench/bench_append.py --port 7878 --mode single --seconds 10
    python bench/bench_append.py --port 7878 --mode batch --batch 64 --value-bytes 256

single: single-record appends, `--window` of them in flight (pipelined on one connection
per shard). batch: appends of `--batch` records each, `--window` batches in flight.
Prints records/s and appends/s.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import time
import uuid

from cairn import AsyncClient, Client, Pending, Record
from cairn.types import Appended


async def run_asyncio(args: argparse.Namespace, batch_size: int) -> tuple[int, int, float]:
    """`--window` tasks, each appending one batch after the other."""
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    value = b"v" * args.value_bytes
    async with AsyncClient(args.host, args.port, timeout=60) as client:
        await client.create_topic(topic, args.partitions)
        await client.metadata()
        counts = [0, 0]
        started = time.perf_counter()
        deadline = started + args.seconds

        async def task(number: int) -> None:
            partition = number % args.partitions
            sequence = 0
            while time.perf_counter() < deadline:
                batch = [
                    Record(f"key-{(number + sequence + index) % 1000}".encode(), value)
                    for index in range(batch_size)
                ]
                sequence += 1
                appended = await client.append(topic, batch, partition=partition)
                counts[0] += 1
                counts[1] += appended.record_count

        await asyncio.gather(*(task(number) for number in range(args.window)))
        return counts[0], counts[1], time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7878)
    parser.add_argument("--mode", choices=["single", "batch"], default="single")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--value-bytes", type=int, default=256)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--client", choices=["blocking", "asyncio"], default="blocking")
    args = parser.parse_args()
    if args.client == "asyncio":
        batch_size = 1 if args.mode == "single" else args.batch
        appends, records, elapsed = asyncio.run(run_asyncio(args, batch_size))
        print(
            f"client=asyncio mode={args.mode} batch={batch_size} value_bytes={args.value_bytes} "
            f"tasks={args.window} seconds={elapsed:.1f} appends={appends} records={records} "
            f"appends_per_s={appends / elapsed:,.0f} records_per_s={records / elapsed:,.0f}"
        )
        return

    topic = f"bench-{uuid.uuid4().hex[:8]}"
    value = b"v" * args.value_bytes
    batch_size = 1 if args.mode == "single" else args.batch
    with Client(args.host, args.port, timeout=60) as client:
        client.create_topic(topic, args.partitions)
        client.metadata()
        keys = [f"key-{index}".encode() for index in range(1000)]
        in_flight: collections.deque[Pending[Appended]] = collections.deque()
        appends = records = 0
        sequence = 0
        started = time.perf_counter()
        deadline = started + args.seconds
        while True:
            now = time.perf_counter()
            if now >= deadline and not in_flight:
                break
            if now < deadline and len(in_flight) < args.window:
                partition = sequence % args.partitions
                batch = [
                    Record(keys[(sequence + index) % len(keys)], value)
                    for index in range(batch_size)
                ]
                sequence += 1
                in_flight.append(client.submit_append(topic, batch, partition=partition))
                continue
            # Wait for the older half of the window, so the next half goes out in one send.
            for _ in range(max(1, len(in_flight) // 2)):
                appended = in_flight.popleft().result()
                appends += 1
                records += appended.record_count
        elapsed = time.perf_counter() - started
    print(
        f"client=blocking mode={args.mode} batch={batch_size} value_bytes={args.value_bytes} "
        f"window={args.window} seconds={elapsed:.1f} appends={appends} records={records} "
        f"appends_per_s={appends / elapsed:,.0f} records_per_s={records / elapsed:,.0f}"
    )


if __name__ == "__main__":
    main()
