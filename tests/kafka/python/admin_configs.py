"""Kafka admin clients against a Cairn Kafka listener: topics' configs (retention).

    python3 admin_configs.py CLIENT BOOTSTRAP
        CLIENT is kafka-python or confluent. stdin: JSON lines, one operation each; stdout:
        one JSON line per operation, {"ok": true, ...} or {"ok": false, "error_code": the
        Kafka error code, "error": the broker's message as the client reports it}.

        {"op": "create", "topic", "partitions", "configs": {name: value}, "validate_only"}
        {"op": "describe", "topic"}: {"ok": true, "configs": {name: {"value", "read_only",
            "source"}}}, every config the broker reports for the topic.
        {"op": "alter", "topic", "configs": {name: value}, "validate_only"}: AlterConfigs
            (kafka-python only), which replaces the topic's whole config.
        {"op": "incremental", "topic", "set": {name: value}, "delete": [name],
            "validate_only"}: IncrementalAlterConfigs (confluent only).
"""

import json
import re
import sys

TIMEOUT_S = 15


def kafka_python_admin(bootstrap):
    from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic
    from kafka.errors import KafkaError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=TIMEOUT_S * 1000)

    def failure(error):
        return {"ok": False, "error_code": getattr(error, "errno", None), "error": str(error)}

    def check(result):
        # kafka-python reports each resource's outcome as text: "OK" or "[Error N] ...".
        for by_name in result.values():
            for outcome in by_name.values():
                match = re.match(r"\[Error (-?\d+)\] ", str(outcome))
                if match:
                    return {"ok": False, "error_code": int(match.group(1)),
                            "error": str(outcome)}
        return {"ok": True}

    def run(request):
        topic = request["topic"]
        try:
            if request["op"] == "create":
                new_topic = NewTopic(topic, request.get("partitions", 1), 1,
                                     topic_configs=request.get("configs", {}))
                admin.create_topics([new_topic], validate_only=request.get("validate_only", False))
                return {"ok": True}
            if request["op"] == "describe":
                resource = ConfigResource(ConfigResourceType.TOPIC, topic)
                result = admin.describe_configs([resource], config_filter="all")
                configs = result["topic"][topic]
                return {"ok": True, "configs": {
                    name: {"value": entry["value"], "read_only": entry["read_only"],
                           "source": str(entry.get("config_source", ""))}
                    for name, entry in configs.items()}}
            if request["op"] == "alter":
                resource = ConfigResource(ConfigResourceType.TOPIC, topic,
                                          configs=request["configs"])
                result = admin.alter_configs([resource], incremental=False,
                                             raise_on_unknown=False,
                                             validate_only=request.get("validate_only", False))
                return check(result)
            return {"ok": False, "error_code": None, "error": "unknown op"}
        except KafkaError as error:
            return failure(error)

    return run


def confluent_admin(bootstrap):
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry,
                                       ConfigResource, NewTopic)

    admin = AdminClient({"bootstrap.servers": bootstrap})

    def failure(error):
        kafka_error = error.args[0] if error.args else None
        code = kafka_error.code() if hasattr(kafka_error, "code") else None
        message = kafka_error.str() if hasattr(kafka_error, "str") else str(error)
        return {"ok": False, "error_code": code, "error": message}

    def run(request):
        topic = request["topic"]
        validate_only = request.get("validate_only", False)
        try:
            if request["op"] == "create":
                new_topic = NewTopic(topic, num_partitions=request.get("partitions", 1),
                                     replication_factor=1, config=request.get("configs", {}))
                futures = admin.create_topics([new_topic], validate_only=validate_only,
                                              request_timeout=TIMEOUT_S)
                futures[topic].result(timeout=TIMEOUT_S)
                return {"ok": True}
            if request["op"] == "describe":
                resource = ConfigResource("topic", topic)
                futures = admin.describe_configs([resource], request_timeout=TIMEOUT_S)
                configs = futures[resource].result(timeout=TIMEOUT_S)
                return {"ok": True, "configs": {
                    name: {"value": entry.value, "read_only": entry.is_read_only,
                           "source": str(entry.source)}
                    for name, entry in configs.items()}}
            if request["op"] == "incremental":
                entries = [ConfigEntry(name, value,
                                       incremental_operation=AlterConfigOpType.SET)
                           for name, value in request.get("set", {}).items()]
                entries += [ConfigEntry(name, None,
                                        incremental_operation=AlterConfigOpType.DELETE)
                            for name in request.get("delete", [])]
                resource = ConfigResource("topic", topic, incremental_configs=entries)
                futures = admin.incremental_alter_configs([resource],
                                                          validate_only=validate_only,
                                                          request_timeout=TIMEOUT_S)
                futures[resource].result(timeout=TIMEOUT_S)
                return {"ok": True}
            return {"ok": False, "error_code": None, "error": "unknown op"}
        except KafkaException as error:
            return failure(error)

    return run


def main():
    client, bootstrap = sys.argv[1], sys.argv[2]
    run = kafka_python_admin(bootstrap) if client == "kafka-python" else confluent_admin(bootstrap)
    for line in sys.stdin:
        print(json.dumps(run(json.loads(line))), flush=True)


if __name__ == "__main__":
    main()
