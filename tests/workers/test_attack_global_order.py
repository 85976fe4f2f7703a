"""Attack: global order under a backlog, a stalled partition and a growing topic (issue 20, cases 1, 2).

A global-order handler must hand on events strictly in event_number order, always: no timer may release
an event while a partition can still hold an earlier one, flow control must not starve the partition the
merge waits for, and partitions added while it runs are read without a restart.
"""

from __future__ import annotations

import itertools
import time

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewPartitions

from eventstore import ANY, PostgresEventStore
from eventstore.relay import Relay, RelayConfig
from eventstore.routing import Routing
from tests.workers.worker_support import (
    Noted,
    append_noted,
    eventually,
    kafka_headers,
    mapper,
    settle,
    stack,
)
from tidings.pytest_plugin import KafkaNamespace
from workers import EventHandler, EventMetadata
from workers import runner as runner_module

STREAMS = 16


def _backlog(store: PostgresEventStore, rounds: int, per_append: int) -> int:
    """``rounds`` rounds of ``per_append`` events to each of STREAMS streams (spread over the
    partitions by their keys), so that the global order alternates between partitions in runs."""
    total = 0
    for r in range(rounds):
        for s in range(STREAMS):
            stream = f"s{s}"
            events = [mapper.to_event_data(Noted(stream, r * per_append + i)) for i in range(per_append)]
            store.append_to_stream(stream, ANY, events)
            total += per_append
    return total


def _in_order(seen: list[int], total: int) -> None:
    out_of_order = [(a, b) for a, b in itertools.pairwise(seen) if b <= a]
    assert not out_of_order, f"handed on out of order: {out_of_order[:5]} ({len(out_of_order)} in all)"
    assert seen == list(range(1, total + 1))


def test_a_backlog_catch_up_with_a_slow_handler_stays_in_global_order(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The backlog (4 partitions x 13,000 events at 1 ms) scaled down by the same factor in
    # count and time: flow control pauses at 300 queued messages instead of 10,000, and the merge's old
    # stall fallback (10 s) is shortened to 1 s. On the old code this breaks order within seconds; the
    # fixed runner has no such timer (the attribute is set for the old code only).
    monkeypatch.setattr(runner_module, "PAUSE_AT", 300)
    monkeypatch.setattr(runner_module, "PAUSE_SECONDS", 0.3)
    monkeypatch.setattr(runner_module, "RESUME_SECONDS", 0.15)
    monkeypatch.setattr(runner_module, "STALL_SECONDS", 1.0, raising=False)
    seen: list[int] = []
    with stack(event_store, kafka_namespace, partitions=4) as s:

        class Slow(EventHandler):
            name = s.name("slow")

            def handle(self, event: Noted, metadata: EventMetadata) -> None:
                seen.append(metadata.event_number)
                time.sleep(0.001)  # a projection's pace: slower than the fetch

        total = _backlog(event_store, rounds=12, per_append=40)
        eventually(lambda: s.relay.last_published >= total, timeout=120, what="the backlog relayed")
        runner = s.run(Slow)
        eventually(
            lambda: len(seen) >= total or (runner.status.state != "running" and len(seen) > 0),
            timeout=180,
            what="the backlog handled",
        )
        assert runner.status.state == "running", runner.status.reason
    _in_order(seen, total)


def test_a_partition_that_returns_nothing_for_a_while_is_waited_for(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transaction another producer holds open on partition 0 keeps read_committed consumers from
    reading past it: partition 0 returns nothing (as during a leader move) while the others deliver."""
    monkeypatch.setattr(runner_module, "STALL_SECONDS", 1.0, raising=False)
    seen: list[int] = []
    with stack(event_store, kafka_namespace, partitions=2) as s:

        class Ordered(EventHandler):
            name = s.name("ordered")

            def handle(self, event: Noted, metadata: EventMetadata) -> None:
                seen.append(metadata.event_number)

        first = append_noted(event_store, streams=4, per_stream=2)
        s.run(Ordered)
        eventually(lambda: len(seen) >= len(first), what="the first events handled")
        blocker = Producer(
            {"bootstrap.servers": kafka_namespace.bootstrap_servers, "transactional.id": s.name("blocker")}
        )
        blocker.init_transactions(30)
        blocker.begin_transaction()
        blocker.produce(s.topic, b"held", b"held", partition=0)
        assert blocker.flush(30) == 0
        second = append_noted(event_store, streams=4, per_stream=4, prefix="later")
        total = len(first) + len(second)
        eventually(lambda: s.relay.last_published >= total, what="all relayed")
        settle(3.0)  # three times the shortened stall fallback: an old runner guesses here
        blocker.abort_transaction(30)
        eventually(lambda: len(seen) >= total, what="everything handled once partition 0 delivers")
    _in_order(seen, total)


def test_partitions_added_under_a_running_handler_are_read_in_order_without_a_restart(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    seen: list[int] = []
    with stack(event_store, kafka_namespace, partitions=2) as s:
        # The relay's producer learns of new partitions at its metadata refresh (five minutes by
        # default); a second here so that the test sees the new partitions used.
        s.relay.stop()
        s.relay = Relay(
            event_store,
            RelayConfig(
                kafka_namespace.bootstrap_servers,
                app=s.app_name,
                partitions=2,
                batch_size=200,
                routing=Routing(s.topic),
                kafka={"topic.metadata.refresh.interval.ms": "1000"},
            ),
        )
        s.relay.start()

        class Growing(EventHandler):
            name = s.name("growing")

            def handle(self, event: Noted, metadata: EventMetadata) -> None:
                seen.append(metadata.event_number)

        first = append_noted(event_store, streams=STREAMS, per_stream=2)
        runner = s.run(Growing)
        eventually(lambda: len(seen) >= len(first), what="the first events handled")
        admin = AdminClient({"bootstrap.servers": kafka_namespace.bootstrap_servers})
        for future in admin.create_partitions([NewPartitions(s.topic, 4)]).values():
            future.result(timeout=30)
        total = len(first)
        deadline = time.monotonic() + 60
        # Append until the relay has put events on the new partitions, then some more.
        while time.monotonic() < deadline:
            total += len(append_noted(event_store, streams=STREAMS, per_stream=1, prefix=f"g{total}-"))
            eventually(lambda n=total: s.relay.last_published >= n, what="relayed")
            if _used_new_partitions(kafka_namespace.bootstrap_servers, s.topic):
                break
        assert _used_new_partitions(kafka_namespace.bootstrap_servers, s.topic), "the relay used them"
        total += len(append_noted(event_store, streams=STREAMS, per_stream=2, prefix="after"))
        eventually(lambda: len(seen) >= total, timeout=60, what="every event handled, new partitions too")
        assert runner.status.state == "running"
        assert len(runner.status.assigned) == 4, runner.status.assigned
    _in_order(seen, total)


def test_messages_without_proof_of_order_wait_and_say_so_instead_of_a_guess(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Messages as a relay older than the tidings.previous header published them: the handler cannot
    tell whether partition 1 holds an earlier event until it delivers something, so it waits and says so
    (the old runner handed them on after its stall timer)."""
    monkeypatch.setattr(runner_module, "STALL_SECONDS", 1.0, raising=False)
    seen: list[int] = []
    with stack(event_store, kafka_namespace, partitions=2) as s:
        s.relay.stop()  # this test publishes, as an old relay would

        class Ordered(EventHandler):
            name = s.name("ordered")

            def handle(self, event: Noted, metadata: EventMetadata) -> None:
                seen.append(metadata.event_number)

        append_noted(event_store, streams=1, per_stream=5)
        eventually(lambda: len(event_store.read_all_forward(1, 5)) == 5, what="the events numbered")
        recorded = event_store.read_all_forward(1, 5)
        producer = Producer({"bootstrap.servers": kafka_namespace.bootstrap_servers})

        def publish(index: int, partition: int) -> None:
            event = recorded[index]
            producer.produce(
                s.topic,
                event.data,
                event.stream_id.encode(),
                partition=partition,
                headers=kafka_headers(event),
            )
            assert producer.flush(30) == 0

        runner = s.run(Ordered)  # it creates the topic
        eventually(lambda: runner.status.state == "running", what="the handler running")
        for index in range(3):
            publish(index, 0)
        eventually(lambda: "tidings.previous" in runner.status.reason, what="the handler says why it waits")
        settle(3.0)  # three times the old runner's shortened stall timer
        assert seen == [], "nothing handed on without proof of its order"
        assert runner.status.state == "running"
        publish(3, 1)  # partition 1 now has a message: the lowest head is provably the next
        eventually(lambda: len(seen) >= 3, what="events 1-3 handed on")
        settle(1.0)
        assert seen == [1, 2, 3], "event 4 waits: partition 0 might still deliver an earlier one"
        publish(4, 0)
        eventually(lambda: len(seen) >= 4, what="event 4 handed on")
    assert seen == [1, 2, 3, 4]


def _used_new_partitions(servers: str, topic: str) -> bool:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": servers, "group.id": "probe"})
    try:
        return all(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] > 0 for p in (2, 3)
        )
    finally:
        consumer.close()
