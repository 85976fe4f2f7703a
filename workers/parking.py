"""Parked events: what a handler gave up on, and every later event of the same key, held in order.

Parking keeps a key's order: once one of its events is parked, the key's later events are parked behind
it instead of being handled, while other keys go on. ``tidings parked retry`` releases a key: the
worker owning its partition hands its parked events back to the handler, oldest first, and the key runs
live again once none is left. ``tidings parked discard`` deletes them (the handler never sees them).

Rows keep the whole message (key, value, headers), so a retry needs nothing from Kafka.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg import sql

from eventstore.postgres.store import PostgresEventStore
from workers.delivery import Delivery, delivery_of

__all__ = ["ParkedEvent", "ParkedEvents"]


@dataclass(frozen=True, slots=True)
class ParkedEvent:
    id: int
    handler: str
    topic: str
    partition: int
    offset: int
    key: bytes
    event_number: int | None
    stream_id: str | None
    event_type: str | None
    error: str
    released: bool
    parked_at: datetime
    delivery: Delivery


_COLUMNS = (
    "id, handler, topic, partition, kafka_offset, key, event_number, stream_id, event_type, error, released, "
    "parked_at, value, header_names, header_values"
)


class ParkedEvents:
    """The parked events of one store's handlers."""

    def __init__(self, store: PostgresEventStore) -> None:
        self.store = store
        self._table = sql.Identifier(store.config.schema, "parked_events")

    def _sql(self, text: str) -> sql.Composed:
        return sql.SQL(text).format(t=self._table, columns=sql.SQL(_COLUMNS))

    # --- the worker's side -------------------------------------------------------------------------

    def park(self, connection: psycopg.Connection, handler: str, delivery: Delivery, error: str) -> None:
        """Park ``delivery`` (in the caller's transaction, so it commits with the handler's position)."""
        readable = not delivery.error
        connection.execute(
            self._sql(
                "INSERT INTO {t} (handler, topic, partition, kafka_offset, key, event_number, stream_id, "
                "event_type, value, header_names, header_values, error) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (handler, topic, partition, kafka_offset) DO NOTHING"
            ),
            (
                handler,
                delivery.topic,
                delivery.partition,
                delivery.offset,
                delivery.key,
                delivery.event_number if readable else None,
                delivery.stream_id if readable else None,
                delivery.event_type if readable else None,
                delivery.value,
                [name for name, _ in delivery.headers],
                [value for _, value in delivery.headers],
                error,
            ),
        )

    def keys(self, handler: str, topic: str, partition: int) -> set[bytes]:
        """The keys of a partition that have parked events (its later events must wait)."""
        with self.store.connection() as conn:
            rows = conn.execute(
                self._sql(
                    "SELECT DISTINCT key FROM {t} WHERE handler = %s AND topic = %s AND partition = %s"
                ),
                (handler, topic, partition),
            ).fetchall()
        return {bytes(row[0]) for row in rows}

    def overview(self, handler: str) -> dict[tuple[str, int], dict[bytes, bool]]:
        """Per partition, each parked key and whether an operator released it."""
        with self.store.connection() as conn:
            rows = conn.execute(
                self._sql(
                    "SELECT topic, partition, key, bool_or(released) FROM {t} WHERE handler = %s "
                    "GROUP BY topic, partition, key"
                ),
                (handler,),
            ).fetchall()
        found: dict[tuple[str, int], dict[bytes, bool]] = {}
        for topic, partition, key, released in rows:
            found.setdefault((topic, partition), {})[bytes(key)] = released
        return found

    def of_key(self, handler: str, topic: str, partition: int, key: bytes) -> list[ParkedEvent]:
        """A key's parked events, oldest first."""
        with self.store.connection() as conn:
            rows = conn.execute(
                self._sql(
                    "SELECT {columns} FROM {t} WHERE handler = %s AND topic = %s AND partition = %s "
                    "AND key = %s ORDER BY kafka_offset"
                ),
                (handler, topic, partition, key),
            ).fetchall()
        return [_parked(row) for row in rows]

    def remove(self, connection: psycopg.Connection, parked_id: int) -> None:
        connection.execute(self._sql("DELETE FROM {t} WHERE id = %s"), (parked_id,))

    def hold(
        self, connection: psycopg.Connection, handler: str, topic: str, partition: int, key: bytes
    ) -> None:
        """The key failed again: its events wait for the next release."""
        connection.execute(
            self._sql(
                "UPDATE {t} SET released = false "
                "WHERE handler = %s AND topic = %s AND partition = %s AND key = %s"
            ),
            (handler, topic, partition, key),
        )

    # --- the operator's side -----------------------------------------------------------------------

    def list(self, handler: str | None = None, limit: int = 1000) -> builtins.list[ParkedEvent]:
        with self.store.connection() as conn:
            rows = conn.execute(
                self._sql(
                    "SELECT {columns} FROM {t} WHERE %(handler)s::text IS NULL OR handler = %(handler)s "
                    "ORDER BY handler, topic, partition, kafka_offset LIMIT %(limit)s"
                ),
                {"handler": handler, "limit": limit},
            ).fetchall()
        return [_parked(row) for row in rows]

    def release(self, handler: str, key: bytes | None = None) -> int:
        """Hand the parked events of ``key`` (or of every key) back to the handler; returns how many."""
        with self.store.connection() as conn:
            cursor = conn.execute(
                self._sql(
                    "UPDATE {t} SET released = true WHERE handler = %(handler)s "
                    "AND (%(key)s::bytea IS NULL OR key = %(key)s)"
                ),
                {"handler": handler, "key": key},
            )
            return cursor.rowcount

    def discard(
        self,
        handler: str,
        key: bytes | None = None,
        ids: builtins.list[int] | None = None,
        connection: psycopg.Connection | None = None,
    ) -> int:
        """Delete parked events of ``key``, or those with the given ids, or all of the handler's.

        With ``connection`` the deletion is part of the caller's transaction (a reset's).
        """
        if connection is None:
            with self.store.connection() as conn:
                return self.discard(handler, key, ids, conn)
        cursor = connection.execute(
            self._sql(
                "DELETE FROM {t} WHERE handler = %(handler)s "
                "AND (%(key)s::bytea IS NULL OR key = %(key)s) "
                "AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s))"
            ),
            {"handler": handler, "key": key, "ids": ids},
        )
        return cursor.rowcount

    def count(self, handler: str) -> int:
        with self.store.connection() as conn:
            row = conn.execute(
                self._sql("SELECT count(*) FROM {t} WHERE handler = %s"), (handler,)
            ).fetchone()
        return int(row[0]) if row else 0


def _parked(row: tuple) -> ParkedEvent:  # type: ignore[type-arg]
    (
        pid,
        handler,
        topic,
        partition,
        offset,
        key,
        number,
        stream,
        etype,
        error,
        released,
        at,
        value,
        names,
        values,
    ) = row
    delivery = delivery_of(
        topic, partition, offset, bytes(key), bytes(value), list(zip(names, values, strict=True))
    )
    return ParkedEvent(
        pid,
        handler,
        topic,
        partition,
        offset,
        bytes(key),
        number,
        stream,
        etype,
        error,
        released,
        at,
        delivery,
    )
