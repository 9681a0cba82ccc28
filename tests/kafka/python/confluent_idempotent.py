"""An idempotent confluent-kafka producer writing a numbered sequence until told to stop.

    python3 confluent_idempotent.py BOOTSTRAP TOPIC KEY_COUNT [librdkafka key=value ...]

Produces values "0", "1", "2", ... on keys "key-(n % KEY_COUNT)", at most IN_FLIGHT_MAX
unacknowledged at a time, with enable.idempotence=true (acks=all, librdkafka's retries),
until stdin is closed; then flushes and exits. So the caller can SIGKILL and restart the
server mid-stream and decide when enough has been acknowledged. One JSON line on stdout per
delivery report: {"seq", "ok": true, "partition", "offset"} or {"seq", "ok": false,
"error_code", "error"}; each error librdkafka reports on the way (a timed-out request, a
lost connection) is {"event": "error", "error_code", "error"}, a fatal one
{"event": "fatal", "error"}; the last line is {"event": "done", "produced": count,
"unflushed": count}.
"""

import json
import sys
import threading

from confluent_kafka import Producer

IN_FLIGHT_MAX = 200


def main():
    bootstrap, topic, key_count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    overrides = dict(override.split("=", 1) for override in sys.argv[4:])
    stop = threading.Event()

    def wait_for_eof():
        sys.stdin.read()
        stop.set()

    threading.Thread(target=wait_for_eof, daemon=True).start()

    fatal = []

    def on_error(error):
        if error.fatal():
            fatal.append(error)
        else:
            emit({"event": "error", "error_code": error.name(), "error": error.str()})

    config = {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        # Long enough to ride out a restart: librdkafka keeps retrying until then.
        "message.timeout.ms": 60000,
        "retry.backoff.ms": 50,
        "reconnect.backoff.max.ms": 200,
        "error_cb": on_error,
    }
    config.update(overrides)
    producer = Producer(config)
    in_flight = [0]

    def on_delivery(error, message):
        in_flight[0] -= 1
        seq = int(message.value())
        if error is None:
            emit({"seq": seq, "ok": True, "partition": message.partition(),
                  "offset": message.offset()})
        else:
            emit({"seq": seq, "ok": False, "error_code": error.name(), "error": error.str()})

    produced = 0
    while not stop.is_set() and not fatal:
        if in_flight[0] >= IN_FLIGHT_MAX:
            producer.poll(0.05)
            continue
        try:
            producer.produce(topic, key=f"key-{produced % key_count}".encode(),
                             value=str(produced).encode(), on_delivery=on_delivery)
        except BufferError:
            producer.poll(0.05)
            continue
        in_flight[0] += 1
        produced += 1
        producer.poll(0)
    unflushed = producer.flush(60)
    for error in fatal:
        emit({"event": "fatal", "error": error.str()})
    emit({"event": "done", "produced": produced, "unflushed": unflushed})


def emit(result):
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
