"""Avro bytes through the real PostgreSQL and the real Kafka: stored and sent as they are, read back equal.

Also the Confluent framing against confluent-kafka's in-memory mock Schema Registry (``mock://``).
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from confluent_kafka import Consumer, Producer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventstore import NO_STREAM, PostgresEventStore
from examples.bank import events as bank
from tests.tidings.avro_support import SCHEMAS, bank_events
from tidings import EventMapper, SchemaFileError, UnknownSchema
from tidings.avro import SINGLE_OBJECT_MARKER, AvroCodec, RegistryFraming, SchemaSet, topic_record_name
from tidings.pytest_plugin import KafkaNamespace

POLL_DEADLINE_SECONDS = 30


@pytest.fixture(scope="module")
def codec() -> AvroCodec:
    return AvroCodec(bank.events, SchemaSet.load(SCHEMAS))


@settings(max_examples=10, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=st.lists(bank_events, min_size=1, max_size=8))
def test_avro_events_round_trip_through_postgresql(
    event_store: PostgresEventStore, codec: AvroCodec, events: list[object]
) -> None:
    mapper = EventMapper(codec)
    stream = f"bank-{uuid.uuid4()}"
    correlation = uuid.uuid4()
    event_store.append_to_stream(
        stream,
        NO_STREAM,
        [mapper.to_event_data(e, metadata={"user": "ada"}, correlation_id=correlation) for e in events],
    )
    recorded = event_store.read_stream_forward(stream)
    for stored, original in zip(recorded, events, strict=True):
        version = codec.schemas.latest(stored.event_type)
        assert version is not None
        # PostgreSQL holds the single-object bytes and names their schema beside them.
        assert stored.data.startswith(SINGLE_OBJECT_MARKER + version.fingerprint)
        assert stored.schema_id == f"avro:{version.fingerprint.hex()}"
        event, metadata = mapper.from_recorded(stored)
        assert event == original
        assert metadata == {"user": "ada"}
        assert stored.correlation_id == correlation


def _consume(kafka: KafkaNamespace, topic: str, count: int) -> list[tuple[bytes, dict[str, bytes]]]:
    consumer = Consumer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "group.id": kafka.group("avro-reader"),
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([topic])
    received: list[tuple[bytes, dict[str, bytes]]] = []
    deadline = time.monotonic() + POLL_DEADLINE_SECONDS
    try:
        while len(received) < count and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            value = message.value()
            assert value is not None
            received.append((value, dict(message.headers() or [])))
    finally:
        consumer.close()
    return received


def test_the_stored_bytes_go_through_kafka_unchanged_and_decode(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace, codec: AvroCodec
) -> None:
    mapper = EventMapper(codec)
    now = datetime.now(UTC)
    events = [
        bank.AccountOpened(uuid.uuid4(), "Ada", "EUR", now, Decimal("250.00"), ["vip"]),
        bank.MoneyDeposited(uuid.uuid4(), Decimal("10.25"), Decimal("260.25"), now, uuid.uuid4()),
        bank.DepositRejected(uuid.uuid4(), uuid.uuid4(), bank.RejectionReason.ACCOUNT_CLOSED, now),
        bank.AccountClosed(uuid.uuid4(), now.date(), {"why": "moved"}),
    ]
    event_store.append_to_stream("account-k", NO_STREAM, [mapper.to_event_data(e) for e in events])
    stored = event_store.read_stream_forward("account-k")
    topic = kafka_namespace.create_topic("bank-events")
    producer = Producer({"bootstrap.servers": kafka_namespace.bootstrap_servers, "enable.idempotence": True})
    for record in stored:
        producer.produce(
            topic,
            key=record.stream_id.encode(),
            value=record.data,
            headers={"event_type": record.event_type.encode(), "schema_id": record.schema_id.encode()},
        )
    assert producer.flush(POLL_DEADLINE_SECONDS) == 0
    received = _consume(kafka_namespace, topic, len(events))
    assert [value for value, _ in received] == [record.data for record in stored]
    decoded = [
        codec.decode(headers["event_type"].decode(), value, headers["schema_id"].decode())
        for value, headers in received
    ]
    assert decoded == events


def test_confluent_framing_round_trips_against_the_in_memory_mock_registry(codec: AvroCodec) -> None:
    from confluent_kafka.schema_registry import SchemaRegistryClient

    client = SchemaRegistryClient.new_client({"url": f"mock://{uuid.uuid4()}"})
    schemas = SchemaSet.load(SCHEMAS)
    registry_codec = AvroCodec(
        bank.events, schemas, framing=RegistryFraming(client, schemas, auto_register=True)
    )
    event = bank.TransferRequested(
        uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), Decimal("5.00"), datetime.now(UTC)
    )
    encoded = registry_codec.encode(event)
    schema_id = int.from_bytes(encoded.data[1:5], "big")
    assert encoded.data[0] == 0
    assert encoded.schema_id == f"avro-registry:{schema_id}"
    # The subject is the record name, so every event type can share one topic.
    assert client.get_latest_version("bank.TransferRequested").schema_id == schema_id
    assert registry_codec.decode(encoded.event_type, encoded.data, encoded.schema_id) == event

    # A reader that knows only the registry (a fresh framing, nothing cached) finds the writer by id.
    reader = AvroCodec(bank.events, schemas, framing=RegistryFraming(client, schemas, auto_register=True))
    assert reader.decode(encoded.event_type, encoded.data, encoded.schema_id) == event

    unknown = b"\x00" + (999_999).to_bytes(4, "big") + encoded.data[5:]
    with pytest.raises(UnknownSchema, match="999999"):
        reader.decode(encoded.event_type, unknown, "avro-registry:999999")
    with pytest.raises(Exception, match="single-object marker"):
        codec.decode(encoded.event_type, encoded.data, encoded.schema_id)


def test_unregistered_schemas_stop_the_codec_against_the_in_memory_mock_registry() -> None:
    # Without auto_register the schemas must have been registered beforehand.
    from confluent_kafka.schema_registry import SchemaRegistryClient

    client = SchemaRegistryClient.new_client({"url": f"mock://{uuid.uuid4()}"})
    schemas = SchemaSet.load(SCHEMAS)
    with pytest.raises(SchemaFileError, match="tidings schemas register"):
        AvroCodec(bank.events, schemas, framing=RegistryFraming(client, schemas))


def test_topic_record_name_subjects_against_the_in_memory_mock_registry() -> None:
    from confluent_kafka.schema_registry import SchemaRegistryClient

    client = SchemaRegistryClient.new_client({"url": f"mock://{uuid.uuid4()}"})
    schemas = SchemaSet.load(SCHEMAS)
    framing = RegistryFraming(
        client, schemas, subject_name=topic_record_name("bank.events"), auto_register=True
    )
    AvroCodec(bank.events, schemas, framing=framing)
    assert "bank.events-bank.AccountOpened" in client.get_subjects()
