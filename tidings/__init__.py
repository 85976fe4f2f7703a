"""tidings: event-sourced, CQRS applications on PostgreSQL and Apache Kafka, after Elixir's Commanded.

The programming model and the write side live here; the PostgreSQL store is ``eventstore`` and the
Kafka runtime is ``workers``. ``tidings.devservices`` provides real services for development and tests.
The codec boundary (``TypeRegistry``, ``JsonCodec``, upcasters, ``EventMapper``) turns domain events into
the bytes the store keeps and back: see docs/serialization.md. Avro contracts are ``tidings.avro``.
"""

from tidings.aggregate import Aggregate, Multi
from tidings.aggregate_cache import AggregateCache
from tidings.codec import Codec, DocumentCodec, Encoded, JsonCodec
from tidings.dispatch import Application, ExecutionResult
from tidings.errors import (
    CodecError,
    ConsistencyTimeout,
    DeserializationError,
    DispatchError,
    DispatchHalted,
    DuplicateEventType,
    DuplicateRegistration,
    ExecutionFailed,
    ExecutionTimeout,
    InvalidCommand,
    InvalidIdentity,
    ReentrantDispatch,
    SchemaFileError,
    SchemaMismatch,
    SerializationError,
    TooManyAttempts,
    UnknownEventType,
    UnknownSchema,
    UnregisteredCommand,
    UpcastLoop,
)
from tidings.mapper import EventMapper
from tidings.middleware import Middleware, Pipeline
from tidings.registry import TypeRegistry
from tidings.router import Router
from tidings.upcasting import MAX_UPCAST_STEPS, RenameEventType, Upcaster, Upcasters

__version__ = "0.1.0"

__all__ = [
    "__version__",
    # the write side
    "Aggregate",
    "AggregateCache",
    "Application",
    "ExecutionResult",
    "Middleware",
    "Multi",
    "Pipeline",
    "Router",
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
    "ConsistencyTimeout",
    "DeserializationError",
    "DispatchError",
    "DispatchHalted",
    "DuplicateRegistration",
    "ExecutionFailed",
    "ExecutionTimeout",
    "InvalidCommand",
    "InvalidIdentity",
    "ReentrantDispatch",
    "TooManyAttempts",
    "UnregisteredCommand",
    "DuplicateEventType",
    "SchemaFileError",
    "SchemaMismatch",
    "SerializationError",
    "UnknownEventType",
    "UnknownSchema",
    "UpcastLoop",
]
