"""Statements cancelled when their caller's deadline passes.

A dispatch has a timeout; its append may be waiting for another writer's row lock when the timeout
comes. ``statement_timeout`` cannot say "until 12:00:00.300" for a single autocommit statement without a
second round trip, so a watchdog thread sends PostgreSQL a cancel request for each watched statement
still running past its deadline. A cancelled statement rolls back whole, so its caller learns one of two
things: it committed before the cancel arrived, or nothing of it was written.

A cancel request travels on its own connection and may reach the server after the statement ended; a
session that had a cancel sent is therefore never lent again (``Watch.cancelled``), so the late request
cannot hit another caller's statement.

The watchdog wakes every ``TICK`` seconds while it watches anything and sleeps otherwise; watching and
unwatching take a lock and never wake it, which keeps an append's cost to about a microsecond.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

import psycopg

__all__ = ["Deadlines", "Watch"]

log = logging.getLogger(__name__)

TICK = 0.02
"""Seconds between the watchdog's looks: how late past its deadline a statement may be cancelled."""


class Watch:
    """One statement being watched."""

    __slots__ = ("cancelled", "conn", "deadline")

    def __init__(self, conn: psycopg.Connection[Any], deadline: float) -> None:
        self.conn = conn
        self.deadline = deadline
        self.cancelled = False


class Deadlines:
    """Cancels watched statements still running at their deadline (``time.monotonic()`` seconds)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: set[Watch] = set()
        self._some = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None

    def watch(self, conn: psycopg.Connection[Any], deadline: float) -> Watch:
        watch = Watch(conn, deadline)
        with self._lock:
            self._watched.add(watch)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="tidings-deadlines", daemon=True)
                self._thread.start()
        if not self._some.is_set():
            self._some.set()
        return watch

    def unwatch(self, watch: Watch) -> bool:
        """Stop watching; return whether a cancel was sent (then the session must not be lent again)."""
        with self._lock:
            self._watched.discard(watch)
            return watch.cancelled

    def stop(self) -> None:
        self._stopped = True
        self._some.set()

    def _run(self) -> None:
        while not self._stopped:
            self._some.wait()
            time.sleep(TICK)
            now = time.monotonic()
            with self._lock:
                if not self._watched:
                    self._some.clear()
                    continue
                # Under the lock, so that no statement is unwatched (and its session lent again)
                # between the decision and the cancel.
                for watch in self._watched:
                    if watch.deadline <= now and not watch.cancelled:
                        watch.cancelled = True
                        with contextlib.suppress(Exception):
                            watch.conn.cancel_safe(timeout=1.0)
                        log.info("a statement was cancelled at its deadline")
