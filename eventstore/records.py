"""The values that cross the store's boundary: events to append, recorded events, snapshots, versions.

The store deals in bytes: ``data`` and ``metadata`` are whatever the codec (in ``tidings``) produced,
``event_type`` names the type and ``schema_id`` identifies the schema the bytes were written with.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from datetime import datetime

from eventstore.ids import new_event_id

__all__ = [
    "ANY",
    "NO_STREAM",
    "STREAM_EXISTS",
    "EventData",
    "ExpectedVersion",
    "RecordedEvent",
    "SnapshotData",
    "StreamInfo",
]


class _Expectation(enum.Enum):
    """What an append expects of the stream when it is not an exact version."""

    ANY = "any"
    NO_STREAM = "no_stream"
    STREAM_EXISTS = "stream_exists"

    def __repr__(self) -> str:
        return self.name


ANY = _Expectation.ANY
NO_STREAM = _Expectation.NO_STREAM
STREAM_EXISTS = _Expectation.STREAM_EXISTS

ExpectedVersion = int | _Expectation
"""An exact stream version (0 means "no events yet"), or ANY, NO_STREAM or STREAM_EXISTS."""


@dataclass(frozen=True, slots=True)
class EventData:
    """An event to append, already encoded by a codec.

    Example::

        EventData("AccountOpened", b'{"account": "a-1"}', metadata=b"{}")
    """

    event_type: str
    data: bytes
    metadata: bytes = b"{}"
    schema_id: str = ""
    event_id: uuid.UUID = field(default_factory=new_event_id)
    causation_id: uuid.UUID | None = None
    correlation_id: uuid.UUID | None = None


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """An event as the store keeps it, with its place in its stream and in the global order.

    ``event_number`` is None only in stream reads of events the sequencer has not numbered yet; events
    read from the global order always carry it.
    """

    event_id: uuid.UUID
    event_number: int | None
    stream_id: str
    stream_version: int
    event_type: str
    data: bytes
    metadata: bytes
    schema_id: str
    causation_id: uuid.UUID | None
    correlation_id: uuid.UUID | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """A stream's identity and state. ``deleted`` streams were soft-deleted."""

    stream_id: str
    stream_version: int
    created_at: datetime
    deleted: bool


@dataclass(frozen=True, slots=True)
class SnapshotData:
    """A snapshot of one source (an aggregate instance, say) at ``source_version``.

    ``source_type`` keeps two kinds of source that share an id apart; ``snapshot_version`` is the
    version of the snapshot's format: a reader asking for another version gets nothing.
    """

    source_type: str
    source_id: str
    source_version: int
    data: bytes
    snapshot_version: int = 1
    metadata: bytes = b"{}"
    schema_id: str = ""
    created_at: datetime | None = None
