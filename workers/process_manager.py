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

import copy
import inspect
import logging
import time
import traceback
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, is_dataclass
from typing import Any, ClassVar

import psycopg
import sqlalchemy as sa
from psycopg import sql
from psycopg.types.json import Jsonb

from eventstore.command_sender import commands_topic
from eventstore.errors import ConfigurationError
from tidings.aggregate import produced
from tidings.json_decode import build_dataclass
from tidings.json_encode import dataclass_to_json, plain_json
from tidings.json_hints import ValueProblem
from workers.delivery import EventMetadata
from workers.execution import transient
from workers.failure import Answered, ErrorAnswer, Park, Retry, Skip, Stop, default_answer
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

__all__ = ["CommandFailed", "EventTimeout", "External", "ProcessFailureContext", "ProcessManager"]

log = logging.getLogger("workers.process_manager")


class CommandFailed(Answered):
    """A command the process manager dispatched failed, and ``error`` answered ``Retry``, ``Park`` or
    ``Stop``: the event's transaction is rolled back (nothing it caused commits) and the answer is
    carried out as given: the event is done again after the delay (the command with the next attempt
    and the answer's context), parked with this error (or dead-lettered), or the process manager stops.

    The runtime's own: ``error`` is never asked about it.
    """

    def __init__(self, command: object, error: BaseException, answer: ErrorAnswer) -> None:
        message = f"{type(command).__qualname__} failed: {type(error).__name__}: {error}"
        if isinstance(answer, Park):
            answer = Park(answer.reason or message)
        elif isinstance(answer, Stop):
            answer = Stop(answer.reason or message)
        super().__init__(answer, error, message)
        self.command = command


@dataclass(frozen=True, slots=True)
class External:
    """Where a command bound to another application goes: ``destination`` names that application (its
    worker reads ``<destination>.commands``), ``identity`` the command's field that names the target
    aggregate, whose value keys the Kafka message so that one target's commands keep their order.

    Example::

        external = {ChargeCard: External("payments", identity="payment_id")}

    A plain string (``{ChargeCard: "payments"}``) is ``External("payments")``: the message is keyed by
    the process instance, which keeps one instance's commands in order (not one target's).
    """

    destination: str
    identity: str | None = None

    def __post_init__(self) -> None:
        # Checked where it is written, not when the sender meets it: <destination>.commands is a topic.
        commands_topic(self.destination)


class EventTimeout(Exception):
    """Handling one event took longer than ``event_timeout``: what it did was rolled back."""


@dataclass(slots=True)
class _Plan:
    """Where one instance's commands for one event stood when ``error`` answered a failed command with
    ``Retry``: the transaction is rolled back for the wait, and the event done again from this plan.

    ``commands`` are those to dispatch, from the first (the ones before ``failed_at`` were rolled back
    with the transaction and are dispatched again); the command at ``failed_at`` goes with ``attempt``
    and ``context``. Valid only while the instance is as it was (``version``: how many events it had
    applied, and the last one's number): if another event changed it meanwhile, or stopped it and
    started it again, the event is handled afresh.
    """

    version: tuple[int, int]
    commands: list[object]
    failed_at: int
    attempt: int
    context: dict[str, Any] = field(default_factory=dict)


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
    - ``external``: command type -> destination (a name, or ``External(name, identity=field)``), for
      commands that leave the application: they go to the command outbox in the event's transaction
      instead of to an aggregate, and ``tidings relay`` sends them to ``<destination>.commands``
      (docs/process-managers.md, "Commands to other applications").
    - ``idle_timeout``: seconds an instance stays in this worker's memory without events (None: until
      the worker stops); its state in PostgreSQL is the truth either way.
    - ``event_timeout``: seconds one event may take (None: no limit); past it, what the event did is
      rolled back and ``error`` is asked, as for any failure.
    """

    state_type: ClassVar[type] = dict
    transaction_per_event: ClassVar[bool] = True
    """One transaction per event, so that an instance's and its aggregates' locks are held briefly."""
    external: ClassVar[Mapping[type, str | External]] = {}
    idle_timeout: ClassVar[float | None] = None
    event_timeout: ClassVar[float | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A destination that makes no topic name fails when the class is defined, not in the sender.

        Raises:
            ConfigurationError: an ``external`` destination is not a Kafka topic name.
        """
        super().__init_subclass__(**kwargs)
        for command, destination in cls.__dict__.get("external", {}).items():
            name = destination.destination if isinstance(destination, External) else destination
            try:
                commands_topic(name)
            except ConfigurationError as exc:
                raise ConfigurationError(
                    f"{cls.__qualname__}.external[{getattr(command, '__name__', command)}]: destination "
                    f"{name!r} cannot be received ({exc})"
                ) from None

    def __init__(self, index: int = 0) -> None:
        super().__init__(index)
        self.application: Any = None
        """The ``tidings.Application`` commands are dispatched through (set by the worker)."""
        self._instances: ProcessInstances | None = None
        self._schedules: ScheduledCommands | None = None
        self._outbox: sql.Composed | None = None
        self._cache: dict[str, tuple[tuple[int, int], Any, float]] = {}
        """process id -> ((events applied, last event number), state as committed, last used)."""
        self._committing: dict[str, tuple[tuple[int, int], Any] | None] = {}
        """What this transaction changes in the cache, once it commits (None: forget the instance)."""
        self._plans: dict[tuple[int, str], _Plan] = {}
        """(event number, process id) -> the commands of a command retry, across the rollback."""
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
        event after ``max_attempts``. Only failures of the event and of its commands come here: an
        answer already given is carried out, never asked about again."""
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
            "created_by, command_uuid, partition_key) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
        ).format(t=sql.Identifier(instances.store.config.schema, "command_outbox"))

    def _unit_started(self) -> None:
        self._dispatched.clear()
        self._committing.clear()

    def _unit_committed(self) -> None:
        for result in self._dispatched:
            self.application.remember(result)
        self._dispatched.clear()
        # Only what committed is cached: a rolled-back transaction leaves the cache as it was.
        now = time.monotonic()
        for process_id, kept in self._committing.items():
            if kept is None:
                self._cache.pop(process_id, None)
            else:
                self._cache[process_id] = (kept[0], kept[1], now)
        self._committing.clear()
        self._plans.clear()

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
        number = metadata.event_number
        if any(key[0] != number for key in self._plans):
            # Plans of an event that is over (skipped, parked, handled by another member meanwhile).
            self._plans = {key: plan for key, plan in self._plans.items() if key[0] == number}
        ids = getattr(routing, "ids", None)
        live = instances.lock_all(raw, self.name) if ids is None else instances.lock(raw, self.name, ids)
        for route in decide_routes(self.name, routing, frozenset(live)):
            process_id = route.process_id
            if route.action == "stop":
                instances.delete(raw, self.name, process_id)
                self._committing[process_id] = None
                continue
            found = live.get(process_id)
            version = (found.events_applied, found.last_event_number) if found is not None else (0, 0)
            state = self._state_of(found) if found is not None else self.state_type()
            plan = self._plans.pop((number, process_id), None)
            if plan is not None and plan.version != version:
                plan = None  # another event changed the instance while the retry waited: start afresh
            # handle and apply are pure: with a plan, handle's commands are those already planned.
            commands = plan.commands if plan is not None else produced(self.handle(state, event))
            state = self.apply(state, event)
            if self._dispatch(process_id, commands, state, event, metadata, raw, version, plan):
                applied = version[0] + 1
                instances.save(raw, self.name, process_id, self._document(state), applied, number)
                self._committing[process_id] = ((applied, number), state)
            else:
                instances.delete(raw, self.name, process_id)
                self._committing[process_id] = None
        if self.event_timeout is not None and time.monotonic() - started > self.event_timeout:
            raise EventTimeout(
                f"{self.name}: event {metadata.event_number} took {time.monotonic() - started:.1f} s, over "
                f"event_timeout={self.event_timeout} s; what it did is rolled back"
            )
        self._forget_idle()

    # --- one instance ------------------------------------------------------------------------------

    def _state_of(self, found: Instance) -> Any:
        if self.state_type is dict or not is_dataclass(self.state_type):
            # The JSON PostgreSQL holds, read afresh: the object apply returned may differ from it (a
            # tuple stored as a list), and a decision must not depend on whether the cache was hit.
            return found.state
        cached = self._cache.get(found.process_id)
        if cached is not None and cached[0] == (found.events_applied, found.last_event_number):
            # A copy: an apply that changes the state in place must not change the committed one (it
            # would be applied twice after a rollback).
            return copy.deepcopy(cached[1])
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
        version: tuple[int, int],
        plan: _Plan | None,
    ) -> bool:
        """Dispatch ``commands`` in the event's transaction; False when ``after_command`` stopped the
        instance. ``plan``: where a command retry stood before its rollback.

        Raises:
            CommandFailed: ``error`` answered a failed command with Retry, Park or Stop; the event's
                transaction is to be rolled back before the answer is carried out.
        """
        pending = list(commands)
        done: list[object] = []
        attempt = 1
        context: dict[str, Any] = {}
        resume_at = plan.failed_at if plan is not None else -1
        while pending:
            command = pending[0]
            if len(done) == resume_at:
                assert plan is not None
                attempt, context, resume_at = plan.attempt, plan.context, -1
            try:
                # A savepoint of its own: a command can fail after it wrote (its aggregate's apply
                # raising on the events just appended, a database error in the outbox), and an answer
                # that drops it (ContinuePending, DiscardPending, ContinueWith) must drop what it wrote.
                with raw.transaction():
                    self._send(command, metadata, raw, process_id)
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
                    case Retry(context=next_context):
                        # Never wait with the transaction open (it would hold the cluster's numbering
                        # horizon): roll back, wait outside, and do the event again from this plan.
                        self._plans[(metadata.event_number, process_id)] = _Plan(
                            version, done + pending, len(done), attempt + 1, next_context
                        )
                        raise CommandFailed(command, exc, answer) from exc
                    case ContinueWith(commands=replacement, context=next_context):
                        pending = list(replacement)
                        attempt, context = 1, next_context
                    case ContinuePending():
                        pending.pop(0)
                        attempt, context = 1, {}
                    case DiscardPending() | Skip():
                        return True
                    case Stop() | Park():
                        raise CommandFailed(command, exc, answer) from exc
                continue
            done.append(pending.pop(0))
            attempt, context = 1, {}
            if not self.after_command(state, command):
                return False
        return True

    def _ask(
        self, error: Exception, command: object, context: ProcessFailureContext
    ) -> ErrorAnswer | CommandAnswer:
        try:
            answer: object = self.error(error, command, context)
        except Exception as exc:  # a broken error callback parks the event
            log.exception("the error callback failed; parking the event", extra={"handler": self.name})
            return Park(f"error callback failed: {type(exc).__name__}: {exc}")
        if not isinstance(
            answer, Retry | ContinueWith | ContinuePending | DiscardPending | Skip | Stop | Park
        ):
            return Park(
                f"error callback answered {answer!r} for a failed command, not Retry, ContinueWith, "
                "ContinuePending, DiscardPending, Skip, Stop or Park"
            )
        return answer

    def _send(
        self, command: object, metadata: EventMetadata, raw: psycopg.Connection, process_id: str
    ) -> None:
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
        target = destination if isinstance(destination, External) else External(destination)
        key = process_id if target.identity is None else str(getattr(command, target.identity))
        raw.execute(
            self._outbox,
            (
                target.destination,
                command_type(command),
                Jsonb(dataclass_to_json(command, type(command).__qualname__)),
                Jsonb(plain_json(_user_metadata(metadata.metadata), "metadata")),
                causation,
                correlation,
                self.name,
                # A new id per attempt: a rolled-back attempt's row never existed, so nothing repeats it.
                uuid.uuid4(),
                key,
            ),
        )


def _user_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    # The trace context is the dispatch's own business: it puts in its span's.
    return {k: v for k, v in metadata.items() if k not in ("traceparent", "tracestate")}
