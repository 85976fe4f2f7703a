"""A Kafka message as a handler sees it: the recorded event the relay published, and where it came from.

The relay sends the stored bytes as the value and everything else as headers (``eventstore.relay``);
``delivery_of`` turns them back into a ``RecordedEvent``. A message that cannot be read that way raises
``UndecodableMessage``: it is a poison event, parked or dead-lettered, never retried.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from eventstore.records import RecordedEvent
from tidings.avro.binding import uuid_from_text

__all__ = ["Delivery", "EventMetadata", "Relayed", "UndecodableMessage", "delivery_of"]


class UndecodableMessage(Exception):
    """A Kafka message that is not an event the relay published (a header is missing or malformed).

    It is parked (or dead-lettered) with this error; find it with ``tidings parked list``.
    """


class Relayed:
    """What a relayed message says of its event, read from its headers: enough to filter, order,
    acknowledge and decode it, without building a full ``RecordedEvent`` for every message."""

    __slots__ = (
        "causation_id",
        "correlation_id",
        "created_at",
        "data",
        "event_id",
        "event_number",
        "event_type",
        "metadata",
        "schema_id",
        "stream_id",
        "stream_version",
    )

    def __init__(
        self,
        event_id: uuid.UUID,
        event_number: int,
        stream_id: str,
        stream_version: int,
        event_type: str,
        data: bytes,
        metadata: bytes,
        schema_id: str,
        causation_id: uuid.UUID | None,
        correlation_id: uuid.UUID | None,
        created_at: datetime,
    ) -> None:
        self.event_id = event_id
        self.event_number = event_number
        self.stream_id = stream_id
        self.stream_version = stream_version
        self.event_type = event_type
        self.data = data
        self.metadata = metadata
        self.schema_id = schema_id
        self.causation_id = causation_id
        self.correlation_id = correlation_id
        self.created_at = created_at

    def recorded(self) -> RecordedEvent:
        """The full ``RecordedEvent``."""
        return RecordedEvent(
            self.event_id,
            self.event_number,
            self.stream_id,
            self.stream_version,
            self.event_type,
            self.data,
            self.metadata,
            self.schema_id,
            self.causation_id,
            self.correlation_id,
            self.created_at,
        )


@dataclass(slots=True, eq=False)
class Delivery:
    """One message: its place in Kafka and, once read, what its headers say of the event it carries."""

    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes
    headers: Sequence[tuple[str, bytes]]
    relayed: Relayed | None = None
    """None when the message could not be read (``error`` says why)."""
    error: str = ""

    @property
    def event_number(self) -> int:
        return self.relayed.event_number if self.relayed is not None else 0

    @property
    def recorded(self) -> RecordedEvent | None:
        """The full recorded event, or None for an unreadable message."""
        return self.relayed.recorded() if self.relayed is not None else None


@dataclass(slots=True)
class EventMetadata:
    """What a handler knows about the event besides its data (Commanded's metadata map).

    ``metadata`` is the user's metadata recorded with the event (``dispatch(..., metadata=...)``);
    ``state`` is the handler's state when the event arrived.
    """

    event_id: uuid.UUID
    event_number: int
    stream_id: str
    stream_version: int
    event_type: str
    causation_id: uuid.UUID | None
    correlation_id: uuid.UUID | None
    created_at: datetime
    handler_name: str
    metadata: dict[str, Any] = field(default_factory=dict)
    state: Any = None
    topic: str = ""
    partition: int = 0
    offset: int = 0

    @classmethod
    def of(cls, delivery: Delivery, handler_name: str, metadata: dict[str, Any], state: Any) -> EventMetadata:
        relayed = delivery.relayed
        assert relayed is not None
        return cls(
            relayed.event_id,
            relayed.event_number,
            relayed.stream_id,
            relayed.stream_version,
            relayed.event_type,
            relayed.causation_id,
            relayed.correlation_id,
            relayed.created_at,
            handler_name,
            metadata,
            state,
            delivery.topic,
            delivery.partition,
            delivery.offset,
        )

    @classmethod
    def of_recorded(
        cls, recorded: RecordedEvent, handler_name: str, metadata: dict[str, Any]
    ) -> EventMetadata:
        return cls(
            recorded.event_id,
            recorded.event_number or 0,
            recorded.stream_id,
            recorded.stream_version,
            recorded.event_type,
            recorded.causation_id,
            recorded.correlation_id,
            recorded.created_at,
            handler_name,
            metadata,
        )


_REQUIRED = ("event_id", "event_type", "event_number", "stream_id", "stream_version", "created_at")


def delivery_of(
    topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None, headers: Any
) -> Delivery:
    """The delivery of one message; an unreadable one comes back with ``relayed=None`` and an error."""
    pairs = headers or []
    key = key or b""
    value = value or b""
    found = dict(pairs)
    try:
        causation = found.get("causation_id")
        correlation = found.get("correlation_id")
        relayed = Relayed(
            uuid_from_text(found["event_id"].decode()),
            int(found["event_number"]),
            found["stream_id"].decode(),
            int(found["stream_version"]),
            found["event_type"].decode(),
            value,
            found.get("metadata") or b"{}",
            found["schema_id"].decode() if "schema_id" in found else "",
            uuid_from_text(causation.decode()) if causation else None,
            uuid_from_text(correlation.decode()) if correlation else None,
            datetime.fromisoformat(found["created_at"].decode()),
        )
    except KeyError:
        missing = [name for name in _REQUIRED if name not in found]
        error = f"missing headers {missing}: not published by a tidings relay"
        return Delivery(topic, partition, offset, key, value, pairs, None, error)
    except (ValueError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        return Delivery(topic, partition, offset, key, value, pairs, None, f"malformed headers: {exc}")
    return Delivery(topic, partition, offset, key, value, pairs, relayed)
