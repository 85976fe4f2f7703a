"""What the worker tests share: a small event vocabulary, appending it, a relay, and running handlers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from eventstore import ANY, PostgresEventStore
from eventstore.relay import Relay, RelayConfig
from eventstore.routing import Routing
from tests.eventstore.relay_support import wait_until
from tidings import EventMapper, JsonCodec, TypeRegistry
from tidings.pytest_plugin import KafkaNamespace
from workers.app import WorkerApp, WorkerConfig
from workers.handler import EventHandler
from workers.runner import HandlerRunner

__all__ = ["Noted", "Recorder", "Stack", "append_noted", "mapper", "wait_until"]

registry = TypeRegistry(namespace="tests")


@registry.register
@dataclass(frozen=True)
class Noted:
    key: str
    n: int
    group: str = ""


mapper = EventMapper(JsonCodec(registry))


def append_noted(
    store: PostgresEventStore, streams: int, per_stream: int, prefix: str = "s", group: str = ""
) -> list[tuple[str, int]]:
    """Append ``per_stream`` events to each of ``streams`` streams, interleaved; return (stream, n)s."""
    appended = []
    for n in range(per_stream):
        for s in range(streams):
            stream = f"{prefix}{s}"
            store.append_to_stream(
                stream, ANY, [mapper.to_event_data(Noted(stream, n, group), metadata={"user": "ada", "n": n})]
            )
            appended.append((stream, n))
    return appended


@dataclass
class Recorder:
    """What handlers saw, across threads: (stream_id, n, event_number) in the order each lane saw them."""

    seen: list[tuple[str, int, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, stream: str, n: int, number: int) -> None:
        with self.lock:
            self.seen.append((stream, n, number))

    def count(self) -> int:
        with self.lock:
            return len(self.seen)


class Stack:
    """A relay and handler runners for one test, all stopped at its end."""

    def __init__(
        self,
        store: PostgresEventStore,
        namespace: KafkaNamespace,
        partitions: int = 4,
        mapper: EventMapper = mapper,
    ) -> None:
        self.store = store
        self.mapper = mapper
        self.namespace = namespace
        self.app_name = namespace.topic("app")
        self.topic = f"{self.app_name}.events"
        self.partitions = partitions
        self.relay = Relay(
            store,
            RelayConfig(
                namespace.bootstrap_servers, app=self.app_name, partitions=partitions, batch_size=200
            ),
        )
        self.runners: list[HandlerRunner] = []
        self.config = WorkerConfig(store, namespace.bootstrap_servers, partitions=partitions)

    def app(self, *handlers: type[EventHandler]) -> WorkerApp:
        return WorkerApp(self.app_name, mapper=self.mapper, handlers=handlers, routing=Routing(self.topic))

    def run(self, handler: type[EventHandler]) -> HandlerRunner:
        runner = HandlerRunner(handler, self.app(handler), self.config)
        self.runners.append(runner)
        runner.start()
        return runner

    def name(self, name: str) -> str:
        return self.namespace.group(name)

    def close(self) -> None:
        for runner in self.runners:
            runner.stop()
        self.relay.stop()
        self.config.dispose()


@contextmanager
def stack(
    store: PostgresEventStore, namespace: KafkaNamespace, partitions: int = 4, mapper: EventMapper = mapper
) -> Iterator[Stack]:
    running = Stack(store, namespace, partitions, mapper)
    running.relay.start()
    try:
        yield running
    finally:
        running.close()


def eventually(condition: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    wait_until(condition, timeout, what)


def settle(seconds: float) -> None:
    """Let time pass for an outcome that must NOT happen (nothing to poll for)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)


class NotedWriters:
    """A thread appending ``Noted`` events round-robin to ``streams`` streams until stopped."""

    def __init__(self, store: PostgresEventStore, streams: int = 10, pause: float = 0.002) -> None:
        self.store = store
        self.streams = streams
        self.pause = pause
        self.appended: list[tuple[str, int]] = []
        self.error: BaseException | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="noted-writers", daemon=True)

    def __enter__(self) -> NotedWriters:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> list[tuple[str, int]]:
        self._stopping.set()
        self._thread.join(30)
        assert self.error is None, f"the writers failed: {self.error!r}"
        return self.appended

    def _run(self) -> None:
        number = 0
        try:
            while not self._stopping.is_set():
                stream = f"w{number % self.streams}"
                n = number // self.streams
                self.store.append_to_stream(stream, ANY, [mapper.to_event_data(Noted(stream, n))])
                self.appended.append((stream, n))
                number += 1
                self._stopping.wait(self.pause)
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.error = exc
