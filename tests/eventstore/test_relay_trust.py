"""The relay trusts only what the store confirms, and no single message stops it silently.

Each test attacks one way a topic's tail can lie to a relay (foreign messages, another store, a lost
PostgreSQL tail, retention) or one event can stop publication (a routing function that raises, a broker
limit lowered under a running relay). Real PostgreSQL, real Kafka.
"""

from __future__ import annotations

import os
import uuid

import psycopg
import pytest
from confluent_kafka import Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from psycopg import sql

from eventstore import ANY, EventData, PostgresEventStore, StoreConfig, metrics, migrate
from eventstore.kafka_tail import TailUnreadable, read_tail
from eventstore.records import RecordedEvent
from eventstore.relay import (
    RELAY_HEADER,
    STORE_HEADER,
    OutgoingEvent,
    Relay,
    RelayConfig,
    RelayStatus,
    headers,
    relay_status,
    resume_after,
)
from eventstore.relay_problems import KafkaAheadOfStore
from eventstore.routing import Route, Routing
from tests.eventstore.relay_support import (
    Seen,
    append_events,
    assert_exactly_once_in_order,
    read_to_end,
    relay_verdict,
    set_topic_limit,
    start_relay,
    wait_until,
)
from tidings.pytest_plugin import KafkaNamespace, PostgresSchema

# Problems are retried this often in these tests (the default is longer).
RETRY = 0.2


def _config(namespace: KafkaNamespace, topic: str, **settings: object) -> RelayConfig:
    settings.setdefault("routing", Routing(topic))
    return RelayConfig(namespace.bootstrap_servers, problem_retry=RETRY, **settings)  # type: ignore[arg-type]


def _produce(
    bootstrap: str, topic: str, partitions: int, value: bytes | None, headers: list[tuple[str, bytes]]
) -> None:
    """A message into every partition of ``topic``, as any producer could write it."""
    producer = Producer({"bootstrap.servers": bootstrap})
    for partition in range(partitions):
        producer.produce(topic, value, b"foreign", partition=partition, headers=headers)
    assert producer.flush(30) == 0


def _ours(seen: list[Seen], appended: list[uuid.UUID]) -> list[Seen]:
    ids = {str(i).encode() for i in appended}
    return [m for m in seen if m.headers.get("event_id") in ids]


def _status(store: PostgresEventStore, name: str = "default") -> RelayStatus:
    return next(s for s in relay_status(store) if s.name == name)


FOREIGN = {
    "random bytes": (os.urandom(200), []),
    "a tombstone": (None, []),
    "a huge event_number": (
        b"x",
        [
            ("event_number", b"999999999"),
            ("event_id", str(uuid.uuid4()).encode()),
            ("stream_id", b"account-0"),
        ],
    ),
    "an event_number the store holds, with another event's id": (
        b"x",
        [("event_number", b"4"), ("event_id", str(uuid.uuid4()).encode())],
    ),
    "a damaged identity header": (b"x", [("event_number", b"999999999"), (STORE_HEADER, b"\xff\x00")]),
}


@pytest.mark.parametrize("kind", sorted(FOREIGN))
def test_a_relay_restarted_after_foreign_messages_publishes_every_event_exactly_once(
    kind: str, event_store: PostgresEventStore, kafka_namespace: KafkaNamespace, relays: list[Relay]
) -> None:
    topic = kafka_namespace.topic("events")
    config = _config(kafka_namespace, topic, partitions=3, batch_size=4)
    appended = append_events(event_store, streams=3, per_stream=3)
    first = start_relay(relays, event_store, config)
    wait_until(lambda: first.last_published == len(appended), 30, "the first relay")
    first.stop()

    value, headers = FOREIGN[kind]
    _produce(kafka_namespace.bootstrap_servers, topic, 3, value, headers)
    appended += append_events(event_store, streams=3, per_stream=2, prefix="later")
    second = start_relay(relays, event_store, config)

    wait_until(lambda: second.last_published == len(appended), 30, "the restarted relay")
    seen = read_to_end(kafka_namespace.bootstrap_servers, [topic])
    assert len(seen) == len(appended) + 3, "every event once, and the three foreign messages"
    assert_exactly_once_in_order(_ours(seen, appended), appended)
    status = _status(event_store)
    assert (status.verdict, status.lag_events) == ("ok", 0)


def test_another_stores_messages_on_the_tail_are_refused_then_ignored_when_the_operator_says_so(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace, relays: list[Relay]
) -> None:
    topic = kafka_namespace.topic("events")
    appended = append_events(event_store, streams=2, per_stream=3)
    first = start_relay(relays, event_store, _config(kafka_namespace, topic))
    wait_until(lambda: first.last_published == len(appended), 30, "the first relay")
    first.stop()
    other = str(uuid.uuid4())
    _produce(
        kafka_namespace.bootstrap_servers,
        topic,
        1,
        b"x",
        [
            ("event_number", b"999999999"),
            ("event_id", str(uuid.uuid4()).encode()),
            (STORE_HEADER, other.encode()),
            (RELAY_HEADER, b"default"),
        ],
    )
    more = append_events(event_store, streams=2, per_stream=2, prefix="more")

    refused = start_relay(relays, event_store, _config(kafka_namespace, topic))
    wait_until(lambda: relay_verdict(event_store) == "foreign_store", 30, "the refusal")
    status = _status(event_store)
    assert other in status.problem
    assert "--ignore-store" in status.problem
    assert refused.leading.is_set(), "a refusing relay keeps its leadership and says why"
    assert metrics.RELAY_BLOCKED.labels(event_store.config.schema, "default")._value.get() == 1
    assert len(read_to_end(kafka_namespace.bootstrap_servers, [topic])) == len(appended) + 1, (
        "nothing published"
    )
    refused.stop()

    accepting = start_relay(
        relays, event_store, _config(kafka_namespace, topic, ignore_stores=frozenset({other}))
    )
    wait_until(lambda: accepting.last_published == len(appended) + len(more), 30, "the relay")
    seen = read_to_end(kafka_namespace.bootstrap_servers, [topic])
    assert_exactly_once_in_order(_ours(seen, appended + more), appended + more)
    wait_until(lambda: relay_verdict(event_store) == "ok", 30, "the verdict cleared")


def test_two_stores_misconfigured_onto_one_topic_get_a_clear_refusal_and_lose_nothing(
    event_store: PostgresEventStore,
    postgres_schema: PostgresSchema,
    kafka_namespace: KafkaNamespace,
    relays: list[Relay],
) -> None:
    topic = kafka_namespace.topic("events")
    second_schema = f"{postgres_schema.name[:50]}_b"
    with psycopg.connect(postgres_schema.server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(second_schema)))
    config_b = StoreConfig(postgres_schema.server_url, second_schema)
    migrate(config_b)
    store_b = PostgresEventStore(config_b)
    try:
        ours = append_events(event_store, streams=2, per_stream=3)
        theirs = append_events(store_b, streams=2, per_stream=3, prefix="other")
        a = start_relay(relays, event_store, _config(kafka_namespace, topic))
        wait_until(lambda: a.last_published == len(ours), 30, "store A's relay")

        b = start_relay(relays, store_b, _config(kafka_namespace, topic))
        wait_until(lambda: relay_verdict(store_b) == "foreign_store", 30, "store B's refusal")
        assert b.last_published == 0
        ours += append_events(event_store, streams=2, per_stream=1, prefix="later")
        wait_until(lambda: a.last_published == len(ours), 30, "store A goes on")
        seen = read_to_end(kafka_namespace.bootstrap_servers, [topic])
        assert_exactly_once_in_order(seen, ours)  # only A's events, each once

        b.stop()
        own_topic = kafka_namespace.topic("b-events")
        b_fixed = start_relay(relays, store_b, _config(kafka_namespace, own_topic))
        wait_until(lambda: b_fixed.last_published == len(theirs), 30, "store B on its own topic")
        assert_exactly_once_in_order(read_to_end(kafka_namespace.bootstrap_servers, [own_topic]), theirs)
    finally:
        for relay in relays:
            relay.stop()
        store_b.close()
        with psycopg.connect(postgres_schema.server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(second_schema)))


def test_a_tail_postgresql_lost_after_kafka_had_it_is_detected_and_reported(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace, relays: list[Relay]
) -> None:
    topic = kafka_namespace.topic("events")
    appended = append_events(event_store, streams=2, per_stream=5)  # event_numbers 1..10
    first = start_relay(relays, event_store, _config(kafka_namespace, topic, partitions=2))
    wait_until(lambda: first.last_published == 10, 30, "the first relay")
    first.stop()
    # A failover to an async replica, simulated: the last three events are gone, and their numbers
    # will be handed out again.
    schema = event_store.config.schema
    with event_store.connection() as conn:
        gone = sql.SQL("DELETE FROM {} WHERE event_number > 7 RETURNING id").format(
            sql.Identifier(schema, "event_order")
        )
        ids = [row[0] for row in conn.execute(gone).fetchall()]
        conn.execute(
            sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(sql.Identifier(schema, "events")), [ids]
        )
        conn.execute(
            sql.SQL("UPDATE {} SET last_event_number = 7").format(sql.Identifier(schema, "sequencer"))
        )
    reused = append_events(event_store, streams=1, per_stream=2, prefix="after-failover")  # numbered 8, 9

    second = start_relay(relays, event_store, _config(kafka_namespace, topic, partitions=2))
    # The status says so before any relay looks (its recorded position is above the store's newest)...
    assert relay_verdict(event_store) == "kafka_ahead"
    # ...and the relay, once it has read the tail, stops there and says why.
    wait_until(lambda: isinstance(second.problem, KafkaAheadOfStore), 30, "the relay's problem")
    status = _status(event_store)
    assert status.verdict == "kafka_ahead"
    assert "up to event_number 10" in status.problem, status.problem
    assert "resume-after 7" in status.problem, status.problem  # where Kafka and the store last agree
    assert second.leading.is_set()
    seen = read_to_end(kafka_namespace.bootstrap_servers, [topic])
    assert {m.event_id for m in seen} == set(appended), "nothing published over Kafka's newer tail"
    assert not set(reused) & {m.event_id for m in seen}

    # The operator decides: the events after 7 are published again (docs/relay.md says what that means).
    resume_after(event_store, 7)
    wait_until(lambda: second.last_published == 9, 30, "the relay, after the operator's decision")
    seen = read_to_end(kafka_namespace.bootstrap_servers, [topic])
    assert set(reused) <= {m.event_id for m in seen}
    assert relay_verdict(event_store) == "ok"


def test_topics_emptied_by_retention_are_not_guessed_over(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace, relays: list[Relay]
) -> None:
    topic = kafka_namespace.topic("events")
    appended = append_events(event_store, streams=2, per_stream=3)
    first = start_relay(relays, event_store, _config(kafka_namespace, topic))
    wait_until(lambda: first.last_published == len(appended), 30, "the first relay")
    first.stop()
    admin = AdminClient({"bootstrap.servers": kafka_namespace.bootstrap_servers})
    low_high = read_to_end(kafka_namespace.bootstrap_servers, [topic])
    end = max(m.offset for m in low_high) + 2  # past the last transaction marker
    for future in admin.delete_records([TopicPartition(topic, 0, end)]).values():
        future.result(30)
    more = append_events(event_store, streams=1, per_stream=2, prefix="more")

    second = start_relay(relays, event_store, _config(kafka_namespace, topic))
    wait_until(lambda: relay_verdict(event_store) == "tail_unconfirmed", 30, "the verdict")
    assert "resume-after" in _status(event_store).problem
    resume_after(event_store, len(appended))
    wait_until(lambda: second.last_published == len(appended) + len(more), 30, "the relay")
    seen = read_to_end(kafka_namespace.bootstrap_servers, [topic])
    assert_exactly_once_in_order(seen, more)


def test_an_unreadable_topic_in_the_tail_is_an_error_not_a_lower_resume_point(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace, relays: list[Relay]
) -> None:
    topic = kafka_namespace.topic("events")
    appended = append_events(event_store, streams=2, per_stream=2)
    relay = start_relay(relays, event_store, _config(kafka_namespace, topic))
    wait_until(lambda: relay.last_published == len(appended), 30, "the relay")
    missing = kafka_namespace.topic("never-created")
    with pytest.raises(TailUnreadable, match=missing):
        read_tail(
            {"bootstrap.servers": kafka_namespace.bootstrap_servers},
            [topic, missing],
            store=str(uuid.uuid4()),
            relay="default",
            confirm=lambda pairs: pairs,
            timeout=10,
        )


def _poison_key(event: RecordedEvent) -> str:
    if event.event_type == "Poison":
        raise ValueError("no key for poison")
    return event.stream_id


def _fixed_key(event: RecordedEvent) -> str:
    return event.stream_id


def test_a_routing_function_that_raises_blocks_at_its_event_loudly_and_the_relay_lives(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace, relays: list[Relay]
) -> None:
    topic = kafka_namespace.topic("events")
    before = append_events(event_store, streams=2, per_stream=2)
    event_store.append_to_stream("account-0", ANY, [EventData("Poison", b"p")])
    after = append_events(event_store, streams=2, per_stream=2, prefix="after")
    relay = start_relay(
        relays,
        event_store,
        _config(kafka_namespace, topic, routing=Routing(topic, key=_poison_key), batch_size=100),
    )

    wait_until(lambda: relay_verdict(event_store) == "blocked", 30, "the verdict")
    status = _status(event_store)
    assert status.problem_event == 5
    assert "no key for poison" in status.problem
    wait_until(lambda: relay.last_published == 4, 30, "the events before the poison")
    assert relay._thread is not None
    assert relay._thread.is_alive()
    assert relay.leading.is_set()
    assert metrics.RELAY_BLOCKED.labels(event_store.config.schema, "default")._value.get() == 1
    seen = read_to_end(kafka_namespace.bootstrap_servers, [topic])
    assert_exactly_once_in_order(seen, before)  # nothing after the poison passed it
    relay.stop()

    fixed = start_relay(
        relays, event_store, _config(kafka_namespace, topic, routing=Routing(topic, key=_fixed_key))
    )
    wait_until(lambda: fixed.last_published == 9, 30, "the fixed relay")
    seen = read_to_end(kafka_namespace.bootstrap_servers, [topic])
    assert len(seen) == 9
    assert [m.event_number for m in seen if m.key == b"account-0"] == sorted(
        m.event_number for m in seen if m.key == b"account-0"
    )
    assert set(before + after) < {m.event_id for m in seen}
    wait_until(lambda: relay_verdict(event_store) == "ok", 30, "the verdict cleared")


def test_a_broker_limit_lowered_under_a_running_relay_blocks_at_the_event_loudly_then_goes_on(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace, relays: list[Relay]
) -> None:
    topic = kafka_namespace.topic("events")
    before = append_events(event_store, streams=2, per_stream=2)
    relay = start_relay(relays, event_store, _config(kafka_namespace, topic, compression="none"))
    wait_until(lambda: relay.last_published == len(before), 30, "the relay")
    set_topic_limit(kafka_namespace.bootstrap_servers, topic, 20_000)

    big = EventData("Big", os.urandom(100_000))
    event_store.append_to_stream("account-1", ANY, [big])
    after = append_events(event_store, streams=2, per_stream=2, prefix="after")
    wait_until(lambda: relay_verdict(event_store) == "blocked", 60, "the verdict")
    assert _status(event_store).problem_event == len(before) + 1
    assert relay.last_published == len(before), "nothing after the big event passed it"

    set_topic_limit(kafka_namespace.bootstrap_servers, topic, 2_000_000)
    total = len(before) + 1 + len(after)
    wait_until(lambda: relay.last_published == total, 60, "the relay, once the limit is raised")
    seen = read_to_end(kafka_namespace.bootstrap_servers, [topic])
    assert_exactly_once_in_order(seen, [*before, big.event_id, *after])
    wait_until(lambda: relay_verdict(event_store) == "ok", 30, "the verdict cleared")


def test_messages_of_an_earlier_relay_without_the_identity_headers_are_confirmed_against_the_store(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace, relays: list[Relay]
) -> None:
    # Topics written before the identity headers existed: their messages count as this relay's once the
    # store confirms their event_id at their event_number, so an upgrade publishes nothing twice.
    topic = kafka_namespace.create_topic("events", partitions=2, config={"max.message.bytes": "4194304"})
    appended = append_events(event_store, streams=2, per_stream=3)
    # Events are numbered a moment after their append: wait, or there is nothing to publish "before".
    wait_until(lambda: event_store.last_event_number() == len(appended), 30, "the events numbered")
    # What a relay older than the identity headers wrote: the event's own headers, with its partitioner.
    producer = Producer(
        {"bootstrap.servers": kafka_namespace.bootstrap_servers, "partitioner": "murmur2_random"}
    )
    earlier = list(event_store.read_all_forward(1, 100))
    assert len(earlier) == len(appended)
    for event in earlier:
        producer.produce(
            topic, event.data, event.stream_id.encode(), headers=headers(OutgoingEvent.of(event))
        )
    assert producer.flush(30) == 0
    more = append_events(event_store, streams=2, per_stream=2, prefix="more")
    relay = start_relay(relays, event_store, _config(kafka_namespace, topic, create_topics=False))
    wait_until(lambda: relay.last_published == len(appended) + len(more), 30, "the relay")
    seen = read_to_end(kafka_namespace.bootstrap_servers, [topic])
    assert_exactly_once_in_order(seen, appended + more)
    # The earlier relay's messages stood for their events: the relay published only the later ones.
    assert sorted(m.event_id for m in seen if STORE_HEADER not in m.headers) == sorted(appended)


def test_a_topic_recreated_while_another_kept_its_events_gets_its_events_again(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace, relays: list[Relay]
) -> None:
    main, audit = kafka_namespace.topic("events"), kafka_namespace.topic("audit")
    routing = Routing(main, by_event_type={"AuditNoted": Route(topic=audit)})
    appended = []
    for n in range(6):
        for kind in ("Noted", "AuditNoted"):
            event = EventData(kind, b"%d" % n)
            event_store.append_to_stream(f"account-{n % 2}", ANY, [event])
            appended.append((kind, event.event_id))
    first = start_relay(relays, event_store, _config(kafka_namespace, main, routing=routing))
    wait_until(lambda: first.last_published == 12, 30, "the first relay")
    first.stop()
    # The audit topic is deleted and made again (by an operator, a cluster restored from an older backup).
    admin = AdminClient({"bootstrap.servers": kafka_namespace.bootstrap_servers})
    admin.delete_topics([audit])[audit].result(30)
    wait_until(lambda: audit not in admin.list_topics(timeout=10).topics, 30, "the topic deleted")
    republished = metrics.RELAY_REPUBLISHED.labels(event_store.config.schema, "default")._value.get()

    second = start_relay(relays, event_store, _config(kafka_namespace, main, routing=routing))
    wait_until(lambda: second.last_published == 12, 30, "the restarted relay")
    on_audit = read_to_end(kafka_namespace.bootstrap_servers, [audit])
    assert sorted(m.event_id for m in on_audit) == sorted(i for kind, i in appended if kind == "AuditNoted")
    on_main = read_to_end(kafka_namespace.bootstrap_servers, [main])
    assert {m.event_id for m in on_main} == {i for kind, i in appended if kind == "Noted"}
    assert metrics.RELAY_REPUBLISHED.labels(event_store.config.schema, "default")._value.get() > republished
    assert relay_verdict(event_store) == "ok"
