"""Attack on guarantee 6 through the relay (issue 19): a store moved to another cluster under a running
relay and a writer, then re-based while both go on. Every event reaches Kafka once, per key in
event_number and stream_version order, and the numbers stay gapless. Real PostgreSQL, real Kafka.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from eventstore import PostgresEventStore, rebase
from eventstore.relay import Relay, RelayConfig, relay_status
from eventstore.routing import Routing
from tests.eventstore.relay_support import Writers, assert_exactly_once_in_order, read_to_end, wait_until
from tidings.pytest_plugin import KafkaNamespace

SHIFT = 10**12


def _move_to_a_younger_cluster(store: PostgresEventStore) -> None:
    """What a dump/restore into a cluster with lower transaction ids leaves behind (as test_cluster_move)."""
    schema = store.config.schema
    table = {name: sql.Identifier(schema, name) for name in ("events", "streams", "sequencer")}
    with psycopg.connect(store.config.url) as conn:
        for statement in (
            "UPDATE {events} SET order_xid = (order_xid::text::bigint + %(shift)s)::text::xid8",
            "UPDATE {streams} SET last_xid = (last_xid::text::bigint + %(shift)s)::text::xid8",
            "UPDATE {sequencer} SET cursor_xid = (cursor_xid::text::bigint + %(shift)s)::text::xid8",
        ):
            conn.execute(sql.SQL(statement).format(**table), {"shift": SHIFT})


def test_a_store_moved_and_rebased_under_a_running_relay_and_writer_publishes_everything_once_in_order(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    topic = kafka_namespace.topic("events")
    relay = Relay(
        event_store,
        RelayConfig(kafka_namespace.bootstrap_servers, routing=Routing(topic), partitions=3, batch_size=20),
    )
    relay.start()
    try:
        with Writers(event_store, streams=10) as writers:
            wait_until(lambda: relay.last_published >= 50, 30, "the relay, before the move")
        # The old cluster stops (a dump is one snapshot): the writers go on against the new one.
        _move_to_a_younger_cluster(event_store)
        with Writers(event_store, streams=10) as after_move:
            wait_until(lambda: len(after_move.appended) >= 50, 30, "appends after the move")
            report = rebase(event_store.config)
            assert report.rebased
            rebased_at = len(after_move.appended)
            wait_until(lambda: len(after_move.appended) >= rebased_at + 50, 30, "appends after the rebase")
        appended = writers.appended + after_move.appended
        last = event_store.sequencer.catch_up()
        assert last == len(appended), f"{len(appended)} appended, {last} numbered"
        wait_until(lambda: relay.last_published == last, 60, "the relay, after the rebase")
    finally:
        relay.stop()
    seen = read_to_end(kafka_namespace.bootstrap_servers, [topic])
    assert_exactly_once_in_order(seen, appended)
    assert sorted(m.event_number for m in seen) == list(range(1, len(appended) + 1))
    assert {s.verdict for s in relay_status(event_store)} == {"ok"}
