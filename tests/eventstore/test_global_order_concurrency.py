"""Many writers committing out of order, some rolling back, while readers follow the global order.

Every committed event is seen exactly once by every reader, numbered 1..N without a gap, in the same
order for all readers, with each stream's events in stream order; no rolled-back event is ever seen.
"""

from __future__ import annotations

import random
import threading
import time
import uuid

from eventstore import ANY, EventData, PostgresEventStore, RecordedEvent
from eventstore.postgres.store import COPY_AT

WRITERS = 8
APPENDS_PER_WRITER = 60
DEADLINE_SECONDS = 90.0


class _Rollback(Exception):
    pass


def _writer(
    store: PostgresEventStore,
    seed: int,
    committed: set[uuid.UUID],
    aborted: set[uuid.UUID],
    lock: threading.Lock,
) -> None:
    rng = random.Random(seed)
    for _ in range(APPENDS_PER_WRITER):
        stream = f"stream-{rng.randrange(6)}"  # shared streams: writers contend on stream rows too
        # Mostly small appends (one statement), sometimes large ones (the COPY path).
        size = rng.choice([1, 1, 2, 3, COPY_AT])
        events = [EventData("E", str(seed).encode()) for _ in range(size)]
        ids = {e.event_id for e in events}
        if rng.random() < 0.5:
            store.append_to_stream(stream, ANY, events)
            with lock:
                committed.update(ids)
            continue
        # In a transaction held open a little while, so commits land out of xid order; some roll back.
        roll_back = rng.random() < 0.3
        try:
            with store.connection() as conn:
                if rng.random() < 0.5:
                    # Write elsewhere first: this transaction's id is then older than those of
                    # transactions that reach the shared stream before it does.
                    early = EventData("Early", b"")
                    store.append_to_stream(f"private-{seed}", ANY, [early], connection=conn)
                    ids.add(early.event_id)
                    time.sleep(rng.uniform(0, 0.005))
                store.append_to_stream(stream, ANY, events, connection=conn)
                time.sleep(rng.uniform(0, 0.01))
                if roll_back:
                    raise _Rollback
        except _Rollback:
            with lock:
                aborted.update(ids)
        else:
            with lock:
                committed.update(ids)


def _reader(store: PostgresEventStore, seen: list[RecordedEvent], done: threading.Event) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while time.monotonic() < deadline:
        batch = store.read_all_forward(len(seen) + 1, 200)
        seen.extend(batch)
        if not batch:
            if done.is_set():
                return
            time.sleep(0.002)


def test_concurrent_writers_and_readers(event_store: PostgresEventStore) -> None:
    committed: set[uuid.UUID] = set()
    aborted: set[uuid.UUID] = set()
    lock = threading.Lock()
    readers_may_stop = threading.Event()
    views: list[list[RecordedEvent]] = [[], []]
    readers = [threading.Thread(target=_reader, args=(event_store, view, readers_may_stop)) for view in views]
    writers = [
        threading.Thread(target=_writer, args=(event_store, seed, committed, aborted, lock))
        for seed in range(WRITERS)
    ]
    for thread in readers + writers:
        thread.start()
    for thread in writers:
        thread.join(timeout=DEADLINE_SECONDS)
    # Everything committed must become readable; then the readers may stop at the head.
    deadline = time.monotonic() + DEADLINE_SECONDS
    while event_store.last_event_number() < len(committed) and time.monotonic() < deadline:
        time.sleep(0.01)
    readers_may_stop.set()
    for thread in readers:
        thread.join(timeout=DEADLINE_SECONDS)

    assert aborted, "the test must exercise rollbacks"
    for view in views:
        numbers = [e.event_number for e in view]
        assert numbers == list(range(1, len(committed) + 1)), "gapless, each number once"
        ids = [e.event_id for e in view]
        assert len(set(ids)) == len(ids), "each event seen once"
        assert set(ids) == committed
        assert not set(ids) & aborted
        by_stream: dict[str, list[int]] = {}
        for event in view:
            by_stream.setdefault(event.stream_id, []).append(event.stream_version)
        for versions in by_stream.values():
            assert versions == list(range(1, len(versions) + 1)), "stream order, gapless, in the global order"
    assert [e.event_id for e in views[0]] == [e.event_id for e in views[1]], "one order for all readers"
