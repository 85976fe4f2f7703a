"""Event handlers on the real Kafka and PostgreSQL, in process."""

from __future__ import annotations

from eventstore import PostgresEventStore
from tests.workers.worker_support import Noted, Recorder, append_noted, eventually, stack
from tidings.pytest_plugin import KafkaNamespace
from workers.delivery import EventMetadata
from workers.handler import EventHandler


def test_a_handler_sees_every_event_in_per_stream_order_with_its_metadata(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    recorder = Recorder()
    metadata_seen: list[EventMetadata] = []
    with stack(event_store, kafka_namespace) as s:

        class Counting(EventHandler):
            name = s.name("counting")
            concurrency = 4

            def handle(self, event: Noted, metadata: EventMetadata) -> None:
                recorder.add(metadata.stream_id, event.n, metadata.event_number)
                metadata_seen.append(metadata)

        appended = append_noted(event_store, streams=12, per_stream=10)
        s.run(Counting)
        eventually(lambda: recorder.count() >= len(appended), what="every event handled")
    assert sorted((stream, n) for stream, n, _ in recorder.seen) == sorted(appended)
    for stream in {stream for stream, _ in appended}:
        ns = [n for st, n, _ in recorder.seen if st == stream]
        assert ns == sorted(ns)
    first = metadata_seen[0]
    assert first.handler_name == Counting.name
    assert first.metadata == {"user": "ada", "n": first.metadata["n"]}
    assert first.event_type == "tests.Noted"
