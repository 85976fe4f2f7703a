"""Attacks on process managers after issue 20 (cases 5, 6, 7, 9c), on the real PostgreSQL and Kafka.

An answer about a failed command means what the guide's table says: ``DiscardPending`` and
``ContinuePending`` drop the failed command, so nothing of it may commit with the event.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from eventstore import PostgresEventStore
from eventstore.errors import StreamNotFound
from tests.workers.worker_support import eventually, stack
from tidings import Application, EventMapper, JsonCodec, Router, TypeRegistry
from tidings.pytest_plugin import KafkaNamespace
from workers import EventMetadata
from workers.process_instances import ProcessInstances
from workers.process_manager import ProcessManager
from workers.process_routing import DiscardPending, Start, StartOrContinue

registry = TypeRegistry(namespace="pm-attack")


@registry.register
@dataclass(frozen=True)
class Begun:
    key: str


@registry.register
@dataclass(frozen=True)
class Emitted:
    key: str


@dataclass(frozen=True)
class Begin:
    key: str


@dataclass(frozen=True)
class Emit:
    key: str


@dataclass(frozen=True)
class Thing:
    """Its ``apply`` refuses an ``Emitted`` of a "bad-" stream: the command's events are appended, then
    applying them fails (``ExecutionFailed``), so the command fails after it wrote."""

    def execute(self, command: object) -> object:
        match command:
            case Begin(key=key):
                return Begun(key)
            case Emit(key=key):
                return Emitted(key)
        raise TypeError(command)

    def apply(self, event: object) -> Thing:
        if isinstance(event, Emitted) and event.key.startswith("bad-"):
            raise ValueError("cannot apply")
        return self


router = Router()
router.dispatch([Begin, Emit], to=Thing, identity="key", identity_prefix="thing-")
mapper = EventMapper(JsonCodec(registry))


def test_a_failed_command_answered_discard_pending_commits_nothing_of_it(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    # Breaks: "DiscardPending(): the failed command and the pending ones are dropped". The command's
    # events were appended in the event's transaction before it failed (its aggregate's apply raised),
    # and no savepoint undoes them: they commit with the event, as if the command had succeeded.
    asked: list[str] = []
    with stack(event_store, kafka_namespace, partitions=1, mapper=mapper, router=router) as s:

        class Emitter(ProcessManager):
            name = s.name("emitter")

            def interested(self, event: Any, metadata: EventMetadata) -> Any:
                return Start(event.key) if isinstance(event, Begun) else None

            def handle(self, state: Any, event: Any) -> Any:
                return [Emit(f"bad-{event.key}"), Emit(f"good-{event.key}")]

            def error(self, error: BaseException, failed: Any, context: Any) -> Any:
                asked.append(f"{type(failed).__name__}: {type(error).__name__}")
                return DiscardPending()

        key = str(uuid.uuid4())
        Application(event_store, mapper, router).dispatch(Begin(key))
        s.run(Emitter)
        instances = ProcessInstances(event_store)
        eventually(lambda: instances.get(Emitter.name, key) is not None, what="the event handled")
    assert asked == ["Emit: ExecutionFailed"]
    assert _types(event_store, f"thing-good-{key}") == [], "the pending command was dropped"
    written = _types(event_store, f"thing-bad-{key}")
    assert written == [], f"the failed command was dropped, yet its events committed: {written}"


def _types(store: PostgresEventStore, stream: str) -> list[str]:
    try:
        return [e.event_type for e in store.read_stream_forward(stream)]
    except StreamNotFound:
        return []


def test_a_cached_state_is_the_state_postgresql_holds(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    # Breaks: "a cache is a hint" (the state a decision is taken on does not depend on the cache). A
    # dict state is stored as JSON (a tuple becomes a list), but the cache kept the object apply
    # returned: the same event met a tuple on a cache hit and a list after a restart, another lane or
    # idle_timeout, and could decide other commands.
    states: list[object] = []
    with stack(event_store, kafka_namespace, partitions=1, mapper=mapper, router=router) as s:

        class Pairs(ProcessManager):
            name = s.name("pairs")

            def interested(self, event: Any, metadata: EventMetadata) -> Any:
                return StartOrContinue("one") if isinstance(event, Begun) else None

            def handle(self, state: Any, event: Any) -> Any:
                states.append(state.get("pairs"))
                return None

            def apply(self, state: Any, event: Any) -> Any:
                return {"pairs": [*state.get("pairs", []), (len(state.get("pairs", [])), event.key)]}

        app = Application(event_store, mapper, router)
        app.dispatch(Begin("a"))
        s.run(Pairs)
        eventually(lambda: len(states) == 1, what="the first event handled")
        app.dispatch(Begin("b"))
        eventually(lambda: len(states) == 2, what="the second event handled")
        stored = ProcessInstances(event_store).get(Pairs.name, "one")
    assert stored is not None
    assert stored.state == {"pairs": [[0, "a"], [1, "b"]]}
    assert states[1] == [[0, "a"]], f"handle met {states[1]!r}, PostgreSQL holds [[0, 'a']]"
