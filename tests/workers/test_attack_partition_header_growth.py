"""Attack (commit 60d18af): partitions added to the events topic while per-key handlers run.

The relay chooses each key's partition itself and reads the topic's partition count again every 10 s:
a key whose murmur2 lands elsewhere with the new count moves to another partition then. A per-key
handler's consumer group must learn of the new partitions as soon, or what the relay puts there waits
for librdkafka's metadata refresh (five minutes by default).

(Per-key order across such a move is not kept for a key whose earlier events still wait on the old
partition, as Kafka keeps it nowhere: the docs say to add partitions with the relay stopped and the
handlers caught up, and the relay warns when it sees a count change.)
"""

from __future__ import annotations

import time

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewPartitions

from eventstore import ANY, PostgresEventStore
from eventstore.kafka_tail import PARTITION_HEADER
from eventstore.partitioner import KeyPartitioner
from tests.workers.worker_support import Noted, Recorder, eventually, mapper, stack
from tidings.pytest_plugin import KafkaNamespace
from workers import EventHandler, EventMetadata
from workers.app import WorkerApp, WorkerConfig
from workers.runner import HandlerRunner


def _handled(seen: Recorder) -> set[tuple[str, int]]:
    with seen.lock:
        return {(stream, n) for stream, n, _ in seen.seen}


def _moving_key(prefix: str, before: int, after: int, avoid: int = -1) -> tuple[str, int, int]:
    """A stream id whose partition changes when the topic grows from ``before`` to ``after`` (and was
    not ``avoid`` before)."""
    partitioner = KeyPartitioner()
    for n in range(10_000):
        name = f"{prefix}{n}"
        old = partitioner.partition(name.encode(), before)
        new = partitioner.partition(name.encode(), after)
        if old != new and old != avoid:
            return name, old, new
    raise AssertionError("no moving key")


def _append(store: PostgresEventStore, stream: str, n: int) -> None:
    store.append_to_stream(stream, ANY, [mapper.to_event_data(Noted(stream, n))])


def _partitions_of(bootstrap: str, topic: str, count: int, stream: str) -> set[int]:
    """The partitions holding messages of ``stream`` (read_uncommitted is enough: where it went)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"probe-{time.monotonic_ns()}",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(count)])
        found: set[int] = set()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is None or message.error():
                continue
            if (message.key() or b"") == stream.encode():
                found.add(int(message.partition() or 0))
                headers = dict(message.headers() or [])
                assert headers.get(PARTITION_HEADER) == str(message.partition()).encode()
        return found
    finally:
        consumer.close()


def _grow_until_moved(
    s, store: PostgresEventStore, namespace: KafkaNamespace, probe: str, new: int, total: int
) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """Add partitions (2 -> 4), and append to ``probe`` until one of its events lands on ``new``: the
    relay uses the new count then. Returns that event's n."""
    eventually(lambda: s.relay.last_published >= total, what="relayed before")
    admin = AdminClient({"bootstrap.servers": namespace.bootstrap_servers})

    def grown() -> bool:
        try:
            for future in admin.create_partitions([NewPartitions(s.topic, 4)]).values():
                future.result(timeout=30)
        except KafkaException as exc:  # the new topic not known to the controller yet
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise
            return False
        return True

    eventually(grown, timeout=30, what="partitions added")
    deadline = time.monotonic() + 60
    n = 0
    while time.monotonic() < deadline:
        _append(store, probe, n)
        total += 1
        n += 1
        eventually(lambda t=total: s.relay.last_published >= t, what="relayed")
        if new in _partitions_of(namespace.bootstrap_servers, s.topic, 4, probe):
            return n - 1, total
    raise AssertionError("the relay never used the new partition")


def test_events_the_relay_puts_on_an_added_partition_are_handled_within_a_minute_per_key(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace, caplog: pytest.LogCaptureFixture
) -> None:
    """Default settings: the relay takes up added partitions within 10 s now (it was librdkafka's
    metadata refresh, five minutes, before), while a per-key handler's consumer group learns of them
    at its own metadata refresh: what the relay puts there waits until then."""
    probe, _, probe_new = _moving_key("probe", 2, 4)
    seen = Recorder()
    with stack(event_store, kafka_namespace, partitions=2) as s:

        class PerKey(EventHandler):
            name = s.name("per-key-default")
            ordering = "per_key"
            concurrency = 2

            def handle(self, event: Noted, metadata: EventMetadata) -> None:
                seen.add(metadata.stream_id, event.n, metadata.event_number)

        _append(event_store, probe, 0)
        s.run(PerKey)
        eventually(lambda: (probe, 0) in _handled(seen), what="the first event handled")
        last, _ = _grow_until_moved(s, event_store, kafka_namespace, probe, probe_new, 1)
        moved_at = time.monotonic()
        eventually(
            lambda: (probe, last) in _handled(seen),
            timeout=60,
            what=f"{probe}'s event {last}, on the added partition {probe_new}, handled",
        )
        waited = time.monotonic() - moved_at
    changed = [r for r in caplog.records if r.getMessage().startswith("a topic's partition count changed")]
    assert [(r.topic, r.before, r.partitions) for r in changed] == [(s.topic, 2, 4)], "the relay warned once"  # type: ignore[attr-defined]
    order = [n for st, n, _ in seen.seen if st == probe]
    assert order == sorted(order), f"{probe} handled in the order {order}"
    assert waited < 60, waited


def test_a_handlers_consumer_reads_its_partitions_every_5_s_unless_its_settings_say_otherwise(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    class Plain(EventHandler):
        name = kafka_namespace.group("plain")

        def handle(self, event: Noted, metadata: EventMetadata) -> None:
            pass

    app = WorkerApp(kafka_namespace.prefix + "app", mapper=mapper, handlers=[Plain])
    refresh = "topic.metadata.refresh.interval.ms"
    for kafka, expected in (({}, 5000), ({refresh: "60000"}, "60000")):
        config = WorkerConfig(event_store, kafka_namespace.bootstrap_servers, kafka=kafka)
        try:
            assert HandlerRunner(Plain, app, config)._consumer_settings()[refresh] == expected
        finally:
            config.dispose()
