"""The application: commands in, through middleware and the router, to aggregates and the store.

Example::

    app = Application(store, EventMapper(codec), router)
    app.dispatch(OpenAccount(account_id, "Ada"))
    state = app.dispatch(Deposit(account_id, Decimal("10")), returning="aggregate_state")

One dispatch: middleware ``before_dispatch`` (identity first); the aggregate's lock in this application
(one command per aggregate at a time); the aggregate from the cache or the store; ``execute``; the
events appended with the version the aggregate was at (optimistic concurrency). On
``WrongExpectedVersion`` the missed events are read and applied and the command runs again holding the
stream's row lock, so that it cannot lose again. A refusal or a no-op decided on a cached state is
checked against the store before it is believed. ``timeout`` bounds all of it: nothing is appended past
the deadline. Then ``after_dispatch``. Every event carries the command's causation and correlation ids
and the dispatch's metadata. docs/decisions/0017-the-write-side-decides-on-the-truth.md says why.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import random
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import psycopg
from opentelemetry import propagate, trace

from eventstore import (
    DeadlineExceeded,
    PoolExhausted,
    PostgresEventStore,
    StreamNotFound,
    TransactionConflict,
    WrongExpectedVersion,
)
from eventstore.acknowledgements import Acknowledgements
from eventstore.postgres.pool import waiting_until
from tidings.aggregate import produced
from tidings.aggregate_cache import AggregateCache
from tidings.command_threads import CommandThreads, Job, on_command_thread
from tidings.errors import (
    DispatchHalted,
    ExecutionFailed,
    ExecutionTimeout,
    ReentrantDispatch,
    TooManyAttempts,
)
from tidings.mapper import EventMapper
from tidings.middleware import DEFAULT_MIDDLEWARE, ConsistencyGuarantee, ExtractIdentity, Middleware, Pipeline
from tidings.router import Consistency, Registration, Router
from tidings.snapshotting import Snapshotting
from tidings.stream_locks import StreamLocks

__all__ = ["Application", "ExecutionResult", "Returning"]

tracer = trace.get_tracer("tidings")

T = TypeVar("T")
Returning = Literal["aggregate_state", "aggregate_version", "events", "execution_result"] | None
READ_BATCH = 1000


@dataclass(frozen=True)
class ExecutionResult:
    """Everything a dispatch produced (``returning="execution_result"``)."""

    stream_id: str
    aggregate_state: Any
    aggregate_version: int
    events: list[object]
    metadata: dict[str, Any] = field(default_factory=dict)
    attempts: int = 1
    """How many times the command ran: more than one when other writers moved the stream meanwhile."""


class Application:
    """Dispatches commands to aggregates kept in a ``PostgresEventStore``.

    Commands to one aggregate from this application run one after the other; writers elsewhere are
    met by the store's optimistic check, and the command is decided again on what they wrote.

    Attributes:
        retry_attempts: how often a command runs again after meeting a newer stream version (another
            process's append) or losing a deadlock.
        timeout: seconds a whole dispatch may take; past it, ``ExecutionTimeout`` and nothing appended.
        command_threads: 0 (the default) runs each command on its caller's thread: the timeout bounds
            the waits (for the aggregate's lock, a session, another writer) and nothing is appended
            past it, but a caller stuck in a slow ``execute`` learns of the timeout only when
            ``execute`` returns. N > 0 runs commands on up to N threads of the application's, so that
            the caller stops waiting at the timeout whatever the aggregate does, for the cost of
            handing each command to a thread (0.1-0.25 ms on a loaded 2-core VM).
    """

    def __init__(
        self,
        store: PostgresEventStore,
        mapper: EventMapper,
        router: Router,
        *,
        middleware: Sequence[Middleware] = DEFAULT_MIDDLEWARE,
        cache: AggregateCache | None = None,
        retry_attempts: int = 10,
        timeout: float = 5.0,
        consistency: Consistency = "eventual",
        snapshotting: Mapping[type, Snapshotting] | None = None,
        command_threads: int = 0,
    ) -> None:
        self.store = store
        self.mapper = mapper
        self.router = router
        # Identity first; the consistency wait last, so that it runs first after the dispatch and
        # the application's after_dispatch hooks see its outcome.
        self.acknowledgements = Acknowledgements(store)
        self.middleware: tuple[Middleware, ...] = (
            ExtractIdentity(),
            *middleware,
            ConsistencyGuarantee(self.acknowledgements),
        )
        # Only the hooks a middleware overrides are called: a no-op call per command adds up.
        self._before = [m for m in self.middleware if _overrides(m, "before_dispatch")]
        self._after = [m for m in reversed(self.middleware) if _overrides(m, "after_dispatch")]
        self._failure = [m for m in reversed(self.middleware) if _overrides(m, "after_failure")]
        self.cache = cache if cache is not None else AggregateCache()
        self.retry_attempts = retry_attempts
        self.timeout = timeout
        self.consistency = consistency
        self.snapshotting = dict(snapshotting or {})
        if command_threads < 0:
            raise ValueError(
                f"command_threads must be 0 (the caller's thread) or more, got {command_threads}"
            )
        self._threads = CommandThreads(command_threads) if command_threads else None
        self._streams = StreamLocks()

    def dispatch(
        self,
        command: object,
        *,
        command_uuid: uuid.UUID | None = None,
        causation_id: uuid.UUID | None = None,
        correlation_id: uuid.UUID | None = None,
        metadata: Mapping[str, Any] | None = None,
        consistency: Consistency | None = None,
        returning: Returning = None,
        timeout: float | None = None,
        retry_attempts: int | None = None,
        connection: psycopg.Connection | None = None,
    ) -> Any:
        """Run ``command`` on its aggregate and append the events it produces.

        ``causation_id`` defaults to ``command_uuid`` and ``correlation_id`` to a new id. ``returning``
        chooses the answer: None, the aggregate's state or version after the command, the events, or an
        ``ExecutionResult``.

        With ``connection`` (a psycopg connection in a transaction) the dispatch joins that transaction:
        the aggregate is read and its events appended there, so they commit with the caller's other
        writes, or not at all (a process manager's state and checkpoint, say). Such a dispatch cannot
        wait for handlers, whose events are not committed yet: its consistency is always eventual.

        Raises:
            UnregisteredCommand, InvalidIdentity, InvalidCommand: before anything runs.
            TooManyAttempts: every attempt met a newer stream version; nothing was appended.
            ExecutionTimeout: the timeout passed before the events were appended; nothing was appended.
            DispatchHalted: a middleware halted without a response.
            ExecutionFailed: the aggregate's ``apply`` raised (a bug in the aggregate).
            ConsistencyTimeout: the events are committed, but not all handlers acknowledged them in time.
            Any exception the aggregate's ``execute`` raises (a domain error), unchanged.
        """
        if returning not in _RETURNING:
            raise ValueError(
                f"returning={returning!r}: use aggregate_state, aggregate_version, events or execution_result"
            )
        registration = self.router.route(command)
        command_uuid = command_uuid or uuid.uuid4()
        pipeline = Pipeline(
            command=command,
            command_uuid=command_uuid,
            causation_id=causation_id or command_uuid,
            correlation_id=correlation_id or uuid.uuid4(),
            metadata=dict(metadata or {}),
            consistency=(
                "eventual"
                if connection is not None
                else consistency or registration.consistency or self.consistency
            ),
            timeout=timeout if timeout is not None else registration.timeout or self.timeout,
            registration=registration,
            connection=connection,
        )
        attempts = retry_attempts if retry_attempts is not None else self.retry_attempts
        span = tracer.start_span(f"dispatch {type(command).__qualname__}")
        if not span.is_recording():
            # No tracing SDK (or sampled out): none of the span work, which is a third of dispatch's own cost.
            return self._run(pipeline, registration, attempts, returning, traced=False)
        with trace.use_span(span, end_on_exit=True):
            span.set_attribute("tidings.command_uuid", str(command_uuid))
            span.set_attribute("tidings.correlation_id", str(pipeline.correlation_id))
            # The trace goes on with the events: the relay copies it into the Kafka headers.
            propagate.inject(pipeline.metadata)
            return self._run(pipeline, registration, attempts, returning, traced=True)

    def _run(
        self,
        pipeline: Pipeline,
        registration: Registration,
        attempts: int,
        returning: Returning,
        traced: bool,
    ) -> Any:
        try:
            for middleware in self._before:
                middleware.before_dispatch(pipeline)
                if pipeline.halted:
                    return self._halted(pipeline)
            result = self._execute_within(registration, pipeline, attempts, traced)
            pipeline.events, pipeline.aggregate_version = result.events, result.aggregate_version
            for middleware in self._after:
                middleware.after_dispatch(pipeline)
        except BaseException as error:
            pipeline.error = error
            for middleware in self._failure:
                middleware.after_failure(pipeline)
            raise
        if pipeline.response is not None:
            return pipeline.response
        return _answer(result, returning)

    def remember(self, result: ExecutionResult) -> None:
        """Cache the aggregate a joined dispatch left, once its transaction has committed (a joined
        dispatch cannot cache it itself: the transaction may still roll back)."""
        self.cache.put(result.stream_id, result.aggregate_state, result.aggregate_version)

    def transaction(self, work: Callable[[psycopg.Connection[Any]], T], *, attempts: int | None = None) -> T:
        """``work(connection)`` in one transaction of the store, run again from the start when PostgreSQL
        ends it to break a deadlock or a serialization conflict (up to ``attempts``, by default
        ``retry_attempts``, more times). ``work`` joins its dispatches to the transaction
        (``dispatch(..., connection=connection)``) and must be safe to run again: all it wrote was
        rolled back.

        Raises:
            TransactionConflict: every run lost a conflict; nothing of any was committed.
            Whatever ``work`` raises; its transaction is rolled back.
        """
        tries = attempts if attempts is not None else self.retry_attempts
        for run in itertools.count(1):
            try:
                with self.store.connection() as connection:
                    return work(connection)
            except TransactionConflict:
                if run > tries:
                    raise
                _back_off(run, time.monotonic() + 1.0)
        raise AssertionError("unreachable")

    async def dispatch_async(self, command: object, **options: Any) -> Any:
        """``dispatch`` for asyncio code: runs in a worker thread, so the event loop never blocks."""
        return await asyncio.to_thread(self.dispatch, command, **options)

    # --- one command ---------------------------------------------------------------------------

    def _execute_within(
        self, registration: Registration, pipeline: Pipeline, attempts: int, traced: bool
    ) -> ExecutionResult:
        """``_execute`` bounded by the dispatch's timeout.

        A command runs on one of the application's command threads while the caller waits, so that the
        caller can stop waiting at the deadline even while an aggregate's ``execute`` is still busy. A
        command abandoned then never appends; one already appending is waited for, and its append is
        cancelled at the deadline if still running, so the caller learns whether it committed.
        """
        deadline = time.monotonic() + pipeline.timeout
        if pipeline.connection is not None or self._threads is None or on_command_thread():
            # A joined dispatch runs in the caller's transaction, on the caller's thread; a command
            # dispatched from inside another command's execute runs on its thread.
            return self._run_command(registration, pipeline, attempts, traced, deadline, None)
        job = Job(self._run_command, registration, pipeline, attempts, traced, deadline)
        self._threads.run(job)
        if not job.wait(deadline - time.monotonic()) and job.abandon():
            raise ExecutionTimeout(pipeline.command, pipeline.timeout)
        job.wait(None)
        result: ExecutionResult = job.outcome()
        return result

    def _run_command(
        self,
        registration: Registration,
        pipeline: Pipeline,
        attempts: int,
        traced: bool,
        deadline: float,
        job: Job | None,
    ) -> ExecutionResult:
        stream_id = pipeline.stream_id
        assert stream_id is not None, "ExtractIdentity sets the stream id"
        executing: set[str] = _thread.__dict__.setdefault("executing", set())
        if stream_id in executing:
            raise ReentrantDispatch(pipeline.command, stream_id)
        executing.add(stream_id)
        # No wait for one of the store's sessions outlasts the dispatch (a read's, the locked retry's).
        try:
            with waiting_until(deadline):
                if pipeline.connection is not None:
                    # Never the in-process lock: the caller's transaction may hold the stream's row
                    # already, and a thread holding the lock while waiting for that row would wait for
                    # ever.
                    return self._execute(
                        registration, pipeline, attempts, traced, deadline, job, pipeline.connection
                    )
                if not self._streams.acquire(stream_id, deadline - time.monotonic()):
                    raise ExecutionTimeout(pipeline.command, pipeline.timeout)
                try:
                    try:
                        return self._execute(registration, pipeline, attempts, traced, deadline, job, None)
                    except _Contended:
                        return self._execute_locked(registration, pipeline, attempts, traced, deadline, job)
                finally:
                    self._streams.release(stream_id)
        except PoolExhausted as exc:
            if time.monotonic() < deadline:
                raise
            raise ExecutionTimeout(pipeline.command, pipeline.timeout) from exc
        finally:
            executing.discard(stream_id)

    def _execute_locked(
        self,
        registration: Registration,
        pipeline: Pipeline,
        attempts: int,
        traced: bool,
        deadline: float,
        job: Job | None,
    ) -> ExecutionResult:
        """The command again, holding the stream's row lock: another process's writer won the
        optimistic race, and a busy writer that is always up to date could win it every time. With the
        lock no one appends meanwhile, so this attempt cannot be refused; its wait ends at the deadline."""
        stream_id = pipeline.stream_id
        assert stream_id is not None
        self.cache.evict(stream_id)  # read again inside the transaction
        try:
            with self.store.connection() as locked:
                self.store.lock_stream(stream_id, locked, deadline)
                result = self._execute(registration, pipeline, attempts, traced, deadline, job, locked)
        except DeadlineExceeded as exc:
            raise ExecutionTimeout(pipeline.command, pipeline.timeout) from exc
        except TransactionConflict as exc:
            raise TooManyAttempts(stream_id, attempts + 1) from exc
        self.cache.put(stream_id, result.aggregate_state, result.aggregate_version, registration.lifespan)
        return dataclasses.replace(result, attempts=result.attempts + 1)

    def _execute(
        self,
        registration: Registration,
        pipeline: Pipeline,
        attempts: int,
        traced: bool,
        deadline: float,
        job: Job | None,
        joined: psycopg.Connection | None,
    ) -> ExecutionResult:
        stream_id = pipeline.stream_id
        assert stream_id is not None, "ExtractIdentity sets the stream id"
        state, version, snapshot_at, fresh = self._load(registration.aggregate, stream_id, joined)
        conflicts = 0
        for attempt in itertools.count(1):
            if time.monotonic() > deadline:
                raise ExecutionTimeout(pipeline.command, pipeline.timeout)
            try:
                events = self._decide_traced(
                    registration, stream_id, state, pipeline.command, attempt, traced
                )
            except Exception:
                # A refusal on a cached state may be wrong: believe it only once the store agrees.
                newer = None if fresh else self._newer(state, version, stream_id, joined)
                if newer is None:
                    raise
                state, version, fresh = *newer, True
                continue
            if not events:
                newer = None if fresh else self._newer(state, version, stream_id, joined)
                if newer is None:
                    return ExecutionResult(stream_id, state, version, [], pipeline.metadata, attempt)
                state, version, fresh = *newer, True
                continue
            records = [
                self.mapper.to_event_data(
                    event,
                    metadata=pipeline.metadata,
                    causation_id=pipeline.causation_id,
                    correlation_id=pipeline.correlation_id,
                )
                for event in events
            ]
            if not job.appending() if job is not None else time.monotonic() > deadline:
                raise ExecutionTimeout(pipeline.command, pipeline.timeout)  # the caller has gone, or will
            try:
                new_version = self._append(stream_id, version, records, joined, deadline)
            except DeadlineExceeded as exc:
                raise ExecutionTimeout(pipeline.command, pipeline.timeout) from exc
            except (WrongExpectedVersion, TransactionConflict) as exc:
                if joined is not None and isinstance(exc, TransactionConflict):
                    raise  # only the caller can run its whole transaction again
                if job is not None:
                    job.deciding()
                conflicts += 1
                if conflicts > attempts:
                    self.cache.evict(stream_id)
                    raise TooManyAttempts(stream_id, attempts + 1) from exc
                if joined is None and isinstance(exc, WrongExpectedVersion):
                    raise _Contended from exc  # decide again holding the stream's lock
                _back_off(conflicts, deadline)
                # Someone else appended: catch up with what they wrote and decide again.
                state, version = self._catch_up(state, version, stream_id, joined)
                fresh = True
                continue
            state = self._apply(registration.aggregate, stream_id, state, events, committed=True)
            if joined is not None:
                # Not committed yet, and perhaps never: neither cached nor snapshotted.
                self.cache.evict(stream_id)
                return ExecutionResult(stream_id, state, new_version, events, pipeline.metadata, attempt)
            snapshotting = self.snapshotting.get(registration.aggregate)
            if snapshotting is not None and snapshotting.due(snapshot_at, new_version):
                snapshotting.record(self.store, state, stream_id, new_version)
                snapshot_at = new_version
            self.cache.put(stream_id, state, new_version, registration.lifespan, snapshot_at)
            return ExecutionResult(stream_id, state, new_version, events, pipeline.metadata, attempt)
        raise AssertionError("unreachable")

    def _decide_traced(
        self,
        registration: Registration,
        stream_id: str,
        state: Any,
        command: object,
        attempt: int,
        traced: bool,
    ) -> list[object]:
        if not traced:
            return self._decide(registration, state, command)
        with tracer.start_as_current_span(f"execute {registration.aggregate.__qualname__}") as span:
            span.set_attribute("tidings.stream_id", stream_id)
            span.set_attribute("tidings.attempt", attempt)
            events = self._decide(registration, state, command)
            span.set_attribute("tidings.events", len(events))
            return events

    def _newer(
        self, state: Any, version: int, stream_id: str, joined: psycopg.Connection | None
    ) -> tuple[Any, int] | None:
        """The state after the stream's events past ``version``, or None when there are none."""
        caught_up, at = self._catch_up(state, version, stream_id, joined)
        if at == version:
            return None
        if joined is None:
            self.cache.put(stream_id, caught_up, at)
        return caught_up, at

    def _append(
        self,
        stream_id: str,
        version: int,
        records: list[Any],
        joined: psycopg.Connection | None,
        deadline: float,
    ) -> int:
        if joined is None:
            return self.store.append_to_stream(stream_id, version, records, deadline=deadline)
        # A savepoint, so that a refused append (or one cancelled at the deadline) leaves the caller's
        # transaction usable.
        with joined.transaction():
            return self.store.append_to_stream(
                stream_id, version, records, connection=joined, deadline=deadline
            )

    def _apply(
        self, aggregate: type, stream_id: str, state: Any, events: list[object], committed: bool
    ) -> Any:
        for event in events:
            try:
                state = state.apply(event)
            except Exception as exc:
                self.cache.evict(stream_id)
                raise ExecutionFailed(aggregate, stream_id, event, committed) from exc
        return state

    @staticmethod
    def _decide(registration: Registration, state: Any, command: object) -> list[object]:
        if registration.handler is not None:
            return produced(registration.handler.handle(state, command))
        return produced(state.execute(command))

    def _load(
        self, aggregate: type, stream_id: str, joined: psycopg.Connection | None = None
    ) -> tuple[Any, int, int, bool]:
        """The aggregate's state, its stream version, the version of its latest snapshot, and whether
        the state was read from the store just now (not from the cache, which may be behind).

        In a joined transaction the stream is read there, so that what the transaction appended is seen.
        """
        cached = self.cache.get(stream_id)
        if cached is not None:
            # An append from a stale version is refused and caught up; a refusal or a no-op decided on
            # it is checked against the store before it is believed (``_execute``).
            return cached.state, cached.version, cached.snapshot_at, False
        snapshotting = self.snapshotting.get(aggregate)
        snapshot = (
            snapshotting.load(self.store, aggregate, stream_id, joined) if snapshotting is not None else None
        )
        state, snapshot_at = snapshot if snapshot is not None else (aggregate(), 0)
        state, version = self._catch_up(state, snapshot_at, stream_id, joined)
        return state, version, snapshot_at, True

    def _catch_up(
        self, state: Any, version: int, stream_id: str, joined: psycopg.Connection | None = None
    ) -> tuple[Any, int]:
        """``state`` after every event of the stream past ``version``."""
        while True:
            try:
                recorded = self.store.read_stream_forward(stream_id, version + 1, READ_BATCH, joined)
            except StreamNotFound:
                return state, version
            for event in recorded:
                state = self._apply(
                    type(state), stream_id, state, [self.mapper.event_of(event)], committed=False
                )
                version = event.stream_version
            if len(recorded) < READ_BATCH:
                return state, version

    def _halted(self, pipeline: Pipeline) -> Any:
        if isinstance(pipeline.response, BaseException):
            raise pipeline.response
        if pipeline.response is None:
            raise DispatchHalted(pipeline.command)
        return pipeline.response


_thread = threading.local()
"""Per thread: the streams whose commands it is executing (``executing``), to refuse re-entry."""


class _Contended(Exception):
    """An append lost the optimistic race to another process: the command runs again, locked."""


def _back_off(conflicts: int, deadline: float) -> None:
    """A random pause after the second conflict in a row and on, so that writers in several processes
    stop meeting each other in lockstep; never past ``deadline``."""
    if conflicts < 2:
        return
    pause = random.uniform(  # noqa: S311 - jitter, not a secret
        0, min(0.001 * 2 ** (conflicts - 2), 0.05)
    )
    time.sleep(max(0.0, min(pause, deadline - time.monotonic())))


def _overrides(middleware: Middleware, hook: str) -> bool:
    return getattr(type(middleware), hook) is not getattr(Middleware, hook)


_RETURNING = (None, "aggregate_state", "aggregate_version", "events", "execution_result")


def _answer(result: ExecutionResult, returning: Returning) -> Any:
    if returning == "aggregate_state":
        return result.aggregate_state
    if returning == "aggregate_version":
        return result.aggregate_version
    if returning == "events":
        return result.events
    if returning == "execution_result":
        return result
    return None
