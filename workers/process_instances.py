"""The state of process manager instances in PostgreSQL (``process_instances``), read and written in the
transaction of the event that changes them.

Rows are locked (``FOR UPDATE``, in process id order) before an event is handled, so two lanes or two
workers that reach the same instance take turns, and the state each reads is the one the other wrote.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from eventstore import PostgresEventStore

__all__ = ["Instance", "ProcessInstances"]


@dataclass(frozen=True, slots=True)
class Instance:
    """One live instance as stored: its state as JSON and how many events it has applied."""

    process_id: str
    state: Any
    events_applied: int
    last_event_number: int


class ProcessInstances:
    """The instances of every process manager of one store."""

    def __init__(self, store: PostgresEventStore) -> None:
        self._table = sql.Identifier(store.config.schema, "process_instances")
        self.store = store

    def _sql(self, text: str) -> sql.Composed:
        return sql.SQL(text).format(t=self._table)

    def lock(self, conn: psycopg.Connection, process_manager: str, ids: Iterable[str]) -> dict[str, Instance]:
        """The live instances among ``ids``, locked until the transaction ends."""
        rows = conn.execute(
            self._sql(
                "SELECT process_id, state, events_applied, last_event_number FROM {t} "
                "WHERE process_manager = %s AND process_id = ANY(%s) ORDER BY process_id FOR UPDATE"
            ),
            (process_manager, sorted(ids)),
        ).fetchall()
        return {row[0]: Instance(row[0], row[1], row[2], row[3]) for row in rows}

    def lock_all(self, conn: psycopg.Connection, process_manager: str) -> dict[str, Instance]:
        """Every live instance of ``process_manager`` (for a broadcast), locked until the transaction ends."""
        rows = conn.execute(
            self._sql(
                "SELECT process_id, state, events_applied, last_event_number FROM {t} "
                "WHERE process_manager = %s ORDER BY process_id FOR UPDATE"
            ),
            (process_manager,),
        ).fetchall()
        return {row[0]: Instance(row[0], row[1], row[2], row[3]) for row in rows}

    def save(
        self,
        conn: psycopg.Connection,
        process_manager: str,
        process_id: str,
        state: Any,
        events_applied: int,
        event_number: int,
    ) -> None:
        conn.execute(
            self._sql(
                "INSERT INTO {t} (process_manager, process_id, state, events_applied, last_event_number) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (process_manager, process_id) DO UPDATE SET "
                "state = EXCLUDED.state, events_applied = EXCLUDED.events_applied, "
                "last_event_number = EXCLUDED.last_event_number, updated_at = now()"
            ),
            (process_manager, process_id, Jsonb(state), events_applied, event_number),
        )

    def delete(self, conn: psycopg.Connection, process_manager: str, process_id: str) -> None:
        conn.execute(
            self._sql("DELETE FROM {t} WHERE process_manager = %s AND process_id = %s"),
            (process_manager, process_id),
        )

    def get(self, process_manager: str, process_id: str) -> Instance | None:
        """One instance as committed (for tests and operators)."""
        with self.store.connection() as conn:
            row = conn.execute(
                self._sql(
                    "SELECT process_id, state, events_applied, last_event_number FROM {t} "
                    "WHERE process_manager = %s AND process_id = %s"
                ),
                (process_manager, process_id),
            ).fetchone()
        return Instance(row[0], row[1], row[2], row[3]) if row else None

    def count(self, process_manager: str) -> int:
        with self.store.connection() as conn:
            row = conn.execute(
                self._sql("SELECT count(*) FROM {t} WHERE process_manager = %s"), (process_manager,)
            ).fetchone()
        return int(row[0]) if row else 0

    def delete_all(self, conn: psycopg.Connection, process_manager: str) -> int:
        """Every instance of ``process_manager`` (``tidings reset``)."""
        return conn.execute(
            self._sql("DELETE FROM {t} WHERE process_manager = %s"), (process_manager,)
        ).rowcount
