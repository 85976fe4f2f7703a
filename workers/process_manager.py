"""ProcessManager: handle events, dispatch commands, keep state per process, exactly once.

A process manager coordinates aggregates: an event reaches the instances ``interested`` names, whose
``handle(state, event)`` returns the commands to dispatch and whose ``apply(state, event)`` returns the
new state. Everything one event causes commits in one PostgreSQL transaction: the instances' state, the
events of the commands dispatched to this application's aggregates, the commands bound elsewhere (the
command outbox), the scheduled commands, and the process manager's checkpoint. A redelivered event
finds its checkpoint passed and does nothing again.

Example::

    @dataclass
    class Transfer:
        status: str = "new"
        source: str = ""
        target: str = ""
        amount: Decimal = Decimal(0)

    class Transfers(ProcessManager):
        name = "transfers"
        state_type = Transfer

        def interested(self, event, metadata):
            match event:
                case TransferRequested(transfer_id=t): return Start(t)
                case MoneyWithdrawn(transfer_id=t) if t: return Continue(t)
                case MoneyDeposited(transfer_id=t) if t: return Stop(t)

        def handle(self, state, event):
            match event:
                case TransferRequested(source=s, amount=a, transfer_id=t): return Withdraw(s, a, t)
                case MoneyWithdrawn(transfer_id=t): return Deposit(state.target, state.amount, t)

        def apply(self, state, event):
            match event:
                case TransferRequested(source=s, target=d, amount=a):
                    return Transfer("withdrawing", s, d, a)
            return state

Commands carry ``causation_id`` = the event's id, its ``correlation_id`` and the user's metadata.
See docs/process-managers.md.
"""

from __future__ import annotations

import inspect
import logging
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, is_dataclass
from typing import Any, ClassVar

import psycopg
import sqlalchemy as sa
from psycopg import sql
from psycopg.types.json import Jsonb

from tidings.aggregate import produced
from tidings.json_decode import build_dataclass
from tidings.json_encode import dataclass_to_json, plain_json
from tidings.json_hints import ValueProblem
from workers.delivery import EventMetadata
from workers.execution import transient
from workers.failure import ErrorAnswer, Park, Retry, Skip, Stop, default_answer
from workers.process_instances import Instance, ProcessInstances
from workers.process_routing import (
    CommandAnswer,
    ContinuePending,
    ContinueWith,
    DiscardPending,
    Routing,
    decide_routes,
)
from workers.projection import Projection
from workers.scheduling import CancelSchedule, ScheduledCommands, ScheduleOnce, command_type

__all__ = ["CommandFailed", "EventTimeout", "ProcessFailureContext", "ProcessManager"]

log = logging.getLogger("workers.process_manager")


class CommandFailed(Exception):
    """A command the process manager dispatched failed, and ``error`` gave up on it (``Park``).

    The event that led to it is parked with this error (or dead-lettered); nothing it caused commits.
    """

    def __init__(self, command: object, error: BaseException) -> None:
        super().__init__(f"{type(command).__qualname__} failed: {type(error).__name__}: {error}")
        self.command = command
        self.error = error


class EventTimeout(Exception):
    """Handling one event took longer than ``event_timeout``: what it did was rolled back."""


class _StopRequested(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ProcessFailureContext:
    """What ``error`` knows when a command failed (for a failed event it gets a ``FailureContext``).

    Attributes:
        attempt: 1 on the command's first failure, 2 on the second...
        context: what the previous ``Retry`` or ``ContinueWith`` carried.
        last_event: the event whose handling dispatched the command.
        metadata: that event's metadata.
        pending_commands: the commands still to dispatch after this one.
        process_id: the instance that dispatched it.
        state: the instance's state (after applying the event).
        stacktrace: the formatted traceback of the error.
    """

    attempt: int
    context: dict[str, Any]
    last_event: Any
    metadata: EventMetadata
    pending_commands: list[object]
    process_id: str
    state: Any
    stacktrace: str


class ProcessManager(Projection):
    """Subclass, set ``name`` and ``state_type``, define ``interested``, ``handle`` and ``apply``.

    ``handle`` may return ``ScheduleOnce`` and ``CancelSchedule`` beside its commands: they are written
    in the event's transaction (``workers.scheduling``).

    Options beside the handlers' (``start_from``, ``concurrency``, ``consistency``...):

    - ``state_type``: a dataclass (or ``dict``) an instance's state starts as; stored as JSON.
    - ``external``: command type -> destination, for commands that leave the application: they go to
      the command outbox in the event's transaction instead of to an aggregate.
    - ``idle_timeout``: seconds an instance stays in this worker's memory without events (None: until
      the worker stops); its state in PostgreSQL is the truth either way.
    - ``event_timeout``: seconds one event may take (None: no limit); past it, what the event did is
      rolled back and ``error`` is asked, as for any failure.
    """

    state_type: ClassVar[type] = dict
    transaction_per_event: ClassVar[bool] = True
    """One transaction per event, so that an instance's and its aggregates' locks are held briefly."""
    external: ClassVar[Mapping[type, str]] = {}
    idle_timeout: ClassVar[float | None] = None
    event_timeout: ClassVar[float | None] = None

    def __init__(self, index: int = 0) -> None:
        super().__init__(index)
        self.application: Any = None
        """The ``tidings.Application`` commands are dispatched through (set by the worker)."""
        self._instances: ProcessInstances | None = None
        self._schedules: ScheduledCommands | None = None
        self._outbox: sql.Composed | None = None
        self._cache: dict[str, tuple[int, Any, float]] = {}
        self._next_sweep = 0.0
        self._dispatched: list[Any] = []  # this transaction's dispatch results, cached once it commits
        self._interested_takes_metadata = len(inspect.signature(self.interested).parameters) >= 2

    # --- what users define -------------------------------------------------------------------------

    def interested(self, event: Any, metadata: EventMetadata, /) -> Routing | None:
        """Which instances ``event`` reaches (``Start``, ``Continue``, ``Stop``... or None to ignore it).
        May be defined as ``interested(self, event)``."""
        return None

    def handle(self, state: Any, event: Any, /) -> Any:
        """The commands ``event`` causes for an instance in ``state``: None, one, or a list."""
        return None

    def apply(self, state: Any, event: Any, /) -> Any:
        """The instance's state after ``event`` (by default the state as it was)."""
        return state

    def after_command(self, state: Any, command: object, /) -> bool:
        """Called after each command dispatched; False stops the instance (its state is deleted)."""
        return True

    def error(self, error: BaseException, failed: Any, context: Any) -> ErrorAnswer | CommandAnswer:  # type: ignore[override]
        """What to do when handling an event (``context`` a ``FailureContext``) or dispatching a command
        (``context`` a ``ProcessFailureContext``) fails. By default: retry with backoff, then park the
        event after ``max_attempts``."""
        if isinstance(error, _StopRequested):
            return Stop(error.reason)
        if isinstance(error, CommandFailed):
            return Park(str(error))
        return default_answer(error, context, self.max_attempts)

    # --- the worker's side -------------------------------------------------------------------------

    def bind(self, application: Any, instances: ProcessInstances, schedules: ScheduledCommands) -> None:
        """Called by the worker before ``init``: where commands go, and where instances and schedules
        are kept."""
        self.application = application
        self._instances = instances
        self._schedules = schedules
        self._outbox = sql.SQL(
            "INSERT INTO {t} (destination, command_type, command, metadata, causation_id, correlation_id, "
            "created_by) VALUES (%s, %s, %s, %s, %s, %s, %s)"
        ).format(t=sql.Identifier(instances.store.config.schema, "command_outbox"))

    def _unit_started(self) -> None:
        self._dispatched.clear()

    def _unit_committed(self) -> None:
        for result in self._dispatched:
            self.application.remember(result)
        self._dispatched.clear()

    def project(self, event: Any, metadata: EventMetadata, connection: sa.Connection) -> None:
        interested: Any = self.interested  # (event, metadata) or (event)
        routing = interested(event, metadata) if self._interested_takes_metadata else interested(event)
        if routing is None:
            return
        instances = self._instances
        if instances is None:
            raise RuntimeError(f"{self.name}: the worker did not bind the process manager (bind())")
        started = time.monotonic()
        raw: psycopg.Connection = connection.connection.driver_connection  # type: ignore[assignment]
        if self.event_timeout is not None:
            raw.execute(
                sql.SQL("SET LOCAL statement_timeout = {}").format(
                    sql.Literal(int(self.event_timeout * 1000))
                )
            )
        ids = getattr(routing, "ids", None)
        live = instances.lock_all(raw, self.name) if ids is None else instances.lock(raw, self.name, ids)
        for route in decide_routes(self.name, routing, frozenset(live)):
            if route.action == "stop":
                instances.delete(raw, self.name, route.process_id)
                self._cache.pop(route.process_id, None)
                continue
            found = live.get(route.process_id)
            state = self._state_of(found) if found is not None else self.state_type()
            commands = produced(self.handle(state, event))
            state = self.apply(state, event)
            applied = (found.events_applied if found is not None else 0) + 1
            if self._dispatch(route.process_id, commands, state, event, metadata, raw):
                instances.save(
                    raw, self.name, route.process_id, self._document(state), applied, metadata.event_number
                )
                self._cache[route.process_id] = (applied, state, time.monotonic())
            else:
                instances.delete(raw, self.name, route.process_id)
                self._cache.pop(route.process_id, None)
        if self.event_timeout is not None and time.monotonic() - started > self.event_timeout:
            raise EventTimeout(
                f"{self.name}: event {metadata.event_number} took {time.monotonic() - started:.1f} s, over "
                f"event_timeout={self.event_timeout} s; what it did is rolled back"
            )
        self._forget_idle()

    # --- one instance ------------------------------------------------------------------------------

    def _state_of(self, found: Instance) -> Any:
        cached = self._cache.get(found.process_id)
        if cached is not None and cached[0] == found.events_applied:
            return cached[1]
        if self.state_type is dict or not is_dataclass(self.state_type):
            return found.state
        try:
            return build_dataclass(self.state_type, found.state, f"{self.name}[{found.process_id}]")
        except ValueProblem as problem:
            raise TypeError(
                f"the stored state of {self.name} instance {found.process_id!r} does not fit "
                f"{self.state_type.__qualname__} at {problem.path}: {problem.problem}"
            ) from None

    def _document(self, state: Any) -> Any:
        where = f"{self.name} state"
        if is_dataclass(state) and not isinstance(state, type):
            return dataclass_to_json(state, where)
        return plain_json(state, where)

    def _forget_idle(self) -> None:
        # A sweep of the whole cache, so at most once a second rather than for every event.
        if self.idle_timeout is None or not self._cache:
            return
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + min(1.0, self.idle_timeout)
        idle = [pid for pid, (_, _, used) in self._cache.items() if now - used > self.idle_timeout]
        for pid in idle:
            del self._cache[pid]

    def cached(self) -> list[str]:
        """The process ids this instance of the worker holds in memory (for tests and debugging)."""
        self._next_sweep = 0.0
        self._forget_idle()
        return sorted(self._cache)

    # --- commands ----------------------------------------------------------------------------------

    def _dispatch(
        self,
        process_id: str,
        commands: list[object],
        state: Any,
        event: Any,
        metadata: EventMetadata,
        raw: psycopg.Connection,
    ) -> bool:
        """Dispatch ``commands`` in the event's transaction; False when ``after_command`` stopped the
        instance."""
        pending = list(commands)
        attempt = 1
        context: dict[str, Any] = {}
        while pending:
            command = pending[0]
            try:
                # No savepoint of its own: a refused command has written nothing (the dispatch keeps its
                # appends in savepoints), and a database error ends the event's transaction anyway.
                self._send(command, metadata, raw)
            except Exception as exc:
                if transient(exc):
                    raise  # a deadlock lost, PostgreSQL away: the whole event is rolled back and done again
                situation = ProcessFailureContext(
                    attempt,
                    context,
                    event,
                    metadata,
                    pending[1:],
                    process_id,
                    state,
                    "".join(traceback.format_exception(exc)),
                )
                answer = self._ask(exc, command, situation)
                log.warning(
                    "a command failed",
                    extra={
                        "handler": self.name,
                        "process_id": process_id,
                        "command": type(command).__qualname__,
                        "attempt": attempt,
                        "error": f"{type(exc).__name__}: {exc}",
                        "answer": type(answer).__name__,
                    },
                )
                match answer:
                    case Retry(delay=delay, context=next_context):
                        time.sleep(delay)
                        attempt, context = attempt + 1, next_context
                    case ContinueWith(commands=replacement, context=next_context):
                        pending = list(replacement)
                        attempt, context = 1, next_context
                    case ContinuePending():
                        pending.pop(0)
                        attempt, context = 1, {}
                    case DiscardPending() | Skip():
                        return True
                    case Stop(reason=reason):
                        raise _StopRequested(reason or f"{type(exc).__name__}: {exc}") from exc
                    case _:
                        raise CommandFailed(command, exc) from exc
                continue
            pending.pop(0)
            attempt, context = 1, {}
            if not self.after_command(state, command):
                return False
        return True

    def _ask(self, error: Exception, command: object, context: ProcessFailureContext) -> object:
        try:
            return self.error(error, command, context)
        except Exception as exc:  # noqa: BLE001 - a broken error callback parks the event
            return Park(f"error callback failed: {type(exc).__name__}: {exc}")

    def _send(self, command: object, metadata: EventMetadata, raw: psycopg.Connection) -> None:
        causation = metadata.event_id
        correlation = metadata.correlation_id or causation
        if isinstance(command, ScheduleOnce | CancelSchedule):
            assert self._schedules is not None
            self._schedules.apply([command], causation, correlation, self.name, raw)
            return
        destination = self.external.get(type(command))
        if destination is None:
            result = self.application.dispatch(
                command,
                causation_id=causation,
                correlation_id=correlation,
                metadata=_user_metadata(metadata.metadata),
                connection=raw,
                returning="execution_result",
            )
            self._dispatched.append(result)
            return
        assert self._outbox is not None
        raw.execute(
            self._outbox,
            (
                destination,
                command_type(command),
                Jsonb(dataclass_to_json(command, type(command).__qualname__)),
                Jsonb(plain_json(_user_metadata(metadata.metadata), "metadata")),
                causation,
                correlation,
                self.name,
            ),
        )


def _user_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    # The trace context is the dispatch's own business: it puts in its span's.
    return {k: v for k, v in metadata.items() if k not in ("traceparent", "tracestate")}
