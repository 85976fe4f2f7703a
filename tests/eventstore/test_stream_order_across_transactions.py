"""A transaction that started writing early but appends to a stream late must still follow that stream's
earlier events in the global order (its transaction id is older than theirs)."""

from __future__ import annotations

import threading

from eventstore import ANY, EventData, PostgresEventStore


def test_stream_order_holds_when_an_older_transaction_appends_later(event_store: PostgresEventStore) -> None:
    store = event_store
    late_appended = threading.Event()
    with store.connection() as older:
        # The older transaction gets its transaction id first, by writing elsewhere.
        store.append_to_stream("elsewhere", ANY, [EventData("E", b"older-first")], connection=older)

        def younger_then_older() -> None:
            with store.connection() as younger:
                store.append_to_stream(
                    "account", ANY, [EventData("E", b"v1 (younger xid)")], connection=younger
                )
            # Now the older transaction appends to the same stream, after the younger one committed.
            late_appended.set()

        thread = threading.Thread(target=younger_then_older)
        thread.start()
        thread.join(timeout=30)
        assert late_appended.is_set()
        store.append_to_stream("account", ANY, [EventData("E", b"v2 (older xid)")], connection=older)

    store.sequencer.catch_up()
    account = [e for e in store.read_all_forward() if e.stream_id == "account"]
    assert [(e.stream_version, e.data) for e in account] == [(1, b"v1 (younger xid)"), (2, b"v2 (older xid)")]
    assert account[0].event_number is not None
    assert account[1].event_number is not None
    assert account[0].event_number < account[1].event_number
