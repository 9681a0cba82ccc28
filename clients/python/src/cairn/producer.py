"""IdempotentProducer: appends that may be resent after an outcome-unknown failure
without appending twice (the schema's ProducerStamp).

The producer holds a server-allocated id and, per partition, the sequence its next batch
starts at. Each append is stamped with them; when the answer is lost (the connection
closed, the server restarted, a timeout, Overloaded, ShuttingDown, Internal,
StorageFailure), the same batch goes again with the same stamp, and the server, which
remembers a producer's last batches per partition across restarts, answers a batch it
already has with its original offsets. A sequence is used up only by a batch that was
appended: a conflict or a refused batch leaves it for the next one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from .client import Client
from .errors import CairnError, ConnectError, OutcomeUnknown
from .types import Appended, ProducerId, ProducerStamp, Record

T = TypeVar("T")

_SEQUENCE_MODULUS = 1 << 31


def sequence_after(base_sequence: int, record_count: int) -> int:
    """Sequences wrap from 2147483647 to 0, as Kafka's do."""
    return (base_sequence + record_count) % _SEQUENCE_MODULUS


class IdempotentProducer:
    """One batch in flight at a time, which is what keeps its sequences in order."""

    def __init__(
        self,
        client: Client,
        *,
        give_up_after: float = 60.0,
        backoff_first: float = 0.02,
        backoff_max: float = 1.0,
    ) -> None:
        self.client = client
        self.give_up_after = give_up_after
        self.backoff_first = backoff_first
        self.backoff_max = backoff_max
        self._next_sequence: dict[tuple[str, int], int] = {}
        self.id: ProducerId = self._with_retries(client.init_producer)

    def append(
        self,
        topic: str,
        records: Sequence[Record],
        *,
        partition: int | None = None,
        expected_end_offset: int | None = None,
    ) -> Appended:
        """Appends `records` once, whatever happened to earlier attempts: a resend of one
        that was appended answers with `duplicate` set and the original offsets."""
        # Sequences count per partition, so the partition is settled before the first
        # attempt rather than left to the server.
        key = records[0].key if records else b""
        if partition is None:
            resolved = self._with_retries(lambda: self.client.partition_for(topic, key))
        else:
            resolved = partition
        slot = (topic, resolved)
        base_sequence = self._next_sequence.get(slot, 0)
        stamp = ProducerStamp(self.id.producer_id, self.id.epoch, base_sequence)
        appended = self._with_retries(
            lambda: self.client.append(
                topic,
                records,
                partition=resolved,
                expected_end_offset=expected_end_offset,
                producer=stamp,
            )
        )
        self._next_sequence[slot] = sequence_after(base_sequence, appended.record_count)
        return appended

    def _with_retries(self, attempt: Callable[[], T]) -> T:
        started = time.monotonic()
        backoff = self.backoff_first
        while True:
            try:
                return attempt()
            except (OutcomeUnknown, ConnectError):
                if time.monotonic() - started >= self.give_up_after:
                    raise
            time.sleep(backoff)
            backoff = min(backoff * 2, self.backoff_max)
            # A restarted server may own its partitions on other ports now.
            try:
                self.client.metadata()
            except CairnError:
                pass
