"""Schema compatibility: can data written with one Avro schema be read with another?

The answer follows the "Schema Resolution" rules of the Avro specification. Every way it is "no" comes
back as an ``Incompatibility``: where in the schema, and what to do about it. Schemas are the plain JSON
form read from an .avsc file (not fastavro's parsed form). Pure logic: no I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypeVar

__all__ = ["Schema", "Compatibility", "Incompatibility", "can_read", "check"]

Schema: TypeAlias = dict[str, Any] | list[Any] | str
"""A schema as parsed JSON: an object, a union (list) or a type name."""


class Compatibility(enum.Enum):
    """Which released versions a new schema must agree with, and in which direction."""

    BACKWARD = "BACKWARD"
    """The new schema reads data written with the previous one."""
    BACKWARD_TRANSITIVE = "BACKWARD_TRANSITIVE"
    """The new schema reads data written with every earlier one."""
    FORWARD = "FORWARD"
    """The previous schema reads data written with the new one."""
    FORWARD_TRANSITIVE = "FORWARD_TRANSITIVE"
    """Every earlier schema reads data written with the new one."""
    FULL = "FULL"
    """Both BACKWARD and FORWARD."""
    FULL_TRANSITIVE = "FULL_TRANSITIVE"
    """Both BACKWARD_TRANSITIVE and FORWARD_TRANSITIVE."""
    NONE = "NONE"
    """No check."""


_BACKWARD_MODES = frozenset(
    {
        Compatibility.BACKWARD,
        Compatibility.BACKWARD_TRANSITIVE,
        Compatibility.FULL,
        Compatibility.FULL_TRANSITIVE,
    }
)
_FORWARD_MODES = frozenset(
    {
        Compatibility.FORWARD,
        Compatibility.FORWARD_TRANSITIVE,
        Compatibility.FULL,
        Compatibility.FULL_TRANSITIVE,
    }
)
_TRANSITIVE_MODES = frozenset(
    {Compatibility.BACKWARD_TRANSITIVE, Compatibility.FORWARD_TRANSITIVE, Compatibility.FULL_TRANSITIVE}
)


@dataclass(frozen=True, slots=True)
class Incompatibility:
    """One reason data cannot be read.

    Attributes:
        path: where, such as ``bank.AccountOpened.owner``. It starts with the reading schema's full name
            (``<root>`` when that schema is not named) and goes on with field names; ``.<items>``,
            ``.<values>`` and ``.<enum>`` step into an array's items, a map's values and an enum's symbols.
        problem: what is wrong and what to do, in a sentence or two.
    """

    path: str
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


def can_read(reader: Schema, writer: Schema) -> list[Incompatibility]:
    """Why data written with ``writer`` cannot be read with ``reader``; empty when it can.

    The messages speak of ``reader`` as the newer schema, the usual question ("can my new schema read
    what was already written?"); ``check`` words them for each direction.

    Raises:
        ValueError: a schema is not Avro, or refers to a type it does not define.
    """
    reader_node, writer_node = _parse(reader), _parse(writer)
    comparison = _Comparison(
        "the reader's schema", "the writer's schema", reader_is_new=True, root=_root_path(reader_node)
    )
    return comparison.compare(reader_node, writer_node, comparison.root)


def check(new: Schema, released: Sequence[Schema], mode: Compatibility) -> list[Incompatibility]:
    """Incompatibilities of ``new`` against the released versions (oldest first) under ``mode``.

    Non-transitive modes compare with the last released version only; transitive ones with all. Released
    versions are numbered from 1, oldest first. Each problem says which direction failed and against
    which version, such as ``BACKWARD against version 2: events written with version 2 could not be
    read with the new schema: ...``. No released versions: nothing to check.

    Raises:
        ValueError: a schema is not Avro, or refers to a type it does not define.
    """
    if mode is Compatibility.NONE or not released:
        return []
    new_node = _parse(new)
    versions = list(enumerate(released, start=1))
    if mode not in _TRANSITIVE_MODES:
        versions = versions[-1:]
    problems: list[Incompatibility] = []
    for number, old in versions:
        old_node = _parse(old)
        if mode in _BACKWARD_MODES:
            problems += _directed(new_node, old_node, number, backward=True)
        if mode in _FORWARD_MODES:
            problems += _directed(old_node, new_node, number, backward=False)
    return problems


def _directed(reader: _Node, writer: _Node, number: int, *, backward: bool) -> list[Incompatibility]:
    version = f"version {number}"
    if backward:
        direction, reader_label, writer_label = "BACKWARD", "the new schema", version
    else:
        direction, reader_label, writer_label = "FORWARD", version, "the new schema"
    comparison = _Comparison(reader_label, writer_label, reader_is_new=backward, root=_root_path(reader))
    prefix = (
        f"{direction} against {version}: events written with {writer_label} "
        f"could not be read with {reader_label}: "
    )
    return [
        Incompatibility(p.path, prefix + p.problem)
        for p in comparison.compare(reader, writer, comparison.root)
    ]


# --- Schemas as linked nodes -------------------------------------------------------------------------
# Comparing the JSON directly would mean carrying each schema's names and namespaces everywhere; linking
# references to their definitions once makes a recursive record an ordinary cycle of Python objects.

_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})

# (writer, reader) pairs the spec lets a reader promote.
_PROMOTIONS = frozenset(
    {
        ("int", "long"),
        ("int", "float"),
        ("int", "double"),
        ("long", "float"),
        ("long", "double"),
        ("float", "double"),
        ("string", "bytes"),
        ("bytes", "string"),
    }
)

_Decimal: TypeAlias = tuple[int, int]  # (precision, scale)


@dataclass(eq=False)
class _Primitive:
    name: str
    logical: str | None = None
    decimal: _Decimal | None = None


@dataclass(eq=False)
class _Record:
    name: str  # full name
    aliases: frozenset[str]  # full names
    fields: list[_Field] = field(default_factory=list)


@dataclass(frozen=True)
class _Field:
    name: str
    aliases: tuple[str, ...]
    type: _Node
    has_default: bool


@dataclass(eq=False)
class _Enum:
    name: str
    aliases: frozenset[str]
    symbols: tuple[str, ...]
    default: str | None


@dataclass(eq=False)
class _Fixed:
    name: str
    aliases: frozenset[str]
    size: int
    decimal: _Decimal | None


@dataclass(eq=False)
class _Array:
    items: _Node


@dataclass(eq=False)
class _Map:
    values: _Node


@dataclass(eq=False)
class _Union:
    branches: tuple[_Node, ...]


_Named: TypeAlias = _Record | _Enum | _Fixed
_Node: TypeAlias = _Primitive | _Record | _Enum | _Fixed | _Array | _Map | _Union


def _parse(schema: Schema) -> _Node:
    return _Parser().parse(schema, "")


class _Parser:
    """Links one schema's references to its own definitions; each schema gets a parser of its own."""

    def __init__(self) -> None:
        self._named: dict[str, _Named] = {}

    def parse(self, schema: Any, namespace: str) -> _Node:
        if isinstance(schema, str):
            return self._reference(schema, namespace)
        if isinstance(schema, list):
            return _Union(tuple(self.parse(branch, namespace) for branch in schema))
        if isinstance(schema, dict):
            return self._complex(schema, namespace)
        raise ValueError(f"not an Avro schema: {schema!r}")

    def _reference(self, name: str, namespace: str) -> _Node:
        if name in _PRIMITIVES:
            return _Primitive(name)
        full_name = _qualify(name, namespace)
        if full_name not in self._named:
            raise ValueError(
                f"unknown type {full_name!r}: a named type must be defined before it is referenced, "
                "and a name without a dot is looked up in the enclosing namespace"
            )
        return self._named[full_name]

    def _complex(self, schema: dict[str, Any], namespace: str) -> _Node:
        kind = _required(schema, "type")
        if kind in ("record", "error"):
            return self._record(schema, namespace)
        if kind == "enum":
            return self._enum(schema, namespace)
        if kind == "fixed":
            return self._fixed(schema, namespace)
        if kind == "array":
            return _Array(self.parse(_required(schema, "items"), namespace))
        if kind == "map":
            return _Map(self.parse(_required(schema, "values"), namespace))
        if kind in _PRIMITIVES:
            return _Primitive(kind, schema.get("logicalType"), _decimal(schema))
        # {"type": "bank.Money"} or {"type": [...]}: a wrapped type with nothing to add.
        return self.parse(kind, namespace)

    def _record(self, schema: dict[str, Any], namespace: str) -> _Record:
        name = _full_name(schema, namespace)
        record = _Record(name, _aliases(schema, name))
        # Registered before its fields, so that a field may refer back to the record itself.
        self._define(record)
        fields = _required(schema, "fields")
        if not isinstance(fields, list):
            raise ValueError(f"the fields of {name} are not a list")
        record.fields = [self._field(f, name) for f in fields]
        return record

    def _field(self, schema: Any, record: str) -> _Field:
        if not isinstance(schema, dict):
            raise ValueError(f"a field of {record} is not an object: {schema!r}")
        return _Field(
            name=_required(schema, "name"),
            aliases=tuple(schema.get("aliases", ())),
            type=self.parse(_required(schema, "type"), _namespace_of(record)),
            has_default="default" in schema,
        )

    def _enum(self, schema: dict[str, Any], namespace: str) -> _Enum:
        name = _full_name(schema, namespace)
        node = _Enum(name, _aliases(schema, name), tuple(_required(schema, "symbols")), schema.get("default"))
        self._define(node)
        return node

    def _fixed(self, schema: dict[str, Any], namespace: str) -> _Fixed:
        name = _full_name(schema, namespace)
        node = _Fixed(name, _aliases(schema, name), _required(schema, "size"), _decimal(schema))
        self._define(node)
        return node

    def _define(self, node: _Named) -> None:
        if node.name in self._named:
            raise ValueError(f"{node.name} is defined twice in one schema")
        self._named[node.name] = node


def _required(schema: dict[str, Any], key: str) -> Any:
    if key not in schema:
        raise ValueError(f"an Avro schema object has no {key!r}: {schema!r}")
    return schema[key]


def _full_name(schema: dict[str, Any], enclosing: str) -> str:
    name = _required(schema, "name")
    if "." in name:
        return str(name)
    namespace = schema.get("namespace", enclosing) or ""
    return _qualify(name, namespace)


def _qualify(name: str, namespace: str) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _namespace_of(full_name: str) -> str:
    return full_name.rpartition(".")[0]


def _short(full_name: str) -> str:
    return full_name.rpartition(".")[2]


def _aliases(schema: dict[str, Any], full_name: str) -> frozenset[str]:
    # An unqualified alias lives in the namespace of the name it stands for.
    return frozenset(_qualify(alias, _namespace_of(full_name)) for alias in schema.get("aliases", ()))


def _decimal(schema: dict[str, Any]) -> _Decimal | None:
    if schema.get("logicalType") != "decimal":
        return None
    precision, scale = schema.get("precision"), schema.get("scale", 0)
    # The spec reads an invalid decimal as its underlying type, so it is no decimal here either.
    if isinstance(precision, int) and isinstance(scale, int) and 0 <= scale <= precision and precision > 0:
        return precision, scale
    return None


def _root_path(node: _Node) -> str:
    return node.name if isinstance(node, _Record | _Enum | _Fixed) else "<root>"


# --- Resolution ----------------------------------------------------------------------------------------


def _matches(reader: _Node, writer: _Node) -> bool:
    """Whether the spec lets resolution go on inside the pair (what it calls schemas that "match")."""
    if isinstance(reader, _Primitive) and isinstance(writer, _Primitive):
        return reader.name == writer.name or (writer.name, reader.name) in _PROMOTIONS
    if isinstance(reader, _Record) and isinstance(writer, _Record):
        return _same_name(reader, writer)
    if isinstance(reader, _Enum) and isinstance(writer, _Enum):
        return _same_name(reader, writer)
    if isinstance(reader, _Fixed) and isinstance(writer, _Fixed):
        return _same_name(reader, writer)
    return (isinstance(reader, _Array) and isinstance(writer, _Array)) or (
        isinstance(reader, _Map) and isinstance(writer, _Map)
    )


def _same_name(reader: _Named, writer: _Named) -> bool:
    # Unqualified, as the spec and fastavro compare names: moving a type to another namespace is no rename.
    return _short(writer.name) in {_short(name) for name in (reader.name, *reader.aliases)}


_T = TypeVar("_T")


@dataclass
class _Comparison:
    """One question "can the reader read what the writer wrote?", worded for the people asking it.

    ``reader_is_new`` says which schema came later, so that messages can say what changed ("was int, is
    now string") and give advice that can still be followed: an old, released schema cannot be edited.
    """

    reader_label: str
    writer_label: str
    reader_is_new: bool
    root: str  # the path of the whole schema
    # Record pairs being compared further up: meeting one again means a recursive type has come round.
    in_progress: set[tuple[_Record, _Record]] = field(default_factory=set)

    def compare(self, reader: _Node, writer: _Node, path: str) -> list[Incompatibility]:
        if isinstance(writer, _Union):
            return [
                p for branch in writer.branches for p in self._writer_branch(reader, branch, writer, path)
            ]
        if isinstance(reader, _Union):
            return self._into_union(reader, writer, None, path)
        if not _matches(reader, writer):
            return [Incompatibility(path, self._mismatch(reader, writer, path))]
        return self._resolve(reader, writer, path)

    def _resolve(self, reader: _Node, writer: _Node, path: str) -> list[Incompatibility]:
        """Compares the insides of two schemas that match."""
        if isinstance(reader, _Record) and isinstance(writer, _Record):
            return self._records(reader, writer, path)
        if isinstance(reader, _Enum) and isinstance(writer, _Enum):
            return self._enums(reader, writer, path)
        if isinstance(reader, _Fixed) and isinstance(writer, _Fixed):
            return self._fixed(reader, writer, path)
        if isinstance(reader, _Array) and isinstance(writer, _Array):
            return self.compare(reader.items, writer.items, f"{path}.<items>")
        if isinstance(reader, _Map) and isinstance(writer, _Map):
            return self.compare(reader.values, writer.values, f"{path}.<values>")
        if isinstance(reader, _Primitive) and isinstance(writer, _Primitive):
            return self._decimals(reader.decimal, writer.decimal, path)
        return [Incompatibility(path, self._mismatch(reader, writer, path))]

    # Records, enums, fixed

    def _records(self, reader: _Record, writer: _Record, path: str) -> list[Incompatibility]:
        pair = (reader, writer)
        if pair in self.in_progress:
            # Whatever is wrong inside is reported where the pair was first met.
            return []
        self.in_progress.add(pair)
        try:
            return [p for f in reader.fields for p in self._field(f, writer, f"{path}.{f.name}")]
        finally:
            self.in_progress.discard(pair)

    def _field(self, reader_field: _Field, writer: _Record, path: str) -> list[Incompatibility]:
        written = _written_field(reader_field, writer)
        if written is not None:
            return self.compare(reader_field.type, written.type, path)
        if reader_field.has_default:
            return []
        if self.reader_is_new:
            problem = (
                f"field '{reader_field.name}' was added without a default, so events written with "
                f"{self.writer_label} have no value for it: give the field a default"
            )
        else:
            problem = (
                f"field '{reader_field.name}' was removed, and {self.reader_label} has no default for it: "
                "keep the field, or remove it only after a release that gives it a default"
            )
        return [Incompatibility(path, problem)]

    def _enums(self, reader: _Enum, writer: _Enum, path: str) -> list[Incompatibility]:
        unknown = [symbol for symbol in writer.symbols if symbol not in reader.symbols]
        if not unknown or reader.default is not None:
            return []
        if len(unknown) == 1:
            symbols, them = f"symbol {unknown[0]} was", "it"
        else:
            symbols, them = f"symbols {', '.join(unknown)} were", "them"
        if self.reader_is_new:
            problem = (
                f"{symbols} removed from enum {reader.name}, and events written with {self.writer_label} "
                f"may hold {them}: keep the old symbols or give the enum a default"
            )
        else:
            problem = (
                f"{symbols} added to enum {writer.name}, and {self.reader_label} has no default to read "
                f"{them} as: add symbols only to an enum that already has a default, or add a new event type"
            )
        return [Incompatibility(f"{path}.<enum>", problem)]

    def _fixed(self, reader: _Fixed, writer: _Fixed, path: str) -> list[Incompatibility]:
        problems = self._decimals(reader.decimal, writer.decimal, path)
        if reader.size != writer.size:
            old, new = self._old_new(reader.size, writer.size)
            problem = (
                f"fixed {reader.name} was {old} bytes long, is now {new}: a fixed type cannot change size; "
                f"{self._type_advice(path)}"
            )
            problems.insert(0, Incompatibility(path, problem))
        return problems

    def _decimals(self, reader: _Decimal | None, writer: _Decimal | None, path: str) -> list[Incompatibility]:
        if reader == writer:
            return []
        old, new = self._old_new(reader, writer)
        problem = (
            f"was {_decimal_text(old)}, is now {_decimal_text(new)}, so the same bytes would mean another "
            "number: keep the precision and scale, or add a new field for the new ones"
        )
        return [Incompatibility(path, problem)]

    # Unions

    def _writer_branch(self, reader: _Node, branch: _Node, union: _Union, path: str) -> list[Incompatibility]:
        """Problems reading one branch of the writer's union: any of them may have been written."""
        if isinstance(reader, _Union):
            return self._into_union(reader, branch, union, path)
        if _matches(reader, branch):
            return self._resolve(reader, branch, path)
        old, new = self._old_new(reader, union)
        if self.reader_is_new:
            advice = (
                f"keep the union, since events written with {self.writer_label} may hold {_describe(branch)}"
            )
        else:
            advice = "add a new event type instead of widening this field's type"
        problem = (
            f"was {_describe(old)}, is now {_describe(new)}, and its {_describe(branch)} branch "
            f"cannot be read as {_describe(reader)}: {advice}"
        )
        return [Incompatibility(path, problem)]

    def _into_union(
        self, reader: _Union, writer: _Node, writer_union: _Union | None, path: str
    ) -> list[Incompatibility]:
        """Problems reading ``writer`` (alone, or a branch of ``writer_union``) with the reader's union."""
        first_problems: list[Incompatibility] = []
        for candidate in (branch for branch in reader.branches if _matches(branch, writer)):
            problems = self._resolve(candidate, writer, path)
            if not problems:
                return []
            first_problems = first_problems or problems
        if first_problems:
            # The branch that would read it has problems of its own, which say more than "no branch".
            return first_problems
        return [Incompatibility(path, self._no_branch(reader, writer, writer_union, path))]

    def _no_branch(self, reader: _Union, writer: _Node, writer_union: _Union | None, path: str) -> str:
        if writer_union is None:
            if self.reader_is_new:
                return (
                    f"was {_describe(writer)}, is now {_describe(reader)}, which has no branch that can read "
                    f"{_describe(writer)}: keep a {_describe(writer)} branch"
                )
            return (
                f"was {_describe(reader)}, is now {_describe(writer)}, which no branch of the union "
                f"can read: {self._type_advice(path)}"
            )
        if self.reader_is_new:
            return (
                f"the {_describe(writer)} branch was removed from the union, and events written with "
                f"{self.writer_label} may hold it: keep the branch"
            )
        return (
            f"a {_describe(writer)} branch was added to the union, and {self.reader_label} cannot read it: "
            "add a new event type instead of widening this field's type"
        )

    # Wording

    def _mismatch(self, reader: _Node, writer: _Node, path: str) -> str:
        old, new = self._old_new(reader, writer)
        changed = f"was {_describe(old)}, is now {_describe(new)}"
        if isinstance(old, _Record | _Enum | _Fixed) and isinstance(new, type(old)):
            return f"{changed}: {self._rename_advice(old.name)}"
        unreadable = f"{_describe(writer)} cannot be read as {_describe(reader)}"
        return f"{changed}, and {unreadable}: {self._type_advice(path)}"

    def _rename_advice(self, old_name: str) -> str:
        if self.reader_is_new:
            return f"keep the name, or list '{old_name}' among the new type's aliases"
        return f"keep the name {old_name}, the only one {self.reader_label} knows"

    def _type_advice(self, path: str) -> str:
        where = "the type" if path == self.root else "this field's type"
        return f"add a new event type instead of changing {where}"

    def _old_new(self, reader: _T, writer: _T) -> tuple[_T, _T]:
        return (writer, reader) if self.reader_is_new else (reader, writer)


def _written_field(reader_field: _Field, writer: _Record) -> _Field | None:
    """The writer's field that fills ``reader_field``: the same name first, then one of its aliases."""
    by_name = {f.name: f for f in writer.fields}
    for name in (reader_field.name, *reader_field.aliases):
        if name in by_name:
            return by_name[name]
    return None


def _describe(node: _Node) -> str:
    if isinstance(node, _Primitive):
        if node.decimal is not None:
            return f"{_decimal_text(node.decimal)} on {node.name}"
        return f"{node.name} ({node.logical})" if node.logical else node.name
    if isinstance(node, _Record):
        return f"record {node.name}"
    if isinstance(node, _Enum):
        return f"enum {node.name}"
    if isinstance(node, _Fixed):
        return f"fixed {node.name} ({node.size} bytes)"
    if isinstance(node, _Array):
        return f"array of {_describe(node.items)}"
    if isinstance(node, _Map):
        return f"map of {_describe(node.values)}"
    return "union [" + ", ".join(_describe(branch) for branch in node.branches) + "]"


def _decimal_text(decimal: _Decimal | None) -> str:
    return "not a decimal" if decimal is None else f"decimal({decimal[0]}, {decimal[1]})"
