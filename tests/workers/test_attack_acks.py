"""Strong consistency attacked (issue 20, case 8): a dispatch returns only once every awaited handler has
handled every event of the dispatch, and it awaits only the handlers whose topics carry those events.

Each test runs a real relay and a real worker (PostgreSQL and Kafka) with a routing of its own: the
stream's events go to different topics, so one handler's lanes take them in parallel, out of stream
order, and a handler that reads only some topics never sees the others.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from eventstore import PostgresEventStore
from eventstore.acknowledgements import WINDOW, Acknowledgements, Carried
from eventstore.relay import Relay, RelayConfig
from eventstore.routing import Route, Routing
from tests.workers.worker_support import eventually, settle
from tidings import Application, ConsistencyTimeout, EventMapper, JsonCodec, Router, TypeRegistry
from tidings.pytest_plugin import KafkaNamespace
from workers.app import WorkerApp, WorkerConfig
from workers.delivery import EventMetadata
from workers.handler import EventHandler
from workers.runner import HandlerRunner

registry = TypeRegistry(namespace="acks")


@registry.register
@dataclass(frozen=True)
class First:
    key: str


@registry.register
@dataclass(frozen=True)
class Second:
    key: str


@registry.register
@dataclass(frozen=True)
class Audited:
    key: str


@dataclass(frozen=True)
class Pair:
    """Produces First then Second: versions 1 and 2 of a new stream, in one dispatch."""

    key: str


@dataclass(frozen=True)
class Touch:
    key: str


@dataclass(frozen=True)
class Audit:
    key: str


@dataclass(frozen=True)
class Thing:
    def execute(self, command: object) -> list[object]:
        match command:
            case Pair(key=key):
                return [First(key), Second(key)]
            case Touch(key=key):
                return [First(key)]
            case Audit(key=key):
                return [Audited(key)]
        raise TypeError(command)

    def apply(self, event: object) -> Thing:
        return self


router = Router()
router.dispatch([Pair, Touch, Audit], to=Thing, identity="key", identity_prefix="thing-")
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


def test_a_strong_dispatch_waits_for_each_of_its_events_even_when_handled_out_of_stream_order(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    app_name = kafka_namespace.topic("app")
    # A stream's First and Second go to two topics: a handler with two lanes takes them in parallel.
    routing = Routing(
        f"{app_name}.events", by_event_type={registry.name_of(Second): Route(topic=f"{app_name}.second")}
    )
    gate, first_handled, second_handled = threading.Event(), threading.Event(), threading.Event()

    class SlowOnFirst(EventHandler):
        name = kafka_namespace.group("slow-on-first")
        concurrency = 2
        consistency = "strong"

        def handle(self, event: object, metadata: EventMetadata) -> None:
            if isinstance(event, First):
                gate.wait(60)  # version 1 takes long; version 2, on the other lane, does not
                first_handled.set()
            else:
                second_handled.set()

    app = Application(event_store, mapper, router)
    outcome: dict[str, object] = {}

    def dispatch() -> None:
        try:
            app.dispatch(Pair(str(uuid.uuid4())), consistency="strong", timeout=60)
            outcome["first handled at return"] = first_handled.is_set()
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = exc

    with running(event_store, kafka_namespace, routing, SlowOnFirst):
        dispatcher = threading.Thread(target=dispatch, daemon=True)
        dispatcher.start()
        try:
            eventually(second_handled.is_set, what="version 2 handled while version 1 is still in hand")
            settle(1.0)  # the dispatch must NOT return now: version 1 is not handled yet
            assert "first handled at return" not in outcome, (
                "the strong dispatch returned before version 1 of its stream was handled"
            )
        finally:
            gate.set()
        dispatcher.join(60)
    assert outcome == {"first handled at return": True}


def test_a_strong_dispatch_does_not_wait_for_a_handler_whose_topics_never_carry_its_events(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    app_name = kafka_namespace.topic("app")
    routing = Routing(
        f"{app_name}.events", by_event_type={registry.name_of(Audited): Route(topic=f"{app_name}.audit")}
    )
    seen: list[str] = []

    class MainTopicOnly(EventHandler):
        name = kafka_namespace.group("main-topic-only")
        consistency = "strong"
        topics = (f"{app_name}.events",)

        def handle(self, event: object, metadata: EventMetadata) -> None:
            seen.append(type(event).__name__)

    app = Application(event_store, mapper, router)
    with running(event_store, kafka_namespace, routing, MainTopicOnly):
        key = str(uuid.uuid4())
        app.dispatch(Touch(key), consistency="strong", timeout=30)  # carried: waited for, and handled
        assert seen == ["First"]
        started = time.monotonic()
        try:
            app.dispatch(Audit(key), consistency="strong", timeout=5)
        except ConsistencyTimeout as exc:
            pytest.fail(f"waited {time.monotonic() - started:.1f} s for a handler that never sees it: {exc}")
        # A later carried event is still waited for.
        app.dispatch(Touch(key), consistency="strong", timeout=30)
        assert seen == ["First", "First"]


def test_acknowledgements_hold_each_version_in_any_order_and_forget_only_far_below_the_highest(
    event_store: PostgresEventStore,
) -> None:
    acks = Acknowledgements(event_store)
    for version in (3, 1, 5):
        acks.acknowledge("h", "s-1", version)
    assert acks.pending(["h"], "s-1", [1, 3, 5]) == []
    assert acks.pending(["h"], "s-1", range(1, 4)) == ["h"], "version 2 was never acknowledged"
    acks.acknowledge("h", "s-1", [2, 4])
    assert acks.pending(["h"], "s-1", range(1, 6)) == []
    # A run that reaches into the window is kept whole (one range, however long)...
    acks.acknowledge("h", "s-1", WINDOW + 1)
    assert acks.pending(["h"], "s-1", [*range(1, 6), WINDOW + 1]) == []
    # ...a run that ends far below the newest is forgotten: a dispatch waiting on it would wait.
    acks.acknowledge("h", "s-1", WINDOW + 10)
    assert acks.pending(["h"], "s-1", WINDOW + 10) == []
    assert acks.pending(["h"], "s-1", 1) == ["h"]
    assert acks.pending(["h"], "s-1", range(2, 6)) == ["h"]


def test_what_reaches_a_handlers_topics_follows_the_routing() -> None:
    routing = Routing(
        "bank.events",
        by_event_type={"bank.AuditNoted": Route(topic="bank.audit"), "bank.Opened": Route(key="event_id")},
        by_category={"transfer": Route(topic="bank.transfers")},
    )
    main = Carried.by(routing, ["bank.events"])
    assert main.carries("bank.Opened", "transfer-1"), "the event type's rule wins over the category's"
    assert not main.carries("bank.AuditNoted", "account-1")
    assert not main.carries("bank.Moved", "transfer-1")
    assert main.carries("bank.Moved", "account-1")
    assert Carried.of_document(json.loads(main.document() or "null")) == main
    assert Carried.by(routing, routing.topics()).document() is None, "every event: stored as NULL"
    assert Carried.by(Routing("app.handler.by-key"), ["app.handler.by-key"]).everything


def test_a_handler_reading_its_own_repartitioned_topic_is_awaited_for_every_event(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    # partition_by="category" while the relay keys by stream: the worker republishes every event to a
    # topic of the handler's own, which is not one of the routing's topics. It still carries them all.
    routing = Routing(f"{kafka_namespace.topic('app')}.events")
    gate, handled = threading.Event(), threading.Event()

    class ByCategory(EventHandler):
        name = kafka_namespace.group("by-category")
        consistency = "strong"
        partition_by = "category"

        def handle(self, event: object, metadata: EventMetadata) -> None:
            gate.wait(60)
            handled.set()

    app = Application(event_store, mapper, router)
    outcome: dict[str, object] = {}

    def dispatch() -> None:
        try:
            app.dispatch(Touch(str(uuid.uuid4())), consistency="strong", timeout=60)
            outcome["handled at return"] = handled.is_set()
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = exc

    with running(event_store, kafka_namespace, routing, ByCategory) as runner:
        assert runner.topics != routing.topics()
        dispatcher = threading.Thread(target=dispatch, daemon=True)
        dispatcher.start()
        try:
            settle(1.0)  # the dispatch must NOT return now: the handler holds its event
            assert outcome == {}, "the strong dispatch did not wait for the repartitioning handler"
        finally:
            gate.set()
        dispatcher.join(60)
    assert outcome == {"handled at return": True}
