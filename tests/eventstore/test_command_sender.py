"""The command sender on the real PostgreSQL and Kafka: a leader that dies after Kafka committed its
batch and before PostgreSQL marked it sent is followed by one that finds the batch and does not send it
again; a batch recorded but never committed goes out again (the death is made to happen at that moment
by a sender whose marking step stops it)."""

from __future__ import annotations

import json
import uuid
from collections import Counter

from confluent_kafka import Consumer, TopicPartition
from psycopg import sql

from eventstore import PostgresEventStore
from eventstore.command_sender import (
    COMMAND_UUID_HEADER,
    CommandSender,
    SenderConfig,
    _Stopped,
    commands_topic,
    outbox_status,
)
from tests.eventstore.relay_support import wait_until
from tidings.pytest_plugin import KafkaNamespace


class _DiesBeforeMarking(CommandSender):
    """Stops dead between Kafka's commit and PostgreSQL's marking, as a kill -9 there would."""

    def _sent(self, ids: list[int]) -> None:
        self._stopping.set()
        raise _Stopped


def _write(store: PostgresEventStore, destination: str, count: int) -> list[str]:
    uuids = [str(uuid.uuid4()) for _ in range(count)]
    with store.connection() as conn:
        for n, command_uuid in enumerate(uuids):
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (destination, command_type, command, command_uuid, partition_key) "
                    "VALUES (%s, 'tests.Charge', %s, %s, %s)"
                ).format(sql.Identifier(store.config.schema, "command_outbox")),
                (destination, json.dumps({"n": n}), command_uuid, f"target-{n % 3}"),
            )
    return uuids


def _on_topic(bootstrap: str, topic: str) -> Counter[str]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"check-{uuid.uuid4()}",
            "isolation.level": "read_committed",
        }
    )
    try:
        partitions = list(consumer.list_topics(topic, timeout=30).topics[topic].partitions)
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in partitions
        }
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        found: Counter[str] = Counter()

        def done() -> bool:
            for message in consumer.consume(500, 0.5):
                if message.error() is None:
                    found[dict(message.headers() or [])[COMMAND_UUID_HEADER].decode()] += 1
            positions = consumer.position([TopicPartition(topic, p) for p in partitions])
            return all(tp.offset >= ends[tp.partition] for tp in positions)

        wait_until(done, 60, "the topic read to its end")
        return found
    finally:
        consumer.close()


def _pending(store: PostgresEventStore) -> object:
    with store.connection() as conn:
        row = conn.execute(
            sql.SQL("SELECT batch_id FROM {} WHERE name = 'default'").format(
                sql.Identifier(store.config.schema, "command_senders")
            )
        ).fetchone()
    return row[0] if row else None


def test_a_batch_committed_before_the_sender_died_is_not_sent_again(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    destination = kafka_namespace.topic("payments")
    kafka_namespace.create_topic("payments.commands", partitions=2)
    config = SenderConfig(kafka_namespace.bootstrap_servers, partitions=2, poll_interval=0.05)
    first = _write(event_store, destination, 12)

    dying = _DiesBeforeMarking(event_store, config)
    dying.run()  # returns once it "died" after its first commit
    assert _pending(event_store) is not None, "the batch is recorded, not marked sent"
    assert outbox_status(event_store)[0].unsent == 12

    second = _write(event_store, destination, 5)
    sender = CommandSender(event_store, config)
    sender.start()
    try:
        wait_until(lambda: outbox_status(event_store) == [], 60, "every command sent")
    finally:
        sender.stop()
    assert sender.sent == 17, "the dead leader's batch counted as sent once found in Kafka"
    found = _on_topic(kafka_namespace.bootstrap_servers, commands_topic(destination))
    assert set(found) == set(first + second)
    assert set(found.values()) == {1}, "each command in Kafka once"


def test_a_batch_recorded_but_never_committed_goes_out_again(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    destination = kafka_namespace.topic("payments")
    kafka_namespace.create_topic("payments.commands", partitions=1)
    written = _write(event_store, destination, 4)
    with event_store.connection() as conn:
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (name, batch_id, batch_ids, batch_topic, batch_partition, batch_offset) "
                "SELECT 'default', %s, array_agg(id), %s, 0, 0 FROM {}"
            ).format(
                sql.Identifier(event_store.config.schema, "command_senders"),
                sql.Identifier(event_store.config.schema, "command_outbox"),
            ),
            (uuid.uuid4(), commands_topic(destination)),
        )
    sender = CommandSender(event_store, SenderConfig(kafka_namespace.bootstrap_servers, poll_interval=0.05))
    sender.start()
    try:
        wait_until(lambda: outbox_status(event_store) == [], 60, "every command sent")
    finally:
        sender.stop()
    found = _on_topic(kafka_namespace.bootstrap_servers, commands_topic(destination))
    assert sorted(found) == sorted(written)
    assert set(found.values()) == {1}
    assert _pending(event_store) is None
