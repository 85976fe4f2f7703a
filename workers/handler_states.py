"""Handlers stopped on their error policy, as the store records them, and restarts an operator asks for.

A handler whose ``error`` answers ``Stop`` (or that fails) stops consuming and keeps its position; the
worker process stays up, so Kubernetes does not restart the pod into the same event in a loop. The
runner records the stop here; ``tidings status`` shows it; ``tidings handler restart NAME`` asks for a
restart, and the worker holding the stopped handler starts it again from the event it stopped at. A run
that begins (a restart, a redeployed worker, a standby taking over) supersedes the stops recorded before
it: ``tidings status`` never shows a stop older than the handler's current run.

Example::

    states = HandlerStates(store)
    states.request_restart("balances")      # False if balances is not stopped
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import datetime

from psycopg import sql

from eventstore import PostgresEventStore

__all__ = ["HandlerStates", "StoppedHandler"]


@dataclass(frozen=True, slots=True)
class StoppedHandler:
    handler: str
    state: str
    """``stopped`` (its error policy answered Stop) or ``failed``."""
    reason: str
    worker: str
    """host:pid of the worker that holds it."""
    event_number: int | None
    stopped_at: datetime
    restart_requested_at: datetime | None


class HandlerStates:
    def __init__(self, store: PostgresEventStore) -> None:
        self.store = store
        self._table = sql.Identifier(store.config.schema, "handler_states")

    def record(self, handler: str, state: str, reason: str, event_number: int | None = None) -> None:
        """Record that ``handler`` stopped (or failed) in this process."""
        statement = sql.SQL(
            "INSERT INTO {} (handler, state, reason, worker, event_number) VALUES (%s, %s, %s, %s, %s) "
            "ON CONFLICT (handler) DO UPDATE SET state = EXCLUDED.state, reason = EXCLUDED.reason, "
            "worker = EXCLUDED.worker, event_number = EXCLUDED.event_number, stopped_at = now(), "
            "restart_requested_at = NULL"
        ).format(self._table)
        worker = f"{socket.gethostname()}:{os.getpid()}"
        with self.store.connection() as conn:
            conn.execute(statement, (handler, state, reason, worker, event_number))

    def request_restart(self, handler: str) -> bool:
        """Ask the worker holding the stopped ``handler`` to start it again; False if it is not stopped."""
        statement = sql.SQL(
            "UPDATE {} SET restart_requested_at = now() WHERE handler = %s RETURNING handler"
        ).format(self._table)
        with self.store.connection() as conn:
            return conn.execute(statement, (handler,)).fetchone() is not None

    def restarts_requested(self, handlers: list[str]) -> list[str]:
        """Which of ``handlers`` an operator asked to restart."""
        statement = sql.SQL(
            "SELECT handler FROM {} WHERE handler = ANY(%s) AND restart_requested_at IS NOT NULL"
        ).format(self._table)
        with self.store.connection() as conn:
            return [row[0] for row in conn.execute(statement, (handlers,))]

    def supersede(self, handler: str) -> int:
        """A run of ``handler`` begins (in this process): forget the stops recorded before it, which are
        over (a redeployed worker runs it again); a stop recorded later, in this run or another process's,
        stays. Returns how many were forgotten."""
        statement = sql.SQL("DELETE FROM {} WHERE handler = %s AND stopped_at < now()").format(self._table)
        with self.store.connection() as conn:
            return conn.execute(statement, (handler,)).rowcount

    def clear(self, handler: str) -> None:
        """The handler runs again: forget that it stopped."""
        with self.store.connection() as conn:
            conn.execute(sql.SQL("DELETE FROM {} WHERE handler = %s").format(self._table), (handler,))

    def stopped(self) -> list[StoppedHandler]:
        statement = sql.SQL(
            "SELECT handler, state, reason, worker, event_number, stopped_at, restart_requested_at "
            "FROM {} ORDER BY handler"
        ).format(self._table)
        with self.store.connection() as conn:
            return [StoppedHandler(*row) for row in conn.execute(statement)]
