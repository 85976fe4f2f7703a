"""Typed values to JSON, checked against their fields' type hints so that what is written reads back.

A value that does not match its hint (a str in an ``int`` field, a naive datetime, a set anywhere) is
refused here, at write time, rather than found unreadable later in the store.
"""

from __future__ import annotations

import dataclasses
import math
import typing
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from enum import Enum
from typing import Any

from tidings.json_hints import (
    SUPPORTED,
    JsonValue,
    ValueProblem,
    describe,
    fields_of,
    is_enum,
    optional_of,
    tuple_items,
)

__all__ = ["dataclass_to_json", "plain_json"]

_KINDS = (str, int, float, bool, list, tuple, dict, uuid.UUID, date, Decimal, Enum)
_ADVICE = {"set": "use a tuple or a list", "frozenset": "use a tuple", "bytes": "store it as a str (base64)"}


def dataclass_to_json(value: object, path: str) -> dict[str, JsonValue]:
    """The JSON object for a dataclass instance; ``path`` names it in error messages."""
    return {
        f.name: _encode(getattr(value, f.name), f.hint, f"{path}.{f.name}") for f in fields_of(type(value))
    }


def plain_json(value: object, path: str) -> JsonValue:
    """``value`` checked to be plain JSON, with tuples made lists; for data that has no type hints."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return _finite(value, path)
    if isinstance(value, list | tuple):
        return [plain_json(item, f"{path}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, dict):
        return {_key(k, path): plain_json(v, f"{path}[{k!r}]") for k, v in value.items()}
    raise ValueProblem(
        path,
        f"{type(value).__name__} is not serialisable here: use str, int, float, bool, None, list or dict",
    )


def _encode(value: object, hint: Any, path: str) -> JsonValue:
    inner = optional_of(hint, path)
    if inner is not None:
        return None if value is None else _encode(value, inner, path)
    _check_kind(value, path)
    origin = typing.get_origin(hint)
    if hint is type(None):
        if value is None:
            return None
    elif hint is bool or hint is str:
        if isinstance(value, hint):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        # An int is a fine float (PEP 484); it is written as one so that it reads back as a float.
        if isinstance(value, int | float) and not isinstance(value, bool):
            return _as_float(value, path)
    elif hint is uuid.UUID or hint is Decimal:
        if isinstance(value, hint):
            return str(value)
    elif hint is datetime:
        if isinstance(value, datetime):
            return _iso_datetime(value, path)
    elif hint is date:
        if isinstance(value, date) and not isinstance(value, datetime):
            return value.isoformat()
    elif is_enum(hint):
        if isinstance(value, hint):
            return _enum_value(typing.cast(Enum, value), path)
    elif isinstance(hint, type) and dataclasses.is_dataclass(hint):
        # A subclass would lose its own fields, and come back as the parent: refuse it.
        if type(value) is hint:
            return dataclass_to_json(value, path)
    elif origin is list and len(typing.get_args(hint)) == 1:
        if isinstance(value, list):
            item = typing.get_args(hint)[0]
            return [_encode(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    elif origin is tuple:
        if isinstance(value, tuple):
            hints = tuple_items(value, hint, path)
            return [_encode(v, h, f"{path}[{i}]") for i, (v, h) in enumerate(zip(value, hints, strict=True))]
    elif origin is dict and typing.get_args(hint)[:1] == (str,):
        if isinstance(value, dict):
            item = typing.get_args(hint)[1]
            return {_key(k, path): _encode(v, item, f"{path}[{k!r}]") for k, v in value.items()}
    else:
        raise ValueProblem.unsupported(hint, path)
    raise ValueProblem(path, f"expected {describe(hint)}, got {type(value).__name__}")


def _check_kind(value: object, path: str) -> None:
    if value is None or isinstance(value, _KINDS) or dataclasses.is_dataclass(value):
        return
    kind = type(value).__name__
    raise ValueProblem(path, f"{kind} is not serialisable: {_ADVICE.get(kind, 'supported are ' + SUPPORTED)}")


def _iso_datetime(value: datetime, path: str) -> str:
    offset = value.utcoffset()
    if offset is None:
        raise ValueProblem(
            path, "naive datetime (no tzinfo): pass an aware one, e.g. datetime.now(timezone.utc)"
        )
    if offset % timedelta(minutes=1):
        # ISO 8601 offsets are whole minutes, and Python 3.11 itself misreads some finer ones (it reads
        # +00:00:00.000001 as UTC). Only local mean times of old have such offsets: write the same
        # instant in UTC instead.
        try:
            value = value.astimezone(UTC)
        except OverflowError:
            raise ValueProblem(
                path, f"{value} cannot be written in UTC: it is outside years 1 to 9999"
            ) from None
    return value.isoformat()


def _enum_value(member: Enum, path: str) -> JsonValue:
    if member.value is None or isinstance(member.value, bool | int | float | str):
        return typing.cast(JsonValue, member.value)
    raise ValueProblem(
        path, f"{type(member).__qualname__} has {type(member.value).__name__} values: use str or int"
    )


def _as_float(value: float, path: str) -> float:
    try:
        return _finite(float(value), path)
    except OverflowError:
        raise ValueProblem(path, f"{value} is too large for a float: use a Decimal field") from None


def _finite(value: float, path: str) -> float:
    if not math.isfinite(value):
        raise ValueProblem(
            path, f"{value} is not serialisable: JSON has no NaN or infinity; use None or a Decimal"
        )
    return value


def _key(key: object, path: str) -> str:
    if not isinstance(key, str):
        raise ValueProblem(path, f"dict keys must be str, found {type(key).__name__} key {key!r}")
    return key
