"""Attacks on the workers' PostgreSQL sessions (issue 20, case 7): they carry the store's bounds.

The numbering horizon is cluster-wide: a projection's transaction left open (a slow ``project()``, a
sleep, a statement that runs long) holds back the numbering of every append. The worker's sessions must
be ended by PostgreSQL past the store's ``idle_in_transaction_timeout`` and ``statement_timeout``, the
unit rolled back and done again as a transient failure, never blamed on the event.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import sqlalchemy as sa
from psycopg import sql

from eventstore import ANY, PostgresEventStore, StoreConfig
from tests.workers.worker_support import Noted, append_noted, eventually, mapper, read, stack
from tidings.pytest_plugin import KafkaNamespace, PostgresSchema
from workers.app import WorkerConfig
from workers.delivery import EventMetadata
from workers.failure import ErrorAnswer, FailureContext
from workers.parking import ParkedEvents
from workers.projection import Projection
from workers.runner import HandlerRunner

IDLE_BOUND = 1.0
STATEMENT_BOUND = 1.5
SLEEP = 6.0
"""How long the slow projection takes: far past both bounds."""


def test_a_projection_past_the_session_bounds_is_cut_off_and_redone_without_holding_numbering(
    event_store: PostgresEventStore, postgres_schema: PostgresSchema, kafka_namespace: KafkaNamespace
) -> None:
    schema = event_store.config.schema
    with event_store.connection() as conn:
        conn.execute(
            sql.SQL("CREATE TABLE {} (event_number bigint PRIMARY KEY)").format(
                sql.Identifier(schema, "slow_rows")
            )
        )
    table = sa.Table("slow_rows", sa.MetaData(schema=schema), sa.Column("event_number", sa.BigInteger))
    idle_event, long_event = 3, 6  # the event_numbers that take SLEEP seconds, once each
    allowed_event = 8  # takes longer than the statement bound, having raised it for its transaction
    sleeping = threading.Event()
    attempts: Counter[int] = Counter()
    errors: list[BaseException] = []

    class Slow(Projection):
        name = kafka_namespace.group("slow")
        tables = (table,)
        ordering = "global"

        def project(self, event: Noted, metadata: EventMetadata, connection: sa.Connection) -> None:
            number = metadata.event_number
            attempts[number] += 1
            # Not idempotent: a half-written unit done again would fail on the primary key.
            connection.execute(sa.insert(table).values(event_number=number))
            if attempts[number] > 1:
                return
            if number == idle_event:  # idle in its transaction (a slow call elsewhere, say)
                sleeping.set()
                time.sleep(SLEEP)
            elif number == long_event:  # one statement running long
                connection.execute(sa.text("SELECT pg_sleep(:s)"), {"s": SLEEP})
            elif number == allowed_event:  # as the guide says a projection needing longer does
                connection.execute(sa.text("SET LOCAL statement_timeout = '10s'"))
                connection.execute(sa.text("SELECT pg_sleep(:s)"), {"s": STATEMENT_BOUND + 1})

        def error(self, error: BaseException, event: Any, context: FailureContext) -> ErrorAnswer:
            errors.append(error)
            return super().error(error, event, context)

    bounded = PostgresEventStore(
        StoreConfig(
            postgres_schema.server_url,
            schema,
            idle_in_transaction_timeout=IDLE_BOUND,
            statement_timeout=STATEMENT_BOUND,
        ),
        sequencer=False,
    )
    config = WorkerConfig(bounded, kafka_namespace.bootstrap_servers, partitions=4)
    with stack(event_store, kafka_namespace) as s:
        runner = HandlerRunner(Slow, s.app(Slow), config)
        try:
            append_noted(event_store, streams=2, per_stream=4)
            runner.start()
            eventually(sleeping.is_set, timeout=60, what="the projection sleeps in its transaction")

            # An unrelated append meanwhile: numbered once the bound ended the idle transaction, not
            # after the whole sleep.
            started = time.monotonic()
            event_store.append_to_stream("unrelated", ANY, [mapper.to_event_data(Noted("unrelated", 0))])
            eventually(lambda: event_store.last_event_number() == 9, timeout=30, what="numbered")
            waited = time.monotonic() - started
            assert waited < SLEEP / 2, f"the append waited {waited:.1f}s for its number"

            expected = [(n,) for n in range(1, 10)]
            eventually(
                lambda: read(event_store, "SELECT event_number FROM slow_rows ORDER BY 1") == expected,
                timeout=60,
                what="every event projected once",
            )
            # Both cut off and done again, as transient failures: the handler's error() never asked.
            assert attempts[idle_event] == 2
            assert attempts[long_event] == 2
            assert attempts[allowed_event] == 1
            assert errors == []
            assert ParkedEvents(event_store).list() == []
            assert runner.status.state == "running"
        finally:
            runner.stop()
            config.dispose()
            bounded.close()
