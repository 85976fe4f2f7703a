"""The command receiver on the real PostgreSQL (and Kafka): a command delivered twice is executed once, in
the transaction of its ``received_commands`` row; what cannot be executed is parked per key, with a
typed error, and executed once an operator retries it."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal

from confluent_kafka import Producer

from eventstore import PostgresEventStore, StreamNotFound
from eventstore.command_sender import COMMAND_TYPE_HEADER, COMMAND_UUID_HEADER, commands_topic
from examples.bank.accounts import Deposit, OpenAccount, accounts
from tests.tidings.test_dispatch import MAPPER
from tests.workers.worker_support import eventually
from tidings import Application
from tidings.json_encode import dataclass_to_json
from tidings.pytest_plugin import KafkaNamespace
from workers.app import WorkerApp, WorkerConfig
from workers.command_receiver import CommandReceiver
from workers.delivery import Delivery, delivery_of
from workers.parking import BEHIND, ParkedEvents
from workers.scheduling import command_type
from workers.status import collect_status

CORRELATION = uuid.uuid4()


def _message(command: object, command_uuid: uuid.UUID, offset: int, key: bytes) -> Delivery:
    headers = [
        (COMMAND_UUID_HEADER, str(command_uuid).encode()),
        (COMMAND_TYPE_HEADER, command_type(command).encode()),
        ("causation_id", str(uuid.uuid4()).encode()),
        ("correlation_id", str(CORRELATION).encode()),
        ("metadata", b'{"user": "ada"}'),
        ("sent_by", b"orders.checkout"),
    ]
    value = json.dumps(dataclass_to_json(command, "test")).encode()
    return delivery_of("bank.commands", 0, offset, key, value, headers)


def _receiver(store: PostgresEventStore, bootstrap: str, name: str = "bank") -> CommandReceiver:
    app = WorkerApp(name, mapper=MAPPER, router=accounts, receive_commands=True)
    return CommandReceiver(app, WorkerConfig(store, bootstrap))


def test_the_same_command_delivered_twice_is_executed_once_caused_by_its_uuid(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    receiver = _receiver(event_store, kafka_namespace.bootstrap_servers)
    account, command_uuid = uuid.uuid4(), uuid.uuid4()
    message = _message(OpenAccount(account, "Ada"), command_uuid, 7, str(account).encode())

    assert receiver.receive(message) == "executed"
    assert receiver.receive(message) == "duplicate", "a redelivery finds its received_commands row"
    (opened,) = event_store.read_stream_forward(f"account-{account}")
    assert opened.causation_id == command_uuid, "the events are caused by the command"
    assert opened.correlation_id == CORRELATION, "and keep the sender's correlation"
    assert MAPPER.from_recorded(opened)[1]["user"] == "ada", "and its metadata"

    # The same command under another uuid is another command: executed (and refused by the aggregate).
    again = _message(OpenAccount(account, "Ada"), uuid.uuid4(), 8, str(account).encode())
    assert receiver.receive(again) == "parked"
    assert len(event_store.read_stream_forward(f"account-{account}")) == 1


def test_bad_commands_are_parked_per_key_with_a_typed_error_and_run_once_retried(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    """Through Kafka: a message of no known type and an undecodable one are parked; a later command of
    the first one's key waits behind it, other keys go on; after a discard and a retry it runs, once."""
    name = kafka_namespace.topic("bank")
    topic = commands_topic(name)
    kafka_namespace.create_topic("bank.commands", partitions=2)
    account, other = uuid.uuid4(), uuid.uuid4()
    Application(event_store, MAPPER, accounts).dispatch(OpenAccount(account, "Ada"))
    key = str(account).encode()
    producer = Producer({"bootstrap.servers": kafka_namespace.bootstrap_servers})

    def send(value: bytes, headers: list[tuple[str, bytes]], message_key: bytes = key) -> None:
        producer.produce(topic, value, message_key, headers=list(headers))

    deposit = Deposit(account, Decimal("5.00"))
    good_headers = [
        (COMMAND_TYPE_HEADER, command_type(deposit).encode()),
        ("correlation_id", str(CORRELATION).encode()),
    ]
    send(
        b'{"whatever": 1}',
        [(COMMAND_UUID_HEADER, str(uuid.uuid4()).encode()), (COMMAND_TYPE_HEADER, b"no.Such")],
    )
    send(b"not json", [(COMMAND_UUID_HEADER, str(uuid.uuid4()).encode()), *good_headers], b"garbage")
    deposit_uuid = uuid.uuid4()
    deposit_json = json.dumps(dataclass_to_json(deposit, "test")).encode()
    send(deposit_json, [(COMMAND_UUID_HEADER, str(deposit_uuid).encode()), *good_headers])
    send(
        json.dumps(dataclass_to_json(OpenAccount(other, "Grace"), "test")).encode(),
        [
            (COMMAND_UUID_HEADER, str(uuid.uuid4()).encode()),
            (COMMAND_TYPE_HEADER, command_type(OpenAccount(other, "Grace")).encode()),
        ],
        str(other).encode(),
    )
    producer.flush(30)

    receiver = CommandReceiver(
        WorkerApp(name, mapper=MAPPER, router=accounts, receive_commands=True),
        WorkerConfig(event_store, kafka_namespace.bootstrap_servers),
    )
    parked = ParkedEvents(event_store)
    receiver.start()
    try:
        eventually(lambda: parked.count(receiver.name) == 3, what="three commands of the key parked")
        eventually(lambda: _stream_length(event_store, f"account-{other}") == 1, what="the other key ran")
        errors: dict[bytes, list[str]] = {}
        for p in parked.list(receiver.name):
            errors.setdefault(p.key, []).append(p.error)
        assert errors[b"garbage"][0].startswith("undecodable command"), errors
        first, behind = errors[key]
        assert first.startswith("unknown command type 'no.Such'"), errors
        assert behind == BEHIND, "the good command waits behind it, in order"
        assert len(event_store.read_stream_forward(f"account-{account}")) == 1, "nothing deposited yet"

        (shown,) = collect_status(
            event_store, kafka_namespace.bootstrap_servers, {}, topics=[], handlers=[]
        ).receivers
        assert (shown.name, shown.parked) == (receiver.name, 3), "tidings status shows them"

        bad = [p.id for p in parked.list(receiver.name) if p.error != BEHIND]
        assert parked.discard(receiver.name, ids=bad) == 2
        parked.release(receiver.name, key)
        eventually(lambda: parked.count(receiver.name) == 0, what="the released command executed")
        deposits = event_store.read_stream_forward(f"account-{account}")[1:]
        assert [d.causation_id for d in deposits] == [deposit_uuid], "executed once"
        # Delivered again (a producer retry, a replay): the received_commands row stops it.
        send(deposit_json, [(COMMAND_UUID_HEADER, str(deposit_uuid).encode()), *good_headers])
        producer.flush(30)
        eventually(
            lambda: _received(event_store, receiver.name, "duplicate") >= 1,
            what="the redelivery seen as a duplicate",
        )
        assert len(event_store.read_stream_forward(f"account-{account}")) == 2
    finally:
        receiver.stop()


def _stream_length(store: PostgresEventStore, stream_id: str) -> int:
    """How many events the stream holds (0 while it does not exist yet)."""
    try:
        return len(store.read_stream_forward(stream_id))
    except StreamNotFound:
        return 0


def _received(store: PostgresEventStore, receiver: str, outcome: str) -> float:
    from workers.metrics import COMMANDS_RECEIVED

    return float(COMMANDS_RECEIVED.labels(receiver, outcome)._value.get())
