"""The provided Kafka carries messages through confluent-kafka, and a group's committed offsets last."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from tidings.pytest_plugin import KafkaNamespace

DEADLINE_SECONDS = 60.0


def _produce(bootstrap: str, topic: str, values: list[bytes], key: bytes = b"k") -> None:
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "partitioner": "murmur2_random",
        }
    )
    failures: list[KafkaError] = []

    def on_delivery(error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            failures.append(error)

    for value in values:
        producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
    assert producer.flush(DEADLINE_SECONDS) == 0
    assert failures == []


def _consumer(bootstrap: str, group: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )


def _take(consumer: Consumer, count: int) -> list[Message]:
    """Poll until ``count`` messages arrived or the deadline passed."""
    taken: list[Message] = []
    deadline = time.monotonic() + DEADLINE_SECONDS
    while len(taken) < count and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is None:
            continue
        assert message.error() is None, message.error()
        taken.append(message)
    return taken


def test_produce_and_consume_with_a_group(kafka_namespace: KafkaNamespace) -> None:
    bootstrap = kafka_namespace.bootstrap_servers
    topic = kafka_namespace.create_topic("events", partitions=3)
    values = [f"event-{i}".encode() for i in range(20)]
    _produce(bootstrap, topic, values)

    consumer = _consumer(bootstrap, kafka_namespace.group("readers"))
    consumer.subscribe([topic])
    try:
        received = _take(consumer, len(values))
    finally:
        consumer.close()

    # One key means one partition, so the order of production is the order of consumption.
    assert [m.value() for m in received] == values
    assert {m.partition() for m in received} == {received[0].partition()}


def test_committed_offsets_survive_a_consumer_restart(kafka_namespace: KafkaNamespace) -> None:
    bootstrap = kafka_namespace.bootstrap_servers
    topic = kafka_namespace.create_topic("events")
    group = kafka_namespace.group("restartable")
    values = [f"event-{i}".encode() for i in range(10)]
    _produce(bootstrap, topic, values)

    first = _consumer(bootstrap, group)
    first.subscribe([topic])
    try:
        head = _take(first, 4)
        assert [m.value() for m in head] == values[:4]
        first.commit(message=head[-1], asynchronous=False)
    finally:
        first.close()

    second = _consumer(bootstrap, group)
    try:
        committed = second.committed([TopicPartition(topic, 0)], timeout=DEADLINE_SECONDS)
        assert committed[0].offset == 4
        second.subscribe([topic])
        rest = _take(second, 6)
        assert [m.value() for m in rest] == values[4:]
        # Nothing beyond the produced messages is delivered.
        assert second.poll(1.0) is None
    finally:
        second.close()


def test_namespaces_separate_topics(kafka_namespace: KafkaNamespace) -> None:
    topic = kafka_namespace.create_topic("mine")
    assert topic.startswith(kafka_namespace.prefix)
    assert kafka_namespace.group("g").startswith(kafka_namespace.prefix)


def test_a_cluster_id_that_looks_like_an_option_still_formats(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # One id in 64 starts with "-"; the storage tool must not take it for an option.
    import tidings.devservices.local_kafka as local_kafka

    monkeypatch.setattr(local_kafka, "_cluster_id", lambda: "-AAAAAAAAAAAAAAAAAAAAA")
    broker = local_kafka.LocalKafka(run_dir=tmp_path)
    broker.port, broker.controller_port = local_kafka.free_port(), local_kafka.free_port()
    config = broker._write_config()
    broker._format(local_kafka.kafka_jars(), config)
    assert (broker.data_dir / "meta.properties").read_text().count("cluster.id=-AAAAAAAAAAAAAAAAAAAAA") == 1
