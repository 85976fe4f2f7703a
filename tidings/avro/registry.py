"""The Confluent framing: ``00``, a 4-byte Schema Registry id, the Avro body.

For systems whose other consumers read Confluent's wire format. Schemas still come from ``schemas/``
(the source of truth); the registry gives them ids. Subjects follow the record name by default, so that
many event types share one topic; ``topic_record_name(topic)`` gives Confluent's TopicRecordNameStrategy.

Example::

    client = SchemaRegistryClient.new_client({"url": os.environ["SCHEMA_REGISTRY_URL"]})
    codec = AvroCodec(registry, schemas, framing=RegistryFraming(client, schemas))
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, cast

from fastavro.schema import parse_schema

from tidings.avro.codec import WriterSchema
from tidings.avro.schemas import SchemaSet, SchemaVersion, full_name, physical_schema
from tidings.errors import DeserializationError, SchemaFileError, UnknownSchema

__all__ = ["RegistryFraming", "record_name", "topic_record_name"]

SubjectName = Callable[[str], str]


def record_name(record: str) -> str:
    """Confluent's RecordNameStrategy: the subject is the record's full name."""
    return record


def topic_record_name(topic: str) -> SubjectName:
    """Confluent's TopicRecordNameStrategy for ``topic``: ``<topic>-<record full name>``."""
    return lambda record: f"{topic}-{record}"


class RegistryFraming:
    """Confluent wire format, with ids from a Schema Registry (``confluent_kafka.schema_registry``).

    ``auto_register`` registers the latest schema of each event type when the codec starts; without it
    the schema must already be registered (``tidings schemas register``), which is what production
    deployments usually want.
    """

    def __init__(
        self,
        client: Any,
        schemas: SchemaSet,
        *,
        subject_name: SubjectName = record_name,
        auto_register: bool = False,
    ) -> None:
        self._client = client
        self._schemas = schemas
        self._subject_name = subject_name
        self._auto_register = auto_register
        self._writers: dict[int, WriterSchema] = {}

    def header(self, version: SchemaVersion) -> tuple[bytes, str]:
        from confluent_kafka.schema_registry import Schema
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        subject = self._subject_name(version.subject)
        schema = Schema(json.dumps(version.schema), "AVRO")
        try:
            if self._auto_register:
                schema_id = int(self._client.register_schema(subject, schema))
            else:
                schema_id = int(self._client.lookup_schema(subject, schema).schema_id)
        except SchemaRegistryError as err:
            raise SchemaFileError(
                version.path or version.subject,
                f"the Schema Registry has no id for it under subject {subject!r} ({err}): run "
                "`tidings schemas register`, or let the codec register it (auto_register=True)",
            ) from None
        self._writers.setdefault(
            schema_id,
            WriterSchema(f"avro-registry:{schema_id}", version.parsed, version.physical, version.subject),
        )
        return b"\x00" + schema_id.to_bytes(4, "big"), f"avro-registry:{schema_id}"

    def writer(self, data: bytes, event_type: str) -> tuple[WriterSchema, int]:
        if len(data) < 5 or data[0] != 0:
            raise DeserializationError(
                event_type,
                f"the bytes do not start with the Confluent magic byte 00 and a schema id (they start "
                f"{data[:5].hex(' ') or 'empty'}): they were written by another codec or damaged",
            )
        schema_id = int.from_bytes(data[1:5], "big")
        writer = self._writers.get(schema_id)
        if writer is None:
            writer = self._fetch(schema_id, event_type)
            self._writers[schema_id] = writer
        return writer, 5

    def _fetch(self, schema_id: int, event_type: str) -> WriterSchema:
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        try:
            registered = self._client.get_schema(schema_id)
        except SchemaRegistryError as err:
            raise UnknownSchema(
                event_type,
                f"the Schema Registry has no schema with id {schema_id} ({err}): is it the right registry?",
            ) from None
        try:
            schema = json.loads(registered.schema_str)
            parsed = parse_schema(schema)
            physical = parse_schema(physical_schema(schema))
        except Exception as err:  # noqa: BLE001  # fastavro raises several types for a bad schema
            raise UnknownSchema(
                event_type, f"the Schema Registry's schema {schema_id} is not usable Avro: {err}"
            ) from None
        subject = full_name(schema) if isinstance(schema, dict) else ""
        return WriterSchema(
            f"avro-registry:{schema_id}",
            cast(dict[str, Any], parsed),
            cast(dict[str, Any], physical),
            subject,
        )
