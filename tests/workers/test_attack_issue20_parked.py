"""Attacks on parked events after issue 20 (cases 3, 9a, 9b), on the real PostgreSQL and Kafka.

A foreign message parked under a key holds nothing back (it is no event of the key): releasing the key
after its real poison event is fixed must hand back the key's events, whatever foreign message sits
among them.
"""

from __future__ import annotations

import os
import threading
import uuid

from confluent_kafka import Producer

from eventstore import ANY
from eventstore.kafka_tail import EVENT_NUMBER_HEADER, PREVIOUS_HEADER, STORE_HEADER
from eventstore.postgres.store import PostgresEventStore
from eventstore.relay import Relay, RelayConfig
from eventstore.relay_position import RelayRecord
from eventstore.routing import Routing
from tests.workers.worker_support import Noted, eventually, kafka_headers, mapper, stack
from tidings.pytest_plugin import KafkaNamespace
from workers import EventHandler, EventMetadata
from workers.failure import Park
from workers.parking import ParkedEvents


def _append(store: PostgresEventStore, stream: str, n: int) -> None:
    store.append_to_stream(stream, ANY, [mapper.to_event_data(Noted(stream, n))])


def test_a_released_key_is_handed_back_past_a_foreign_message_parked_under_it(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    # Breaks: "garbage is parked without moving anything a later good event depends on" and the
    # release of a key. The drain retries the key's rows in parked order; the foreign message comes
    # first, is foreign again, counts as "parked again", and holds the whole key back: the fixed
    # poison event and every event behind it stay parked however often the operator releases them.
    seen: list[tuple[str, int]] = []
    broken = threading.Event()
    broken.set()
    with stack(event_store, kafka_namespace, partitions=1) as s:
        # The relay stops on another store's messages on its tails (issue 19); it looks once here.
        s.relay.stop()
        s.relay = Relay(
            event_store,
            RelayConfig(
                kafka_namespace.bootstrap_servers,
                app=s.app_name,
                partitions=1,
                routing=Routing(s.topic),
                tail_check_interval=3600.0,
            ),
        )
        s.relay.start()

        class Picky(EventHandler):
            name = s.name("picky")
            ordering = "per_key"
            concurrency = 2

            def handle(self, event: Noted, metadata: EventMetadata) -> None:
                if event.n == 2 and broken.is_set():
                    raise ValueError("a bug, fixed in the next release")
                seen.append((metadata.stream_id, event.n))

            def error(self, error: BaseException, failed: object, context: object) -> Park:
                return Park(str(error))

        _append(event_store, "s0", 1)
        s.run(Picky)
        eventually(lambda: seen == [("s0", 1)], what="the first event handled")
        eventually(lambda: s.relay.last_published >= 1, what="the first event counted as published")
        (real,) = event_store.read_all_forward(1, 1)
        headers = {name: value for name, value in kafka_headers(real)}
        headers[EVENT_NUMBER_HEADER] = str(event_store.last_event_number() + 1000).encode()
        headers["event_id"] = str(uuid.uuid4()).encode()
        headers[PREVIOUS_HEADER] = f"{s.topic}=0".encode()
        headers[STORE_HEADER] = RelayRecord(event_store, "relay").store_id().encode()
        producer = Producer({"bootstrap.servers": kafka_namespace.bootstrap_servers})
        producer.produce(s.topic, os.urandom(64), b"s0", partition=0, headers=list(headers.items()))
        assert producer.flush(30) == 0
        parked = ParkedEvents(event_store)
        eventually(lambda: parked.count(Picky.name) == 1, what="the foreign message parked")
        _append(event_store, "s0", 2)  # the poison event
        _append(event_store, "s0", 3)  # waits behind it
        eventually(lambda: parked.count(Picky.name) == 3, what="the poison event and the one behind parked")
        broken.clear()  # the fix is deployed
        parked.release(Picky.name, b"s0")
        _append(event_store, "s0", 4)
        try:
            eventually(
                lambda: seen == [("s0", 1), ("s0", 2), ("s0", 3), ("s0", 4)],
                timeout=20,
                what="the released key handed back, then live again",
            )
        finally:
            print(
                "seen",
                seen,
                "parked",
                [(p.offset, p.released, p.error[:60]) for p in parked.list(Picky.name)],
            )
        rows = parked.list(Picky.name)
        assert len(rows) == 1, "only the foreign message stays parked"
        assert "not an event of this store" in rows[0].error
