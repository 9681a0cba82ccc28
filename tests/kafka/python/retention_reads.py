"""Reads a partition whose oldest records retention removed, as Kafka consumers do.

    python3 retention_reads.py BOOTSTRAP TOPIC PARTITION

Prints one JSON object:
  "beginning": kafka-python's beginning_offsets (ListOffsets EARLIEST) for the partition;
  "reset_first": the offset of the first record a confluent-kafka consumer assigned at
    offset 0 with auto.offset.reset=earliest receives (it is told OFFSET_OUT_OF_RANGE and
    resets to the log start);
  "kafka_python_first": the same for a kafka-python consumer seeking to 0;
  "strict_error": the error a confluent-kafka consumer with auto.offset.reset=error gets
    at offset 0 (librdkafka's name for it).
Exit status 0 unless the script itself breaks.
"""

import json
import sys

from confluent_kafka import Consumer, KafkaException, TopicPartition
from kafka import KafkaConsumer
from kafka import TopicPartition as KafkaPythonPartition

POLL_TIMEOUT_S = 15.0


def first_offset_confluent(bootstrap, topic, partition, reset):
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "retention-reads",
            "enable.auto.commit": False,
            "auto.offset.reset": reset,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, partition, 0)])
        while True:
            message = consumer.poll(POLL_TIMEOUT_S)
            if message is None:
                return {"error": "no message within the timeout"}
            if message.error():
                return {"error": message.error().name()}
            return {"offset": message.offset()}
    except KafkaException as error:
        return {"error": error.args[0].name()}
    finally:
        consumer.close()


def main():
    bootstrap, topic, partition = sys.argv[1], sys.argv[2], int(sys.argv[3])
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=int(POLL_TIMEOUT_S * 1000),
    )
    kafka_partition = KafkaPythonPartition(topic, partition)
    beginning = consumer.beginning_offsets([kafka_partition])[kafka_partition]
    consumer.assign([kafka_partition])
    consumer.seek(kafka_partition, 0)
    kafka_python_first = None
    for message in consumer:
        kafka_python_first = message.offset
        break
    consumer.close()
    print(
        json.dumps(
            {
                "beginning": beginning,
                "reset_first": first_offset_confluent(bootstrap, topic, partition, "earliest"),
                "kafka_python_first": kafka_python_first,
                "strict_error": first_offset_confluent(bootstrap, topic, partition, "error"),
            }
        )
    )


if __name__ == "__main__":
    main()
