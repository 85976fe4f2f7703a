"""One leader among processes: a PostgreSQL session-level advisory lock.

The lock lives as long as the session that took it. A leader killed by ``kill -9`` closes its socket
with it, the server ends the session and frees the lock, and a standby polling ``pg_try_advisory_lock``
takes it within one poll interval. Session-level locks need a session that stays on one server
connection: behind PgBouncer in transaction mode, give the leader a session-mode URL (as Commanded's
``session_mode_url``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from typing import Any

import psycopg

from eventstore.config import redact_url

__all__ = ["Leadership", "lock_key"]

log = logging.getLogger("eventstore.leadership")


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for ``name``."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


class Leadership:
    """Holds (or waits for) the advisory lock named ``name`` on a session of its own.

    Example::

        leadership = Leadership(url, "tidings-relay.bank.default")
        if leadership.try_acquire():
            ...  # lead; call check() now and then
            leadership.release()
    """

    def __init__(self, url: str, name: str, *, connect_timeout: float = 5.0) -> None:
        self.name = name
        self._url = url
        self._key = lock_key(name)
        self._connect_timeout = connect_timeout
        self._conn: psycopg.Connection[Any] | None = None
        self.held = False

    @property
    def connection(self) -> psycopg.Connection[Any]:
        """The session holding the lock (for LISTEN: it stays open as long as the leadership)."""
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(
                self._url,
                autocommit=True,
                connect_timeout=max(1, round(self._connect_timeout)),
                application_name=f"tidings {self.name}"[:63],
            )
        return self._conn

    def try_acquire(self) -> bool:
        """Take the lock if it is free; never waits. False (and logged) when PostgreSQL is unreachable."""
        try:
            row = self.connection.execute("SELECT pg_try_advisory_lock(%s)", (self._key,)).fetchone()
        except psycopg.Error as exc:
            log.warning(
                "cannot reach PostgreSQL to take the leadership",
                extra={"leadership": self.name, "url": redact_url(self._url), "error": str(exc)},
            )
            self._drop()
            return False
        self.held = bool(row and row[0])
        return self.held

    def check(self) -> bool:
        """Whether the lock is still held. It is never unlocked, only lost with its session: so it is
        held exactly as long as the session answers."""
        if not self.held or self._conn is None:
            return False
        try:
            self._conn.execute("SELECT 1")
        except psycopg.Error:
            self._drop()
        return self.held

    def release(self) -> None:
        """Give the lock up (closing the session: whatever state it is in, the lock goes with it)."""
        self._drop()

    def _drop(self) -> None:
        self.held = False
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None
