"""Appends of many events take the COPY path: the same semantics as small appends, checked here."""

from __future__ import annotations

import uuid

import pytest

from eventstore import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    DuplicateEvent,
    EventData,
    PostgresEventStore,
    StreamDeleted,
    StreamExists,
    StreamNotFound,
    WrongExpectedVersion,
)
from eventstore.postgres.store import COPY_AT

MANY = COPY_AT + 5


def _many(tag: str, count: int = MANY) -> list[EventData]:
    return [
        EventData(f"E{i}", f"{tag}-{i}".encode(), b'{"k": "v"}', "json", causation_id=uuid.uuid4())
        for i in range(count)
    ]


def test_large_appends_follow_every_expectation(event_store: PostgresEventStore) -> None:
    store = event_store
    assert store.append_to_stream("s", NO_STREAM, _many("a")) == MANY
    assert store.append_to_stream("s", MANY, _many("b")) == 2 * MANY
    assert store.append_to_stream("s", STREAM_EXISTS, _many("c")) == 3 * MANY
    assert store.append_to_stream("s", ANY, _many("d")) == 4 * MANY
    with pytest.raises(WrongExpectedVersion) as wrong:
        store.append_to_stream("s", MANY, _many("x"))
    assert wrong.value.actual == 4 * MANY
    with pytest.raises(StreamExists):
        store.append_to_stream("s", NO_STREAM, _many("x"))
    with pytest.raises(StreamNotFound):
        store.append_to_stream("none", STREAM_EXISTS, _many("x"))
    recorded = list(store.stream_forward("s", batch_size=7))
    assert [e.stream_version for e in recorded] == list(range(1, 4 * MANY + 1))
    assert recorded[0].data == b"a-0"
    assert recorded[-1].data == f"d-{MANY - 1}".encode()
    assert all(e.metadata == b'{"k": "v"}' and e.causation_id is not None for e in recorded)


def test_a_large_append_with_a_duplicate_writes_nothing(event_store: PostgresEventStore) -> None:
    events = _many("a")
    event_store.append_to_stream("s", NO_STREAM, events[:1])
    with pytest.raises(DuplicateEvent):
        event_store.append_to_stream("s", 1, [*_many("b"), events[0]])
    assert event_store.stream_info("s").stream_version == 1
    assert len(event_store.read_stream_forward("s")) == 1


def test_a_large_append_to_a_deleted_stream_is_refused(event_store: PostgresEventStore) -> None:
    event_store.append_to_stream("s", NO_STREAM, _many("a"))
    event_store.delete_stream("s")
    with pytest.raises(StreamDeleted):
        event_store.append_to_stream("s", ANY, _many("b"))


def test_a_large_append_joins_the_callers_transaction(event_store: PostgresEventStore) -> None:
    def append_then_fail() -> None:
        with event_store.connection() as conn:
            event_store.append_to_stream("dropped", NO_STREAM, _many("a"), connection=conn)
            raise RuntimeError("the caller's work failed")

    with pytest.raises(RuntimeError):
        append_then_fail()
    with event_store.connection() as conn:
        event_store.append_to_stream("kept", NO_STREAM, _many("a"), connection=conn)
    assert [s.stream_id for s in event_store.list_streams()] == ["kept"]
    event_store.sequencer.catch_up()
    assert [e.event_number for e in event_store.read_all_forward()] == list(range(1, MANY + 1))
