"""Binding dataclass events to their Avro schemas: checking that they agree, and converting values.

A class and the latest version of its schema must agree on field names, types, nullability and
defaults; ``differences`` says where they do not, and the codec refuses to start until they do. Python
types map to Avro as follows (the schema may use either type where two are given):

=============================  =====================================================
``str``                        ``string``
``bool``                       ``boolean``
``int``                        ``long`` or ``int``
``float``                      ``double`` or ``float``
``bytes``                      ``bytes``
``uuid.UUID``                  ``string`` with logicalType ``uuid``
``datetime`` (aware)           ``long`` with logicalType ``timestamp-micros`` (or ``-millis``)
``date``                       ``int`` with logicalType ``date``
``Decimal``                    ``bytes`` (or ``fixed``) with logicalType ``decimal``
an ``Enum``                    ``enum`` whose symbols are the members' names
``X | None``                   ``["null", X]`` (or ``[X, "null"]``)
``list[X]``                    ``array`` of X
``dict[str, X]``               ``map`` of X
a dataclass                    ``record``
=============================  =====================================================
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import types
import typing
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from tidings.avro.schemas import full_name
from tidings.errors import DeserializationError, SerializationError

__all__ = ["Binding", "differences", "schema_for"]

Convert = Callable[[Any], Any]

_PRIMITIVES: dict[type, tuple[str, ...]] = {
    str: ("string",),
    bool: ("boolean",),
    int: ("long", "int"),
    float: ("double", "float"),
    bytes: ("bytes",),
}
_LOGICAL: dict[type, tuple[str, ...]] = {
    uuid.UUID: ("uuid",),
    dt.datetime: ("timestamp-micros", "timestamp-millis"),
    dt.date: ("date",),
    Decimal: ("decimal",),
}


# --- what a class implies ---------------------------------------------------------------------------


def schema_for(cls: type, name: str) -> dict[str, Any]:
    """The Avro schema a dataclass implies, as a starting point for its ``.avsc`` file.

    ``name`` is the event's type name (``bank.AccountOpened``). Decimals get precision 18 and scale 2:
    edit them to suit.
    """
    namespace, _, short = name.rpartition(".")
    schema = _record_schema(cls, short, set())
    if namespace:
        schema = {"type": "record", "name": short, "namespace": namespace, "fields": schema["fields"]}
    return schema


def _record_schema(cls: type, name: str, seen: set[type]) -> dict[str, Any]:
    seen.add(cls)
    fields = []
    for f, hint in _fields(cls):
        entry: dict[str, Any] = {"name": f.name, "type": _type_schema(hint, seen)}
        default = _class_default(f)
        if default is not _NO_DEFAULT:
            entry["default"] = _avro_default(default)
        fields.append(entry)
    return {"type": "record", "name": name, "fields": fields}


def _type_schema(hint: Any, seen: set[type]) -> Any:
    inner, optional = _unwrap_optional(hint)
    if optional:
        return ["null", _type_schema(inner, seen)]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (list, tuple):
        return {"type": "array", "items": _type_schema(args[0], seen)}
    if origin is dict:
        return {"type": "map", "values": _type_schema(args[1], seen)}
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return {"type": "enum", "name": hint.__name__, "symbols": [m.name for m in hint]}
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return hint.__name__ if hint in seen else _record_schema(hint, hint.__name__, seen)
    if hint is uuid.UUID:
        return {"type": "string", "logicalType": "uuid"}
    if hint is dt.datetime:
        return {"type": "long", "logicalType": "timestamp-micros"}
    if hint is dt.date:
        return {"type": "int", "logicalType": "date"}
    if hint is Decimal:
        return {"type": "bytes", "logicalType": "decimal", "precision": 18, "scale": 2}
    if hint in _PRIMITIVES:
        return _PRIMITIVES[hint][0]
    raise TypeError(f"{hint!r} has no Avro mapping (see tidings.avro.binding)")


# --- where a class and a schema disagree ------------------------------------------------------------


def differences(cls: type, schema: dict[str, Any]) -> list[str]:
    """How the dataclass ``cls`` and the record ``schema`` disagree; empty when they agree."""
    return _compare_record(cls, schema, full_name(schema), _named_types(schema), set())


def _compare_record(
    cls: type, schema: dict[str, Any], path: str, named: dict[str, Any], seen: set[tuple[type, str]]
) -> list[str]:
    key = (cls, str(schema.get("name")))
    if key in seen:
        return []
    seen.add(key)
    found: list[str] = []
    fields = {f["name"]: f for f in schema.get("fields", [])}
    ours = dict((f.name, (f, hint)) for f, hint in _fields(cls))
    for missing in sorted(set(fields) - set(ours)):
        found.append(f"{path}.{missing}: in the schema but not in {cls.__qualname__}")
    for extra in sorted(set(ours) - set(fields)):
        found.append(f"{path}.{extra}: in {cls.__qualname__} but not in the schema")
    for name in [n for n in ours if n in fields]:
        f, hint = ours[name]
        where = f"{path}.{name}"
        found += _compare_type(hint, fields[name]["type"], where, named, seen)
        found += _compare_default(f, fields[name], where)
    return found


def _compare_type(
    hint: Any, schema: Any, path: str, named: dict[str, Any], seen: set[tuple[type, str]]
) -> list[str]:
    schema = _deref(schema, named)
    inner, optional = _unwrap_optional(hint)
    if isinstance(schema, list):
        branches = [_deref(b, named) for b in schema]
        others = [b for b in branches if b != "null"]
        if len(others) != 1 or len(branches) != 2:
            return [f'{path}: unions other than ["null", X] have no class mapping; use X | None']
        if not optional:
            return [f"{path}: nullable in the schema but not in the class (make it {_name(hint)} | None)"]
        return _compare_type(inner, others[0], path, named, seen)
    if optional:
        return [f'{path}: nullable in the class but not in the schema (make it ["null", ...])']
    kind = schema.get("type") if isinstance(schema, dict) else schema
    logical = schema.get("logicalType") if isinstance(schema, dict) else None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (list, tuple):
        if kind != "array":
            return [f"{path}: a list in the class, {_describe(schema)} in the schema"]
        return _compare_type(args[0], schema["items"], f"{path}[]", named, seen)
    if origin is dict:
        if kind != "map":
            return [f"{path}: a dict in the class, {_describe(schema)} in the schema"]
        return _compare_type(args[1], schema["values"], f"{path}{{}}", named, seen)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        if kind != "enum":
            return [f"{path}: the enum {hint.__name__} in the class, {_describe(schema)} in the schema"]
        ours, theirs = {m.name for m in hint}, set(schema.get("symbols", []))
        if ours != theirs:
            return [
                f"{path}: enum symbols differ (class only: {sorted(ours - theirs)}, "
                f"schema only: {sorted(theirs - ours)})"
            ]
        return []
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if kind != "record":
            return [f"{path}: the dataclass {hint.__name__} in the class, {_describe(schema)} in the schema"]
        return _compare_record(hint, schema, path, named, seen)
    if hint in _LOGICAL:
        if logical not in _LOGICAL[hint]:
            wanted = " or ".join(_LOGICAL[hint])
            found = _describe(schema)
            return [f"{path}: {_name(hint)} in the class needs logicalType {wanted}, the schema has {found}"]
        return []
    if hint in _PRIMITIVES:
        if logical is not None or kind not in _PRIMITIVES[hint]:
            wanted = " or ".join(_PRIMITIVES[hint])
            return [f"{path}: {_name(hint)} in the class needs {wanted}, the schema has {_describe(schema)}"]
        return []
    return [f"{path}: {hint!r} has no Avro mapping (see tidings.avro.binding)"]


def _compare_default(f: dataclasses.Field[Any], field_schema: dict[str, Any], path: str) -> list[str]:
    ours = _class_default(f)
    has_theirs = "default" in field_schema
    if ours is _NO_DEFAULT:
        if has_theirs:
            return [f"{path}: the schema's default {field_schema['default']!r} is missing from the class"]
        return []
    if not has_theirs:
        return [f"{path}: the class's default {ours!r} is missing from the schema"]
    try:
        expected = _avro_default(ours)
    except TypeError:
        return []  # a default with no JSON form (a Decimal, a datetime): nothing to compare
    if expected != field_schema["default"]:
        return [f"{path}: defaults differ (class {expected!r}, schema {field_schema['default']!r})"]
    return []


# --- converting values ------------------------------------------------------------------------------


class Binding:
    """Converts between one dataclass and the values fastavro reads and writes for its schema.

    The codec hands fastavro the *physical* schema (logical types stripped, which leaves the
    fingerprint unchanged) and converts logical values here, with converters planned once per class:
    fastavro's own logical-type handling costs several times the decoding itself.
    """

    def __init__(self, cls: type, schema: dict[str, Any]) -> None:
        self.cls = cls
        named = _named_types(schema)
        fields = _fields(cls)
        nodes = {f["name"]: f for f in schema.get("fields", [])}
        to = [(f.name, _plan_to(hint, nodes[f.name]["type"], named, f.name)) for f, hint in fields]
        from_ = [(f.name, _plan_from(hint, nodes[f.name]["type"], named)) for f, hint in fields]
        nullable = {f.name for f, hint in fields if _unwrap_optional(hint)[1]}
        self.to_datum: Callable[[object], dict[str, Any]] = _compile_to_datum(to, nullable)
        """The dict fastavro writes, with the physical schema, for an event."""
        self.from_datum: Callable[[dict[str, Any]], object] = _compile_from_datum(cls, from_, nullable)
        """The event for a dict fastavro read with this binding's physical schema as the reader."""
        scope: dict[str, Any] = {"cls": cls}
        self.build: tuple[str, dict[str, Any]] = (_construction(from_, nullable, "f_{}", scope), scope)
        """The event as an expression over locals ``f_<field>`` holding what fastavro would have read
        for each field, and the names it uses: for ``decoder.compile_decoder``."""
        self._from_logical = [(f.name, _from_logical(hint)) for f, hint in fields]
        # For documents that upcasters have handled: where each field may come from if not by name.
        self._fallbacks = {
            n: (tuple(node.get("aliases", ())), node.get("default", _NO_DEFAULT), _deref(node["type"], named))
            for n, node in nodes.items()
        }

    def from_document(self, document: dict[str, Any], where: str) -> object:
        """The event for a document (logical values) in any older shape: fields by name, alias or default.

        Raises:
            DeserializationError: a field has no value, no alias and no default, or does not fit.
        """
        values: dict[str, Any] = {}
        for name, convert in self._from_logical:
            aliases, default, field_type = self._fallbacks.get(name, ((), _NO_DEFAULT, None))
            if name in document:
                value = document[name]
            elif (alias := next((a for a in aliases if a in document), None)) is not None:
                value = document[alias]
            elif default is not _NO_DEFAULT:
                value = _default_value(default, field_type)
            else:
                raise DeserializationError(
                    f"{where}.{name}",
                    "the stored event has no such field and the schema gives it no default: add an upcaster "
                    "that sets it, or a default in a new schema version",
                )
            values[name] = value if convert is None or value is None else convert(value)
        try:
            return self.cls(**values)
        except (TypeError, ValueError, KeyError, ArithmeticError) as err:
            raise DeserializationError(
                where, f"the document does not fit {self.cls.__qualname__}: {err}"
            ) from None


def _compile_to_datum(
    plan: list[tuple[str, Convert | _Inline | None]], nullable: set[str]
) -> Callable[[object], Any]:
    # Generated once per class, as dataclasses generate __init__: one expression per event instead of a
    # loop over fields, which is a third of the conversion time for small events.
    scope: dict[str, Any] = {}
    items = _converted(plan, nullable, "event.{}", scope)
    return _compile("event", "{" + ", ".join(f"{name!r}: {value}" for name, value in items) + "}", scope)


def _compile_from_datum(
    cls: type, plan: list[tuple[str, Convert | _Inline | None]], nullable: set[str]
) -> Callable[[dict[str, Any]], object]:
    scope: dict[str, Any] = {"cls": cls}
    return _compile("datum", _construction(plan, nullable, "datum[{!r}]", scope), scope)


def _construction(
    plan: list[tuple[str, Convert | _Inline | None]], nullable: set[str], read: str, scope: dict[str, Any]
) -> str:
    """``cls(...)`` with each field's ``read`` converted: the names it uses are added to ``scope``."""
    return f"cls({', '.join(f'{name}={value}' for name, value in _converted(plan, nullable, read, scope))})"


def _converted(
    plan: list[tuple[str, Convert | _Inline | None]], nullable: set[str], read: str, scope: dict[str, Any]
) -> list[tuple[str, str]]:
    """Each field's name and the expression for its value: ``read`` passed through its conversion."""
    items = []
    for index, (name, convert) in enumerate(plan):
        value = read.format(name)
        if convert is not None:
            if isinstance(convert, _Inline):
                # Written out in place: a call per field is a tenth of the decode time of a small event.
                scope.update(_INLINE_SCOPE)
                template = convert.template
            else:
                scope[f"c{index}"] = convert
                template = f"c{index}({{}})"
            if name in nullable:
                value = f"(None if (v{index} := {value}) is None else {template.format(f'v{index}')})"
            else:
                value = template.format(value)
        items.append((name, value))
    return items


def _compile(argument: str, expression: str, scope: dict[str, Any]) -> Callable[[Any], Any]:
    # Field names are Python identifiers (they are a dataclass's), and dict keys are repr()-quoted.
    namespace = dict(scope)
    exec(f"def convert({argument}):\n    return {expression}\n", namespace)  # noqa: S102
    function: Callable[[Any], Any] = namespace["convert"]
    return function


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()
_MICROSECOND = dt.timedelta(microseconds=1)
_MILLISECOND = dt.timedelta(milliseconds=1)
_EXACT = decimal.Context(prec=decimal.MAX_PREC)


@dataclasses.dataclass(frozen=True, slots=True)
class _Inline:
    """A conversion written into the generated code rather than called: ``{}`` stands for the value
    (used once), and the other names come from ``_INLINE_SCOPE``."""

    template: str


def uuid_from_text(text: str) -> uuid.UUID:
    """``uuid.UUID(text)``, in half the time for the 36-character form that Avro's uuid holds.

    ``UUID.__init__`` tries several spellings (braces, ``urn:uuid:``) and checks its arguments on every
    call, which made it a quarter of the decode time of the bank's events. The canonical form is parsed
    directly; anything else goes through ``UUID`` itself, so the result (and the ``ValueError`` for a
    malformed value) is always ``UUID``'s.
    """
    digits = text.replace("-", "")
    if len(digits) == 32:
        try:
            value = int(digits, 16)
        except ValueError:
            pass
        else:
            made = _new_object(_UUID)
            _set_slot(made, "int", value)
            _set_slot(made, "is_safe", _UNKNOWN_SAFETY)
            return made
    return uuid.UUID(text)


# UUID instances are immutable: their two slots can only be set around UUID.__setattr__.
_new_object = object.__new__
_set_slot = object.__setattr__
_UUID = uuid.UUID
_UNKNOWN_SAFETY = uuid.SafeUUID.unknown

_INLINE_SCOPE: dict[str, Any] = {
    "_EPOCH": _EPOCH,
    "_EPOCH_ORDINAL": _EPOCH_ORDINAL,
    "_EXACT": _EXACT,
    "_Decimal": Decimal,
    "_from_bytes": int.from_bytes,
    "_fromordinal": dt.date.fromordinal,
    "_timedelta": dt.timedelta,
    "_uuid": uuid_from_text,
}


def _callable(convert: Convert | _Inline | None) -> Convert | None:
    """The conversion as a function, for values inside lists, maps and nested records."""
    if isinstance(convert, _Inline):
        return _compile("value", convert.template.format("value"), dict(_INLINE_SCOPE))
    return convert


def _plan_to(hint: Any, node: Any, named: dict[str, Any], path: str) -> Convert | _Inline | None:
    """How a field's Python value becomes what fastavro writes under the physical schema."""
    hint, _ = _unwrap_optional(hint)
    node = _non_null(_deref(node, named), named)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (list, tuple):
        item = _callable(_plan_to(args[0], node["items"], named, f"{path}[]"))
        return None if item is None else (lambda values: [_or_none(item, v) for v in values])
    if origin is dict:
        value = _callable(_plan_to(args[1], node["values"], named, f"{path}{{}}"))
        return None if value is None else (lambda values: {k: _or_none(value, v) for k, v in values.items()})
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _Inline("{}.name")
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        nested = {f["name"]: f["type"] for f in node["fields"]}
        fields = _fields(hint)
        plan = [(f.name, _plan_to(h, nested[f.name], named, f"{path}.{f.name}")) for f, h in fields]
        return _compile_to_datum(plan, {f.name for f, h in fields if _unwrap_optional(h)[1]})
    logical = node.get("logicalType") if isinstance(node, dict) else None
    if logical == "uuid":
        return _Inline("str({})")
    if logical in ("timestamp-micros", "timestamp-millis"):
        unit = _MICROSECOND if logical == "timestamp-micros" else _MILLISECOND
        return lambda value: (_aware(value, path) - _EPOCH) // unit
    if logical == "date":
        return _Inline("{}.toordinal() - _EPOCH_ORDINAL")
    if logical == "decimal":
        return _decimal_to_bytes(int(node.get("precision", 0)), int(node.get("scale", 0)), path)
    return None


def _plan_from(hint: Any, node: Any, named: dict[str, Any]) -> Convert | _Inline | None:
    """How what fastavro read under the physical schema becomes the field's Python value."""
    hint, _ = _unwrap_optional(hint)
    node = _non_null(_deref(node, named), named)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (list, tuple):
        item = _callable(_plan_from(args[0], node["items"], named))
        if item is None:
            return tuple if origin is tuple else None
        wrap = tuple if origin is tuple else list
        return lambda values: wrap(_or_none(item, v) for v in values)
    if origin is dict:
        value = _callable(_plan_from(args[1], node["values"], named))
        return None if value is None else (lambda values: {k: _or_none(value, v) for k, v in values.items()})
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint.__members__.__getitem__  # the member by its symbol
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        nested = {f["name"]: f["type"] for f in node["fields"]}
        fields = _fields(hint)
        plan = [(f.name, _plan_from(h, nested[f.name], named)) for f, h in fields]
        return _compile_from_datum(hint, plan, {f.name for f, h in fields if _unwrap_optional(h)[1]})
    logical = node.get("logicalType") if isinstance(node, dict) else None
    if logical == "uuid":
        return _Inline("_uuid({})")
    if logical == "timestamp-micros":
        return _Inline("_EPOCH + _timedelta(0, 0, {})")
    if logical == "timestamp-millis":
        return _Inline("_EPOCH + _timedelta(0, 0, 0, {})")
    if logical == "date":
        return _Inline("_fromordinal(_EPOCH_ORDINAL + {})")
    if logical == "decimal":
        scale = -int(node.get("scale", 0))
        return _Inline(f"_Decimal(_from_bytes({{}}, 'big', signed=True)).scaleb({scale}, _EXACT)")
    if hint is float:
        return float  # an int written before a promotion to float or double
    return None


def _from_logical(hint: Any) -> Convert | None:
    """How a value fastavro read with logical types on becomes the field's Python value."""
    inner, _ = _unwrap_optional(hint)
    origin, args = typing.get_origin(inner), typing.get_args(inner)
    if origin in (list, tuple):
        item = _from_logical(args[0])
        if item is None:
            return tuple if origin is tuple else None
        wrap = tuple if origin is tuple else list
        return lambda values: wrap(_or_none(item, v) for v in values)
    if origin is dict:
        value = _from_logical(args[1])
        return None if value is None else (lambda values: {k: _or_none(value, v) for k, v in values.items()})
    if isinstance(inner, type) and issubclass(inner, enum.Enum):
        members = inner.__members__
        return lambda symbol: members[symbol]
    if isinstance(inner, type) and dataclasses.is_dataclass(inner):
        nested = inner
        plans = [(f.name, _from_logical(h)) for f, h in _fields(inner)]
        return lambda d: nested(**{n: _or_none(c, d[n]) if c else d[n] for n, c in plans})
    if inner is float:
        return float
    return None


def _decimal_to_bytes(precision: int, scale: int, path: str) -> Convert:
    def convert(value: decimal.Decimal) -> bytes:
        exponent = value.as_tuple().exponent
        if not isinstance(exponent, int):
            raise SerializationError(path, f"{value} is not a finite number")
        if exponent < -scale:
            raise SerializationError(
                path, f"{value} has more than the schema's {scale} decimal places: round it"
            )
        unscaled = int(value.scaleb(scale, _EXACT))
        if precision and len(str(abs(unscaled))) > precision:
            raise SerializationError(path, f"{value} has more than the schema's {precision} digits")
        return unscaled.to_bytes(unscaled.bit_length() // 8 + 1, "big", signed=True)

    return convert


def _non_null(node: Any, named: dict[str, Any]) -> Any:
    if isinstance(node, list):
        others = [b for b in node if b != "null"]
        return _deref(others[0], named) if len(others) == 1 else node
    return node


def _or_none(convert: Convert, value: Any) -> Any:
    return None if value is None else convert(value)


def _aware(value: dt.datetime, path: str) -> dt.datetime:
    if value.tzinfo is None:
        raise SerializationError(
            path, "a naive datetime has no time zone: use an aware one (datetime.now(timezone.utc))"
        )
    return value


def _default_value(default: Any, schema: Any) -> Any:
    # Avro defaults are JSON; logical types need their Python value.
    if default is None or not isinstance(schema, dict):
        return default
    logical = schema.get("logicalType")
    if logical == "uuid":
        return uuid.UUID(default)
    if logical == "date":
        return dt.date(1970, 1, 1) + dt.timedelta(days=default)
    if logical == "timestamp-micros":
        return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=default)
    if logical == "timestamp-millis":
        return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=default)
    return default


# --- helpers ----------------------------------------------------------------------------------------

_NO_DEFAULT: Any = object()


def _fields(cls: type) -> list[tuple[dataclasses.Field[Any], Any]]:
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass: Avro events are dataclasses")
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls) if f.init]


def _class_default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return _NO_DEFAULT


def _avro_default(value: Any) -> Any:
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, list | tuple):
        return [_avro_default(v) for v in value]
    if isinstance(value, dict):
        return {k: _avro_default(v) for k, v in value.items()}
    raise TypeError(f"no JSON form for the default {value!r}")


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return args[0], True
    return hint, False


def _named_types(schema: Any, namespace: str = "", found: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every named type (record, enum, fixed) in ``schema`` by short and full name, for references."""
    found = {} if found is None else found
    if isinstance(schema, list):
        for branch in schema:
            _named_types(branch, namespace, found)
    elif isinstance(schema, dict):
        kind = schema.get("type")
        if kind in ("record", "enum", "fixed"):
            name = str(schema.get("name", ""))
            space = schema.get("namespace", namespace)
            full = name if "." in name or not space else f"{space}.{name}"
            found[full] = found[name] = schema
            namespace = full.rpartition(".")[0]
        for f in schema.get("fields", []) if kind == "record" else []:
            _named_types(f["type"], namespace, found)
        for key in ("items", "values"):
            if key in schema:
                _named_types(schema[key], namespace, found)
        if isinstance(kind, dict | list):
            _named_types(kind, namespace, found)
    return found


def _deref(schema: Any, named: dict[str, Any]) -> Any:
    if isinstance(schema, str) and schema in named:
        return named[schema]
    if (
        isinstance(schema, dict)
        and isinstance(schema.get("type"), dict | list)
        and "logicalType" not in schema
    ):
        return _deref(schema["type"], named)
    if isinstance(schema, dict) and isinstance(schema.get("type"), str) and schema["type"] in named:
        return named[schema["type"]]
    return schema


def _describe(schema: Any) -> str:
    if isinstance(schema, dict):
        logical = schema.get("logicalType")
        return f"{schema.get('type')} ({logical})" if logical else str(schema.get("type"))
    return str(schema)


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", repr(hint))
