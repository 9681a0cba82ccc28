"""A kafka-python group consumer (subscribe) that reads, commits and leaves.

    python3 kafka_python_group.py BOOTSTRAP GROUP TOPIC COUNT

Joins GROUP subscribed to TOPIC, reads from the group's committed offsets (earliest where
there are none) until it has COUNT records, commits, for each partition it read, the
offset after its last record of those COUNT (synchronously), closes (LeaveGroup) and
prints one line {"records": [[partition, offset, key], ...]}. Records fetched beyond the
COUNT are not reported nor committed: the next consumer of the group reads them. Errors
end the script with a traceback and a non-zero status.
"""

import json
import sys
import time

from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata

TIMEOUT_S = 15


def main():
    bootstrap, group, topic, count = sys.argv[1:]
    count = int(count)
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        heartbeat_interval_ms=200,
        session_timeout_ms=6000,
        max_poll_interval_ms=20000,
    )
    records = []
    deadline = time.monotonic() + TIMEOUT_S
    while len(records) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(records)} of {count} records in {TIMEOUT_S} s")
        for partition_records in consumer.poll(timeout_ms=200).values():
            for record in partition_records:
                if len(records) < count:
                    records.append([record.partition, record.offset, record.key.decode()])
    next_offsets = {}
    for partition, offset, _ in records:
        next_offsets[partition] = max(next_offsets.get(partition, 0), offset + 1)
    consumer.commit({
        TopicPartition(topic, partition): OffsetAndMetadata(offset, "", -1)
        for partition, offset in next_offsets.items()
    })
    consumer.close()
    print(json.dumps({"records": records}), flush=True)


if __name__ == "__main__":
    main()
