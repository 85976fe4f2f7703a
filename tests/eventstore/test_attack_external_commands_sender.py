"""Attacks on the command sender (eventstore/command_sender.py), on the real PostgreSQL and Kafka.

Each test states the guarantee it attacks; a failing test is a broken guarantee.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter

from confluent_kafka import Consumer, Producer, TopicPartition
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
    """Stops dead between Kafka's commit and PostgreSQL's marking (as the project's own test does)."""

    def _sent(self, ids: list[int]) -> None:
        self._stopping.set()
        raise _Stopped


def _write(store: PostgresEventStore, destination: str, count: int, size: int = 0) -> list[str]:
    uuids = [str(uuid.uuid4()) for _ in range(count)]
    with store.connection() as conn:
        for n, command_uuid in enumerate(uuids):
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (destination, command_type, command, command_uuid, partition_key) "
                    "VALUES (%s, 'tests.Charge', %s, %s, %s)"
                ).format(sql.Identifier(store.config.schema, "command_outbox")),
                (destination, json.dumps({"n": n, "pad": "x" * size}), command_uuid, f"target-{n % 3}"),
            )
    return uuids


def _on_topic(bootstrap: str, topic: str) -> Counter[str]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"check-{uuid.uuid4()}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
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
                    headers = dict(message.headers() or [])
                    if COMMAND_UUID_HEADER in headers:
                        found[headers[COMMAND_UUID_HEADER].decode()] += 1
            positions = consumer.position([TopicPartition(topic, p) for p in partitions])
            return all(tp.offset >= ends[tp.partition] for tp in positions)

        wait_until(done, 60, "the topic read to its end")
        return found
    finally:
        consumer.close()


def _pending(store: PostgresEventStore) -> tuple[object, ...] | None:
    with store.connection() as conn:
        return conn.execute(
            sql.SQL("SELECT batch_id, batch_offset FROM {} WHERE name = 'default'").format(
                sql.Identifier(store.config.schema, "command_senders")
            )
        ).fetchone()


def test_recovery_with_another_producers_open_transaction_on_the_partition_does_not_resend(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    """Decision 0016: 'Other applications' open transactions on the partition can delay that answer: the
    sender waits and says so (BatchUnconfirmed), it never guesses.' Another application's sender has a
    transaction open on payments.commands[0] (it is alive and slow) while our sender commits a batch there
    and dies before marking it. The new leader must not send the batch a second time."""
    destination = kafka_namespace.topic("payments")
    topic = kafka_namespace.create_topic("payments.commands", partitions=1)
    foreign = Producer(
        {
            "bootstrap.servers": kafka_namespace.bootstrap_servers,
            "transactional.id": f"{kafka_namespace.prefix}other-app-sender",
            "transaction.timeout.ms": 120000,
        }
    )
    foreign.init_transactions(30)
    foreign.begin_transaction()
    foreign.produce(topic, b"{}", b"someone-else", partition=0, headers=[(COMMAND_UUID_HEADER, b"foreign")])
    foreign.flush(30)  # written, not committed: the partition's last stable offset stays before it

    config = SenderConfig(kafka_namespace.bootstrap_servers, poll_interval=0.05)
    written = _write(event_store, destination, 6)
    _DiesBeforeMarking(event_store, config).run()
    assert _pending(event_store) is not None, "the batch is recorded, not marked sent"

    sender = CommandSender(event_store, config)
    sender.start()
    try:
        # The other application's transaction stays open a while (well within its timeout), then ends.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and outbox_status(event_store):
            time.sleep(0.2)
        foreign.abort_transaction(30)
        wait_until(lambda: outbox_status(event_store) == [], 120, "every command marked sent")
    finally:
        sender.stop()
    found = _on_topic(kafka_namespace.bootstrap_servers, commands_topic(destination))
    assert sorted(found) == sorted(written)
    assert dict(found) == dict.fromkeys(written, 1), "each command in Kafka once"


class _PausesBeforeRecording(CommandSender):
    """A leader that stalls (a GC pause, SIGSTOP, a slow VM) after reading its batch and before recording
    it; its leadership session is cut meanwhile."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.reached = threading.Event()
        self.go = threading.Event()

    def _send(self, producer: object, rows: list) -> None:  # type: ignore[override]
        if not self.reached.is_set():
            self.reached.set()
            self.go.wait(120)
        super()._send(producer, rows)  # type: ignore[arg-type]


class _DiesWhenTold(CommandSender):
    """Commits its batch to Kafka, then waits to be told to die before marking it sent."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.committed = threading.Event()
        self.die = threading.Event()

    def _sent(self, ids: list[int]) -> None:
        self.committed.set()
        self.die.wait(120)
        self._stopping.set()
        raise _Stopped


def test_a_deposed_leader_cannot_overwrite_the_new_leaders_batch_record(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    """'Two relays racing: only the leader sends; a deposed leader cannot commit (fencing).' Kafka fences
    the deposed leader's producer, but nothing fences its PostgreSQL writes: it records its batch over the
    new leader's in-flight record. The new leader then dies between Kafka's commit and the marking (the
    window the record exists for), and the third leader finds the zombie's (aborted) batch instead of the
    committed one: the commands go to Kafka twice."""
    destination = kafka_namespace.topic("payments")
    kafka_namespace.create_topic("payments.commands", partitions=1)
    config = SenderConfig(kafka_namespace.bootstrap_servers, poll_interval=0.05, standby_poll=0.1)
    written = _write(event_store, destination, 5)

    zombie = _PausesBeforeRecording(event_store, config)
    zombie.start()
    wait_until(zombie.reached.is_set, 60, "the first leader read its batch")
    # Its leadership session is cut (pg_terminate_backend, a pooler, a network cut: leadership.py).
    with event_store.connection() as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (zombie._leadership.pid,))

    second = _DiesWhenTold(event_store, config)
    second.start()
    wait_until(second.committed.is_set, 60, "the new leader committed its batch to Kafka")
    recorded = _pending(event_store)
    assert recorded is not None
    assert recorded[0] is not None

    zombie.go.set()  # the stalled leader wakes up; its Kafka transaction will be fenced
    # Its PostgreSQL write is fenced too (decision 0016: the leader epoch): it steps down writing nothing.
    wait_until(
        lambda: not zombie.leading.is_set(), 60, "the zombie tried to record its batch and stepped down"
    )
    assert _pending(event_store) == recorded, "the new leader's batch record stands"
    zombie.stop()
    second.die.set()
    second.stop()

    third = CommandSender(event_store, config)
    third.start()
    try:
        wait_until(lambda: outbox_status(event_store) == [], 60, "every command marked sent")
    finally:
        third.stop()
    found = _on_topic(kafka_namespace.bootstrap_servers, commands_topic(destination))
    assert sorted(found) == sorted(written)
    assert dict(found) == dict.fromkeys(written, 1), "each command in Kafka once"


def test_two_relays_with_two_names_send_each_command_once(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    """`tidings relay --name a` and `--name b` on one store each run a sender named after the relay; the
    outbox has no notion of a sender name, so both send everything."""
    destination = kafka_namespace.topic("payments")
    kafka_namespace.create_topic("payments.commands", partitions=1)
    written = _write(event_store, destination, 50)
    senders = [
        CommandSender(event_store, SenderConfig(kafka_namespace.bootstrap_servers, name=n, batch_size=5))
        for n in ("a", "b")
    ]
    for s in senders:
        s.start()
    try:
        wait_until(lambda: outbox_status(event_store) == [], 60, "every command marked sent")
    finally:
        for s in senders:
            s.stop()
    found = _on_topic(kafka_namespace.bootstrap_servers, commands_topic(destination))
    assert dict(found) == dict.fromkeys(written, 1), "each command in Kafka once"


def test_one_oversized_command_does_not_stop_every_other_command(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    """A command larger than Kafka takes (1.5 MB of JSON) sits first in the outbox. The receiver parks a
    bad command per key and goes on; the sender retries the whole batch forever, so commands of other
    targets and other destinations never leave."""
    big = kafka_namespace.topic("big")
    other = kafka_namespace.topic("other")
    kafka_namespace.create_topic("big.commands")
    kafka_namespace.create_topic("other.commands")
    _write(event_store, big, 1, size=1_500_000)
    fine = _write(event_store, other, 3)
    sender = CommandSender(event_store, SenderConfig(kafka_namespace.bootstrap_servers, poll_interval=0.05))
    sender.start()
    try:
        wait_until(
            lambda: [s.destination for s in outbox_status(event_store)] == [big],
            30,
            "the other destination's commands sent",
        )
    finally:
        sender.stop()
    assert sorted(_on_topic(kafka_namespace.bootstrap_servers, commands_topic(other))) == sorted(fine)


def test_a_bad_destination_name_does_not_end_the_sender(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    """External('pay ments') is accepted by the process manager (no check) and written to the outbox. The
    sender's topic-name check raises ConfigurationError, which run() re-raises: the sender's thread ends,
    `tidings relay` goes on without it, and every later command, to any destination, stays unsent."""
    good = kafka_namespace.topic("payments")
    kafka_namespace.create_topic("payments.commands")
    _write(event_store, "pay ments", 1)
    fine = _write(event_store, good, 2)
    sender = CommandSender(event_store, SenderConfig(kafka_namespace.bootstrap_servers, poll_interval=0.05))
    sender.start()
    try:
        wait_until(
            lambda: [s.destination for s in outbox_status(event_store)] == ["pay ments"],
            30,
            "the good destination's commands sent",
        )
        assert sender._thread is not None
        assert sender._thread.is_alive(), "the sender still runs"
    finally:
        sender.stop()
    assert sorted(_on_topic(kafka_namespace.bootstrap_servers, commands_topic(good))) == sorted(fine)


def test_a_row_committed_late_with_a_lower_id_is_not_skipped_(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    """Ids commit out of order: a long transaction holds a low id while later ids commit and are sent."""
    destination = kafka_namespace.topic("payments")
    kafka_namespace.create_topic("payments.commands", partitions=1)
    outbox = sql.Identifier(event_store.config.schema, "command_outbox")
    insert = sql.SQL(
        "INSERT INTO {} (destination, command_type, command, command_uuid, partition_key) "
        "VALUES (%s, 'tests.Charge', '{{}}', %s, 'same-target') RETURNING id"
    ).format(outbox)
    late_uuid, early_uuid = str(uuid.uuid4()), str(uuid.uuid4())
    sender = CommandSender(event_store, SenderConfig(kafka_namespace.bootstrap_servers, poll_interval=0.05))
    with event_store.connection() as late, late.transaction():
        (low,) = late.execute(insert, (destination, late_uuid)).fetchone()
        with event_store.connection() as conn:
            (high,) = conn.execute(insert, (destination, early_uuid)).fetchone()
        assert low < high
        sender.start()
        wait_until(lambda: outbox_status(event_store) == [], 30, "the committed row sent")
    try:
        wait_until(lambda: outbox_status(event_store) == [], 30, "the late row sent")
    finally:
        sender.stop()
    assert dict(_on_topic(kafka_namespace.bootstrap_servers, commands_topic(destination))) == {
        late_uuid: 1,
        early_uuid: 1,
    }
