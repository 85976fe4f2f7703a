"""Errors raised by the event store.

    EventStoreError
    ├── ConfigurationError        a URL, schema name or limit from configuration is unusable
    ├── InvalidStreamId           empty, too long, or reserved ($-prefixed) stream id
    ├── PayloadTooLarge           an event's data + metadata exceed the configured limit
    ├── EventFieldTooLong         an event type or schema id longer than 255 characters
    ├── EmptyAppend               an append of no events
    ├── DuplicateEvent            an event_id that the store already holds
    ├── ConcurrencyError
    │   ├── WrongExpectedVersion  the stream is at another version than expected (carries the actual one)
    │   ├── StreamExists          NO_STREAM was expected but the stream has events
    │   ├── StreamNotFound        STREAM_EXISTS was expected (or a read asked) but there is no such stream
    │   └── TransactionConflict   PostgreSQL ended the transaction to break a deadlock or a serialization
    │                             conflict with another writer: run the whole transaction again
    ├── DeadlineExceeded          the append was cancelled at its caller's deadline
    ├── StreamDeleted             the stream was soft-deleted: no more appends or stream reads
    ├── HardDeleteDisabled        hard deletion was asked for but the store does not allow it
    ├── StoreMoved                the store holds another cluster's transaction ids: re-base it first
    ├── LeadershipLost            a leader's lock (and the session holding it) is gone: step down
    └── StoreUnavailable          PostgreSQL could not be reached or the session was ended by the server
        └── PoolExhausted         every session of the store stayed busy for the statement timeout

Nothing is written when any of these is raised during an append.
"""

from __future__ import annotations

__all__ = [
    "ConcurrencyError",
    "ConfigurationError",
    "DeadlineExceeded",
    "DuplicateEvent",
    "EmptyAppend",
    "EventFieldTooLong",
    "EventStoreError",
    "HardDeleteDisabled",
    "PoolExhausted",
    "InvalidStreamId",
    "LeadershipLost",
    "PayloadTooLarge",
    "StoreMoved",
    "StoreUnavailable",
    "StreamDeleted",
    "StreamExists",
    "StreamNotFound",
    "TransactionConflict",
    "WrongExpectedVersion",
]


class EventStoreError(Exception):
    """Base of every error the event store raises."""


class ConfigurationError(EventStoreError, ValueError):
    """A configured value (URL, schema name, limit) is unusable; the message says what is accepted."""


class InvalidStreamId(EventStoreError, ValueError):
    """A stream id is empty, longer than the limit, contains NUL, or starts with the reserved ``$``."""


class PayloadTooLarge(EventStoreError, ValueError):
    """An event is larger than ``StoreConfig.max_event_bytes``; nothing of the append was written."""

    def __init__(self, event_type: str, size: int, limit: int) -> None:
        self.event_type, self.size, self.limit = event_type, size, limit
        super().__init__(
            f"event {event_type} is {size} bytes, over the limit of {limit}: store large "
            "payloads elsewhere and reference them, or raise max_event_bytes"
        )


class EventFieldTooLong(EventStoreError, ValueError):
    """An event's type or schema id is longer than the store takes; nothing of the append was written.

    They travel in every Kafka message of the event, whose size Kafka's limits must bound.
    """

    def __init__(self, event_type: str, field: str, length: int, limit: int) -> None:
        self.event_type, self.field, self.length, self.limit = event_type, field, length, limit
        super().__init__(
            f"event {event_type}: its {field} is {length} characters, over the limit of {limit}: "
            f"use a shorter {field.replace('_', ' ')}"
        )


class EmptyAppend(EventStoreError, ValueError):
    """An append must carry at least one event."""


class DuplicateEvent(EventStoreError):
    """An appended event's id is already stored; nothing of the append was written.

    Appending the same events twice (a retried request, say) is safe to detect by this error.
    """


class ConcurrencyError(EventStoreError):
    """The stream is not in the state the append expected; reload it and decide again."""


class WrongExpectedVersion(ConcurrencyError):
    def __init__(self, stream_id: str, expected: object, actual: int) -> None:
        self.stream_id, self.expected, self.actual = stream_id, expected, actual
        super().__init__(f"stream {stream_id!r} is at version {actual}, expected {expected!r}")


class StreamExists(ConcurrencyError):
    def __init__(self, stream_id: str, actual: int) -> None:
        self.stream_id, self.actual = stream_id, actual
        super().__init__(f"stream {stream_id!r} already exists (version {actual}), expected no stream")


class StreamNotFound(ConcurrencyError):
    def __init__(self, stream_id: str) -> None:
        self.stream_id = stream_id
        super().__init__(f"stream {stream_id!r} does not exist")


class TransactionConflict(ConcurrencyError):
    """PostgreSQL chose this transaction as the one to end, to break a deadlock or a serialization
    conflict (SQLSTATE class 40). Nothing of the transaction was written; it can run again as it is."""

    def __init__(self, detail: str) -> None:
        super().__init__(
            f"PostgreSQL ended the transaction to break a conflict with another writer ({detail}); nothing "
            "of it was written. Run the whole transaction again (Application.transaction does); writers "
            "that take several streams in the same order never deadlock"
        )


class DeadlineExceeded(EventStoreError, TimeoutError):
    """An append given a deadline was still waiting (for a session, or for another writer's lock) when
    the deadline passed, and was cancelled: nothing of it was written."""

    def __init__(self, stream_id: str) -> None:
        self.stream_id = stream_id
        super().__init__(f"the append to {stream_id!r} was cancelled at its deadline; nothing was written")


class StreamDeleted(EventStoreError):
    def __init__(self, stream_id: str) -> None:
        self.stream_id = stream_id
        super().__init__(f"stream {stream_id!r} was deleted: it takes no appends and serves no reads")


class HardDeleteDisabled(EventStoreError):
    def __init__(self) -> None:
        super().__init__(
            "hard deletion is off for this store: enable StoreConfig(allow_hard_delete=True) "
            "for erasure requests"
        )


class LeadershipLost(EventStoreError):
    """The session holding a leadership's advisory lock ended, or no longer holds the lock.

    The leader must stop leading at once and stand by: another process may hold the lock already.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"the leadership {name!r} is lost (its PostgreSQL session ended or holds no lock): stand by "
            "and try to lead again; if this repeats, check what ends the session (a pooler in "
            "transaction mode needs a session-mode leader_url, or an idle-session timeout)"
        )


class StoreMoved(EventStoreError):
    """The store was moved to another PostgreSQL cluster (dump/restore, logical replication) whose
    transaction ids are lower than the ones its events were ordered by: nothing can be numbered until it
    is re-based (``tidings store rebase``, which ``tidings migrate`` also runs)."""

    def __init__(self, schema: str) -> None:
        self.schema = schema
        self.command = f"tidings store rebase --schema {schema}"
        super().__init__(
            f"the store in schema {schema!r} holds transaction ids of another PostgreSQL cluster (moved by "
            f"dump/restore or logical replication): no event can be numbered until it is re-based. Run "
            f"`{self.command}` (or `tidings migrate`, which re-bases too); events committed but not yet "
            "numbered keep their order and nothing numbered changes its number"
        )


class StoreUnavailable(EventStoreError):
    """PostgreSQL did not answer, or ended the session (for example an idle transaction timed out)."""


class PoolExhausted(StoreUnavailable):
    """Every session of the store stayed in use for the whole wait: raise ``StoreConfig.pool_size``."""
