"""The runtime under what production does to it: PostgreSQL restarts, stale owners, retention,
failing hooks, handlers changing their consistency, acknowledgements piling up."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient
from prometheus_client import REGISTRY
from psycopg import sql

from eventstore import PostgresEventStore, StoreConfig, StoreUnavailable, migrate
from eventstore.acknowledgements import Acknowledgements
from tests.workers.worker_support import (
    Noted,
    Recorder,
    Tally,
    append_noted,
    counters,
    eventually,
    kafka_headers,
    mapper,
    read,
    stack,
)
from tidings.devservices import LocalPostgres
from tidings.pytest_plugin import KafkaNamespace
from workers import EventHandler, EventMetadata
from workers.delivery import Delivery, delivery_of
from workers.execution import Executor, PartitionState, Shared
from workers.parking import ParkedEvents
from workers.positions import Positions


@pytest.fixture
def own_postgres() -> Iterator[LocalPostgres]:
    """A PostgreSQL cluster of this test's own, which it may stop and start again."""
    cluster = LocalPostgres()
    cluster.start()
    yield cluster
    cluster.stop(keep_logs=False)


def test_handlers_and_the_sequencer_ride_out_a_postgresql_restart(
    own_postgres: LocalPostgres, kafka_namespace: KafkaNamespace
) -> None:
    config = StoreConfig(own_postgres.url, "outage")
    migrate(config)
    store = PostgresEventStore(config)
    table = counters(store)
    recorder = Recorder()
    try:
        with stack(store, kafka_namespace, partitions=2) as s:

            class Counting(Tally):
                name = s.name("counting")
                tables = (table,)
                concurrency = 2

            class Plain(EventHandler):
                name = s.name("plain")
                consistency = "strong"
                ordering = "per_key"

                def handle(self, event: Noted, metadata: EventMetadata) -> None:
                    recorder.add(metadata.stream_id, event.n, metadata.event_number)

            in_order: list[int] = []

            class Global(EventHandler):
                # Global order cannot confirm its leadership while PostgreSQL is away: it stands by, and
                # leads again (from its committed position) once the lock can be taken.
                name = s.name("global")

                def handle(self, event: Noted, metadata: EventMetadata) -> None:
                    in_order.append(metadata.event_number)

            runners = [s.run(Counting), s.run(Plain), s.run(Global)]
            first = append_noted(store, streams=4, per_stream=5)
            eventually(lambda: recorder.count() >= len(first), what="handled before the outage")

            def waits() -> float:
                return (
                    REGISTRY.get_sample_value(
                        "tidings_handler_errors_total", {"handler": Plain.name, "kind": "postgres"}
                    )
                    or 0.0
                )

            before = waits()
            own_postgres.pause()
            # Handlers notice (their periodic reads fail) and wait; they do not give up.
            eventually(lambda: waits() > before, what="the outage noticed")
            assert all(r.status.state == "running" for r in runners[:2])
            own_postgres.resume()
            eventually(lambda: answers(store), what="the store answers again")
            second = append_noted(store, streams=4, per_stream=5, prefix="after")
            total = len(first) + len(second)
            # The sequencer numbers the new events, the relay publishes them, both handlers get them.
            eventually(lambda: recorder.count() >= total, timeout=120, what="handled after the outage")
            eventually(
                lambda: read(store, "SELECT coalesce(sum(events), 0) FROM counters")[0][0] >= total,
                timeout=120,
                what="projected after the outage",
            )
            eventually(lambda: len(set(in_order)) >= total, timeout=120, what="the global handler caught up")
            eventually(lambda: all(r.status.state == "running" for r in runners), what="all running again")
        # At least once across the step-down (a plain handler), but never out of order.
        assert sorted(set(in_order)) == list(range(1, total + 1))
        first_seen = [n for i, n in enumerate(in_order) if n not in in_order[:i]]
        assert first_seen == sorted(first_seen)
        projected = dict(read(store, "SELECT stream_id, events FROM counters"))
        assert sum(projected.values()) == total, "each event projected once"
        assert sorted((st, n) for st, n, _ in recorder.seen) == sorted(first + second)
    finally:
        store.close()


def answers(store: PostgresEventStore) -> bool:
    """Whether the store answers (the first use of each session cut by a restart says it was cut)."""
    try:
        store.last_event_number()
    except StoreUnavailable:
        return False
    return True


def _deliveries(store: PostgresEventStore, count: int) -> list[Delivery]:
    """``count`` events appended to stream s0, as the relay's messages at offsets 0.. carry them (the
    executor handles only events the store confirms as its own)."""
    append_noted(store, streams=1, per_stream=count)
    eventually(lambda: len(store.read_all_forward(1, count)) == count, what="the events numbered")
    return [
        delivery_of("topic", 0, offset, b"s0", recorded.data, kafka_headers(recorded))
        for offset, recorded in enumerate(store.read_all_forward(1, count))
    ]


def test_a_stale_owner_of_a_partition_stands_down_instead_of_projecting_twice(
    event_store: PostgresEventStore,
) -> None:
    table = counters(event_store)

    class Counting(Tally):
        name = "fenced"
        tables = (table,)

    positions = Positions(event_store)
    engine = sa.create_engine(
        f"postgresql+psycopg://{event_store.config.url.removeprefix('postgresql://')}", pool_size=2
    )
    resynced: list[PartitionState] = []
    shared = Shared(
        name="fenced",
        store=event_store,
        mapper=mapper,
        subscription=positions.subscribe("fenced", "origin"),
        subscribe_to="all",
        positions=positions,
        parked=ParkedEvents(event_store),
        acknowledgements=None,
        stopping=__import__("threading").Event(),
        engine=engine,
        resync=resynced.append,
    )
    owner, stale = Executor(Counting(), shared), Executor(Counting(), shared)
    # Both were assigned the partition at the same checkpoint (none yet); the owner goes first.
    mine, theirs = PartitionState("topic", 0), PartitionState("topic", 0)
    one, two, three = _deliveries(event_store, 3)
    owner.process(mine, [one, two])
    assert mine.next_offset == 2
    stale.process(theirs, [one, two, three])
    assert theirs.revoked.is_set(), "the stale owner stood down"
    assert resynced == [theirs], "and asked for its position to be read again"
    owner.process(mine, [three])
    engine.dispose()
    assert read(event_store, "SELECT events, last_n FROM counters") == [(3, 2)], "each event once"  # n 0..2


def test_positions_that_retention_deleted_past_stop_the_handler_with_a_clear_reason(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    recorder = Recorder()
    with stack(event_store, kafka_namespace, partitions=1) as s:

        class Reader(EventHandler):
            name = s.name("reader")

            def handle(self, event: Noted, metadata: EventMetadata) -> None:
                recorder.add(metadata.stream_id, event.n, metadata.event_number)

        class Late(EventHandler):
            name = s.name("late")

            def handle(self, event: Noted, metadata: EventMetadata) -> None:
                recorder.add(metadata.stream_id, event.n, metadata.event_number)

        class Current(Late):
            name = s.name("current")
            start_from = "current"

        append_noted(event_store, streams=1, per_stream=3)
        runner = s.run(Reader)
        eventually(lambda: recorder.count() >= 3, what="three handled")
        runner.stop()
        append_noted(event_store, streams=1, per_stream=5, prefix="more")
        eventually(lambda: s.relay.last_published >= 8, what="all relayed")
        admin = AdminClient({"bootstrap.servers": kafka_namespace.bootstrap_servers})
        for future in admin.delete_records([TopicPartition(s.topic, 0, 6)]).values():
            future.result(timeout=30)  # retention's work, done at once: offsets 0..5 are gone

        again = s.run(Reader)
        eventually(lambda: again.status.state == "failed", what="the reader stops")
        assert "stopped at offset 3" in again.status.reason
        assert "retention deleted the events before it" in again.status.reason
        late = s.run(Late)
        eventually(lambda: late.status.state == "failed", what="an origin handler refuses")
        assert "starting from the origin needs every event" in late.status.reason
        current = s.run(Current)
        eventually(lambda: current.status.state == "running", what="a current handler starts")
    assert recorder.count() == 3, "nothing was handled with events missing"


def test_failures_in_after_update_and_partition_by_are_counted_not_fatal(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    table = counters(event_store)
    seen: list[int] = []
    with stack(event_store, kafka_namespace, partitions=2) as s:

        class Grumpy(Tally):
            name = s.name("grumpy")
            tables = (table,)

            def after_update(self, event: Noted, metadata: EventMetadata) -> None:
                raise RuntimeError("the cache is down")

        class Keyed(EventHandler):
            name = s.name("keyed")

            def partition_by(self, event: Noted, metadata: EventMetadata) -> str:
                if event.n == 1:
                    raise KeyError("no group")
                return event.key

            def handle(self, event: Noted, metadata: EventMetadata) -> None:
                seen.append(metadata.event_number)

        appended = append_noted(event_store, streams=2, per_stream=3)
        grumpy, keyed = s.run(Grumpy), s.run(Keyed)
        eventually(lambda: len(seen) >= len(appended), what="every event reached the keyed handler")
        eventually(
            lambda: read(event_store, "SELECT coalesce(sum(events), 0) FROM counters")[0][0] >= len(appended),
            what="every event projected",
        )
        assert grumpy.status.state == keyed.status.state == "running"
    assert sorted(seen) == list(range(1, len(appended) + 1))


def test_handlers_register_their_consistency_and_old_acknowledgements_expire(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    acks = Acknowledgements(event_store)
    with stack(event_store, kafka_namespace, partitions=1) as s:
        name = s.name("balances")
        acks.register_strong(name)  # a previous release was strongly consistent
        acks.acknowledge(name, "account-old", 3)
        with event_store.connection() as conn:
            conn.execute(
                sql.SQL("UPDATE {} SET acknowledged_at = now() - interval '2 hours'").format(
                    sql.Identifier(event_store.config.schema, "handler_acks")
                )
            )

        class Eventual(EventHandler):
            def handle(self, event: Noted, metadata: EventMetadata) -> None:
                pass

        Eventual.name = name
        runner = s.run(Eventual)
        eventually(lambda: runner.status.state == "running", what="running")
        eventually(lambda: name not in acks.strong_handlers(), what="no longer waited for")
        runner.stop()

        class Strong(Eventual):
            consistency = "strong"

        s.run(Strong)
        eventually(lambda: name in acks.strong_handlers(), what="waited for again")
        eventually(lambda: acks.pending([name], "account-old", 3) == [name], what="the old row expired")
