#!/usr/bin/env python3
"""Book a seat from a Kafka producer, conditionally: only if nobody has booked it yet.

Cairn reads conditions from record headers (docs/DESIGN.md, "Kafka front end"):
  cairn.expect = no-key | exists | <offset>    on a record: its key must be new, must
                                               exist, or must have its latest record at
                                               <offset>
  cairn.expect-end-offset = <offset>           on a batch's first record: the partition's
                                               end offset must be <offset>
A failed condition fails the whole batch with INVALID_RECORD. The broker's message says
which condition failed and where the key is (`conflict: record 0 expected no key, key is at
offset 7`); kafka-python and the Java client show it, but librdkafka puts its own generic
text in the delivery report ("Broker failed to validate record"), so a librdkafka program
learns the key's latest offset the way it learned the state it decided on: from the
records it consumed (each carries the offset of its key's previous record in the
`cairn.prev-key-offset` header).

Kafka producers pack unrelated records of one partition into one batch, and a batch is
appended or refused as a whole, so a conditional write should travel alone. The settings
below do that: one message per batch (batch.num.messages=1), nothing held back for
batching (linger.ms=0), and a flush per write so each delivery report is read before the
next write is decided. Idempotence stays on: a retried conditional write that was already
appended is answered with its original offset, not with a conflict against itself.

Usage: conditional_produce.py BOOTSTRAP TOPIC SEAT PASSENGER
Prints "booked <seat> at <partition>/<offset>" or "taken <seat>"; exits 0 or 3.
"""

import sys

from confluent_kafka import KafkaError, Producer

CONDITIONAL_PRODUCER = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 0,
    "batch.num.messages": 1,
    # Route keys exactly as Cairn's native clients do (Kafka's murmur2, like the Java client).
    "partitioner": "murmur2_random",
}


def book(bootstrap: str, topic: str, seat: str, passenger: str) -> int:
    producer = Producer({"bootstrap.servers": bootstrap, **CONDITIONAL_PRODUCER})
    outcome = {}

    def report(error, message):
        outcome["error"], outcome["message"] = error, message

    producer.produce(
        topic,
        key=seat.encode(),
        value=passenger.encode(),
        headers=[("cairn.expect", b"no-key")],
        on_delivery=report,
    )
    producer.flush(30)
    error, message = outcome["error"], outcome["message"]
    if error is None:
        print(f"booked {seat} at {message.partition()}/{message.offset()}")
        return 0
    if error.code() == KafkaError.INVALID_RECORD:
        print(f"taken {seat}")
        return 3
    print(f"failed: {error}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    sys.exit(book(*sys.argv[1:]))
