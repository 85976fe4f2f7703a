"""Shared by the Avro tests: the bank events as hypothesis strategies, and schema directories in tmp."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from examples.bank import events as bank

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "schemas"

# Avro's timestamp-micros carries microseconds; decimals here have precision 18, scale 2.
moments = st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC))
money = st.decimals(
    min_value=Decimal("-9999999999999999.99"),
    max_value=Decimal("9999999999999999.99"),
    places=2,
    allow_nan=False,
    allow_infinity=False,
)
text = st.text(max_size=40)
reasons = st.sampled_from(bank.RejectionReason)

bank_events = st.one_of(
    st.builds(
        bank.AccountOpened,
        st.uuids(),
        text,
        st.sampled_from(["EUR", "USD", "CHF"]),
        moments,
        money,
        st.lists(text, max_size=3),
    ),
    st.builds(bank.MoneyDeposited, st.uuids(), money, money, moments, st.none() | st.uuids()),
    st.builds(bank.MoneyWithdrawn, st.uuids(), money, money, moments, st.none() | st.uuids()),
    st.builds(bank.DepositRejected, st.uuids(), st.uuids(), reasons, moments),
    st.builds(
        bank.AccountClosed,
        st.uuids(),
        st.dates(min_value=date(1900, 1, 1), max_value=date(2200, 1, 1)),
        st.dictionaries(text, text, max_size=3),
    ),
    st.builds(bank.TransferRequested, st.uuids(), st.uuids(), st.uuids(), money, moments, st.none() | text),
    st.builds(bank.TransferCompleted, st.uuids(), moments),
    st.builds(bank.TransferFailed, st.uuids(), reasons, moments, st.booleans()),
)


def write_schema(root: Path, schema: dict[str, Any], version: int) -> Path:
    """Write ``schema`` as ``root/<namespace>/<name>/v<version>.avsc``."""
    path = root / schema["namespace"] / schema["name"] / f"v{version}.avsc"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(schema, indent=2), encoding="utf-8")
    return path


# --- Generated schemas and values ---------------------------------------------------------------------


def field(name: str, type_: Any, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": type_, **extra}


def enum(*symbols: str, name: str = "Kind", **extra: Any) -> dict[str, Any]:
    return {"type": "enum", "name": name, "symbols": list(symbols), **extra}


def fixed(size: int, name: str = "Hash") -> dict[str, Any]:
    return {"type": "fixed", "name": name, "size": size}


SIMPLE = ["boolean", "int", "long", "float", "double", "string", "bytes"]


@st.composite
def avro_types(draw: st.DrawFn, fresh: Callable[[str], str], depth: int) -> Any:
    kinds = ["simple", "simple", "enum", "fixed", "nullable"] + (
        ["array", "map", "record"] if depth > 0 else []
    )
    kind = draw(st.sampled_from(kinds))
    if kind == "simple":
        return draw(st.sampled_from(SIMPLE))
    if kind == "enum":
        symbols = draw(st.lists(st.sampled_from("ABCDE"), min_size=1, max_size=4, unique=True))
        schema = enum(*symbols, name=fresh("E"))
        if draw(st.booleans()):
            schema["default"] = symbols[0]
        return schema
    if kind == "fixed":
        return fixed(draw(st.integers(1, 4)), fresh("F"))
    if kind == "nullable":
        inner = draw(st.sampled_from([*SIMPLE, "enum"]))
        branch = enum("A", "B", name=fresh("E")) if inner == "enum" else inner
        return draw(st.sampled_from([["null", branch], [branch, "null"]]))
    if kind == "array":
        return {"type": "array", "items": draw(avro_types(fresh, depth - 1))}
    if kind == "map":
        return {"type": "map", "values": draw(avro_types(fresh, depth - 1))}
    return draw(records(fresh, depth - 1))


@st.composite
def records(draw: st.DrawFn, fresh: Callable[[str], str], depth: int) -> dict[str, Any]:
    name = fresh("R")
    count = draw(st.integers(1, 4))
    fields = [field(f"f{i}", draw(avro_types(fresh, depth))) for i in range(count)]
    return {"type": "record", "name": name, "fields": fields}


@st.composite
def record_schemas(draw: st.DrawFn) -> dict[str, Any]:
    """Small record schemas, every named type defined inline under a name of its own."""
    counter = itertools.count()

    def fresh(prefix: str) -> str:
        return f"{prefix}{next(counter)}"

    return {**draw(records(fresh, depth=2)), "namespace": "gen"}


def avro_values(
    schema: Any,
    *,
    binary: st.SearchStrategy[bytes] | None = None,
    text: st.SearchStrategy[str] | None = None,
    items: int = 2,
    named: dict[str, Any] | None = None,
) -> st.SearchStrategy[Any]:
    """Datums that fastavro writes under ``schema`` and reads back equal.

    References to named types are followed (``schema`` as ``fastavro.parse_schema`` returns it, or with
    every named type defined before its use). Floats exclude NaN, which is not equal to itself.
    """
    named = {} if named is None else named
    binary = st.binary(max_size=4) if binary is None else binary
    text = st.text(max_size=4) if text is None else text

    def again(inner: Any) -> st.SearchStrategy[Any]:
        return avro_values(inner, binary=binary, text=text, items=items, named=named)

    if isinstance(schema, list):
        return st.one_of([again(branch) for branch in schema])
    if isinstance(schema, str) and schema in named:
        return st.deferred(lambda: again(named[schema]))  # a recursive type refers to itself
    kind = schema if isinstance(schema, str) else schema["type"]
    if isinstance(kind, dict | list):
        return again(kind)
    simple: dict[str, st.SearchStrategy[Any]] = {
        "null": st.none(),
        "boolean": st.booleans(),
        "int": st.integers(-(2**31), 2**31 - 1),
        "long": st.integers(-(2**63), 2**63 - 1),
        "float": st.floats(width=32, allow_nan=False),
        "double": st.floats(allow_nan=False),
        "string": text,
        "bytes": binary,
    }
    if kind in simple:
        return simple[kind]
    if kind in ("record", "error", "enum", "fixed"):
        named[schema["name"]] = schema
    if kind == "enum":
        return st.sampled_from(schema["symbols"])
    if kind == "fixed":
        return st.binary(min_size=schema["size"], max_size=schema["size"])
    if kind == "array":
        return st.lists(again(schema["items"]), max_size=items)
    if kind == "map":
        return st.dictionaries(st.text(max_size=2), again(schema["values"]), max_size=items)
    return st.fixed_dictionaries({f["name"]: again(f["type"]) for f in schema["fields"]})
