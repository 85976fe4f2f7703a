"""Attack on parked events after issue 20: a discard must let a busy key go live again.

Failed before the fix: the discard left the lane believing the key parked, and it stayed parked for good.
"""

from __future__ import annotations

import threading

from eventstore import ANY
from eventstore.postgres.store import PostgresEventStore
from tests.workers.worker_support import Noted, eventually, mapper, stack
from tidings.pytest_plugin import KafkaNamespace
from workers import EventHandler, EventMetadata
from workers.failure import Park
from workers.parking import ParkedEvents


def _append(store: PostgresEventStore, stream: str, n: int) -> None:
    store.append_to_stream(stream, ANY, [mapper.to_event_data(Noted(stream, n))])


def test_after_a_discard_the_keys_new_events_are_handled_live_again(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    # Breaks: "once a key has none left, its new events are handled live again" (docs/workers.md).
    # Whether a key still has parked events is asked of PostgreSQL at most once a second per key; a
    # discard in between leaves the lane believing it, so the key's next live event is parked
    # "behind an earlier parked event" that no longer exists, and the key waits behind it for good.
    seen: list[int] = []
    with stack(event_store, kafka_namespace, partitions=1) as s:

        class Picky(EventHandler):
            name = s.name("picky")
            ordering = "per_key"
            concurrency = 2

            def handle(self, event: Noted, metadata: EventMetadata) -> None:
                if event.n == 0:
                    raise ValueError("poison")
                seen.append(event.n)

            def error(self, error: BaseException, failed: object, context: object) -> Park:
                return Park(str(error))

        s.run(Picky)
        parked = ParkedEvents(event_store)
        _append(event_store, "s0", 0)
        eventually(lambda: parked.count(Picky.name) == 1, what="the poison event parked")
        stop = threading.Event()

        def traffic() -> None:  # the key stays busy, as a live key is
            n = 1
            while not stop.is_set():
                _append(event_store, "s0", n)
                n += 1
                stop.wait(0.05)

        busy = threading.Thread(target=traffic, daemon=True)
        busy.start()
        try:
            eventually(lambda: parked.count(Picky.name) >= 5, what="live events parked behind it")
            parked.discard(Picky.name, b"s0")  # the operator gives up on the key's parked events
            later = len(seen)
            eventually(lambda: len(seen) >= later + 10, timeout=10, what="the key's new events handled")
        finally:
            stop.set()
            busy.join(10)
        # Events parked behind after the discard (it raced the lane) are handed back, in order: none is
        # left parked, and the key's events reach the handler in their order.
        eventually(lambda: parked.count(Picky.name) == 0, what="nothing of the key left parked")
    assert seen == sorted(seen), "the key's events in their order"
    assert len(seen) == len(set(seen)), "each event once"


def test_discarding_the_failed_event_hands_back_those_parked_behind_it_and_one_failing_in_turn_holds_again(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    attempts: dict[int, int] = {}
    seen: list[int] = []
    with stack(event_store, kafka_namespace, partitions=1) as s:

        class Picky(EventHandler):
            name = s.name("picky-ids")
            ordering = "per_key"

            def handle(self, event: Noted, metadata: EventMetadata) -> None:
                attempts[event.n] = attempts.get(event.n, 0) + 1
                if event.n in (0, 3):
                    raise ValueError(f"poison {event.n}")
                seen.append(event.n)

            def error(self, error: BaseException, failed: object, context: object) -> Park:
                return Park(str(error))

        s.run(Picky)
        parked = ParkedEvents(event_store)
        for n in range(6):
            _append(event_store, "s0", n)
        eventually(lambda: parked.count(Picky.name) == 6, what="the poison event and five behind it parked")
        (failed,) = [p for p in parked.list(Picky.name) if p.error.startswith("poison")]
        assert failed.event_number is not None
        parked.discard(Picky.name, ids=[failed.id])
        # 1 and 2 go on; 3 fails in its turn and holds 4 and 5 behind it, with its own error.
        eventually(
            lambda: (
                seen == [1, 2]
                and [r.error.startswith("poison 3") for r in parked.list(Picky.name)] == [True, False, False]
            ),
            what="1, 2 handed back, then 3 parked again with its own error, holding 4 and 5",
        )
        held = attempts[3]
        _append(event_store, "s0", 6)
        eventually(lambda: parked.count(Picky.name) == 4, what="a new event parked behind 3")
        assert attempts[3] == held, "a failed event that holds its key is not retried without a retry"
        assert seen == [1, 2]
