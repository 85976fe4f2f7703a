"""Avro's binary encoding read by Python code generated for one schema.

fastavro interprets the schema for every value it reads and costs about half a microsecond per call
before the first field; for the small records that events are, that is most of the decode time
(decision 0005). When the bytes were written with the very schema the codec reads with (every event
written since the last schema release), the codec reads them with a function generated here once per
schema instead: straight-line code per record, one function per named record (so recursive types
work), and fastavro's answer for every value (a dict per record, enum symbols as strings, fixed as
bytes, a union as its branch's value). Bytes written with any other schema version still go through
fastavro, which resolves them to today's.

Damaged bytes raise ``MalformedAvro`` (or a ``ValueError``/``IndexError`` from the primitives: a bad
UTF-8 string, a read past the end), never anything outside ``Exception``; the codec turns every one
into a ``DeserializationError``.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from typing import Any

__all__ = ["Decoder", "MalformedAvro", "compile_decoder"]

Decoder = Callable[[bytes, int], tuple[Any, int]]

# More items than this in one block of an array or map of values that take no bytes (nulls, empty
# records) can only come from damaged bytes, and would otherwise build an arbitrarily long list.
MAX_EMPTY_ITEMS = 1_000_000

_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


class MalformedAvro(ValueError):
    """The bytes are not a value of the schema: damaged, truncated, or written with another schema."""


def compile_decoder(schema: Any, *, build: tuple[str, dict[str, Any]] | None = None) -> Decoder:
    """A function ``decode(data, position) -> (value, next_position)`` for values of ``schema``.

    ``schema`` is a schema as ``fastavro.parse_schema`` returns it (full names throughout, each named
    type defined where it first occurs). Logical types are ignored: values come back as their
    physical type, as fastavro returns them for a schema without logical types.

    ``build``, for a record schema, replaces the dict of the top-level record by an expression over
    its fields' values (``f_<field name>``) and the names that expression uses: the codec builds the
    event there, without a dict in between.
    """
    return _Generator().compile(schema, build)


def read_long(data: bytes, position: int) -> tuple[int, int]:
    """A zig-zag varint (Avro's int and long) at ``position``, and the position after it."""
    word = _from_bytes(data[position : position + 8], "little")
    if word & _CONTINUATION_BITS == _EIGHT_BYTES:
        # Eight bytes, as every timestamp-micros from 1979 to 3111 takes: their 7-bit groups are packed
        # in three steps instead of a loop over the bytes, which takes twice as long.
        word = (word & 0x007F007F007F007F) | ((word & 0x7F007F007F007F00) >> 1)
        word = (word & 0x00003FFF00003FFF) | ((word & 0x3FFF00003FFF0000) >> 2)
        word = (word & 0x000000000FFFFFFF) | ((word & 0x0FFFFFFF00000000) >> 4)
        return (word >> 1) ^ -(word & 1), position + 8
    accumulated = shift = 0
    while True:
        byte = data[position]
        position += 1
        accumulated |= (byte & 0x7F) << shift
        if byte < 0x80:
            return (accumulated >> 1) ^ -(accumulated & 1), position
        shift += 7
        if shift > 63:
            raise MalformedAvro(f"a varint longer than 10 bytes ends at byte {position}")


_from_bytes = int.from_bytes
_CONTINUATION_BITS = 0x8080808080808080
_EIGHT_BYTES = 0x0080808080808080  # the first seven bytes say "more follows", the eighth does not


def read_boolean(data: bytes, position: int) -> tuple[bool, int]:
    byte = data[position]
    if byte > 1:
        raise MalformedAvro(f"byte {position} is {byte}, not a boolean (0 or 1)")
    return byte == 1, position + 1


def block_count(data: bytes, position: int, minimum_item_size: int) -> tuple[int, int]:
    """The number of items in the array or map block at ``position``, and where its items start."""
    count, position = read_long(data, position)
    if count < 0:  # a negative count is followed by the block's size in bytes, which reading skips
        count = -count
        _, position = read_long(data, position)
    if minimum_item_size:
        if count * minimum_item_size > len(data) - position:
            raise MalformedAvro(f"a block of {count} items at byte {position} cannot fit in the bytes left")
    elif count > MAX_EMPTY_ITEMS:
        raise MalformedAvro(f"a block of {count} empty items at byte {position}")
    return count, position


_FLOAT = struct.Struct("<f").unpack_from
_DOUBLE = struct.Struct("<d").unpack_from

_SCOPE: dict[str, Any] = {
    "MalformedAvro": MalformedAvro,
    "read_long": read_long,
    "read_boolean": read_boolean,
    "block_count": block_count,
    "_FLOAT": _FLOAT,
    "_DOUBLE": _DOUBLE,
}


class _Generator:
    """Writes the source of one function per named record, and the entry point."""

    def __init__(self) -> None:
        self.scope: dict[str, Any] = dict(_SCOPE)
        self.named: dict[str, Any] = {}
        self.record_functions: dict[str, str] = {}
        self.sources: list[str] = []
        self.counter = 0

    def compile(self, schema: Any, build: tuple[str, dict[str, Any]] | None) -> Decoder:
        if isinstance(schema, dict):
            self.named.update(schema.get("__named_schemas", {}))
        resolved = self.resolve(schema)
        if build is not None:
            if not (isinstance(resolved, dict) and resolved["type"] in ("record", "error")):
                raise ValueError("only a record can be built into an object")
            expression, names = build
            clashes = sorted(name for name in names if name in self.scope)
            if clashes:
                raise ValueError(f"the build expression's names {clashes} are the decoder's own")
            self.scope.update(names)
            entry = self.record_function(resolved, result=expression)
        elif isinstance(resolved, dict) and resolved["type"] in ("record", "error"):
            entry = self.record_function(resolved)
        else:
            entry = "_decode"
            lines = [f"def {entry}(data, pos):", "    size = len(data)"]
            lines.extend(self.read(resolved, "value", "    "))
            self.sources.append("\n".join([*lines, "    return value, pos"]))
        # The source is built from the schema's structure: names are Avro names, which are identifiers.
        exec("\n\n".join(self.sources), self.scope)  # noqa: S102
        decoder: Decoder = self.scope[entry]
        return decoder

    def fresh(self, stem: str) -> str:
        self.counter += 1
        return f"_{stem}{self.counter}"

    def resolve(self, schema: Any) -> Any:
        """Named references to their definitions; ``{"type": "long"}`` to ``"long"``."""
        if isinstance(schema, str):
            if schema in _PRIMITIVES:
                return schema
            if schema not in self.named:
                raise ValueError(f"the schema refers to {schema!r} before defining it")
            return self.named[schema]
        if isinstance(schema, dict):
            kind = schema["type"]
            if kind in ("record", "error", "enum", "fixed"):
                self.named.setdefault(schema["name"], schema)
                return schema
            if isinstance(kind, str) and kind in _PRIMITIVES:
                return kind
            if isinstance(kind, dict | list) or (isinstance(kind, str) and kind not in ("array", "map")):
                return self.resolve(kind)
        return schema

    def read(self, schema: Any, target: str, indent: str) -> list[str]:
        """Statements that read one value of ``schema`` at ``pos`` into ``target`` and advance ``pos``."""
        schema = self.resolve(schema)
        if isinstance(schema, list):
            return self.read_union(schema, target, indent)
        if isinstance(schema, str):
            return [indent + line for line in self.read_primitive(schema, target)]
        kind = schema["type"]
        if kind in ("record", "error"):
            return [f"{indent}{target}, pos = {self.record_function(schema)}(data, pos)"]
        if kind == "enum":
            symbols, index = self.fresh("symbols"), self.fresh("index")
            self.scope[symbols] = tuple(schema["symbols"])
            count = len(schema["symbols"])
            return [
                *(indent + line for line in self.read_varint(index)),
                f"{indent}if not 0 <= {index} < {count}:",
                f"{indent}    raise MalformedAvro(f'enum index {{{index}}} is not one of {count} symbols')",
                f"{indent}{target} = {symbols}[{index}]",
            ]
        if kind == "fixed":
            end, width = self.fresh("end"), int(schema["size"])
            return [
                f"{indent}{end} = pos + {width}",
                f"{indent}if {end} > size:",
                f"{indent}    raise MalformedAvro(f'a fixed of {width} bytes at {{pos}} runs past the end')",
                f"{indent}{target} = data[pos:{end}]",
                f"{indent}pos = {end}",
            ]
        if kind == "array":
            return self.read_blocks(schema["items"], target, indent, keyed=False)
        if kind == "map":
            return self.read_blocks(schema["values"], target, indent, keyed=True)
        raise ValueError(f"no Avro type {kind!r}")

    def read_primitive(self, kind: str, target: str) -> list[str]:
        if kind == "null":
            return [f"{target} = None"]
        if kind == "boolean":
            return [f"{target}, pos = read_boolean(data, pos)"]
        if kind in ("int", "long"):
            return self.read_varint(target)
        if kind == "float":
            return [f"{target} = _FLOAT(data, pos)[0]", "pos += 4"]
        if kind == "double":
            return [f"{target} = _DOUBLE(data, pos)[0]", "pos += 8"]
        length, end = self.fresh("length"), self.fresh("end")
        value = f"data[pos:{end}]" if kind == "bytes" else f"data[pos:{end}].decode()"
        return [
            *self.read_varint(length),
            f"{end} = pos + {length}",
            f"if {length} < 0 or {end} > size:",
            f"    raise MalformedAvro(f'{{{length}}} bytes of {kind} at byte {{pos}} run past the end')",
            f"{target} = {value}",
            f"pos = {end}",
        ]

    def read_varint(self, target: str) -> list[str]:
        # Lengths, union branches and small numbers take one byte: read it here, call for the rest.
        return [
            f"{target} = data[pos]",
            f"if {target} < 0x80:",
            f"    {target} = ({target} >> 1) ^ -({target} & 1)",
            "    pos += 1",
            "else:",
            f"    {target}, pos = read_long(data, pos)",
        ]

    def read_union(self, branches: list[Any], target: str, indent: str) -> list[str]:
        index = self.fresh("branch")
        lines = [indent + line for line in self.read_varint(index)]
        for number, branch in enumerate(branches):
            keyword = "if" if number == 0 else "elif"
            lines.append(f"{indent}{keyword} {index} == {number}:")
            lines.extend(self.read(branch, target, indent + "    "))
        lines.append(f"{indent}else:")
        lines.append(
            f"{indent}    raise MalformedAvro(f'union branch {{{index}}} of {len(branches)} at byte {{pos}}')"
        )
        return lines

    def read_blocks(self, item_schema: Any, target: str, indent: str, *, keyed: bool) -> list[str]:
        count, item, key = self.fresh("count"), self.fresh("item"), self.fresh("key")
        minimum = _minimum_size(self.resolve(item_schema), self) + (1 if keyed else 0)
        inner = indent + "        "
        lines = [
            f"{indent}{target} = {{}}" if keyed else f"{indent}{target} = []",
            f"{indent}while True:",
            f"{indent}    {count}, pos = block_count(data, pos, {minimum})",
            f"{indent}    if not {count}:",
            f"{indent}        break",
            f"{indent}    for _ in range({count}):",
        ]
        if keyed:
            lines.extend(inner + line for line in self.read_primitive("string", key))
        lines.extend(self.read(item_schema, item, inner))
        lines.append(f"{inner}{target}[{key}] = {item}" if keyed else f"{inner}{target}.append({item})")
        return lines

    def record_function(self, schema: dict[str, Any], result: str | None = None) -> str:
        """The function reading ``schema``'s records as dicts, or as ``result`` (not shared)."""
        function = self.record_functions.get(schema["name"]) if result is None else None
        if function is None:
            function = self.fresh("record")
            if result is None:
                self.record_functions[schema["name"]] = function
            fields = [field["name"] for field in schema.get("fields", [])]
            bad = [name for name in fields if not (isinstance(name, str) and _FIELD_NAME.fullmatch(name))]
            if bad:
                # Field names become local variables of the generated code.
                raise ValueError(f"{bad} are not Avro field names ([A-Za-z_][A-Za-z0-9_]*)")
            lines = [f"def {function}(data, pos):", "    size = len(data)"]
            for field in schema.get("fields", []):
                lines.extend(self.read(field["type"], f"f_{field['name']}", "    "))
            if result is None:
                result = "{" + ", ".join(f"{name!r}: f_{name}" for name in fields) + "}"
            lines.append(f"    return {result}, pos")
            self.sources.append("\n".join(lines))
        return function


def _minimum_size(schema: Any, generator: _Generator) -> int:
    """The fewest bytes a value of ``schema`` takes (0 for null and for records of nothing but nulls)."""
    if isinstance(schema, str):
        return {"null": 0, "float": 4, "double": 8}.get(schema, 1)
    if isinstance(schema, list) or schema["type"] in ("enum", "array", "map"):
        return 1
    if schema["type"] == "fixed":
        return int(schema["size"])
    return 0 if not schema.get("fields") else _fields_minimum(schema, generator, set())


def _fields_minimum(schema: dict[str, Any], generator: _Generator, seen: set[str]) -> int:
    if schema["name"] in seen:  # a recursive record is entered through a union, an array or a map
        return 0
    total = 0
    for field in schema.get("fields", []):
        field_schema = generator.resolve(field["type"])
        if isinstance(field_schema, dict) and field_schema["type"] in ("record", "error"):
            total += _fields_minimum(field_schema, generator, seen | {schema["name"]})
        else:
            total += _minimum_size(field_schema, generator)
    return total
