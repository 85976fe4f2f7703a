"""Attack: a global-order handler reading two topics, one of which grows while events flow (issue 20,
case 2). Each message names, per topic, the event published there before it, so the merge waits for an
event on a partition it has not joined yet, on either topic."""

from __future__ import annotations

import functools

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewPartitions

from eventstore.postgres.store import PostgresEventStore
from eventstore.relay import Relay, RelayConfig
from eventstore.routing import Route, Routing
from tests.workers.worker_support import Noted, append_noted, eventually, mapper, stack
from tidings.pytest_plugin import KafkaNamespace
from workers import EventHandler, EventMetadata
from workers import runner as runner_module
from workers.app import WorkerApp
from workers.runner import HandlerRunner


def test_a_partition_added_to_one_of_two_topics_keeps_global_order(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner_module, "METADATA_SECONDS", 1.0)
    seen: list[int] = []
    with stack(event_store, kafka_namespace, partitions=2) as s:
        other = f"{s.app_name}.other"
        routing = Routing(s.topic, by_category={"b": Route(topic=other)})
        s.relay.stop()
        s.relay = Relay(
            event_store,
            RelayConfig(
                kafka_namespace.bootstrap_servers,
                app=s.app_name,
                partitions=2,
                batch_size=50,
                routing=routing,
                kafka={"topic.metadata.refresh.interval.ms": "500"},
            ),
        )
        s.relay.start()

        class Both(EventHandler):
            name = s.name("both")

            def handle(self, event: Noted, metadata: EventMetadata) -> None:
                seen.append(metadata.event_number)

        app = WorkerApp(s.app_name, mapper=mapper, handlers=[Both], routing=routing)
        runner = HandlerRunner(Both, app, s.config)
        s.runners.append(runner)
        total = 0
        for _ in range(2):
            total += len(append_noted(event_store, streams=6, per_stream=1, prefix="a"))
            total += len(append_noted(event_store, streams=6, per_stream=1, prefix="b-"))
        runner.start()
        eventually(lambda: len(seen) >= total, what="first handled")
        admin = AdminClient({"bootstrap.servers": kafka_namespace.bootstrap_servers})
        for future in admin.create_partitions([NewPartitions(other, 4)]).values():
            future.result(timeout=30)
        # Events on both topics, until the relay has put some on the new partitions, then more.
        round_ = 0
        while not _used(kafka_namespace.bootstrap_servers, other, (2, 3)) and round_ < 40:
            total += len(append_noted(event_store, streams=6, per_stream=1, prefix=f"b-{round_}-"))
            total += len(append_noted(event_store, streams=2, per_stream=1, prefix=f"a{round_}-"))
            eventually(functools.partial(_relayed, s.relay, total), what="relayed")
            round_ += 1
        assert _used(kafka_namespace.bootstrap_servers, other, (2, 3)), "the relay used the new partitions"
        total += len(append_noted(event_store, streams=6, per_stream=2, prefix="b-after-"))
        total += len(append_noted(event_store, streams=2, per_stream=2, prefix="after"))
        eventually(lambda: len(seen) >= total, timeout=60, what="every event handled")
        assert sorted(runner.status.assigned) == sorted(
            [f"{s.topic}[0]", f"{s.topic}[1]", *(f"{other}[{p}]" for p in range(4))]
        ), runner.status.assigned
    assert seen == list(range(1, total + 1)), seen


def _relayed(relay: Relay, count: int) -> bool:
    return relay.last_published >= count


def _used(servers: str, topic: str, partitions: tuple[int, ...]) -> bool:
    """Whether each of ``partitions`` holds a message (False while a new partition has no leader yet)."""
    consumer = Consumer({"bootstrap.servers": servers, "group.id": "probe"})
    try:
        return all(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] > 0 for p in partitions
        )
    except KafkaException:
        return False
    finally:
        consumer.close()
