"""What happens when handling fails: retry, retry later, skip, stop, park, dead-letter."""

from __future__ import annotations

import time

from confluent_kafka import Producer

from eventstore import PostgresEventStore
from tests.eventstore.relay_support import read_committed
from tests.workers.worker_support import Noted, Recorder, append_noted, eventually, stack
from tidings.pytest_plugin import KafkaNamespace
from workers.delivery import EventMetadata
from workers.failure import ErrorAnswer, FailureContext, Park, Retry, Skip, Stop
from workers.handler import EventHandler
from workers.parking import ParkedEvents


class Flaky(Exception):
    pass


def test_retry_hands_the_event_back_with_the_context_of_the_last_answer(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    recorder = Recorder()
    contexts: list[tuple[int, dict[str, int]]] = []
    with stack(event_store, kafka_namespace, partitions=1) as s:

        class Retrying(EventHandler):
            name = s.name("retrying")

            def handle(self, event: Noted, metadata: EventMetadata) -> None:
                if event.n == 1 and len(contexts) < 3:
                    raise Flaky("not yet")
                recorder.add(metadata.stream_id, event.n, metadata.event_number)

            def error(self, error: BaseException, event: object, context: FailureContext) -> ErrorAnswer:
                contexts.append((context.attempt, context.context))
                assert "Flaky: not yet" in context.stacktrace
                return Retry(context={"seen": context.context.get("seen", 0) + 1})

        append_noted(event_store, streams=1, per_stream=3)
        s.run(Retrying)
        eventually(lambda: recorder.count() >= 3, what="three events")
    assert [n for _, n, _ in recorder.seen] == [0, 1, 2]
    assert contexts == [(1, {}), (2, {"seen": 1}), (3, {"seen": 2})]


def test_retry_with_delay_holds_its_key_while_other_partitions_go_on(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    recorder = Recorder()
    failed_at: list[float] = []
    with stack(event_store, kafka_namespace, partitions=4) as s:

        class Delaying(EventHandler):
            name = s.name("delaying")
            concurrency = 4

            def handle(self, event: Noted, metadata: EventMetadata) -> None:
                if metadata.stream_id == "s0" and event.n == 0 and not failed_at:
                    failed_at.append(time.monotonic())
                    raise Flaky("later")
                recorder.add(metadata.stream_id, event.n, metadata.event_number)

            def error(self, error: BaseException, event: object, context: FailureContext) -> ErrorAnswer:
                return Retry(delay=3.0)

        appended = append_noted(event_store, streams=8, per_stream=5)
        s.run(Delaying)
        # Streams on other partitions than s0's finish while s0 waits out its delay.
        eventually(lambda: any(st != "s0" for st, _, _ in recorder.seen), what="other keys progress")
        eventually(lambda: recorder.count() >= len(appended), what="every event")
    s0 = [n for st, n, _ in recorder.seen if st == "s0"]
    assert s0 == [0, 1, 2, 3, 4], "nothing of s0 passed the event waiting to be retried"
    first_other = next(i for i, (st, _, _) in enumerate(recorder.seen) if st != "s0")
    first_s0 = next(i for i, (st, _, _) in enumerate(recorder.seen) if st == "s0")
    assert first_other < first_s0


def test_skip_goes_on_with_the_next_event(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    recorder = Recorder()
    with stack(event_store, kafka_namespace, partitions=1) as s:

        class Skipping(EventHandler):
            name = s.name("skipping")

            def handle(self, event: Noted, metadata: EventMetadata) -> None:
                if event.n == 2:
                    raise ValueError("bad amount")
                recorder.add(metadata.stream_id, event.n, metadata.event_number)

            def error(self, error: BaseException, event: object, context: FailureContext) -> ErrorAnswer:
                return Skip()

        append_noted(event_store, streams=1, per_stream=5)
        s.run(Skipping)
        eventually(lambda: recorder.count() >= 4, what="four events")
    assert [n for _, n, _ in recorder.seen] == [0, 1, 3, 4]
    parked = ParkedEvents(event_store)
    assert parked.count(Skipping.name) == 0


def test_stop_stops_the_handler_at_the_failed_event_and_a_restart_resumes_there(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    recorder = Recorder()
    broken = {"yes": True}
    with stack(event_store, kafka_namespace, partitions=1) as s:

        class Stopping(EventHandler):
            name = s.name("stopping")

            def handle(self, event: Noted, metadata: EventMetadata) -> None:
                if event.n == 2 and broken["yes"]:
                    raise RuntimeError("configuration missing")
                recorder.add(metadata.stream_id, event.n, metadata.event_number)

            def error(self, error: BaseException, event: object, context: FailureContext) -> ErrorAnswer:
                return Stop("needs an operator")

        append_noted(event_store, streams=1, per_stream=5)
        runner = s.run(Stopping)
        eventually(lambda: runner.status.state == "stopped", what="the handler stops")
        assert "needs an operator" in runner.status.reason
        assert not runner.status.ready
        assert [n for _, n, _ in recorder.seen] == [0, 1]
        broken["yes"] = False
        s.run(Stopping)
        eventually(lambda: recorder.count() >= 5, what="the rest after the restart")
    assert [n for _, n, _ in recorder.seen] == [0, 1, 2, 3, 4], "resumed at the failed event, nothing twice"


def test_a_poison_event_parks_its_key_while_other_keys_go_on_until_released(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    recorder = Recorder()
    broken = {"yes": True}
    parked = ParkedEvents(event_store)
    with stack(event_store, kafka_namespace, partitions=1) as s:

        class Parking(EventHandler):
            name = s.name("parking")
            max_attempts = 2

            def handle(self, event: Noted, metadata: EventMetadata) -> None:
                if metadata.stream_id == "s1" and event.n == 1 and broken["yes"]:
                    raise RuntimeError("poison")
                recorder.add(metadata.stream_id, event.n, metadata.event_number)

        appended = append_noted(event_store, streams=3, per_stream=4)
        s.run(Parking)
        # One partition for every key: s0 and s2 pass s1's parked events.
        eventually(lambda: recorder.count() >= len(appended) - 3, what="everything but s1's last three")
        eventually(lambda: parked.count(Parking.name) == 3, what="three parked")
        rows = parked.list(Parking.name)
        assert [(r.stream_id, r.key) for r in rows] == [("s1", b"s1")] * 3
        assert "gave up after 2 attempts" in rows[0].error
        assert "behind an earlier parked event" in rows[1].error
        assert [n for st, n, _ in recorder.seen if st == "s1"] == [0]
        # Later events of the parked key park behind it, live.
        more = append_noted(event_store, streams=3, per_stream=1, prefix="s")
        eventually(lambda: parked.count(Parking.name) == 4, what="the new s1 event parked behind")
        broken["yes"] = False
        assert parked.release(Parking.name, b"s1") == 4
        eventually(lambda: parked.count(Parking.name) == 0, what="parked events handled")
        eventually(lambda: recorder.count() >= len(appended) + len(more), what="all handled")
        # Live again: a new s1 event is handled directly.
        append_noted(event_store, streams=2, per_stream=1, prefix="s")
        eventually(lambda: recorder.count() >= len(appended) + len(more) + 2, what="live s1")
    assert [n for st, n, _ in recorder.seen if st == "s1"] == [0, 1, 2, 3, 0, 0]
    numbers = [number for st, _, number in recorder.seen if st == "s1"]
    assert numbers == sorted(numbers), "the key's events in event_number order"


def test_discarded_parked_events_are_never_handled_and_release_the_key(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    recorder = Recorder()
    parked = ParkedEvents(event_store)
    with stack(event_store, kafka_namespace, partitions=1) as s:

        class Discarding(EventHandler):
            name = s.name("discarding")

            def handle(self, event: Noted, metadata: EventMetadata) -> None:
                if metadata.event_number == 1:
                    raise RuntimeError("poison")
                recorder.add(metadata.stream_id, event.n, metadata.event_number)

            def error(self, error: BaseException, event: object, context: FailureContext) -> ErrorAnswer:
                return Park("rejected")

        append_noted(event_store, streams=1, per_stream=2)
        s.run(Discarding)
        eventually(lambda: parked.count(Discarding.name) == 2, what="both parked")
        assert parked.discard(Discarding.name, b"s0") == 2
        append_noted(event_store, streams=1, per_stream=2, prefix="s")
        eventually(lambda: recorder.count() >= 2, what="the key runs live again")
    assert [number for _, _, number in recorder.seen] == [3, 4], "the discarded events never handled"


def test_dead_letter_sends_the_event_on_and_lets_its_key_continue(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    recorder = Recorder()
    with stack(event_store, kafka_namespace, partitions=1) as s:

        class DeadLettering(EventHandler):
            name = s.name("dead-lettering")
            on_poison = "dead_letter"

            def handle(self, event: Noted, metadata: EventMetadata) -> None:
                if event.n == 1:
                    raise RuntimeError("poison")
                recorder.add(metadata.stream_id, event.n, metadata.event_number)

            def error(self, error: BaseException, event: object, context: FailureContext) -> ErrorAnswer:
                return Park("rejected")

        append_noted(event_store, streams=1, per_stream=3)
        s.run(DeadLettering)
        eventually(lambda: recorder.count() >= 2, what="the others handled")
        letters = read_committed(
            kafka_namespace.bootstrap_servers,
            [f"{DeadLettering.name}.dead-letter"],
            kafka_namespace.group("dlt"),
            lambda seen: len(seen) >= 1,
        )
    assert [n for _, n, _ in recorder.seen] == [0, 2]
    assert len(letters) == 1
    assert letters[0].headers["event_number"] == b"2"
    assert letters[0].headers["tidings_error"] == b"rejected"
    assert ParkedEvents(event_store).count(DeadLettering.name) == 0


def test_messages_that_are_not_events_are_parked_without_retries(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    recorder = Recorder()
    parked = ParkedEvents(event_store)
    with stack(event_store, kafka_namespace, partitions=1) as s:

        class Strict(EventHandler):
            name = s.name("strict")

            def handle(self, event: Noted, metadata: EventMetadata) -> None:
                recorder.add(metadata.stream_id, event.n, metadata.event_number)

        append_noted(event_store, streams=1, per_stream=1)
        s.run(Strict)
        eventually(lambda: recorder.count() >= 1, what="the first event")
        producer = Producer({"bootstrap.servers": kafka_namespace.bootstrap_servers})
        producer.produce(s.topic, key=b"junk", value=b"\x00not an event", headers=[("event_number", b"x")])
        producer.flush(30)
        eventually(lambda: parked.count(Strict.name) == 1, what="the junk parked")
        append_noted(event_store, streams=1, per_stream=1, prefix="t")
        eventually(lambda: recorder.count() >= 2, what="real events go on")
    (row,) = parked.list(Strict.name)
    assert row.key == b"junk"
    assert row.event_number is None
    assert "missing headers" in row.error
