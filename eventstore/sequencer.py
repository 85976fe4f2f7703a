"""The sequencer: gives committed events their gapless, commit-safe ``event_number``.

Writers never touch the global order; they stamp each event with their transaction id. The sequencer
numbers events in (xid, id) order, but only those whose transaction id lies below the oldest transaction
still running anywhere in the cluster (``pg_snapshot_xmin``): every such transaction has finished, so no
event can later commit in front of a number already handed out. A reader that has seen event N can never
miss an event numbered below N. (docs/decisions/0002-global-order.md)

Any number of processes may run a sequencer: each batch takes the sequencer's cursor row with
``FOR UPDATE SKIP LOCKED``, so one batch runs at a time and the others move on. No lock is held by
writers, and no session-level lock is needed, so transaction-mode poolers are fine.

A long or idle writing transaction anywhere in the cluster holds the horizon back: events committed
after it wait. The store bounds its own sessions (``idle_in_transaction_session_timeout``) and the wait
is visible as ``tidings_sequencer_lag_seconds`` and ``tidings_sequencer_stalled`` and in a log line that
names the backend holding the horizon.

A store moved to another cluster whose transaction ids are lower (dump/restore, logical replication)
stops numbering for another reason: its stored ids lie above the new cluster's. The sequencer finds this
out at start-up (``check``, which raises StoreMoved) and while running (``tidings_sequencer_moved``, a
log line naming the command that re-bases: eventstore/rebase.py).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import psycopg

from eventstore import metrics
from eventstore.errors import StoreMoved, StoreUnavailable
from eventstore.postgres.pool import SessionPool
from eventstore.postgres.statements import Statements, notification_channel
from eventstore.rebase import moved

__all__ = ["Sequencer", "SequencerStatus"]

log = logging.getLogger("eventstore.sequencer")

# Events wait briefly behind writers in flight all the time; waiting longer than this is a stall.
STALLED_AFTER_SECONDS = 1.0
# Metrics are refreshed at least this often while batches keep numbering events.
LOOK_EVERY_SECONDS = 1.0

_BLOCKER = """
SELECT pid, datname, usename, state, extract(epoch FROM now() - xact_start), left(query, 200)
FROM pg_stat_activity
WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()
ORDER BY age(backend_xid) DESC
LIMIT 1
"""


@dataclass(frozen=True, slots=True)
class SequencerStatus:
    """What the sequencer saw after its last batch."""

    last_event_number: int
    waiting: int
    lag_seconds: float
    stalled: bool
    moved: bool = False
    """The store holds another cluster's transaction ids: nothing is numbered until it is re-based."""


class Sequencer:
    """Numbers committed events in batches, in a background thread or one step at a time.

    Example::

        sequencer = Sequencer(pool, Statements.for_schema("bank"), "bank")
        sequencer.start()      # background thread; wake() after appends for low latency
        ...
        sequencer.stop()
    """

    def __init__(
        self,
        pool: SessionPool,
        statements: Statements,
        schema: str,
        *,
        batch_size: int = 5000,
        poll_interval: float = 0.05,
        linger: float = 0.002,
    ) -> None:
        self._pool = pool
        self._sql = statements
        self._schema = schema
        self._channel = notification_channel(schema)
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._linger = linger
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._stall_logged = False
        self._moved_logged = False
        self.status = SequencerStatus(0, 0, 0.0, False)

    def check(self) -> None:
        """Refuse a store moved from another cluster, before numbering anything.

        Raises:
            StoreMoved: the store holds transaction ids of another cluster; the message names the command.
        """
        try:
            with self._pool.connection() as conn:
                was_moved = moved(conn, self._schema)
        except psycopg.errors.UndefinedTable:
            return  # not migrated yet: nothing to number, and `tidings migrate` re-bases if need be
        metrics.SEQUENCER_MOVED.labels(self._schema).set(1 if was_moved else 0)
        if was_moved:
            raise StoreMoved(self._schema)

    def step(self) -> int:
        """Number one batch of committed events; return how many were numbered."""
        with self._pool.connection() as conn:
            params = {"batch_size": self._batch_size, "channel": self._channel}
            row = conn.execute(self._sql.sequence, params).fetchone()
        if row is None:
            return 0
        numbered = int(row[1])
        metrics.NUMBERED.labels(self._schema).inc(numbered)
        self.status = SequencerStatus(int(row[0]), self.status.waiting, self.status.lag_seconds, False)
        return numbered

    def look(self) -> SequencerStatus:
        """Look at what waits for a number: update the status and metrics, log a stall once."""
        with self._pool.connection() as conn:
            row = conn.execute(self._sql.waiting).fetchone()
            assert row is not None, "the sequencer row is missing: run `tidings migrate`"
            waiting, held_back, held_lag = int(row[0]), int(row[1]), float(row[2] or 0.0)
            lag, last, was_moved = float(row[3] or 0.0), int(row[4]), bool(row[5])
            # A stall is a transaction holding the horizon over committed events for too long; events
            # that are numberable but not yet numbered only mean the sequencer is busy.
            stalled = held_back > 0 and held_lag > STALLED_AFTER_SECONDS
            self.status = SequencerStatus(last, waiting, lag, stalled or was_moved, was_moved)
            self._report(conn, waiting, lag, stalled, was_moved)
        return self.status

    def _report(
        self, conn: psycopg.Connection[Any], waiting: int, lag: float, stalled: bool, was_moved: bool
    ) -> None:
        metrics.SEQUENCER_WAITING.labels(self._schema).set(waiting)
        metrics.SEQUENCER_LAG.labels(self._schema).set(lag)
        metrics.SEQUENCER_STALLED.labels(self._schema).set(1 if stalled or was_moved else 0)
        metrics.SEQUENCER_MOVED.labels(self._schema).set(1 if was_moved else 0)
        if was_moved:
            # No transaction is to blame: the ids came from another cluster (the endpoint was switched
            # under a running process, say). Naming the oldest backend here would send people astray.
            if not self._moved_logged:
                self._moved_logged = True
                error = StoreMoved(self._schema)
                log.error(
                    "numbering stopped: the store holds transaction ids of another cluster",
                    extra={
                        "schema": self._schema,
                        "waiting_events": waiting,
                        "command": error.command,
                        "error": str(error),
                    },
                )
            return
        if self._moved_logged:
            self._moved_logged = False
            log.info("numbering resumed: the store was re-based", extra={"schema": self._schema})
        if stalled and not self._stall_logged:
            self._stall_logged = True
            blocker = conn.execute(_BLOCKER).fetchone()
            log.warning(
                "sequencing stalled: a transaction holds the horizon",
                extra={
                    "schema": self._schema,
                    "waiting_events": waiting,
                    "lag_seconds": round(lag, 3),
                    "blocking_pid": blocker[0] if blocker else None,
                    "blocking_database": blocker[1] if blocker else None,
                    "blocking_state": blocker[3] if blocker else None,
                    "blocking_seconds": float(blocker[4]) if blocker and blocker[4] is not None else None,
                },
            )
        elif not stalled and self._stall_logged:
            self._stall_logged = False
            log.info("sequencing resumed", extra={"schema": self._schema})

    def catch_up(self, timeout: float = 30.0) -> int:
        """Number everything numberable now; return the last event_number. For tools and tests.

        Raises:
            TimeoutError: events still wait after ``timeout`` seconds (a transaction holds the horizon).
            StoreMoved: the store holds another cluster's transaction ids; waiting would not help.
        """
        deadline = time.monotonic() + timeout
        while True:
            while self.step() > 0:
                pass
            if self.look().moved:
                raise StoreMoved(self._schema)
            if self.status.waiting == 0:
                return self.status.last_event_number
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.status.waiting} committed events still wait for numbering after "
                    f"{timeout}s: a long or idle transaction holds the horizon"
                )
            time.sleep(0.005)

    def wake(self) -> None:
        """Ask the background thread for a batch now (called after local appends)."""
        # Appends call this every time; a wake-up already pending needs no lock.
        if not self._wake.is_set():
            self._wake.set()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"sequencer-{self._schema}", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        backoff, timeout, last_look = self._poll_interval, self._poll_interval, 0.0
        while not self._stopping.is_set():
            woken = self._wake.wait(timeout)
            self._wake.clear()
            if woken and self._linger:
                # Like a producer's linger: let a burst of appends gather into one batch.
                self._stopping.wait(self._linger)
            try:
                numbered = self.step()
                while numbered == self._batch_size:
                    numbered = self.step()
                if numbered == 0 or time.monotonic() - last_look > LOOK_EVERY_SECONDS:
                    self.look()
                    last_look = time.monotonic()
                backoff = self._poll_interval
            except (psycopg.Error, StoreUnavailable) as exc:
                # PostgreSQL away (the pool says StoreUnavailable when it cannot connect): wait, retry.
                log.warning(
                    "sequencer step failed; retrying", extra={"schema": self._schema, "error": str(exc)}
                )
                backoff = min(backoff * 2, 5.0)
            # Events waiting on the horizon need another look soon even without a wake-up.
            timeout = min(backoff, 0.01) if self.status.waiting else backoff
