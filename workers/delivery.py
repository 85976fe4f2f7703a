"""A Kafka message as a handler sees it: the recorded event the relay published, and where it came from.

The relay sends the stored bytes as the value and everything else as headers (``eventstore.relay``);
``delivery_of`` reads them back into one ``Delivery``. A message that cannot be read that way comes back
with ``error`` set: it is a poison event, parked or dead-lettered, never retried.

This is the hot path of every handler, so a delivery is one object that keeps the headers' values as they
came and makes ids and timestamps only when asked for; a handler that reads none of them pays for none.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from eventstore.records import RecordedEvent
from tidings.avro.binding import uuid_from_text

__all__ = ["Delivery", "EventMetadata", "UndecodableMessage", "delivery_of"]


class UndecodableMessage(Exception):
    """A Kafka message that is not an event the relay published (a header is missing or malformed).

    It is parked (or dead-lettered) with this error; find it with ``tidings parked list``.
    """


class Delivery:
    """One message: its place in Kafka and, when it could be read, the event it carries.

    The event's fields are those of ``RecordedEvent`` (``data`` is the message value); they are only
    meaningful when ``readable``. ``error`` says why a message is not.
    """

    __slots__ = (
        "_causation_id",
        "_correlation_id",
        "_created_at",
        "_event_id",
        "error",
        "event_number",
        "event_type",
        "headers",
        "key",
        "metadata",
        "offset",
        "partition",
        "schema_id",
        "stream_id",
        "stream_version",
        "topic",
        "value",
    )

    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes
    headers: Sequence[tuple[str, bytes]]
    error: str
    _event_id: str
    _created_at: datetime
    _causation_id: str
    _correlation_id: str
    event_number: int
    event_type: str
    stream_id: str
    stream_version: int
    schema_id: str
    metadata: bytes

    @property
    def readable(self) -> bool:
        return not self.error

    @property
    def data(self) -> bytes:
        return self.value

    @property
    def event_id(self) -> uuid.UUID:
        return uuid_from_text(self._event_id)

    @property
    def event_id_text(self) -> str:
        """The event_id as the message spells it (the relay writes the store's canonical text)."""
        return self._event_id

    @property
    def causation_id(self) -> uuid.UUID | None:
        return uuid_from_text(self._causation_id) if self._causation_id else None

    @property
    def correlation_id(self) -> uuid.UUID | None:
        return uuid_from_text(self._correlation_id) if self._correlation_id else None

    @property
    def created_at(self) -> datetime:
        return self._created_at

    @property
    def recorded(self) -> RecordedEvent | None:
        """The full recorded event, or None for an unreadable message."""
        if self.error:
            return None
        return RecordedEvent(
            self.event_id,
            self.event_number,
            self.stream_id,
            self.stream_version,
            self.event_type,
            self.value,
            self.metadata,
            self.schema_id,
            self.causation_id,
            self.correlation_id,
            self.created_at,
        )


class EventMetadata:
    """What a handler knows about the event besides its data (Commanded's metadata map).

    ``metadata`` is the user's metadata recorded with the event (``dispatch(..., metadata=...)``);
    ``state`` is the handler's state when the event arrived; ``application`` is the name of the
    application the handler runs in (its ``WorkerApp``'s name, the tenant's app for an app run per
    tenant). The event's fields are read from its delivery when asked for. ``topic``, ``partition``
    and ``offset`` are its place in Kafka: empty for an event read from the store (``partition_by``
    while the worker repartitions).
    """

    __slots__ = ("_delivery", "application", "handler_name", "metadata", "state")

    def __init__(
        self,
        delivery: Delivery | RecordedEvent,
        handler_name: str,
        metadata: dict[str, Any],
        state: Any,
        application: str = "",
    ) -> None:
        self._delivery = delivery
        self.handler_name = handler_name
        self.metadata = metadata
        self.state = state
        self.application = application

    @property
    def event_id(self) -> uuid.UUID:
        return self._delivery.event_id

    @property
    def event_number(self) -> int:
        return self._delivery.event_number or 0

    @property
    def stream_id(self) -> str:
        return self._delivery.stream_id

    @property
    def stream_version(self) -> int:
        return self._delivery.stream_version

    @property
    def event_type(self) -> str:
        return self._delivery.event_type

    @property
    def causation_id(self) -> uuid.UUID | None:
        return self._delivery.causation_id

    @property
    def correlation_id(self) -> uuid.UUID | None:
        return self._delivery.correlation_id

    @property
    def created_at(self) -> datetime:
        return self._delivery.created_at

    @property
    def topic(self) -> str:
        return getattr(self._delivery, "topic", "")

    @property
    def partition(self) -> int:
        return getattr(self._delivery, "partition", 0)

    @property
    def offset(self) -> int:
        return getattr(self._delivery, "offset", 0)

    def __repr__(self) -> str:
        d = self._delivery
        return (
            f"EventMetadata(event_number={d.event_number}, stream_id={d.stream_id!r}, "
            f"stream_version={d.stream_version}, event_type={d.event_type!r}, "
            f"handler_name={self.handler_name!r}, application={self.application!r})"
        )


_NEVER = datetime.fromtimestamp(0, UTC)
_REQUIRED = ("event_id", "event_type", "event_number", "stream_id", "stream_version", "created_at")
_REQUIRED_SET = frozenset(_REQUIRED)
_new = object.__new__


def delivery_of(
    topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None, headers: Any
) -> Delivery:
    """The delivery of one message; an unreadable one comes back with ``error`` saying why."""
    d: Delivery = _new(Delivery)
    d.topic = topic
    d.partition = partition
    d.offset = offset
    d.key = key or b""
    d.value = value or b""
    d.headers = pairs = headers or []
    if value is None:
        # The relay always sends the stored bytes (empty ones too): a null value is a tombstone.
        return _unreadable(d, "no value (a tombstone): not published by a tidings relay")
    found = dict(pairs)
    if not found.keys() >= _REQUIRED_SET:
        missing = [name for name in _REQUIRED if name not in found]
        return _unreadable(d, f"missing headers {missing}: not published by a tidings relay")
    try:
        d.event_number = int(found["event_number"])
        d.stream_version = int(found["stream_version"])
        d.event_type = found["event_type"].decode()
        d.stream_id = found["stream_id"].decode()
        d.schema_id = found["schema_id"].decode() if "schema_id" in found else ""
        d.metadata = found.get("metadata") or b"{}"
        # Checked now, so that a damaged message is parked on arrival, not failing a handler that reads it.
        d._event_id = _checked_id(found["event_id"].decode())
        d._created_at = datetime.fromisoformat(found["created_at"].decode())
        d._causation_id = _optional_id(found.get("causation_id"))
        d._correlation_id = _optional_id(found.get("correlation_id"))
    except (ValueError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        return _unreadable(d, f"malformed headers: {exc}")
    d.error = ""
    return d


def _optional_id(raw: bytes | None) -> str:
    if not raw:
        return ""
    return _checked_id(raw.decode())


def _checked_id(text: str) -> str:
    """``text`` once it is known to be what ``uuid_from_text`` reads, without making the UUID."""
    digits = text.replace("-", "")
    if len(digits) == 32:
        int(digits, 16)
    else:
        uuid.UUID(text)  # the other spellings UUID takes, or its ValueError
    return text


def _unreadable(d: Delivery, error: str) -> Delivery:
    d.error = error
    d.event_number = 0
    d.stream_version = 0
    d.event_type = d.stream_id = d.schema_id = d._event_id = ""
    d._created_at = _NEVER
    d._causation_id = d._correlation_id = ""
    d.metadata = b"{}"
    return d
