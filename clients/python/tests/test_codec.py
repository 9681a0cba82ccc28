"""The hand-written encoder, read back with the flatc-generated accessors (no server)."""

from __future__ import annotations

import random

from cairn import KeyCondition, PartitionOffset, ProducerStamp, Record
from cairn import _protocol as protocol
from cairn.wire.Append import Append
from cairn.wire.CommitOffsets import CommitOffsets
from cairn.wire.Fetch import Fetch
from cairn.wire.FetchOffsets import FetchOffsets
from cairn.wire.KeyHistory import KeyHistory
from cairn.wire.Request import Request


def _body(frame: bytearray, expected_type: int, wire_type: type) -> object:
    data = bytes(frame)
    assert int.from_bytes(data[:4], "little") == len(data) - 4
    request = Request.GetRootAs(data[4:], 0)
    assert request.BodyType() == expected_type
    body = wire_type()
    table = request.Body()
    body.Init(table.Bytes, table.Pos)
    assert request.CorrelationId() == 2**63 + 5
    return body


def test_appends_of_random_shapes_read_back_exactly() -> None:
    generator = random.Random(7)
    for _ in range(200):
        records = []
        for _ in range(generator.randrange(1, 8)):
            headers = [
                (generator.randbytes(generator.randrange(0, 9)), generator.randbytes(3))
                for _ in range(generator.choice([0, 0, 2]))
            ]
            condition = generator.choice(
                [None, KeyCondition.any(), KeyCondition.no_key(), KeyCondition.at(2**40 + 3)]
            )
            records.append(
                Record(
                    generator.randbytes(generator.randrange(0, 9)),
                    generator.randbytes(generator.randrange(0, 300)),
                    headers,
                    condition,
                )
            )
        partition = generator.choice([None, 0, 7])
        expected = generator.choice([None, 0, 2**50])
        producer = generator.choice([None, ProducerStamp(2**40, 3, 2**31 - 1)])
        frame = protocol.encode_append(2**63 + 5, "tópic", records, partition, expected, producer)
        append = _body(frame, protocol.APPEND, Append)
        assert isinstance(append, Append)
        assert append.Topic() == "tópic".encode()
        assert append.Partition() == partition
        assert append.ExpectedEndOffset() == expected
        stamp = append.Producer()
        if producer is None:
            assert stamp is None
        else:
            assert (stamp.ProducerId(), stamp.Epoch(), stamp.BaseSequence()) == (
                producer.producer_id,
                producer.epoch,
                producer.base_sequence,
            )
        assert append.RecordsLength() == len(records)
        for index, record in enumerate(records):
            wire = append.Records(index)
            assert protocol._vector_bytes(wire._tab, 4) == record.key
            assert protocol._vector_bytes(wire._tab, 6) == record.value
            headers_read = [
                (
                    protocol._vector_bytes(wire.Headers(h)._tab, 4),
                    protocol._vector_bytes(wire.Headers(h)._tab, 6),
                )
                for h in range(wire.HeadersLength())
            ]
            assert headers_read == list(record.headers)
            condition = wire.Condition()
            if condition is not None:
                assert KeyCondition(condition.Kind(), condition.Offset()) == (
                    record.condition or KeyCondition.any()
                )


def test_small_requests_read_back() -> None:
    fetch = _body(protocol.encode_fetch(2**63 + 5, "t", 3, 2**45, 1000, 250), protocol.FETCH, Fetch)
    assert isinstance(fetch, Fetch)
    assert (fetch.Topic(), fetch.Partition(), fetch.Offset()) == (b"t", 3, 2**45)
    assert (fetch.SizeBytesMax(), fetch.WaitMsMax()) == (1000, 250)
    history = _body(
        protocol.encode_key_history(2**63 + 5, "t", b"key", None, 9, 42),
        protocol.KEY_HISTORY,
        KeyHistory,
    )
    assert isinstance(history, KeyHistory)
    assert (history.Partition(), history.RecordCountMax(), history.FromOffset()) == (None, 9, 42)
    commit = _body(
        protocol.encode_commit_offsets(
            2**63 + 5, "g", "t", [PartitionOffset(1, 10, "m"), PartitionOffset(2, 0)]
        ),
        protocol.COMMIT_OFFSETS,
        CommitOffsets,
    )
    assert isinstance(commit, CommitOffsets)
    assert [(commit.Partitions(i).Partition(), commit.Partitions(i).Offset()) for i in range(2)] == [
        (1, 10),
        (2, 0),
    ]
    offsets = _body(
        protocol.encode_fetch_offsets(2**63 + 5, "g", "t", [4, 5, 6]),
        protocol.FETCH_OFFSETS,
        FetchOffsets,
    )
    assert isinstance(offsets, FetchOffsets)
    assert [offsets.Partitions(i) for i in range(3)] == [4, 5, 6]
