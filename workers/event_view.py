"""How an operator sees a stored event: a plain JSON document, its data decoded as far as it can be.

``event_document`` makes the document ``tidings events read`` and ``tail`` print (``--json``: one per
line, JSON Lines). Its keys are stable:

- ``event_number`` (null until the sequencer numbers it), ``stream_id``, ``stream_version``,
  ``event_type``, ``created_at`` (ISO 8601, UTC), ``event_id``, ``causation_id``, ``correlation_id``,
  ``schema_id``;
- ``metadata``: the metadata as stored, when it is JSON; otherwise null, and ``metadata_base64`` holds it;
- ``data_format`` and ``data``: the data decoded by the first of these that can:
  ``"event"``: the application's mapper (``--app``), the event's fields upcast to today's shape;
  ``"json"``: the data is JSON; ``"avro"``: Avro single-object bytes, read with their writer's schema
  found by fingerprint in a ``SchemaSet`` (``--schemas``), as plain values;
  ``"bytes"``: none could; ``data`` is null and ``data_base64`` holds the bytes;
- ``data_note``: why a decoder could not (the mapper's error, an Avro schema not found), or what the
  bytes are (Avro with its schema id and size); null when there is nothing to say.

Example::

    decoder = DataDecoder(mapper=app.mapper)
    for recorded in store.read_stream_forward("account-42"):
        print(json_line(event_document(recorded, decoder)))
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import enum
import io
import json
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from fastavro import schemaless_reader

from eventstore.records import RecordedEvent
from tidings.avro import SchemaSet
from tidings.avro.codec import SINGLE_OBJECT_MARKER, SingleObjectFraming
from tidings.mapper import EventMapper

__all__ = ["DataDecoder", "Decoded", "event_document", "json_line", "jsonable"]


@dataclass(frozen=True, slots=True)
class Decoded:
    """An event's data as far as it could be decoded."""

    format: str
    """``event``, ``json``, ``avro`` or ``bytes``."""
    value: Any
    """Plain JSON values (None for ``bytes``)."""
    note: str | None = None


@dataclass
class DataDecoder:
    """Decodes events' data: with the app's ``mapper`` first, then as JSON, then as Avro with ``schemas``."""

    mapper: EventMapper | None = None
    schemas: SchemaSet | None = None
    _framing: SingleObjectFraming | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.schemas is not None:
            self._framing = SingleObjectFraming(self.schemas)

    def decode(self, recorded: RecordedEvent) -> Decoded:
        notes = []
        if self.mapper is not None:
            try:
                event, _ = self.mapper.from_recorded(recorded)
                return Decoded("event", jsonable(event))
            except Exception as err:  # noqa: BLE001  # the codec's errors, or an upcaster's: shown, not raised
                notes.append(f"the app's mapper could not decode it: {err}")
        as_json = _json(recorded.data)
        if as_json is not _NOT_JSON:
            return Decoded("json", as_json, _joined(notes))
        if self._framing is not None and recorded.data[:2] == SINGLE_OBJECT_MARKER:
            try:
                return Decoded("avro", jsonable(self._read_avro(recorded)), _joined(notes))
            except Exception as err:  # noqa: BLE001  # unknown schema, damaged bytes: shown, not raised
                notes.append(f"not decoded with --schemas: {err}")
        return Decoded("bytes", None, _joined([*notes, _describe(recorded)]))

    def _read_avro(self, recorded: RecordedEvent) -> Any:
        assert self._framing is not None
        writer, start = self._framing.writer(recorded.data, recorded.event_type)
        buffer = io.BytesIO(recorded.data)
        buffer.seek(start)
        return schemaless_reader(buffer, writer.parsed, None)


def event_document(recorded: RecordedEvent, decoder: DataDecoder) -> dict[str, Any]:
    """The event as plain JSON, with stable keys (see the module's docstring)."""
    metadata = _json(recorded.metadata)
    data = decoder.decode(recorded)
    return {
        "event_number": recorded.event_number,
        "stream_id": recorded.stream_id,
        "stream_version": recorded.stream_version,
        "event_type": recorded.event_type,
        "created_at": recorded.created_at.astimezone(dt.UTC).isoformat(),
        "event_id": str(recorded.event_id),
        "causation_id": _text(recorded.causation_id),
        "correlation_id": _text(recorded.correlation_id),
        "schema_id": recorded.schema_id,
        "metadata": None if metadata is _NOT_JSON else metadata,
        "metadata_base64": _base64(recorded.metadata) if metadata is _NOT_JSON else None,
        "data_format": data.format,
        "data": data.value,
        "data_base64": _base64(recorded.data) if data.format == "bytes" else None,
        "data_note": data.note,
    }


def json_line(document: Mapping[str, Any]) -> str:
    """``document`` as one line of JSON (ASCII only, so no character of it can read as a line break)."""
    return json.dumps(document, separators=(",", ":"), allow_nan=False)


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON values: dataclasses and mappings as objects, ids and decimals as text,
    times in ISO 8601, enums by value, bytes in base64, anything else as its ``repr``."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if isinstance(value, bytes | bytearray):
        return _base64(bytes(value))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(item) for item in value]
    return repr(value)


class _NotJson:
    pass


_NOT_JSON: Any = _NotJson()


def _json(data: bytes) -> Any:
    """The JSON value ``data`` holds, or ``_NOT_JSON``. NaN, Infinity and numbers beyond a float's range
    are refused: they could not be printed back as JSON."""
    try:
        return json.loads(data, parse_constant=_refuse, parse_float=_finite)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return _NOT_JSON
    except RecursionError:
        return _NOT_JSON


def _refuse(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text} does not fit a float")
    return number


def _describe(recorded: RecordedEvent) -> str:
    size = f"{len(recorded.data)} bytes"
    if recorded.schema_id.startswith("avro-registry:"):
        return (
            f"Avro, {size}, Schema Registry id {recorded.schema_id.partition(':')[2]}: decode it with --app"
        )
    if recorded.schema_id.startswith("avro:") or recorded.data[:2] == SINGLE_OBJECT_MARKER:
        return f"Avro, {size}, schema {recorded.schema_id or '?'}: decode it with --app, or --schemas DIR"
    return f"{size}, not JSON"


def _joined(notes: list[str]) -> str | None:
    return "; ".join(notes) or None


def _text(value: uuid.UUID | None) -> str | None:
    return None if value is None else str(value)


def _base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
