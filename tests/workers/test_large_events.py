"""The largest event the store accepts reaches handlers: directly, repartitioned, and dead-lettered."""

from __future__ import annotations

import os
from dataclasses import dataclass

from eventstore import ANY, EventData, PostgresEventStore
from tests.eventstore.relay_support import read_committed
from tests.workers.worker_support import eventually, stack
from tidings import EventMapper, JsonCodec, TypeRegistry
from tidings.pytest_plugin import KafkaNamespace
from workers.delivery import EventMetadata
from workers.failure import ErrorAnswer, FailureContext, Park
from workers.handler import EventHandler

registry = TypeRegistry(namespace="large")


@registry.register
@dataclass(frozen=True)
class Blob:
    n: int
    payload: str


mapper = EventMapper(JsonCodec(registry))


def blob(n: int, size: int = 0) -> EventData:
    """The ``n``-th blob; with ``size``, padded so that its data and metadata are ``size`` bytes exactly
    (random hex: as good as incompressible for lz4)."""
    event = mapper.to_event_data(Blob(n, ""))
    if size:
        padding = size - len(event.data) - len(event.metadata)
        event = mapper.to_event_data(Blob(n, os.urandom(padding // 2 + 1).hex()[:padding]))
        assert len(event.data) + len(event.metadata) == size
    return event


def append_blobs(store: PostgresEventStore) -> list[int]:
    """Blobs 0..4 in one append, number 2 of the largest size the store accepts."""
    store.append_to_stream(
        "blobs-1", ANY, [blob(0), blob(1), blob(2, store.config.max_event_bytes), blob(3), blob(4)]
    )
    return [0, 1, 2, 3, 4]


def test_handlers_receive_the_largest_event_directly_and_repartitioned(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    direct: list[tuple[int, int]] = []
    repartitioned: list[tuple[int, int]] = []
    with stack(event_store, kafka_namespace, partitions=2, mapper=mapper) as s:

        class Direct(EventHandler):
            name = s.name("direct")

            def handle(self, event: Blob, metadata: EventMetadata) -> None:
                direct.append((event.n, len(event.payload)))

        class ByParity(EventHandler):
            name = s.name("by-parity")

            def partition_by(self, event: Blob, metadata: EventMetadata) -> str:
                return str(event.n % 2)

            def handle(self, event: Blob, metadata: EventMetadata) -> None:
                repartitioned.append((event.n, len(event.payload)))

        appended = append_blobs(event_store)
        s.run(Direct)
        s.run(ByParity)
        eventually(lambda: len(direct) >= len(appended), what="every blob handled directly")
        eventually(lambda: len(repartitioned) >= len(appended), what="every blob repartitioned")
    assert [n for n, _ in direct] == appended
    assert sorted(n for n, _ in repartitioned) == appended
    for seen in (direct, repartitioned):
        assert dict(seen)[2] > event_store.config.max_event_bytes - 200, "the large blob whole"


def test_the_largest_event_can_be_dead_lettered(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    handled: list[int] = []
    with stack(event_store, kafka_namespace, partitions=1, mapper=mapper) as s:

        class Rejecting(EventHandler):
            name = s.name("rejecting")
            on_poison = "dead_letter"

            def handle(self, event: Blob, metadata: EventMetadata) -> None:
                if event.payload:
                    raise RuntimeError("too big for me")
                handled.append(event.n)

            def error(self, error: BaseException, event: object, context: FailureContext) -> ErrorAnswer:
                # A long reason too: it travels as a header of the dead letter.
                return Park("rejected: " + "why " * 100_000)

        append_blobs(event_store)
        s.run(Rejecting)
        eventually(lambda: len(handled) >= 4, what="the other blobs handled")
        (letter,) = read_committed(
            kafka_namespace.bootstrap_servers,
            [f"{Rejecting.name}.dead-letter"],
            kafka_namespace.group("dlt"),
            lambda seen: len(seen) >= 1,
        )
    assert handled == [0, 1, 3, 4]
    assert len(letter.value) + len(letter.headers["metadata"]) == event_store.config.max_event_bytes
    assert letter.headers["tidings_error"].startswith(b"rejected: why")
