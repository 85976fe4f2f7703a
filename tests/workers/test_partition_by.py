"""partition_by: handlers ordered by a key of their own, through a topic keyed by it."""

from __future__ import annotations

import json

from confluent_kafka.admin import AdminClient
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from eventstore import ANY, EventData, PostgresEventStore
from tests.workers.worker_support import Noted, Recorder, append_noted, eventually, mapper, stack
from tidings import EventMapper, RenameEventType
from tidings.pytest_plugin import KafkaNamespace
from workers.delivery import EventMetadata
from workers.handler import EventHandler


def test_partition_by_a_function_orders_each_key_by_event_number_across_streams(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    by_group: dict[str, list[int]] = {}
    with stack(event_store, kafka_namespace, partitions=4) as s:

        class PerGroup(EventHandler):
            name = s.name("per-group")
            concurrency = 4

            def partition_by(self, event: Noted, metadata: EventMetadata) -> str:
                return event.group

            def handle(self, event: Noted, metadata: EventMetadata) -> None:
                by_group.setdefault(event.group, []).append(metadata.event_number)

        # Each group's events come from many streams, which the relay spreads over partitions.
        total = 0
        for round_ in range(5):
            for group in ("red", "green", "blue"):
                total += len(
                    append_noted(
                        event_store, streams=4, per_stream=1, prefix=f"{group}{round_}-", group=group
                    )
                )
        runner = s.run(PerGroup)
        eventually(lambda: sum(len(v) for v in by_group.values()) >= total, what="every event")
        assert runner.topics == [f"{s.app_name}.{PerGroup.name}.by-key"]
    for group, numbers in by_group.items():
        assert numbers == sorted(numbers), f"{group} in event_number order"
        assert len(numbers) == 20
    topics = (
        AdminClient({"bootstrap.servers": kafka_namespace.bootstrap_servers}).list_topics(timeout=30).topics
    )
    assert len(topics[f"{s.app_name}.{PerGroup.name}.by-key"].partitions) == 4


def test_partition_by_the_relays_key_consumes_the_events_topic_directly(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    recorder = Recorder()
    with stack(event_store, kafka_namespace, partitions=2) as s:

        class ByStream(EventHandler):
            name = s.name("by-stream")
            partition_by = "stream_id"

            def handle(self, event: Noted, metadata: EventMetadata) -> None:
                recorder.add(metadata.stream_id, event.n, metadata.event_number)

        class ByCorrelation(EventHandler):
            name = s.name("by-correlation")
            partition_by = "correlation_id"

            def handle(self, event: Noted, metadata: EventMetadata) -> None:
                recorder.add(metadata.stream_id, event.n, metadata.event_number)

        append_noted(event_store, streams=2, per_stream=2)
        direct = s.run(ByStream)
        repartitioned = s.run(ByCorrelation)
        eventually(lambda: recorder.count() >= 8, what="both handled everything")
    assert direct.topics == [s.topic]
    assert repartitioned.topics == [f"{s.app_name}.{ByCorrelation.name}.by-key"]


def test_handlers_see_events_upcast_to_todays_shape(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    upcasting = EventMapper(mapper.codec, [RenameEventType("tests.OldNote", "tests.Noted")])
    seen: list[Noted] = []
    event_store.append_to_stream(
        "s0", ANY, [EventData("tests.OldNote", json.dumps({"key": "s0", "n": 3}).encode(), schema_id="json")]
    )
    with stack(event_store, kafka_namespace, partitions=1, mapper=upcasting) as s:

        class Modern(EventHandler):
            name = s.name("modern")

            def handle(self, event: Noted, metadata: EventMetadata) -> None:
                seen.append(event)

        s.run(Modern)
        eventually(lambda: len(seen) >= 1, what="the old event")
    assert seen == [Noted("s0", 3)]


def test_handling_continues_the_trace_of_the_command(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace, spans: InMemorySpanExporter
) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    seen: list[int] = []
    event_store.append_to_stream(
        "s0",
        ANY,
        [
            mapper.to_event_data(
                Noted("s0", 1), metadata={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
            )
        ],
    )
    with stack(event_store, kafka_namespace, partitions=1) as s:

        class Traced(EventHandler):
            name = s.name("traced")

            def handle(self, event: Noted, metadata: EventMetadata) -> None:
                seen.append(metadata.event_number)

        s.run(Traced)
        eventually(lambda: len(seen) >= 1, what="handled")
        eventually(
            lambda: any(x.name == "handle tests.Noted" for x in spans.get_finished_spans()), what="span"
        )
    (span,) = [x for x in spans.get_finished_spans() if x.name == "handle tests.Noted"]
    assert format(span.context.trace_id, "032x") == trace_id
    assert span.attributes is not None
    assert span.attributes["tidings.handler"] == Traced.name
