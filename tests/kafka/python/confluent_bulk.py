"""Produces COUNT records of SIZE bytes as fast as librdkafka's default batching allows.

    python3 confluent_bulk.py BOOTSTRAP TOPIC COUNT SIZE [librdkafka key=value ...]

Only the bootstrap address, acks=all, a delivery timeout and the overrides given are
set: batch.size and batch.num.messages keep librdkafka's defaults. Prints one JSON line: {"delivered": n, "failed": n, "errors": [first few]}.
"""

import json
import sys

from confluent_kafka import Producer


def main():
    bootstrap, topic, count, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    config = {"bootstrap.servers": bootstrap, "acks": "all", "message.timeout.ms": 30000}
    for override in sys.argv[5:]:
        name, value = override.split("=", 1)
        config[name] = value
    producer = Producer(config)
    outcome = {"delivered": 0, "failed": 0, "errors": []}

    def on_delivery(error, _message):
        if error is None:
            outcome["delivered"] += 1
        else:
            outcome["failed"] += 1
            if len(outcome["errors"]) < 5:
                outcome["errors"].append(error.name())

    value = b"v" * size
    for index in range(count):
        while True:
            try:
                producer.produce(topic, key=str(index).encode(), value=value, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    producer.flush(60)
    print(json.dumps(outcome), flush=True)


if __name__ == "__main__":
    main()
