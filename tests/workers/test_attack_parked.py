"""Parked events attacked (issue 20, case 9): a released parked event is applied at most once when two
members retry it at once or an operator discards it meanwhile; a new bad message is always parked, even
at an offset an earlier message of a deleted topic used.

The races run two executors (what two workers' lanes run) on the real PostgreSQL, with a gate in the
handler holding the first retry open while the second one, or the discard, comes in. The re-created
topic runs a real relay-less worker on the real Kafka.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from eventstore import ANY, PostgresEventStore
from tests.workers.worker_support import (
    Noted,
    Tally,
    counters,
    eventually,
    kafka_headers,
    mapper,
    read,
)
from tidings.pytest_plugin import KafkaNamespace
from workers.app import WorkerApp, WorkerConfig
from workers.delivery import Delivery, EventMetadata, delivery_of
from workers.execution import Executor, PartitionState, Shared
from workers.handler import EventHandler
from workers.parking import ParkedEvents, message_digest
from workers.positions import Positions
from workers.runner import HandlerRunner

TOPIC = "parked-race.events"
KEY = b"s0"


def parked_delivery(store: PostgresEventStore, stream: str = "s0") -> Delivery:
    """A real event's message as the relay publishes it, at offset 0 of partition 0."""
    store.append_to_stream(stream, ANY, [mapper.to_event_data(Noted(stream, 0))])
    # Numbered first: a message under no number the store handed out is not the store's event.
    eventually(lambda: store.read_stream_forward(stream)[0].event_number is not None, what="numbered")
    (recorded,) = store.read_stream_forward(stream)
    return delivery_of(TOPIC, 0, 0, stream.encode(), recorded.data, kafka_headers(recorded))


@contextmanager
def executors(
    store: PostgresEventStore, name: str, make: Callable[[int], EventHandler], projection: bool
) -> Iterator[tuple[Executor, Executor]]:
    """Two executors of one handler, as two members' lanes would run it."""
    config = WorkerConfig(store, "unused:9092")
    positions = Positions(store)
    shared = Shared(
        name=name,
        store=store,
        mapper=mapper,
        subscription=positions.subscribe(name, "origin"),
        subscribe_to="all",
        positions=positions,
        parked=ParkedEvents(store),
        acknowledgements=None,
        stopping=threading.Event(),
        engine=config.engine() if projection else None,
    )
    first, second = Executor(make(0), shared), Executor(make(1), shared)
    try:
        yield first, second
    finally:
        first.close()
        second.close()
        config.dispose()


def waiting_on_a_lock(store: PostgresEventStore) -> bool:
    with store.connection() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE wait_event_type = 'Lock' AND datname = current_database()"
        ).fetchone()
    return bool(row and row[0])


class Gate:
    """Holds the handler inside its work until the test lets it go; counts who entered."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.entered = 0
        self.lock = threading.Lock()

    def __call__(self) -> None:
        with self.lock:
            self.entered += 1
        self.open.wait(60)


def run(target: Callable[[], Any]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def projected(store: PostgresEventStore) -> int:
    rows = read(store, "SELECT coalesce(sum(events), 0) FROM counters")
    return int(rows[0][0])


def gated_tally(store: PostgresEventStore, gate: Gate, name: str) -> type[Tally]:
    class GatedTally(Tally):
        tables = (counters(store),)

        def project(self, event: Noted, metadata: EventMetadata, connection: sa.Connection) -> None:
            gate()
            super().project(event, metadata, connection)

    GatedTally.name = name
    return GatedTally


def test_two_members_retrying_one_released_event_project_it_once(event_store: PostgresEventStore) -> None:
    name = f"tally-{uuid.uuid4().hex[:8]}"
    gate = Gate()
    handler = gated_tally(event_store, gate, name)
    parked = ParkedEvents(event_store)
    with event_store.connection() as conn:
        parked.park(conn, name, parked_delivery(event_store), "failed before the fix")
    parked.release(name, KEY)
    with executors(event_store, name, handler, projection=True) as (owner, zombie):
        first = run(lambda: owner.drain(PartitionState(TOPIC, 0, parked_keys={KEY}), KEY))
        eventually(lambda: gate.entered == 1, what="the first retry inside project")
        second = run(lambda: zombie.drain(PartitionState(TOPIC, 0, parked_keys={KEY}), KEY))
        # The second projects too (no fence), waits for the first one's lock, or leaves the key to it.
        eventually(
            lambda: gate.entered == 2 or waiting_on_a_lock(event_store) or not second.is_alive(),
            what="the second retry",
        )
        gate.open.set()
        first.join(30)
        second.join(30)
    assert projected(event_store) == 1, "the released event was projected twice"
    assert parked.count(name) == 0


def test_a_discard_racing_a_projections_retry_either_wins_never_both(event_store: PostgresEventStore) -> None:
    name = f"tally-{uuid.uuid4().hex[:8]}"
    gate = Gate()
    handler = gated_tally(event_store, gate, name)
    parked = ParkedEvents(event_store)
    with event_store.connection() as conn:
        parked.park(conn, name, parked_delivery(event_store), "failed before the fix")
    parked.release(name, KEY)
    discarded: list[int] = []
    with executors(event_store, name, handler, projection=True) as (owner, _):
        retry = run(lambda: owner.drain(PartitionState(TOPIC, 0, parked_keys={KEY}), KEY))
        eventually(lambda: gate.entered == 1, what="the retry inside project")
        discard = run(lambda: discarded.append(parked.discard(name, key=KEY)))
        eventually(lambda: bool(discarded) or waiting_on_a_lock(event_store), what="the discard")
        gate.open.set()
        retry.join(30)
        discard.join(30)
    assert (projected(event_store), discarded) in ((1, [0]), (0, [1])), "applied and discarded both"
    assert parked.count(name) == 0


class Recording(EventHandler):
    seen: list[int]
    gate: Gate

    def handle(self, event: Noted, metadata: EventMetadata) -> None:
        type(self).gate()
        type(self).seen.append(metadata.event_number)


def recording(name: str, gate: Gate) -> type[Recording]:
    return type("Recorded", (Recording,), {"name": name, "seen": [], "gate": gate})


def test_two_members_retrying_one_released_event_handle_it_once(event_store: PostgresEventStore) -> None:
    name = f"plain-{uuid.uuid4().hex[:8]}"
    gate = Gate()
    handler = recording(name, gate)
    parked = ParkedEvents(event_store)
    with event_store.connection() as conn:
        parked.park(conn, name, parked_delivery(event_store), "failed before the fix")
    parked.release(name, KEY)
    with executors(event_store, name, handler, projection=False) as (owner, zombie):
        first = run(lambda: owner.drain(PartitionState(TOPIC, 0, parked_keys={KEY}), KEY))
        eventually(lambda: gate.entered == 1, what="the first retry inside handle")
        second = run(lambda: zombie.drain(PartitionState(TOPIC, 0, parked_keys={KEY}), KEY))
        eventually(lambda: gate.entered == 2 or not second.is_alive(), what="the second retry")
        gate.open.set()
        first.join(30)
        second.join(30)
    assert len(handler.seen) == 1, "the released event was handled twice"
    assert parked.count(name) == 0


def test_a_discard_during_a_plain_handlers_retry_is_reported(
    event_store: PostgresEventStore, caplog: pytest.LogCaptureFixture
) -> None:
    name = f"plain-{uuid.uuid4().hex[:8]}"
    gate = Gate()
    handler = recording(name, gate)
    parked = ParkedEvents(event_store)
    with event_store.connection() as conn:
        parked.park(conn, name, parked_delivery(event_store), "failed before the fix")
    parked.release(name, KEY)
    with (
        caplog.at_level(logging.WARNING, "workers.handler"),
        executors(event_store, name, handler, projection=False) as (owner, _),
    ):
        retry = run(lambda: owner.drain(PartitionState(TOPIC, 0, parked_keys={KEY}), KEY))
        eventually(lambda: gate.entered == 1, what="the retry inside handle")
        assert parked.discard(name, key=KEY) == 1  # the handler's effects cannot be held back
        gate.open.set()
        retry.join(30)
    assert len(handler.seen) == 1
    assert any(
        "discarded while the handler retried it: the handler has handled it" in r.getMessage()
        for r in caplog.records
    ), "the discard of an event the handler then handled went unreported"
    # A second member comes too late: the row is gone, nothing is handled again.
    with executors(event_store, name, handler, projection=False) as (_, zombie):
        zombie.drain(PartitionState(TOPIC, 0, parked_keys={KEY}), KEY)
    assert len(handler.seen) == 1


def test_the_stored_digest_matches_the_one_migration_0009_computes(event_store: PostgresEventStore) -> None:
    parked = ParkedEvents(event_store)
    delivery = parked_delivery(event_store)
    with event_store.connection() as conn:
        parked.park(conn, "h", delivery, "bad")
    rows = read(event_store, f"SELECT message_digest, {_migration_digest()} FROM parked_events")
    assert [bytes(a) == bytes(b) for a, b in rows] == [True]
    assert bytes(rows[0][0]) == message_digest(delivery.key, delivery.value, delivery.headers)


def test_a_new_bad_message_at_an_offset_a_deleted_topic_used_is_parked(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    app_name = kafka_namespace.topic("app")
    topic = f"{app_name}.events"
    admin = AdminClient({"bootstrap.servers": kafka_namespace.bootstrap_servers})
    producer = Producer({"bootstrap.servers": kafka_namespace.bootstrap_servers})
    parked = ParkedEvents(event_store)

    class Garbage(EventHandler):
        name = kafka_namespace.group("garbage")
        ordering = "per_key"

        def handle(self, event: object, metadata: EventMetadata) -> None:
            pass

    def create() -> None:
        eventually(lambda: _created(admin, topic), what=f"{topic} created")

    def produce(key: bytes, value: bytes) -> None:
        producer.produce(topic, key=key, value=value, partition=0)
        assert producer.flush(30) == 0

    def worker() -> HandlerRunner:
        config = WorkerConfig(event_store, kafka_namespace.bootstrap_servers, partitions=1)
        runner = HandlerRunner(Garbage, WorkerApp(app_name, mapper=mapper, handlers=[Garbage]), config)
        runner.start()
        return runner

    create()
    produce(b"first", b"not an event")  # offset 0 of the first topic
    runner = worker()
    eventually(lambda: parked.count(Garbage.name) == 1, what="the first bad message parked")
    runner.stop()
    eventually(lambda: _deleted(admin, topic), what=f"{topic} deleted")
    create()
    produce(b"second", b"another bad message")  # offset 0 again, of the topic made anew
    runner = worker()
    try:
        eventually(lambda: parked.count(Garbage.name) == 2, timeout=30, what="the second bad message parked")
    finally:
        runner.stop()
    assert sorted(p.key for p in parked.list(Garbage.name)) == [b"first", b"second"]
    assert {p.offset for p in parked.list(Garbage.name)} == {0}


def _migration_digest() -> str:
    """The SQL with which migration 0009 computed the digest of rows parked before it."""
    import eventstore.migrations

    path = Path(eventstore.migrations.__file__).parent / "versions" / "0009_exact_acknowledgements.py"
    spec = importlib.util.spec_from_file_location("migration_0009", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module._DIGEST)


def _created(admin: AdminClient, topic: str) -> bool:
    try:
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(10)
    except Exception:  # noqa: BLE001 - still being deleted: tried again
        return False
    return True


def _deleted(admin: AdminClient, topic: str) -> bool:
    if topic not in admin.list_topics(timeout=10).topics:
        return True
    try:
        admin.delete_topics([topic])[topic].result(10)
    except Exception:  # noqa: BLE001 - retried until it is gone
        return False
    return topic not in admin.list_topics(timeout=10).topics


def test_a_key_another_process_retries_is_left_to_it_until_that_process_lets_go(
    event_store: PostgresEventStore,
) -> None:
    name = f"plain-{uuid.uuid4().hex[:8]}"
    gate = Gate()
    gate.open.set()
    handler = recording(name, gate)
    parked = ParkedEvents(event_store)
    with event_store.connection() as conn:
        parked.park(conn, name, parked_delivery(event_store), "failed before the fix")
    parked.release(name, KEY)
    with executors(event_store, name, handler, projection=False) as (owner, _):
        with parked.draining(name, TOPIC, 0, KEY) as mine:  # another process, in the middle of it
            assert mine
            owner.drain(PartitionState(TOPIC, 0, parked_keys={KEY}), KEY)
            assert handler.seen == []
        # That process is gone (its session with it): the key is this one's to retry.
        owner.drain(PartitionState(TOPIC, 0, parked_keys={KEY}), KEY)
    assert len(handler.seen) == 1
    assert parked.count(name) == 0
