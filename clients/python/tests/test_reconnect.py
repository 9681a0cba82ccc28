"""Crashes: kill -9 the server with calls in flight, restart it on the same data
directory, and go on with the same client."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from cairn import (
    Appended,
    Client,
    ConnectError,
    ConnectionLost,
    IdempotentProducer,
    OutcomeUnknown,
    OutOfOrderSequence,
    ProducerStamp,
    Record,
)
from conftest import Server


def test_kill_and_restart_loses_no_acknowledged_append(server: Server, topic: str) -> None:
    client = Client(server.host, server.port, timeout=20)
    client.create_topic(topic, 2)
    acknowledged: list[tuple[int, int, bytes]] = []
    unknown: list[OutcomeUnknown] = []
    stop = threading.Event()

    def produce() -> None:
        sequence = 0
        while not stop.is_set():
            window = []
            for _ in range(32):
                value = str(sequence).encode()
                sequence += 1
                try:
                    window.append((value, client.submit_append(topic, [Record(value, value)])))
                except OutcomeUnknown as error:
                    unknown.append(error)
                except ConnectError:
                    # The server is down: nothing more to send until the test restarts it.
                    stop.set()
                    break
            for value, pending in window:
                try:
                    appended = pending.result()
                    acknowledged.append((appended.partition, appended.base_offset, value))
                except OutcomeUnknown as error:
                    unknown.append(error)

    # A long poll that is surely in flight when the server dies: at the synced end of a
    # topic nobody writes (a fetch past the synced end is answered at once, OffsetOutOfRange).
    quiet = topic + "-quiet"
    client.create_topic(quiet, 1)
    parked = client.submit_fetch(quiet, 0, 0, wait_ms_max=15_000)
    producer = threading.Thread(target=produce)
    producer.start()
    deadline = time.monotonic() + 20
    while len(acknowledged) < 200:
        assert time.monotonic() < deadline and producer.is_alive(), "appends are acknowledged"
        time.sleep(0.01)
    port = server.port
    server.kill()
    with pytest.raises(ConnectionLost):
        parked.result()
    stop.set()
    producer.join()
    # The appends in flight at the kill (usually some of a window of 32) failed as
    # OutcomeUnknown, never as another error: the except clauses above let nothing else by.
    assert all(isinstance(error, OutcomeUnknown) for error in unknown)

    server.start(port)
    # The same client reconnects (the shard ports moved; it finds them again).
    client.ping()
    stored: dict[tuple[int, int], bytes] = {}
    for partition in range(2):
        offset = 0
        while True:
            fetched = client.fetch(topic, partition, offset)
            for record in fetched.records:
                stored[(partition, record.offset)] = record.value
            offset = fetched.synced_end if not fetched.records else fetched.records[-1].offset + 1
            if offset >= fetched.synced_end:
                break
    for partition, offset, value in acknowledged:
        assert stored.get((partition, offset)) == value
    client.append_one(topic, b"after", b"restart")
    client.close()


def test_a_resent_stamp_is_a_duplicate_across_restart(server: Server, topic: str) -> None:
    client = Client(server.host, server.port)
    client.create_topic(topic, 1)
    producer_id = client.init_producer()
    stamp = ProducerStamp(producer_id.producer_id, producer_id.epoch, 0)
    records = [Record(b"k", b"1"), Record(b"k", b"2")]
    first = client.append(topic, records, partition=0, producer=stamp)
    port = server.port
    server.kill()
    server.start(port)
    again = client_retry(client, lambda: client.append(topic, records, partition=0, producer=stamp))
    assert again.duplicate and again.base_offset == first.base_offset
    with pytest.raises(OutOfOrderSequence):
        client.append(
            topic,
            records,
            partition=0,
            producer=ProducerStamp(producer_id.producer_id, producer_id.epoch, 7),
        )
    # The producer keeps per-partition sequences itself.
    producer = IdempotentProducer(client)
    one = producer.append(topic, [Record(b"p", b"1")])
    two = producer.append(topic, [Record(b"p", b"2"), Record(b"p", b"3")])
    assert (one.partition, two.base_offset) == (0, one.base_offset + 1)
    assert client.fetch(topic, 0, 0).synced_end == 5
    client.close()


def client_retry(client: Client, attempt: Callable[[], Appended]) -> Appended:
    """The first call after the restart may meet the dead connection."""
    try:
        return attempt()
    except OutcomeUnknown:
        return attempt()

