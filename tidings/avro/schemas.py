"""The schema files: one ``.avsc`` per event type and version, under ``schemas/<namespace>/<Name>/vN.avsc``.

The directory is the source of truth. Every released version stays, because events written with it
stay in the store: the codec finds the schema an event was written with by its fingerprint, and reads
it into today's shape with Avro's schema resolution.

Example::

    schemas = SchemaSet.load("schemas")
    schemas.latest("bank.AccountOpened").version      # 2
    schemas.by_fingerprint(fingerprint).subject      # "bank.AccountOpened"
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

from tidings.errors import SchemaFileError

__all__ = ["Schema", "SchemaSet", "SchemaVersion", "full_name", "physical_schema", "schema_fingerprint"]

Schema = dict[str, Any] | list[Any] | str
"""A schema as the JSON of an ``.avsc`` file."""

_VERSION_FILE = re.compile(r"v([1-9][0-9]*)\.avsc")


def schema_fingerprint(schema: Schema) -> bytes:
    """The 8-byte CRC-64-AVRO fingerprint of the schema's Parsing Canonical Form, as written on the wire.

    Raises:
        SchemaFileError: the schema is not valid Avro.
    """
    try:
        canonical = to_parsing_canonical_form(schema)
    except Exception as err:  # noqa: BLE001  # fastavro raises several types for a bad schema
        raise SchemaFileError("<schema>", f"not a valid Avro schema: {err}") from None
    # fastavro gives the fingerprint's bytes in little-endian order, the order single-object encoding uses.
    return bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))


@dataclass(frozen=True)
class SchemaVersion:
    """One version of one event type's schema."""

    subject: str
    """The record's full name, which is also the event type name (``bank.AccountOpened``)."""
    version: int
    schema: dict[str, Any] = field(repr=False)
    """The schema as written in its file."""
    fingerprint: bytes
    path: str = ""

    @property
    def parsed(self) -> dict[str, Any]:
        """The schema parsed by fastavro (cached), ready for its readers and writers."""
        cached: dict[str, Any] | None = self.__dict__.get("_parsed")
        if cached is None:
            cached = cast(dict[str, Any], parse_schema(self.schema))
            object.__setattr__(self, "_parsed", cached)
        return cached

    @property
    def physical(self) -> dict[str, Any]:
        """The schema without logical types, parsed (cached): fastavro then reads and writes plain values.

        Logical types are not part of the Parsing Canonical Form, so the fingerprint is the same.
        """
        cached: dict[str, Any] | None = self.__dict__.get("_physical")
        if cached is None:
            cached = cast(dict[str, Any], parse_schema(physical_schema(self.schema)))
            object.__setattr__(self, "_physical", cached)
        return cached


class SchemaSet:
    """Every version of every event type's schema, by subject and by fingerprint."""

    def __init__(self, versions: Iterable[SchemaVersion] = ()) -> None:
        self._by_subject: dict[str, list[SchemaVersion]] = {}
        self._by_fingerprint: dict[bytes, SchemaVersion] = {}
        for version in sorted(versions, key=lambda v: (v.subject, v.version)):
            self._by_subject.setdefault(version.subject, []).append(version)
            # Two versions with one fingerprint differ only in docs or order-free attributes: the
            # first one read decodes both, which is correct since their binary encodings agree.
            self._by_fingerprint.setdefault(version.fingerprint, version)

    @classmethod
    def load(cls, directory: str | Path) -> SchemaSet:
        """Read ``directory`` (``schemas/<namespace>/<Name>/vN.avsc``).

        Raises:
            SchemaFileError: a file is misplaced, is not JSON or not Avro, or names another record than
                its path says.
        """
        root = Path(directory)
        if not root.is_dir():
            raise SchemaFileError(str(root), "no such directory: point the codec at the project's schemas/")
        files = {
            str(p.relative_to(root)): p.read_text(encoding="utf-8") for p in sorted(root.rglob("*.avsc"))
        }
        return cls.from_texts(files)

    @classmethod
    def from_texts(cls, files: Mapping[str, str]) -> SchemaSet:
        """Build from ``{relative path: file text}``, as read from a directory or from a git revision."""
        return cls(_read_version(path, text) for path, text in files.items())

    def subjects(self) -> list[str]:
        return sorted(self._by_subject)

    def versions(self, subject: str) -> list[SchemaVersion]:
        """Every version of ``subject``, oldest first (empty if there is none)."""
        return list(self._by_subject.get(subject, ()))

    def latest(self, subject: str) -> SchemaVersion | None:
        versions = self._by_subject.get(subject)
        return versions[-1] if versions else None

    def by_fingerprint(self, fingerprint: bytes) -> SchemaVersion | None:
        return self._by_fingerprint.get(fingerprint)

    def __iter__(self) -> Iterator[SchemaVersion]:
        for subject in self.subjects():
            yield from self._by_subject[subject]

    def __len__(self) -> int:
        return sum(len(versions) for versions in self._by_subject.values())


def physical_schema(schema: Any) -> Any:
    """``schema`` with every ``logicalType`` removed, leaving the types that carry the bytes."""
    if isinstance(schema, list):
        return [physical_schema(branch) for branch in schema]
    if not isinstance(schema, dict):
        return schema
    return {key: physical_schema(value) for key, value in schema.items() if key != "logicalType"}


def _read_version(path: str, text: str) -> SchemaVersion:
    parts = Path(path).parts
    match = _VERSION_FILE.fullmatch(parts[-1]) if parts else None
    if len(parts) != 3 or match is None:
        raise SchemaFileError(
            path, "schema files live at <namespace>/<Name>/v<N>.avsc (for example bank/AccountOpened/v1.avsc)"
        )
    namespace, name = parts[0], parts[1]
    try:
        schema = json.loads(text)
    except ValueError as err:
        raise SchemaFileError(path, f"not JSON: {err}") from None
    if not isinstance(schema, dict) or schema.get("type") != "record":
        raise SchemaFileError(
            path, "an event's schema is a record: {'type': 'record', 'name': ..., 'fields': [...]}"
        )
    subject = full_name(schema)
    if subject != f"{namespace}.{name}":
        raise SchemaFileError(
            path,
            f"the record is named {subject!r} but its path says {namespace}.{name}: set "
            f"'namespace': {namespace!r} and 'name': {name!r}, or move the file",
        )
    try:
        version = SchemaVersion(subject, int(match.group(1)), schema, schema_fingerprint(schema), path)
        version.parsed  # noqa: B018  # parsed now (and kept) so that a bad schema fails at load
    except SchemaFileError as err:
        raise SchemaFileError(path, err.problem) from None
    except Exception as err:  # noqa: BLE001  # fastavro raises several types for a bad schema
        raise SchemaFileError(path, f"not a valid Avro schema: {err}") from None
    return version


def full_name(schema: dict[str, Any]) -> str:
    """The full name of a named schema: its name, qualified by its namespace unless it has a dot."""
    name = str(schema.get("name", ""))
    namespace = schema.get("namespace")
    return name if "." in name or not namespace else f"{namespace}.{name}"
