"""Attacks on what names a relay to Kafka and to PostgreSQL (issue 19): two stores whose schemas have
the same name in two databases of one cluster (staging and production, two tenants' databases), each
with its own app name, sharing one Kafka cluster. Real PostgreSQL, real Kafka.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from eventstore import PostgresEventStore, StoreConfig, metrics, migrate
from eventstore.relay import Relay, RelayConfig, relay_status
from eventstore.routing import Routing
from tests.eventstore.relay_support import (
    append_events,
    assert_exactly_once_in_order,
    read_to_end,
    wait_until,
)
from tidings.pytest_plugin import KafkaNamespace, PostgresSchema


@pytest.fixture
def twin_store(postgres_schema: PostgresSchema) -> Iterator[PostgresEventStore]:
    """A store in another database of the same cluster, under the same schema name."""
    database = f"attack_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_schema.server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    parts = urlsplit(postgres_schema.server_url)
    url = urlunsplit(parts._replace(path=f"/{database}"))
    config = StoreConfig(url, postgres_schema.name)
    migrate(config)
    store = PostgresEventStore(config)
    try:
        yield store
    finally:
        store.close()
        with psycopg.connect(postgres_schema.server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(database)))


def _published(relay: Relay, count: int, what: str) -> None:
    wait_until(lambda: relay.last_published == count, 30, what)


def test_two_stores_with_one_schema_name_in_two_databases_each_publish_their_events_on_their_topics(
    event_store: PostgresEventStore,
    twin_store: PostgresEventStore,
    kafka_namespace: KafkaNamespace,
) -> None:
    # Each relay is alone on its store and its topic. Nothing else is shared but the Kafka cluster: the
    # two must not fence each other (transactional.id) nor stop each other's publication.
    topics = [kafka_namespace.topic("ours"), kafka_namespace.topic("theirs")]
    relays = [
        Relay(store, RelayConfig(kafka_namespace.bootstrap_servers, routing=Routing(topic), batch_size=5))
        for store, topic in zip((event_store, twin_store), topics, strict=True)
    ]
    schema = event_store.config.schema
    fenced_before = metrics.RELAY_ERRORS.labels(schema, "default", "producer")._value.get()
    ours = append_events(event_store, streams=5, per_stream=4)
    theirs = append_events(twin_store, streams=5, per_stream=4, prefix="twin")
    try:
        relays[0].start()
        wait_until(lambda: relays[0].last_published == len(ours), 30, "our relay")
        relays[1].start()
        wait_until(lambda: relays[1].last_published == len(theirs), 30, "their relay")
        for round_ in range(5):  # each store appends in turn, each relay publishes in turn
            ours += append_events(event_store, streams=5, per_stream=2, prefix=f"ours{round_}")
            _published(relays[0], len(ours), f"our relay, round {round_}")
            theirs += append_events(twin_store, streams=5, per_stream=2, prefix=f"theirs{round_}")
            _published(relays[1], len(theirs), f"their relay, round {round_}")
    finally:
        for relay in relays:
            relay.stop()
    fenced = metrics.RELAY_ERRORS.labels(schema, "default", "producer")._value.get() - fenced_before
    assert fenced == 0, f"the relays fenced each other {fenced} times"
    assert_exactly_once_in_order(read_to_end(kafka_namespace.bootstrap_servers, [topics[0]]), ours)
    assert_exactly_once_in_order(read_to_end(kafka_namespace.bootstrap_servers, [topics[1]]), theirs)
    assert {s.verdict for s in relay_status(event_store) + relay_status(twin_store)} == {"ok"}
