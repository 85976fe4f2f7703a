"""Reading streams and the global order, forward, backward, in batches; listing streams."""

from __future__ import annotations

import pytest

from eventstore import END, NO_STREAM, EventData, PostgresEventStore, StreamNotFound


def _fill(store: PostgresEventStore, stream: str, count: int) -> None:
    store.append_to_stream(stream, NO_STREAM, [EventData("E", str(i).encode()) for i in range(1, count + 1)])


def test_stream_reads(event_store: PostgresEventStore) -> None:
    _fill(event_store, "s", 25)
    assert [e.stream_version for e in event_store.read_stream_forward("s", 10, 5)] == [10, 11, 12, 13, 14]
    assert [e.stream_version for e in event_store.read_stream_backward("s", END, 3)] == [25, 24, 23]
    assert [e.stream_version for e in event_store.read_stream_backward("s", 2, 10)] == [2, 1]
    assert [e.data for e in event_store.stream_forward("s", 1, batch_size=4)] == [
        str(i).encode() for i in range(1, 26)
    ]
    with pytest.raises(StreamNotFound):
        event_store.read_stream_forward("nope")


def test_all_reads(event_store: PostgresEventStore) -> None:
    for name in ("a", "b", "c"):
        _fill(event_store, name, 4)
    assert event_store.sequencer.catch_up() == 12
    forward = event_store.read_all_forward(1, 100)
    assert [e.event_number for e in forward] == list(range(1, 13))
    assert [e.event_number for e in event_store.read_all_forward(5, 3)] == [5, 6, 7]
    assert [e.event_number for e in event_store.read_all_backward(END, 2)] == [12, 11]
    assert [e.event_number for e in event_store.read_all_backward(3, 10)] == [3, 2, 1]
    assert [e.event_number for e in event_store.stream_all_forward(1, batch_size=5)] == list(range(1, 13))
    # Per stream, the global order keeps the stream order.
    for name in ("a", "b", "c"):
        assert [e.stream_version for e in forward if e.stream_id == name] == [1, 2, 3, 4]
    assert event_store.last_event_number() == 12


def test_list_streams_is_paginated(event_store: PostgresEventStore) -> None:
    for i in range(7):
        _fill(event_store, f"stream-{i}", 1)
    pages, after = [], ""
    while page := event_store.list_streams(after, limit=3):
        pages.append([s.stream_id for s in page])
        after = page[-1].stream_id
    assert pages == [["stream-0", "stream-1", "stream-2"], ["stream-3", "stream-4", "stream-5"], ["stream-6"]]
