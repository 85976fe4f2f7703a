"""One leader among processes: a PostgreSQL session-level advisory lock.

The lock lives as long as the session that took it. A leader killed by ``kill -9`` closes its socket
with it, the server ends the session and frees the lock, and a standby polling ``pg_try_advisory_lock``
takes it within one poll interval.

A leader is the session holding the lock, nothing less: ``check()`` asks PostgreSQL, on that very
session, whether it still holds the lock (``pg_locks``), and a leadership never opens a session while it
leads. When the session ends under it (``pg_terminate_backend``, a pooler, a cut connection) or the lock
is gone, ``held`` turns False and the caller steps down; only ``try_acquire()`` leads again, on a new
session that takes the lock first. (A session quietly reopened after a cut would answer any query while
holding nothing, and a second leader would take the freed lock beside it.)

Session-level locks need a session that stays on one server connection: behind PgBouncer in
transaction mode, leaderships take their lock through a session-mode URL, the store's ``leader_url``
(``StoreConfig.leadership_url``; Commanded's ``session_mode_url``). Every leadership of the project goes
through it: relays, repartitioning relays and global-order handlers.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from eventstore.config import redact_url
from eventstore.errors import LeadershipLost

__all__ = ["Contender", "Leadership", "application_name", "contenders", "lock_key"]

log = logging.getLogger("eventstore.leadership")

# Whether this session holds the advisory lock: a bigint key shows in pg_locks as its two 32-bit halves,
# and advisory locks belong to a database.
_HOLDS = """
SELECT EXISTS (
    SELECT FROM pg_locks
    WHERE locktype = 'advisory' AND granted AND objsubid = 1 AND pid = pg_backend_pid()
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND classid::bigint = %s AND objid::bigint = %s
)
"""


# PostgreSQL keeps 63 bytes of an application_name (NAMEDATALEN - 1) and turns non-ASCII into escapes.
_APPLICATION_NAME_BYTES = 63

# The sessions of this database that hold leadership name's lock or carry its application_name (a standby
# between two tries keeps its session open, holding nothing). A bigint key shows as its two halves.
_CONTENDERS = """
WITH here AS (SELECT oid FROM pg_database WHERE datname = current_database()),
holding AS (
    SELECT l.pid FROM pg_locks l, here
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 AND l.database = here.oid
      AND l.classid::bigint = %(high)s AND l.objid::bigint = %(low)s
)
SELECT a.pid, coalesce(host(a.client_addr), 'local'), a.backend_start, a.pid IN (SELECT pid FROM holding)
FROM pg_stat_activity a, here
WHERE a.datid = here.oid AND (a.application_name = %(application)s OR a.pid IN (SELECT pid FROM holding))
ORDER BY 4 DESC, a.pid
"""


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for ``name``."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


def _halves(key: int) -> tuple[int, int]:
    unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
    return unsigned >> 32, unsigned & 0xFFFF_FFFF


def application_name(name: str) -> str:
    """The ``application_name`` of leadership ``name``'s sessions (the leader's and its standbys').

    ``tidings <name>`` when PostgreSQL keeps it whole; a longer one is cut and ends with the lock's key,
    so that ``contenders`` tells two long names with one beginning apart.
    """
    whole = f"tidings {name}"
    if len(whole) <= _APPLICATION_NAME_BYTES and whole.isascii() and whole.isprintable():
        return whole
    suffix = f"~{lock_key(name) & 0xFFFF_FFFF_FFFF_FFFF:016x}"
    readable = "".join(c if c.isascii() and c.isprintable() else "?" for c in whole)
    return readable[: _APPLICATION_NAME_BYTES - len(suffix)] + suffix


@dataclass(frozen=True, slots=True)
class Contender:
    """A session of leadership ``name``: the one holding its lock, or a standby's waiting to take it."""

    pid: int
    client: str
    """The client's address (``local`` over a Unix socket; ``?`` when the role may not see it)."""
    since: datetime | None
    """When the session began (None when the role may not see it)."""
    holds: bool

    def __str__(self) -> str:
        return f"{self.client} pid {self.pid}"


def contenders(conn: psycopg.Connection[Any], name: str) -> list[Contender]:
    """Read only: the sessions of this database holding leadership ``name``'s lock (the leader: first,
    if any) or standing by for it (a ``Leadership`` that tried and keeps its session), as PostgreSQL
    shows them in ``pg_locks`` and ``pg_stat_activity``.

    ``conn`` may be any session of the database (the lock's ``leader_url`` may be another address of it).
    """
    high, low = _halves(lock_key(name))
    rows = conn.execute(
        _CONTENDERS, {"high": high, "low": low, "application": application_name(name)}
    ).fetchall()
    return [Contender(int(pid), client or "?", since, bool(holds)) for pid, client, since, holds in rows]


class Leadership:
    """Holds (or waits for) the advisory lock named ``name`` on a session of its own.

    Example::

        leadership = Leadership(store.config.leadership_url, "tidings-relay.bank.default")
        if leadership.try_acquire():
            while leadership.check():  # now and then: False means step down at once
                ...
            leadership.release()
    """

    def __init__(self, url: str, name: str, *, connect_timeout: float = 5.0) -> None:
        self.name = name
        self._url = url
        self._key = lock_key(name)
        self._halves = _halves(self._key)
        self._connect_timeout = connect_timeout
        self._conn: psycopg.Connection[Any] | None = None
        self.held = False
        self.pid: int | None = None
        """The server process of the session holding the lock (None while not held)."""

    def try_acquire(self) -> bool:
        """Take the lock if it is free; never waits. False (and logged) when PostgreSQL is unreachable.

        While held, it only confirms the lock (``check()``).
        """
        if self.held:
            return self.check()
        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(
                    self._url,
                    autocommit=True,
                    connect_timeout=max(1, round(self._connect_timeout)),
                    # Tells the leader's and the standbys' sessions apart from any other (contenders).
                    application_name=application_name(self.name),
                )
            row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (self._key,)).fetchone()
        except psycopg.Error as exc:
            log.warning(
                "cannot reach PostgreSQL to take the leadership",
                extra={"leadership": self.name, "url": redact_url(self._url), "error": str(exc)},
            )
            self._drop()
            return False
        self.held = bool(row and row[0])
        self.pid = self._conn.info.backend_pid if self.held else None
        return self.held

    def check(self) -> bool:
        """Whether the lock is still held: asked of PostgreSQL on the session that took it. A session that
        no longer answers, or answers without the lock, loses the leadership (``held`` turns False)."""
        if not self.held or self._conn is None:
            return False
        try:
            row = self._conn.execute(_HOLDS, self._halves).fetchone()
        except psycopg.Error as exc:
            self._lose("its session ended", exc)
            return False
        if not (row and row[0]):
            self._lose("its session no longer holds the lock")
        return self.held

    def listen(self, channel: str) -> None:
        """``LISTEN`` on the lock's session, whose notifications then end ``wait()``.

        Raises:
            LeadershipLost: the lock is not held, or its session ended.
        """
        if not self.held or self._conn is None:
            raise LeadershipLost(self.name)
        try:
            self._conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        except psycopg.Error as exc:
            self._lose("its session ended", exc)
            raise LeadershipLost(self.name) from exc

    def wait(self, timeout: float) -> bool:
        """Until a notification arrives on the lock's session (see ``listen``), or ``timeout`` seconds pass.

        Returns whether the leadership still holds: a session that ended while waiting loses it, and no
        other session is opened in its place.
        """
        if not self.held or self._conn is None:
            return False
        try:
            for _ in self._conn.notifies(timeout=timeout, stop_after=1):
                pass
        except psycopg.Error as exc:
            self._lose("its session ended", exc)
            return False
        if self._conn.closed or self._conn.broken:
            self._lose("its session ended")
        return self.held

    def release(self) -> None:
        """Give the lock up (closing the session: whatever state it is in, the lock goes with it)."""
        self._drop()

    def _lose(self, why: str, error: Exception | None = None) -> None:
        log.warning(
            f"leadership lost: {why}",
            extra={"leadership": self.name, "pid": self.pid, "error": str(error) if error else None},
        )
        self._drop()

    def _drop(self) -> None:
        self.held = False
        self.pid = None
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None
