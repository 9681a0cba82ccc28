"""Committed offsets of a consumer group, by a consumer that assign()s its partition (no
subscribe, so no group membership: Kafka's "simple consumer" commit, generation -1).

    python3 group_offsets.py CLIENT consume BOOTSTRAP GROUP TOPIC PARTITION COUNT
        assign() the partition with no explicit offset (so it starts at the group's
        committed offset, or at the earliest with none), read COUNT records, commit
        synchronously, then print {"offsets": [each record's offset], "committed": the
        group's committed offset as the client reads it back, "metadata"}.
    python3 group_offsets.py CLIENT commit BOOTSTRAP GROUP TOPIC PARTITION OFFSET METADATA
        Commit OFFSET with METADATA explicitly, synchronously; print {"committed",
        "metadata"} as read back.
    python3 group_offsets.py CLIENT committed BOOTSTRAP GROUP TOPIC PARTITION
        Print {"committed": the committed offset or null, "metadata"}.

CLIENT is "confluent" (confluent-kafka, librdkafka) or "kafka-python". Errors end the
script with a traceback and a non-zero status.
"""

import json
import sys
import time

TIMEOUT_S = 15


def emit(value):
    print(json.dumps(value), flush=True)


class Confluent:
    def __init__(self, bootstrap, group):
        from confluent_kafka import Consumer

        self.consumer = Consumer({
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": True,
            "auto.offset.reset": "earliest",
        })

    def partition(self, topic, partition, offset=None, metadata=None):
        from confluent_kafka import TopicPartition

        if offset is None:
            return TopicPartition(topic, partition)
        return TopicPartition(topic, partition, offset, metadata=metadata)

    def assign(self, topic, partition):
        self.consumer.assign([self.partition(topic, partition)])

    def read(self, count):
        offsets = []
        deadline = time.monotonic() + TIMEOUT_S
        while len(offsets) < count and time.monotonic() < deadline:
            message = self.consumer.poll(1.0)
            if message is None:
                continue
            if message.error():
                raise RuntimeError(str(message.error()))
            offsets.append(message.offset())
        return offsets

    def commit_position(self):
        self.consumer.commit(asynchronous=False)

    def commit(self, topic, partition, offset, metadata):
        self.consumer.commit(offsets=[self.partition(topic, partition, offset, metadata)],
                             asynchronous=False)

    def committed(self, topic, partition):
        # librdkafka copies a committed offset's metadata by its length, without a NUL, and
        # confluent-kafka-python 2.16 then reads it as a C string: the bytes after it in the
        # heap (usually a 0) come along, and now and then one breaks UTF-8 decoding (seen
        # once: 0xae at position 11 of "cairn fetch", the byte just past its end; compare
        # librdkafka issue 4649). The server sent 11 bytes; ask again rather than fail on
        # the client's read past them.
        for attempt in range(5):
            [committed] = self.consumer.committed([self.partition(topic, partition)],
                                                  timeout=TIMEOUT_S)
            if committed.error:
                raise RuntimeError(str(committed.error))
            try:
                metadata = committed.metadata
            except UnicodeDecodeError:
                if attempt == 4:
                    raise
                continue
            # librdkafka reports "no committed offset" as OFFSET_INVALID (-1001).
            offset = committed.offset if committed.offset >= 0 else None
            return offset, metadata

    def close(self):
        self.consumer.close()


class KafkaPython:
    def __init__(self, bootstrap, group):
        from kafka import KafkaConsumer

        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            request_timeout_ms=TIMEOUT_S * 1000,
        )

    def assign(self, topic, partition):
        from kafka import TopicPartition

        self.consumer.assign([TopicPartition(topic, partition)])

    def read(self, count):
        offsets = []
        deadline = time.monotonic() + TIMEOUT_S
        while len(offsets) < count and time.monotonic() < deadline:
            batches = self.consumer.poll(timeout_ms=1000, max_records=count - len(offsets))
            for records in batches.values():
                offsets.extend(record.offset for record in records)
        return offsets

    def commit_position(self):
        self.consumer.commit()

    def commit(self, topic, partition, offset, metadata):
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        self.consumer.commit({TopicPartition(topic, partition):
                              OffsetAndMetadata(offset, metadata, -1)})

    def committed(self, topic, partition):
        from kafka import TopicPartition

        committed = self.consumer.committed(TopicPartition(topic, partition), metadata=True)
        if committed is None:
            return None, None
        return committed.offset, committed.metadata

    def close(self):
        self.consumer.close(autocommit=False)


def main():
    client_name, mode, bootstrap, group, topic, partition, *rest = sys.argv[1:]
    partition = int(partition)
    client = {"confluent": Confluent, "kafka-python": KafkaPython}[client_name](bootstrap, group)
    if mode == "consume":
        [count] = rest
        client.assign(topic, partition)
        offsets = client.read(int(count))
        client.commit_position()
        committed, metadata = client.committed(topic, partition)
        emit({"offsets": offsets, "committed": committed, "metadata": metadata})
    elif mode == "commit":
        offset, metadata = rest
        client.commit(topic, partition, int(offset), metadata)
        committed, metadata = client.committed(topic, partition)
        emit({"committed": committed, "metadata": metadata})
    elif mode == "committed":
        committed, metadata = client.committed(topic, partition)
        emit({"committed": committed, "metadata": metadata})
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    client.close()


if __name__ == "__main__":
    main()
