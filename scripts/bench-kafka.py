#!/usr/bin/env python3
"""Kafka protocol against the native one, on one server, in one sitting.

    cargo build --release --bin cairn --bin cairn-loadgen
    scripts/bench-kafka.py [--rounds 3] [--records 400000]

Starts `target/release/cairn serve` (2 shards) on a temporary directory and, per round,
alternating which goes first:

- native: `cairn-loadgen --workload blind` (16 clients, batches of 64 and of 1024 records
  of 256 bytes, 8 s each) on fresh 8-partition topics;
- kafka: a confluent-kafka producer (acks=all, murmur2_random, librdkafka's default
  batching with linger.ms=5) writes --records records of 256 bytes to a fresh 8-partition
  topic, then one consumer (assign(), from offset 0) reads them back.

For each it prints records/s and the server's CPU time per record (utime + stime from
/proc, over the records the topic's high watermarks count), so that the cost of the Kafka
path per record reads as a ratio to the native one. The clients run on the same 2 cores as
the server: the records/s are what this machine does with both, not the server alone.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

ROOT = Path(__file__).resolve().parent.parent
NATIVE = "127.0.0.1:17878"
BOOTSTRAP = "127.0.0.1:19092"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def server_cpu_s(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of stat(5); [0] here is field 3.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def create_topic(cairn, name):
    subprocess.run([cairn, "--addr", NATIVE, "topic", "create", name, "--partitions", "8"],
                   check=True, stdout=subprocess.DEVNULL)


def records_in(topic):
    consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": "bench-kafka"})
    total = 0
    for partition in range(8):
        _low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        total += high
    consumer.close()
    return total


def native_round(args, pid, topic, batch):
    create_topic(args.cairn, topic)
    report = Path(tempfile.mkstemp(suffix=".json")[1])
    cpu = server_cpu_s(pid)
    subprocess.run([args.loadgen, "--addr", NATIVE, "--topic", topic, "--partitions", "8",
                    "--workload", "blind", "--clients", "16", "--batch", str(batch),
                    "--value-bytes", "256", "--duration", "8", "--warmup", "1",
                    "--json", str(report), "--quiet"], check=True, stdout=subprocess.DEVNULL)
    cpu = server_cpu_s(pid) - cpu
    summary = json.loads(report.read_text())
    report.unlink()
    records = records_in(topic)
    return {"records_per_s": summary["records_per_sec"], "cpu_us_per_record": cpu / records * 1e6}


def kafka_produce(args, pid, topic):
    create_topic(args.cairn, topic)
    failures = []
    producer = Producer({
        "bootstrap.servers": BOOTSTRAP, "acks": "all", "linger.ms": 5,
        "partitioner": "murmur2_random", "queue.buffering.max.messages": 1_000_000,
    })
    value = b"v" * 256
    keys = [f"key-{index:06}".encode() for index in range(1000)]

    def on_delivery(error, _message):
        if error is not None:
            failures.append(error)

    cpu = server_cpu_s(pid)
    started = time.monotonic()
    for index in range(args.records):
        while True:
            try:
                producer.produce(topic, key=keys[index % 1000], value=value,
                                 on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    if producer.flush(120) or failures:
        sys.exit(f"produce failed: {failures[:3]}")
    elapsed = time.monotonic() - started
    cpu = server_cpu_s(pid) - cpu
    return {"records_per_s": args.records / elapsed,
            "cpu_us_per_record": cpu / args.records * 1e6}


def kafka_consume(args, pid, topic):
    consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": "bench-kafka",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, partition, 0) for partition in range(8)])
    consumed = 0
    cpu = server_cpu_s(pid)
    started = time.monotonic()
    while consumed < args.records:
        for message in consumer.consume(num_messages=10_000, timeout=1.0):
            if message.error():
                raise KafkaException(message.error())
            consumed += 1
        if time.monotonic() - started > 300:
            sys.exit(f"consume: {consumed} of {args.records} after 300 s")
    elapsed = time.monotonic() - started
    cpu = server_cpu_s(pid) - cpu
    consumer.close()
    return {"records_per_s": consumed / elapsed, "cpu_us_per_record": cpu / consumed * 1e6}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--records", type=int, default=400_000)
    parser.add_argument("--cairn", default=str(ROOT / "target/release/cairn"))
    parser.add_argument("--loadgen", default=str(ROOT / "target/release/cairn-loadgen"))
    parser.add_argument("--json", help="also write every round's figures to this file")
    parser.add_argument("--warm", type=int, default=0,
                        help="seconds of a blind batch load before the rounds, so that they "
                        "meet full-size segments rather than a new log's growing ones")
    parser.add_argument("--dir", default=str(ROOT / "target"),
                        help="where the server's temporary data directory goes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as data:
        server = subprocess.Popen(
            [args.cairn, "serve", "--data-dir", f"{data}/data", "--listen", NATIVE,
             "--kafka-listen", BOOTSTRAP, "--cores", "2", "--log-level", "warn"],
            stdout=subprocess.PIPE)
        try:
            server.stdout.readline()
            if args.warm:
                create_topic(args.cairn, "warm")
                subprocess.run([args.loadgen, "--addr", NATIVE, "--topic", "warm",
                                "--partitions", "8", "--workload", "blind", "--clients", "16",
                                "--batch", "64", "--value-bytes", "256", "--duration",
                                str(args.warm), "--warmup", "0", "--quiet"], check=True,
                               stdout=subprocess.DEVNULL)
            results = {"native, batch 64": [], "native, batch 1024": [], "kafka produce": [],
                       "kafka consume": []}
            for round_index in range(args.rounds):
                order = ["native", "kafka"] if round_index % 2 == 0 else ["kafka", "native"]
                for path in order:
                    if path == "native":
                        for batch in (64, 1024):
                            results[f"native, batch {batch}"].append(native_round(
                                args, server.pid, f"native-{batch}-{round_index}", batch))
                    else:
                        topic = f"kafka-{round_index}"
                        results["kafka produce"].append(kafka_produce(args, server.pid, topic))
                        results["kafka consume"].append(kafka_consume(args, server.pid, topic))
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                    capture_output=True, text=True).stdout.strip()
            print(f"commit {commit}, {args.rounds} rounds, medians")
            native_cpu = statistics.median(
                r["cpu_us_per_record"] for r in results["native, batch 64"])
            for name, runs in results.items():
                rate = statistics.median(r["records_per_s"] for r in runs)
                cpu = statistics.median(r["cpu_us_per_record"] for r in runs)
                print(f"{name:15} {rate:>12,.0f} records/s  server {cpu:6.2f} us CPU/record"
                      f"  ({cpu / native_cpu:.2f}x native batch 64)  all: "
                      + ", ".join(f"{r['records_per_s']:,.0f}" for r in runs))
            if args.json:
                Path(args.json).write_text(json.dumps({"commit": commit, "rounds": results},
                                                      indent=1))
        finally:
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    main()
