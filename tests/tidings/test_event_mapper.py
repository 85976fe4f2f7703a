"""EventMapper: events to EventData for appending, and hand-made RecordedEvents back to events."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given

from eventstore.records import EventData, RecordedEvent
from tidings import (
    CodecError,
    DeserializationError,
    Encoded,
    EventMapper,
    JsonCodec,
    RenameEventType,
    UnknownEventType,
)

from .events import AccountOpened, Address, Currency, Everything, Owner, registry
from .strategies import everything, metadata

EVENT = AccountOpened(
    uuid.UUID(int=1),
    Owner("Grace", Address("Navy Yard", "Arlington", "22202"), date(1906, 12, 9)),
    datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC),
    Currency.USD,
    Decimal("250.00"),
)


def _recorded(
    data: EventData, *, stream_id: str = "account-1", event_number: int | None = 42
) -> RecordedEvent:
    """What the store would hand back for ``data`` at a given place."""
    return RecordedEvent(
        event_id=data.event_id,
        event_number=event_number,
        stream_id=stream_id,
        stream_version=3,
        event_type=data.event_type,
        data=data.data,
        metadata=data.metadata,
        schema_id=data.schema_id,
        causation_id=data.causation_id,
        correlation_id=data.correlation_id,
        created_at=datetime(2024, 5, 6, tzinfo=UTC),
    )


def test_event_data_carries_the_encoded_event_metadata_and_ids() -> None:
    mapper = EventMapper(JsonCodec(registry()))
    ids = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    data = mapper.to_event_data(
        EVENT, metadata={"user": "u-7"}, event_id=ids[0], causation_id=ids[1], correlation_id=ids[2]
    )
    assert isinstance(data, EventData)
    assert (data.event_type, data.schema_id) == ("AccountOpened", "json")
    assert json.loads(data.data)["currency"] == "USD"
    assert json.loads(data.metadata) == {"user": "u-7"}
    assert (data.event_id, data.causation_id, data.correlation_id) == ids


def test_event_data_gets_a_fresh_event_id_and_empty_metadata_by_default() -> None:
    mapper = EventMapper(JsonCodec(registry()))
    first, second = mapper.to_event_data(EVENT), mapper.to_event_data(EVENT)
    assert first.event_id != second.event_id
    assert first.metadata == b"{}"
    assert first.causation_id is None
    assert first.correlation_id is None


def test_a_recorded_event_reads_back_as_the_event_and_its_metadata() -> None:
    mapper = EventMapper(JsonCodec(registry()))
    recorded = _recorded(mapper.to_event_data(EVENT, metadata={"user": "u-7", "attempt": 1}))
    event, meta = mapper.from_recorded(recorded)
    assert event == EVENT
    assert meta == {"user": "u-7", "attempt": 1}


@given(everything, metadata)
def test_any_event_and_metadata_survive_the_trip_through_a_record(
    event: Everything, values: dict[str, Any]
) -> None:
    mapper = EventMapper(JsonCodec(registry()))
    assert mapper.from_recorded(_recorded(mapper.to_event_data(event, metadata=values))) == (event, values)


def test_upcasters_run_between_the_stored_bytes_and_the_class() -> None:
    mapper = EventMapper(JsonCodec(registry()), [RenameEventType("AccountCreated", "AccountOpened")])
    stored = mapper.to_event_data(EVENT, metadata={"user": "u-1"})
    renamed = _recorded(EventData("AccountCreated", stored.data, stored.metadata, "json", stored.event_id))
    assert mapper.from_recorded(renamed) == (EVENT, {"user": "u-1"})


def test_a_decoding_error_says_which_stream_and_event_number() -> None:
    mapper = EventMapper(JsonCodec(registry()))
    good = mapper.to_event_data(EVENT)
    damaged = EventData(good.event_type, good.data[:-5], good.metadata, good.schema_id, good.event_id)
    with pytest.raises(DeserializationError) as caught:
        mapper.from_recorded(_recorded(damaged, stream_id="account-9", event_number=1234))
    error = caught.value
    assert (error.stream_id, error.stream_version, error.event_number) == ("account-9", 3, 1234)
    assert str(error).startswith("AccountOpened: the stored bytes are not UTF-8 JSON")
    assert str(error).endswith("[stream 'account-9' version 3, event number 1234]")


def test_unknown_types_and_bad_metadata_are_located_too() -> None:
    mapper = EventMapper(JsonCodec(registry()))
    good = mapper.to_event_data(EVENT)
    unknown = EventData("AccountClosed", good.data, good.metadata, good.schema_id)
    with pytest.raises(UnknownEventType, match=r"\[stream 'account-1' version 3, not yet numbered\]$"):
        mapper.from_recorded(_recorded(unknown, event_number=None))
    bad_metadata = EventData(good.event_type, good.data, b"nope", good.schema_id)
    with pytest.raises(
        DeserializationError, match=r"^metadata: .*\[stream 'account-1' version 3, event number 42\]$"
    ):
        mapper.from_recorded(_recorded(bad_metadata))


def test_encoding_errors_propagate_as_codec_errors() -> None:
    mapper = EventMapper(JsonCodec(registry()))
    with pytest.raises(CodecError, match=r"^metadata\['at'\]"):
        mapper.to_event_data(EVENT, metadata={"at": datetime.now(UTC)})


class OpaqueCodec:
    """A codec with no parse/build steps: it stores repr() of an event and knows one type."""

    def encode(self, event: object) -> Encoded:
        return Encoded("opaque", repr(event).encode(), "repr")

    def decode(self, event_type: str, data: bytes, schema_id: str) -> object:
        return data.decode()

    def encode_metadata(self, metadata: Mapping[str, Any]) -> bytes:
        return json.dumps(dict(metadata)).encode()

    def decode_metadata(self, data: bytes) -> dict[str, Any]:
        return dict(json.loads(data))


def test_any_codec_works_without_upcasters() -> None:
    mapper = EventMapper(OpaqueCodec())
    data = mapper.to_event_data(42, metadata={"k": 1})
    assert (data.event_type, data.schema_id) == ("opaque", "repr")
    assert mapper.from_recorded(_recorded(data)) == ("42", {"k": 1})


def test_upcasters_need_a_codec_with_parse_and_build_steps() -> None:
    with pytest.raises(TypeError, match=r"cannot be upcast.*JsonCodec"):
        EventMapper(OpaqueCodec(), [RenameEventType("a", "b")])
