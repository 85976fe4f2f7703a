"""Statements cancelled when their caller's deadline passes.

A dispatch has a timeout; its append may be waiting for another writer's row lock when the timeout
comes. ``statement_timeout`` cannot say "until 12:00:00.300" for a single autocommit statement without a
second round trip, so a watchdog thread sends PostgreSQL a cancel request for each watched statement
still running past its deadline. A cancelled statement rolls back whole, so its caller learns one of two
things: it committed before the cancel arrived, or nothing of it was written.

A cancel request travels on its own connection and may reach the server after the statement ended; a
session that had a cancel sent is therefore never lent again (``Watch.cancelled``), so the late request
cannot hit another caller's statement.

The watchdog wakes at the next deadline (at most ``TICK`` seconds apart) while it watches anything, and
sleeps otherwise. A cancel is sent ``LEAD`` before the deadline, so that an append cannot commit past it
unless the machine delays the cancel itself by more than that. Watching and
unwatching never wake it and share no lock between appends (a lock of each watch settles a cancel
racing the statement's end), which keeps an append's cost to about a microsecond under many threads.
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
"""The longest the watchdog sleeps while it watches anything (it sleeps less when a deadline is nearer)."""

LEAD = 0.01
"""Cancels are sent this long before the deadline, so that they reach the server by then: a cancel
travels on a new connection, and the watchdog itself may be scheduled late on a busy machine."""


class Watch:
    """One statement being watched."""

    __slots__ = ("cancelled", "conn", "deadline", "ended", "lock")

    def __init__(self, conn: psycopg.Connection[Any], deadline: float) -> None:
        self.conn = conn
        self.deadline = deadline
        self.cancelled = False
        self.ended = False
        self.lock = threading.Lock()


class Deadlines:
    """Cancels watched statements still running at their deadline (``time.monotonic()`` seconds)."""

    def __init__(self) -> None:
        self._watched: dict[int, Watch] = {}
        self._some = threading.Event()
        self._stopped = False
        self._start = threading.Lock()
        self._thread: threading.Thread | None = None

    def watch(self, conn: psycopg.Connection[Any], deadline: float) -> Watch:
        watch = Watch(conn, deadline)
        self._watched[id(watch)] = watch  # one dict operation: atomic, no lock needed
        if self._thread is None:
            with self._start:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="tidings-deadlines", daemon=True)
                    self._thread.start()
        if not self._some.is_set():
            self._some.set()
        return watch

    def unwatch(self, watch: Watch) -> bool:
        """Stop watching; return whether a cancel was sent (then the session must not be lent again).

        Safe to call twice."""
        self._watched.pop(id(watch), None)
        with watch.lock:
            # After this, the watchdog sends no cancel for it: the session may be lent again.
            watch.ended = True
            return watch.cancelled

    def stop(self) -> None:
        self._stopped = True
        self._some.set()

    def _run(self) -> None:
        while not self._stopped:
            self._some.wait()
            watched = self._watched.copy()
            if not watched:
                self._some.clear()
                if self._watched:  # one came between the look and the clear
                    self._some.set()
                continue
            now = time.monotonic()
            due = min(watch.deadline for watch in watched.values()) - LEAD
            if due > now:
                time.sleep(min(TICK, due - now))
                continue
            for watch in watched.values():
                if watch.deadline - LEAD > now or watch.cancelled:
                    continue
                with watch.lock:
                    # Under its lock, so that the statement cannot end and its session be lent again
                    # between the decision and the cancel.
                    if watch.ended:
                        continue
                    watch.cancelled = True
                    with contextlib.suppress(Exception):
                        watch.conn.cancel_safe(timeout=1.0)
                log.info("a statement was cancelled at its deadline")
            time.sleep(0.001)  # the cancelled statements end and are unwatched
