"""kafka-python against a Cairn Kafka listener: produce, long-poll fetch, offsets by time.

    python3 kafka_python_client.py produce BOOTSTRAP TOPIC
        stdin: JSON lines {"key", "value", "timestamp_ms" (optional), "partition" (optional)};
        stdout: per record {"key", "partition", "offset", "timestamp_ms"}, the default
        partitioner choosing the partition when none is given.
    python3 kafka_python_client.py conditional BOOTSTRAP TOPIC
        stdin: JSON lines {"key", "value", "headers": {name: value}}; stdout: per record
        {"key", "ok": true, "partition", "offset"} or {"key", "ok": false, "error_code":
        the Kafka error code, "error": the broker's message as kafka-python reports it}.
        Keys are routed by the default partitioner.
    python3 kafka_python_client.py long-poll BOOTSTRAP TOPIC PARTITION MAX_WAIT_MS
        Reads from the partition's end. Prints {"event": "idle_fetch", "latency_ms",
        "records"} once a fetch came back with nothing, then {"event": "waiting"}, then
        {"event": "received", "offset", "value", "waited_ms"} for the first record that
        arrives after that (the caller appends it).
    python3 kafka_python_client.py times BOOTSTRAP TOPIC PARTITION TIMESTAMP_MS...
        One line {"timestamp_ms", "offset" (null if none), "record_timestamp_ms"} per
        target: offsets_for_times (ListOffsets by timestamp).
"""

import json
import sys
import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

TIMEOUT_S = 15


def produce(bootstrap, topic):
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0,
                             request_timeout_ms=TIMEOUT_S * 1000)
    for line in sys.stdin:
        request = json.loads(line)
        metadata = producer.send(topic, key=request["key"].encode(),
                                 value=request["value"].encode(),
                                 partition=request.get("partition"),
                                 timestamp_ms=request.get("timestamp_ms")).get(timeout=TIMEOUT_S)
        emit({"key": request["key"], "partition": metadata.partition,
              "offset": metadata.offset, "timestamp_ms": metadata.timestamp})
    producer.close(timeout=TIMEOUT_S)


def conditional(bootstrap, topic):
    # One request per record, never resent: a resent conditional record could fail on its
    # own first copy. Idempotence would add nothing to records that are not retried.
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0, retries=0,
                             enable_idempotence=False, max_in_flight_requests_per_connection=1,
                             request_timeout_ms=TIMEOUT_S * 1000)
    for line in sys.stdin:
        request = json.loads(line)
        headers = [(name, value.encode()) for name, value in request.get("headers", {}).items()]
        future = producer.send(topic, key=request["key"].encode(),
                               value=request["value"].encode(), headers=headers)
        try:
            metadata = future.get(timeout=TIMEOUT_S)
        except KafkaError as error:
            emit({"key": request["key"], "ok": False,
                  "error_code": getattr(error, "errno", None), "error": str(error)})
            continue
        emit({"key": request["key"], "ok": True, "partition": metadata.partition,
              "offset": metadata.offset})
    producer.close(timeout=TIMEOUT_S)


def long_poll(bootstrap, topic, partition, max_wait_ms):
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             group_id=None, fetch_max_wait_ms=max_wait_ms,
                             request_timeout_ms=max_wait_ms + TIMEOUT_S * 1000)
    # The fetcher's own round-trip measurement is the only place kafka-python reports how
    # long one Fetch took (poll() hides it behind its own timeout), so the sensor it records
    # into is wrapped.
    latencies_ms = []
    sensors = consumer._fetcher._sensors

    class RecordingSensor:
        def __init__(self, sensor):
            self.sensor = sensor

        def record(self, value=1.0, time_ms=None):
            latencies_ms.append(value)
            self.sensor.record(value, time_ms)

    sensors.fetch_latency = RecordingSensor(sensors.fetch_latency)
    target = TopicPartition(topic, partition)
    consumer.assign([target])
    consumer.seek_to_end(target)
    deadline = time.monotonic() + TIMEOUT_S + max_wait_ms / 1000
    while not latencies_ms:
        assert time.monotonic() < deadline, "no fetch completed"
        records = consumer.poll(timeout_ms=100)
        assert not records, f"records on an idle partition: {records}"
    emit({"event": "idle_fetch", "latency_ms": latencies_ms[0], "records": 0})
    emit({"event": "waiting"})
    waiting_since = time.monotonic()
    while True:
        assert time.monotonic() < deadline + max_wait_ms / 1000, "nothing received"
        for message in consumer.poll(timeout_ms=100).get(target, []):
            emit({"event": "received", "offset": message.offset,
                  "value": message.value.decode(),
                  "waited_ms": (time.monotonic() - waiting_since) * 1000})
            consumer.close()
            return


def times(bootstrap, topic, partition, targets):
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             group_id=None)
    target = TopicPartition(topic, partition)
    for timestamp_ms in targets:
        found = consumer.offsets_for_times({target: timestamp_ms}, timeout_ms=TIMEOUT_S * 1000)
        entry = found.get(target)
        emit({"timestamp_ms": timestamp_ms,
              "offset": None if entry is None else entry.offset,
              "record_timestamp_ms": None if entry is None else entry.timestamp})
    consumer.close()


def emit(result):
    print(json.dumps(result), flush=True)


def main():
    mode, bootstrap, topic, *rest = sys.argv[1:]
    if mode == "produce":
        produce(bootstrap, topic)
    elif mode == "conditional":
        conditional(bootstrap, topic)
    elif mode == "long-poll":
        long_poll(bootstrap, topic, int(rest[0]), int(rest[1]))
    elif mode == "times":
        times(bootstrap, topic, int(rest[0]), [int(target) for target in rest[1:]])
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
