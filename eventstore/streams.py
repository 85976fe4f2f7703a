"""Rules for what the store accepts before it talks to PostgreSQL: stream ids and event sizes."""

from __future__ import annotations

import re
from collections.abc import Sequence

from eventstore.errors import EmptyAppend, EventFieldTooLong, InvalidStreamId, PayloadTooLarge
from eventstore.records import EventData

__all__ = ["MAX_NAME_LENGTH", "MAX_STREAM_ID_LENGTH", "validate_events", "validate_stream_id"]

MAX_STREAM_ID_LENGTH = 255
MAX_NAME_LENGTH = 255
"""The longest event type and schema id: they travel in every Kafka message of the event, whose size
the relay's and Kafka's limits must bound (``eventstore.kafka_limits``)."""
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


def validate_stream_id(stream_id: str) -> str:
    """Return ``stream_id`` if the store accepts it.

    Raises:
        InvalidStreamId: not a string, empty or blank, longer than 255 characters, containing NUL or
            other control characters, or starting with ``$`` (reserved for system streams such as ``$all``).
    """
    if not isinstance(stream_id, str) or not stream_id.strip():
        raise InvalidStreamId(f"stream id must be a non-empty string, got {stream_id!r}")
    if len(stream_id) > MAX_STREAM_ID_LENGTH:
        raise InvalidStreamId(
            f"stream id is {len(stream_id)} characters, over the limit of {MAX_STREAM_ID_LENGTH}"
        )
    if _CONTROL_CHARACTERS.search(stream_id):
        raise InvalidStreamId(f"stream id {stream_id!r} contains control characters")
    if stream_id.startswith("$"):
        raise InvalidStreamId(
            f"stream id {stream_id!r} starts with '$', which is reserved for system streams"
        )
    return stream_id


def validate_events(events: Sequence[EventData], max_event_bytes: int) -> None:
    """Check a whole append before any of it is written.

    Raises:
        EmptyAppend: no events.
        PayloadTooLarge: an event's data and metadata together exceed ``max_event_bytes``.
        EventFieldTooLong: an event type or schema id is longer than ``MAX_NAME_LENGTH`` characters.
        TypeError: an element is not an EventData, or its data or metadata are not bytes.
    """
    if not events:
        raise EmptyAppend("an append needs at least one event")
    for event in events:
        if not isinstance(event, EventData):
            raise TypeError(
                f"append takes EventData (encode events with a codec first), got {type(event).__name__}"
            )
        if not isinstance(event.data, bytes) or not isinstance(event.metadata, bytes):
            raise TypeError(f"event {event.event_type}: data and metadata must be bytes")
        if not event.event_type:
            raise TypeError("event_type must be a non-empty string")
        for name, value in (("event_type", event.event_type), ("schema_id", event.schema_id)):
            if len(value) > MAX_NAME_LENGTH:
                raise EventFieldTooLong(event.event_type[:80], name, len(value), MAX_NAME_LENGTH)
        size = len(event.data) + len(event.metadata)
        if size > max_event_bytes:
            raise PayloadTooLarge(event.event_type, size, max_event_bytes)
