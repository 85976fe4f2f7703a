"""WorkerApps for the worker and operator-command tests: ``tidings worker tests.workers.apps:build``.

``build()`` reads its settings from the environment, as a user's factory would:

- ``TIDINGS_TEST_APP_NAME``: the app's name (its events topic is ``<name>.events``).
- ``TIDINGS_TEST_PREFIX``: the prefix of the handlers' names (the test's Kafka namespace).
- ``TIDINGS_SCHEMA``: the store's schema, where the tables below live too.
- ``DATABASE_URL``: PostgreSQL, for the plain handler's own connection.
- ``TIDINGS_TEST_STOP_ON_POISON=1``: ``picky`` answers Stop to a failure instead of parking the event.

Handlers (names prefixed):

- ``journal``: a projection writing (event_number, stream_id, n) into ``journal``; its ``before_reset``
  records the reset in ``resets``.
- ``picky``: a plain handler writing what it saw into ``picky_seen`` (``seq`` gives the order), and
  failing on the events of any stream listed in ``poison_keys``: once is enough to park it.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg import sql

from eventstore import sqlalchemy_url
from eventstore.routing import Routing
from tests.workers.worker_support import Noted, mapper
from workers.app import WorkerApp
from workers.delivery import EventMetadata
from workers.failure import ErrorAnswer, FailureContext, Stop
from workers.handler import EventHandler
from workers.projection import Projection


class Poisoned(Exception):
    """Raised by ``picky`` for the events of a stream listed in ``poison_keys``."""


@functools.cache
def tables(schema: str) -> sa.MetaData:
    metadata = sa.MetaData(schema=schema)
    sa.Table(
        "journal",
        metadata,
        sa.Column("event_number", sa.BigInteger, primary_key=True),
        sa.Column("stream_id", sa.Text, nullable=False),
        sa.Column("n", sa.Integer, nullable=False),
    )
    sa.Table(
        "picky_seen",
        metadata,
        sa.Column("seq", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("event_number", sa.BigInteger, nullable=False, unique=True),
        sa.Column("stream_id", sa.Text, nullable=False),
        sa.Column("n", sa.Integer, nullable=False),
    )
    sa.Table("poison_keys", metadata, sa.Column("key", sa.Text, primary_key=True))
    sa.Table(
        "resets",
        metadata,
        sa.Column("seq", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("handler", sa.Text, nullable=False),
    )
    return metadata


def create_tables(url: str, schema: str) -> None:
    engine = sa.create_engine(sqlalchemy_url(url), poolclass=sa.pool.NullPool)
    tables(schema).create_all(engine)
    engine.dispose()


def build_app(name: str, prefix: str, schema: str, url: str, *, stop_on_poison: bool = False) -> WorkerApp:
    """The test app: ``journal`` and ``picky`` named ``<prefix>journal`` and ``<prefix>picky``."""
    metadata = tables(schema)
    journal = metadata.tables[f"{schema}.journal"]

    def schema_table(table: str) -> sql.Identifier:
        return sql.Identifier(schema, table)

    class Journal(Projection):
        name = f"{prefix}journal"
        tables = (journal,)
        concurrency = 2

        def project(self, event: Noted, metadata: EventMetadata, connection: sa.Connection) -> None:
            values = {"event_number": metadata.event_number, "stream_id": metadata.stream_id, "n": event.n}
            self.upsert(connection, journal, values, key=["event_number"])

        def before_reset(self) -> None:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("INSERT INTO {} (handler) VALUES (%s)").format(schema_table("resets")),
                    (self.name,),
                )

    class Picky(EventHandler):
        name = f"{prefix}picky"
        max_attempts = 1

        def init(self) -> None:
            self.conn = psycopg.connect(url, autocommit=True)

        def handle(self, event: Noted, metadata: EventMetadata) -> None:
            poisoned = self.conn.execute(
                sql.SQL("SELECT 1 FROM {} WHERE key = %s").format(schema_table("poison_keys")),
                (metadata.stream_id,),
            ).fetchone()
            if poisoned:
                raise Poisoned(f"poisoned key {metadata.stream_id}")
            self.conn.execute(
                sql.SQL(
                    "INSERT INTO {} (event_number, stream_id, n) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING"
                ).format(schema_table("picky_seen")),
                (metadata.event_number, metadata.stream_id, event.n),
            )

        def error(self, error: BaseException, event: Any, context: FailureContext) -> ErrorAnswer:
            if stop_on_poison:
                return Stop(f"{type(error).__name__}: {error}")
            return super().error(error, event, context)

    return WorkerApp(name, mapper=mapper, handlers=[Journal, Picky], routing=Routing(f"{name}.events"))


def build() -> WorkerApp:
    """The test app, configured by the environment (see the module's docstring)."""
    return build_app(
        os.environ["TIDINGS_TEST_APP_NAME"],
        os.environ["TIDINGS_TEST_PREFIX"],
        os.environ["TIDINGS_SCHEMA"],
        os.environ["DATABASE_URL"],
        stop_on_poison=os.environ.get("TIDINGS_TEST_STOP_ON_POISON") == "1",
    )


# --- for load_app's tests --------------------------------------------------------------------------


class Example(EventHandler):
    name = "example"

    def handle(self, event: Any, metadata: EventMetadata) -> None:
        pass


example = WorkerApp("example", mapper=mapper, handlers=[Example])
not_an_app = 42


def broken() -> WorkerApp:
    raise RuntimeError("TIDINGS_TEST_APP_NAME is not set")


def not_a_factory() -> str:
    return "an app"
