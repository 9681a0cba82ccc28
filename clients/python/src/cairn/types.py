"""What the client's calls take and return, as plain dataclasses."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .errors import KeyCondition


@dataclass(frozen=True, slots=True)
class Record:
    """One record to append. An empty key is a key like any other."""

    key: bytes = b""
    value: bytes = b""
    headers: Sequence[tuple[bytes, bytes]] = ()
    condition: KeyCondition | None = None


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A record as read back from a partition."""

    offset: int
    timestamp_ms: int
    key: bytes
    value: bytes
    headers: list[tuple[bytes, bytes]]
    #: Offset of the previous record with the same key; None for the key's first record.
    prev_key_offset: int | None


@dataclass(frozen=True, slots=True)
class Appended:
    """A synced append: records at base_offset .. base_offset + record_count."""

    partition: int
    base_offset: int
    record_count: int
    #: The append repeated a ProducerStamp already appended; nothing was appended again.
    duplicate: bool


@dataclass(frozen=True, slots=True)
class Fetched:
    partition: int
    records: list[StoredRecord]
    #: The offset the next synced record will get: caught up when the next offset equals it.
    synced_end: int


@dataclass(frozen=True, slots=True)
class KeyRead:
    partition: int
    #: The key's latest record; None when the key has none.
    record: StoredRecord | None


@dataclass(frozen=True, slots=True)
class KeyHistoryPage:
    partition: int
    #: Newest first.
    records: list[StoredRecord]
    #: Pass as from_offset for the next page; None when the key's first record was returned.
    next_offset: int | None


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    partition: int
    partition_id: int
    shard: int
    port: int


@dataclass(frozen=True, slots=True)
class TopicInfo:
    name: str
    #: In partition order.
    partitions: list[PartitionInfo]
    #: Retention (Kafka's retention.ms, retention.bytes); None: no limit. With both None
    #: (the default) the topic keeps its whole history.
    retention_ms: int | None = None
    retention_bytes: int | None = None

    @property
    def partition_count(self) -> int:
        return len(self.partitions)


@dataclass(frozen=True, slots=True)
class ClusterMetadata:
    #: Each shard's port, by shard number.
    shard_ports: list[int]
    topics: dict[str, TopicInfo] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ProducerId:
    producer_id: int
    epoch: int


@dataclass(frozen=True, slots=True)
class ProducerStamp:
    """Who sent an append, so that its retry is recognised (the schema's ProducerStamp)."""

    producer_id: int
    epoch: int
    base_sequence: int


@dataclass(frozen=True, slots=True)
class PartitionOffset:
    """One partition's committed offset (the next offset the group reads)."""

    partition: int
    offset: int
    metadata: str = ""


@dataclass(frozen=True, slots=True)
class CommittedOffset:
    partition: int
    #: None when the group has no committed offset for the partition.
    offset: int | None
    metadata: str
