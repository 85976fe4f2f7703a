"""The Avro codec: dataclass events as Avro, framed so that the bytes name the schema they were written with.

The default framing needs no service: Avro single-object encoding (``C3 01``, the schema's 8-byte
CRC-64-AVRO fingerprint, the body), with writer schemas found by fingerprint in ``schemas/``. The
Confluent framing (``00``, a 4-byte Schema Registry id, the body) is in ``tidings.avro.registry``. Either
way the same bytes are stored in PostgreSQL and sent to Kafka; the store's ``schema_id`` column repeats
the fingerprint (``avro:<hex>``) or the id (``avro-registry:<id>``) for operators.

Bytes written with today's schema (the latest version in ``schemas/``) are read by a decoder generated
for it (``tidings.avro.decoder``). Bytes written with another version go through fastavro, which resolves
the writer's schema to today's with Avro's rules: added fields take their defaults, removed ones are
skipped, aliases follow renames, ints widen.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from fastavro import schemaless_reader, schemaless_writer

from tidings.avro.binding import Binding, differences
from tidings.avro.decoder import Decoder, compile_decoder
from tidings.avro.schemas import SchemaSet, SchemaVersion
from tidings.codec import Encoded, JsonCodec
from tidings.errors import (
    CodecError,
    DeserializationError,
    SchemaMismatch,
    SerializationError,
    UnknownEventType,
    UnknownSchema,
)
from tidings.registry import TypeRegistry

__all__ = ["SINGLE_OBJECT_MARKER", "AvroCodec", "Framing", "SingleObjectFraming", "WriterSchema"]

SINGLE_OBJECT_MARKER = b"\xc3\x01"


@dataclass(frozen=True, slots=True)
class WriterSchema:
    """The schema some bytes were written with, as a framing finds it."""

    key: str
    """Names the schema: the store's ``schema_id`` (``avro:<fingerprint>`` or ``avro-registry:<id>``)."""
    parsed: dict[str, Any]
    """The schema parsed by fastavro."""
    physical: dict[str, Any]
    """The same without logical types (see ``SchemaVersion.physical``)."""
    subject: str
    """The record's full name."""


class Framing(Protocol):
    """How the bytes say which schema wrote them."""

    def header(self, version: SchemaVersion) -> tuple[bytes, str]:
        """The prefix for events written with ``version``, and the ``schema_id`` to store beside them."""
        ...

    def writer(self, data: bytes, event_type: str) -> tuple[WriterSchema, int]:
        """The schema ``data`` was written with, and where the Avro body starts.

        Raises:
            DeserializationError: no header of this framing.
            UnknownSchema: the header names a schema that cannot be found.
        """
        ...


class SingleObjectFraming:
    """Avro single-object encoding, with writer schemas found by fingerprint in a ``SchemaSet``."""

    def __init__(self, schemas: SchemaSet) -> None:
        self._schemas = schemas
        self._writers: dict[bytes, WriterSchema] = {}

    def header(self, version: SchemaVersion) -> tuple[bytes, str]:
        return SINGLE_OBJECT_MARKER + version.fingerprint, f"avro:{version.fingerprint.hex()}"

    def writer(self, data: bytes, event_type: str) -> tuple[WriterSchema, int]:
        if data[:2] != SINGLE_OBJECT_MARKER or len(data) < 10:
            raise DeserializationError(
                event_type,
                "the bytes do not start with Avro's single-object marker C3 01 and a fingerprint (they "
                f"start {data[:10].hex(' ') or 'empty'}): they were written by another codec or damaged",
            )
        fingerprint = data[2:10]
        writer = self._writers.get(fingerprint)
        if writer is None:
            version = self._schemas.by_fingerprint(fingerprint)
            if version is None:
                raise UnknownSchema(
                    event_type,
                    f"no schema in schemas/ has the fingerprint {fingerprint.hex()}: the event was written "
                    "with a schema version that is not in this build; restore that version's .avsc file",
                )
            writer = WriterSchema(
                f"avro:{fingerprint.hex()}", version.parsed, version.physical, version.subject
            )
            self._writers[fingerprint] = writer
        return writer, 10


@dataclass(frozen=True, slots=True)
class _Reader:
    binding: Binding
    version: SchemaVersion
    header: bytes
    schema_id: str
    read_body: Decoder
    """The event from an Avro body written with ``version`` itself (see ``tidings.avro.decoder``)."""


class AvroCodec:
    """Registered dataclass events as Avro, each with the latest schema of its type name in ``schemas``.

    Example::

        codec = AvroCodec(registry, SchemaSet.load("schemas"))
        encoded = codec.encode(AccountOpened(...))  # bank.AccountOpened, b"\\xc3\\x01...", "avro:fc85..."
        codec.decode(encoded.event_type, encoded.data, encoded.schema_id)

    Raises (at construction):
        SchemaMismatch: a registered class has no schema, or disagrees with its latest version.
    """

    def __init__(self, registry: TypeRegistry, schemas: SchemaSet, *, framing: Framing | None = None) -> None:
        self.registry = registry
        self.schemas = schemas
        self.framing: Framing = framing if framing is not None else SingleObjectFraming(schemas)
        self._metadata = JsonCodec(registry)
        self._readers: dict[str, _Reader] = {}
        for name in registry.names():
            cls = registry.class_for(name)
            version = schemas.latest(name)
            if version is None:
                namespace, _, short = name.rpartition(".")
                raise SchemaMismatch(
                    name,
                    [
                        f"no schema for {name!r}: write {namespace or '<namespace>'}/{short}/v1.avsc under "
                        f"schemas/ (`tidings schemas new` prints one for the class)"
                    ],
                )
            found = differences(cls, version.schema)
            if found:
                raise SchemaMismatch(name, found)
            header, schema_id = self.framing.header(version)
            binding = Binding(cls, version.schema)
            read_body = compile_decoder(version.physical, build=binding.build)
            self._readers[name] = _Reader(binding, version, header, schema_id, read_body)

    def encode(self, event: object) -> Encoded:
        event_type = self.registry.name_of(event)
        reader = self._reader(event_type)
        buffer = io.BytesIO()
        buffer.write(reader.header)
        try:
            schemaless_writer(buffer, reader.version.physical, reader.binding.to_datum(event))
        except CodecError:
            raise
        except Exception as err:  # noqa: BLE001  # fastavro raises ValueError, TypeError... for bad values
            raise SerializationError(
                event_type, f"does not fit its schema: {type(err).__name__}: {err}"
            ) from None
        return Encoded(event_type, buffer.getvalue(), reader.schema_id)

    def decode(self, event_type: str, data: bytes, schema_id: str) -> object:
        reader = self._reader(event_type)
        header = reader.header
        if data[: len(header)] == header:
            # Written with today's schema, as nearly every event is: read by the decoder generated for it.
            return _read_event(reader, data, len(header), event_type)
        writer, start = self.framing.writer(data, event_type)
        if writer.subject != reader.version.subject:
            # Written as another type (a rename): only an upcaster can say what it means now.
            return self.build(event_type, self.parse(event_type, data, schema_id))
        # Written with another version of the schema: fastavro resolves it to today's.
        datum = _read(data, start, writer.physical, writer.key, reader.version.physical, event_type)
        try:
            return reader.binding.from_datum(datum)
        except (TypeError, ValueError, KeyError, ArithmeticError) as err:
            raise DeserializationError(
                event_type, f"the decoded value does not fit the class: {err}"
            ) from None

    def parse(self, event_type: str, data: bytes, schema_id: str) -> dict[str, Any]:
        """The event as written (its writer's fields), for upcasters to rewrite before ``build``."""
        writer, start = self.framing.writer(data, event_type)
        return _read(data, start, writer.parsed, writer.key, None, event_type)

    def build(self, event_type: str, document: dict[str, Any]) -> object:
        """The event of the class registered as ``event_type``, from a document in any older shape."""
        return self._reader(event_type).binding.from_document(document, event_type)

    def encode_metadata(self, metadata: Mapping[str, Any]) -> bytes:
        # Metadata is open-ended (user ids, trace context): JSON, not a contract.
        return self._metadata.encode_metadata(metadata)

    def decode_metadata(self, data: bytes) -> dict[str, Any]:
        return self._metadata.decode_metadata(data)

    def _reader(self, event_type: str) -> _Reader:
        reader = self._readers.get(event_type)
        if reader is None:
            raise UnknownEventType(event_type)
        return reader


def _read_event(reader: _Reader, data: bytes, start: int, event_type: str) -> object:
    try:
        event, end = reader.read_body(data, start)
    except Exception as err:  # noqa: BLE001  # damaged bytes surface as many exception types
        raise DeserializationError(
            event_type,
            f"the bytes do not decode with schema {reader.schema_id} into {reader.binding.cls.__qualname__} "
            f"({type(err).__name__}: {err}): they were damaged or truncated, or hold a value that does not "
            "fit the class",
        ) from None
    _check_all_read(data, end, reader.schema_id, event_type)
    return event


def _read(
    data: bytes, start: int, writer: dict[str, Any], key: str, reader: dict[str, Any] | None, event_type: str
) -> dict[str, Any]:
    buffer = io.BytesIO(data)
    buffer.seek(start)
    try:
        datum = schemaless_reader(buffer, writer, reader)
    except Exception as err:  # noqa: BLE001  # damaged bytes surface as many exception types
        raise DeserializationError(
            event_type,
            f"the bytes do not decode with schema {key} ({type(err).__name__}: {err}): "
            "they were damaged or truncated",
        ) from None
    _check_all_read(data, buffer.tell(), key, event_type)
    if not isinstance(datum, dict):
        raise DeserializationError(event_type, f"decoded a {type(datum).__name__}, not a record")
    return datum


def _check_all_read(data: bytes, end: int, key: str, event_type: str) -> None:
    if end != len(data):
        raise DeserializationError(
            event_type,
            f"{len(data) - end} bytes left over after decoding with schema {key}: "
            "they were damaged, or written with another schema than their header says",
        )
