"""What a worker reads back of a relayed message: properties over any event and any damaged message."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventstore.records import RecordedEvent
from tests.tidings.strategies import aware_datetimes
from tests.workers.worker_support import kafka_headers
from workers.delivery import EventMetadata, delivery_of

recorded_events = st.builds(
    RecordedEvent,
    event_id=st.uuids(),
    event_number=st.integers(min_value=1, max_value=2**63 - 1),
    stream_id=st.text(min_size=1).filter(lambda s: "\x00" not in s),
    stream_version=st.integers(min_value=1, max_value=2**63 - 1),
    event_type=st.text(min_size=1).filter(lambda s: "\x00" not in s),
    data=st.binary(),
    metadata=st.sampled_from([b"{}", b'{"user": "ada"}', b'{"traceparent": "00-ab-cd-01"}']),
    schema_id=st.text().filter(lambda s: "\x00" not in s),
    causation_id=st.none() | st.uuids(),
    correlation_id=st.none() | st.uuids(),
    created_at=aware_datetimes.map(lambda at: at.astimezone(UTC)),
)


@given(recorded_events, st.integers(min_value=0, max_value=2**31), st.integers(min_value=0))
def test_the_recorded_event_the_relay_sent_is_the_one_the_worker_reads(
    recorded: RecordedEvent, partition: int, offset: int
) -> None:
    delivery = delivery_of(
        "t",
        partition,
        offset,
        recorded.stream_id.encode(),
        recorded.data,
        kafka_headers(recorded),
    )
    assert delivery.error == ""
    assert delivery.recorded == recorded
    assert delivery.event_number == recorded.event_number
    assert (delivery.topic, delivery.partition, delivery.offset) == ("t", partition, offset)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                [
                    "event_id",
                    "event_number",
                    "stream_id",
                    "stream_version",
                    "created_at",
                    "event_type",
                    "causation_id",
                    "x",
                ]
            ),
            st.binary(),
        )
    ),
    st.none() | st.binary(),
    st.none() | st.binary(),
)
def test_any_damaged_message_comes_back_as_unreadable_with_a_reason_never_as_an_exception(
    pairs: list[tuple[str, bytes]], key: bytes | None, value: bytes | None
) -> None:
    delivery = delivery_of("t", 0, 5, key, value, pairs)
    assert (delivery.recorded is None) == bool(delivery.error)
    assert delivery.key == (key or b"")
    assert delivery.value == (value or b"")
    assert list(delivery.headers) == pairs, "the message is kept whole, for parking"


def test_a_message_without_the_relays_headers_names_what_is_missing() -> None:
    delivery = delivery_of("t", 0, 0, b"k", b"v", [("event_id", str(uuid.uuid4()).encode())])
    assert delivery.recorded is None
    assert delivery.error.startswith("missing headers ['event_type', 'event_number'")


@pytest.mark.parametrize(
    ("header", "damaged"),
    [
        ("event_number", b"three"),
        ("stream_version", b"1.5"),
        ("event_id", b"not-a-uuid"),
        ("event_id", b"0123456789abcdef0123456789abcdeg"),
        ("created_at", b"yesterday"),
        ("causation_id", b"zz"),
        ("correlation_id", b"\xff"),
    ],
)
def test_a_malformed_header_value_is_reported_on_arrival(header: str, damaged: bytes) -> None:
    recorded = RecordedEvent(
        uuid.uuid4(), 3, "s", 1, "T", b"", b"{}", "", uuid.uuid4(), uuid.uuid4(), datetime.now(UTC)
    )
    pairs = [(n, damaged if n == header else v) for n, v in kafka_headers(recorded)]
    delivery = delivery_of("t", 0, 0, b"s", b"", pairs)
    assert delivery.recorded is None
    assert not delivery.readable
    assert "malformed headers" in delivery.error


def test_ids_and_times_are_made_when_read_and_equal_the_recorded_ones() -> None:
    recorded = RecordedEvent(
        uuid.uuid4(), 3, "s", 1, "T", b"{}", b"{}", "json", None, uuid.uuid4(), datetime.now(UTC)
    )
    delivery = delivery_of("t", 2, 9, b"s", b"{}", kafka_headers(recorded))
    metadata = EventMetadata(delivery, "h", {}, None)
    assert (metadata.event_id, metadata.causation_id, metadata.correlation_id) == (
        recorded.event_id,
        None,
        recorded.correlation_id,
    )
    assert metadata.created_at == recorded.created_at
    assert (metadata.topic, metadata.partition, metadata.offset) == ("t", 2, 9)
    assert (metadata.stream_id, metadata.stream_version, metadata.event_type) == ("s", 1, "T")
