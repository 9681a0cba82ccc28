"""The client's exceptions: one class per server ErrorCode, and OutcomeUnknown for every
failure after which a write may or may not have happened."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ErrorCode(enum.IntEnum):
    """The schema's ErrorCode."""

    INTERNAL = 0
    BAD_REQUEST = 1
    UNSUPPORTED_REQUEST = 2
    TOO_LARGE = 3
    UNKNOWN_TOPIC = 4
    UNKNOWN_PARTITION = 5
    TOPIC_EXISTS = 6
    CONFLICT = 7
    STORAGE_FAILURE = 8
    OVERLOADED = 9
    SHUTTING_DOWN = 10
    OUT_OF_ORDER_SEQUENCE = 11
    PRODUCER_FENCED = 12
    OFFSET_OUT_OF_RANGE = 13
    BACKUP_RANGE_UNAVAILABLE = 14
    OFFSET_BEFORE_LOG_START = 15
    INVALID_CONFIG = 16


class ConditionKind(enum.IntEnum):
    """The schema's ConditionKind: which check a KeyCondition makes."""

    ANY = 0
    NO_KEY = 1
    KEY_EXISTS = 2
    AT = 3


class ConflictKind(enum.IntEnum):
    """The schema's ConflictKind: which condition of a rejected append failed."""

    END_OFFSET = 0
    KEY = 1


@dataclass(frozen=True, slots=True)
class KeyCondition:
    """What a record's key must look like for its append to be accepted."""

    kind: ConditionKind = ConditionKind.ANY
    offset: int | None = None

    @staticmethod
    def any() -> KeyCondition:
        return KeyCondition(ConditionKind.ANY)

    @staticmethod
    def no_key() -> KeyCondition:
        """The key has never been written in the partition."""
        return KeyCondition(ConditionKind.NO_KEY)

    @staticmethod
    def key_exists() -> KeyCondition:
        return KeyCondition(ConditionKind.KEY_EXISTS)

    @staticmethod
    def at(offset: int) -> KeyCondition:
        """The key's latest record is at exactly `offset`."""
        return KeyCondition(ConditionKind.AT, offset)


class CairnError(Exception):
    """Every error of this client. `code` is the server's ErrorCode when the server
    answered with an error, None for client-side failures."""

    code: ErrorCode | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class OutcomeUnknown(CairnError):
    """The request may or may not have taken effect: the connection closed or the call
    timed out before its answer, or the server answered StorageFailure, Overloaded,
    ShuttingDown or Internal (for a read, retrying is always safe; for an append, resend it
    with the same ProducerStamp, see IdempotentProducer, or check the log first)."""


class ConnectionLost(OutcomeUnknown):
    """The connection closed (or broke) while the request was in flight."""


class RequestTimeout(OutcomeUnknown):
    """No answer within the call's timeout. The connection stays open; an answer that
    comes later is dropped."""


class ConnectError(CairnError):
    """Could not connect to the server: the request was not sent."""


class ProtocolError(CairnError):
    """The server sent something this client cannot read (a broken frame, an unexpected
    answer kind, an unknown enum value). The connection is closed."""


class ServerError(CairnError):
    """The server answered with an ErrorResponse."""

    def __init__(self, message: str, code: ErrorCode) -> None:
        super().__init__(message)
        self.code = code


class InternalError(ServerError, OutcomeUnknown):
    pass


class BadRequest(ServerError):
    pass


class UnsupportedRequest(ServerError):
    pass


class TooLarge(ServerError):
    pass


class UnknownTopic(ServerError):
    pass


class UnknownPartition(ServerError):
    pass


class TopicExists(ServerError):
    pass


class StorageFailure(ServerError, OutcomeUnknown):
    pass


class Overloaded(ServerError, OutcomeUnknown):
    pass


class ShuttingDown(ServerError, OutcomeUnknown):
    pass


class OutOfOrderSequence(ServerError):
    pass


class ProducerFenced(ServerError):
    pass


class OffsetOutOfRange(ServerError):
    """A fetch past the partition's synced end."""


class OffsetBeforeLogStart(ServerError):
    """A read below the partition's first kept offset: retention removed it. `log_start`
    is that offset, where a reader can resume."""

    def __init__(self, message: str, code: ErrorCode, log_start: int = 0) -> None:
        super().__init__(message, code)
        self.log_start = log_start


class InvalidConfig(ServerError):
    """A topic setting that is not valid (a retention limit of 0)."""


class BackupRangeUnavailable(ServerError):
    """A backup read outside the shard's synced log (`cairn backup` only)."""


class Conflict(ServerError):
    """An append's condition failed; nothing was appended.

    `kind` says which: END_OFFSET (expected_end_offset did not match; `current_offset` is
    the partition's end offset) or KEY (the condition of records[`record_index`] did not
    hold; `current_offset` is the offset of the key's latest record, appended records
    included, or None when the key was never written)."""

    def __init__(
        self,
        message: str,
        kind: ConflictKind,
        record_index: int,
        condition: KeyCondition | None,
        current_offset: int | None,
    ) -> None:
        super().__init__(message, ErrorCode.CONFLICT)
        self.kind = kind
        self.record_index = record_index
        self.condition = condition
        self.current_offset = current_offset


SERVER_ERRORS: dict[ErrorCode, type[ServerError]] = {
    ErrorCode.INTERNAL: InternalError,
    ErrorCode.BAD_REQUEST: BadRequest,
    ErrorCode.UNSUPPORTED_REQUEST: UnsupportedRequest,
    ErrorCode.TOO_LARGE: TooLarge,
    ErrorCode.UNKNOWN_TOPIC: UnknownTopic,
    ErrorCode.UNKNOWN_PARTITION: UnknownPartition,
    ErrorCode.TOPIC_EXISTS: TopicExists,
    ErrorCode.STORAGE_FAILURE: StorageFailure,
    ErrorCode.OVERLOADED: Overloaded,
    ErrorCode.SHUTTING_DOWN: ShuttingDown,
    ErrorCode.OUT_OF_ORDER_SEQUENCE: OutOfOrderSequence,
    ErrorCode.PRODUCER_FENCED: ProducerFenced,
    ErrorCode.OFFSET_OUT_OF_RANGE: OffsetOutOfRange,
    ErrorCode.BACKUP_RANGE_UNAVAILABLE: BackupRangeUnavailable,
    ErrorCode.OFFSET_BEFORE_LOG_START: OffsetBeforeLogStart,
    ErrorCode.INVALID_CONFIG: InvalidConfig,
}
