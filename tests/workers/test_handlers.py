"""Event handlers on the real Kafka and PostgreSQL, in process."""

from __future__ import annotations

import asyncio

from eventstore import PostgresEventStore
from tests.workers.worker_support import Noted, Recorder, append_noted, eventually, stack
from tidings.pytest_plugin import KafkaNamespace
from workers.delivery import EventMetadata
from workers.failure import FailureContext, Retry
from workers.handler import BatchFailed, EventHandler


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


def test_state_starts_in_init_and_follows_what_handle_returns(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    states: list[int] = []
    with stack(event_store, kafka_namespace, partitions=1) as s:

        class Summing(EventHandler):
            name = s.name("summing")

            def init(self) -> None:
                self.state = 100

            def handle(self, event: Noted, metadata: EventMetadata) -> int:
                assert metadata.state == self.state
                states.append(self.state + event.n)
                return int(self.state + event.n)

        append_noted(event_store, streams=1, per_stream=5)
        s.run(Summing)
        eventually(lambda: len(states) >= 5, what="five events")
    assert states == [100, 101, 103, 106, 110]


def test_start_from_current_skips_history_and_is_kept_across_restarts(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    recorder = Recorder()
    with stack(event_store, kafka_namespace, partitions=2) as s:
        append_noted(event_store, streams=3, per_stream=2, prefix="old")

        class Current(EventHandler):
            name = s.name("current")
            start_from = "current"

            def handle(self, event: Noted, metadata: EventMetadata) -> None:
                recorder.add(metadata.stream_id, event.n, metadata.event_number)

        eventually(lambda: event_store.last_event_number() >= 6, what="history numbered")
        runner = s.run(Current)
        eventually(lambda: runner.status.state == "running", what="running")
        new = append_noted(event_store, streams=3, per_stream=2, prefix="new")
        eventually(lambda: recorder.count() >= len(new), what="new events handled")
        runner.stop()
        # A restart does not move the start: nothing old is handled, nothing new twice.
        later = append_noted(event_store, streams=2, per_stream=1, prefix="later")
        s.run(Current)
        eventually(lambda: recorder.count() >= len(new) + len(later), what="later events handled")
    assert sorted((st, n) for st, n, _ in recorder.seen) == sorted(new + later)


def test_start_from_an_event_number_and_subscribe_to_one_stream(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    after_five = Recorder()
    one_stream = Recorder()
    with stack(event_store, kafka_namespace, partitions=3) as s:
        append_noted(event_store, streams=4, per_stream=3)

        class AfterFive(EventHandler):
            name = s.name("after-five")
            start_from = 5

            def handle(self, event: Noted, metadata: EventMetadata) -> None:
                after_five.add(metadata.stream_id, event.n, metadata.event_number)

        class OneStream(EventHandler):
            name = s.name("one-stream")
            subscribe_to = "s2"

            def handle(self, event: Noted, metadata: EventMetadata) -> None:
                one_stream.add(metadata.stream_id, event.n, metadata.event_number)

        s.run(AfterFive)
        s.run(OneStream)
        eventually(lambda: after_five.count() >= 7 and one_stream.count() >= 3, what="both handlers")
    assert sorted(number for _, _, number in after_five.seen) == list(range(6, 13))
    assert [(st, n) for st, n, _ in one_stream.seen] == [("s2", 0), ("s2", 1), ("s2", 2)]


def test_handle_batch_gets_consecutive_events_of_a_partition_and_may_fail_one(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    batches: list[list[int]] = []
    failures = {"left": 1}
    with stack(event_store, kafka_namespace, partitions=1) as s:

        class Batching(EventHandler):
            name = s.name("batching")

            def handle_batch(self, batch: list[tuple[Noted, EventMetadata]]) -> None:
                numbers = [metadata.event_number for _, metadata in batch]
                if 7 in numbers and failures["left"]:
                    failures["left"] -= 1
                    batches.append(numbers[: numbers.index(7)])
                    raise BatchFailed(numbers.index(7), RuntimeError("seven"))
                batches.append(numbers)

            def error(self, error: BaseException, event: object, context: FailureContext) -> Retry:
                assert isinstance(error, RuntimeError)
                return Retry()

        append_noted(event_store, streams=1, per_stream=20)
        s.run(Batching)
        eventually(lambda: sum(len(b) for b in batches) >= 20, what="every event in some batch")
    flat = [number for batch in batches for number in batch]
    assert flat == list(range(1, 21)), "each event once, in order, the failed one retried alone"
    assert any(len(batch) > 1 for batch in batches)


def test_async_handlers_are_awaited(event_store: PostgresEventStore, kafka_namespace: KafkaNamespace) -> None:
    seen: list[int] = []
    with stack(event_store, kafka_namespace, partitions=1) as s:

        class Awaiting(EventHandler):
            name = s.name("awaiting")

            async def handle(self, event: Noted, metadata: EventMetadata) -> None:
                await asyncio.sleep(0)
                seen.append(metadata.event_number)

        append_noted(event_store, streams=2, per_stream=3)
        s.run(Awaiting)
        eventually(lambda: len(seen) >= 6, what="six events")
    assert seen == list(range(1, 7))
