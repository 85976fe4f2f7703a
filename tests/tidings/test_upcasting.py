"""Upcasting: stored documents of old shapes are rewritten, on read, into today's classes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from tidings import (
    MAX_UPCAST_STEPS,
    DeserializationError,
    JsonCodec,
    RenameEventType,
    TypeRegistry,
    UnknownEventType,
    Upcasters,
    UpcastLoop,
)


@dataclass(frozen=True)
class FundsDeposited:
    """Stored as "MoneyDeposited" until renamed; ``currency`` came later, without a default."""

    account: str
    amount: int
    currency: str


class AddCurrency:
    """Fills in the currency that old deposits lack: they were all in euros, unless metadata says so."""

    event_type = "FundsDeposited"

    def upcast(self, data: dict[str, Any], metadata: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        data.setdefault("currency", metadata.get("currency", "EUR"))
        return self.event_type, data


@dataclass(frozen=True)
class Counter:
    """A faulty upcaster: it changes the data every time, so it never settles."""

    event_type: str = "FundsDeposited"

    def upcast(self, data: dict[str, Any], metadata: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return self.event_type, {**data, "n": data.get("n", 0) + 1}


OLD = json.dumps({"account": "a-1", "amount": 5}).encode()


def _read(
    upcasters: Upcasters, event_type: str, data: bytes, metadata: dict[str, Any] | None = None
) -> object:
    registry = TypeRegistry()
    registry.register(FundsDeposited)
    codec = JsonCodec(registry)
    new_type, document = upcasters.upcast(event_type, codec.parse(event_type, data, "json"), metadata or {})
    return codec.build(new_type, document)


def test_without_upcasters_old_documents_cannot_be_read() -> None:
    with pytest.raises(UnknownEventType, match="'MoneyDeposited'"):
        _read(Upcasters(), "MoneyDeposited", OLD)
    with pytest.raises(DeserializationError, match="missing field 'currency'"):
        _read(Upcasters(), "FundsDeposited", OLD)


def test_an_upcaster_renames_a_stored_type() -> None:
    data = json.dumps({"account": "a-1", "amount": 5, "currency": "USD"}).encode()
    event = _read(Upcasters([RenameEventType("MoneyDeposited", "FundsDeposited")]), "MoneyDeposited", data)
    assert event == FundsDeposited("a-1", 5, "USD")


def test_an_upcaster_adds_a_field_with_a_default_then_stops_applying() -> None:
    upcasters = Upcasters([AddCurrency()])
    assert _read(upcasters, "FundsDeposited", OLD) == FundsDeposited("a-1", 5, "EUR")
    recent = json.dumps({"account": "a-1", "amount": 5, "currency": "JPY"}).encode()
    assert _read(upcasters, "FundsDeposited", recent) == FundsDeposited("a-1", 5, "JPY")


def test_upcasters_chain_across_a_rename_and_may_read_metadata() -> None:
    upcasters = Upcasters([AddCurrency(), RenameEventType("MoneyDeposited", "FundsDeposited")])
    event = _read(upcasters, "MoneyDeposited", OLD, {"currency": "CHF"})
    assert event == FundsDeposited("a-1", 5, "CHF")


def test_upcasters_for_unrelated_types_leave_a_document_alone() -> None:
    upcasters = Upcasters([RenameEventType("Other", "Elsewhere")])
    assert upcasters.upcast("FundsDeposited", {"a": 1}, {}) == ("FundsDeposited", {"a": 1})


def test_a_chain_of_exactly_the_maximum_number_of_steps_settles() -> None:
    renames = [RenameEventType(f"T{i}", f"T{i + 1}") for i in range(MAX_UPCAST_STEPS)]
    assert Upcasters(renames).upcast("T0", {}, {}) == (f"T{MAX_UPCAST_STEPS}", {})
    longer = [*renames, RenameEventType(f"T{MAX_UPCAST_STEPS}", "beyond")]
    with pytest.raises(UpcastLoop, match=f"after {MAX_UPCAST_STEPS} steps"):
        Upcasters(longer).upcast("T0", {}, {})


def test_two_upcasters_renaming_each_other_are_a_loop() -> None:
    upcasters = Upcasters([RenameEventType("A", "B"), RenameEventType("B", "A")])
    with pytest.raises(UpcastLoop, match="A -> B -> A -> B") as caught:
        upcasters.upcast("A", {}, {})
    assert caught.value.event_type == "A"
    assert "return its input unchanged" in str(caught.value)


def test_an_upcaster_that_never_settles_is_a_loop() -> None:
    with pytest.raises(UpcastLoop, match=r"\(types: FundsDeposited\)"):
        Upcasters([Counter()]).upcast("FundsDeposited", {}, {})


def test_a_failing_upcaster_is_reported_by_name() -> None:
    class Broken:
        event_type = "FundsDeposited"

        def upcast(self, data: dict[str, Any], metadata: dict[str, Any]) -> tuple[str, dict[str, Any]]:
            return self.event_type, {"total": data["missing"]}

    with pytest.raises(DeserializationError, match=r"upcaster .*Broken failed.*KeyError") as caught:
        Upcasters([Broken()]).upcast("FundsDeposited", {}, {})
    assert isinstance(caught.value.__cause__, KeyError)


def test_an_upcaster_returning_something_else_than_a_pair_is_reported() -> None:
    class Sloppy:
        event_type = "FundsDeposited"

        def upcast(self, data: dict[str, Any], metadata: dict[str, Any]) -> tuple[str, dict[str, Any]]:
            return data  # type: ignore[return-value]

    with pytest.raises(DeserializationError, match=r"return a \(type_name, data_dict\) pair"):
        Upcasters([Sloppy()]).upcast("FundsDeposited", {"a": 1}, {})


def test_an_upcaster_must_name_the_type_it_handles() -> None:
    with pytest.raises(ValueError, match="empty event_type"):
        Upcasters([RenameEventType("", "X")])
