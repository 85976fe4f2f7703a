"""The codec boundary on the real store: events go in as objects and come back as objects, old shapes
are upcast on read (type included), and bad input gets a typed error that names where it lies."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from eventstore import ANY, NO_STREAM, EventData, PostgresEventStore
from tidings import (
    EventMapper,
    JsonCodec,
    RenameEventType,
    SerializationError,
    TypeRegistry,
    UnknownEventType,
)


@dataclass(frozen=True)
class FundsDeposited:
    account: str
    amount: Decimal
    at: datetime
    reference: uuid.UUID | None = None


@dataclass(frozen=True)
class CustomerRenamed:
    customer: str
    full_name: str


@dataclass(frozen=True)
class Tagged:
    tags: set[str]  # sets are not serialisable: a typed error, before anything is written


class SplitName:
    """Version 1 stored first and last names; version 2 has one field."""

    event_type = "CustomerRenamed"

    def upcast(self, data: dict[str, Any], metadata: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        if "full_name" in data:
            return self.event_type, data
        first, last = data.pop("first"), data.pop("last")
        return self.event_type, {**data, "full_name": f"{first} {last}"}


@pytest.fixture
def mapper() -> EventMapper:
    registry = TypeRegistry()
    registry.register(FundsDeposited)
    registry.register(CustomerRenamed)
    registry.register(Tagged)
    return EventMapper(
        JsonCodec(registry), upcasters=[RenameEventType("MoneyIn", "FundsDeposited"), SplitName()]
    )


def test_events_round_trip_through_the_store(event_store: PostgresEventStore, mapper: EventMapper) -> None:
    event = FundsDeposited("acc-1", Decimal("10.50"), datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), uuid.uuid4())
    correlation = uuid.uuid4()
    data = mapper.to_event_data(event, metadata={"user": "u-7"}, correlation_id=correlation)
    event_store.append_to_stream("acc-1", NO_STREAM, [data])
    (recorded,) = event_store.read_stream_forward("acc-1")
    decoded, metadata = mapper.from_recorded(recorded)
    assert decoded == event
    assert metadata == {"user": "u-7"}
    assert recorded.correlation_id == correlation
    assert recorded.schema_id == "json"


def test_old_shapes_and_old_type_names_are_upcast_on_read(
    event_store: PostgresEventStore, mapper: EventMapper
) -> None:
    # Written long ago, by earlier releases: a type since renamed, and a since-merged pair of fields.
    event_store.append_to_stream(
        "history",
        NO_STREAM,
        [
            EventData(
                "MoneyIn",
                b'{"account": "acc-1", "amount": "5", "at": "2020-01-01T00:00:00+00:00"}',
                schema_id="json",
            ),
            EventData(
                "CustomerRenamed",
                b'{"customer": "c-1", "first": "Ada", "last": "Lovelace"}',
                schema_id="json",
            ),
        ],
    )
    event_store.sequencer.catch_up()
    decoded = [mapper.from_recorded(r)[0] for r in event_store.read_all_forward()]
    assert decoded == [
        FundsDeposited("acc-1", Decimal("5"), datetime(2020, 1, 1, tzinfo=UTC)),
        CustomerRenamed("c-1", "Ada Lovelace"),
    ]


def test_a_non_serialisable_event_is_refused_before_anything_is_written(
    event_store: PostgresEventStore, mapper: EventMapper
) -> None:
    good = mapper.to_event_data(CustomerRenamed("c-1", "Ada"))
    with pytest.raises(SerializationError, match=r"Tagged\.tags: set is not serialisable"):
        event_store.append_to_stream("c-1", ANY, [good, mapper.to_event_data(Tagged({"x"}))])
    assert event_store.list_streams() == []


def test_an_unknown_type_on_read_names_the_stream_and_number(
    event_store: PostgresEventStore, mapper: EventMapper
) -> None:
    event_store.append_to_stream(
        "mystery", NO_STREAM, [EventData("NeverRegistered", b"{}", schema_id="json")]
    )
    event_store.sequencer.catch_up()
    (recorded,) = event_store.read_all_forward()
    with pytest.raises(UnknownEventType) as caught:
        mapper.from_recorded(recorded)
    assert "NeverRegistered" in str(caught.value)
    assert "mystery" in str(caught.value)
    assert "event number 1" in str(caught.value)
