"""Attack: copies of handled events, per key, and a handled event's headers over other bytes (issue 20,
case 3).

What the store confirms of a message is its event_id at its number. Two kinds of message pass that
check and are still not the event: an exact copy on another partition than its event's (a backup
replayed with another partitioner), which a per-key lane, whose positions are per partition, handled
again before the relay stamped each message with its partition; and a message carrying a handled
event's headers over other bytes, skipped as a redelivery before a repeat's bytes were compared too.
"""

from __future__ import annotations

from eventstore.postgres.store import PostgresEventStore
from tests.workers.test_attack_garbage import _copy_to_the_other_partition, _read_all
from tests.workers.test_attack_issue20_order_tombstones import _patient_relay, _tombstones_among_good_traffic
from tests.workers.worker_support import (
    Noted,
    Recorder,
    Tally,
    append_noted,
    counters,
    eventually,
    read,
    settle,
    stack,
)
from tidings.pytest_plugin import KafkaNamespace
from workers import EventHandler, EventMetadata
from workers.identity import FOREIGN
from workers.parking import ParkedEvents


def test_a_replayed_copy_on_another_partition_is_not_handled_twice_per_key(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    """Breaks "every good event handled exactly once" for a per-key handler.

    A backup replayed with another partitioner puts exact copies of handled events on other partitions
    than theirs. The per-key lane compares a copy only with its own partition's position: a copy whose
    number is above that position decoded and was handled a second time (and moved the position). Each
    copy is now parked as foreign, naming the partition it was published to, and holds no key back."""
    seen = Recorder()
    table = counters(event_store)
    with stack(event_store, kafka_namespace, partitions=2) as s:
        s.relay.stop()
        s.relay = _patient_relay(event_store, kafka_namespace, s.app_name, s.topic, 2)
        s.relay.start()

        class PerKey(EventHandler):
            name = s.name("per-key")
            ordering = "per_key"
            concurrency = 2

            def handle(self, event: Noted, metadata: EventMetadata) -> None:
                seen.add(metadata.stream_id, event.n, metadata.event_number)

        class Counts(Tally):
            # A projection: exactly-once effects are its promise (invariant 4).
            name = s.name("counts")
            tables = (table,)
            ordering = "per_key"
            concurrency = 2

        def counted() -> int:
            return int(read(event_store, "SELECT coalesce(sum(events), 0) FROM counters")[0][0])

        first = append_noted(event_store, streams=4, per_stream=3)
        s.run(PerKey)
        s.run(Counts)
        eventually(lambda: seen.count() >= len(first) and counted() >= len(first), what="first handled")
        eventually(lambda: s.relay.last_published >= len(first), what="the first batch counted")
        copies = _read_all(kafka_namespace.bootstrap_servers, s.topic, 2, len(first))
        assert len(copies) == len(first)
        _copy_to_the_other_partition(kafka_namespace.bootstrap_servers, s.topic, copies)
        second = append_noted(event_store, streams=4, per_stream=3, prefix="later")
        total = len(first) + len(second)
        parked = ParkedEvents(event_store)
        eventually(
            lambda: (
                seen.count() >= total
                and counted() >= total
                and parked.count(PerKey.name) >= len(copies)
                and parked.count(Counts.name) >= len(copies)
            ),
            what="every event handled and every copy parked",
        )
        settle(1.5)
        projected = counted()
        for name in (PerKey.name, Counts.name):
            reasons = [p.error for p in parked.list(name)]
            assert len(reasons) == len(copies), f"{name}: one parked row per copy"
            assert all(r.startswith(FOREIGN) and "published to partition" in r for r in reasons), reasons
    assert projected == total, f"the projection counted {projected} events, {total} were appended"
    numbers = [number for _, _, number in seen.seen]
    twice = sorted({n for n in numbers if numbers.count(n) > 1})
    assert not twice, f"handled twice: {twice}"
    assert sorted(numbers) == list(range(1, total + 1))


def test_a_handled_events_headers_with_other_bytes_are_parked_not_skipped(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    """Breaks "a reused event_number with different content is parked and reported, not skipped": a
    message with a handled event's headers (number, event_id, fingerprint) and other bytes is taken as
    a redelivery of that event (only the event_id is compared) and counted already_seen."""
    _tombstones_among_good_traffic(
        event_store, kafka_namespace, with_a_handled_events_headers=True, value=b'{"garbage": true}'
    )
