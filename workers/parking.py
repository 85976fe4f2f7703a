"""Parked events: what a handler gave up on, and every later event of the same key, held in order.

Parking keeps a key's order: once one of its events is parked, the key's later events are parked behind
it instead of being handled, while other keys go on. ``tidings parked retry`` releases a key: the
worker owning its partition hands its parked events back to the handler, oldest first, and the key runs
live again once none is left. ``tidings parked discard`` deletes them (the handler never sees them).

Rows keep the whole message (key, value, headers), so a retry needs nothing from Kafka. A row is unique
per (handler, topic, partition, offset, message digest): a redelivered message is parked once, and a
different message at an offset already used (a topic deleted and made again starts its offsets over) is
parked as well. A key's events are kept, and handed back, in the order they were parked.

A released key is retried by one process at a time (``draining``), so that a member that lost the
partition without noticing yet does not apply its events a second time. Each event's row is its fence
against a discard meanwhile: a projection locks the row first, in the transaction of its writes, and
deletes it there (a discard waits, then finds nothing; a row already gone applies nothing); a plain
handler, whose effects are its own, reports a row discarded while it ran.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg import sql

from eventstore.postgres.store import PostgresEventStore
from workers.delivery import Delivery, delivery_of
from workers.identity import FOREIGN

__all__ = ["BEHIND", "ParkedEvent", "ParkedEvents", "message_digest", "orphaned"]

BEHIND = "behind an earlier parked event of its key"
"""The reason of an event parked only to keep its key's order (it failed nothing itself)."""


def message_digest(key: bytes, value: bytes, headers: Sequence[tuple[str, bytes | None]]) -> bytes:
    """SHA-256 of a message: each part length-prefixed, so that no two messages share an encoding.

    Migration 0009 computes the same in SQL for rows parked before the digest existed.
    """
    digest = hashlib.sha256()
    for part in (key, value):
        digest.update(len(part).to_bytes(4, "big", signed=True) + part)
    for name, raw in headers:
        encoded, data = name.encode(), raw or b""
        digest.update(len(encoded).to_bytes(4, "big", signed=True) + encoded)
        digest.update(len(data).to_bytes(4, "big", signed=True) + data)
    return digest.digest()


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
                "event_type, value, header_names, header_values, error, message_digest) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (handler, topic, partition, kafka_offset, message_digest) DO NOTHING"
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
                message_digest(delivery.key, delivery.value, delivery.headers),
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
        """Per partition, each parked key and whether it is to be handed back: an operator released it,
        or nothing holds it any more (its first event of the store is one parked only ``BEHIND``
        another, which a discard took away)."""
        with self.store.connection() as conn:
            rows = conn.execute(
                self._sql(
                    "SELECT topic, partition, key, bool_or(released) OR coalesce("
                    "(array_agg(error ORDER BY id) FILTER (WHERE left(error, %(foreign_length)s) <> "
                    "%(foreign)s))[1] = %(behind)s, false) "
                    "FROM {t} WHERE handler = %(handler)s GROUP BY topic, partition, key"
                ),
                {"handler": handler, "foreign": FOREIGN, "foreign_length": len(FOREIGN), "behind": BEHIND},
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
                    "AND key = %s ORDER BY id"
                ),
                (handler, topic, partition, key),
            ).fetchall()
        return [_parked(row) for row in rows]

    def lock(self, connection: psycopg.Connection, parked_id: int) -> bool:
        """Lock a parked event's row until the caller's transaction ends; False: it is gone (handled by
        another member, or discarded). Waits while another transaction holds it."""
        found = connection.execute(
            self._sql("SELECT id FROM {t} WHERE id = %s FOR UPDATE"), (parked_id,)
        ).fetchone()
        return found is not None

    @contextlib.contextmanager
    def draining(self, handler: str, topic: str, partition: int, key: bytes) -> Iterator[bool]:
        """Whether this process may retry a key's parked events now: True for one process at a time.

        A session advisory lock, on a connection of its own outside any transaction (it holds back no
        horizon), through the store's session-mode URL: a process that dies lets go with its session,
        so a crashed retry never keeps a key from its next owner.
        """
        name = f"tidings.parked/{self.store.config.schema}/{handler}/{topic}/{partition}/{key.hex()}"
        with psycopg.connect(self.store.config.leadership_url, autocommit=True) as conn:
            row = conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (name,)).fetchone()
            held = bool(row and row[0])
            yield held
            # Closing the session would let go too; said explicitly for a pooled or proxied session.
            if held:
                conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (name,))

    def remove(self, connection: psycopg.Connection, parked_id: int) -> bool:
        """Delete a handled parked event; False: it was already gone."""
        cursor = connection.execute(self._sql("DELETE FROM {t} WHERE id = %s"), (parked_id,))
        return cursor.rowcount == 1

    def parked_again(self, connection: psycopg.Connection, parked_id: int, error: str) -> None:
        """A released event failed again: its row says why now (and holds its key, if it was ``BEHIND``)."""
        connection.execute(self._sql("UPDATE {t} SET error = %s WHERE id = %s"), (error, parked_id))

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
                    "ORDER BY handler, topic, partition, id LIMIT %(limit)s"
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


def orphaned(events: Sequence[ParkedEvent]) -> bool:
    """Whether a key's parked events (oldest first) are held by nothing: the first of them that is an
    event of the store was parked only ``BEHIND`` another, and that one is gone (discarded while the
    lane parked more behind it). Such a key is handed back as if released: discarding what held a key
    lets the events behind it go on, in order."""
    first = next((event for event in events if not event.error.startswith(FOREIGN)), None)
    return first is not None and first.error == BEHIND


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
