"""Attack (commit 60d18af): the repartitioning relay of a ``partition_by`` handler chooses partitions and
stamps tidings.partition too. Keys of unusual bytes (empty, a NUL, multi-byte text, longer than a key
may be), every event handled once and in order per key, and exact copies of its messages on another
partition of the by-key topic parked as foreign."""

from __future__ import annotations

from confluent_kafka import Producer

from eventstore import PostgresEventStore
from eventstore.kafka_tail import PARTITION_HEADER
from eventstore.partitioner import KeyPartitioner
from tests.workers.test_attack_garbage import _read_all
from tests.workers.worker_support import Noted, Recorder, append_noted, eventually, settle, stack
from tidings.pytest_plugin import KafkaNamespace
from workers import EventHandler, EventMetadata
from workers.identity import FOREIGN
from workers.parking import ParkedEvents

GROUPS = ["", "\x00", "é账-17", "x" * 5000, "a", "ab", "abc"]


def test_repartitioned_messages_of_unusual_keys_pass_and_their_copies_are_parked(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    seen = Recorder()
    by_group: dict[str, list[int]] = {}
    with stack(event_store, kafka_namespace, partitions=2) as s:

        class PerGroup(EventHandler):
            name = s.name("per-group")
            concurrency = 2

            def partition_by(self, event: Noted, metadata: EventMetadata) -> str:
                return event.group

            def handle(self, event: Noted, metadata: EventMetadata) -> None:
                seen.add(metadata.stream_id, event.n, metadata.event_number)
                with seen.lock:
                    by_group.setdefault(event.group, []).append(metadata.event_number)

        total = 0
        for i, group in enumerate(GROUPS):
            total += len(append_noted(event_store, streams=2, per_stream=2, prefix=f"g{i}-", group=group))
        runner = s.run(PerGroup)
        eventually(lambda: seen.count() >= total, what="every event handled")
        (by_key,) = runner.topics
        messages = _read_all(kafka_namespace.bootstrap_servers, by_key, 2, total)
        assert len(messages) == total
        partitioner = KeyPartitioner()
        for partition, key, _, headers in messages:
            assert dict(headers)[PARTITION_HEADER] == str(partition).encode()
            assert partition == partitioner.partition(key, 2), key
        producer = Producer({"bootstrap.servers": kafka_namespace.bootstrap_servers})
        for partition, key, value, headers in messages:
            producer.produce(by_key, value, key, partition=1 - partition, headers=list(headers))
        assert producer.flush(30) == 0
        later = 0
        for i, group in enumerate(GROUPS):
            later += len(append_noted(event_store, streams=2, per_stream=1, prefix=f"later{i}-", group=group))
        parked = ParkedEvents(event_store)
        eventually(
            lambda: seen.count() >= total + later and parked.count(PerGroup.name) >= total,
            what="the later events handled and the copies parked",
        )
        settle(2.0)
        errors = [p.error for p in parked.list(PerGroup.name)]
    numbers = [number for _, _, number in seen.seen]
    assert sorted(numbers) == list(range(1, total + later + 1)), "each once"
    for group, handled in by_group.items():
        assert handled == sorted(handled), f"group {group[:10]!r} in order"
    assert len(errors) == total, errors
    assert all(e.startswith(FOREIGN) for e in errors), errors
