"""Attack: messages without proof of their order on a topic that grew (issue 20, cases 1 and 2).

Messages of a relay older than the ``tidings.previous`` header carry no proof of their order; the merge
hands the lowest on "only once every partition has a message waiting, which is then certain to be the
next one". That holds only while the handler knows every partition: a partition added to the topic is
joined at the next metadata look (every ``METADATA_SECONDS``), and until then the merge counts heads on
an incomplete set. An event already on the new partition is earlier than the heads it has.
"""

from __future__ import annotations

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewPartitions

from eventstore.postgres.store import PostgresEventStore
from tests.workers.worker_support import Noted, append_noted, eventually, kafka_headers, settle, stack
from tidings.pytest_plugin import KafkaNamespace
from workers import EventHandler, EventMetadata
from workers import runner as runner_module


def test_unproven_messages_are_not_handed_on_while_a_new_partition_is_not_joined_yet(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guards "never guesses" (global order). Before 41b495d, with heads on partitions 0 and 1 only, the
    merge took event 2 as provably next although event 1 waited on partition 2, added a moment before;
    once partition 2 was joined, event 1 was below the merge's last and skipped as already seen (the
    handler saw [2])."""
    # The window between a partition's creation and the handler's next look at the metadata (5 s),
    # widened to 10 s so that the publishing below surely falls in it.
    monkeypatch.setattr(runner_module, "METADATA_SECONDS", 10.0)
    seen: list[int] = []
    with stack(event_store, kafka_namespace, partitions=2) as s:
        s.relay.stop()  # this test publishes, as a relay older than the tidings.previous header would

        class Ordered(EventHandler):
            name = s.name("ordered")

            def handle(self, event: Noted, metadata: EventMetadata) -> None:
                seen.append(metadata.event_number)

        append_noted(event_store, streams=1, per_stream=3)
        eventually(lambda: len(event_store.read_all_forward(1, 3)) == 3, what="the events numbered")
        recorded = event_store.read_all_forward(1, 3)
        runner = s.run(Ordered)  # it creates the topic
        eventually(lambda: runner.status.state == "running", what="the handler running")
        admin = AdminClient({"bootstrap.servers": kafka_namespace.bootstrap_servers})
        for future in admin.create_partitions([NewPartitions(s.topic, 3)]).values():
            future.result(timeout=30)
        producer = Producer({"bootstrap.servers": kafka_namespace.bootstrap_servers})
        # In order, as the old relay publishes: event 1 to the new partition, then 2 and 3.
        for event, partition in zip(recorded, (2, 0, 1), strict=True):
            headers: list[tuple[str, str | bytes | None]] = list(kafka_headers(event))
            producer.produce(
                s.topic, event.data, event.stream_id.encode(), partition=partition, headers=headers
            )
        assert producer.flush(30) == 0
        # The handler joins partition 2 within METADATA_SECONDS; give it that and a little more.
        eventually(lambda: len(runner.status.assigned) == 3, timeout=30, what="partition 2 joined")
        eventually(lambda: bool(seen), timeout=10, what="something handed on")
        settle(1.0)
        print("seen", seen, "reason", runner.status.reason)
    assert seen[0] == 1, f"handed on {seen} first: event 1 waited on the partition not joined yet"
    assert seen == list(range(1, len(seen) + 1)), f"handed on {seen}"
