"""A WorkerApp for the tests of options given at start: ``tidings worker tests.workers.start_apps:build``.

``build()`` reads the settings of ``tests.workers.apps`` (``TIDINGS_TEST_APP_NAME``,
``TIDINGS_TEST_PREFIX``, ``TIDINGS_SCHEMA``, ``DATABASE_URL``). Its one handler, ``<prefix>seen``,
writes each event's number with the ``application`` and ``handler_name`` of its metadata into the
``seen_by`` table of the schema.
"""

from __future__ import annotations

import os

import psycopg
from psycopg import sql

from eventstore.routing import Routing
from tests.workers.worker_support import Noted, mapper
from workers.app import WorkerApp
from workers.delivery import EventMetadata
from workers.handler import EventHandler


def create_table(url: str, schema: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (event_number bigint PRIMARY KEY, application text NOT NULL, "
                "handler_name text NOT NULL)"
            ).format(sql.Identifier(schema, "seen_by"))
        )


def seen(url: str, schema: str) -> list[tuple[int, str, str]]:
    with psycopg.connect(url) as conn:
        query = sql.SQL("SELECT event_number, application, handler_name FROM {} ORDER BY 1")
        return list(conn.execute(query.format(sql.Identifier(schema, "seen_by"))).fetchall())


def build() -> WorkerApp:
    name, prefix = os.environ["TIDINGS_TEST_APP_NAME"], os.environ["TIDINGS_TEST_PREFIX"]
    url, schema = os.environ["DATABASE_URL"], os.environ["TIDINGS_SCHEMA"]
    table = sql.Identifier(schema, "seen_by")

    class Seen(EventHandler):
        name = f"{prefix}seen"

        def init(self) -> None:
            self.conn = psycopg.connect(url, autocommit=True)

        def handle(self, event: Noted, metadata: EventMetadata) -> None:
            self.conn.execute(
                sql.SQL("INSERT INTO {} VALUES (%s, %s, %s) ON CONFLICT DO NOTHING").format(table),
                (metadata.event_number, metadata.application, metadata.handler_name),
            )

    return WorkerApp(name, mapper=mapper, handlers=[Seen], routing=Routing(f"{name}.events"))
