"""What the worker tests share: a small event vocabulary, appending it, a relay, and running handlers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from psycopg import sql

from eventstore import ANY, EventData, PostgresEventStore
from eventstore.records import RecordedEvent
from eventstore.relay import OutgoingEvent, Relay, RelayConfig, headers
from eventstore.routing import Routing
from tests.eventstore.relay_support import wait_until
from tidings import EventMapper, JsonCodec, TypeRegistry
from tidings.pytest_plugin import KafkaNamespace
from tidings.router import Router
from workers.app import WorkerApp, WorkerConfig
from workers.delivery import EventMetadata
from workers.handler import EventHandler
from workers.projection import Projection
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
        router: Router | None = None,
    ) -> None:
        self.store = store
        self.mapper = mapper
        self.router = router
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
        return WorkerApp(
            self.app_name,
            mapper=self.mapper,
            handlers=handlers,
            routing=Routing(self.topic),
            router=self.router,
        )

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
    store: PostgresEventStore,
    namespace: KafkaNamespace,
    partitions: int = 4,
    mapper: EventMapper = mapper,
    router: Router | None = None,
) -> Iterator[Stack]:
    running = Stack(store, namespace, partitions, mapper, router)
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


def noted(stream: str, n: int) -> EventData:
    """What ``Writers(make=noted)`` appends: the stream's ``n``-th ``Noted``, which handlers decode."""
    return mapper.to_event_data(Noted(stream, n))


def kafka_headers(recorded: RecordedEvent) -> list[tuple[str, bytes]]:
    """The headers the relay publishes ``recorded`` with, as a consumer gets them back (the client
    encodes text values to UTF-8)."""
    return [
        (name, v.encode() if isinstance(v, str) else v) for name, v in headers(OutgoingEvent.of(recorded))
    ]


def counters(store: PostgresEventStore) -> sa.Table:
    """The ``counters`` table of ``Tally``, created in the store's schema."""
    table = sa.Table(
        "counters",
        sa.MetaData(),
        sa.Column("stream_id", sa.Text, primary_key=True),
        sa.Column("events", sa.Integer, nullable=False),
        sa.Column("last_n", sa.Integer, nullable=False),
        schema=store.config.schema,
    )
    with store.connection() as conn:
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} (stream_id text PRIMARY KEY, events int NOT NULL, last_n int NOT NULL)"
            ).format(sql.Identifier(store.config.schema, "counters"))
        )
    return table


def read(store: PostgresEventStore, query: str) -> list[tuple[Any, ...]]:
    """Rows of ``query``, run in the store's schema."""
    with store.connection() as conn:
        conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(store.config.schema)))
        return conn.execute(query).fetchall()  # type: ignore[arg-type]


class Tally(Projection):
    """Counts events per stream in ``counters`` (``tables[0]``): not idempotent on purpose, so a
    repeated effect shows in the count."""

    def project(self, event: Noted, metadata: EventMetadata, connection: sa.Connection) -> None:
        schema = self.tables[0].schema
        connection.execute(
            sa.text(
                f'INSERT INTO "{schema}".counters VALUES (:s, 1, :n) ON CONFLICT (stream_id) '
                "DO UPDATE SET events = counters.events + 1, last_n = excluded.last_n"
            ),
            {"s": metadata.stream_id, "n": event.n},
        )
