"""Attacks on the operator's decision (``resume_after``, epochs) and on restarts by kill -9 with foreign
messages interleaved in every partition between the kills (issue 19). Real PostgreSQL, real Kafka.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from pathlib import Path

from confluent_kafka import Producer
from psycopg import sql

from eventstore import PostgresEventStore
from eventstore.kafka_tail import EPOCH_HEADER, STORE_HEADER
from eventstore.relay import Relay, RelayConfig, resume_after
from eventstore.routing import Routing
from tests.eventstore.relay_support import (
    RelayProcess,
    Seen,
    Writers,
    append_events,
    assert_exactly_once_in_order,
    read_to_end,
    relay_row,
    relay_verdict,
    start_relay,
    wait_until,
)
from tests.torture import kill_rounds
from tidings.pytest_plugin import KafkaNamespace, PostgresSchema

RETRY = 0.2


def _lose_tail(store: PostgresEventStore, keep: int, epoch: int | None = None) -> None:
    """PostgreSQL restored to a point where it held events 1..keep (and, if given, the relay's epoch)."""
    schema = store.config.schema
    with store.connection() as conn:
        gone = sql.SQL("DELETE FROM {} WHERE event_number > %s RETURNING id").format(
            sql.Identifier(schema, "event_order")
        )
        ids = [row[0] for row in conn.execute(gone, (keep,)).fetchall()]
        conn.execute(
            sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(sql.Identifier(schema, "events")), [ids]
        )
        conn.execute(
            sql.SQL("UPDATE {} SET last_event_number = %s").format(sql.Identifier(schema, "sequencer")),
            [keep],
        )
        if epoch is not None:
            conn.execute(
                sql.SQL("UPDATE {} SET epoch = %s, epoch_start = 0, last_event_number = %s").format(
                    sql.Identifier(schema, "relays")
                ),
                [epoch, keep],
            )


def test_resume_after_clears_a_lost_tail_published_under_a_later_epoch_than_the_restored_store_knows(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace, relays: list[Relay]
) -> None:
    # An operator's decision once (epoch 1); later PostgreSQL is restored from a backup taken before that
    # decision (its relays row says epoch 0) and lost events Kafka has (published under epoch 1). The
    # relay says kafka_ahead, rightly. The operator decides again: resume-after 8. Guarantee 4: the
    # running relay takes it and publishes on.
    topic = kafka_namespace.topic("events")
    config = RelayConfig(kafka_namespace.bootstrap_servers, routing=Routing(topic), problem_retry=RETRY)
    append_events(event_store, streams=2, per_stream=3)
    relay = start_relay(relays, event_store, config)
    wait_until(lambda: relay.last_published == 6, 30, "the relay")
    resume_after(event_store, 6)
    wait_until(lambda: relay._identity.epoch == 1, 30, "the relay takes the first decision")
    append_events(event_store, streams=2, per_stream=3, prefix="later")  # 7..12, under epoch 1
    wait_until(lambda: relay.last_published == 12, 30, "the relay in epoch 1")
    relay.stop()
    _lose_tail(event_store, keep=8, epoch=0)

    second = start_relay(relays, event_store, config)
    wait_until(lambda: relay_verdict(event_store) == "kafka_ahead", 30, "the kafka_ahead verdict")
    resume_after(event_store, 8)
    reused = append_events(event_store, streams=1, per_stream=2, prefix="after-restore")  # 9, 10
    wait_until(lambda: second.last_published == 10, 30, "the relay, after the operator's decision")
    seen = read_to_end(kafka_namespace.bootstrap_servers, [topic])
    assert set(reused) <= {m.event_id for m in seen}
    assert relay_verdict(event_store) == "ok"


def test_resume_after_clears_an_own_message_forged_with_a_far_later_epoch(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace, relays: list[Relay]
) -> None:
    # A message with the store's id and the relay's name, epoch 2**62 and a number above the store's.
    # The relay refuses (kafka_ahead); the operator's resume-after must be able to end that.
    topic = kafka_namespace.topic("events")
    config = RelayConfig(kafka_namespace.bootstrap_servers, routing=Routing(topic), problem_retry=RETRY)
    appended = append_events(event_store, streams=2, per_stream=3)
    relay = start_relay(relays, event_store, config)
    wait_until(lambda: relay.last_published == 6, 30, "the relay")
    relay.stop()
    newest = max(read_to_end(kafka_namespace.bootstrap_servers, [topic]), key=lambda m: m.offset)
    headers: list[tuple[str, str | bytes | None]] = [
        (k, v) for k, v in newest.headers.items() if k not in ("event_number", EPOCH_HEADER, "event_id")
    ]
    headers += [("event_number", b"1000"), ("event_id", str(uuid.uuid4())), (EPOCH_HEADER, str(2**62))]
    producer = Producer({"bootstrap.servers": kafka_namespace.bootstrap_servers})
    producer.produce(topic, b"x", newest.key, partition=newest.partition, headers=headers)
    assert producer.flush(30) == 0

    second = start_relay(relays, event_store, config)
    wait_until(lambda: relay_verdict(event_store) == "kafka_ahead", 30, "the kafka_ahead verdict")
    resume_after(event_store, 6)
    more = append_events(event_store, streams=2, per_stream=1, prefix="more")
    wait_until(lambda: second.last_published == 8, 30, "the relay, after the operator's decision")
    seen = [m for m in read_to_end(kafka_namespace.bootstrap_servers, [topic]) if m.value != b"x"]
    assert_exactly_once_in_order(seen, appended + more)


FOREIGN: list[tuple[bytes | None, list[tuple[str, str | bytes | None]]]] = [
    (os.urandom(64), []),
    (None, []),
    (b"x", [("event_number", b"99999999"), ("event_id", str(uuid.uuid4()))]),
    (b"x", [("event_number", str(2**70).encode()), ("event_id", b"not-a-uuid")]),
    (b"x", [("event_number", b"3"), ("event_id", str(uuid.uuid4())), (STORE_HEADER, b"\xff")]),
    (b"x", [("event_number", b""), ("event_number", b"5")]),
]


def _interleave_foreign(bootstrap: str, topic: str, partitions: int, rng: random.Random) -> int:
    producer = Producer({"bootstrap.servers": bootstrap})
    count = 0
    for partition in range(partitions):
        for _ in range(rng.randint(0, 3)):
            value, headers = rng.choice(FOREIGN)
            producer.produce(topic, value, b"foreign", partition=partition, headers=headers)
            count += 1
    assert producer.flush(30) == 0
    return count


def test_kill_9_with_foreign_messages_interleaved_in_every_partition_between_the_kills(
    event_store: PostgresEventStore,
    postgres_schema: PostgresSchema,
    kafka_namespace: KafkaNamespace,
    tmp_path: Path,
) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": postgres_schema.server_url,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_namespace.bootstrap_servers,
        "TIDINGS_SCHEMA": postgres_schema.name,
    }
    args = ["--app", kafka_namespace.topic("bank"), "--partitions", "4", "--batch-size", "20"]
    topic = kafka_namespace.topic("bank.events")
    rng = random.Random(20261207)
    foreign = 0
    with Writers(event_store) as writers:
        for round_ in range(kill_rounds(6)):
            relay = RelayProcess(env, args, tmp_path / f"relay-{round_}.log")
            before = relay_row(event_store)[1]
            wait_until(
                lambda b=before: relay_row(event_store)[1] > b, 60, f"round {round_}: a batch committed"
            )
            time.sleep(rng.uniform(0.0, 0.3))  # the moment of the kill, chosen at random
            relay.kill()
            foreign += _interleave_foreign(kafka_namespace.bootstrap_servers, topic, 4, rng)
        final = RelayProcess(env, args, tmp_path / "relay-final.log")
        writers.stop()
        last = event_store.sequencer.catch_up()
        wait_until(lambda: relay_row(event_store)[1] >= last, 120, "the final relay")
        assert final.terminate() == 0

    seen = read_to_end(kafka_namespace.bootstrap_servers, [topic])
    ours: list[Seen] = [m for m in seen if m.key != b"foreign"]
    assert len(seen) - len(ours) == foreign
    assert_exactly_once_in_order(ours, writers.appended)
    assert relay_verdict(event_store) == "ok"
