"""Every request kind against a real server, through the blocking client."""

from __future__ import annotations

import threading
import time

import pytest

from cairn import (
    BadRequest,
    Client,
    ConditionKind,
    Conflict,
    ConflictKind,
    InvalidConfig,
    KeyCondition,
    PartitionOffset,
    Record,
    TopicExists,
    UnknownPartition,
    UnknownTopic,
    partition_for_key,
)
from conftest import Server


def test_ping_create_topic_and_metadata(server: Server, topic: str) -> None:
    with Client(server.host, server.port) as client:
        client.ping()
        created = client.create_topic(topic, 4)
        assert created.name == topic
        assert [p.partition for p in created.partitions] == [0, 1, 2, 3]
        metadata = client.metadata()
        assert list(metadata.shard_ports) == list(server.shard_ports)
        info = metadata.topics[topic]
        assert {p.port for p in info.partitions} <= set(server.shard_ports)
        with pytest.raises(TopicExists):
            client.create_topic(topic, 4)
        with pytest.raises(BadRequest):
            client.create_topic("bad/name", 1)


def test_create_topic_with_retention_and_see_it_in_metadata(server: Server, topic: str) -> None:
    with Client(server.host, server.port) as client:
        created = client.create_topic(topic, 2, retention_ms=86_400_000)
        assert (created.retention_ms, created.retention_bytes) == (86_400_000, None)
        plain = client.create_topic(topic + "-plain", 1)
        assert (plain.retention_ms, plain.retention_bytes) == (None, None)
        info = client.metadata().topics[topic]
        assert (info.retention_ms, info.retention_bytes) == (86_400_000, None)
        with pytest.raises(InvalidConfig):
            client.create_topic(topic + "-zero", 1, retention_bytes=0)
        assert topic + "-zero" not in client.metadata().topics

        # A limit left out stays; -1 removes one; 0 changes nothing.
        altered = client.alter_topic(topic, retention_bytes=1 << 30)
        assert (altered.retention_ms, altered.retention_bytes) == (86_400_000, 1 << 30)
        altered = client.alter_topic(topic, retention_ms=-1)
        assert (altered.retention_ms, altered.retention_bytes) == (None, 1 << 30)
        with pytest.raises(InvalidConfig):
            client.alter_topic(topic, retention_ms=0)
        info = client.metadata().topics[topic]
        assert (info.retention_ms, info.retention_bytes) == (None, 1 << 30)


def test_append_and_fetch_round_trip(server: Server, topic: str) -> None:
    with Client(server.host, server.port) as client:
        client.create_topic(topic, 2)
        records = [
            Record(b"k1", b"v1"),
            Record(b"", b""),
            Record(b"k1", b"v" * 1000, headers=[(b"event-type", b"SeatBooked"), (b"e", b"")]),
        ]
        appended = client.append(topic, records, partition=1)
        assert (appended.partition, appended.base_offset, appended.record_count) == (1, 0, 3)
        assert not appended.duplicate
        fetched = client.fetch(topic, 1, 0)
        assert fetched.synced_end == 3
        assert [(r.offset, r.key, r.value) for r in fetched.records] == [
            (0, b"k1", b"v1"),
            (1, b"", b""),
            (2, b"k1", b"v" * 1000),
        ]
        assert fetched.records[2].headers == [(b"event-type", b"SeatBooked"), (b"e", b"")]
        assert fetched.records[2].prev_key_offset == 0
        assert fetched.records[0].prev_key_offset is None
        assert fetched.records[0].timestamp_ms > 1_600_000_000_000
        assert client.fetch(topic, 1, 2).records[0].offset == 2
        with pytest.raises(UnknownPartition):
            client.fetch(topic, 7, 0)
        with pytest.raises(UnknownTopic):
            client.append(topic + "-missing", [Record(b"k", b"v")], partition=0)


def test_key_routed_append_lands_on_the_hashed_partition(server: Server, topic: str) -> None:
    with Client(server.host, server.port) as client:
        client.create_topic(topic, 8)
        for index in range(20):
            key = f"seat-{index}".encode()
            appended = client.append_one(topic, key, b"x")
            assert appended.partition == partition_for_key(key, 8)
            read = client.read_key(topic, key)
            assert read.partition == appended.partition
            assert read.record is not None and read.record.offset == appended.base_offset


def test_conflicts_carry_the_current_offsets(server: Server, topic: str) -> None:
    with Client(server.host, server.port) as client:
        client.create_topic(topic, 1)
        client.append(topic, [Record(b"a", b"1"), Record(b"b", b"1")], partition=0)
        with pytest.raises(Conflict) as end_offset:
            client.append(topic, [Record(b"c", b"1")], partition=0, expected_end_offset=5)
        assert end_offset.value.kind == ConflictKind.END_OFFSET
        assert end_offset.value.current_offset == 2
        assert end_offset.value.record_index == 0
        assert end_offset.value.condition is None

        with pytest.raises(Conflict) as no_key:
            client.append(
                topic,
                [Record(b"c", b"1"), Record(b"a", b"2", condition=KeyCondition.no_key())],
                partition=0,
            )
        assert no_key.value.kind == ConflictKind.KEY
        assert no_key.value.record_index == 1
        assert no_key.value.condition == KeyCondition.no_key()
        assert no_key.value.current_offset == 0

        with pytest.raises(Conflict) as at:
            client.append_one(topic, b"b", b"2", condition=KeyCondition.at(0), partition=0)
        assert at.value.condition == KeyCondition(ConditionKind.AT, 0)
        assert at.value.current_offset == 1

        with pytest.raises(Conflict) as exists:
            client.append_one(topic, b"z", b"2", condition=KeyCondition.key_exists(), partition=0)
        assert exists.value.current_offset is None

        # Nothing of the rejected batches was appended; the right conditions pass.
        ok = client.append(
            topic,
            [
                Record(b"b", b"2", condition=KeyCondition.at(1)),
                Record(b"z", b"1", condition=KeyCondition.no_key()),
                Record(b"a", b"3", condition=KeyCondition.key_exists()),
                Record(b"q", b"1", condition=KeyCondition.any()),
            ],
            partition=0,
            expected_end_offset=2,
        )
        assert (ok.base_offset, ok.record_count) == (2, 4)


def test_read_key_and_include_appended(server: Server, topic: str) -> None:
    with Client(server.host, server.port) as client:
        client.create_topic(topic, 3)
        assert client.read_key(topic, b"nobody").record is None
        client.append_one(topic, b"seat", b"one")
        second = client.append_one(topic, b"seat", b"two")
        for include_appended in (False, True):
            read = client.read_key(topic, b"seat", include_appended=include_appended)
            assert read.record is not None
            assert read.record.value == b"two"
            assert read.record.offset == second.base_offset


def test_key_history_pages_and_iterator(server: Server, topic: str) -> None:
    with Client(server.host, server.port) as client:
        client.create_topic(topic, 1)
        for index in range(25):
            client.append(topic, [Record(b"k", str(index).encode()), Record(b"other", b"")])
        page = client.key_history(topic, b"k", record_count_max=10)
        assert [r.value for r in page.records] == [str(i).encode() for i in range(24, 14, -1)]
        assert page.next_offset == page.records[-1].prev_key_offset
        last = client.key_history(topic, b"k", record_count_max=1000)
        assert len(last.records) == 25 and last.next_offset is None


def test_key_history_continues_from_offset(server: Server, topic: str) -> None:
    """Expects the server to honour KeyHistory.from_offset (the `contract` branch adds
    it); the server on main before that answers from the latest record again."""
    with Client(server.host, server.port) as client:
        client.create_topic(topic, 1)
        for index in range(6):
            client.append_one(topic, b"k", str(index).encode(), partition=0)
        first = client.key_history(topic, b"k", record_count_max=2)
        assert [r.value for r in first.records] == [b"5", b"4"]
        assert first.next_offset == 3
        second = client.key_history(topic, b"k", record_count_max=2, from_offset=first.next_offset)
        assert [r.value for r in second.records] == [b"3", b"2"]
        everything = list(client.iter_key_history(topic, b"k", page_size=4))
        assert [r.value for r in everything] == [str(i).encode() for i in range(5, -1, -1)]


def test_fetch_long_poll_is_woken_by_an_append(server: Server, topic: str) -> None:
    with Client(server.host, server.port) as reader, Client(server.host, server.port) as writer:
        reader.create_topic(topic, 1)
        started = time.monotonic()
        waiting = reader.submit_fetch(topic, 0, 0, wait_ms_max=20_000)
        # The fetch is parked on the server: nothing to read yet.
        time.sleep(0.2)
        writer.append_one(topic, b"k", b"wake", partition=0)
        fetched = waiting.result()
        assert [r.value for r in fetched.records] == [b"wake"]
        # Woken by the append, not by the 20 s limit.
        assert time.monotonic() - started < 15


def test_producer_ids_and_consumer_offsets(server: Server, topic: str) -> None:
    with Client(server.host, server.port) as client:
        client.create_topic(topic, 3)
        first = client.init_producer()
        second = client.init_producer()
        assert first.producer_id != second.producer_id
        client.commit_offsets(
            "group-a", topic, [PartitionOffset(0, 17, "meta"), PartitionOffset(2, 4)]
        )
        offsets = client.fetch_offsets("group-a", topic, [0, 1, 2])
        assert [(o.partition, o.offset, o.metadata) for o in offsets] == [
            (0, 17, "meta"),
            (1, None, ""),
            (2, 4, ""),
        ]


def test_pipelined_appends_from_threads(server: Server, topic: str) -> None:
    with Client(server.host, server.port) as client:
        client.create_topic(topic, 4)
        results: list[int] = []
        lock = threading.Lock()

        def work(worker: int) -> None:
            pendings = [
                client.submit_append(topic, [Record(f"{worker}-{i}".encode(), b"v")])
                for i in range(200)
            ]
            counts = [p.result().record_count for p in pendings]
            with lock:
                results.extend(counts)

        threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sum(results) == 800
        total = sum(client.fetch(topic, p, 0).synced_end for p in range(4))
        assert total == 800


def test_requests_go_to_the_owning_shards_port(server: Server, topic: str) -> None:
    with Client(server.host, server.port) as client:
        client.create_topic(topic, 4)
        info = client.metadata().topics[topic]
        owners = {p.port for p in info.partitions}
        for partition in range(4):
            client.append_one(topic, b"k", b"v", partition=partition)
        # One connection per owning shard (plus the bootstrap one for metadata).
        assert owners <= set(client._connections)
        assert len(owners) == 2, "a 4-partition topic spans both shards"
    # A client that is not shard-aware sends everything to the bootstrap port, which
    # forwards.
    with Client(server.host, server.port, shard_aware=False) as client:
        for partition in range(4):
            assert client.append_one(topic, b"k", b"w", partition=partition).base_offset == 1
        assert set(client._connections) == {server.port}
