"""JSON back to typed values, rebuilt from the type hints of the dataclass fields they belong to.

The stored JSON is checked as it is read: a missing or unexpected field, or a value of the wrong JSON
kind, is reported with the path to it instead of surfacing later as a wrong-typed attribute.
"""

from __future__ import annotations

import dataclasses
import operator
import typing
import uuid
from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from tidings.json_hints import ValueProblem, fields_of, is_enum, optional_of, tuple_items

__all__ = ["build_dataclass"]


_KNOWN: dict[type, frozenset[str]] = {}
"""Each class's field names (its fields never change)."""


@dataclasses.dataclass(frozen=True, slots=True)
class _Plain:
    """A class whose fields are all text, integers or booleans, passed by position. A stored object with
    every one of them (as the encoder writes it) is read without looking at the fields one by one."""

    count: int
    values: Callable[[dict[str, Any]], tuple[Any, ...]]
    """The fields' values in order, read in C; KeyError when one is missing."""
    types: tuple[type, ...]


_PLAIN: dict[type, _Plain | None] = {}


def _plain(cls: type) -> _Plain | None:
    found = _PLAIN.get(cls, _PLAIN)
    if found is not _PLAIN:
        return found  # type: ignore[return-value]
    fields = fields_of(cls)
    positional = not any(f.kw_only for f in dataclasses.fields(cls))
    plain = None
    if positional and all(f.hint in (str, int, bool) for f in fields):
        names = [f.name for f in fields]
        plain = _Plain(len(names), _values_of(names), tuple(f.hint for f in fields))
    _PLAIN[cls] = plain
    return plain


def _values_of(names: list[str]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    if len(names) >= 2:
        return operator.itemgetter(*names)  # a tuple, in C
    if len(names) == 1:
        only = names[0]
        return lambda raw: (raw[only],)
    return lambda raw: ()


def build_dataclass(cls: type, raw: dict[str, Any], path: str) -> object:
    """An instance of ``cls`` rebuilt from its decoded JSON object; ``path`` names it in messages."""
    plain = _plain(cls)
    if plain is not None and len(raw) == plain.count:
        # The common small event: exactly its fields, each of exactly its type. Anything else takes the
        # general path below, which says what is wrong.
        try:
            values = plain.values(raw)
        except KeyError:
            pass
        else:
            if tuple(map(type, values)) == plain.types:
                try:
                    return cls(*values)
                except (TypeError, ValueError) as err:
                    raise ValueProblem(path, f"{cls.__qualname__} rejected the stored values: {err}") from err
    fields = fields_of(cls)
    known = _KNOWN.get(cls)
    if known is None:
        known = _KNOWN[cls] = frozenset(f.name for f in fields)
    for name in raw:
        if name not in known:
            raise ValueProblem(
                path, f"unexpected field {name!r}: add it to {cls.__qualname__}, or drop it with an upcaster"
            )
    kwargs: dict[str, object] = {}
    for f in fields:
        if f.name not in raw:
            if f.required:
                raise ValueProblem(
                    path, f"missing field {f.name!r}: add an upcaster that fills it in, or give it a default"
                )
            continue
        value, hint = raw[f.name], f.hint
        # Text and whole numbers as they came: most fields, and no path string to build for them.
        if (hint is str or hint is int) and type(value) is hint:
            kwargs[f.name] = value
        else:
            kwargs[f.name] = _decode(value, hint, f"{path}.{f.name}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        # __post_init__ validation that the stored values no longer pass.
        raise ValueProblem(path, f"{cls.__qualname__} rejected the stored values: {err}") from err


def _decode(raw: Any, hint: Any, path: str) -> object:
    inner = optional_of(hint, path)
    if inner is not None:
        return None if raw is None else _decode(raw, inner, path)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        _expect(raw is None, raw, "null", path)
        return None
    if hint is bool or hint is str:
        _expect(isinstance(raw, hint), raw, hint.__name__, path)
        return raw
    if hint is int or hint is float:
        numeric = isinstance(raw, int | float) and not isinstance(raw, bool)
        _expect(numeric and (hint is float or isinstance(raw, int)), raw, hint.__name__, path)
        return float(raw) if hint is float else raw
    if is_enum(hint):
        try:
            return hint(raw)
        except (ValueError, TypeError):
            raise ValueProblem(path, f"{raw!r} is not a value of {hint.__qualname__}") from None
    if hint in (uuid.UUID, Decimal, datetime, date):
        _expect(isinstance(raw, str), raw, "a string", path)
        return _parse_text(raw, hint, path)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        _expect(isinstance(raw, dict), raw, "an object", path)
        return build_dataclass(hint, raw, path)
    if origin is list and len(args) == 1:
        _expect(isinstance(raw, list), raw, "a list", path)
        return [_decode(v, args[0], f"{path}[{i}]") for i, v in enumerate(raw)]
    if origin is tuple:
        _expect(isinstance(raw, list), raw, "a list", path)
        hints = tuple_items(raw, hint, path)
        return tuple(_decode(v, h, f"{path}[{i}]") for i, (v, h) in enumerate(zip(raw, hints, strict=True)))
    if origin is dict and args[:1] == (str,):
        _expect(isinstance(raw, dict), raw, "an object", path)
        return {k: _decode(v, args[1], f"{path}[{k!r}]") for k, v in raw.items()}
    raise ValueProblem.unsupported(hint, path)


def _parse_text(raw: str, hint: type, path: str) -> object:
    try:
        if hint is uuid.UUID:
            return uuid.UUID(raw)
        if hint is Decimal:
            return Decimal(raw)
        if hint is date:
            return date.fromisoformat(raw)
        stamp = datetime.fromisoformat(raw)
    except (ValueError, InvalidOperation):
        raise ValueProblem(path, f"{raw!r} is not a valid {hint.__name__}") from None
    if stamp.utcoffset() is None:
        raise ValueProblem(path, f"{raw!r} has no UTC offset, so the instant it names is unknown")
    return stamp


def _expect(ok: bool, raw: object, wanted: str, path: str) -> None:
    if not ok:
        shown = repr(raw)
        # A whole list or object in a message would bury the point; its start is enough to find it.
        raise ValueProblem(
            path, f"expected {wanted}, found {shown if len(shown) <= 60 else shown[:57] + '...'}"
        )
