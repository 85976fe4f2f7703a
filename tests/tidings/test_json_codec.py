"""JsonCodec: the JSON written for each supported type, the round trip, and each way it refuses input."""

from __future__ import annotations

import dataclasses
import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Optional

import pytest

from tidings import (
    CodecError,
    DeserializationError,
    JsonCodec,
    SerializationError,
    TypeRegistry,
    UnknownEventType,
)

from .events import AccountOpened, Address, Currency, Owner, Priority, registry

OPENED_AT = datetime(2024, 3, 1, 9, 30, 15, 250, tzinfo=timezone(timedelta(hours=1)))
ID = uuid.UUID("6f1c1f0e-8d4e-4c1b-9a57-0c2f7f7e6a01")
OWNER = Owner("Ada", Address("1 Analytical St", "London"), date(1815, 12, 10))

# (field type, value, the JSON it is written as): the mapping table of docs/serialization.md.
MAPPING: list[tuple[Any, object, object]] = [
    (str, "héllo ✓", "héllo ✓"),
    (int, 2**70, 2**70),
    (float, 1.5, 1.5),
    (float, 3, 3.0),
    (bool, True, True),
    (None, None, None),
    (int | None, None, None),
    (int | None, 7, 7),
    (Optional[str], "x", "x"),  # noqa: UP045 - the old spelling must work too
    (list[int], [1, 2, 3], [1, 2, 3]),
    (tuple[str, ...], ("a", "b"), ["a", "b"]),
    (tuple[int, str], (1, "a"), [1, "a"]),
    (dict[str, int], {"a": 1, "b": 2}, {"a": 1, "b": 2}),
    (dict[str, list[Decimal]], {"k": [Decimal("1.10")]}, {"k": ["1.10"]}),
    (uuid.UUID, ID, str(ID)),
    (datetime, OPENED_AT, "2024-03-01T09:30:15.000250+01:00"),
    (date, date(2024, 2, 29), "2024-02-29"),
    (Decimal, Decimal("12.30"), "12.30"),
    (Decimal, Decimal("-1E+3"), "-1E+3"),
    (Currency, Currency.EUR, "EUR"),
    (Priority, Priority.HIGH, 2),
    (Address, Address("Main St", "Oslo"), {"street": "Main St", "city": "Oslo", "postcode": None}),
    (Owner | None, None, None),
]


def _holder(hint: Any) -> type:
    """A one-field event class whose field has type ``hint``."""
    return dataclasses.make_dataclass("Holder", [("value", hint)], frozen=True)


def _codec_for(cls: type) -> JsonCodec:
    registry = TypeRegistry()
    registry.register(cls, name="Holder")
    return JsonCodec(registry)


@pytest.mark.parametrize(("hint", "value", "written"), MAPPING, ids=[repr(v) for _, v, _ in MAPPING])
def test_each_supported_type_is_written_as_the_table_says_and_reads_back(
    hint: Any, value: object, written: object
) -> None:
    cls = _holder(hint)
    codec = _codec_for(cls)
    encoded = codec.encode(cls(value))
    assert json.loads(encoded.data) == {"value": written}
    decoded = codec.decode(encoded.event_type, encoded.data, encoded.schema_id)
    assert decoded == cls(value)
    assert type(decoded.value) is type(value) or (isinstance(value, int) and hint is float)  # type: ignore[attr-defined]


def test_an_event_encodes_to_compact_utf8_json_under_its_type_name() -> None:
    codec = JsonCodec(registry())
    event = AccountOpened(ID, OWNER, OPENED_AT, Currency.EUR, Decimal("100.00"), ("vip",))
    encoded = codec.encode(event)
    assert encoded.event_type == "AccountOpened"
    assert encoded.schema_id == "json"
    assert b", " not in encoded.data
    assert b": " not in encoded.data
    assert b"Analytical" in encoded.data
    assert codec.decode("AccountOpened", encoded.data, "json") == event


def test_fields_with_defaults_may_be_absent_from_stored_data() -> None:
    codec = JsonCodec(registry())
    stored = json.loads(codec.encode(AccountOpened(ID, OWNER, OPENED_AT, Currency.USD)).data)
    del stored["overdraft"], stored["tags"]
    event = codec.decode("AccountOpened", json.dumps(stored).encode(), "json")
    assert event == AccountOpened(ID, OWNER, OPENED_AT, Currency.USD)


def test_an_offset_finer_than_minutes_is_written_as_the_same_instant_in_utc() -> None:
    cls = _holder(datetime)
    codec = _codec_for(cls)
    local_mean_time = datetime(1890, 6, 1, 12, 0, tzinfo=timezone(timedelta(minutes=19, seconds=32)))
    encoded = codec.encode(cls(local_mean_time))
    assert json.loads(encoded.data) == {"value": "1890-06-01T11:40:28+00:00"}
    assert codec.decode("Holder", encoded.data, "json") == cls(local_mean_time)
    with pytest.raises(SerializationError, match="outside years 1 to 9999"):
        codec.encode(cls(datetime(1, 1, 1, tzinfo=timezone(timedelta(seconds=1)))))


def test_metadata_round_trips_as_plain_json() -> None:
    codec = JsonCodec(TypeRegistry())
    metadata = {"user": "u-1", "attempt": 2, "tags": ("a", "b"), "trace": {"sampled": True, "ratio": 0.5}}
    data = codec.encode_metadata(metadata)
    assert codec.decode_metadata(data) == {**metadata, "tags": ["a", "b"]}
    assert codec.decode_metadata(codec.encode_metadata({})) == {}


# Encoding refusals -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Customer:
    address: tuple[str, ...]


@dataclass(frozen=True)
class OpenAccount:
    owner: Customer


@dataclass(frozen=True)
class Schedule:
    at: list[datetime]


def _encode_error(event: object, *classes: type) -> SerializationError:
    reg = TypeRegistry()
    for cls in classes or (type(event),):
        reg.register(cls)
    with pytest.raises(SerializationError) as caught:
        JsonCodec(reg).encode(event)
    assert isinstance(caught.value, CodecError)
    return caught.value


def test_a_set_is_refused_with_the_path_to_it() -> None:
    error = _encode_error(OpenAccount(Customer({"1 Main St"})))  # type: ignore[arg-type]
    assert str(error).startswith("OpenAccount.owner.address: set is not serialisable")
    assert "tuple or a list" in str(error)
    assert error.where == "OpenAccount.owner.address"


def test_a_naive_datetime_is_refused_with_how_to_make_it_aware() -> None:
    aware = datetime(2024, 1, 1, tzinfo=UTC)
    error = _encode_error(Schedule([aware, aware, datetime(2024, 1, 1)]))
    assert error.where == "Schedule.at[2]"
    assert "naive datetime" in str(error)
    assert "timezone.utc" in str(error)


@pytest.mark.parametrize(
    ("hint", "value", "message"),
    [
        (int, "12", "expected int, got str"),
        (int, True, "expected int, got bool"),
        (float, float("nan"), "JSON has no NaN"),
        (float, 10**400, "too large for a float"),
        (Decimal, 1, "expected Decimal, got int"),
        (date, datetime(2024, 1, 1, tzinfo=UTC), "expected date, got datetime"),
        (list[int], (1, 2), "expected list[int], got tuple"),
        (tuple[int, int], (1, 2, 3), "expected 2 items"),
        (dict[str, int], {1: 1}, "dict keys must be str"),
        (Currency, "EUR", "expected Currency, got str"),
        (str, b"raw", "bytes is not serialisable"),
        (str, "\ud800", "lone surrogate"),
        (Address, Owner("a", Address("b", "c"), date(2000, 1, 1)), "expected Address, got Owner"),
    ],
)
def test_values_that_do_not_match_their_field_type_are_refused(
    hint: Any, value: object, message: str
) -> None:
    cls = _holder(hint)
    with pytest.raises(SerializationError, match=re.escape(message)):
        _codec_for(cls).encode(cls(value))


@pytest.mark.parametrize("hint", [object, Any, int | str, list, dict[int, str], frozenset[int]])
def test_field_types_json_cannot_carry_back_are_refused_when_writing(hint: Any) -> None:
    cls = _holder(hint)
    with pytest.raises(SerializationError, match="not supported by JsonCodec"):
        _codec_for(cls).encode(cls(1 if hint is not list else []))


def test_an_unregistered_event_is_refused() -> None:
    with pytest.raises(UnknownEventType, match="register"):
        JsonCodec(TypeRegistry()).encode(Address("a", "b"))


def test_metadata_must_be_plain_json() -> None:
    with pytest.raises(SerializationError, match=r"metadata\['user'\]: UUID is not serialisable"):
        JsonCodec(TypeRegistry()).encode_metadata({"user": ID})


# Decoding refusals -------------------------------------------------------------------------------------


@pytest.fixture
def stored() -> dict[str, Any]:
    """A valid stored AccountOpened document, for tests to damage."""
    return json.loads(JsonCodec(registry()).encode(AccountOpened(ID, OWNER, OPENED_AT, Currency.JPY)).data)  # type: ignore[no-any-return]


def _decode_error(document: object, event_type: str = "AccountOpened") -> DeserializationError:
    data = document if isinstance(document, bytes) else json.dumps(document).encode()
    with pytest.raises(DeserializationError) as caught:
        JsonCodec(registry()).decode(event_type, data, "json")
    assert str(caught.value).startswith(event_type)
    return caught.value


def test_truncated_bytes_are_reported_with_the_event_type() -> None:
    data = JsonCodec(registry()).encode(AccountOpened(ID, OWNER, OPENED_AT, Currency.JPY)).data
    error = _decode_error(data[: len(data) // 2])
    assert "not UTF-8 JSON" in str(error)


def test_bytes_that_are_not_utf8_are_reported() -> None:
    assert "not UTF-8 JSON" in str(_decode_error(b'{"street": "\xff"}'))


def test_a_document_that_is_not_an_object_is_reported() -> None:
    assert "expected a JSON object, found list" in str(_decode_error([1, 2]))


def test_a_missing_required_field_is_reported_with_what_to_do(stored: dict[str, Any]) -> None:
    del stored["owner"]["born"]
    error = _decode_error(stored)
    assert error.where == "AccountOpened.owner"
    assert "missing field 'born'" in str(error)
    assert "upcaster" in str(error)


def test_an_unexpected_field_is_reported(stored: dict[str, Any]) -> None:
    stored["colour"] = "blue"
    assert "unexpected field 'colour'" in str(_decode_error(stored))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("account_id", "not-a-uuid", "'not-a-uuid' is not a valid UUID"),
        ("opened_at", "2024-03-01T09:30:00", "has no UTC offset"),
        ("opened_at", 12, "expected a string, found 12"),
        ("currency", "GBP", "'GBP' is not a value of Currency"),
        ("overdraft", "lots", "'lots' is not a valid Decimal"),
        ("tags", "vip", "expected a list, found 'vip'"),
        ("owner", [1] * 100, r"expected an object, found \[1, 1, .*\.\.\.$"),
    ],
)
def test_stored_values_of_the_wrong_kind_are_reported(
    stored: dict[str, Any], field: str, value: object, message: str
) -> None:
    stored[field] = value
    error = _decode_error(stored)
    assert error.where == f"AccountOpened.{field}"
    assert re.search(message, error.problem), error.problem


def test_nan_in_stored_json_is_refused(stored: dict[str, Any]) -> None:
    data = json.dumps(stored).replace('"JPY"', "NaN").encode()
    assert "not UTF-8 JSON" in str(_decode_error(data))


def test_another_codecs_schema_id_is_refused() -> None:
    with pytest.raises(DeserializationError, match="schema id 'avro:3' is not 'json'"):
        JsonCodec(registry()).decode("AccountOpened", b"{}", "avro:3")


def test_an_unknown_type_name_is_refused_with_how_to_fix_it() -> None:
    with pytest.raises(UnknownEventType, match=r"'AccountClosed'.*register.*upcaster"):
        JsonCodec(registry()).decode("AccountClosed", b"{}", "json")


def test_metadata_that_is_not_a_json_object_is_refused() -> None:
    with pytest.raises(DeserializationError, match=r"^metadata: expected a JSON object"):
        JsonCodec(TypeRegistry()).decode_metadata(b"[]")
