"""Produces records read from stdin with confluent-kafka (librdkafka), one at a time.

    python3 confluent_produce.py BOOTSTRAP TOPIC [librdkafka key=value ...]

Each stdin line is a JSON object {"key": str, "value": str, "headers": {name: value},
"partition": int (optional)}. Each record is produced and flushed before the next line is
read, with one request in flight and no linger, so a conditional record (a cairn.expect
header) is alone in its request and its delivery report is its own verdict. For each line,
one JSON line on stdout: {"key", "ok": true, "partition", "offset"} or {"key", "ok": false,
"error_code": the librdkafka error name, "error": its message}. First line on stdout:
{"event": "ready"} once the topic's metadata has been read, so a caller can start several
producers and release them together. Exit status 0 unless the script itself breaks.
"""

import json
import sys

from confluent_kafka import Producer

FLUSH_TIMEOUT_S = 15.0


def main():
    bootstrap, topic, *overrides = sys.argv[1:]
    config = {
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "linger.ms": 0,
        "max.in.flight.requests.per.connection": 1,
        # A resent conditional record could fail on its own first copy; a test sees every
        # failure instead.
        "retries": 0,
        "enable.idempotence": False,
        "message.timeout.ms": 10000,
    }
    for override in overrides:
        name, value = override.split("=", 1)
        config[name] = value
    producer = Producer(config)
    producer.list_topics(topic, timeout=10)
    emit({"event": "ready"})

    for line in sys.stdin:
        request = json.loads(line)
        reports = []

        def on_delivery(error, message, reports=reports):
            reports.append((error, message))

        keyword = {}
        if request.get("partition") is not None:
            keyword["partition"] = request["partition"]
        producer.produce(
            topic,
            key=request["key"].encode(),
            value=request["value"].encode(),
            headers=[(name, value.encode()) for name, value in request.get("headers", {}).items()],
            on_delivery=on_delivery,
            **keyword,
        )
        remaining = producer.flush(FLUSH_TIMEOUT_S)
        if remaining or not reports:
            emit({"key": request["key"], "ok": False, "error_code": "_FLUSH_TIMEOUT",
                  "error": f"no delivery report within {FLUSH_TIMEOUT_S} s"})
            continue
        error, message = reports[0]
        if error is None:
            emit({"key": request["key"], "ok": True, "partition": message.partition(),
                  "offset": message.offset()})
        else:
            emit({"key": request["key"], "ok": False, "error_code": error.name(),
                  "error": error.str()})


def emit(result):
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
