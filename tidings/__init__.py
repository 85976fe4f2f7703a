"""tidings: event-sourced, CQRS applications on PostgreSQL and Apache Kafka, after Elixir's Commanded.

The programming model and the write side live here; the PostgreSQL store is ``eventstore`` and the
Kafka runtime is ``workers``. ``tidings.devservices`` provides real services for development and tests.
The codec boundary (``TypeRegistry``, ``JsonCodec``, upcasters, ``EventMapper``) turns domain events into
the bytes the store keeps and back: see docs/serialization.md. Avro contracts are ``tidings.avro``.
"""

from tidings.codec import Codec, DocumentCodec, Encoded, JsonCodec
from tidings.errors import (
    CodecError,
    DeserializationError,
    DuplicateEventType,
    SchemaFileError,
    SchemaMismatch,
    SerializationError,
    UnknownEventType,
    UnknownSchema,
    UpcastLoop,
)
from tidings.mapper import EventMapper
from tidings.registry import TypeRegistry
from tidings.upcasting import MAX_UPCAST_STEPS, RenameEventType, Upcaster, Upcasters

__version__ = "0.1.0"

__all__ = [
    "__version__",
    # event types and their stored names
    "TypeRegistry",
    # codecs: events to bytes and back
    "Codec",
    "DocumentCodec",
    "Encoded",
    "JsonCodec",
    # upcasting old shapes of stored events
    "MAX_UPCAST_STEPS",
    "RenameEventType",
    "Upcaster",
    "Upcasters",
    # between events and the store's records
    "EventMapper",
    # errors
    "CodecError",
    "DeserializationError",
    "DuplicateEventType",
    "SchemaFileError",
    "SchemaMismatch",
    "SerializationError",
    "UnknownEventType",
    "UnknownSchema",
    "UpcastLoop",
]
