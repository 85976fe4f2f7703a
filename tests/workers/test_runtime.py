"""The runner's duties besides handling: graceful stops, metrics, Kafka going away and coming back."""

from __future__ import annotations

import threading

import sqlalchemy as sa
from prometheus_client import REGISTRY

from eventstore import PostgresEventStore
from tests.eventstore.relay_support import Writers
from tests.workers.worker_support import (
    Noted,
    Recorder,
    Tally,
    append_noted,
    counters,
    eventually,
    noted,
    read,
    stack,
)
from tidings.devservices import LocalKafka
from tidings.pytest_plugin import KafkaNamespace
from workers.delivery import EventMetadata
from workers.handler import EventHandler
from workers.parking import ParkedEvents


def test_a_stop_finishes_the_event_in_flight_and_the_next_run_does_not_repeat_it(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    recorder = Recorder()
    entered = threading.Event()
    release = threading.Event()
    with stack(event_store, kafka_namespace, partitions=1) as s:

        class Slow(EventHandler):
            name = s.name("slow")

            def handle(self, event: Noted, metadata: EventMetadata) -> None:
                if event.n == 2 and not entered.is_set():
                    entered.set()
                    release.wait(30)
                recorder.add(metadata.stream_id, event.n, metadata.event_number)

        append_noted(event_store, streams=1, per_stream=5)
        runner = s.run(Slow)
        eventually(entered.is_set, what="the slow event in flight")
        stopping = threading.Thread(target=runner.stop)
        stopping.start()
        eventually(runner.stopping.is_set, what="the stop asked")
        release.set()
        stopping.join(30)
        assert not stopping.is_alive()
        assert [n for _, n, _ in recorder.seen] == [0, 1, 2], (
            "the event in flight finished, no later one began"
        )
        s.run(Slow)
        eventually(lambda: recorder.count() >= 5, what="the rest")
    assert [n for _, n, _ in recorder.seen] == [0, 1, 2, 3, 4]


def test_metrics_count_outcomes_and_show_the_lag_per_partition(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    recorder = Recorder()
    with stack(event_store, kafka_namespace, partitions=2) as s:

        class Measured(EventHandler):
            name = s.name("measured")
            start_from = 2

            def handle(self, event: Noted, metadata: EventMetadata) -> None:
                recorder.add(metadata.stream_id, event.n, metadata.event_number)

        def sample(metric: str, **labels: str) -> float:
            return REGISTRY.get_sample_value(metric, {"handler": Measured.name, **labels}) or 0.0

        append_noted(event_store, streams=4, per_stream=3)
        s.run(Measured)
        eventually(lambda: recorder.count() >= 10, what="ten events")
        eventually(
            lambda: (
                sample("tidings_handler_events_total", outcome="handled") == 10
                and sample("tidings_handler_events_total", outcome="filtered") == 2
            ),
            what="outcomes counted",
        )
        assert sample("tidings_handler_running") == 1
        assert sample("tidings_handler_handle_seconds_count") == 10
        assert sample("tidings_handler_end_to_end_seconds_count") == 10
        eventually(
            lambda: all(
                REGISTRY.get_sample_value(
                    "tidings_handler_lag_messages",
                    {"handler": Measured.name, "topic": s.topic, "partition": p},
                )
                == 0
                for p in ("0", "1")
            ),
            timeout=30,
            what="no lag on either partition",
        )


def test_a_projection_goes_on_exactly_once_after_kafka_stops_and_restarts(
    event_store: PostgresEventStore, own_broker: LocalKafka
) -> None:
    table = counters(event_store)
    namespace = KafkaNamespace(own_broker.bootstrap_servers, "t.outage.")
    projected = {"count": 0}
    with stack(event_store, namespace, partitions=3) as s:

        class Counting(Tally):
            name = s.name("counting")
            tables = (table,)
            concurrency = 3

            def after_update(self, event: Noted, metadata: EventMetadata) -> None:
                projected["count"] += 1

        s.run(Counting)
        with Writers(event_store, streams=10, make=noted) as writers:
            eventually(lambda: projected["count"] > 50, what="projecting before the outage")
            own_broker.pause()
            stopped_at = len(writers.appended)
            eventually(lambda: len(writers.appended) > stopped_at + 200, what="appends during the outage")
            own_broker.resume()
            eventually(lambda: projected["count"] > stopped_at + 100, timeout=120, what="after the outage")
            writers.stop()
        total = len(writers.appended)
        eventually(
            lambda: read(event_store, "SELECT coalesce(sum(events), 0) FROM counters")[0][0] >= total,
            timeout=120,
            what="every event projected",
        )
        per_stream = dict(read(event_store, "SELECT stream_id, events FROM counters"))
    assert sum(per_stream.values()) == total, "no event lost, none projected twice"


def test_a_projection_waits_out_lost_postgresql_connections_without_parking_or_repeating(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    table = counters(event_store)
    cut: set[tuple[str, int]] = set()
    with stack(event_store, kafka_namespace, partitions=2) as s:

        class Counting(Tally):
            name = s.name("counting")
            tables = (table,)
            concurrency = 2

            def project(self, event: Noted, metadata: EventMetadata, connection: sa.Connection) -> None:
                super().project(event, metadata, connection)
                if event.n == 3 and (event.key, event.n) not in cut:
                    # The server ends this very session in the middle of the projection's transaction.
                    cut.add((event.key, event.n))
                    pid = connection.execute(sa.text("SELECT pg_backend_pid()")).scalar()
                    with event_store.connection() as other:
                        other.execute("SELECT pg_terminate_backend(%s)", (pid,))

        errors = REGISTRY.get_sample_value(
            "tidings_handler_errors_total", {"handler": Counting.name, "kind": "postgres"}
        )
        appended = append_noted(event_store, streams=6, per_stream=8)
        s.run(Counting)
        eventually(
            lambda: read(event_store, "SELECT coalesce(sum(events), 0) FROM counters")[0][0] >= len(appended),
            timeout=120,
            what="every event projected",
        )
        per_stream = dict(read(event_store, "SELECT stream_id, events FROM counters"))
    assert len(cut) == 6, "each stream's connection was cut once"
    assert per_stream == {f"s{i}": 8 for i in range(6)}, "no event lost, none projected twice"
    assert ParkedEvents(event_store).count(Counting.name) == 0, "a lost connection is not the event's fault"
    after = REGISTRY.get_sample_value(
        "tidings_handler_errors_total", {"handler": Counting.name, "kind": "postgres"}
    )
    assert (after or 0) - (errors or 0) >= 6, "each cut shows in tidings_handler_errors_total"
