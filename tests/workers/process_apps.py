"""The app of the multi-process worker tests: ``tidings worker tests.workers.process_apps:build``.

Settings from the environment: ``TIDINGS_TEST_APP_NAME``, ``TIDINGS_TEST_PREFIX`` (the handlers' name
prefix), ``TIDINGS_SCHEMA`` and ``DATABASE_URL`` (the tables below live in the store's schema).

- ``ordered`` (concurrency 4): appends what it handles, and in which process, to ``ordered_seen``.
- ``ledger`` (a projection in global order, the default for concurrency 1): appends each event_number
  to ``ledger_seen`` (``seq`` is the order; a repeated effect breaks the unique key), with its pid.
- ``tally`` (a projection, concurrency 4): per stream, a count and the list of event_numbers projected.
  Neither is idempotent, so a repeated effect shows. ``TIDINGS_TEST_STATIC=1`` gives ``tally`` static
  membership (each worker's ``--instance-id`` names its member).
"""

from __future__ import annotations

import os

import psycopg
import sqlalchemy as sa
from psycopg import sql

from eventstore.routing import Routing
from tests.workers.worker_support import Noted, mapper
from workers.app import WorkerApp
from workers.delivery import EventMetadata
from workers.handler import EventHandler
from workers.projection import Projection

TABLES = (
    "CREATE TABLE {schema}.ordered_seen (seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
    "stream_id text NOT NULL, n int NOT NULL, event_number bigint NOT NULL, pid int NOT NULL)",
    "CREATE TABLE {schema}.ledger_seen (seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
    "event_number bigint NOT NULL UNIQUE, pid int NOT NULL)",
    "CREATE TABLE {schema}.tally (stream_id text PRIMARY KEY, events int NOT NULL, "
    "numbers bigint[] NOT NULL)",
)


def create_tables(url: str, schema: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in TABLES:
            conn.execute(sql.SQL(statement).format(schema=sql.Identifier(schema)))  # type: ignore[arg-type]


def build() -> WorkerApp:
    name = os.environ["TIDINGS_TEST_APP_NAME"]
    prefix = os.environ["TIDINGS_TEST_PREFIX"]
    schema = os.environ["TIDINGS_SCHEMA"]
    url = os.environ["DATABASE_URL"]
    seen = sql.Identifier(schema, "ordered_seen")

    class Ordered(EventHandler):
        name = f"{prefix}ordered"
        concurrency = 4

        def init(self) -> None:
            self.conn = psycopg.connect(url, autocommit=True)

        def handle(self, event: Noted, metadata: EventMetadata) -> None:
            self.conn.execute(
                sql.SQL("INSERT INTO {} (stream_id, n, event_number, pid) VALUES (%s, %s, %s, %s)").format(
                    seen
                ),
                (metadata.stream_id, event.n, metadata.event_number, os.getpid()),
            )

    class Ledger(Projection):
        name = f"{prefix}ledger"

        def project(self, event: Noted, metadata: EventMetadata, connection: sa.Connection) -> None:
            connection.execute(
                sa.text(f'INSERT INTO "{schema}".ledger_seen (event_number, pid) VALUES (:number, :pid)'),
                {"number": metadata.event_number, "pid": os.getpid()},
            )

    class Tally(Projection):
        name = f"{prefix}tally"
        concurrency = 4
        static_membership = os.environ.get("TIDINGS_TEST_STATIC") == "1"

        def project(self, event: Noted, metadata: EventMetadata, connection: sa.Connection) -> None:
            connection.execute(
                sa.text(
                    f'INSERT INTO "{schema}".tally VALUES (:s, 1, ARRAY[:number]) ON CONFLICT (stream_id) '
                    "DO UPDATE SET events = tally.events + 1, numbers = tally.numbers || :number"
                ),
                {"s": metadata.stream_id, "number": metadata.event_number},
            )

    return WorkerApp(
        name, mapper=mapper, handlers=[Ordered, Ledger, Tally], routing=Routing(f"{name}.events")
    )


def build_bank() -> WorkerApp:
    """The bank's transfer process manager, named with the test's prefix
    (``tidings worker tests.workers.process_apps:build_bank``)."""
    from examples.bank.transfers import TransferProcess, bank
    from tests.tidings.test_dispatch import MAPPER

    name = os.environ["TIDINGS_TEST_APP_NAME"]
    prefix = os.environ["TIDINGS_TEST_PREFIX"]

    class Transfers(TransferProcess):
        name = f"{prefix}transfers"

    return WorkerApp(
        name, mapper=MAPPER, handlers=[Transfers], routing=Routing(f"{name}.events"), router=bank
    )
