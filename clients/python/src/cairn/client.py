"""The blocking client: one socket per shard port, each with a reader thread that matches
responses to calls by correlation id, so any number of calls can be in flight."""

from __future__ import annotations

import itertools
import socket
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

from . import _protocol as protocol
from ._routing import Routing
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
#: Largest response frame accepted: a Fetched is at most 2 MiB and 128 bytes.
RESPONSE_SIZE_BYTES_MAX = 8 * 1024 * 1024
#: Queued requests are sent at once past this many bytes, without waiting for a flush.
_OUTBOX_SIZE_BYTES_FLUSH = 256 * 1024


class _Call:
    """One request in flight; completed by the connection's reader thread."""

    __slots__ = ("_done", "response", "error")

    def __init__(self) -> None:
        # A held lock is the cheapest one-shot event the threading module has.
        self._done = threading.Lock()
        self._done.acquire()
        self.response: protocol.Response | None = None
        self.error: CairnError | None = None

    def complete(self, response: protocol.Response | None, error: CairnError | None) -> None:
        self.response = response
        self.error = error
        self._done.release()

    def wait(self, timeout: float | None) -> bool:
        return self._done.acquire(timeout=-1 if timeout is None else timeout)


class _Connection:
    def __init__(self, host: str, port: int, connect_timeout: float) -> None:
        self.port = port
        self.sock = socket.create_connection((host, port), timeout=connect_timeout)
        self.sock.settimeout(None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._pending: dict[int, _Call] = {}
        self._outbox = bytearray()
        self.closed = False
        self._reader = threading.Thread(target=self._read_loop, daemon=True, name=f"cairn-{port}")
        self._reader.start()

    def submit(self, correlation_id: int, frame: bytearray) -> _Call:
        """Queues the request; it is sent by `flush`, which every wait for an answer
        calls, or here once enough is queued. Pipelined submits so share one send."""
        call = _Call()
        with self._lock:
            if self.closed:
                raise ConnectionLost(f"connection to port {self.port} is closed")
            self._pending[correlation_id] = call
            self._outbox += frame
            full = len(self._outbox) >= _OUTBOX_SIZE_BYTES_FLUSH
        if full:
            self.flush()
        return call

    def flush(self) -> None:
        with self._send_lock:
            with self._lock:
                data = self._outbox
                self._outbox = bytearray()
            if not data:
                return
            try:
                self.sock.sendall(data)
            except OSError as error:
                self.close(ConnectionLost(f"sending to port {self.port}: {error}"))

    def abandon(self, correlation_id: int) -> None:
        with self._lock:
            self._pending.pop(correlation_id, None)

    def _read_loop(self) -> None:
        buffer = bytearray()
        error: CairnError
        try:
            while True:
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    error = ConnectionLost(f"the server closed the connection on port {self.port}")
                    break
                buffer += chunk
                start = 0
                while len(buffer) - start >= 4:
                    (length,) = _FRAME_LENGTH.unpack_from(buffer, start)
                    if length > RESPONSE_SIZE_BYTES_MAX:
                        raise ProtocolError(f"response frame of {length} bytes")
                    if len(buffer) - start - 4 < length:
                        break
                    response = protocol.Response(bytes(buffer[start + 4 : start + 4 + length]))
                    start += 4 + length
                    with self._lock:
                        call = self._pending.pop(response.correlation_id, None)
                    if call is not None:
                        call.complete(response, None)
                del buffer[:start]
        except OSError as os_error:
            error = ConnectionLost(f"connection to port {self.port} broke: {os_error}")
        except ProtocolError as protocol_error:
            error = ConnectionLost(f"connection to port {self.port} closed: {protocol_error}")
        self.close(error)

    def close(self, error: CairnError) -> None:
        """Fails every call in flight with `error` (their outcome is unknown)."""
        with self._lock:
            already_closed = self.closed
            self.closed = True
            pending = list(self._pending.values())
            self._pending.clear()
        for call in pending:
            call.complete(None, error)
        if not already_closed:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()


class Pending(Generic[T]):
    """A call in flight; `result()` waits for its answer."""

    __slots__ = ("_connection", "_correlation_id", "_call", "_decode", "_timeout", "_flush")

    def __init__(
        self,
        connection: _Connection,
        correlation_id: int,
        call: _Call,
        decode: Callable[[protocol.Response], T],
        timeout: float | None,
        flush: Callable[[], None],
    ) -> None:
        self._flush = flush
        self._connection = connection
        self._correlation_id = correlation_id
        self._call = call
        self._decode = decode
        self._timeout = timeout

    def result(self) -> T:
        # Every connection's queue, not only this one's: requests to other shards must not
        # wait for a later result.
        self._flush()
        if not self._call.wait(self._timeout):
            self._connection.abandon(self._correlation_id)
            raise RequestTimeout(f"no answer within {self._timeout} s")
        if self._call.error is not None:
            raise self._call.error
        assert self._call.response is not None
        return self._decode(self._call.response)


class Client:
    """A blocking, thread-safe client. `host` and `port` are the server's listening
    address (`cairn serve --listen`); requests for a partition go to the owning shard's
    port, learnt from Metadata. A call whose connection breaks raises ConnectionLost (an
    OutcomeUnknown); the next call connects again.

    Every method waits for its answer; the `submit_*` methods return a Pending instead, so
    that one thread can keep many requests in flight. Submitted requests are queued and
    sent together when a Pending's result is asked for, when 256 KiB are queued, or on
    `flush()`."""

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
        self._lock = threading.Lock()
        self._correlation_ids = itertools.count(1)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def flush(self) -> None:
        """Sends every submitted request still queued."""
        with self._lock:
            connections = list(self._connections.values())
        for connection in connections:
            connection.flush()

    def close(self) -> None:
        with self._lock:
            connections = list(self._connections.values())
            self._connections.clear()
        for connection in connections:
            connection.close(ConnectionLost("the client was closed"))

    # -- plumbing -----------------------------------------------------------------------

    def _connection(self, port: int) -> _Connection:
        with self._lock:
            connection = self._connections.get(port)
            if connection is not None and not connection.closed:
                return connection
            try:
                connection = _Connection(self.host, port, self.connect_timeout)
            except OSError as error:
                if port == self._routing.bootstrap_port:
                    raise ConnectError(f"connecting to {self.host}:{port}: {error}") from error
                # The shard may have moved (a restart picks new ports): go through the
                # bootstrap port, which forwards, until the next Metadata.
                self._routing.forget()
                return self._connection_locked_bootstrap()
            self._connections[port] = connection
            return connection

    def _connection_locked_bootstrap(self) -> _Connection:
        port = self._routing.bootstrap_port
        connection = self._connections.get(port)
        if connection is not None and not connection.closed:
            return connection
        try:
            connection = _Connection(self.host, port, self.connect_timeout)
        except OSError as error:
            raise ConnectError(f"connecting to {self.host}:{port}: {error}") from error
        self._connections[port] = connection
        return connection

    def _submit(
        self,
        port: int,
        encode: Callable[[int], bytearray],
        decode: Callable[[protocol.Response], T],
        timeout: float | None = None,
    ) -> Pending[T]:
        connection = self._connection(port if self.shard_aware else self._routing.bootstrap_port)
        correlation_id = next(self._correlation_ids)
        call = connection.submit(correlation_id, encode(correlation_id))
        return Pending(
            connection, correlation_id, call, decode, timeout or self.timeout, self.flush
        )

    def _route(self, topic: str, partition: int | None, key: bytes) -> int:
        if self.shard_aware and self._routing.topic(topic) is None:
            try:
                self.metadata()
            except CairnError:
                pass
        return self._routing.port(topic, partition, key)

    # -- requests -----------------------------------------------------------------------

    def ping(self) -> None:
        self._submit(
            self._routing.bootstrap_port,
            protocol.encode_ping,
            lambda response: protocol.check_ok(response, protocol.R_PONG),
        ).result()

    def create_topic(
        self,
        name: str,
        partition_count: int,
        *,
        retention_ms: int | None = None,
        retention_bytes: int | None = None,
    ) -> TopicInfo:
        topic = self._submit(
            self._routing.bootstrap_port,
            lambda cid: protocol.encode_create_topic(
                cid, name, partition_count, retention_ms, retention_bytes
            ),
            protocol.decode_topic_created,
        ).result()
        self._routing.forget()
        return topic

    def alter_topic(
        self,
        name: str,
        *,
        retention_ms: int | None = None,
        retention_bytes: int | None = None,
    ) -> TopicInfo:
        """Changes `name`'s retention and returns the topic as it now is, once every shard
        applies it. A limit left as None stays as it is; -1 removes it (keep forever); 0 is
        InvalidConfig, an unknown topic UnknownTopic."""
        topic = self._submit(
            self._routing.bootstrap_port,
            lambda cid: protocol.encode_alter_topic(cid, name, retention_ms, retention_bytes),
            protocol.decode_topic_altered,
        ).result()
        self._routing.forget()
        return topic

    def metadata(self) -> ClusterMetadata:
        """Every topic and where its partitions live; refreshes the routing cache."""
        metadata = self._submit(
            self._routing.bootstrap_port, protocol.encode_metadata, protocol.decode_metadata
        ).result()
        self._routing.metadata = metadata
        return metadata

    def partition_for(self, topic: str, key: bytes) -> int:
        """The partition `key` routes to in `topic` (UnknownTopic if there is none)."""
        partition = self._routing.partition(topic, None, key)
        if partition is None:
            self.metadata()
            partition = self._routing.partition(topic, None, key)
        if partition is None:
            raise UnknownTopic(f"no topic named {topic!r}", ErrorCode.UNKNOWN_TOPIC)
        return partition

    def submit_append(
        self,
        topic: str,
        records: Sequence[Record],
        *,
        partition: int | None = None,
        expected_end_offset: int | None = None,
        producer: ProducerStamp | None = None,
    ) -> Pending[Appended]:
        """Sends an append and returns at once. Absent partition: derived from the first
        record's key (every record's key must route to the same partition)."""
        key = records[0].key if records else b""
        return self._submit(
            self._route(topic, partition, key),
            lambda cid: protocol.encode_append(
                cid, topic, records, partition, expected_end_offset, producer
            ),
            protocol.decode_appended,
        )

    def append(
        self,
        topic: str,
        records: Sequence[Record],
        *,
        partition: int | None = None,
        expected_end_offset: int | None = None,
        producer: ProducerStamp | None = None,
    ) -> Appended:
        """Appends a batch atomically; returns once it is synced. Raises Conflict when a
        condition fails (nothing appended)."""
        return self.submit_append(
            topic,
            records,
            partition=partition,
            expected_end_offset=expected_end_offset,
            producer=producer,
        ).result()

    def append_one(
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
        return self.append(
            topic,
            [Record(key, value, headers, condition)],
            partition=partition,
            expected_end_offset=expected_end_offset,
        )

    def submit_fetch(
        self,
        topic: str,
        partition: int,
        offset: int,
        *,
        size_bytes_max: int = 1 << 20,
        wait_ms_max: int = 0,
    ) -> Pending[Fetched]:
        return self._submit(
            self._route(topic, partition, b""),
            lambda cid: protocol.encode_fetch(
                cid, topic, partition, offset, size_bytes_max, wait_ms_max
            ),
            protocol.decode_fetched,
            None if self.timeout is None else self.timeout + wait_ms_max / 1000,
        )

    def fetch(
        self,
        topic: str,
        partition: int,
        offset: int,
        *,
        size_bytes_max: int = 1 << 20,
        wait_ms_max: int = 0,
    ) -> Fetched:
        """Synced records from `offset` on; waits up to `wait_ms_max` for one when none is
        there yet (long poll)."""
        return self.submit_fetch(
            topic, partition, offset, size_bytes_max=size_bytes_max, wait_ms_max=wait_ms_max
        ).result()

    def read_key(
        self,
        topic: str,
        key: bytes,
        *,
        partition: int | None = None,
        include_appended: bool = False,
    ) -> KeyRead:
        return self._submit(
            self._route(topic, partition, key),
            lambda cid: protocol.encode_read_key(cid, topic, key, partition, include_appended),
            protocol.decode_key_record,
        ).result()

    def key_history(
        self,
        topic: str,
        key: bytes,
        *,
        partition: int | None = None,
        record_count_max: int = 100,
        from_offset: int | None = None,
    ) -> KeyHistoryPage:
        """One page of a key's records, newest first; pass `next_offset` as `from_offset`
        for the next."""
        return self._submit(
            self._route(topic, partition, key),
            lambda cid: protocol.encode_key_history(
                cid, topic, key, partition, record_count_max, from_offset
            ),
            protocol.decode_key_history,
        ).result()

    def iter_key_history(
        self,
        topic: str,
        key: bytes,
        *,
        partition: int | None = None,
        page_size: int = 100,
    ) -> Iterator[StoredRecord]:
        """Every record of a key, newest first, page by page."""
        from_offset: int | None = None
        while True:
            page = self.key_history(
                topic, key, partition=partition, record_count_max=page_size, from_offset=from_offset
            )
            yield from page.records
            if from_offset is not None and page.records and page.records[0].offset != from_offset:
                # A server that ignores from_offset would repeat the first page forever.
                raise ProtocolError(
                    f"KeyHistory from offset {from_offset} started at {page.records[0].offset}"
                )
            if page.next_offset is None or not page.records:
                return
            partition = page.partition
            from_offset = page.next_offset

    def init_producer(self) -> ProducerId:
        return self._submit(
            self._routing.bootstrap_port,
            protocol.encode_init_producer,
            protocol.decode_producer_initialized,
        ).result()

    def commit_offsets(
        self, group: str, topic: str, offsets: Sequence[PartitionOffset]
    ) -> None:
        self._submit(
            self._routing.bootstrap_port,
            lambda cid: protocol.encode_commit_offsets(cid, group, topic, offsets),
            lambda response: protocol.check_ok(response, protocol.R_OFFSETS_COMMITTED),
        ).result()

    def fetch_offsets(
        self, group: str, topic: str, partitions: Sequence[int]
    ) -> list[CommittedOffset]:
        return self._submit(
            self._routing.bootstrap_port,
            lambda cid: protocol.encode_fetch_offsets(cid, group, topic, partitions),
            protocol.decode_committed_offsets,
        ).result()
