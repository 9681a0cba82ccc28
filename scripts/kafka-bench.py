#!/usr/bin/env python3
"""Kafka-protocol throughput of a running Cairn server, with confluent-kafka (librdkafka).

    scripts/kafka-bench.py --bootstrap 127.0.0.1:9092 --records 100000

Produces --records records of --value-bytes (256) bytes with acks=all to a topic, keyed
over --keys keys (murmur2_random, Cairn's own routing), then reads the topic back from the
start with one consumer per run (assign(), no consumer group), and prints one line:

    kafka-bench records=100000 value_bytes=256 linger_ms=5 batch_bytes=1048576 \
        produce_records_per_s=... produce_mb_per_s=... consume_records_per_s=... \
        consume_mb_per_s=... commit=...

MB/s counts value bytes only (10^6 bytes), as the native loadgen does, so the two compare in
BENCHMARKS.md. The topic must exist with --partitions partitions, or the script creates it
through the native CLI (--cairn, default `cargo run --release -q --bin cairn --`) when it
is missing. Run the server in release mode; a count small enough to finish in seconds
checks the script, not the server.
"""

import argparse
import shlex
import subprocess
import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--topic", default="kafka-bench")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--value-bytes", type=int, default=256)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--linger-ms", type=int, default=5)
    parser.add_argument("--batch-bytes", type=int, default=1 << 20, help="batch.size")
    parser.add_argument("--in-flight", type=int, default=5,
                        help="max.in.flight.requests.per.connection")
    parser.add_argument("--cairn", default="cargo run --release -q --bin cairn --",
                        help="native CLI that creates the topic when it is missing")
    parser.add_argument("--addr", help="native address for --cairn (its default if unset)")
    return parser.parse_args()


def ensure_topic(args):
    probe = Producer({"bootstrap.servers": args.bootstrap})
    metadata = probe.list_topics(timeout=10)
    topic = metadata.topics.get(args.topic)
    if topic is not None and topic.error is None:
        if len(topic.partitions) != args.partitions:
            sys.exit(f"{args.topic} has {len(topic.partitions)} partitions, not {args.partitions}")
        return
    command = shlex.split(args.cairn)
    if args.addr:
        command += ["--addr", args.addr]
    command += ["topic", "create", args.topic, "--partitions", str(args.partitions)]
    subprocess.run(command, check=True)


def produce(args):
    failures = []

    def on_delivery(error, _message):
        if error is not None:
            failures.append(error)

    producer = Producer({
        "bootstrap.servers": args.bootstrap,
        "acks": "all",
        "linger.ms": args.linger_ms,
        "batch.size": args.batch_bytes,
        "max.in.flight.requests.per.connection": args.in_flight,
        "partitioner": "murmur2_random",
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1 << 20,
    })
    value = b"v" * args.value_bytes
    keys = [f"key-{index:06}".encode() for index in range(args.keys)]
    started = time.monotonic()
    for index in range(args.records):
        while True:
            try:
                producer.produce(args.topic, key=keys[index % len(keys)], value=value,
                                 on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    remaining = producer.flush(120)
    elapsed = time.monotonic() - started
    if remaining or failures:
        sys.exit(f"produce: {remaining} undelivered, {len(failures)} failed: {failures[:3]}")
    return elapsed


def consume(args):
    consumer = Consumer({
        "bootstrap.servers": args.bootstrap,
        # confluent-kafka insists on a group id; assign() never joins the group.
        "group.id": "kafka-bench",
        "enable.auto.commit": False,
        "fetch.wait.max.ms": 100,
    })
    metadata = consumer.list_topics(args.topic, timeout=10)
    partitions = sorted(metadata.topics[args.topic].partitions)
    ends = {}
    for partition in partitions:
        _low, high = consumer.get_watermark_offsets(TopicPartition(args.topic, partition),
                                                    timeout=10)
        ends[partition] = high
    total = sum(ends.values())
    consumer.assign([TopicPartition(args.topic, partition, 0) for partition in partitions])
    consumed = 0
    value_bytes = 0
    started = time.monotonic()
    deadline = started + 300
    while consumed < total:
        if time.monotonic() > deadline:
            sys.exit(f"consume: {consumed} of {total} records after 300 s")
        for message in consumer.consume(num_messages=10_000, timeout=1.0):
            if message.error():
                raise KafkaException(message.error())
            consumed += 1
            value_bytes += len(message.value() or b"")
    elapsed = time.monotonic() - started
    consumer.close()
    return consumed, value_bytes, elapsed


def main():
    args = parse_args()
    ensure_topic(args)
    produce_s = produce(args)
    consumed, consumed_bytes, consume_s = consume(args)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    produced_bytes = args.records * args.value_bytes
    print(
        f"kafka-bench records={args.records} value_bytes={args.value_bytes} "
        f"linger_ms={args.linger_ms} batch_bytes={args.batch_bytes} "
        f"produce_records_per_s={args.records / produce_s:.0f} "
        f"produce_mb_per_s={produced_bytes / produce_s / 1e6:.2f} "
        f"consume_records={consumed} "
        f"consume_records_per_s={consumed / consume_s:.0f} "
        f"consume_mb_per_s={consumed_bytes / consume_s / 1e6:.2f} "
        f"commit={commit}"
    )


if __name__ == "__main__":
    main()
