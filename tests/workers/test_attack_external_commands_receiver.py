"""Attacks on the command receiver (workers/command_receiver.py), on the real PostgreSQL and Kafka.

The guarantee attacked: 'unknown / undecodable / rejected commands are parked per key with typed errors,
never dropped, never stopping the worker'. A failing test is a broken guarantee.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Producer

from eventstore import PostgresEventStore, StreamNotFound
from eventstore.command_sender import COMMAND_TYPE_HEADER, COMMAND_UUID_HEADER, commands_topic
from examples.bank.accounts import OpenAccount, accounts
from tests.tidings.test_dispatch import MAPPER
from tests.workers.worker_support import eventually
from tidings import EventMapper, JsonCodec, TypeRegistry
from tidings.json_encode import dataclass_to_json
from tidings.pytest_plugin import KafkaNamespace
from tidings.router import Router
from workers.app import WorkerApp, WorkerConfig
from workers.command_receiver import CommandReceiver
from workers.delivery import delivery_of
from workers.parking import ParkedEvents
from workers.scheduling import command_type


def _headers(command_uuid: uuid.UUID, type_name: str) -> list[tuple[str, bytes]]:
    return [
        (COMMAND_UUID_HEADER, str(command_uuid).encode()),
        (COMMAND_TYPE_HEADER, type_name.encode()),
        ("metadata", b"{}"),
        ("sent_by", b"attacker"),
    ]


def _receiver(store: PostgresEventStore, bootstrap: str, name: str = "bank") -> CommandReceiver:
    return CommandReceiver(
        WorkerApp(name, mapper=MAPPER, router=accounts, receive_commands=True), WorkerConfig(store, bootstrap)
    )


DEEP = b"[" * 100_000 + b"]" * 100_000


def test_a_deeply_nested_json_value_is_parked_not_raised(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    """json.loads raises RecursionError (a RuntimeError) on deep nesting; decode() catches only ValueError,
    TypeError and AttributeError."""
    receiver = _receiver(event_store, kafka_namespace.bootstrap_servers)
    open_type = command_type(OpenAccount(uuid.uuid4(), "x"))
    message = delivery_of("bank.commands", 0, 1, b"k", DEEP, _headers(uuid.uuid4(), open_type))
    assert receiver.receive(message) == "parked"


def test_a_deeply_nested_metadata_header_is_parked_not_raised(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    receiver = _receiver(event_store, kafka_namespace.bootstrap_servers)
    account = uuid.uuid4()
    value = json.dumps(dataclass_to_json(OpenAccount(account, "Ada"), "t")).encode()
    headers = _headers(uuid.uuid4(), command_type(OpenAccount(account, "Ada")))
    headers = [(n, DEEP if n == "metadata" else v) for n, v in headers]
    message = delivery_of("bank.commands", 0, 1, str(account).encode(), value, headers)
    assert receiver.receive(message) == "parked"


def test_one_poison_message_does_not_stop_the_worker(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    """Through Kafka, as `tidings worker` runs it: a deeply nested message (key A), then a good command
    (key B) on the same partition. The good one must run and the bad one be parked."""
    name = kafka_namespace.topic("bank")
    topic = commands_topic(name)
    kafka_namespace.create_topic("bank.commands", partitions=1)
    account = uuid.uuid4()
    good = OpenAccount(account, "Grace")
    producer = Producer({"bootstrap.servers": kafka_namespace.bootstrap_servers})
    producer.produce(topic, DEEP, b"poison", headers=_headers(uuid.uuid4(), command_type(good)))
    producer.produce(
        topic,
        json.dumps(dataclass_to_json(good, "t")).encode(),
        str(account).encode(),
        headers=_headers(uuid.uuid4(), command_type(good)),
    )
    producer.flush(30)
    receiver = _receiver(event_store, kafka_namespace.bootstrap_servers, name)
    parked = ParkedEvents(event_store)
    receiver.start()

    def opened() -> bool:
        try:
            return len(event_store.read_stream_forward(f"account-{account}")) == 1
        except StreamNotFound:
            return False

    try:
        try:
            eventually(opened, timeout=45, what="the good command executed")
        except AssertionError as failed:
            raise AssertionError(f"{failed}; the receiver's last error: {receiver.reason!r}") from None
        eventually(lambda: parked.count(receiver.name) == 1, timeout=10, what="the poison parked")
    finally:
        receiver.stop()


# A command whose class checks itself with a domain exception of its own (common in user code).


class InvalidLimit(Exception):
    pass


@dataclass(frozen=True)
class OpenTab:
    tab_id: uuid.UUID
    limit: int

    def __post_init__(self) -> None:
        if self.limit < 0:
            raise InvalidLimit(f"limit {self.limit} < 0")


registry = TypeRegistry(namespace="atktab")


@registry.register
@dataclass(frozen=True)
class TabOpened:
    tab_id: uuid.UUID
    limit: int


@dataclass(frozen=True)
class Tab:
    open: bool = False

    def execute(self, command: Any) -> Any:
        return TabOpened(command.tab_id, command.limit)

    def apply(self, event: Any) -> Tab:
        return Tab(True)


tabs = Router()
tabs.dispatch(OpenTab, to=Tab, identity="tab_id", identity_prefix="tab-")


def test_a_command_whose_class_refuses_the_values_with_its_own_exception_is_parked(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    """The sender's class and the receiver's agree on module and name, but the receiver's __post_init__
    refuses the value with a domain exception (not ValueError/TypeError)."""
    receiver = CommandReceiver(
        WorkerApp("tabs", mapper=EventMapper(JsonCodec(registry)), router=tabs, receive_commands=True),
        WorkerConfig(event_store, kafka_namespace.bootstrap_servers),
    )
    tab = uuid.uuid4()
    value = json.dumps({"tab_id": str(tab), "limit": -1}).encode()
    message = delivery_of(
        "tabs.commands", 0, 1, str(tab).encode(), value, _headers(uuid.uuid4(), command_type(OpenTab(tab, 1)))
    )
    assert receiver.receive(message) == "parked"
