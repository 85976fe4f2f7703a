"""Attack (commit 60d18af): the relay chooses partitions itself from a partition count it keeps for
10 s; its topic is deleted and recreated with another count while it runs.

What must hold on the recreated topic: every event appended after the recreation once, in order per
key, each message's tidings.partition header naming the partition it is on, and each key where
murmur2_random puts it for the topic's partition count.
"""

from __future__ import annotations

import time

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from eventstore import PostgresEventStore
from eventstore.kafka_tail import PARTITION_HEADER
from eventstore.partitioner import KeyPartitioner
from eventstore.relay import Relay, RelayConfig
from eventstore.routing import Routing
from tests.eventstore.relay_support import (
    append_events,
    assert_exactly_once_in_order,
    read_to_end,
    start_relay,
    wait_until,
)
from tidings.pytest_plugin import KafkaNamespace


@pytest.mark.parametrize(("before", "after"), [(4, 2)])
def test_a_topic_recreated_with_another_partition_count_under_a_running_relay(
    event_store: PostgresEventStore,
    kafka_namespace: KafkaNamespace,
    relays: list[Relay],
    before: int,
    after: int,
) -> None:
    topic = kafka_namespace.topic("events")
    config = RelayConfig(
        kafka_namespace.bootstrap_servers, routing=Routing(topic), partitions=before, problem_retry=0.2
    )
    append_events(event_store, streams=8, per_stream=2)
    relay = start_relay(relays, event_store, config)
    wait_until(lambda: relay.last_published == 16, 30, "the relay")
    admin = AdminClient({"bootstrap.servers": kafka_namespace.bootstrap_servers})
    for future in admin.delete_topics([topic], operation_timeout=30).values():
        future.result(30)
    wait_until(lambda: topic not in admin.list_topics(timeout=10).topics, 30, "the topic deleted")
    for future in admin.create_topics([NewTopic(topic, after, 1)], operation_timeout=30).values():
        future.result(30)
    recreated = time.monotonic()
    appended = append_events(event_store, streams=8, per_stream=3, prefix="after")
    wait_until(lambda: relay.last_published == 16 + len(appended), 90, "the relay, on the recreated topic")
    took = time.monotonic() - recreated
    seen = [m for m in read_to_end(kafka_namespace.bootstrap_servers, [topic]) if m.event_number > 16]
    assert_exactly_once_in_order(seen, appended)
    partitioner = KeyPartitioner()
    wrong_header = [(m.event_number, m.partition, m.headers.get(PARTITION_HEADER)) for m in seen]
    wrong_header = [w for w in wrong_header if w[2] != str(w[1]).encode()]
    assert not wrong_header, wrong_header
    misplaced = [
        (m.event_number, m.key, m.partition, partitioner.partition(m.key, after))
        for m in seen
        if m.partition != partitioner.partition(m.key, after)
    ]
    assert not misplaced, f"keys not where murmur2 puts them on {after} partitions ({took:.1f}s): {misplaced}"
