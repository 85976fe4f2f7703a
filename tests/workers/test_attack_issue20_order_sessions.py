"""Attack: a projection's transaction cannot hold the numbering horizon past the store's bounds
(issue 20, case 7).

The workers' sessions carry the store's ``idle_in_transaction_session_timeout`` and
``statement_timeout``. Those end a transaction left idle, or one statement running long; they do not
end a transaction that stays busy: a projection unit is one transaction for a whole poll, so a
``project()`` that is merely slow (a write, then some work, per event) keeps it open for the poll's
events times their pace, and every append of the cluster waits that long for its number.
"""

from __future__ import annotations

import threading
import time

import sqlalchemy as sa
from psycopg import sql

from eventstore import ANY, PostgresEventStore, StoreConfig
from tests.workers.worker_support import Noted, append_noted, eventually, mapper, read, stack
from tidings.pytest_plugin import KafkaNamespace, PostgresSchema
from workers.app import WorkerConfig
from workers.delivery import EventMetadata
from workers.projection import Projection
from workers.runner import HandlerRunner

IDLE_BOUND = 1.0
STATEMENT_BOUND = 1.5
PACE = 0.6
"""Seconds of work per event after its write: never idle as long as the bound, never one long statement."""
EVENTS = 10


def test_a_busy_projection_unit_does_not_hold_numbering_past_the_bound(
    event_store: PostgresEventStore, postgres_schema: PostgresSchema, kafka_namespace: KafkaNamespace
) -> None:
    """A slow project() must not hold the numbering horizon beyond the bound: before units were cut at
    UNIT_SECONDS, the unit of ten events at 0.6 s each held its transaction (and the horizon) about 6 s
    with a bound of 1 s."""
    schema = event_store.config.schema
    with event_store.connection() as conn:
        conn.execute(
            sql.SQL("CREATE TABLE {} (event_number bigint PRIMARY KEY)").format(
                sql.Identifier(schema, "busy_rows")
            )
        )
    table = sa.Table("busy_rows", sa.MetaData(schema=schema), sa.Column("event_number", sa.BigInteger))
    working = threading.Event()

    class Busy(Projection):
        name = kafka_namespace.group("busy")
        tables = (table,)

        def project(self, event: Noted, metadata: EventMetadata, connection: sa.Connection) -> None:
            connection.execute(sa.insert(table).values(event_number=metadata.event_number))
            working.set()
            time.sleep(PACE)  # work in Python between statements: the session is busy, not idle long

    bounded = PostgresEventStore(
        StoreConfig(
            postgres_schema.server_url,
            schema,
            idle_in_transaction_timeout=IDLE_BOUND,
            statement_timeout=STATEMENT_BOUND,
        ),
        sequencer=False,
    )
    config = WorkerConfig(bounded, kafka_namespace.bootstrap_servers, partitions=1)
    with stack(event_store, kafka_namespace, partitions=1) as s:
        append_noted(event_store, streams=1, per_stream=EVENTS)
        eventually(lambda: s.relay.last_published >= EVENTS, what="relayed")
        runner = HandlerRunner(Busy, s.app(Busy), config)
        try:
            runner.start()
            eventually(working.is_set, timeout=60, what="the projection at work in its transaction")
            started = time.monotonic()
            event_store.append_to_stream("unrelated", ANY, [mapper.to_event_data(Noted("unrelated", 0))])
            eventually(lambda: event_store.last_event_number() == EVENTS + 1, timeout=30, what="numbered")
            waited = time.monotonic() - started
            expected = [(n,) for n in range(1, EVENTS + 2)]
            eventually(
                lambda: read(event_store, "SELECT event_number FROM busy_rows ORDER BY 1") == expected,
                timeout=60,
                what="every event projected once",
            )
        finally:
            runner.stop()
            config.dispose()
            bounded.close()
    assert waited < 2 * IDLE_BOUND + 1.0, f"an unrelated append waited {waited:.1f}s for its number"
