"""Scheduled commands: dispatch a command once, at a given time, whatever the number of workers.

Schedules live in PostgreSQL (``scheduled_commands``). A ``Scheduler`` (every ``tidings worker`` of an
app with a router runs one) takes the due ones with ``FOR UPDATE SKIP LOCKED`` and dispatches each in a
transaction that also deletes its row: the command's events and the end of the schedule commit together,
so a schedule fires exactly once, and two workers never take the same one.

From application code::

    schedules = ScheduledCommands(store, router)
    due = now + timedelta(minutes=5)
    schedules.schedule_once("transfer-42-timeout", ExpireTransfer(transfer_id), due_at=due)
    schedules.cancel("transfer-42-timeout")

From a process manager's ``handle``, return them with the commands; they are written in the event's
transaction, so they exist exactly when the rest of what the event caused does::

    return [Withdraw(...), ScheduleOnce("transfer-42-timeout", ExpireTransfer(t), due_at)]
    ...
    return CancelSchedule("transfer-42-timeout")

Commands are stored as JSON by their dataclass fields, and found again by the router: a scheduled
command's type must be routed.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from eventstore import PostgresEventStore
from eventstore.errors import ConfigurationError
from tidings.json_decode import build_dataclass
from tidings.json_encode import dataclass_to_json, plain_json
from tidings.router import Router
from workers import metrics

__all__ = [
    "CancelSchedule",
    "ScheduleOnce",
    "ScheduledCommand",
    "ScheduledCommands",
    "Scheduler",
    "UnknownScheduledCommand",
    "command_type",
]

log = logging.getLogger("workers.scheduling")


def command_type(command: object) -> str:
    """The name a command is stored under (schedules, the outbox): its module and qualified name."""
    return command_type_of(type(command))


def command_type_of(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


@dataclass(frozen=True, slots=True)
class ScheduleOnce:
    """Dispatch ``command`` at ``due_at`` (aware), once. A schedule with the same id is replaced."""

    schedule_id: str
    command: object
    due_at: datetime
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.schedule_id, str) or not self.schedule_id:
            raise ValueError(f"schedule_id must be a non-empty str, got {self.schedule_id!r}")
        if self.due_at.tzinfo is None:
            raise ValueError(f"due_at must be timezone-aware (UTC, say), got {self.due_at!r}")


@dataclass(frozen=True, slots=True)
class CancelSchedule:
    """Cancel the schedule ``schedule_id`` if it has not fired (nothing happens otherwise)."""

    schedule_id: str


@dataclass(frozen=True, slots=True)
class ScheduledCommand:
    """A schedule waiting to fire."""

    schedule_id: str
    command_type: str
    due_at: datetime
    attempts: int
    last_error: str | None


@dataclass(frozen=True, slots=True)
class Due:
    """A schedule taken to fire, as stored."""

    schedule_id: str
    command_type: str
    command: dict[str, Any]
    metadata: dict[str, Any]
    causation_id: uuid.UUID | None
    correlation_id: uuid.UUID | None
    attempts: int


class UnknownScheduledCommand(ConfigurationError):
    """A schedule holds a command type the router does not route (renamed, or moved to another app)."""


class ScheduledCommands:
    """The schedules of one store: write, cancel, list (the ``Scheduler`` fires them)."""

    def __init__(self, store: PostgresEventStore, router: Router) -> None:
        self.store = store
        self.router = router
        self._table = sql.Identifier(store.config.schema, "scheduled_commands")
        self._types = {command_type_of(cls): cls for cls in router.commands()}

    def _sql(self, text: str) -> sql.Composed:
        return sql.SQL(text).format(t=self._table)

    @contextmanager
    def _joined(self, connection: psycopg.Connection | None) -> Iterator[psycopg.Connection]:
        if connection is not None:
            yield connection
        else:
            with self.store.connection() as conn:
                yield conn

    def schedule_once(
        self,
        schedule_id: str,
        command: object,
        due_at: datetime,
        *,
        metadata: Mapping[str, Any] | None = None,
        causation_id: uuid.UUID | None = None,
        correlation_id: uuid.UUID | None = None,
        scheduled_by: str = "",
        connection: psycopg.Connection | None = None,
    ) -> None:
        """Dispatch ``command`` at ``due_at``; ``connection`` joins the caller's transaction.

        Raises:
            UnknownScheduledCommand: the router does not route ``command``'s type.
            ValueError: ``due_at`` is naive, or ``schedule_id`` empty.
        """
        entry = ScheduleOnce(schedule_id, command, due_at, dict(metadata or {}))
        self.schedule_batch([entry], causation_id, correlation_id, scheduled_by, connection)

    def schedule_batch(
        self,
        entries: Sequence[ScheduleOnce],
        causation_id: uuid.UUID | None = None,
        correlation_id: uuid.UUID | None = None,
        scheduled_by: str = "",
        connection: psycopg.Connection | None = None,
    ) -> None:
        """Write several schedules at once, all or none."""
        rows = []
        for entry in entries:
            name = command_type(entry.command)
            if name not in self._types:
                raise UnknownScheduledCommand(
                    f"{name} is not routed by the application's router: only commands it dispatches can be "
                    "scheduled"
                )
            rows.append(
                (
                    entry.schedule_id,
                    name,
                    Jsonb(dataclass_to_json(entry.command, name)),
                    entry.due_at,
                    Jsonb(plain_json(dict(entry.metadata), "metadata")),
                    causation_id,
                    correlation_id,
                    scheduled_by,
                )
            )
        with self._joined(connection) as conn, conn.cursor() as cursor:
            cursor.executemany(
                self._sql(
                    "INSERT INTO {t} (schedule_id, command_type, command, due_at, metadata, causation_id, "
                    "correlation_id, scheduled_by) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
                    "ON CONFLICT (schedule_id) DO UPDATE SET command_type = EXCLUDED.command_type, "
                    "command = EXCLUDED.command, due_at = EXCLUDED.due_at, metadata = EXCLUDED.metadata, "
                    "causation_id = EXCLUDED.causation_id, correlation_id = EXCLUDED.correlation_id, "
                    "scheduled_by = EXCLUDED.scheduled_by, attempts = 0, last_error = NULL"
                ),
                rows,
            )

    def cancel(self, schedule_id: str, connection: psycopg.Connection | None = None) -> bool:
        """Cancel a schedule that has not fired; whether there was one."""
        with self._joined(connection) as conn:
            deleted = conn.execute(self._sql("DELETE FROM {t} WHERE schedule_id = %s"), (schedule_id,))
            return deleted.rowcount > 0

    def pending(self, limit: int = 100) -> list[ScheduledCommand]:
        """The schedules that have not fired, soonest first."""
        with self.store.connection() as conn:
            rows = conn.execute(
                self._sql(
                    "SELECT schedule_id, command_type, due_at, attempts, last_error FROM {t} "
                    "ORDER BY due_at, schedule_id LIMIT %s"
                ),
                (limit,),
            ).fetchall()
        return [ScheduledCommand(*row) for row in rows]

    def apply(
        self,
        entries: Iterable[ScheduleOnce | CancelSchedule],
        causation_id: uuid.UUID | None,
        correlation_id: uuid.UUID | None,
        scheduled_by: str,
        connection: psycopg.Connection,
    ) -> None:
        """Write what a process manager returned beside its commands, in its transaction."""
        once = [e for e in entries if isinstance(e, ScheduleOnce)]
        for entry in entries:
            if isinstance(entry, CancelSchedule):
                self.cancel(entry.schedule_id, connection)
        if once:
            self.schedule_batch(once, causation_id, correlation_id, scheduled_by, connection)

    def take_due(self, conn: psycopg.Connection, limit: int) -> list[Due]:
        """Up to ``limit`` schedules due now, locked for the caller's transaction; those another
        transaction holds are passed over (``SKIP LOCKED``)."""
        rows = conn.execute(
            self._sql(
                "SELECT schedule_id, command_type, command, metadata, causation_id, correlation_id, attempts "
                "FROM {t} WHERE due_at <= now() ORDER BY due_at, schedule_id LIMIT %s FOR UPDATE SKIP LOCKED"
            ),
            (limit,),
        ).fetchall()
        return [Due(*row) for row in rows]

    def postpone(self, conn: psycopg.Connection, schedule_id: str, error: str, delay: float) -> None:
        """Record a failed firing, and make the schedule due again ``delay`` seconds from now."""
        conn.execute(
            self._sql(
                "UPDATE {t} SET attempts = attempts + 1, last_error = %s, "
                "due_at = now() + make_interval(secs => %s) WHERE schedule_id = %s"
            ),
            (error, delay, schedule_id),
        )

    def command_of(self, name: str, document: dict[str, Any]) -> object:
        cls = self._types.get(name)
        if cls is None:
            raise UnknownScheduledCommand(
                f"a schedule holds {name}, which the router does not route: route it again, or cancel "
                "the schedule (ScheduledCommands.cancel)"
            )
        return build_dataclass(cls, document, name)


class Scheduler:
    """Fires due schedules through ``application`` until stopped; safe to run in every worker."""

    def __init__(
        self,
        application: Any,
        schedules: ScheduledCommands,
        *,
        poll_seconds: float = 0.5,
        batch: int = 100,
        max_backoff: float = 300.0,
    ) -> None:
        self.application = application
        self.schedules = schedules
        self.poll_seconds = poll_seconds
        self.batch = batch
        self.max_backoff = max_backoff
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._store = schedules.store

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        backoff = self.poll_seconds
        while not self.stopping.is_set():
            try:
                fired = self.fire_due()
                backoff = self.poll_seconds
            except Exception as exc:  # noqa: BLE001 - PostgreSQL away, say: wait and look again
                metrics.ERRORS.labels("scheduler", "postgres").inc()
                log.warning("scheduled commands not fired", extra={"error": f"{type(exc).__name__}: {exc}"})
                fired, backoff = 0, min(backoff * 2, 5.0)
            if fired < self.batch:
                self.stopping.wait(backoff)

    def fire_due(self) -> int:
        """Fire the schedules due now (up to ``batch``); how many were taken."""
        with self._store.connection() as conn:
            due = self.schedules.take_due(conn, self.batch)
            for schedule in due:
                self._fire(conn, schedule)
        return len(due)

    def _fire(self, conn: psycopg.Connection, due: Due) -> None:
        try:
            with conn.transaction():  # a savepoint: a failed command leaves the others' transaction usable
                self.application.dispatch(
                    self.schedules.command_of(due.command_type, due.command),
                    causation_id=due.causation_id,
                    correlation_id=due.correlation_id,
                    metadata={**due.metadata, "schedule_id": due.schedule_id},
                    connection=conn,
                )
                self.schedules.cancel(due.schedule_id, conn)  # fired: its row goes with the command's events
        except Exception as exc:  # noqa: BLE001 - recorded on the schedule, retried with a backoff
            delay = min(2.0**due.attempts, self.max_backoff)
            self.schedules.postpone(conn, due.schedule_id, f"{type(exc).__name__}: {exc}", delay)
            metrics.ERRORS.labels("scheduler", "command").inc()
            log.error(
                "a scheduled command failed; it is tried again later",
                extra={
                    "schedule_id": due.schedule_id,
                    "attempt": due.attempts + 1,
                    "error": str(exc),
                    "retry_in": delay,
                },
            )
            return
        log.info(
            "scheduled command fired", extra={"schedule_id": due.schedule_id, "command": due.command_type}
        )
