"""A small pool of the store's PostgreSQL sessions, each kept with a cursor for reuse.

The store's statements are short and autocommit, so a session only needs lending and taking back: no
reset between users, no background maintenance. Keeping to that lets the hot path (an append) cost one
uncontended lock acquisition and no per-call cursor, which under many writer threads is worth about as
much as the stream check itself (docs/decisions/0003-session-pool.md has the measurements).

Sessions are lent last-in first-out, so a quiet store keeps using the same few and the rest age out
after ``max_idle`` seconds. A session found broken or inside a transaction when it comes back is closed
(or rolled back) rather than lent again.

Create the pool after forking: sessions are not shared across processes.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import TransactionStatus

from eventstore.config import redact_url
from eventstore.errors import PoolExhausted, StoreUnavailable

__all__ = ["Session", "SessionPool", "waiting_until"]

_wait_until: contextvars.ContextVar[float | None] = contextvars.ContextVar("tidings_wait_until", default=None)


@contextlib.contextmanager
def waiting_until(deadline: float) -> Iterator[None]:
    """Within the block, no wait for a session lasts past ``deadline`` (``time.monotonic()``): a caller
    with a deadline of its own (a dispatch's timeout) is never held by the pool's longer timeout."""
    token = _wait_until.set(deadline)
    try:
        yield
    finally:
        _wait_until.reset(token)


Connection = psycopg.Connection[Any]


class Session:
    """A pooled connection and the cursor reused for its statements."""

    __slots__ = ("conn", "cursor", "returned_at")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.cursor = conn.cursor()
        self.returned_at = 0.0


class SessionPool:
    """Up to ``max_size`` autocommit sessions to ``conninfo``, opened on demand.

    Example::

        pool = SessionPool(url, max_size=10, options="-c statement_timeout=30000")
        session = pool.acquire()
        try:
            session.cursor.execute("SELECT 1")
        finally:
            pool.release(session)
        pool.close()
    """

    def __init__(
        self,
        conninfo: str,
        *,
        max_size: int,
        options: str = "",
        timeout: float = 30.0,
        max_idle: float = 600.0,
    ) -> None:
        # An unreachable host should fail within the pool's timeout, not libpq's default of never.
        given = conninfo_to_dict(conninfo).get("connect_timeout")
        self._target = conninfo if given else make_conninfo(conninfo, connect_timeout=max(1, int(timeout)))
        self._conninfo = conninfo
        self._options = options
        self._max_size = max_size
        self._timeout = timeout
        self._max_idle = max_idle
        self._idle: deque[Session] = deque()
        self._size = 0  # sessions open or being opened
        self._waiters = 0
        self._lock = threading.Lock()
        self._returned = threading.Condition(self._lock)
        self._closed = False

    def open(self) -> None:
        """Open one session now, so that an unreachable server shows at start-up.

        Raises:
            StoreUnavailable: PostgreSQL cannot be reached.
        """
        self.release(self.acquire())

    def acquire(self, timeout: float | None = None) -> Session:
        """Lend a session, opening one if none is idle and the pool has room, else wait for one.

        Raises:
            PoolExhausted: no session came back within ``timeout`` (the pool's timeout when None).
            StoreUnavailable: a new session could not be opened, or the pool is closed.
        """
        stale = None
        with self._lock:
            if self._idle:
                session: Session | None = self._idle.pop()
                if self._idle and time.monotonic() - self._idle[0].returned_at > self._max_idle:
                    # The oldest idle session has not been needed for a while: one fewer to keep.
                    stale = self._idle.popleft()
                    self._size -= 1
            else:
                wait = self._timeout if timeout is None else timeout
                until = _wait_until.get()
                if until is not None:
                    wait = min(wait, max(0.0, until - time.monotonic()))
                session = self._take_or_reserve(wait)
        if stale is not None:
            with contextlib.suppress(psycopg.Error):
                stale.conn.close()
        return session if session is not None else self._open_session()

    def release(self, session: Session) -> None:
        """Take a session back; a broken one, or one left inside a transaction, is not lent again."""
        conn = session.conn
        status = conn.pgconn.transaction_status
        if status != TransactionStatus.IDLE and not conn.closed:
            with contextlib.suppress(psycopg.Error):
                conn.rollback()
            status = conn.pgconn.transaction_status
        if status != TransactionStatus.IDLE or conn.closed or self._closed:
            self._discard(session)
            return
        session.returned_at = time.monotonic()
        with self._lock:
            self._idle.append(session)
            if self._waiters:
                self._returned.notify()

    def discard(self, session: Session) -> None:
        """Close a lent session instead of taking it back."""
        self._discard(session)

    @contextlib.contextmanager
    def connection(self) -> Iterator[Connection]:
        """A session's connection for the length of the block."""
        session = self.acquire()
        try:
            yield session.conn
        finally:
            self.release(session)

    def close(self) -> None:
        """Close the idle sessions now and every lent one when it comes back."""
        with self._lock:
            self._closed = True
            idle, self._idle = list(self._idle), deque()
            self._returned.notify_all()
        for session in idle:
            self._discard(session)

    # --- inside the lock ------------------------------------------------------------------------------

    def _take_or_reserve(self, timeout: float) -> Session | None:
        """Return an idle session after waiting, or None with a place reserved for a new one."""
        deadline = time.monotonic() + timeout
        while True:
            if self._closed:
                raise StoreUnavailable("the event store is closed")
            if self._idle:
                return self._idle.pop()
            if self._size < self._max_size:
                self._size += 1
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PoolExhausted(
                    f"all {self._max_size} sessions of the event store stayed busy for {timeout:.1f}s: "
                    "raise StoreConfig.pool_size, or look for long statements and transactions"
                )
            self._waiters += 1
            try:
                self._returned.wait(remaining)
            finally:
                self._waiters -= 1

    # --- outside the lock -----------------------------------------------------------------------------

    def _open_session(self) -> Session:
        try:
            conn = psycopg.connect(
                self._conninfo,
                autocommit=True,
                options=self._options,
            )
        except psycopg.Error as exc:
            self._discard(None)
            raise StoreUnavailable(f"cannot connect to {redact_url(self._conninfo)}: {exc}") from exc
        return Session(conn)

    def _discard(self, session: Session | None) -> None:
        if session is not None:
            with contextlib.suppress(psycopg.Error):
                session.conn.close()
        with self._lock:
            self._size -= 1
            if self._waiters:
                self._returned.notify()
