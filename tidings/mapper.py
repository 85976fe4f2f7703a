"""The mapper between domain events and the store's records: codec, metadata, ids and upcasting.

Writing: an event becomes ``EventData`` (bytes, type name, schema id, metadata bytes and ids). Reading:
a ``RecordedEvent`` becomes the event object, upcast to today's shape, and its metadata dict.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from eventstore.ids import new_event_id
from eventstore.records import EventData
from tidings.codec import Codec, DocumentCodec
from tidings.errors import CodecError
from tidings.upcasting import Upcaster, Upcasters

__all__ = ["EventMapper", "StoredEvent"]


class StoredEvent(Protocol):
    """What the mapper reads of a stored event: a ``RecordedEvent``, or a worker's lighter view of one."""

    @property
    def event_type(self) -> str: ...
    @property
    def data(self) -> bytes: ...
    @property
    def metadata(self) -> bytes: ...
    @property
    def schema_id(self) -> str: ...
    @property
    def stream_id(self) -> str: ...
    @property
    def stream_version(self) -> int: ...
    @property
    def event_number(self) -> int | None: ...


class EventMapper:
    """Turns events into ``EventData`` for appending, and ``RecordedEvent`` back into events.

    Upcasters need a ``DocumentCodec`` (``JsonCodec`` is one), because they work between parsing the
    stored bytes and building the class.
    """

    def __init__(self, codec: Codec, upcasters: Iterable[Upcaster] | Upcasters = ()) -> None:
        self.codec = codec
        self.upcasters = upcasters if isinstance(upcasters, Upcasters) else Upcasters(upcasters)
        self._documents = codec if isinstance(codec, DocumentCodec) else None
        if self.upcasters and self._documents is None:
            raise TypeError(
                f"{type(codec).__qualname__} cannot be upcast: it has no parse and build steps (see "
                "DocumentCodec); use a codec that has them, such as JsonCodec, or no upcasters"
            )

    def to_event_data(
        self,
        event: object,
        *,
        metadata: Mapping[str, Any] | None = None,
        event_id: uuid.UUID | None = None,
        causation_id: uuid.UUID | None = None,
        correlation_id: uuid.UUID | None = None,
    ) -> EventData:
        """The record to append for ``event``; a fresh ``event_id`` unless one is given."""
        encoded = self.codec.encode(event)
        return EventData(
            event_type=encoded.event_type,
            data=encoded.data,
            metadata=self.codec.encode_metadata(metadata or {}),
            schema_id=encoded.schema_id,
            event_id=event_id if event_id is not None else new_event_id(),
            causation_id=causation_id,
            correlation_id=correlation_id,
        )

    def from_recorded(self, recorded: StoredEvent) -> tuple[object, dict[str, Any]]:
        """The event (upcast to today's shape) and the metadata of a stored record.

        Errors say which stream and event number the record has, so that it can be found and repaired.
        """
        try:
            metadata = self.codec.decode_metadata(recorded.metadata)
            return self._decode(recorded, metadata), metadata
        except CodecError as err:
            err.locate(recorded.stream_id, recorded.stream_version, recorded.event_number)
            raise

    def event_of(self, recorded: StoredEvent) -> object:
        """The event alone (upcast to today's shape), for replays that need no metadata.

        The metadata is decoded only when an upcaster of the event's type needs it.
        """
        try:
            if self._documents is None or not self.upcasters.handles(recorded.event_type):
                return self.codec.decode(recorded.event_type, recorded.data, recorded.schema_id)
            return self._decode(recorded, self.codec.decode_metadata(recorded.metadata))
        except CodecError as err:
            err.locate(recorded.stream_id, recorded.stream_version, recorded.event_number)
            raise

    def _decode(self, recorded: StoredEvent, metadata: dict[str, Any]) -> object:
        if self._documents is None or not self.upcasters.handles(recorded.event_type):
            # Nothing to rewrite: the codec's direct path (for Avro, schema resolution while decoding).
            return self.codec.decode(recorded.event_type, recorded.data, recorded.schema_id)
        document = self._documents.parse(recorded.event_type, recorded.data, recorded.schema_id)
        # The upcasters see a copy: what the caller gets back is the metadata as it was stored.
        event_type, document = self.upcasters.upcast(recorded.event_type, document, copy.deepcopy(metadata))
        return self._documents.build(event_type, document)
