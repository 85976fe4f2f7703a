"""What a worker reads back of a relayed message: properties over any event and any damaged message."""

from __future__ import annotations

import uuid
from datetime import UTC

from hypothesis import given
from hypothesis import strategies as st

from eventstore.records import RecordedEvent
from eventstore.relay import OutgoingEvent, headers
from tests.tidings.strategies import aware_datetimes
from workers.delivery import delivery_of


def _as_kafka_headers(pairs: list[tuple[str, str | bytes]]) -> list[tuple[str, bytes]]:
    # The client encodes text header values to UTF-8; a consumer gets bytes back.
    return [(name, value.encode() if isinstance(value, str) else value) for name, value in pairs]


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
    outgoing = OutgoingEvent.of(recorded)
    delivery = delivery_of(
        "t",
        partition,
        offset,
        recorded.stream_id.encode(),
        recorded.data,
        _as_kafka_headers(headers(outgoing)),
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


def test_a_malformed_header_value_is_reported() -> None:
    good = headers(
        OutgoingEvent.of(
            RecordedEvent(
                uuid.uuid4(),
                3,
                "s",
                1,
                "T",
                b"",
                b"{}",
                "",
                None,
                None,
                __import__("datetime").datetime.now(UTC),
            )
        )
    )
    damaged = [(n, b"three" if n == "event_number" else v) for n, v in _as_kafka_headers(good)]
    delivery = delivery_of("t", 0, 0, b"s", b"", damaged)
    assert delivery.recorded is None
    assert "malformed headers" in delivery.error
