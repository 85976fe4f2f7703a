"""Attack: foreign messages in the middle of good traffic (issue 20, case 3).

Anything can be produced into an events topic. Messages that are not this store's events (random bytes,
an unknown fingerprint or type, a huge value, another store's id, a made-up event_number, a copy that
reuses a handled event_number with other content) must be parked or dead-lettered where an operator
sees them, and must move nothing a later good event depends on: every good event is handled exactly
once, in global order for a global-order handler and in key order for a per-key one.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from eventstore.kafka_tail import EVENT_NUMBER_HEADER, PARTITION_HEADER, PREVIOUS_HEADER, STORE_HEADER
from eventstore.postgres.store import PostgresEventStore
from eventstore.relay import Relay, RelayConfig
from eventstore.relay_position import RelayRecord
from eventstore.routing import Routing
from tests.workers.worker_support import (
    Noted,
    Recorder,
    append_noted,
    eventually,
    kafka_headers,
    settle,
    stack,
)
from tidings.pytest_plugin import KafkaNamespace
from workers import EventHandler, EventMetadata
from workers.parking import ParkedEvents

Headers = list[tuple[str, bytes]]


def _garbage(store: PostgresEventStore, topic: str) -> list[tuple[str, bytes, bytes, Headers]]:
    """(what, key, value, headers) of foreign messages, keyed like the good streams s0..s3 so that a
    key they block would show. Numbers are above anything the store holds, except the reused one."""
    (real,) = store.read_all_forward(3, 1)  # a handled event whose number and look the garbage borrows
    ours = RelayRecord(store, "relay").store_id()
    high = store.last_event_number() + 1000

    def like_real(number: int, *, store_id: str | None = ours, **changes: bytes) -> Headers:
        found = {name: value for name, value in kafka_headers(real)}
        found[EVENT_NUMBER_HEADER] = str(number).encode()
        found["event_id"] = str(uuid.uuid4()).encode()
        # A forged previous header that says "nothing before me": the worst case for the merge.
        found[PREVIOUS_HEADER] = f"{topic}=0".encode()
        if store_id is not None:
            found[STORE_HEADER] = store_id.encode()
        found.update(changes)
        return list(found.items())

    return [
        ("random bytes", b"s0", os.urandom(64), like_real(high + 1)),
        ("unknown fingerprint", b"s1", os.urandom(32), like_real(high + 2, schema_id=b"f" * 16)),
        ("unknown type", b"s2", b"{}", like_real(high + 3, event_type=b"tests.NoSuchEvent")),
        ("900 KB value", b"s3", os.urandom(900_000), like_real(high + 4)),
        # A well-formed event that decodes, from another store under the same app name.
        ("another store", b"s0", real.data, like_real(high + 5, store_id=str(uuid.uuid4()))),
        # A copy of a real event with a made-up number and no store header (an old relay's look).
        ("made-up number", b"s1", real.data, like_real(high + 6, store_id=None)),
        # A message reusing a handled event_number (3) with other content.
        ("reused number", b"s2", os.urandom(48), like_real(3, schema_id=b"e" * 16)),
        # A well-formed event claiming this store and a handled number (3), with another event id.
        ("reused number, decodable", b"s3", real.data, like_real(3)),
    ]


def _produce(
    servers: str, topic: str, partitions: int, garbage: list[tuple[str, bytes, bytes, Headers]]
) -> None:
    producer = Producer({"bootstrap.servers": servers, "message.max.bytes": 2_000_000})
    for index, (_, key, value, headers) in enumerate(garbage):
        producer.produce(topic, value, key, partition=index % partitions, headers=headers)
    assert producer.flush(30) == 0


def _messages(servers: str, topic: str) -> int:
    """How many messages ``topic`` holds (0 while it does not exist)."""
    consumer = Consumer({"bootstrap.servers": servers, "group.id": "probe"})
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is None or metadata.error is not None:
            return 0
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in metadata.partitions
        )
    finally:
        consumer.close()


def test_garbage_with_high_event_numbers_moves_no_position_and_is_parked(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    in_order: list[int] = []
    per_key = Recorder()
    dead_letters = Recorder()
    with stack(event_store, kafka_namespace, partitions=2) as s:
        # The relay stops publishing when it finds another store's or relay's messages on its tails
        # (issue 19): it looks once after its first batch, and here not again for an hour, so that the
        # attack reaches the handlers.
        s.relay.stop()
        s.relay = Relay(
            event_store,
            RelayConfig(
                kafka_namespace.bootstrap_servers,
                app=s.app_name,
                partitions=2,
                batch_size=200,
                routing=Routing(s.topic),
                tail_check_interval=3600.0,
            ),
        )
        s.relay.start()

        class Global(EventHandler):
            name = s.name("global")

            def handle(self, event: Noted, metadata: EventMetadata) -> None:
                in_order.append(metadata.event_number)

        class PerKey(EventHandler):
            name = s.name("per-key")
            ordering = "per_key"
            concurrency = 2

            def handle(self, event: Noted, metadata: EventMetadata) -> None:
                per_key.add(metadata.stream_id, event.n, metadata.event_number)

        class DeadLetters(EventHandler):
            name = s.name("dead-letters")
            ordering = "per_key"
            on_poison = "dead_letter"

            def handle(self, event: Noted, metadata: EventMetadata) -> None:
                dead_letters.add(metadata.stream_id, event.n, metadata.event_number)

        first = append_noted(event_store, streams=4, per_stream=5)
        runners = [s.run(Global), s.run(PerKey), s.run(DeadLetters)]
        eventually(
            lambda: len(in_order) >= len(first) and per_key.count() >= len(first), what="first handled"
        )
        # The relay's first look at its tails ends before it counts its first batch as published.
        eventually(lambda: s.relay.last_published >= len(first), what="the first batch counted")
        garbage = _garbage(event_store, s.topic)
        _produce(kafka_namespace.bootstrap_servers, s.topic, 2, garbage)
        second = append_noted(event_store, streams=4, per_stream=5, prefix="s", group="after")
        total = len(first) + len(second)
        eventually(lambda: s.relay.last_published >= total, what="all relayed")
        parked = ParkedEvents(event_store)

        def settled() -> bool:
            return (
                len(in_order) >= total
                and per_key.count() >= total
                and dead_letters.count() >= total
                and _messages(kafka_namespace.bootstrap_servers, f"{DeadLetters.name}.dead-letter")
                >= len(garbage)
                and parked.count(Global.name) >= len(garbage)
                and parked.count(PerKey.name) >= len(garbage)
            )

        try:
            eventually(settled, timeout=60, what="every good event handled and every bad one parked")
        finally:
            print("global saw", in_order, "per key", per_key.count())
            for name in (Global.name, PerKey.name):
                print(name, [(p.offset, p.event_number, p.error[:80]) for p in parked.list(name)])
        assert all(r.status.state == "running" for r in runners)
    assert in_order == list(range(1, total + 1)), "every good event once, in global order"
    for recorder in (per_key, dead_letters):
        assert sorted(number for _, _, number in recorder.seen) == list(range(1, total + 1))
        for stream in {stream for stream, _, _ in recorder.seen}:
            numbers = [number for st, _, number in recorder.seen if st == stream]
            assert numbers == sorted(numbers), f"{stream} in order"
    assert parked.count(DeadLetters.name) == 0
    for name in (Global.name, PerKey.name):
        rows = parked.list(name)
        assert len(rows) == len(garbage), [(p.offset, p.error) for p in rows]
        # Each is marked as not this store's, so no key waits behind it.
        assert all("not an event of this store" in p.error for p in rows), [p.error for p in rows]


def test_a_replayed_copy_on_another_partition_is_not_handled_twice_in_global_order(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    """A backup replayed into the topic puts exact copies of handled events (same ids, numbers and
    headers) on other partitions than theirs: the partition's own position says nothing of them, their
    ``tidings.partition`` header does, and they are parked as copies. A forged copy under another event
    id, its partition header made to match, is parked by the event_id check."""
    in_order: list[int] = []
    with stack(event_store, kafka_namespace, partitions=2) as s:

        class Global(EventHandler):
            name = s.name("global")

            def handle(self, event: Noted, metadata: EventMetadata) -> None:
                in_order.append(metadata.event_number)

        first = append_noted(event_store, streams=4, per_stream=3)
        s.run(Global)
        eventually(lambda: len(in_order) >= len(first), what="first handled")
        copies = _read_all(kafka_namespace.bootstrap_servers, s.topic, 2, len(first))
        assert len(copies) == len(first)
        producer = Producer({"bootstrap.servers": kafka_namespace.bootstrap_servers})
        for partition, key, value, headers in copies:
            producer.produce(s.topic, value, key, partition=1 - partition, headers=headers)
        # And a forgery: a well-formed event claiming this store and a number it holds (not handled
        # on that partition), under another event id.
        partition, key, value, headers = copies[-1]
        replaced = {"event_id": str(uuid.uuid4()).encode(), PARTITION_HEADER: str(1 - partition).encode()}
        forged = [(n, replaced.get(n, v)) for n, v in headers]
        producer.produce(s.topic, value, key, partition=1 - partition, headers=forged)
        assert producer.flush(30) == 0
        second = append_noted(event_store, streams=4, per_stream=3, prefix="later")
        total = len(first) + len(second)
        eventually(lambda: len(in_order) >= total, what="every event handled")
        eventually(
            lambda: ParkedEvents(event_store).count(Global.name) >= len(copies) + 1,
            what="the copies and the forgery parked",
        )
        settle(1.0)
    assert in_order == list(range(1, total + 1)), "each once, in order"
    errors = sorted(row.error for row in ParkedEvents(event_store).list(Global.name))
    assert len(errors) == len(copies) + 1, errors
    forgeries = [e for e in errors if e.startswith("not an event of this store: the store holds event")]
    assert len(forgeries) == 1, errors
    copied = [e for e in errors if e.startswith("not an event of this store: published to partition")]
    assert len(copied) == len(copies), errors


def _read_all(
    servers: str, topic: str, partitions: int, count: int
) -> list[tuple[int, bytes, bytes, Headers]]:
    """The first ``count`` messages of ``topic``: (partition, key, value, headers)."""
    consumer = Consumer({"bootstrap.servers": servers, "group.id": "copier", "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        found: list[tuple[int, bytes, bytes, Headers]] = []
        deadline = time.monotonic() + 30
        while len(found) < count and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error() is not None:
                continue
            found.append(
                (
                    message.partition() or 0,
                    message.key() or b"",
                    message.value() or b"",
                    message.headers() or [],
                )
            )
        return found
    finally:
        consumer.close()


def _copy_to_the_other_partition(
    servers: str,
    topic: str,
    copies: list[tuple[int, bytes, bytes, Headers]],
    forge: Callable[[Any, int], Any] = lambda headers, _: headers,
) -> None:
    """Produce each of ``copies`` (``_read_all``'s) onto the other of two partitions, its headers as
    ``forge`` makes them from the originals and that partition."""
    producer = Producer({"bootstrap.servers": servers})
    for partition, key, value, headers in copies:
        producer.produce(
            topic, value, key, partition=1 - partition, headers=forge(list(headers), 1 - partition)
        )
    assert producer.flush(30) == 0
