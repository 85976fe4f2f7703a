"""Codecs: what turns a domain event into the bytes, type name and schema id the store keeps, and back.

``Codec`` is the contract; ``JsonCodec`` is the implementation for dataclass events, written as compact
UTF-8 JSON under the schema id ``"json"``. The store never sees a class: only what ``Encoded`` holds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol, runtime_checkable

import orjson

from tidings.errors import DeserializationError, SerializationError
from tidings.json_decode import build_dataclass
from tidings.json_encode import dataclass_to_json, plain_json
from tidings.json_hints import JsonValue, ValueProblem
from tidings.registry import TypeRegistry

__all__ = ["Codec", "DocumentCodec", "Encoded", "JsonCodec"]


@dataclass(frozen=True, slots=True)
class Encoded:
    """An event as bytes, with the type name and schema id needed to read it back."""

    event_type: str
    data: bytes
    schema_id: str


class Codec(Protocol):
    """Encodes events and metadata to bytes and decodes them again."""

    def encode(self, event: object) -> Encoded:
        """The bytes, type name and schema id for ``event``; raises ``SerializationError``."""
        ...

    def decode(self, event_type: str, data: bytes, schema_id: str) -> object:
        """The event stored as ``data``; raises ``DeserializationError`` or ``UnknownEventType``."""
        ...

    def encode_metadata(self, metadata: Mapping[str, Any]) -> bytes:
        """The bytes for an event's metadata (correlation details, user ids and the like)."""
        ...

    def decode_metadata(self, data: bytes) -> dict[str, Any]:
        """The metadata stored as ``data``."""
        ...


@runtime_checkable
class DocumentCodec(Codec, Protocol):
    """A codec that decodes in two steps, so that upcasters can rewrite the document in between."""

    def parse(self, event_type: str, data: bytes, schema_id: str) -> dict[str, Any]:
        """The stored document, not yet tied to a class (its type may be unregistered, or renamed)."""
        ...

    def build(self, event_type: str, document: dict[str, Any]) -> object:
        """The event of the class registered as ``event_type``, made from ``document``."""
        ...


class JsonCodec:
    """Dataclass events as compact UTF-8 JSON; field type hints steer both directions.

    See docs/serialization.md for the mapping of each supported type.
    """

    schema_id = "json"

    def __init__(self, registry: TypeRegistry) -> None:
        self.registry = registry

    def encode(self, event: object) -> Encoded:
        event_type = self.registry.name_of(event)
        try:
            document = dataclass_to_json(event, event_type)
        except ValueProblem as problem:
            raise SerializationError(problem.path, problem.problem) from None
        return Encoded(event_type, _dump(document, event_type), self.schema_id)

    def decode(self, event_type: str, data: bytes, schema_id: str) -> object:
        # parse, then build, in one call: this is every handler's and every aggregate load's path.
        if schema_id != self.schema_id:
            raise _another_codec(event_type, schema_id)
        document = _load(data, event_type)
        cls = self.registry.class_for(event_type)
        try:
            return build_dataclass(cls, document, event_type)
        except ValueProblem as problem:
            raise DeserializationError(problem.path, problem.problem) from None

    def parse(self, event_type: str, data: bytes, schema_id: str) -> dict[str, Any]:
        if schema_id != self.schema_id:
            raise _another_codec(event_type, schema_id)
        return _load(data, event_type)

    def build(self, event_type: str, document: dict[str, Any]) -> object:
        cls = self.registry.class_for(event_type)
        try:
            return build_dataclass(cls, document, event_type)
        except ValueProblem as problem:
            raise DeserializationError(problem.path, problem.problem) from None

    def encode_metadata(self, metadata: Mapping[str, Any]) -> bytes:
        try:
            document = plain_json(dict(metadata), "metadata")
        except ValueProblem as problem:
            raise SerializationError(problem.path, problem.problem) from None
        return _dump(document, "metadata")

    def decode_metadata(self, data: bytes) -> dict[str, Any]:
        if data == b"{}":  # most events carry no metadata of the user's
            return {}
        return _load(data, "metadata")


def _another_codec(event_type: str, schema_id: str) -> DeserializationError:
    return DeserializationError(
        event_type,
        f"schema id {schema_id!r} is not {JsonCodec.schema_id!r}: the event was written by another codec, "
        "so read it with that codec",
    )


def _dump(document: JsonValue, where: str) -> bytes:
    text = json.dumps(document, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise SerializationError(
            where,
            f"a string holds a lone surrogate ({err.object[err.start : err.end]!r}), which UTF-8 "
            "cannot carry: clean the text (it usually comes from a bad decode) before it goes in an event",
        ) from None


def _load(data: bytes, where: str) -> dict[str, Any]:
    # orjson reads an integer beyond 64 bits as a float, and rejects escaped lone surrogates; Python's
    # reader (which wrote them) keeps both exact. A run of 19 digits sends the document there.
    if _LONG_NUMBER.search(data) is not None:
        document = _load_slowly(data, where)
    else:
        try:
            document = orjson.loads(data)
        except orjson.JSONDecodeError:
            document = _load_slowly(data, where)  # the reason, in Python's words, or what orjson refuses
    if not isinstance(document, dict):
        raise DeserializationError(where, f"expected a JSON object, found {type(document).__name__}")
    return document


def _load_slowly(data: bytes, where: str) -> Any:
    try:
        return _DECODER.decode(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise DeserializationError(
            where, f"the stored bytes are not UTF-8 JSON ({err}): they were damaged or written by other means"
        ) from None


def _no_constants(name: str) -> NoReturn:
    # Python's json reads NaN and Infinity, which no other JSON reader accepts; never take them in.
    raise ValueError(f"{name} is not JSON")


_LONG_NUMBER = re.compile(rb"\d{19}")

# One decoder for every read: ``json.loads`` with an argument builds a new one per call.
_DECODER = json.JSONDecoder(parse_constant=_no_constants)
