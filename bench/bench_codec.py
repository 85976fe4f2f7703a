"""The Avro codec against orjson JSON doing the same job end to end, on one core.

The events are the bank's (``examples/bank/events.py``), a seeded random mix in the proportions a bank's
store would hold them (deposits and withdrawals most, then transfers, then account openings and closings).
Every case runs single-threaded, passing over the whole mix as often as fits in ``BENCH_CODEC_SECONDS``
(default 1.5) per timed run, tidings and the reference alternately (who goes first swaps each repeat), and
reports the median of ``repeat`` runs per side in events/s:

- encode: ``AvroCodec.encode(event)`` (single-object framing: marker, fingerprint, Avro body) against the
  event made a JSON-able dict (UUID -> str, Decimal -> str, datetime and date -> ISO 8601, enum -> name,
  lists and dicts as they are) and ``orjson.dumps``.
- decode: ``AvroCodec.decode(event_type, data, schema_id)`` against ``orjson.loads`` and the same dataclass
  built with the same Python types (``UUID``, ``Decimal``, ``datetime.fromisoformat``,
  ``date.fromisoformat``, the enum member by name).
- decode, against a reference with tidings' UUID builder (informational): the same decode against the
  orjson reference building its UUIDs with ``tidings.avro.binding.uuid_from_text`` instead of ``UUID``,
  so that the ratio shows Avro against JSON and not one way of making UUIDs against another.
- decode through fastavro (informational): what the codec does for bytes written with an older version of
  the schema (fastavro's ``schemaless_reader`` and the binding's ``from_datum``), minus the resolution.
- decode, bytes -> dict only (informational): fastavro's ``schemaless_reader``, then tidings' generated
  decoder (``tidings.avro.decoder``), on the Avro body, each against ``orjson.loads``: what reading costs
  before any event class is involved. Both read the physical schema (logical types left out), so that like
  orjson they return plain values and the cost of making UUIDs, Decimals and datetimes stays with decode.

The reference is written to be fast, since a slow reference would flatter tidings: each class gets its
field converters worked out once, encoding converts only the fields orjson cannot write itself (Decimal, and
enums, which orjson would write by value) and lets orjson write UUIDs, datetimes and dates natively (the same
text as ``str()`` and ``isoformat()``, checked below, but without a Python call per field), and decoding
converts only the fields that are not JSON types in the dict ``orjson.loads`` returns, then calls the class.

Before anything is timed, every event of the mix is decoded back and compared equal to itself on both sides,
and the reference's JSON is compared with the plain mapping above, so no broken codec is ever timed.
"""

from __future__ import annotations

import dataclasses
import enum
import gc
import io
import os
import platform
import random
import statistics
import sys
import time
import types
import typing
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from itertools import starmap
from pathlib import Path
from typing import Any

import fastavro
import orjson
from fastavro import schemaless_reader

from bench.results import Row
from tidings.avro.binding import Binding, uuid_from_text
from tidings.avro.codec import AvroCodec
from tidings.avro.decoder import Decoder, compile_decoder
from tidings.avro.schemas import SchemaSet, SchemaVersion
from tidings.registry import TypeRegistry

# The bank example lives in the checkout, not in the installed package.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from examples.bank.events import (  # noqa: E402  # needs the checkout on sys.path
    AccountClosed,
    AccountOpened,
    DepositRejected,
    MoneyDeposited,
    MoneyWithdrawn,
    RejectionReason,
    TransferCompleted,
    TransferFailed,
    TransferRequested,
    events,
)

NAME = "codec"

SECONDS = float(os.environ.get("BENCH_CODEC_SECONDS", "1.5"))
EVENTS = 10_000
SEED = 20261122
ACCOUNTS = 1000
# Out of 100 events in a bank's store.
MIX: dict[type, int] = {
    MoneyDeposited: 32,
    MoneyWithdrawn: 30,
    TransferRequested: 13,
    TransferCompleted: 12,
    AccountOpened: 8,
    AccountClosed: 3,
    TransferFailed: 1,
    DepositRejected: 1,
}
assert sum(MIX.values()) == 100
# The targets for decoding.
TARGET_DECODE_EVENTS_PER_S = 200_000
TARGET_DECODE_SLOWDOWN = 1.5  # at most 1.5x slower than orjson: ratio >= 1 / 1.5

Convert = Callable[[Any], Any]


# --- the events ---------------------------------------------------------------------------------------


def bank_mix(count: int, seed: int) -> list[object]:
    """``count`` bank events in ``MIX``'s proportions, with seeded random values."""
    rng = random.Random(seed)

    def some_uuid() -> uuid.UUID:
        return uuid.UUID(int=rng.getrandbits(128), version=4)

    def money(low: int, high: int) -> Decimal:
        return Decimal(rng.randint(low, high)).scaleb(-2)  # cents -> Decimal('1234.56')

    start = datetime(2026, 1, 1, tzinfo=UTC)

    def moment() -> datetime:
        return start + timedelta(seconds=rng.randrange(365 * 86400), microseconds=rng.randrange(1_000_000))

    accounts = [some_uuid() for _ in range(ACCOUNTS)]
    first = ["Ada", "Alan", "Grace", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Margaret", "Niklaus"]
    last = ["Lovelace", "Turing", "Hopper", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson", "Hamilton"]
    tags = ["savings", "joint", "student", "premium", "business", "minor"]

    def make(cls: type) -> object:
        if cls is MoneyDeposited or cls is MoneyWithdrawn:
            transfer = some_uuid() if rng.random() < 0.3 else None
            return cls(
                rng.choice(accounts), money(1, 250_000), money(-100_000, 5_000_000), moment(), transfer
            )
        if cls is TransferRequested:
            reference = f"INV-{rng.randrange(1_000_000):06d}" if rng.random() < 0.5 else None
            source, target = rng.sample(accounts, 2)
            return TransferRequested(some_uuid(), source, target, money(100, 1_000_000), moment(), reference)
        if cls is TransferCompleted:
            return TransferCompleted(some_uuid(), moment())
        if cls is AccountOpened:
            return AccountOpened(
                rng.choice(accounts),
                f"{rng.choice(first)} {rng.choice(last)}",
                rng.choice(["EUR", "USD", "GBP", "CHF"]),
                moment(),
                Decimal(rng.choice(["0.00", "500.00", "1000.00", "2500.00"])),
                rng.sample(tags, rng.randint(0, 3)),
            )
        if cls is AccountClosed:
            remarks = {"closed_by": rng.choice(["customer", "bank"])} if rng.random() < 0.7 else {}
            if rng.random() < 0.3:
                remarks["note"] = "moved abroad"
            return AccountClosed(rng.choice(accounts), moment().date(), remarks)
        if cls is TransferFailed:
            return TransferFailed(
                some_uuid(), rng.choice(list(RejectionReason)), moment(), rng.random() < 0.9
            )
        if cls is DepositRejected:
            return DepositRejected(
                rng.choice(accounts), some_uuid(), rng.choice(list(RejectionReason)), moment()
            )
        raise AssertionError(cls)

    classes = rng.choices(list(MIX), weights=list(MIX.values()), k=count)
    return [make(cls) for cls in classes]


# --- the reference: orjson JSON, built and read with per-class converters ------------------------------


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return hint, False


def _enum_name(member: enum.Enum) -> str:
    return member.name


def _to_json(hint: Any) -> Convert | None:
    """What orjson should write for a field, as the mapping says; None when orjson writes it so itself."""
    inner, optional = _unwrap_optional(hint)
    origin, args = typing.get_origin(inner), typing.get_args(inner)
    convert: Convert | None
    if inner is Decimal:
        convert = str
    elif isinstance(inner, type) and issubclass(inner, enum.Enum):
        convert = _enum_name
    elif inner in (str, bool, int, float, uuid.UUID, datetime, date):
        # orjson writes UUIDs as str() does and datetimes and dates as isoformat() does: no call needed.
        return None
    elif origin in (list, dict) and all(_to_json(a) is None for a in args):
        return None
    else:
        raise TypeError(f"the reference codec has no JSON mapping for {hint!r}")
    return _or_none(convert) if optional else convert


def _from_json(hint: Any, make_uuid: Convert = uuid.UUID) -> Convert | None:
    """How a value in the dict ``orjson.loads`` returns becomes the field's type; None when it already is."""
    inner, optional = _unwrap_optional(hint)
    origin, args = typing.get_origin(inner), typing.get_args(inner)
    convert: Convert | None
    if inner is uuid.UUID:
        convert = make_uuid
    elif inner is Decimal:
        convert = Decimal
    elif inner is datetime:
        convert = datetime.fromisoformat
    elif inner is date:
        convert = date.fromisoformat
    elif isinstance(inner, type) and issubclass(inner, enum.Enum):
        convert = inner.__getitem__  # the member by name
    elif inner in (str, bool, int, float) or (
        origin in (list, dict) and all(_from_json(a) is None for a in args)
    ):
        return None
    else:
        raise TypeError(f"the reference codec has no JSON mapping for {hint!r}")
    return _or_none(convert) if optional else convert


def _or_none(convert: Convert) -> Convert:
    return lambda value: None if value is None else convert(value)


class OrjsonCodec:
    """The registry's dataclass events as orjson JSON, with the type name kept beside the bytes."""

    def __init__(self, registry: TypeRegistry, make_uuid: Convert = uuid.UUID) -> None:
        self._encoders: dict[type, tuple[str, tuple[str, ...], tuple[tuple[str, Convert], ...]]] = {}
        self._decoders: dict[str, tuple[type, tuple[tuple[str, Convert], ...]]] = {}
        for name in registry.names():
            cls = registry.class_for(name)
            hints = typing.get_type_hints(cls)
            fields = tuple(f.name for f in dataclasses.fields(cls))
            to_json = tuple((f, c) for f in fields if (c := _to_json(hints[f])) is not None)
            from_json = tuple((f, c) for f in fields if (c := _from_json(hints[f], make_uuid)) is not None)
            self._encoders[cls] = (name, fields, to_json)
            self._decoders[name] = (cls, from_json)

    def encode(self, event: object) -> tuple[str, bytes]:
        name, fields, converts = self._encoders[type(event)]
        document = {field: getattr(event, field) for field in fields}
        for field, convert in converts:
            document[field] = convert(document[field])
        return name, orjson.dumps(document)

    def decode(self, event_type: str, data: bytes) -> object:
        cls, converts = self._decoders[event_type]
        document = orjson.loads(data)
        for field, convert in converts:
            document[field] = convert(document[field])
        return cls(**document)


def _plain_document(event: object) -> dict[str, Any]:
    """The mapping the reference promises, spelled out the slow way, to check its bytes against."""

    def plain(value: Any) -> Any:
        if isinstance(value, uuid.UUID | Decimal):
            return str(value)
        if isinstance(value, datetime | date):
            return value.isoformat()
        if isinstance(value, enum.Enum):
            return value.name
        return value

    return {f.name: plain(getattr(event, f.name)) for f in dataclasses.fields(event)}  # type: ignore[arg-type]


# --- measuring ----------------------------------------------------------------------------------------


def _avro_body_to_dict(schema: Any, body: bytes) -> Any:
    return schemaless_reader(io.BytesIO(body), schema, None)


def _generated_to_dict(decode: Decoder, data: bytes) -> Any:
    value, end = decode(data, 10)
    assert end == len(data)
    return value


def _through_fastavro(binding: Binding, schema: Any, data: bytes) -> object:
    """What the codec does for bytes written with another version of the schema, minus the resolution."""
    body = io.BytesIO(data)
    body.seek(10)
    return binding.from_datum(schemaless_reader(body, schema, None))  # type: ignore[arg-type]


def _passes(function: Callable[..., Any], items: list[tuple[Any, ...]]) -> Callable[[], int]:
    """One pass over ``items``, calling ``function(*item)`` and dropping the results, as tightly as can be."""

    def one_pass() -> int:
        deque(starmap(function, items), maxlen=0)
        return len(items)

    return one_pass


def events_per_second(one_pass: Callable[[], int], seconds: float) -> float:
    gc.collect()  # neither side pays for the other's garbage
    done, started = 0, time.perf_counter()
    while True:
        done += one_pass()
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return done / elapsed


def check(
    codec: AvroCodec, reference: OrjsonCodec, mix: Iterable[object], plain_schemas: dict[str, Any]
) -> None:
    """Every event comes back equal to itself through both codecs; the reference writes the plain mapping."""
    for event in mix:
        encoded = codec.encode(event)
        back = codec.decode(encoded.event_type, encoded.data, encoded.schema_id)
        assert back == event, f"tidings decoded {back!r} for {event!r}"
        name, data = reference.encode(event)
        assert orjson.loads(data) == _plain_document(event), f"reference wrote {data!r} for {event!r}"
        back = reference.decode(name, data)
        assert back == event, f"reference decoded {back!r} for {event!r}"
        datum = _avro_body_to_dict(plain_schemas[encoded.event_type], encoded.data[10:])
        assert datum.keys() == orjson.loads(data).keys(), f"fastavro read {datum!r} for {event!r}"


def run(repeat: int = 1, seconds: float = SECONDS) -> list[Row]:
    codec = AvroCodec(events, SchemaSet.load(ROOT / "schemas"))
    reference = OrjsonCodec(events)
    quick_uuids = OrjsonCodec(events, make_uuid=uuid_from_text)
    mix = bank_mix(EVENTS, SEED)
    latest: dict[str, SchemaVersion] = {}
    for name in events.names():
        version = codec.schemas.latest(name)
        assert version is not None, name
        latest[name] = version
    plain_schemas = {name: version.physical for name, version in latest.items()}
    bindings = {name: Binding(events.class_for(name), version.schema) for name, version in latest.items()}
    decoders = {name: compile_decoder(schema) for name, schema in plain_schemas.items()}
    check(codec, reference, mix, plain_schemas)  # also warms both sides up
    for event in mix[:1000]:
        assert quick_uuids.decode(*reference.encode(event)) == event
        encoded = codec.encode(event)
        assert (
            _through_fastavro(bindings[encoded.event_type], plain_schemas[encoded.event_type], encoded.data)
            == event
        )
        assert _generated_to_dict(decoders[encoded.event_type], encoded.data) == _avro_body_to_dict(
            plain_schemas[encoded.event_type], encoded.data[10:]
        )

    avro = [codec.encode(event) for event in mix]
    as_json = [reference.encode(event) for event in mix]
    assert all(e.data[:2] == b"\xc3\x01" for e in avro), "expected single-object framing (a 10-byte header)"
    cases: list[tuple[str, str, Callable[[], int], Callable[[], int]]] = [
        (
            "encode",
            "orjson: dict + dumps",
            _passes(codec.encode, [(event,) for event in mix]),
            _passes(reference.encode, [(event,) for event in mix]),
        ),
        (
            "decode",
            "orjson: loads + dataclass",
            _passes(codec.decode, [(e.event_type, e.data, e.schema_id) for e in avro]),
            _passes(reference.decode, as_json),
        ),
        (
            "decode, against a reference with tidings' UUID builder (informational)",
            "orjson: loads + dataclass, UUIDs by uuid_from_text",
            _passes(codec.decode, [(e.event_type, e.data, e.schema_id) for e in avro]),
            _passes(quick_uuids.decode, as_json),
        ),
        (
            "decode through fastavro, as for older schema versions (informational)",
            "orjson: loads + dataclass",
            _passes(
                _through_fastavro,
                [(bindings[e.event_type], plain_schemas[e.event_type], e.data) for e in avro],
            ),
            _passes(reference.decode, as_json),
        ),
        (
            "decode, bytes -> dict only (fastavro; informational)",
            "orjson.loads",
            _passes(_avro_body_to_dict, [(plain_schemas[e.event_type], e.data[10:]) for e in avro]),
            _passes(orjson.loads, [(data,) for _, data in as_json]),
        ),
        (
            "decode, bytes -> dict only (tidings' generated decoder; informational)",
            "orjson.loads",
            _passes(_generated_to_dict, [(decoders[e.event_type], e.data) for e in avro]),
            _passes(orjson.loads, [(data,) for _, data in as_json]),
        ),
    ]

    runs: dict[str, dict[str, list[float]]] = {case: {"tidings": [], "reference": []} for case, *_ in cases}
    for index in range(repeat):
        for case, _, ours_pass, theirs_pass in cases:
            sides = [("tidings", ours_pass), ("reference", theirs_pass)]
            for side, one_pass in sides if index % 2 == 0 else sides[::-1]:
                runs[case][side].append(events_per_second(one_pass, seconds))

    counts = {cls.__name__: sum(type(event) is cls for event in mix) for cls in MIX}
    common = {
        "events": EVENTS,
        "seed": SEED,
        "mix": counts,
        "seconds": seconds,
        "repeat": repeat,
        "threads": 1,
        "avro_bytes_per_event": round(sum(len(e.data) for e in avro) / EVENTS, 1),
        "json_bytes_per_event": round(sum(len(data) for _, data in as_json) / EVENTS, 1),
        "python": platform.python_version(),
        "fastavro": fastavro.__version__,
        "orjson": orjson.__version__,
    }
    rows = []
    for case, reference_name, _, _ in cases:
        ours = statistics.median(runs[case]["tidings"])
        theirs = statistics.median(runs[case]["reference"])
        params: dict[str, Any] = {**common, "runs": runs[case]}
        if case == "decode":
            params["target_events_per_s"] = TARGET_DECODE_EVENTS_PER_S
            params["target_ratio"] = round(1 / TARGET_DECODE_SLOWDOWN, 2)
        rows.append(
            Row(NAME, case, "throughput", "events/s", ours, reference_name, theirs, ours / theirs, params)
        )

    decode = next(row for row in rows if row.case == "decode")
    print(
        f"targets: Avro decode >= {TARGET_DECODE_EVENTS_PER_S:,} events/s on one core: "
        f"{decode.tidings:,.0f} ({'met' if decode.tidings >= TARGET_DECODE_EVENTS_PER_S else 'NOT met'}); "
        f"within {TARGET_DECODE_SLOWDOWN}x of orjson (ratio >= {1 / TARGET_DECODE_SLOWDOWN:.2f}): "
        f"{decode.ratio:.2f} ({'met' if decode.ratio >= 1 / TARGET_DECODE_SLOWDOWN else 'NOT met'})"
    )
    return rows
