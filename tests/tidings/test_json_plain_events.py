"""Events whose fields are all text, integers or booleans take a short path when read back;
anything unexpected in them still gets the general path's typed, located error."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tidings import JsonCodec, TypeRegistry
from tidings.errors import DeserializationError

registry = TypeRegistry(namespace="plain")


@registry.register
@dataclass(frozen=True)
class Deposited:
    account: str
    cents: int
    urgent: bool


@registry.register
@dataclass(frozen=True, kw_only=True)
class Named:
    account: str
    cents: int


@registry.register
@dataclass(frozen=True)
class Checked:
    cents: int

    def __post_init__(self) -> None:
        if self.cents < 0:
            raise ValueError("cents must not be negative")


@registry.register
@dataclass(frozen=True)
class Noted:
    key: str
    group: str = ""
    n: int = 0


@registry.register
@dataclass(frozen=True)
class Opened:
    account: str


@registry.register
@dataclass(frozen=True)
class Pinged:
    pass


codec = JsonCodec(registry)


def read(event_type: str, data: bytes) -> object:
    return codec.decode(f"plain.{event_type}", data, "json")


def test_plain_events_round_trip_positional_and_keyword_only() -> None:
    for event in (
        Deposited("a-1", 250, True),
        Named(account="a-2", cents=5),
        Noted("k", "g", 3),
        Opened("a-3"),
        Pinged(),
    ):
        encoded = codec.encode(event)
        assert codec.decode(encoded.event_type, encoded.data, encoded.schema_id) == event


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"account": "a", "cents": true, "urgent": false}', "Deposited.cents: expected int, found True"),
        (b'{"account": "a", "cents": 1.5, "urgent": false}', "Deposited.cents: expected int"),
        (b'{"account": 7, "cents": 1, "urgent": false}', "Deposited.account: expected str"),
        (b'{"account": "a", "cents": 1, "urgent": 0}', "Deposited.urgent: expected bool"),
        (b'{"account": "a", "cents": 1, "other": false}', "unexpected field 'other'"),
        (b'{"account": "a", "cents": 1}', "missing field 'urgent'"),
        (b'{"account": "a", "cents": 1, "urgent": null}', "Deposited.urgent: expected bool"),
    ],
)
def test_anything_unexpected_gets_the_general_paths_error(data: bytes, message: str) -> None:
    with pytest.raises(DeserializationError, match=message):
        read("Deposited", data)


def test_a_class_that_rejects_the_stored_values_says_so() -> None:
    with pytest.raises(
        DeserializationError, match="Checked rejected the stored values: cents must not be negative"
    ):
        read("Checked", b'{"cents": -1}')


def test_defaulted_fields_missing_from_the_stored_object_take_their_defaults() -> None:
    assert read("Noted", b'{"key": "k"}') == Noted("k")
    assert read("Noted", b'{"key": "k", "n": 2}') == Noted("k", n=2)


@pytest.mark.parametrize(
    ("event_type", "data", "message"),
    [
        ("Noted", b'{"key": "k", "group": 1, "n": 2}', "Noted.group: expected str"),
        ("Noted", b'{"key": "k", "grop": "g", "n": 2}', "unexpected field 'grop'"),
        ("Opened", b'{"account": 1}', "Opened.account: expected str"),
        ("Opened", b'{"acount": "a"}', "unexpected field 'acount'"),
        ("Pinged", b'{"x": 1}', "unexpected field 'x'"),
    ],
)
def test_one_field_and_defaulted_classes_say_what_is_wrong(
    event_type: str, data: bytes, message: str
) -> None:
    with pytest.raises(DeserializationError, match=message):
        read(event_type, data)
