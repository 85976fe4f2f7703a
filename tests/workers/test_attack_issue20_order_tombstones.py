"""Attack: tombstones and null header values in the middle of good traffic (issue 20, case 3).

A tombstone (a message without a value, as a compacting producer or a cleanup tool writes) and a
message whose headers carry null values are not events of this store. They must be parked, visible in
``tidings parked list``, and move nothing: every good event handled once, in global order for a
global-order handler and in key order for a per-key one.
"""

from __future__ import annotations

from confluent_kafka import Producer

from eventstore.kafka_tail import EVENT_NUMBER_HEADER, PREVIOUS_HEADER
from eventstore.postgres.store import PostgresEventStore
from eventstore.relay import Relay, RelayConfig
from eventstore.routing import Routing
from tests.workers.worker_support import Noted, Recorder, append_noted, eventually, kafka_headers, stack
from tidings.pytest_plugin import KafkaNamespace
from workers import EventHandler, EventMetadata
from workers.parking import ParkedEvents


def _patient_relay(
    store: PostgresEventStore, namespace: KafkaNamespace, app: str, topic: str, n: int
) -> Relay:
    """A relay that looks at its tails once, after its first batch (not again for an hour), so that
    the foreign messages reach the handlers instead of stopping the relay (issue 19)."""
    return Relay(
        store,
        RelayConfig(
            namespace.bootstrap_servers,
            app=app,
            partitions=n,
            batch_size=200,
            routing=Routing(topic),
            tail_check_interval=3600.0,
        ),
    )


def test_tombstones_and_null_headers_are_parked_and_move_nothing(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    _tombstones_among_good_traffic(event_store, kafka_namespace, with_a_handled_events_headers=False)


def _tombstones_among_good_traffic(
    event_store: PostgresEventStore,
    kafka_namespace: KafkaNamespace,
    *,
    with_a_handled_events_headers: bool,
    value: bytes | None = None,
) -> None:
    """With ``with_a_handled_events_headers``, one message per partition carries the headers of a
    handled event (its event_number and event_id) and ``value`` (none: a tombstone) instead of its
    bytes: a reused event_number with other content."""
    in_order: list[int] = []
    per_key = Recorder()
    with stack(event_store, kafka_namespace, partitions=2) as s:
        s.relay.stop()
        s.relay = _patient_relay(event_store, kafka_namespace, s.app_name, s.topic, 2)
        s.relay.start()

        class Global(EventHandler):
            name = s.name("global")

            def handle(self, event: Noted, metadata: EventMetadata) -> None:
                in_order.append(metadata.event_number)

        class PerKey(EventHandler):
            name = s.name("per-key")
            ordering = "per_key"
            concurrency = 2

            def handle(self, event: Noted, metadata: EventMetadata) -> None:
                per_key.add(metadata.stream_id, event.n, metadata.event_number)

        first = append_noted(event_store, streams=4, per_stream=2)
        s.run(Global)
        s.run(PerKey)
        eventually(lambda: len(in_order) >= len(first) and per_key.count() >= len(first), what="first")
        eventually(lambda: s.relay.last_published >= len(first), what="the first batch counted")
        (real,) = event_store.read_all_forward(1, 1)
        head = event_store.last_event_number()
        nulls: list[tuple[str, str | bytes | None]] = [
            (name, None if name in ("event_id", "store", "tidings.store") else value)
            for name, value in kafka_headers(real)
        ]
        nulls = [(n, str(head + 3).encode() if n == EVENT_NUMBER_HEADER else v) for n, v in nulls]
        nulls.append((PREVIOUS_HEADER, f"{s.topic}=0".encode()))
        handled: list[tuple[str, str | bytes | None]] = list(kafka_headers(real))
        producer = Producer({"bootstrap.servers": kafka_namespace.bootstrap_servers})
        bad = 0
        for partition in (0, 1):
            producer.produce(s.topic, None, b"s0", partition=partition)  # a bare tombstone
            producer.produce(s.topic, real.data, b"s2", partition=partition, headers=nulls)
            bad += 2
            if with_a_handled_events_headers:
                producer.produce(s.topic, value, b"s1", partition=partition, headers=handled)
                bad += 1
        assert producer.flush(30) == 0
        second = append_noted(event_store, streams=4, per_stream=3, prefix="s", group="after")
        total = len(first) + len(second)
        parked = ParkedEvents(event_store)
        eventually(lambda: len(in_order) >= total and per_key.count() >= total, what="good ones handled")
        try:
            eventually(
                lambda: parked.count(Global.name) >= bad and parked.count(PerKey.name) >= bad,
                timeout=60,  # a loaded CI machine parks them later than a quiet one
                what="every bad message parked",
            )
        finally:
            for name in (Global.name, PerKey.name):
                print(name, [(p.offset, p.event_number, p.error[:90]) for p in parked.list(name)])
    assert in_order == list(range(1, total + 1))
    assert sorted(number for _, _, number in per_key.seen) == list(range(1, total + 1))
    for name in (Global.name, PerKey.name):
        rows = parked.list(name)
        assert len(rows) == bad
        assert all(p.error.startswith("not an event of this store") for p in rows), [p.error for p in rows]
