"""The outbox relay on the real PostgreSQL and the real Kafka, in process."""

from __future__ import annotations

import json
import uuid
from datetime import datetime

import pytest
from confluent_kafka.admin import AdminClient

from eventstore import ANY, EventData, PostgresEventStore
from eventstore.errors import ConfigurationError
from eventstore.kafka_tail import PARTITION_HEADER, PREVIOUS_HEADER, parse_previous
from eventstore.relay import Relay, RelayConfig, TopicCreationFailed, TopicMissing, relay_status
from eventstore.routing import Route, Routing
from tests.eventstore.relay_support import (
    append_events,
    assert_exactly_once_in_order,
    read_committed,
    wait_until,
)
from tidings.pytest_plugin import KafkaNamespace


def test_events_reach_a_multi_partition_topic_once_each_in_per_key_order(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace, relays: list[Relay]
) -> None:
    topic = kafka_namespace.topic("events")
    relay = Relay(
        event_store,
        RelayConfig(kafka_namespace.bootstrap_servers, routing=Routing(topic), partitions=4, batch_size=50),
    )
    relays.append(relay)
    appended = append_events(event_store, streams=20, per_stream=5)
    relay.start()
    appended += append_events(event_store, streams=20, per_stream=5, prefix="later")

    seen = read_committed(
        kafka_namespace.bootstrap_servers,
        [topic],
        kafka_namespace.group("check"),
        lambda s: len(s) >= len(appended),
    )
    assert_exactly_once_in_order(seen, appended)
    assert len({m.partition for m in seen}) == 4, "keys spread over every partition"
    # Each key lives on one partition, and the key is the stream id.
    for message in seen:
        assert message.key == message.headers["stream_id"]
    assert len({(m.key, m.partition) for m in seen}) == len({m.key for m in seen})
    # Each message names the partition it was produced to: a copy elsewhere is known for a copy.
    assert all(m.headers[PARTITION_HEADER] == str(m.partition).encode() for m in seen)


def test_headers_carry_the_events_identity_and_place(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace, relays: list[Relay]
) -> None:
    topic = kafka_namespace.topic("events")
    cause, correlation = uuid.uuid4(), uuid.uuid4()
    trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    event = EventData(
        "bank.AccountOpened",
        b"\xc3\x01avro-bytes",
        metadata=json.dumps({"user": "ada", "traceparent": trace}).encode(),
        schema_id="avro:0011223344556677",
        causation_id=cause,
        correlation_id=correlation,
    )
    event_store.append_to_stream("account-7", ANY, [event])
    relay = Relay(event_store, RelayConfig(kafka_namespace.bootstrap_servers, routing=Routing(topic)))
    relays.append(relay)
    relay.start()

    (message,) = read_committed(
        kafka_namespace.bootstrap_servers, [topic], kafka_namespace.group("check"), lambda s: len(s) >= 1
    )
    recorded = event_store.read_stream_forward("account-7")[0]
    assert message.value == b"\xc3\x01avro-bytes"
    assert message.key == b"account-7"
    assert message.headers["event_id"] == str(event.event_id).encode()
    assert message.headers["event_type"] == b"bank.AccountOpened"
    assert message.headers["event_number"] == str(recorded.event_number).encode()
    assert message.headers["stream_id"] == b"account-7"
    assert message.headers["stream_version"] == b"1"
    assert message.headers["causation_id"] == str(cause).encode()
    assert message.headers["correlation_id"] == str(correlation).encode()
    assert datetime.fromisoformat(message.headers["created_at"].decode()) == recorded.created_at
    assert message.headers["schema_id"] == b"avro:0011223344556677"
    assert json.loads(message.headers["metadata"]) == {"user": "ada", "traceparent": trace}
    assert message.headers["traceparent"] == trace.encode()


def test_routing_by_event_type_and_category_chooses_topic_and_key(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace, relays: list[Relay]
) -> None:
    main, audit = kafka_namespace.topic("events"), kafka_namespace.topic("audit")
    routing = Routing(
        main,
        by_event_type={"AuditNoted": Route(topic=audit, key="event_type")},
        by_category={"transfer": Route(key="correlation_id")},
    )
    correlation = uuid.uuid4()
    event_store.append_to_stream("account-1", ANY, [EventData("Opened", b"a")])
    event_store.append_to_stream("account-1", ANY, [EventData("AuditNoted", b"b")])
    event_store.append_to_stream(
        "transfer-9", ANY, [EventData("Requested", b"c", correlation_id=correlation)]
    )
    relays.append(
        relay := Relay(event_store, RelayConfig(kafka_namespace.bootstrap_servers, routing=routing))
    )
    relay.start()

    seen = read_committed(
        kafka_namespace.bootstrap_servers,
        [main, audit],
        kafka_namespace.group("check"),
        lambda s: len(s) >= 3,
    )
    where = {m.value: (m.topic, m.key) for m in seen}
    assert where == {
        b"a": (main, b"account-1"),
        b"b": (audit, b"AuditNoted"),
        b"c": (main, str(correlation).encode()),
    }


def test_each_message_names_the_event_before_it_on_every_topic_even_across_a_restart(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace, relays: list[Relay]
) -> None:
    """What a global-order handler merges by (workers.global_order): per topic, the last event before."""
    main, audit = kafka_namespace.topic("events"), kafka_namespace.topic("audit")
    routing = Routing(main, by_event_type={"AuditNoted": Route(topic=audit)})
    config = RelayConfig(kafka_namespace.bootstrap_servers, routing=routing, partitions=3, batch_size=2)
    types = ["Opened", "AuditNoted", "Opened", "Opened", "AuditNoted", "Opened"]
    for i, event_type in enumerate(types[:3]):
        event_store.append_to_stream(f"account-{i}", ANY, [EventData(event_type, b"x")])
    relays.append(first := Relay(event_store, config))
    first.start()
    wait_until(lambda: first.last_published == 3, 60, "the first three events published")
    first.stop()
    # A new leader learns where each topic stands from the topics' tails.
    for i, event_type in enumerate(types[3:], start=3):
        event_store.append_to_stream(f"account-{i}", ANY, [EventData(event_type, b"x")])
    relays.append(second := Relay(event_store, config))
    second.start()
    seen = read_committed(
        kafka_namespace.bootstrap_servers,
        [main, audit],
        kafka_namespace.group("check"),
        lambda s: len(s) >= 6,
    )
    previous = {int(m.headers["event_number"]): parse_previous(m.headers[PREVIOUS_HEADER]) for m in seen}
    assert previous == {
        1: {main: 0, audit: 0},
        2: {main: 1, audit: 0},
        3: {main: 1, audit: 2},
        4: {main: 3, audit: 2},
        5: {main: 4, audit: 2},
        6: {main: 4, audit: 5},
    }


def test_a_restarted_relay_resumes_after_the_last_event_kafka_holds(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace, relays: list[Relay]
) -> None:
    topic = kafka_namespace.topic("events")
    config = RelayConfig(
        kafka_namespace.bootstrap_servers, routing=Routing(topic), partitions=3, batch_size=7
    )
    appended = append_events(event_store, streams=5, per_stream=4)
    first = Relay(event_store, config)
    first.start()
    read_committed(
        kafka_namespace.bootstrap_servers,
        [topic],
        kafka_namespace.group("a"),
        lambda s: len(s) >= len(appended),
    )
    first.stop()
    # The position PostgreSQL records is only a hint: wind it back, Kafka's tail still says where to go on.
    with event_store.connection() as conn:
        conn.execute(f'UPDATE "{event_store.config.schema}".relays SET last_event_number = 3')
    appended += append_events(event_store, streams=5, per_stream=2, prefix="more")
    relays.append(second := Relay(event_store, config))
    second.start()

    seen = read_committed(
        kafka_namespace.bootstrap_servers,
        [topic],
        kafka_namespace.group("b"),
        lambda s: len(s) >= len(appended),
    )
    wait_until(lambda: second.last_published == len(appended), 30, "the relay")
    seen = read_committed(
        kafka_namespace.bootstrap_servers,
        [topic],
        kafka_namespace.group("c"),
        lambda s: len(s) >= len(appended),
    )
    assert_exactly_once_in_order(seen, appended)
    # Recorded once the relay is idle (and at most a second apart while it is busy).
    wait_until(lambda: relay_status(event_store)[0].last_published == len(appended), 30, "the relay")
    (status,) = relay_status(event_store)
    assert (status.name, status.last_published, status.lag_events) == ("default", len(appended), 0)


def test_a_missing_topic_with_creation_off_is_a_clear_error_and_publishes_nothing(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    topic = kafka_namespace.topic("absent")
    append_events(event_store, streams=1, per_stream=1)
    relay = Relay(
        event_store,
        RelayConfig(kafka_namespace.bootstrap_servers, routing=Routing(topic), create_topics=False),
    )
    with pytest.raises(TopicMissing, match="do not exist and topic creation is off") as raised:
        relay.run()
    assert raised.value.topics == [topic]
    assert (
        topic
        not in AdminClient({"bootstrap.servers": kafka_namespace.bootstrap_servers})
        .list_topics(timeout=10)
        .topics
    )
    assert relay_status(event_store)[0].last_published == 0


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"kafka": {"enable.idempotence": "false"}}, "sets enable.idempotence itself"),
        ({"kafka": {"transactional.id": "mine"}}, "sets transactional.id itself"),
        ({"batch_size": 0}, "batch_size and batch_bytes must be at least 1"),
        ({"partitions": 0}, "partitions and replication_factor"),
        ({"name": "a b"}, "not a relay name"),
        ({"app": "no spaces allowed"}, "not a Kafka topic name"),
        ({"bootstrap_servers": ""}, "bootstrap servers"),
    ],
)
def test_bad_relay_settings_are_refused_with_what_to_do(settings: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"bootstrap_servers": "localhost:9092", **settings}
    with pytest.raises(ConfigurationError, match=message):
        RelayConfig(**arguments)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Routing("bad topic"), "not a Kafka topic name"),
        (lambda: Routing("ok", key="nonsense"), "unknown key source 'nonsense'"),
        (lambda: Routing("ok", by_category={"x": Route(topic="a/b")}), "not a Kafka topic name"),
        (lambda: Route(key="metadata."), "unknown key source"),
    ],
)
def test_bad_routing_is_refused_with_what_to_do(build: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        build()  # type: ignore[operator]


def test_leadership_and_progress_show_in_the_metrics(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace, relays: list[Relay]
) -> None:
    from eventstore import metrics

    labels = (event_store.config.schema, "default")
    topic = kafka_namespace.topic("events")
    appended = append_events(event_store, streams=4, per_stream=5)
    first = Relay(
        event_store, RelayConfig(kafka_namespace.bootstrap_servers, routing=Routing(topic), batch_size=6)
    )
    second = Relay(
        event_store, RelayConfig(kafka_namespace.bootstrap_servers, routing=Routing(topic), standby_poll=0.1)
    )
    relays.extend([first, second])
    first.start()
    wait_until(lambda: first.last_published == len(appended), 30, "the relay")
    second.start()

    assert metrics.RELAY_LEADER.labels(*labels)._value.get() == 1
    assert metrics.RELAY_PUBLISHED.labels(*labels)._value.get() == len(appended)
    assert metrics.RELAY_TRANSACTIONS.labels(*labels)._value.get() == 4  # 20 events in batches of 6
    assert metrics.RELAY_LAST_PUBLISHED.labels(*labels)._value.get() == len(appended)
    assert metrics.RELAY_LAG_EVENTS.labels(*labels)._value.get() == 0
    assert not second.leading.is_set(), "one leader at a time"

    first.stop()
    wait_until(lambda: second.leading.is_set(), 30, "the relay")
    more = append_events(event_store, streams=2, per_stream=1, prefix="more")
    wait_until(lambda: second.last_published == len(appended) + len(more), 30, "the relay")


def test_settings_kafka_refuses_are_a_configuration_error(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    topic = kafka_namespace.topic("events")
    relay = Relay(
        event_store,
        RelayConfig(kafka_namespace.bootstrap_servers, routing=Routing(topic), kafka={"linger.ms": "soon"}),
    )
    with pytest.raises(ConfigurationError, match="Kafka refused the relay's producer settings"):
        relay.run()


def test_topics_kafka_cannot_create_are_a_clear_error(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    topic = kafka_namespace.topic("events")
    relay = Relay(
        event_store,
        RelayConfig(kafka_namespace.bootstrap_servers, routing=Routing(topic), replication_factor=3),
    )
    with pytest.raises(TopicCreationFailed, match=f"Kafka refused to create topic {topic}") as raised:
        relay.run()
    assert "--replication-factor" in str(raised.value)


def test_a_key_function_of_the_users_gets_the_recorded_event(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace, relays: list[Relay]
) -> None:
    topic = kafka_namespace.topic("events")
    given: list[object] = []

    def by_amount(event: object) -> str:
        given.append(event)
        return "big" if len(event.data) > 3 else "small"  # type: ignore[attr-defined]

    event_store.append_to_stream("account-1", ANY, [EventData("Deposited", b"12345")])
    event_store.append_to_stream("account-2", ANY, [EventData("Deposited", b"1")])
    routing = Routing(topic, key=by_amount)
    relays.append(
        relay := Relay(event_store, RelayConfig(kafka_namespace.bootstrap_servers, routing=routing))
    )
    relay.start()

    seen = read_committed(
        kafka_namespace.bootstrap_servers, [topic], kafka_namespace.group("check"), lambda s: len(s) >= 2
    )
    assert sorted((m.value, m.key) for m in seen) == [(b"1", b"small"), (b"12345", b"big")]
    recorded = event_store.read_stream_forward("account-1")[0]
    assert given[0] == recorded, "the function sees exactly what the store recorded"


def test_a_batch_stops_at_its_byte_limit_but_always_takes_one_event(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace, relays: list[Relay]
) -> None:
    topic = kafka_namespace.topic("events")
    sizes = [300, 300, 300, 2000, 10, 10]
    for number, size in enumerate(sizes):
        event_store.append_to_stream(f"s-{number}", ANY, [EventData("Sized", bytes(size), metadata=b"")])
    event_store.sequencer.catch_up()  # all numbered before the relay's first read
    config = RelayConfig(kafka_namespace.bootstrap_servers, routing=Routing(topic), batch_bytes=700)
    relays.append(relay := Relay(event_store, config))
    relay.start()

    seen = read_committed(
        kafka_namespace.bootstrap_servers, [topic], kafka_namespace.group("check"), lambda s: len(s) >= 6
    )
    assert sorted(len(m.value) for m in seen) == sorted(sizes)
    from eventstore import metrics

    # A batch ends with the event that reaches the limit: 300+300+300 | 2000 alone | 10+10.
    assert metrics.RELAY_TRANSACTIONS.labels(event_store.config.schema, "default")._value.get() == 3
