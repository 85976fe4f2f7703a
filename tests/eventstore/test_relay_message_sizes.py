"""The largest event the store accepts reaches Kafka, with its neighbours: nothing the store takes can
wedge publication (docs/relay.md, "Message sizes")."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import uuid
from datetime import UTC, datetime

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from eventstore import ANY, EventData, PostgresEventStore, StoreConfig, migrate
from eventstore.errors import ConfigurationError
from eventstore.kafka_limits import (
    BATCH_OVERHEAD,
    RECORD_OVERHEAD,
    RELAY_NAME_BYTES,
    SPARE_HEADER_BYTES,
    TRACESTATE_BYTES,
    message_bytes,
)
from eventstore.kafka_tail import PREVIOUS_HEADER, previous_header
from eventstore.records import RecordedEvent
from eventstore.relay import OutgoingEvent, Relay, RelayConfig, TopicLimitTooSmall, headers
from eventstore.routing import MAX_KEY_BYTES, Routing
from tests.eventstore.relay_support import assert_exactly_once_in_order, read_committed, wait_until
from tidings.pytest_plugin import KafkaNamespace, PostgresSchema

# A stream id, event type and schema id at their length limits, each character four bytes in UTF-8:
# the headers of the largest message the relay can be handed.
LONGEST = "\U0001f4e6" * 255
TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def largest(store: PostgresEventStore, stream: str = LONGEST) -> EventData:
    """An event of exactly ``max_event_bytes`` (data and metadata), its data incompressible."""
    metadata = json.dumps({"traceparent": TRACE, "user": "ada"}).encode()
    data = os.urandom(store.config.max_event_bytes - len(metadata))
    return EventData(
        LONGEST,
        data,
        metadata=metadata,
        schema_id=LONGEST,
        causation_id=uuid.uuid4(),
        correlation_id=uuid.uuid4(),
    )


def small(n: int) -> EventData:
    return EventData("Noted", b"%d" % n, schema_id="test:1")


def append_around_a_largest_event(store: PostgresEventStore) -> tuple[list[uuid.UUID], EventData]:
    """Small events, the largest event, small events: in one append, and on another stream around it."""
    big = largest(store)
    events = [small(1), small(2), big, small(3), small(4)]
    store.append_to_stream("account-1", ANY, [small(10)])
    store.append_to_stream(LONGEST, ANY, events)
    store.append_to_stream("account-1", ANY, [small(11)])
    return [
        *(e.event_id for e in events),
        *(e.event_id for e in store.read_stream_forward("account-1")),
    ], big


def topic_limit(bootstrap_servers: str, topic: str) -> int:
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    (future,) = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)]).values()
    return int(future.result(timeout=30)["max.message.bytes"].value)


def run_to_its_end(relay: Relay, timeout: float = 60.0) -> BaseException | None:
    """``relay.run()`` in a thread; what it raised, or a failure if it was still running after ``timeout``."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            relay.run()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        relay.stop()
        pytest.fail(f"the relay was still running after {timeout}s; expected it to refuse to start")
    return raised[0] if raised else None


@pytest.mark.parametrize("compression", ["lz4", "zstd", "gzip", "snappy", "none"])
def test_the_largest_event_the_store_accepts_is_published_with_the_events_around_it(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace, relays: list[Relay], compression: str
) -> None:
    topic = kafka_namespace.topic("events")
    appended, big = append_around_a_largest_event(event_store)
    relay = Relay(
        event_store,
        RelayConfig(kafka_namespace.bootstrap_servers, routing=Routing(topic), compression=compression),
    )
    relays.append(relay)
    relay.start()

    seen = read_committed(
        kafka_namespace.bootstrap_servers,
        [topic],
        kafka_namespace.group("check"),
        lambda s: len(s) >= len(appended),
        timeout=60,
    )
    assert_exactly_once_in_order(seen, appended)
    (message,) = [m for m in seen if m.event_id == big.event_id]
    assert message.value == big.data
    assert message.headers["metadata"] == big.metadata
    assert message.headers["stream_id"].decode() == LONGEST


def test_a_topic_whose_limit_is_too_small_stops_a_relay_that_does_not_manage_topics(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    topic = kafka_namespace.create_topic("events", config={"max.message.bytes": "100000"})
    append_around_a_largest_event(event_store)
    relay = Relay(
        event_store,
        RelayConfig(kafka_namespace.bootstrap_servers, routing=Routing(topic), create_topics=False),
    )
    raised = run_to_its_end(relay)
    assert isinstance(raised, TopicLimitTooSmall), raised
    assert (raised.topic, raised.limit, raised.needed) == (topic, 100000, relay.limits.topic_needs())
    assert (
        f"kafka-configs.sh --bootstrap-server {kafka_namespace.bootstrap_servers} --alter --entity-type "
        f"topics --entity-name {topic} --add-config max.message.bytes={raised.needed}"
    ) in str(raised)
    assert topic_limit(kafka_namespace.bootstrap_servers, topic) == 100000, "left as it was"


@pytest.mark.parametrize("topic_compression", ["producer", "gzip"])
def test_a_relay_that_manages_its_topics_raises_a_limit_that_is_too_small(
    event_store: PostgresEventStore,
    kafka_namespace: KafkaNamespace,
    relays: list[Relay],
    topic_compression: str,
) -> None:
    # A topic of another codec than the producer's (lz4) makes the broker compress again: the random
    # bytes grow a little, and the limit must allow for it.
    topic = kafka_namespace.create_topic(
        "events",
        partitions=2,
        config={"max.message.bytes": "100000", "compression.type": topic_compression},
    )
    appended, _ = append_around_a_largest_event(event_store)
    relay = Relay(event_store, RelayConfig(kafka_namespace.bootstrap_servers, routing=Routing(topic)))
    relays.append(relay)
    relay.start()

    seen = read_committed(
        kafka_namespace.bootstrap_servers,
        [topic],
        kafka_namespace.group("check"),
        lambda s: len(s) >= len(appended),
        timeout=60,
    )
    assert_exactly_once_in_order(seen, appended)
    assert topic_limit(kafka_namespace.bootstrap_servers, topic) == relay.limits.topic_needs(
        topic_compression
    )


def test_a_topic_the_relay_creates_takes_the_largest_event(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace, relays: list[Relay]
) -> None:
    topic = kafka_namespace.topic("events")
    relay = Relay(event_store, RelayConfig(kafka_namespace.bootstrap_servers, routing=Routing(topic)))
    relays.append(relay)
    relay.start()
    wait_until(lambda: _exists(kafka_namespace.bootstrap_servers, topic), 30, "the topic created")
    assert topic_limit(kafka_namespace.bootstrap_servers, topic) == relay.limits.topic_needs()
    assert relay.limits.topic_needs() > message_bytes(event_store.config.max_event_bytes, [topic])


def _exists(bootstrap_servers: str, topic: str) -> bool:
    return topic in AdminClient({"bootstrap.servers": bootstrap_servers}).list_topics(timeout=10).topics


def test_the_figure_bounds_the_relays_largest_message() -> None:
    """Every header the relay writes for an event at every limit, the longest key and the data: within
    ``message_bytes``, which the producer's and the topics' limits are set from."""
    max_event_bytes = 1024 * 1024
    topics = [f"{n}" * 249 for n in range(3)]
    metadata = json.dumps({"traceparent": TRACE, "tracestate": "v=" + "x" * 510}).encode()
    event = OutgoingEvent(
        2**63 - 1,
        LONGEST,
        LONGEST,
        b"\x00" * (max_event_bytes - len(metadata)),
        metadata,
        str(uuid.uuid4()),
        str(2**63 - 1),
        "2026-11-22T23:40:01.123456+00:00",
        LONGEST,
        str(uuid.uuid4()),
        str(uuid.uuid4()),
    )
    written = [
        *headers(event),
        (PREVIOUS_HEADER, previous_header(dict.fromkeys(topics, 2**63 - 1))),
        # The relay's identity: its store, its name at the longest, its epoch.
        ("tidings.store", str(uuid.uuid4())),
        ("tidings.relay", "r" * RELAY_NAME_BYTES),
        ("tidings.epoch", str(2**63 - 1)),
    ]
    assert {"traceparent", "tracestate"} <= {name for name, _ in written}
    size = (
        RECORD_OVERHEAD
        + MAX_KEY_BYTES
        + len(event.data)
        + sum(len(name) + len(_bytes(value)) + 10 for name, value in written)
    )
    assert size <= message_bytes(max_event_bytes, topics)
    # Not a generous guess either: what is left is the room kept for headers to come.
    assert message_bytes(max_event_bytes, topics) - size <= SPARE_HEADER_BYTES + 4096


def _bytes(value: str | bytes | None) -> bytes:
    return value.encode() if isinstance(value, str) else value or b""


def test_trace_context_is_repeated_as_headers_only_at_its_w3c_sizes() -> None:
    long_state = "v=" + "x" * TRACESTATE_BYTES
    metadata = json.dumps({"traceparent": TRACE, "tracestate": long_state}).encode()
    event = OutgoingEvent.of(
        RecordedEvent(uuid.uuid4(), 1, "s", 1, "E", b"", metadata, "", None, None, datetime.now(UTC))
    )
    found = dict(headers(event))
    assert found["traceparent"] == TRACE
    assert "tracestate" not in found, "kept in the metadata header only"


def test_a_key_longer_than_the_limit_travels_as_its_digest() -> None:
    routing = Routing("t", key=lambda event: "k" * (MAX_KEY_BYTES + 1))
    event = RecordedEvent(uuid.uuid4(), 1, "s", 1, "E", b"", b"{}", "", None, None, datetime.now(UTC))
    topic, key = routing.route(event)
    assert key == b"sha256:" + hashlib.sha256(b"k" * (MAX_KEY_BYTES + 1)).hexdigest().encode()
    assert routing.route(event) == (topic, key), "the same key, the same digest: the same partition"
    assert Routing("t", key=lambda event: "k" * MAX_KEY_BYTES).route(event)[1] == b"k" * MAX_KEY_BYTES


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"kafka": {"message.max.bytes": "1000000"}}, "message.max.bytes=1000000 is below the largest"),
        ({"kafka": {"message.max.bytes": "lots"}}, "message.max.bytes must be a number of bytes"),
        ({"topic_config": {"max.message.bytes": "1048588"}}, "sets max.message.bytes=1048588, below"),
        ({"name": "r" * (RELAY_NAME_BYTES + 1)}, "a relay name has at most"),
    ],
)
def test_kafka_limits_below_the_largest_event_are_refused_with_what_to_do(
    event_store: PostgresEventStore, settings: dict[str, object], message: str
) -> None:
    config = RelayConfig("localhost:9092", routing=Routing("t"), **settings)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=message):
        Relay(event_store, config)


def test_larger_kafka_limits_of_the_users_are_kept(event_store: PostgresEventStore) -> None:
    relay = Relay(
        event_store,
        RelayConfig(
            "localhost:9092",
            routing=Routing("t"),
            kafka={"message.max.bytes": "8000000", "batch.size": "4000000"},
            topic_config={"max.message.bytes": "9000000"},
        ),
    )
    assert relay.limits.message == 8_000_000
    # Batches fill up to batch.size; a larger message goes alone.
    assert relay.limits.batch == 4_000_000 + BATCH_OVERHEAD
    assert relay.limits.topic_config(relay.config.topic_config)["max.message.bytes"] == "9000000"


def test_events_too_large_for_kafka_clients_are_refused_at_start_up(postgres_schema: PostgresSchema) -> None:
    config = StoreConfig(postgres_schema.server_url, postgres_schema.name, max_event_bytes=200_000_000)
    migrate(config)
    with PostgresEventStore(config) as store, pytest.raises(ConfigurationError, match="lower StoreConfig"):
        Relay(store, RelayConfig("localhost:9092", routing=Routing("t")))
