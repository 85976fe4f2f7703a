"""Two applications, two schemas, one test: orders' process manager charges through payments and hears
back, by commands, across a kill -9 of the sender (``tidings relay`` of orders) and of the receiving
worker (``tidings worker`` of payments). Every command is executed exactly once and sent to Kafka once
(real PostgreSQL, real Kafka, processes as users run them)."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition
from psycopg import sql

from eventstore import PostgresEventStore, StoreConfig, StreamNotFound, migrate
from eventstore.command_sender import COMMAND_UUID_HEADER, commands_topic, outbox_status
from eventstore.records import RecordedEvent
from tests.eventstore.relay_support import RelayProcess
from tests.workers.cli_support import WorkerProcess, worker_env
from tests.workers.command_apps import (
    ChargePayment,
    OrderPaid,
    PaymentCharged,
    PlaceOrder,
    mapper,
    orders_router,
    payment_for,
)
from tests.workers.worker_support import eventually
from tidings import Application
from tidings.pytest_plugin import KafkaNamespace, PostgresSchema
from workers.process_instances import ProcessInstances

ORDERS = 40


@pytest.fixture
def payments_store(postgres_schema: PostgresSchema) -> Iterator[PostgresEventStore]:
    """The second application's store: a schema of its own beside the test's."""
    name = f"{postgres_schema.name[:50]}_pay"
    with psycopg.connect(postgres_schema.server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    config = StoreConfig(postgres_schema.server_url, name)
    migrate(config)
    store = PostgresEventStore(config)
    yield store
    store.close()
    with psycopg.connect(postgres_schema.server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


def _count(store: PostgresEventStore, query: str) -> int:
    with store.connection() as conn:
        conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(store.config.schema)))
        row = conn.execute(query).fetchone()  # type: ignore[arg-type]
    return int(row[0]) if row else 0


def _stream(store: PostgresEventStore, stream: str) -> list[RecordedEvent]:
    try:
        return list(store.read_stream_forward(stream))
    except StreamNotFound:
        return []


def _command_uuids_in(bootstrap: str, topic: str) -> Counter[str]:
    """Every committed message's command_uuid on ``topic``, read to its end."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"check-{uuid.uuid4()}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in partitions
        }
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        found: Counter[str] = Counter()
        done: set[int] = set()

        def finished() -> bool:
            for message in consumer.consume(500, 0.5):
                if message.error() is None:
                    found[str(dict(message.headers() or [])[COMMAND_UUID_HEADER], "utf-8")] += 1
            for tp in consumer.position([TopicPartition(topic, p) for p in partitions]):
                if tp.offset >= ends[tp.partition]:
                    done.add(tp.partition)
            return len(done) == len(partitions)

        eventually(finished, timeout=60, what=f"{topic} read to its end")
        return found
    finally:
        consumer.close()


@pytest.mark.slow
def test_a_process_manager_drives_another_application_exactly_once_across_kill_9(
    event_store: PostgresEventStore,
    payments_store: PostgresEventStore,
    postgres_schema: PostgresSchema,
    kafka_namespace: KafkaNamespace,
    tmp_path: Path,
) -> None:
    orders_app, payments_app = kafka_namespace.topic("orders"), kafka_namespace.topic("payments")
    for app in ("orders", "payments"):
        for kind in ("events", "commands"):
            kafka_namespace.create_topic(f"{app}.{kind}", partitions=2)
    names = {"TIDINGS_TEST_ORDERS_APP": orders_app, "TIDINGS_TEST_PAYMENTS_APP": payments_app}
    orders_env = worker_env(postgres_schema, kafka_namespace, orders_app, **names)
    payments_env = {**orders_env, "TIDINGS_SCHEMA": payments_store.config.schema}
    relay_args = ["--partitions", "2", "--standby-poll", "0.5"]
    worker_args = ["--partitions", "2"]

    def relay(env: dict[str, str], app: str, log: str) -> RelayProcess:
        return RelayProcess(env, ["--app", app, *relay_args], tmp_path / log)

    def worker(env: dict[str, str], spec: str, log: str) -> WorkerProcess:
        return WorkerProcess([f"tests.workers.command_apps:{spec}", *worker_args], env, tmp_path / log)

    orders = Application(event_store, mapper, orders_router)
    placed = [uuid.uuid4() for _ in range(ORDERS)]
    sent = "SELECT count(*) FROM command_outbox WHERE sent_at IS NOT NULL"
    received = "SELECT count(*) FROM received_commands"
    processes: list[RelayProcess | WorkerProcess] = []
    try:
        orders_relay = relay(orders_env, orders_app, "orders-relay.log")
        processes += [
            orders_relay,
            relay(payments_env, payments_app, "payments-relay.log"),
            worker(orders_env, "build_orders", "orders-worker.log"),
        ]
        payments_worker = worker(payments_env, "build_payments", "payments-worker.log")
        processes.append(payments_worker)
        for order in placed[: ORDERS // 2]:
            orders.dispatch(PlaceOrder(order, Decimal("12.50")))

        # kill -9 of the sender while it sends: some commands sent, not all.
        eventually(lambda: _count(event_store, sent) >= 3, timeout=180, what="the first commands sent")
        orders_relay.kill()
        for order in placed[ORDERS // 2 :]:
            orders.dispatch(PlaceOrder(order, Decimal("7.00")))
        processes.append(relay(orders_env, orders_app, "orders-relay-2.log"))

        # kill -9 of the receiving worker while it executes.
        eventually(
            lambda: _count(payments_store, received) >= ORDERS // 3, timeout=180, what="payments receiving"
        )
        payments_worker.kill()
        processes.append(worker(payments_env, "build_payments", "payments-worker-2.log"))

        paid = "SELECT count(*) FROM streams WHERE stream_id LIKE 'order-%' AND stream_version = 2"
        eventually(lambda: _count(event_store, paid) == ORDERS, timeout=300, what="every order paid")
        checkout = f"{kafka_namespace.prefix}checkout"
        eventually(
            lambda: ProcessInstances(event_store).count(checkout) == 0,
            timeout=60,
            what="every checkout completed",
        )
    finally:
        for process in processes:
            if process.process.poll() is None:
                process.terminate()

    outbox: dict[uuid.UUID, uuid.UUID] = {}
    with event_store.connection() as conn:
        for command, command_uuid in conn.execute(
            sql.SQL("SELECT command, command_uuid FROM {} WHERE command_type = %s").format(
                sql.Identifier(event_store.config.schema, "command_outbox")
            ),
            (f"{ChargePayment.__module__}.{ChargePayment.__qualname__}",),
        ):
            outbox[uuid.UUID(command["order_id"])] = command_uuid
    assert sorted(outbox) == sorted(placed), "one ChargePayment per order"
    for order in placed:
        placed_event, paid_event = _stream(event_store, f"order-{order}")
        charges = _stream(payments_store, f"payment-{payment_for(order)}")
        assert len(charges) == 1, f"order {order}: charged {len(charges)} times"
        (charge,) = charges
        assert isinstance(mapper.event_of(charge), PaymentCharged)
        assert charge.causation_id == outbox[order], "caused by the command's uuid"
        assert charge.correlation_id == placed_event.correlation_id, "correlated with the order's flow"
        assert isinstance(mapper.event_of(paid_event), OrderPaid)
        assert paid_event.correlation_id == placed_event.correlation_id, "the reply keeps the correlation"
    assert _count(payments_store, received) == ORDERS, "payments executed each ChargePayment once"
    assert _count(event_store, received) == ORDERS, "orders executed each reply once"
    assert outbox_status(event_store) == [], "every ChargePayment sent"
    assert outbox_status(payments_store) == [], "every reply sent"
    for app in (payments_app, orders_app):
        on_topic = _command_uuids_in(kafka_namespace.bootstrap_servers, commands_topic(app))
        assert len(on_topic) == ORDERS, f"every command on {app}.commands"
        assert set(on_topic.values()) == {1}, "each command in Kafka once"
