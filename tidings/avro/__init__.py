"""Avro event contracts: schema files, compatibility, binding to classes, the codec.

``schemas/`` is the source of truth (``SchemaSet``); event classes bind to the latest version of their
schema (``AvroCodec`` refuses to start when they disagree); bytes carry the schema that wrote them
(single-object encoding by default, Confluent's wire format with ``RegistryFraming``); readers resolve
old versions to today's. See docs/avro.md.
"""

from tidings.avro.binding import differences, schema_for
from tidings.avro.codec import SINGLE_OBJECT_MARKER, AvroCodec, Framing, SingleObjectFraming, WriterSchema
from tidings.avro.registry import RegistryFraming, record_name, topic_record_name
from tidings.avro.schemas import Schema, SchemaSet, SchemaVersion, physical_schema, schema_fingerprint

__all__ = [
    # schema files
    "Schema",
    "SchemaSet",
    "SchemaVersion",
    "physical_schema",
    "schema_fingerprint",
    # classes and schemas
    "differences",
    "schema_for",
    # the codec and its framings
    "AvroCodec",
    "Framing",
    "SINGLE_OBJECT_MARKER",
    "SingleObjectFraming",
    "WriterSchema",
    "RegistryFraming",
    "record_name",
    "topic_record_name",
]
