"""Attack: positions move only on confirmed messages, for per-key handlers too (issue 20, case 3).

The per-key lanes confirmed a message's event_id only for redeliveries (at or below the partition's
position) and for messages that did not decode: a well-formed message that decodes, claims this store
and a number within the store's head, was taken as the next event of its partition, and a message with
a handled event's headers and no value as a redelivery. These tests put such messages in the middle of
good traffic and check the guarantee: every good event handled exactly once, each bad message parked,
no good event skipped as already seen.
"""

from __future__ import annotations

import threading
import uuid

from confluent_kafka import Producer

from eventstore.kafka_tail import EVENT_NUMBER_HEADER, STORE_HEADER
from eventstore.postgres.store import PostgresEventStore
from eventstore.relay_position import RelayRecord
from tests.workers.test_attack_issue20_order_tombstones import _patient_relay, _tombstones_among_good_traffic
from tests.workers.worker_support import (
    Noted,
    Recorder,
    append_noted,
    eventually,
    kafka_headers,
    settle,
    stack,
)
from tidings.pytest_plugin import KafkaNamespace
from workers import EventHandler, EventMetadata
from workers.parking import ParkedEvents


def test_a_forged_decodable_message_with_a_number_the_store_reaches_later_skips_no_good_event(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    """Guards "no good event ever skipped as already seen" for a per-key handler.

    A well-formed message (a real event's value and headers, this store's id, another event_id) claims
    an event_number a little beyond the store's head. By the time the lane reaches it (the handler is
    slow), the store has handed that number out, so the head check passes. When only messages that did
    not decode were asked about, the partition's position jumped to its number and the good events
    behind it with lower numbers were skipped as redeliveries (the handler saw 1 and 11-21 only)."""
    seen = Recorder()
    gate = threading.Event()
    entered = threading.Event()
    with stack(event_store, kafka_namespace, partitions=1) as s:
        s.relay.stop()
        s.relay = _patient_relay(event_store, kafka_namespace, s.app_name, s.topic, 1)
        s.relay.start()

        class PerKey(EventHandler):
            name = s.name("per-key")
            ordering = "per_key"

            def handle(self, event: Noted, metadata: EventMetadata) -> None:
                if metadata.event_number == 1:
                    entered.set()
                    gate.wait(30)
                seen.add(metadata.stream_id, event.n, metadata.event_number)

        first = append_noted(event_store, streams=1, per_stream=1)
        runner = s.run(PerKey)
        eventually(entered.is_set, what="the first event in the handler")
        eventually(lambda: s.relay.last_published >= len(first), what="the first batch counted")
        (real,) = event_store.read_all_forward(0, 1)
        head = event_store.last_event_number()
        forged_number = head + 10
        headers = dict(kafka_headers(real))
        headers[EVENT_NUMBER_HEADER] = str(forged_number).encode()
        headers["event_id"] = str(uuid.uuid4()).encode()
        headers[STORE_HEADER] = RelayRecord(event_store, "relay").store_id().encode()
        producer = Producer({"bootstrap.servers": kafka_namespace.bootstrap_servers})
        producer.produce(s.topic, real.data, b"s0", partition=0, headers=list(headers.items()))
        assert producer.flush(30) == 0
        # Good traffic after it, on the same partition: numbers 2..21 reach past the forged one.
        second = append_noted(event_store, streams=2, per_stream=10, prefix="t")
        total = len(first) + len(second)
        eventually(lambda: s.relay.last_published >= total, what="all relayed")
        gate.set()
        parked = ParkedEvents(event_store)
        try:
            eventually(
                lambda: seen.count() >= total and parked.count(PerKey.name) >= 1,
                timeout=20,
                what="every good event handled and the forgery parked",
            )
        finally:
            print("seen", sorted(number for _, _, number in seen.seen))
            print("parked", [(p.offset, p.event_number, p.error[:100]) for p in parked.list(PerKey.name)])
        settle(0.5)
        assert runner.status.state == "running"
    assert sorted(number for _, _, number in seen.seen) == list(range(1, total + 1))
    (row,) = parked.list(PerKey.name)
    assert row.error.startswith("not an event of this store"), row.error


def test_a_tombstone_carrying_a_handled_events_headers_is_parked_not_skipped(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    """Guards "a reused event_number with different content is parked and reported, not skipped", for
    global-order and per-key handlers alike: a message with a handled event's headers (its number and
    event_id) and no value was taken as a redelivery of that event (the check compares event_ids only),
    counted already_seen, and neither parked nor logged."""
    _tombstones_among_good_traffic(event_store, kafka_namespace, with_a_handled_events_headers=True)
