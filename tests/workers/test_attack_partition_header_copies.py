"""Attack (commit 60d18af): copies of handled events on another partition, with their tidings.partition
header damaged or duplicated.

The relay stamps each message with the partition it produced it to; a handler parks a message whose
header names another partition than the one it was read from, or that carries the header twice. A copy
whose header was rewritten to name the partition it sits on, or removed, is a forgery by someone who can
write to the topic: like any forged header, only the topic's ACLs keep it out (see hostile input).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from eventstore.kafka_tail import PARTITION_HEADER
from eventstore.postgres.store import PostgresEventStore
from tests.workers.test_attack_garbage import _copy_to_the_other_partition, _read_all
from tests.workers.test_attack_issue20_order_tombstones import _patient_relay
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

Headers = list[tuple[str, str | bytes | None]]


def _without(headers: Headers) -> Headers:
    return [(k, v) for k, v in headers if k != PARTITION_HEADER]


FORGERIES: dict[str, Callable[[Headers, int], Headers]] = {
    # The original header kept, a second one naming the copy's partition after it / before it.
    "second-after": lambda h, to: [*h, (PARTITION_HEADER, str(to).encode())],
    "second-before": lambda h, to: [(PARTITION_HEADER, str(to).encode()), *h],
    # Damaged: none of these name a partition as the relay writes it.
    "empty": lambda h, to: [*_without(h), (PARTITION_HEADER, b"")],
    "null": lambda h, to: [*_without(h), (PARTITION_HEADER, None)],
    "padded": lambda h, to: [*_without(h), (PARTITION_HEADER, f"0{to}".encode())],
    "spaced": lambda h, to: [*_without(h), (PARTITION_HEADER, f" {to}".encode())],
    "signed": lambda h, to: [*_without(h), (PARTITION_HEADER, f"+{to}".encode())],
    "not-text": lambda h, to: [*_without(h), (PARTITION_HEADER, bytes([0xFF, 0x30 + to]))],
}


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_a_copy_on_another_partition_is_parked_whatever_its_partition_header_says(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace, forgery: str
) -> None:
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
        _copy_to_the_other_partition(kafka_namespace.bootstrap_servers, s.topic, copies, FORGERIES[forgery])
        second = append_noted(event_store, streams=4, per_stream=3, prefix="later")
        total = len(first) + len(second)
        parked = ParkedEvents(event_store)
        eventually(
            lambda: seen.count() >= total and counted() >= total,
            what="every event handled",
        )
        # What the copies do shows within a moment of the later events being handled.
        settle(3.0)
        projected = counted()
        reasons = {name: [p.error for p in parked.list(name)] for name in (PerKey.name, Counts.name)}
    numbers = [number for _, _, number in seen.seen]
    twice = sorted({n for n in numbers if numbers.count(n) > 1})
    assert not twice, f"{forgery}: handled twice per key: {twice}"
    assert projected == total, f"{forgery}: the projection counted {projected} events, {total} appended"
    for name, found in reasons.items():
        assert len(found) == len(copies), f"{forgery}, {name}: one parked row per copy: {found}"
        assert all(r.startswith(FOREIGN) for r in found), found


@pytest.mark.parametrize("forgery", ["second-after", "second-before"])
def test_a_copy_whose_header_names_its_partition_is_parked_in_global_order(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace, forgery: str
) -> None:
    """Global order: the merge's ``last`` keeps such a copy from being handled again; the guarantee asks
    besides that it be parked as not an event of this store, as the copy with its header intact is."""
    in_order: list[int] = []
    with stack(event_store, kafka_namespace, partitions=2) as s:

        class Global(EventHandler):
            name = s.name("global")

            def handle(self, event: Noted, metadata: EventMetadata) -> None:
                in_order.append(metadata.event_number)

        first = append_noted(event_store, streams=4, per_stream=3)
        s.run(Global)
        eventually(lambda: len(in_order) >= len(first), what="first handled")
        copies = _read_all(kafka_namespace.bootstrap_servers, s.topic, 2, len(first))
        assert len(copies) == len(first)
        _copy_to_the_other_partition(kafka_namespace.bootstrap_servers, s.topic, copies, FORGERIES[forgery])
        second = append_noted(event_store, streams=4, per_stream=3, prefix="later")
        total = len(first) + len(second)
        eventually(lambda: len(in_order) >= total, what="every event handled")
        settle(3.0)
        errors = [row.error for row in ParkedEvents(event_store).list(Global.name)]
    assert in_order == list(range(1, total + 1)), "each once, in order"
    assert len(errors) == len(copies), f"{forgery}: {len(copies)} copies, parked: {errors}"
    assert all(e.startswith(FOREIGN) for e in errors), errors
