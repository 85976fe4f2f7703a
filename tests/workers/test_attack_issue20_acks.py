"""Attacks on strong consistency (issue 20, case 8) after its fix, on the real PostgreSQL and Kafka.

The acknowledgement window (``WINDOW`` versions) must only ever make a dispatch wait longer for events
that are not handled: a dispatch whose events are all handled must return, however many it appended.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg

from eventstore import PostgresEventStore
from eventstore.acknowledgements import WINDOW, Acknowledgements
from eventstore.relay import Relay, RelayConfig
from eventstore.routing import Routing
from tests.workers.worker_support import eventually
from tidings import Application, EventMapper, JsonCodec, Router, TypeRegistry
from tidings.pytest_plugin import KafkaNamespace
from workers.app import WorkerApp, WorkerConfig
from workers.delivery import EventMetadata
from workers.handler import EventHandler
from workers.runner import HandlerRunner

registry = TypeRegistry(namespace="acks-window")

BULK = WINDOW + 200
"""More versions than the window, appended by one command."""


@registry.register
@dataclass(frozen=True)
class Line:
    key: str
    n: int


@dataclass(frozen=True)
class Import:
    """Appends ``BULK`` events to one new stream in one dispatch (a batch import)."""

    key: str


@dataclass(frozen=True)
class Ledger:
    def execute(self, command: object) -> list[object]:
        assert isinstance(command, Import)
        return [Line(command.key, n) for n in range(BULK)]

    def apply(self, event: object) -> Ledger:
        return self


router = Router()
router.dispatch([Import], to=Ledger, identity="key", identity_prefix="ledger-")
mapper = EventMapper(JsonCodec(registry))


@contextmanager
def running(
    store: PostgresEventStore, namespace: KafkaNamespace, routing: Routing, handler: type[EventHandler]
) -> Iterator[HandlerRunner]:
    """A relay publishing with ``routing`` and a worker running ``handler``, until the block ends."""
    relay = Relay(
        store,
        RelayConfig(namespace.bootstrap_servers, app=namespace.topic("app"), routing=routing, partitions=1),
    )
    config = WorkerConfig(store, namespace.bootstrap_servers, partitions=1)
    app = WorkerApp(namespace.topic("app"), mapper=mapper, handlers=[handler], routing=routing)
    runner = HandlerRunner(handler, app, config)
    relay.start()
    runner.start()
    try:
        eventually(lambda: runner.status.state == "running", what="the handler running")
        yield runner
    finally:
        runner.stop()
        relay.stop()
        config.dispose()


def test_every_version_of_a_dispatch_larger_than_the_window_stays_acknowledged(
    event_store: PostgresEventStore,
) -> None:
    # Breaks: "a strong dispatch returns once each awaited handler handled every event". One
    # acknowledgement of versions 1..BULK is trimmed to its top WINDOW versions at once, so the
    # dispatch's first versions read as never acknowledged and it can only time out.
    acks = Acknowledgements(event_store)
    acks.acknowledge("h", "ledger-1", range(1, BULK + 1))
    assert acks.pending(["h"], "ledger-1", range(1, BULK + 1)) == [], (
        "versions acknowledged a moment ago were forgotten by the same acknowledgement"
    )
    # In two polls' worth, as a worker acknowledges them.
    acks.acknowledge("h", "ledger-2", range(1, 501))
    acks.acknowledge("h", "ledger-2", range(501, BULK + 1))
    assert acks.pending(["h"], "ledger-2", range(1, BULK + 1)) == []


def test_a_strong_dispatch_of_more_events_than_the_window_returns_once_all_are_handled(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    # Breaks the same guarantee end to end: the handler handles all BULK events, and the dispatch
    # raises ConsistencyTimeout all the same (a caller retrying it imports everything twice).
    handled: list[int] = []

    class Importer(EventHandler):
        name = kafka_namespace.group("importer")
        consistency = "strong"

        def handle(self, event: Line, metadata: EventMetadata) -> None:
            handled.append(metadata.stream_version)

    app = Application(event_store, mapper, router)
    routing = Routing(f"{kafka_namespace.topic('app')}.events")
    with running(event_store, kafka_namespace, routing, Importer):
        key = str(uuid.uuid4())
        try:
            app.dispatch(Import(key), consistency="strong", timeout=20)
            outcome = "returned"
        except Exception as exc:  # noqa: BLE001 - the assertion reports it
            outcome = f"{type(exc).__name__}: {exc}"
        eventually(lambda: len(handled) == BULK, timeout=30, what="every event handled")
    assert sorted(handled) == list(range(1, BULK + 1))
    assert outcome == "returned", f"every event was handled, but the strong dispatch said {outcome}"


def test_two_lanes_acknowledging_the_same_streams_in_opposite_orders_do_not_deadlock(
    event_store: PostgresEventStore,
) -> None:
    # Breaks: "no deadlock that stalls" under concurrency > 1. Two lanes of one strong handler take a
    # stream's events on two partitions (a routing keyed by something else than the stream) and each
    # acknowledges its poll's streams in the order it handled them: opposite orders lock the same
    # (handler, stream) rows in opposite orders. PostgreSQL ends one transaction as a deadlock, which
    # a plain handler meets after its effects are done (the poll is handled again: effects twice).
    acks = Acknowledgements(event_store)
    outcome: dict[str, object] = {}
    with event_store.connection() as first:
        acks.acknowledge_many("h", [("s-1", [1])], first)  # lane 1 holds s-1's row...

        def second_lane() -> None:
            try:
                with event_store.connection() as second:
                    acks.acknowledge_many("h", [("s-2", [1]), ("s-1", [2])], second)
                outcome["second"] = "committed"
            except Exception as exc:  # noqa: BLE001 - the assertion reports it
                outcome["second"] = f"{type(exc).__name__}: {exc}"

        lane = threading.Thread(target=second_lane, daemon=True)
        lane.start()
        with psycopg.connect(event_store.config.url, autocommit=True) as watcher:
            pid = first.info.backend_pid
            eventually(
                lambda: bool(
                    watcher.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
                        (pid,),
                    ).fetchone()[0]  # type: ignore[index]
                ),
                timeout=10,
                what="lane 2 waiting on lane 1",
            )
        try:
            acks.acknowledge_many("h", [("s-2", [2])], first)  # ...and then needs s-2's
            outcome["first"] = "committed"
        except Exception as exc:
            outcome["first"] = f"{type(exc).__name__}: {exc}"
            raise AssertionError(f"lane 1 failed: {outcome}") from exc
    lane.join(30)
    assert outcome == {"first": "committed", "second": "committed"}
    assert acks.pending(["h"], "s-1", [1, 2]) == []
    assert acks.pending(["h"], "s-2", [1, 2]) == []
