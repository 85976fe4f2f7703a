"""Where each handler starts and where each projection is, kept in the store's schema.

- The subscription row fixes ``start_from`` the first time a handler starts: ``"current"`` becomes the
  store's last event_number at that moment, so restarts and new partitions never move it.
  A different ``start_from`` later is not applied: in the class it is logged; given at start
  (``--set NAME.start_from=...``, ``configured(start_from=...)``) it is refused with ``StartFromFixed``,
  which says to reset the handler or drop the option, since the operator asked for it explicitly.
- A projection's checkpoint per (topic, partition) is written by ``save_checkpoint`` on the projection's
  own connection, inside the transaction of its read-model writes: both commit, or neither does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import psycopg
from psycopg import sql

from eventstore.errors import ConfigurationError
from eventstore.postgres.store import PostgresEventStore

__all__ = ["Checkpoint", "Positions", "StartFromFixed", "Subscription"]

log = logging.getLogger("workers.positions")


@dataclass(frozen=True, slots=True)
class Subscription:
    handler: str
    start_from: str
    start_after: int
    """Events numbered at or below this are not the handler's (its ``start_from``)."""


class StartFromFixed(ConfigurationError):
    """A ``start_from`` given at start differs from the one the handler's first start fixed.

    The handler does not run (it would not start where it was asked to); the message says how to
    apply it (``tidings reset``) or to drop it.
    """

    def __init__(self, handler: str, given: str, found: Subscription) -> None:
        super().__init__(
            f"handler {handler!r} was given start_from={given} at start, but its first start fixed "
            f"start_from={found.start_from} (events after {found.start_after}) and start_from applies "
            f"only to a first start. To start it over from {given}: stop its workers, run "
            f"`tidings reset {handler} --app APP`, then start it with the option; else drop "
            f"--set {handler}.start_from (or configured(start_from=...))"
        )
        self.handler = handler
        self.given = given
        self.found = found


@dataclass(frozen=True, slots=True)
class Checkpoint:
    next_offset: int
    event_number: int


class Positions:
    """The positions of the handlers of one store."""

    def __init__(self, store: PostgresEventStore) -> None:
        self.store = store
        schema = store.config.schema
        self._schema = schema
        subscriptions = sql.Identifier(schema, "handler_subscriptions")
        checkpoints = sql.Identifier(schema, "handler_checkpoints")
        self._subscribe = sql.SQL(
            "INSERT INTO {} (handler, start_from, start_after) VALUES (%s, %s, %s) "
            "ON CONFLICT (handler) DO NOTHING"
        ).format(subscriptions)
        self._subscription = sql.SQL(
            "SELECT handler, start_from, start_after FROM {} WHERE handler = %s"
        ).format(subscriptions)
        self._unsubscribe = sql.SQL("DELETE FROM {} WHERE handler = %s").format(subscriptions)
        self._checkpoints = sql.SQL(
            "SELECT topic, partition, next_offset, event_number FROM {} "
            "WHERE handler = %s AND topic = ANY(%s)"
        ).format(checkpoints)
        self._save = sql.SQL(
            "INSERT INTO {t} (handler, topic, partition, next_offset, event_number) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (handler, topic, partition) DO UPDATE SET "
            "next_offset = excluded.next_offset, event_number = excluded.event_number, updated_at = now()"
        ).format(t=checkpoints)
        self._forget = sql.SQL("DELETE FROM {} WHERE handler = %s").format(checkpoints)
        self._one = sql.SQL(
            "SELECT next_offset, event_number FROM {} WHERE handler = %s AND topic = %s AND partition = %s"
        ).format(checkpoints)

    def subscribe(self, handler: str, start_from: str | int, *, given_at_start: bool = False) -> Subscription:
        """The handler's subscription, created from ``start_from`` if this is its first start.

        Raises:
            StartFromFixed: ``start_from`` was ``given_at_start`` and differs from the one in effect.
        """
        with self.store.connection() as conn:
            existing = conn.execute(self._subscription, (handler,)).fetchone()
            if existing is None:
                after = self._resolve(start_from)
                conn.execute(self._subscribe, (handler, str(start_from), after))
                existing = conn.execute(self._subscription, (handler,)).fetchone()
        assert existing is not None
        found = Subscription(existing[0], existing[1], existing[2])
        if found.start_from != str(start_from) and given_at_start:
            raise StartFromFixed(handler, str(start_from), found)
        if found.start_from != str(start_from):
            log.warning(
                "start_from applies only when a handler first starts; reset it to apply the new one",
                extra={"handler": handler, "configured": str(start_from), "in_effect": found.start_from},
            )
        return found

    def unsubscribe(self, handler: str, connection: psycopg.Connection | None = None) -> None:
        """Forget where the handler starts and every checkpoint it has (for a reset)."""
        if connection is not None:
            connection.execute(self._unsubscribe, (handler,))
            connection.execute(self._forget, (handler,))
            return
        with self.store.connection() as conn:
            self.unsubscribe(handler, conn)

    def _resolve(self, start_from: str | int) -> int:
        if start_from == "origin":
            return 0
        if start_from == "current":
            return self.store.last_event_number()
        return int(start_from)

    def checkpoints(self, handler: str, topics: list[str]) -> dict[tuple[str, int], Checkpoint]:
        with self.store.connection() as conn:
            rows = conn.execute(self._checkpoints, (handler, topics)).fetchall()
        return {(topic, partition): Checkpoint(offset, number) for topic, partition, offset, number in rows}

    def lock_checkpoint(
        self, connection: psycopg.Connection, handler: str, topic: str, partition: int
    ) -> Checkpoint | None:
        """The partition's checkpoint, with a transaction-scoped lock that makes other writers of it wait.

        An advisory lock rather than ``FOR UPDATE``: it holds before the partition has a row.
        """
        connection.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
            (f"{self._schema}/{handler}/{topic}/{partition}",),
        )
        row = connection.execute(self._one, (handler, topic, partition)).fetchone()
        return Checkpoint(row[0], row[1]) if row else None

    def save_checkpoint(
        self, connection: psycopg.Connection, handler: str, topic: str, partition: int, checkpoint: Checkpoint
    ) -> None:
        connection.execute(
            self._save, (handler, topic, partition, checkpoint.next_offset, checkpoint.event_number)
        )
