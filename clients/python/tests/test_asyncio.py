"""The asyncio client: every request kind it shares with the blocking one, under 64
concurrent tasks on one client."""

from __future__ import annotations

import asyncio

import pytest

from cairn import (
    AsyncClient,
    Conflict,
    ConnectionLost,
    KeyCondition,
    OffsetOutOfRange,
    PartitionOffset,
    Record,
)
from conftest import Server


def test_64_concurrent_tasks_book_seats_without_double_booking(server: Server, topic: str) -> None:
    async def scenario() -> None:
        async with AsyncClient(server.host, server.port) as client:
            await client.ping()
            await client.create_topic(topic, 4)
            seats = [f"seat-{index}".encode() for index in range(16)]
            won: list[tuple[bytes, int]] = []
            conflicts = 0

            async def task(number: int) -> None:
                nonlocal conflicts
                for round_ in range(10):
                    seat = seats[(number + round_) % len(seats)]
                    try:
                        appended = await client.append_one(
                            topic, seat, f"task-{number}".encode(), condition=KeyCondition.no_key()
                        )
                        won.append((seat, appended.base_offset))
                    except Conflict as conflict:
                        assert conflict.current_offset is not None
                        conflicts += 1

            await asyncio.gather(*(task(number) for number in range(64)))
            # Each seat went to exactly one task.
            assert sorted(seat for seat, _ in won) == sorted(seats)
            assert conflicts == 64 * 10 - len(seats)
            for seat, offset in won:
                read = await client.read_key(topic, seat)
                assert read.record is not None and read.record.offset == offset
                history = await client.key_history(topic, seat)
                assert len(history.records) == 1 and history.next_offset is None

            metadata = await client.metadata()
            total = 0
            for partition in metadata.topics[topic].partitions:
                fetched = await client.fetch(topic, partition.partition, 0)
                total += len(fetched.records)
            assert total == len(seats)

            batch = await client.append(
                topic, [Record(b"x", b"1"), Record(b"x", b"2")], partition=0
            )
            assert batch.record_count == 2
            await client.commit_offsets("g", topic, [PartitionOffset(0, 3)])
            assert [o.offset for o in await client.fetch_offsets("g", topic, [0])] == [3]
            assert (await client.init_producer()).producer_id >= 0

            # A fetch past the synced end is answered at once, with the end in the message.
            with pytest.raises(OffsetOutOfRange):
                await client.fetch(topic, 3, 10_000)

    asyncio.run(scenario())


def test_asyncio_long_poll_wakes_up(server: Server, topic: str) -> None:
    async def scenario() -> None:
        async with AsyncClient(server.host, server.port) as client:
            await client.create_topic(topic, 1)
            waiting = asyncio.ensure_future(client.fetch(topic, 0, 0, wait_ms_max=20_000))
            await asyncio.sleep(0.2)
            assert not waiting.done()
            await client.append_one(topic, b"k", b"wake", partition=0)
            fetched = await asyncio.wait_for(waiting, 15)
            assert [r.value for r in fetched.records] == [b"wake"]

    asyncio.run(scenario())


def test_asyncio_client_reconnects_after_kill_and_restart(server: Server, topic: str) -> None:
    async def before() -> tuple[AsyncClient, "asyncio.Future[object]", int]:
        client = AsyncClient(server.host, server.port)
        await client.create_topic(topic, 2)
        appended = await client.append_one(topic, b"k", b"before", partition=1)
        parked: asyncio.Future[object] = asyncio.ensure_future(
            client.fetch(topic, 0, 0, wait_ms_max=15_000)
        )
        await asyncio.sleep(0.2)
        return client, parked, appended.base_offset

    async def scenario() -> None:
        client, parked, offset = await before()
        port = server.port
        server.kill()
        with pytest.raises(ConnectionLost):
            await asyncio.wait_for(parked, 10)
        server.start(port)
        # The shard ports moved: the client finds the partition again through the
        # bootstrap port and fresh metadata.
        read = await client.read_key(topic, b"k", partition=1)
        assert read.record is not None and read.record.offset == offset
        again = await client.append_one(topic, b"k", b"after", partition=1)
        assert again.base_offset == offset + 1
        await client.close()

    asyncio.run(scenario())
