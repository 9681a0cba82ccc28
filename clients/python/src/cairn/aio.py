"""The asyncio client: the same calls as cairn.Client, as coroutines. Any number of them
may run concurrently on one client; they share one connection per shard port, matched by
correlation id."""

from __future__ import annotations

import asyncio
import itertools
import struct
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TypeVar

from . import _protocol as protocol
from ._routing import Routing
from .client import RESPONSE_SIZE_BYTES_MAX
from .errors import (
    CairnError,
    ConnectError,
    ConnectionLost,
    ErrorCode,
    KeyCondition,
    ProtocolError,
    RequestTimeout,
    UnknownTopic,
)
from .types import (
    Appended,
    ClusterMetadata,
    CommittedOffset,
    Fetched,
    KeyHistoryPage,
    KeyRead,
    PartitionOffset,
    ProducerId,
    ProducerStamp,
    Record,
    StoredRecord,
    TopicInfo,
)

T = TypeVar("T")

_FRAME_LENGTH = struct.Struct("<I")


class _Connection(asyncio.Protocol):
    def __init__(self, port: int) -> None:
        self.port = port
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, asyncio.Future[protocol.Response]] = {}
        self.closed = False
        self._buffer = bytearray()
        self._can_write: asyncio.Event = asyncio.Event()
        self._can_write.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        try:
            while len(buffer) - start >= 4:
                (length,) = _FRAME_LENGTH.unpack_from(buffer, start)
                if length > RESPONSE_SIZE_BYTES_MAX:
                    raise ProtocolError(f"response frame of {length} bytes")
                if len(buffer) - start - 4 < length:
                    break
                response = protocol.Response(bytes(buffer[start + 4 : start + 4 + length]))
                start += 4 + length
                future = self.pending.pop(response.correlation_id, None)
                if future is not None and not future.done():
                    future.set_result(response)
        except ProtocolError as error:
            self.close(ConnectionLost(f"connection to port {self.port} closed: {error}"))
            return
        del buffer[:start]

    def connection_lost(self, exc: Exception | None) -> None:
        self.close(ConnectionLost(f"connection to port {self.port} lost: {exc or 'closed'}"))

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    async def send(self, correlation_id: int, frame: bytearray) -> asyncio.Future[protocol.Response]:
        if self.closed or self.transport is None:
            raise ConnectionLost(f"connection to port {self.port} is closed")
        future: asyncio.Future[protocol.Response] = asyncio.get_running_loop().create_future()
        self.pending[correlation_id] = future
        self.transport.write(frame)
        if not self._can_write.is_set():
            await self._can_write.wait()
        return future

    def close(self, error: CairnError) -> None:
        self.closed = True
        self._can_write.set()
        pending = list(self.pending.values())
        self.pending.clear()
        for future in pending:
            if not future.done():
                future.set_exception(error)
        if self.transport is not None:
            self.transport.close()


class AsyncClient:
    """The asyncio counterpart of cairn.Client (same routing, errors and reconnection)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 7878,
        *,
        timeout: float | None = 30.0,
        connect_timeout: float = 5.0,
        shard_aware: bool = True,
    ) -> None:
        self.host = host
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.shard_aware = shard_aware
        self._routing = Routing(port)
        self._connections: dict[int, _Connection] = {}
        self._connecting: dict[int, asyncio.Lock] = {}
        self._correlation_ids = itertools.count(1)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        connections = list(self._connections.values())
        self._connections.clear()
        for connection in connections:
            connection.close(ConnectionLost("the client was closed"))

    async def _open(self, port: int) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(port), self.host, port),
                self.connect_timeout,
            )
        except (OSError, asyncio.TimeoutError) as error:
            raise ConnectError(f"connecting to {self.host}:{port}: {error}") from error
        self._connections[port] = connection
        return connection

    async def _connection(self, port: int) -> _Connection:
        connection = self._connections.get(port)
        if connection is not None and not connection.closed:
            return connection
        lock = self._connecting.setdefault(port, asyncio.Lock())
        async with lock:
            connection = self._connections.get(port)
            if connection is not None and not connection.closed:
                return connection
            try:
                return await self._open(port)
            except ConnectError:
                if port == self._routing.bootstrap_port:
                    raise
                # The shard may have moved (a restart picks new ports).
                self._routing.forget()
        return await self._connection(self._routing.bootstrap_port)

    async def _call(
        self,
        port: int,
        encode: Callable[[int], bytearray],
        decode: Callable[[protocol.Response], T],
        timeout: float | None = None,
    ) -> T:
        connection = await self._connection(
            port if self.shard_aware else self._routing.bootstrap_port
        )
        correlation_id = next(self._correlation_ids)
        future = await connection.send(correlation_id, encode(correlation_id))
        limit = timeout or self.timeout
        try:
            response = await asyncio.wait_for(future, limit)
        except asyncio.TimeoutError:
            connection.pending.pop(correlation_id, None)
            raise RequestTimeout(f"no answer within {limit} s") from None
        return decode(response)

    async def _route(self, topic: str, partition: int | None, key: bytes) -> int:
        if self.shard_aware and self._routing.topic(topic) is None:
            try:
                await self.metadata()
            except CairnError:
                pass
        return self._routing.port(topic, partition, key)

    async def ping(self) -> None:
        await self._call(
            self._routing.bootstrap_port,
            protocol.encode_ping,
            lambda response: protocol.check_ok(response, protocol.R_PONG),
        )

    async def create_topic(
        self,
        name: str,
        partition_count: int,
        *,
        retention_ms: int | None = None,
        retention_bytes: int | None = None,
    ) -> TopicInfo:
        topic = await self._call(
            self._routing.bootstrap_port,
            lambda cid: protocol.encode_create_topic(
                cid, name, partition_count, retention_ms, retention_bytes
            ),
            protocol.decode_topic_created,
        )
        self._routing.forget()
        return topic

    async def alter_topic(
        self,
        name: str,
        *,
        retention_ms: int | None = None,
        retention_bytes: int | None = None,
    ) -> TopicInfo:
        """See `Client.alter_topic`."""
        topic = await self._call(
            self._routing.bootstrap_port,
            lambda cid: protocol.encode_alter_topic(cid, name, retention_ms, retention_bytes),
            protocol.decode_topic_altered,
        )
        self._routing.forget()
        return topic

    async def metadata(self) -> ClusterMetadata:
        metadata = await self._call(
            self._routing.bootstrap_port, protocol.encode_metadata, protocol.decode_metadata
        )
        self._routing.metadata = metadata
        return metadata

    async def partition_for(self, topic: str, key: bytes) -> int:
        partition = self._routing.partition(topic, None, key)
        if partition is None:
            await self.metadata()
            partition = self._routing.partition(topic, None, key)
        if partition is None:
            raise UnknownTopic(f"no topic named {topic!r}", ErrorCode.UNKNOWN_TOPIC)
        return partition

    async def append(
        self,
        topic: str,
        records: Sequence[Record],
        *,
        partition: int | None = None,
        expected_end_offset: int | None = None,
        producer: ProducerStamp | None = None,
    ) -> Appended:
        key = records[0].key if records else b""
        return await self._call(
            await self._route(topic, partition, key),
            lambda cid: protocol.encode_append(
                cid, topic, records, partition, expected_end_offset, producer
            ),
            protocol.decode_appended,
        )

    async def append_one(
        self,
        topic: str,
        key: bytes,
        value: bytes,
        *,
        headers: Sequence[tuple[bytes, bytes]] = (),
        condition: KeyCondition | None = None,
        partition: int | None = None,
        expected_end_offset: int | None = None,
    ) -> Appended:
        return await self.append(
            topic,
            [Record(key, value, headers, condition)],
            partition=partition,
            expected_end_offset=expected_end_offset,
        )

    async def fetch(
        self,
        topic: str,
        partition: int,
        offset: int,
        *,
        size_bytes_max: int = 1 << 20,
        wait_ms_max: int = 0,
    ) -> Fetched:
        return await self._call(
            await self._route(topic, partition, b""),
            lambda cid: protocol.encode_fetch(
                cid, topic, partition, offset, size_bytes_max, wait_ms_max
            ),
            protocol.decode_fetched,
            None if self.timeout is None else self.timeout + wait_ms_max / 1000,
        )

    async def read_key(
        self,
        topic: str,
        key: bytes,
        *,
        partition: int | None = None,
        include_appended: bool = False,
    ) -> KeyRead:
        return await self._call(
            await self._route(topic, partition, key),
            lambda cid: protocol.encode_read_key(cid, topic, key, partition, include_appended),
            protocol.decode_key_record,
        )

    async def key_history(
        self,
        topic: str,
        key: bytes,
        *,
        partition: int | None = None,
        record_count_max: int = 100,
        from_offset: int | None = None,
    ) -> KeyHistoryPage:
        return await self._call(
            await self._route(topic, partition, key),
            lambda cid: protocol.encode_key_history(
                cid, topic, key, partition, record_count_max, from_offset
            ),
            protocol.decode_key_history,
        )

    async def iter_key_history(
        self,
        topic: str,
        key: bytes,
        *,
        partition: int | None = None,
        page_size: int = 100,
    ) -> AsyncIterator[StoredRecord]:
        from_offset: int | None = None
        while True:
            page = await self.key_history(
                topic, key, partition=partition, record_count_max=page_size, from_offset=from_offset
            )
            for record in page.records:
                yield record
            if from_offset is not None and page.records and page.records[0].offset != from_offset:
                # A server that ignores from_offset would repeat the first page forever.
                raise ProtocolError(
                    f"KeyHistory from offset {from_offset} started at {page.records[0].offset}"
                )
            if page.next_offset is None or not page.records:
                return
            partition = page.partition
            from_offset = page.next_offset

    async def init_producer(self) -> ProducerId:
        return await self._call(
            self._routing.bootstrap_port,
            protocol.encode_init_producer,
            protocol.decode_producer_initialized,
        )

    async def commit_offsets(
        self, group: str, topic: str, offsets: Sequence[PartitionOffset]
    ) -> None:
        await self._call(
            self._routing.bootstrap_port,
            lambda cid: protocol.encode_commit_offsets(cid, group, topic, offsets),
            lambda response: protocol.check_ok(response, protocol.R_OFFSETS_COMMITTED),
        )

    async def fetch_offsets(
        self, group: str, topic: str, partitions: Sequence[int]
    ) -> list[CommittedOffset]:
        return await self._call(
            self._routing.bootstrap_port,
            lambda cid: protocol.encode_fetch_offsets(cid, group, topic, partitions),
            protocol.decode_committed_offsets,
        )
