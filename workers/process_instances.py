"""The state of process manager instances in PostgreSQL (``process_instances``), read and written in the
transaction of the event that changes them.

Before an event is handled, each instance it names is locked with a transaction-scoped advisory lock on
(schema, process manager, process id), then its row is read. ``FOR UPDATE`` alone would not do: on a row
that does not exist yet it locks nothing, so two events starting one instance at once (two partitions,
lanes or workers) would both start it from ``state_type()``, and one state change would be lost. The
advisory lock exists before the row does: the second event waits for the first to commit, then reads
the row it wrote (and ``StartStrict`` finds it started). Locks are taken in the order of their keys, so
two events naming the same instances in different orders cannot deadlock on them.
"""

from __future__ import annotations

import hashlib
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
        """The live instances among ``ids``; every one of ``ids``, live or not, is locked until the
        transaction ends (a missing one is then created by this transaction alone)."""
        ids = sorted(set(ids))
        keys = sorted({self._key(process_manager, process_id) for process_id in ids})
        if keys:
            # The two-int4 form: its lock space is apart from the bigint keys of leaderships and
            # checkpoints. unnest hands the keys over in array order, the order they are locked in.
            conn.execute(
                "SELECT pg_advisory_xact_lock(k.high, k.low) "
                "FROM unnest(%s::int4[], %s::int4[]) AS k(high, low)",
                ([high for high, _ in keys], [low for _, low in keys]),
            )
        rows = conn.execute(
            self._sql(
                "SELECT process_id, state, events_applied, last_event_number FROM {t} "
                "WHERE process_manager = %s AND process_id = ANY(%s) ORDER BY process_id FOR UPDATE"
            ),
            (process_manager, ids),
        ).fetchall()
        return {row[0]: Instance(row[0], row[1], row[2], row[3]) for row in rows}

    def _key(self, process_manager: str, process_id: str) -> tuple[int, int]:
        """The advisory-lock key of an instance: two signed 32-bit halves of a stable hash (a collision
        only makes two instances take turns)."""
        name = "\x00".join((self.store.config.schema, process_manager, process_id)).encode()
        digest = hashlib.blake2b(name, digest_size=8).digest()
        return int.from_bytes(digest[:4], "big", signed=True), int.from_bytes(digest[4:], "big", signed=True)

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
