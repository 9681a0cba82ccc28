"""A confluent-kafka (librdkafka) consumer in a group: subscribes and reports what it gets.

    python3 confluent_group.py BOOTSTRAP GROUP TOPIC START [librdkafka key=value ...]

START says where an assigned partition is read from:
- "end": its high watermark at assignment time, asked of the broker before the assignment
  is reported; a caller that produces only while every assignment is settled thus gets
  each record exactly once, without committed offsets;
- "committed": the group's committed offset (librdkafka's default; auto.offset.reset
  earliest when there is none).

Stdout, one JSON object a line:
- {"event": "assigned", "partitions": [p, ...]}: the whole assignment it now reads,
  after every change (partitions added once their positions are known, or revoked);
  with partition.assignment.strategy=cooperative-sticky changes are incremental
  (KIP-429), otherwise eager;
- {"event": "record", "partition": p, "offset": o, "key": k, "value": v};
- {"event": "committed", "partitions": [p, ...]} after a "commit" command;
- {"event": "error", "error": ...} for a consumer error;
- {"event": "closed"} once close() returned (LeaveGroup sent), then it exits.
Stdin commands: {"op": "commit"} (synchronous commit of what was consumed),
{"op": "close"}. End of stdin closes too.
"""

import json
import queue
import sys
import threading

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaException

POLL_TIMEOUT_S = 0.05
WATERMARK_TIMEOUT_S = 10.0


def main():
    bootstrap, group, topic, start, *overrides = sys.argv[1:]
    config = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        # Rebalances noticed within a fraction of a second, and bounded.
        "heartbeat.interval.ms": 200,
        "session.timeout.ms": 6000,
        "max.poll.interval.ms": 20000,
        "partition.assignment.strategy": "range",
    }
    for override in overrides:
        name, value = override.split("=", 1)
        config[name] = value
    consumer = Consumer(config)

    cooperative = config["partition.assignment.strategy"] == "cooperative-sticky"
    # Tracked here: consumer.assignment() fails inside the revocation close() runs.
    current = set()

    def on_assign(consumer, partitions):
        if start == "end":
            for partition in partitions:
                _low, high = consumer.get_watermark_offsets(
                    partition, timeout=WATERMARK_TIMEOUT_S, cached=False)
                partition.offset = high
        else:
            for partition in partitions:
                partition.offset = OFFSET_INVALID
        if cooperative:
            consumer.incremental_assign(partitions)
        else:
            consumer.assign(partitions)
            current.clear()
        current.update(p.partition for p in partitions)
        emit({"event": "assigned", "partitions": sorted(current)})

    def on_revoke(consumer, partitions):
        if cooperative:
            consumer.incremental_unassign(partitions)
            current.difference_update(p.partition for p in partitions)
        else:
            consumer.unassign()
            current.clear()
        emit({"event": "assigned", "partitions": sorted(current)})

    consumer.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke)

    commands = queue.Queue()

    def read_stdin():
        for line in sys.stdin:
            commands.put(json.loads(line))
        commands.put({"op": "close"})

    threading.Thread(target=read_stdin, daemon=True).start()

    while True:
        try:
            command = commands.get_nowait()
        except queue.Empty:
            command = None
        if command is not None:
            if command["op"] == "close":
                consumer.close()
                emit({"event": "closed"})
                return
            if command["op"] == "commit":
                try:
                    committed = consumer.commit(asynchronous=False)
                    emit({"event": "committed",
                          "partitions": sorted(p.partition for p in committed or [])})
                except KafkaException as error:
                    emit({"event": "error", "error": str(error)})
        message = consumer.poll(POLL_TIMEOUT_S)
        if message is None:
            continue
        if message.error():
            emit({"event": "error", "error": str(message.error())})
            continue
        emit({
            "event": "record",
            "partition": message.partition(),
            "offset": message.offset(),
            "key": (message.key() or b"").decode(),
            "value": (message.value() or b"").decode(),
        })


def emit(result):
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
