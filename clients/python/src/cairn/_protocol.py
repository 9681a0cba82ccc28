"""The wire protocol without I/O: request frames out, typed results or exceptions in.

Requests are encoded by hand, front to back, into one bytearray that is the whole frame
(the u32 length prefix, then the flatbuffer): the flatbuffers runtime's Builder runs a
Python call per field and per byte of padding, too slow for appends. Every reference points
forward (vtables sit just before their table, which is what the signed vtable offset
allows), tables start at 4 mod 8 so that 8-byte fields are aligned, and every object ends
4-aligned. Responses are read with the flatc-generated accessors of cairn.wire; byte
vectors are sliced out of the frame, never read byte by byte.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Sequence
from typing import Any, Final

from .errors import (
    SERVER_ERRORS,
    ConditionKind,
    Conflict,
    ConflictKind,
    ErrorCode,
    KeyCondition,
    OffsetBeforeLogStart,
    ProtocolError,
    ServerError,
)
from .types import (
    Appended,
    ClusterMetadata,
    CommittedOffset,
    Fetched,
    KeyHistoryPage,
    KeyRead,
    PartitionInfo,
    PartitionOffset,
    ProducerId,
    ProducerStamp,
    Record,
    StoredRecord,
    TopicInfo,
)
from .wire.Appended import Appended as WireAppended
from .wire.CommittedOffsets import CommittedOffsets as WireCommittedOffsets
from .wire.ErrorResponse import ErrorResponse as WireErrorResponse
from .wire.Fetched import Fetched as WireFetched
from .wire.KeyHistoryResult import KeyHistoryResult as WireKeyHistoryResult
from .wire.KeyRecord import KeyRecord as WireKeyRecord
from .wire.MetadataResult import MetadataResult as WireMetadataResult
from .wire.ProducerInitialized import ProducerInitialized as WireProducerInitialized
from .wire.Response import Response as WireResponse
from .wire.TopicAltered import TopicAltered as WireTopicAltered
from .wire.TopicCreated import TopicCreated as WireTopicCreated
from .wire.TopicMetadata import TopicMetadata as WireTopicMetadata

# RequestBody union members, in schema order.
PING: Final = 1
CREATE_TOPIC: Final = 2
METADATA: Final = 3
APPEND: Final = 4
FETCH: Final = 5
READ_KEY: Final = 6
KEY_HISTORY: Final = 7
INIT_PRODUCER: Final = 8
COMMIT_OFFSETS: Final = 9
FETCH_OFFSETS: Final = 10
ALTER_TOPIC: Final = 13

# ResponseBody union members, in schema order.
R_PONG: Final = 1
R_TOPIC_CREATED: Final = 2
R_METADATA_RESULT: Final = 3
R_APPENDED: Final = 4
R_FETCHED: Final = 5
R_KEY_RECORD: Final = 6
R_KEY_HISTORY_RESULT: Final = 7
R_ERROR_RESPONSE: Final = 8
R_PRODUCER_INITIALIZED: Final = 9
R_OFFSETS_COMMITTED: Final = 10
R_COMMITTED_OFFSETS: Final = 11
R_TOPIC_ALTERED: Final = 14

_SCALAR_SIZE: Final = {"Q": 8, "q": 8, "I": 4, "i": 4, "H": 2, "h": 2, "B": 1, "?": 1}
_PADDING: Final = (b"", b"\0", b"\0\0", b"\0\0\0")
_U32 = struct.Struct("<I")
# The vtable every plain record (key and value, no headers, no condition) shares: 8 bytes,
# a 12-byte table, the key's offset at 4 and the value's at 8.
_PLAIN_RECORD_VTABLE: Final = struct.pack("<4H", 8, 12, 4, 8)


def _pad4(length: int) -> int:
    return (length + 3) & ~3


class _Writer:
    """A frame under construction. Positions are within the flatbuffer, which starts after
    the 4-byte frame length at the head of `buf`."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        # The frame length and the root table's offset, both patched at the end.
        self.buf = bytearray(8)

    def position(self) -> int:
        return len(self.buf) - 4

    def table(
        self,
        slot_count: int,
        scalars: Sequence[tuple[int, str, int]],
        offset_slots: Sequence[int] = (),
    ) -> tuple[int, dict[int, int]]:
        """Writes a vtable and its table. Returns the table's position and, per offset slot,
        the position of its (zero) uoffset, for `patch` once the target is written."""
        items = list(scalars) + [(slot, "I", 0) for slot in offset_slots]
        items.sort(key=lambda item: -_SCALAR_SIZE[item[1]])
        entries = [0] * slot_count
        cursor = 4
        for slot, code, _ in items:
            entries[slot] = cursor
            cursor += _SCALAR_SIZE[code]
        table_size = _pad4(cursor)
        vtable_size = 4 + 2 * slot_count
        self.buf += bytes((4 - self.position() - vtable_size) % 8)
        self.buf += struct.pack(f"<{2 + slot_count}H", vtable_size, table_size, *entries)
        table_position = self.position()
        self.buf += struct.pack(
            "<i" + "".join(code for _, code, _ in items) + "x" * (table_size - cursor),
            vtable_size,
            *(value for _, _, value in items),
        )
        return table_position, {slot: table_position + entries[slot] for slot in offset_slots}

    def patch(self, field_position: int, target_position: int) -> None:
        _U32.pack_into(self.buf, field_position + 4, target_position - field_position)

    def byte_vector(self, data: bytes) -> int:
        position = self.position()
        self.buf += _U32.pack(len(data))
        self.buf += data
        self.buf += _PADDING[_pad4(len(data)) - len(data)]
        return position

    def string(self, text: str | bytes) -> int:
        data = text.encode() if isinstance(text, str) else text
        position = self.position()
        self.buf += _U32.pack(len(data))
        self.buf += data
        # The terminating NUL and the padding after it.
        self.buf += bytes(_pad4(len(data) + 1) - len(data))
        return position

    def uint_vector(self, values: Sequence[int]) -> int:
        position = self.position()
        self.buf += struct.pack(f"<I{len(values)}I", len(values), *values)
        return position

    def offset_vector(self, length: int) -> tuple[int, int]:
        """A vector of `length` uoffsets to patch: its position and its first entry's."""
        position = self.position()
        self.buf += _U32.pack(length)
        self.buf += bytes(4 * length)
        return position, position + 4

    def finish(self) -> bytearray:
        _U32.pack_into(self.buf, 0, len(self.buf) - 4)
        return self.buf


def _request_template() -> tuple[bytes, int, int, int]:
    """Every frame starts the same way: the Request table at the same position. Its bytes
    and the positions (in the frame) of correlation_id and body_type, and of body."""
    writer = _Writer()
    position, offsets = writer.table(3, [(0, "Q", 0), (1, "B", 0)], [2])
    _U32.pack_into(writer.buf, 4, position)
    return bytes(writer.buf), position + 4 + 4, position + 4 + 16, offsets[2]


_REQUEST_PREFIX, _CORRELATION_ID_AT, _BODY_TYPE_AT, _BODY_FIELD = _request_template()
_U64 = struct.Struct("<Q")


def _request(correlation_id: int, body_type: int) -> tuple[_Writer, int]:
    """Starts a frame with its Request table; returns the writer and the body field."""
    writer = _Writer()
    buf = writer.buf = bytearray(_REQUEST_PREFIX)
    _U64.pack_into(buf, _CORRELATION_ID_AT, correlation_id)
    buf[_BODY_TYPE_AT] = body_type
    return writer, _BODY_FIELD


def _empty_body(correlation_id: int, body_type: int) -> bytearray:
    writer, body_field = _request(correlation_id, body_type)
    position, _ = writer.table(0, [])
    writer.patch(body_field, position)
    return writer.finish()


def encode_ping(correlation_id: int) -> bytearray:
    return _empty_body(correlation_id, PING)


def encode_metadata(correlation_id: int) -> bytearray:
    return _empty_body(correlation_id, METADATA)


def encode_init_producer(correlation_id: int) -> bytearray:
    return _empty_body(correlation_id, INIT_PRODUCER)


def encode_create_topic(
    correlation_id: int,
    name: str,
    partition_count: int,
    retention_ms: int | None = None,
    retention_bytes: int | None = None,
) -> bytearray:
    scalars = [(1, "I", partition_count)]
    if retention_ms is not None:
        scalars.append((2, "Q", retention_ms))
    if retention_bytes is not None:
        scalars.append((3, "Q", retention_bytes))
    return _named_request(correlation_id, CREATE_TOPIC, name, 4, scalars)


def _named_request(
    correlation_id: int,
    kind: int,
    name: str,
    field_count: int,
    scalars: list[tuple[int, str, int]],
) -> bytearray:
    """A request whose body is a table with the topic name at field 0 and `scalars`."""
    writer, body_field = _request(correlation_id, kind)
    position, offsets = writer.table(field_count, scalars, [0])
    writer.patch(body_field, position)
    writer.patch(offsets[0], writer.string(name))
    return writer.finish()


def encode_alter_topic(
    correlation_id: int,
    name: str,
    retention_ms: int | None = None,
    retention_bytes: int | None = None,
) -> bytearray:
    """AlterTopic: a limit left as None stays as it is; -1 removes it (keep forever)."""
    scalars: list[tuple[int, str, int]] = []
    if retention_ms is not None:
        scalars.append((1, "q", retention_ms))
    if retention_bytes is not None:
        scalars.append((2, "q", retention_bytes))
    return _named_request(correlation_id, ALTER_TOPIC, name, 3, scalars)


def _condition(writer: _Writer, condition: KeyCondition) -> int:
    scalars = [(0, "B", int(condition.kind))]
    if condition.offset is not None:
        scalars.append((1, "Q", condition.offset))
    position, _ = writer.table(2, scalars)
    return position


@functools.lru_cache(maxsize=8)
def _append_template(
    has_partition: bool, has_expected_end_offset: bool, has_producer: bool
) -> tuple[bytes, int, int, dict[int, int]]:
    """The Request and Append tables of an append of this shape, whose bytes differ only in
    the values: the frame so far, the frame positions of partition and
    expected_end_offset, and the Append's offset fields (flatbuffer positions)."""
    writer, body_field = _request(0, APPEND)
    scalars: list[tuple[int, str, int]] = []
    if has_partition:
        scalars.append((1, "I", 0))
    if has_expected_end_offset:
        scalars.append((2, "Q", 0))
    offset_slots = [0, 3, 4] if has_producer else [0, 3]
    position, offsets = writer.table(5, scalars, offset_slots)
    writer.patch(body_field, position)
    # Where the table put each scalar: read back from the vtable just written.
    vtable_at = position + 4 - struct.unpack_from("<i", writer.buf, position + 4)[0]
    entries = struct.unpack_from("<7H", writer.buf, vtable_at)[2:]
    partition_at = position + 4 + entries[1] if has_partition else -1
    expected_at = position + 4 + entries[2] if has_expected_end_offset else -1
    return bytes(writer.buf), partition_at, expected_at, offsets


def encode_append(
    correlation_id: int,
    topic: str,
    records: Sequence[Record],
    partition: int | None = None,
    expected_end_offset: int | None = None,
    producer: ProducerStamp | None = None,
) -> bytearray:
    template, partition_at, expected_at, offsets = _append_template(
        partition is not None, expected_end_offset is not None, producer is not None
    )
    writer = _Writer()
    buf = writer.buf = bytearray(template)
    _U64.pack_into(buf, _CORRELATION_ID_AT, correlation_id)
    buf[_BODY_TYPE_AT] = APPEND
    if partition is not None:
        _U32.pack_into(buf, partition_at, partition)
    if expected_end_offset is not None:
        _U64.pack_into(buf, expected_at, expected_end_offset)
    writer.patch(offsets[0], writer.string(topic))
    if producer is not None:
        stamp, _ = writer.table(
            3,
            [
                (0, "q", producer.producer_id),
                (1, "h", producer.epoch),
                (2, "i", producer.base_sequence),
            ],
        )
        writer.patch(offsets[4], stamp)
    if not _plain_records(writer, offsets[3], records):
        _records(writer, offsets[3], records)
    return writer.finish()


@functools.lru_cache(maxsize=4096)
def _plain_record_struct(key_length: int, value_length: int) -> struct.Struct:
    """One record of the fast path as one struct: its 16-byte head (vtable offset, key and
    value offsets, key length), the key and its padding, the value's length, the value and
    its padding."""
    key_padding = _pad4(key_length) - key_length
    value_padding = _pad4(value_length) - value_length
    return struct.Struct(
        f"<iIII{key_length}s{key_padding}xI{value_length}s{value_padding}x"
    )


def _plain_records(writer: _Writer, records_field: int, records: Sequence[Record]) -> bool:
    """The fast path: one shared vtable, then the vector, then each record in one pack.
    Returns False, having written nothing, when a record has headers or a condition."""
    buf = writer.buf
    written = len(buf)
    vtable_position = writer.position()
    vector_position = vtable_position + 8
    record_count = len(records)
    entry = vector_position + 4
    position = entry + 4 * record_count
    entries: list[int] = []
    parts: list[bytes] = []
    record_struct = _plain_record_struct
    for record in records:
        if record.headers or (
            record.condition is not None and record.condition.kind != ConditionKind.ANY
        ):
            del buf[written:]
            return False
        key = record.key
        value = record.value
        layout = record_struct(len(key), len(value))
        entries.append(position - entry)
        entry += 4
        parts.append(
            layout.pack(
                position - vtable_position,
                8,
                8 + ((len(key) + 3) & ~3),
                len(key),
                key,
                len(value),
                value,
            )
        )
        position += layout.size
    buf += _PLAIN_RECORD_VTABLE
    writer.patch(records_field, vector_position)
    buf += struct.pack(f"<I{record_count}I", record_count, *entries)
    buf += b"".join(parts)
    return True


def _records(writer: _Writer, records_field: int, records: Sequence[Record]) -> None:
    vector, entry = writer.offset_vector(len(records))
    writer.patch(records_field, vector)
    for record in records:
        slots = [0, 1]
        if record.headers:
            slots.append(2)
        if record.condition is not None:
            slots.append(3)
        position, offsets = writer.table(4, [], slots)
        writer.patch(entry, position)
        entry += 4
        writer.patch(offsets[0], writer.byte_vector(record.key))
        writer.patch(offsets[1], writer.byte_vector(record.value))
        if record.headers:
            headers, header_entry = writer.offset_vector(len(record.headers))
            writer.patch(offsets[2], headers)
            for name, value in record.headers:
                header, header_offsets = writer.table(2, [], [0, 1])
                writer.patch(header_entry, header)
                header_entry += 4
                writer.patch(header_offsets[0], writer.byte_vector(name))
                writer.patch(header_offsets[1], writer.byte_vector(value))
        if record.condition is not None:
            writer.patch(offsets[3], _condition(writer, record.condition))


def encode_fetch(
    correlation_id: int,
    topic: str,
    partition: int,
    offset: int,
    size_bytes_max: int,
    wait_ms_max: int,
) -> bytearray:
    writer, body_field = _request(correlation_id, FETCH)
    position, offsets = writer.table(
        5,
        [(1, "I", partition), (2, "Q", offset), (3, "I", size_bytes_max), (4, "I", wait_ms_max)],
        [0],
    )
    writer.patch(body_field, position)
    writer.patch(offsets[0], writer.string(topic))
    return writer.finish()


def encode_read_key(
    correlation_id: int,
    topic: str,
    key: bytes,
    partition: int | None,
    include_appended: bool,
) -> bytearray:
    writer, body_field = _request(correlation_id, READ_KEY)
    scalars = [(3, "?", int(include_appended))]
    if partition is not None:
        scalars.append((1, "I", partition))
    position, offsets = writer.table(4, scalars, [0, 2])
    writer.patch(body_field, position)
    writer.patch(offsets[0], writer.string(topic))
    writer.patch(offsets[2], writer.byte_vector(key))
    return writer.finish()


def encode_key_history(
    correlation_id: int,
    topic: str,
    key: bytes,
    partition: int | None,
    record_count_max: int,
    from_offset: int | None,
) -> bytearray:
    writer, body_field = _request(correlation_id, KEY_HISTORY)
    scalars = [(3, "I", record_count_max)]
    if partition is not None:
        scalars.append((1, "I", partition))
    if from_offset is not None:
        scalars.append((4, "Q", from_offset))
    position, offsets = writer.table(5, scalars, [0, 2])
    writer.patch(body_field, position)
    writer.patch(offsets[0], writer.string(topic))
    writer.patch(offsets[2], writer.byte_vector(key))
    return writer.finish()


def encode_commit_offsets(
    correlation_id: int, group: str, topic: str, partitions: Sequence[PartitionOffset]
) -> bytearray:
    writer, body_field = _request(correlation_id, COMMIT_OFFSETS)
    position, offsets = writer.table(3, [], [0, 1, 2])
    writer.patch(body_field, position)
    writer.patch(offsets[0], writer.string(group))
    writer.patch(offsets[1], writer.string(topic))
    vector, entry = writer.offset_vector(len(partitions))
    writer.patch(offsets[2], vector)
    for item in partitions:
        table, table_offsets = writer.table(
            3, [(0, "I", item.partition), (1, "q", item.offset)], [2]
        )
        writer.patch(entry, table)
        entry += 4
        writer.patch(table_offsets[2], writer.string(item.metadata))
    return writer.finish()


def encode_fetch_offsets(
    correlation_id: int, group: str, topic: str, partitions: Sequence[int]
) -> bytearray:
    writer, body_field = _request(correlation_id, FETCH_OFFSETS)
    position, offsets = writer.table(3, [], [0, 1, 2])
    writer.patch(body_field, position)
    writer.patch(offsets[0], writer.string(group))
    writer.patch(offsets[1], writer.string(topic))
    writer.patch(offsets[2], writer.uint_vector(partitions))
    return writer.finish()


# ---------------------------------------------------------------------------------------
# Responses


class Response:
    """A received frame: its correlation id, body kind and body table (cairn.wire)."""

    __slots__ = ("correlation_id", "body_type", "body")

    def __init__(self, frame: bytes) -> None:
        try:
            root = WireResponse.GetRootAs(frame, 0)
            self.correlation_id: int = root.CorrelationId()
            self.body_type: int = root.BodyType()
            self.body: Any = root.Body()
        except (struct.error, IndexError) as error:
            raise ProtocolError(f"undecodable response frame: {error}") from error
        if self.body is None:
            raise ProtocolError("response without a body")


def _vector_bytes(table: Any, vtable_offset: int) -> bytes:
    field = table.Offset(vtable_offset)
    if field == 0:
        return b""
    start = table.Vector(field)
    data: bytes = table.Bytes[start : start + table.VectorLen(field)]
    return data


def _body(response: Response, expected: int, wire_type: Any) -> Any:
    if response.body_type == expected:
        body = wire_type()
        body.Init(response.body.Bytes, response.body.Pos)
        return body
    if response.body_type == R_ERROR_RESPONSE:
        raise _server_error(response)
    raise ProtocolError(f"unexpected response kind {response.body_type}, expected {expected}")


def _server_error(response: Response) -> ServerError:
    error = WireErrorResponse()
    error.Init(response.body.Bytes, response.body.Pos)
    raw_code = error.Code()
    message = (error.Message() or b"").decode(errors="replace")
    try:
        code = ErrorCode(raw_code)
    except ValueError:
        return ServerError(f"unknown error code {raw_code}: {message}", ErrorCode.INTERNAL)
    if code == ErrorCode.OFFSET_BEFORE_LOG_START:
        log_start = error.LogStart()
        if log_start is None:
            raise ProtocolError(f"OffsetBeforeLogStart without the log start: {message}")
        return OffsetBeforeLogStart(message, code, log_start)
    if code != ErrorCode.CONFLICT:
        return SERVER_ERRORS[code](message, code)
    info = error.Conflict()
    if info is None:
        raise ProtocolError(f"Conflict without conflict details: {message}")
    wire_condition = info.Condition()
    condition = None
    if wire_condition is not None:
        condition = KeyCondition(ConditionKind(wire_condition.Kind()), wire_condition.Offset())
    return Conflict(
        message,
        ConflictKind(info.Kind()),
        info.RecordIndex(),
        condition,
        info.CurrentOffset(),
    )


def check_ok(response: Response, expected: int) -> None:
    """For answers with no content (Pong, OffsetsCommitted)."""
    _body(response, expected, WireErrorResponse)


def decode_topic(topic: Any) -> TopicInfo:
    partitions = []
    for index in range(topic.PartitionsLength()):
        partition = topic.Partitions(index)
        partitions.append(
            PartitionInfo(
                partition.Partition(), partition.PartitionId(), partition.Shard(), partition.Port()
            )
        )
    return TopicInfo(
        topic.Name().decode(), partitions, topic.RetentionMs(), topic.RetentionBytes()
    )


def decode_topic_created(response: Response) -> TopicInfo:
    created = _body(response, R_TOPIC_CREATED, WireTopicCreated)
    topic: WireTopicMetadata = created.Topic()
    return decode_topic(topic)


def decode_topic_altered(response: Response) -> TopicInfo:
    altered = _body(response, R_TOPIC_ALTERED, WireTopicAltered)
    topic: WireTopicMetadata = altered.Topic()
    return decode_topic(topic)


def decode_metadata(response: Response) -> ClusterMetadata:
    result = _body(response, R_METADATA_RESULT, WireMetadataResult)
    shard_ports = [result.ShardPorts(index) for index in range(result.ShardPortsLength())]
    topics = {}
    for index in range(result.TopicsLength()):
        topic = decode_topic(result.Topics(index))
        topics[topic.name] = topic
    return ClusterMetadata(shard_ports, topics)


def decode_appended(response: Response) -> Appended:
    appended = _body(response, R_APPENDED, WireAppended)
    return Appended(
        appended.Partition(),
        appended.BaseOffset(),
        appended.RecordCount(),
        bool(appended.Duplicate()),
    )


def _record(record: Any) -> StoredRecord:
    headers = []
    for index in range(record.HeadersLength()):
        header = record.Headers(index)
        headers.append((_vector_bytes(header._tab, 4), _vector_bytes(header._tab, 6)))
    table = record._tab
    return StoredRecord(
        record.Offset(),
        record.TimestampMs(),
        _vector_bytes(table, 8),
        _vector_bytes(table, 10),
        headers,
        record.PrevKeyOffset(),
    )


def decode_fetched(response: Response) -> Fetched:
    fetched = _body(response, R_FETCHED, WireFetched)
    records = [_record(fetched.Records(index)) for index in range(fetched.RecordsLength())]
    return Fetched(fetched.Partition(), records, fetched.SyncedEnd())


def decode_key_record(response: Response) -> KeyRead:
    result = _body(response, R_KEY_RECORD, WireKeyRecord)
    record = result.Record()
    return KeyRead(result.Partition(), None if record is None else _record(record))


def decode_key_history(response: Response) -> KeyHistoryPage:
    result = _body(response, R_KEY_HISTORY_RESULT, WireKeyHistoryResult)
    records = [_record(result.Records(index)) for index in range(result.RecordsLength())]
    return KeyHistoryPage(result.Partition(), records, result.NextOffset())


def decode_producer_initialized(response: Response) -> ProducerId:
    result = _body(response, R_PRODUCER_INITIALIZED, WireProducerInitialized)
    return ProducerId(result.ProducerId(), result.Epoch())


def decode_committed_offsets(response: Response) -> list[CommittedOffset]:
    result = _body(response, R_COMMITTED_OFFSETS, WireCommittedOffsets)
    offsets = []
    for index in range(result.PartitionsLength()):
        item = result.Partitions(index)
        offsets.append(
            CommittedOffset(item.Partition(), item.Offset(), (item.Metadata() or b"").decode())
        )
    return offsets
