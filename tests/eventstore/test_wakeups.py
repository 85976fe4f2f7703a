"""NOTIFY wakes readers early; polling alone still delivers every event."""

from __future__ import annotations

import threading

import pytest

from eventstore import ANY, EventData, PostgresEventStore


def test_a_waiting_reader_wakes_when_events_are_numbered(event_store: PostgresEventStore) -> None:
    results: list[int] = []
    waiting = threading.Thread(target=lambda: results.append(event_store.wait_for_numbered(0, timeout=30)))
    waiting.start()
    event_store.append_to_stream("s", ANY, [EventData("E", b"1")])
    waiting.join(timeout=35)
    assert results == [1]


def test_polling_delivers_without_any_notification(
    event_store: PostgresEventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The sequencer announces on a channel nobody listens to: only polling can find the event.
    monkeypatch.setattr(event_store.sequencer, "_channel", "tidings_nobody_listens")
    results: list[int] = []
    waiting = threading.Thread(
        target=lambda: results.append(event_store.wait_for_numbered(0, timeout=30, poll_interval=0.05))
    )
    waiting.start()
    event_store.append_to_stream("s", ANY, [EventData("E", b"1")])
    waiting.join(timeout=35)
    assert results == [1]
