"""Which port a request goes to: the owning shard's, from the cached Metadata."""

from __future__ import annotations

from .keyhash import partition_for_key
from .types import ClusterMetadata, TopicInfo


class Routing:
    """The metadata cache both clients share. A request for a topic the cache does not
    know goes to the bootstrap port, whose shard forwards it."""

    def __init__(self, bootstrap_port: int) -> None:
        self.bootstrap_port = bootstrap_port
        self.metadata: ClusterMetadata | None = None

    def topic(self, topic: str) -> TopicInfo | None:
        if self.metadata is None:
            return None
        return self.metadata.topics.get(topic)

    def partition(self, topic: str, partition: int | None, key: bytes) -> int | None:
        if partition is not None:
            return partition
        info = self.topic(topic)
        if info is None or info.partition_count == 0:
            return None
        return partition_for_key(key, info.partition_count)

    def port(self, topic: str, partition: int | None, key: bytes) -> int:
        info = self.topic(topic)
        resolved = self.partition(topic, partition, key)
        if info is None or resolved is None or resolved >= info.partition_count:
            return self.bootstrap_port
        return info.partitions[resolved].port

    def forget(self) -> None:
        """After a shard port refused a connection: the server may have restarted on
        other ports."""
        self.metadata = None
