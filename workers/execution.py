"""Handling one partition's messages: read, filter, call the handler, answer failures, record outcomes.

This is the runtime's part that knows nothing of Kafka's consumer: it is handed a partition's messages in
offset order and says how far it got. Per message, in order:

1. unreadable (headers, codec)       -> poison: parked (or dead-lettered) without retries
2. at or below the partition's last event_number -> already seen (a redelivery): nothing to do
3. at or below ``start_from``, or another stream than ``subscribe_to`` -> filtered
4. its key has parked events         -> parked behind them, so the key keeps its order
5. otherwise                         -> handled; a failure goes to the handler's ``error`` answer

A projection's messages are handled in one PostgreSQL transaction per batch with the checkpoint; a
failure rolls the batch back, commits the messages before the failed one on their own, and answers the
failed one alone. A plain handler's effects are its own: messages before a failure stay handled.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg
from opentelemetry import propagate, trace

from eventstore.acknowledgements import Acknowledgements
from eventstore.errors import EventStoreError, StoreUnavailable
from eventstore.postgres.store import PostgresEventStore
from tidings.errors import CodecError
from tidings.mapper import EventMapper
from workers import metrics
from workers.delivery import Delivery, EventMetadata
from workers.failure import Answered, ErrorAnswer, FailureContext, Park, Retry, Skip, Stop
from workers.handler import BatchFailed, EventHandler
from workers.identity import FOREIGN, StoreIdentity, placement
from workers.parking import BEHIND, ParkedEvent, ParkedEvents, orphaned
from workers.positions import Checkpoint, Positions, Subscription

if TYPE_CHECKING:
    import sqlalchemy as sa

    from workers.projection import Projection

__all__ = [
    "Abandoned",
    "Executor",
    "Fenced",
    "HandlerStopped",
    "PartitionState",
    "Shared",
    "connection_lost",
    "transient",
]

log = logging.getLogger("workers.handler")
tracer = trace.get_tracer("tidings.workers")


class HandlerStopped(Exception):
    """The handler's ``error`` answered ``Stop``: it consumes nothing more until restarted."""

    def __init__(self, handler: str, reason: str, delivery: Delivery) -> None:
        where = f"{delivery.topic}[{delivery.partition}]@{delivery.offset}"
        super().__init__(f"handler {handler!r} stopped at {where} (event {delivery.event_number}): {reason}")
        self.reason = reason
        self.delivery = delivery


class Fenced(Exception):
    """Another member wrote the partition's checkpoint since this one read it: this one stands down."""

    def __init__(self, handler: str, ps: PartitionState, found: Checkpoint | None) -> None:
        super().__init__(
            f"{handler!r} found {ps.topic}[{ps.partition}] at offset "
            f"{found.next_offset if found else 'none'}, not {ps.next_offset}: another member projects it"
        )
        self.found = found


class Abandoned(Exception):
    """The partition was revoked, or the worker is stopping: leave the rest for the next owner."""


class _Gone(Exception):
    """A parked event being retried is no longer this executor's to apply: another member claimed or
    handled it first, or an operator discarded it. Nothing of this attempt was applied."""


@dataclass(eq=False)
class PartitionState:
    """What a lane knows of one assigned partition."""

    topic: str
    partition: int
    last_event_number: int = 0
    parked_keys: set[bytes] = field(default_factory=set)
    parked_checked: dict[bytes, float] = field(default_factory=dict)
    revoked: threading.Event = field(default_factory=threading.Event)
    next_offset: int | None = None
    """The offset after the last message finished with (handled, skipped, parked...)."""


@dataclass
class Shared:
    """What every lane of one handler uses."""

    name: str
    store: PostgresEventStore
    mapper: EventMapper
    subscription: Subscription
    subscribe_to: str
    positions: Positions
    parked: ParkedEvents
    acknowledgements: Acknowledgements | None
    stopping: threading.Event
    dead_letter: Callable[[Delivery, str], None] | None = None
    engine: sa.Engine | None = None
    resync: Callable[[PartitionState], None] | None = None
    """Asks the consumer to read a partition's position again (a projection that was fenced)."""
    identity: StoreIdentity | None = None
    """What tells this store's messages from foreign ones (one per handler; made here if not given)."""
    application: str = ""
    """The name of the application the handler runs in (``EventMetadata.application``)."""


@dataclass
class _Staged:
    """Outcomes of a unit of work, applied to the partition once the unit commits."""

    last_event_number: int
    next_offset: int | None = None
    new_parked_keys: set[bytes] = field(default_factory=set)
    parks: list[tuple[Delivery, str]] = field(default_factory=list)
    dead_letters: list[tuple[Delivery, str]] = field(default_factory=list)
    acks: dict[str, list[int]] = field(default_factory=dict)
    """Per stream, each version finished with: every one is acknowledged by itself (out of stream
    order, a higher version says nothing of a lower one)."""
    handled: list[tuple[Any, EventMetadata]] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)
    taken: int | None = None
    """How many of the window's messages the unit took, when it ended before the window's end."""

    def count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1


class _StepFailed(Exception):
    def __init__(self, index: int, error: BaseException, event: Any, metadata: EventMetadata) -> None:
        super().__init__(str(error))
        self.index = index
        self.error = error
        self.event = event
        self.metadata = metadata


@dataclass(frozen=True, slots=True)
class _Decided:
    """An answer already given for a message (Skip or Park) to carry out in the next unit."""

    answer: Skip | Park


class Executor:
    """Handles messages of the partitions of one lane, with one handler instance."""

    def __init__(self, handler: EventHandler, shared: Shared) -> None:
        self.handler = handler
        self.shared = shared
        self.name = shared.name
        self._projection: Projection | None = None
        from workers.projection import Projection

        if isinstance(handler, Projection):
            self._projection = handler
        self._batches = type(handler).handles_batches() and self._projection is None
        self._per_event = getattr(handler, "transaction_per_event", False)
        self._project_batches = self._projection is not None and type(self._projection).projects_batches()
        self._async = inspect.iscoroutinefunction(handler.handle) or inspect.iscoroutinefunction(
            getattr(handler, "project", None)
        )
        self._loop = (
            asyncio.new_event_loop()
            if self._async or inspect.iscoroutinefunction(handler.handle_batch)
            else None
        )
        self._acknowledging = shared.acknowledgements is not None
        self._traced = False
        self._direct = False  # this unit calls the handler as it is: no event loop, no spans to make
        self._tracing_checked = 0.0
        self._events = {o: metrics.EVENTS.labels(self.name, o) for o in _OUTCOMES}
        self._handle_seconds = metrics.HANDLE_SECONDS.lane(self.name)
        self._end_to_end = metrics.END_TO_END.lane(self.name)
        self._identity = shared.identity or StoreIdentity(shared.store)
        self._foreign: dict[int, str] = {}
        """Offsets the consumer found foreign (global order decides before the merge), this call."""
        self._known: dict[int, str] = {}
        """The store's event_ids at the numbers of this call's redeliveries (asked in one query)."""
        self._seen: set[int] = set()
        self._checked = False
        """Whether the consumer confirmed this call's messages already (global order)."""
        self._head: int | None = None
        """The store's head as read once for this call (None: read when needed)."""

    def close(self) -> None:
        if self._loop is not None:
            self._loop.close()

    # --- entry points ------------------------------------------------------------------------------

    def process(
        self,
        ps: PartitionState,
        deliveries: list[Delivery],
        foreign: dict[int, str] | None = None,
        seen: set[int] | None = None,
    ) -> None:
        """Handle ``deliveries`` (one partition, offset order); ``ps.next_offset`` says how far it got.
        ``foreign``: offsets already found not to be this store's events, and why; ``seen``: offsets
        whose event the global-order merge handed on before (a redelivery, or a copy on another
        partition).

        Raises:
            HandlerStopped: the handler answered Stop; ``ps.next_offset`` stays before that message.
        """
        self._foreign, self._seen = foreign or {}, seen or set()
        self._checked = foreign is not None
        try:
            self._known = self._redelivered(ps, deliveries)
            self._process(ps, deliveries)
        except Fenced as fenced:
            # Another member projects this partition now: drop it here, and read its position again.
            log.warning("stood down from a partition", extra={"handler": self.name, "reason": str(fenced)})
            ps.revoked.set()
            if self.shared.resync is not None:
                self.shared.resync(ps)
        finally:
            # Offsets of this call only, not of a parked retry's.
            self._foreign, self._seen, self._known, self._head, self._checked = {}, set(), {}, None, False

    def _redelivered(self, ps: PartitionState, deliveries: list[Delivery]) -> dict[int, str]:
        """The store's event_ids at the messages' numbers, in one query per call: a message moves the
        partition's position only if it is the event the store numbered so (decoding is not enough: a
        forged well-formed message would move the position past good events, which would then be
        skipped as seen), and a redelivery is skipped only if it is the event handled there. Nothing
        to ask when the consumer confirmed every message already (global order: ``foreign`` given)."""
        if self._checked:
            return {}
        numbers = [d.event_number for d in deliveries if not d.error]
        known = self._identity.event_ids(numbers) if numbers else {}
        self._head = self._identity.head(max(numbers, default=0), held=max(known, default=0))
        return known

    def _process(self, ps: PartitionState, deliveries: list[Delivery]) -> None:
        start = 0
        limit = self._window_end(0, deliveries)
        decided: dict[int, _Decided] = {}
        while start < len(deliveries):
            if ps.revoked.is_set() or self.shared.stopping.is_set():
                return
            staged = _Staged(ps.last_event_number)
            try:
                self._unit(ps, deliveries[start:limit], staged, decided)
            except _StepFailed as failed:
                if self._projection is not None and failed.index > 0:
                    # Rolled back: commit what came before the failure on its own, then answer it alone.
                    limit = start + failed.index
                    continue
                if self._projection is None:
                    self._commit(ps, staged)  # what the handler did before the failure stays done
                    start += failed.index
                failing = deliveries[start]

                def retry(failing: Delivery = failing) -> None:
                    self._unit(ps, [failing], _Staged(ps.last_event_number), {})

                try:
                    answer = self._answer(ps, failing, failed, retry)
                except Abandoned:
                    return
                if answer is None:
                    start += 1
                else:
                    decided[failing.offset] = answer
                limit = self._window_end(start, deliveries)
                continue
            except Abandoned:
                return
            start = limit if staged.taken is None else start + staged.taken
            limit = self._window_end(start, deliveries)

    def _window_end(self, start: int, deliveries: list[Delivery]) -> int:
        """Where the unit of work starting at ``start`` ends: the whole poll, or one event for a process
        manager, whose transactions lock the instances and aggregates they touch until they commit (a
        poll's worth of locks held at once made concurrent lanes wait on, and deadlock with, each other)."""
        if self._per_event:
            return min(start + 1, len(deliveries))
        return len(deliveries)

    def drain(self, ps: PartitionState, key: bytes) -> None:
        """Hand a released key's parked events back to the handler, oldest first, then run it live.

        One process at a time drains a key (``ParkedEvents.draining``): a member that lost the partition
        without noticing yet leaves it to the owner. Each event's row is its fence besides
        (``_parked_unit``, ``_finish_parked``), for a discard that comes meanwhile.
        """
        parked = self.shared.parked.of_key(self.name, ps.topic, ps.partition, key)
        if not parked:
            ps.parked_keys.discard(key)
            return
        if not any(event.released for event in parked) and not orphaned(parked):
            ps.parked_keys.add(key)
            return
        with self.shared.parked.draining(self.name, ps.topic, ps.partition, key) as mine:
            if not mine:
                log.info(
                    "another process retries this key's parked events; leaving them to it",
                    extra={"handler": self.name, "key": _text(key)},
                )
                return
            # Read again under the lock: the other process may have handled some meanwhile.
            parked = self.shared.parked.of_key(self.name, ps.topic, ps.partition, key)
            if any(event.released for event in parked) or orphaned(parked):
                self._drain(ps, key, parked)
            elif parked:
                ps.parked_keys.add(key)
            else:
                ps.parked_keys.discard(key)

    def _drain(self, ps: PartitionState, key: bytes, parked: list[ParkedEvent]) -> None:
        foreign_left = False
        for event in parked:
            if ps.revoked.is_set() or self.shared.stopping.is_set():
                return
            try:
                parked_again = self._retry_parked(ps, event.id, event.delivery)
            except Abandoned:
                return
            except _Gone:
                # Discarded by an operator meanwhile: nothing of it was applied. The rest of the key
                # is read again at the next look at released keys.
                log.info(
                    "a parked event was discarded while it was being retried; not applied",
                    extra={"handler": self.name, "key": _text(key), "parked_id": event.id},
                )
                return
            if parked_again:
                if event.error.startswith(FOREIGN):
                    # Not an event of the key: it holds nothing back (it stays parked for the
                    # operator), and the key's events after it are handed back all the same.
                    foreign_left = True
                    continue
                # It failed again: what is left of the key waits for the next release.
                with self.shared.store.connection() as conn:
                    self.shared.parked.hold(conn, self.name, ps.topic, ps.partition, key)
                return
        if foreign_left:
            # Only foreign messages are left: not retried again at every look at released keys.
            with self.shared.store.connection() as conn:
                self.shared.parked.hold(conn, self.name, ps.topic, ps.partition, key)
        ps.parked_keys.discard(key)
        log.info("released parked events handled", extra={"handler": self.name, "key": _text(key)})

    # --- units of work -----------------------------------------------------------------------------

    def _unit(
        self, ps: PartitionState, window: list[Delivery], staged: _Staged, decided: dict[int, _Decided]
    ) -> None:
        self._direct = self._loop is None and not self._tracing()
        if self._projection is not None:
            self._projection_unit(ps, window, staged, decided)
        else:
            self._handler_unit(ps, window, staged, decided)
            self._commit(ps, staged)

    def _handler_unit(
        self, ps: PartitionState, window: list[Delivery], staged: _Staged, decided: dict[int, _Decided]
    ) -> None:
        batch: list[tuple[int, Delivery, Any, EventMetadata]] = []
        handle = self.handler.handle
        revoked, stopping = ps.revoked, self.shared.stopping
        for index, delivery in enumerate(window):
            if revoked.is_set() or stopping.is_set():
                break  # what is done so far is committed; the rest is for the next owner or run
            step = self._classify(ps, staged, delivery, decided)
            if step is None:
                continue
            event, metadata = step
            if self._batches:
                batch.append((index, delivery, event, metadata))
                continue
            try:
                self._call(handle, (event, metadata), index, event, metadata)
            except _StepFailed:
                # The failed message is not finished with: the position stays before it.
                staged.next_offset = delivery.offset
                staged.last_event_number = delivery.event_number - 1
                raise
            self._handled(staged, delivery, event, metadata)
        if batch:
            self._call_batch(staged, batch)

    def _projection_unit(
        self, ps: PartitionState, window: list[Delivery], staged: _Staged, decided: dict[int, _Decided]
    ) -> None:
        projection = self._projection
        assert projection is not None
        assert self.shared.engine is not None
        last: Delivery | None = None
        batch: list[tuple[int, Delivery, Any, EventMetadata]] = []
        projection._unit_started()
        # A projection's transaction has written, so it holds the cluster-wide numbering horizon until
        # it commits: a unit takes events only while it is younger than UNIT_SECONDS (or half the
        # store's idle bound, if less), and the rest of the poll goes in the next one. A busy project()
        # is not ended by the session bounds (it is neither idle nor one long statement).
        config = self.shared.store.config
        deadline = time.monotonic() + min(UNIT_SECONDS, config.idle_in_transaction_timeout / 2)
        with self.shared.engine.begin() as connection:
            raw: psycopg.Connection = connection.connection.driver_connection  # type: ignore[assignment]
            self._fence(raw, ps)
            for index, delivery in enumerate(window):
                if index and not self._project_batches and time.monotonic() >= deadline:
                    staged.taken = index
                    break
                step = self._classify(ps, staged, delivery, decided)
                last = delivery
                if step is None:
                    continue
                event, metadata = step
                if self._project_batches:
                    batch.append((index, delivery, event, metadata))
                    continue
                self._call(projection.project, (event, metadata, connection), index, event, metadata)
                self._handled(staged, delivery, event, metadata)
            if batch:
                self._project_batch(projection, connection, staged, batch)
            if last is not None:
                self._record(raw, staged)
                self.shared.positions.save_checkpoint(
                    raw,
                    self.name,
                    ps.topic,
                    ps.partition,
                    Checkpoint(last.offset + 1, staged.last_event_number),
                )
        self._applied(ps, staged)
        self._after_update(staged)

    def _after_update(self, staged: _Staged) -> None:
        """The projection's hook, after its writes committed: a failure here cannot undo them, so it is
        logged and counted, and projecting goes on."""
        assert self._projection is not None
        self._projection._unit_committed()
        for event, metadata in staged.handled:
            try:
                self._projection.after_update(event, metadata)
            except Exception:
                metrics.ERRORS.labels(self.name, "after_update").inc()
                log.exception(
                    "after_update failed (the event's writes are committed)",
                    extra={"handler": self.name, "event_number": metadata.event_number},
                )

    def _fence(self, raw: psycopg.Connection, ps: PartitionState) -> None:
        """Make sure this process still owns the partition's checkpoint, for the rest of the transaction.

        A member that lost its partition without noticing (cut off from Kafka, or slower than a
        revocation) must not write effects the new owner already wrote: the checkpoint it finds must be
        the one it last wrote (or read on assignment). A lock on the (handler, partition) serialises two
        such writers, so the second sees the first's checkpoint and stands down.
        """
        found = self.shared.positions.lock_checkpoint(raw, self.name, ps.topic, ps.partition)
        if (found.next_offset if found is not None else None) != ps.next_offset:
            raise Fenced(self.name, ps, found)

    def _project_batch(
        self,
        projection: Projection,
        connection: sa.Connection,
        staged: _Staged,
        batch: list[tuple[int, Delivery, Any, EventMetadata]],
    ) -> None:
        items = [(event, metadata) for _, _, event, metadata in batch]
        try:
            self._call(projection.project_batch, (items, connection), batch[0][0], *items[0])
        except _StepFailed as failed:
            # The transaction rolls back: name the failed event, so that those before it go alone.
            at = failed.error.index if isinstance(failed.error, BatchFailed) else 0
            at = min(max(at, 0), len(batch) - 1)
            cause = failed.error.error if isinstance(failed.error, BatchFailed) else failed.error
            index, _, event, metadata = batch[at]
            raise _StepFailed(index, cause, event, metadata) from cause
        for _, delivery, event, metadata in batch:
            self._handled(staged, delivery, event, metadata)

    def _commit(self, ps: PartitionState, staged: _Staged) -> None:
        """A plain handler's outcomes: parked events and acknowledgements, then its position."""
        if staged.parks or staged.acks or staged.dead_letters:
            with self.shared.store.connection() as conn:
                self._record(conn, staged)
        self._applied(ps, staged)

    def _record(self, conn: psycopg.Connection, staged: _Staged) -> None:
        for delivery, reason in staged.parks:
            self.shared.parked.park(conn, self.name, delivery, reason)
        if staged.acks and self.shared.acknowledgements is not None:
            self.shared.acknowledgements.acknowledge_many(self.name, staged.acks.items(), conn)
        for delivery, reason in staged.dead_letters:
            assert self.shared.dead_letter is not None
            self.shared.dead_letter(delivery, reason)

    def _applied(self, ps: PartitionState, staged: _Staged) -> None:
        ps.last_event_number = staged.last_event_number
        ps.parked_keys |= staged.new_parked_keys
        if staged.next_offset is not None:
            ps.next_offset = staged.next_offset
        for outcome, count in staged.outcomes.items():
            self._events[outcome].inc(count)
        staged.parks.clear()
        staged.acks.clear()
        staged.dead_letters.clear()
        staged.outcomes.clear()

    # --- one message -------------------------------------------------------------------------------

    def _classify(
        self, ps: PartitionState, staged: _Staged, delivery: Delivery, decided: dict[int, _Decided]
    ) -> tuple[Any, EventMetadata] | None:
        """The event and metadata to handle, or None when the message is finished with otherwise.

        The partition's position (``last_event_number``) moves only on a message whose identity holds:
        a foreign one is parked without moving it, so that no later good event is taken as seen.
        """
        staged.next_offset = delivery.offset + 1
        if delivery.error:
            self._foreign_message(staged, delivery, f"{FOREIGN}: unreadable ({delivery.error})")
            return None
        number = delivery.event_number
        if self._checked:
            foreign = self._foreign.get(delivery.offset)
        else:
            store, placed = placement(delivery.headers)
            foreign = self._identity.foreign(
                number, store, self._head, placed=placed, partition=delivery.partition
            )
        if foreign is not None:
            self._foreign_message(staged, delivery, foreign)
            return None
        # Seen by the merge: handed on before, unless it lies before start_from (the merge starts there).
        seen = delivery.offset in self._seen and number > self.shared.subscription.start_after
        if number <= staged.last_event_number or seen:
            if not self._same_as_handled(delivery) or not self._same_data(delivery):
                self._foreign_message(
                    staged,
                    delivery,
                    f"{FOREIGN}: it reuses event_number {number}, which is another event "
                    f"({self._known.get(number)}, or other bytes under its headers) already handled",
                )
                return None
            staged.count("already_seen")
            return None
        if not self._same_as_handled(delivery):
            # Not the event the store numbered so: it must not move the partition's position.
            self._foreign_message(
                staged,
                delivery,
                f"{FOREIGN}: the store holds event {self._known.get(number)} at event_number {number}, "
                f"not {delivery.event_id_text}",
            )
            return None
        subscription = self.shared.subscription
        if number <= subscription.start_after or (
            self.shared.subscribe_to != "all" and delivery.stream_id != self.shared.subscribe_to
        ):
            staged.last_event_number = number
            staged.count("filtered")
            self._acknowledge(staged, delivery)
            return None
        answer = decided.pop(delivery.offset, None) if decided else None
        if answer is not None:
            staged.last_event_number = number
            if isinstance(answer.answer, Skip):
                staged.count("skipped")
                self._acknowledge(staged, delivery)
            else:
                self._poison(staged, delivery, answer.answer.reason or "parked by the error policy", None)
            return None
        if (staged.new_parked_keys or ps.parked_keys) and (
            delivery.key in staged.new_parked_keys
            or (delivery.key in ps.parked_keys and self._still_parked(ps, delivery.key))
        ):
            staged.last_event_number = number
            staged.parks.append((delivery, BEHIND))
            staged.count("parked")
            return None
        try:
            event, user_metadata = self.shared.mapper.from_recorded(delivery)
        except CodecError as exc:
            found = self._identity.event_ids([number]).get(number)
            if found is None or not StoreIdentity.same_event(found, delivery.event_id_text):
                # Not the event the store holds at that number: garbage under a plausible number.
                held = f"event {found}" if found else "no event"
                self._foreign_message(
                    staged,
                    delivery,
                    f"{FOREIGN}: it does not decode ({exc}) and the store holds {held} there",
                )
                return None
            staged.last_event_number = number  # this store's own event, which cannot be read: poison
            self._poison(staged, delivery, f"cannot decode: {exc}", "undecodable")
            return None
        staged.last_event_number = number
        return event, EventMetadata(
            delivery, self.name, user_metadata, self.handler.state, self.shared.application
        )

    def _same_data(self, delivery: Delivery) -> bool:
        """Whether a repeat's bytes are its event's: a handled event's headers over other bytes are
        not a redelivery (one query per repeat; a deleted event cannot say otherwise)."""
        held = self._identity.data_digest(delivery.event_number)
        return held is None or held == hashlib.sha256(delivery.value).digest()

    def _same_as_handled(self, delivery: Delivery) -> bool:
        """Whether the message is the event the store holds at its number (asked in one query per call
        of ``process``; one that was not asked then, as a parked event's retry, is asked alone)."""
        if self._checked:
            return True  # the consumer confirmed its event_id, for this poll's every message
        number = delivery.event_number
        if number not in self._known:
            self._known.update(self._identity.event_ids([number]))
        return StoreIdentity.same_event(self._known.get(number), delivery.event_id_text)

    def _foreign_message(self, staged: _Staged, delivery: Delivery, reason: str) -> None:
        """Park (or dead-letter) a message that is not this store's event; it moves no position and
        holds no key back (it is no event of its key)."""
        self._poison(staged, delivery, reason, "foreign", holds_key=False)

    def _still_parked(self, ps: PartitionState, key: bytes) -> bool:
        """Whether the key still has parked events: an operator may have discarded them meanwhile.

        Asked of PostgreSQL at most once a second per key, so a busy parked key costs no query per event.
        """
        now = time.monotonic()
        if now - ps.parked_checked.get(key, 0.0) < 1.0:
            return True
        ps.parked_checked[key] = now
        # A foreign message parked under the key is no event of it: it holds nothing back.
        parked = self.shared.parked.of_key(self.name, ps.topic, ps.partition, key)
        if any(not event.error.startswith(FOREIGN) for event in parked):
            return True
        ps.parked_keys.discard(key)
        return False

    def _poison(
        self,
        staged: _Staged,
        delivery: Delivery,
        reason: str,
        error_kind: str | None,
        *,
        holds_key: bool = True,
    ) -> None:
        if error_kind is not None:
            metrics.ERRORS.labels(self.name, error_kind).inc()
        where = {
            "handler": self.name,
            "topic": delivery.topic,
            "partition": delivery.partition,
            "offset": delivery.offset,
            "event_number": delivery.event_number,
            "reason": reason,
        }
        if type(self.handler).on_poison == "dead_letter" and self.shared.dead_letter is not None:
            staged.dead_letters.append((delivery, reason))
            staged.count("dead_lettered")
            log.error("event sent to the dead-letter topic", extra=where)
        else:
            staged.parks.append((delivery, reason))
            staged.count("parked")
            if not holds_key:
                log.error("message parked: it is not an event of this store", extra=where)
                return
            staged.new_parked_keys.add(delivery.key)
            log.error("event parked; later events of its key wait behind it", extra=where)

    def _handled(self, staged: _Staged, delivery: Delivery, event: Any, metadata: EventMetadata) -> None:
        outcomes = staged.outcomes
        outcomes["handled"] = outcomes.get("handled", 0) + 1
        if self._acknowledging:
            self._acknowledge(staged, delivery)
        if self._projection is not None:
            staged.handled.append((event, metadata))
        self._end_to_end.observe(max(0.0, time.time() - delivery.created_at.timestamp()))

    def _acknowledge(self, staged: _Staged, delivery: Delivery) -> None:
        if self._acknowledging and not delivery.error:
            staged.acks.setdefault(delivery.stream_id, []).append(delivery.stream_version)

    # --- calling the handler -----------------------------------------------------------------------

    def _call(
        self,
        function: Callable[..., Any],
        args: tuple[Any, ...],
        index: int,
        event: Any,
        metadata: EventMetadata,
    ) -> None:
        """Call the handler's ``function(*args)`` for the event at ``index`` (a batch's first); a failure
        raises ``_StepFailed`` naming it."""
        started = time.perf_counter()
        try:
            if self._direct:
                result = function(*args)
            elif self._tracing():
                with self._span(metadata):
                    result = self._run(function, args)
            else:
                result = self._run(function, args)
        except Exception as exc:
            if self._projection is not None and transient(exc):
                # PostgreSQL went away, or this transaction lost a deadlock or timed out: the unit is
                # rolled back and done again, never counted against the event.
                raise
            metrics.ERRORS.labels(self.name, "handler").inc()
            raise _StepFailed(index, exc, event, metadata) from exc
        finally:
            self._handle_seconds.observe(time.perf_counter() - started)
        if result is not None:
            self.handler.state = result

    def _call_batch(self, staged: _Staged, batch: list[tuple[int, Delivery, Any, EventMetadata]]) -> None:
        items = [(event, metadata) for _, _, event, metadata in batch]
        try:
            self._call(self.handler.handle_batch, (items,), batch[0][0], *items[0])
        except _StepFailed as failed:
            at = failed.error.index if isinstance(failed.error, BatchFailed) else 0
            at = min(max(at, 0), len(batch) - 1)
            cause = failed.error.error if isinstance(failed.error, BatchFailed) else failed.error
            for _, delivery, event, metadata in batch[:at]:
                self._handled(staged, delivery, event, metadata)
            staged.next_offset = batch[at][1].offset
            staged.last_event_number = batch[at][1].event_number - 1
            index, _, event, metadata = batch[at]
            raise _StepFailed(index, cause, event, metadata) from cause
        for _, delivery, event, metadata in batch:
            self._handled(staged, delivery, event, metadata)

    def _run(self, function: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        result = function(*args)
        if result is not None and inspect.isawaitable(result):
            assert self._loop is not None
            result = self._loop.run_until_complete(result)
        return result

    def _tracing(self) -> bool:
        """Whether an OpenTelemetry SDK is installed; asked again every second (it may come later).

        Without one, no span work at all: it was a third of a no-op handler's own cost.
        """
        now = time.monotonic()
        if now >= self._tracing_checked:
            self._traced = _tracing()
            self._tracing_checked = now + 1.0
        return self._traced

    @contextlib.contextmanager
    def _span(self, metadata: EventMetadata) -> Iterator[None]:
        span = tracer.start_span(
            f"handle {metadata.event_type}",
            context=propagate.extract({k: str(v) for k, v in metadata.metadata.items() if k in _TRACE_KEYS}),
            kind=trace.SpanKind.CONSUMER,
        )
        if not span.is_recording():
            yield
            return
        span.set_attribute("tidings.handler", self.name)
        span.set_attribute("tidings.event_number", metadata.event_number)
        span.set_attribute("tidings.stream_id", metadata.stream_id)
        with trace.use_span(span, end_on_exit=True):
            yield

    # --- failures ----------------------------------------------------------------------------------

    def _answer(
        self, ps: PartitionState, delivery: Delivery, failed: _StepFailed, retry: Callable[[], None]
    ) -> _Decided | None:
        """Ask ``error`` until the message is handled (None), or skipped or parked (the decision).

        Raises:
            HandlerStopped: the answer was Stop.
            Abandoned: the partition was revoked, or the worker stops, while waiting to retry.
        """
        attempt = 1
        context: dict[str, Any] = {}
        error = failed.error
        while True:
            # A failure the handler answered itself (a process manager's failed command) is carried out
            # as answered: asking ``error`` again about the event would change what the answer means.
            answered = isinstance(error, Answered)
            if isinstance(error, Answered):
                answer = error.answer
            else:
                situation = FailureContext.of(error, attempt, context, failed.metadata, self.handler.state)
                answer = self._ask(error, failed.event, situation)
            log.warning(
                "handling failed",
                extra={
                    "handler": self.name,
                    "event_number": delivery.event_number,
                    "attempt": attempt,
                    "error": str(error) if answered else f"{type(error).__name__}: {error}",
                    "answer": type(answer).__name__,
                },
            )
            if isinstance(answer, Stop):
                raise HandlerStopped(self.name, answer.reason or str(error), delivery)
            if isinstance(answer, Skip | Park):
                return _Decided(answer)
            # The unit that failed has rolled back: no transaction stays open while waiting.
            self._wait(ps, answer.delay)
            if not answered:
                context = answer.context
                attempt += 1
            try:
                retry()
                return None
            except _StepFailed as again:
                error = again.error

    def _ask(self, error: BaseException, event: Any, context: FailureContext) -> ErrorAnswer:
        try:
            answer: object = self.handler.error(error, event, context)
        except Exception as exc:
            log.exception(
                "the handler's error callback failed; parking the event", extra={"handler": self.name}
            )
            return Park(f"error callback failed: {type(exc).__name__}: {exc}")
        if not isinstance(answer, Retry | Skip | Park | Stop):
            return Park(f"error callback answered {answer!r}, not Retry, Skip, Park or Stop")
        return answer

    def _wait(self, ps: PartitionState, delay: float) -> None:
        deadline = time.monotonic() + delay
        while True:
            if ps.revoked.is_set() or self.shared.stopping.is_set():
                raise Abandoned
            left = deadline - time.monotonic()
            if left <= 0:
                return
            ps.revoked.wait(min(left, 0.1))

    def _retry_parked(self, ps: PartitionState, parked_id: int, delivery: Delivery) -> bool:
        """Handle one released parked event and remove it, unless it is parked again (returns True).

        Raises:
            _Gone: (a projection) an operator discarded it meanwhile: nothing of it was applied.
        """
        # A scratch state: the event is neither "already seen" nor "behind a parked event" this time.
        scratch = PartitionState(ps.topic, ps.partition, revoked=ps.revoked)
        decided: dict[int, _Decided] = {}
        while True:
            staged = _Staged(0)
            try:
                return self._parked_unit(scratch, parked_id, delivery, staged, decided)
            except _StepFailed as failed:

                def retry() -> None:
                    self._parked_unit(scratch, parked_id, delivery, _Staged(0), {})

                answer = self._answer(scratch, delivery, failed, retry)
                if answer is None:
                    return False
                decided[delivery.offset] = answer

    def _parked_unit(
        self,
        ps: PartitionState,
        parked_id: int,
        delivery: Delivery,
        staged: _Staged,
        decided: dict[int, _Decided],
    ) -> bool:
        """One attempt at a parked event; its row goes in the same transaction as a projection's writes.

        Raises:
            _Gone: (a projection) the row is gone once locked: nothing of this attempt commits.
        """
        projection = self._projection
        self._direct = self._loop is None and not self._tracing()
        if projection is None:
            self._handler_unit(ps, [delivery], staged, decided)
            with self.shared.store.connection() as conn:
                parked_again = self._finish_parked(conn, parked_id, staged)
            self._applied(ps, staged)
            return parked_again
        assert self.shared.engine is not None
        projection._unit_started()
        with self.shared.engine.begin() as connection:
            raw: psycopg.Connection = connection.connection.driver_connection  # type: ignore[assignment]
            # The fence: locked before anything is projected, so that a second member (or a discard)
            # waits for this transaction, then finds the row gone and applies nothing.
            if not self.shared.parked.lock(raw, parked_id):
                raise _Gone
            step = self._classify(ps, staged, delivery, decided)
            if step is not None:
                event, metadata = step
                self._call(projection.project_batch, ([(event, metadata)], connection), 0, event, metadata)
                self._handled(staged, delivery, event, metadata)
            parked_again = self._finish_parked(raw, parked_id, staged)
        self._applied(ps, staged)
        self._after_update(staged)
        return parked_again

    def _finish_parked(self, conn: psycopg.Connection, parked_id: int, staged: _Staged) -> bool:
        parked_again = bool(staged.parks)
        if not parked_again and not self.shared.parked.remove(conn, parked_id):
            if self._projection is not None:
                raise _Gone  # cannot happen under the row's lock; rolled back all the same
            # A plain handler's claimed row, discarded by an operator while the handler ran: its
            # effects are done and cannot be taken back. Said loudly, so the discard is not believed.
            metrics.ERRORS.labels(self.name, "parked_discarded").inc()
            log.warning(
                "a parked event was discarded while the handler retried it: the handler has handled it",
                extra={"handler": self.name, "parked_id": parked_id},
            )
        for _, reason in staged.parks:  # parked again: its row is already there, and says why now
            self.shared.parked.parked_again(conn, parked_id, reason)
        staged.parks.clear()
        self._record(conn, staged)
        return parked_again


UNIT_SECONDS = 1.0
"""The longest a projection's unit of work takes events before it commits (see ``_projection_unit``)."""

_OUTCOMES = ("handled", "skipped", "parked", "dead_lettered", "already_seen", "filtered")
_TRACE_KEYS = ("traceparent", "tracestate")


def _tracing() -> bool:
    """Whether an OpenTelemetry SDK is installed (it may be installed after the worker started)."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider | trace.NoOpTracerProvider)


_CONNECTION_STATES = ("57P01", "57P02", "57P03")  # admin shutdown, crash shutdown, cannot connect now


def connection_lost(error: BaseException) -> bool:
    """Whether ``error`` says PostgreSQL is away (not that a statement was wrong): wait, then retry."""
    import sqlalchemy.exc

    if isinstance(error, StoreUnavailable):
        return True
    if isinstance(error, sqlalchemy.exc.DBAPIError):
        if error.connection_invalidated:
            return True
        error = error.orig if error.orig is not None else error
    if isinstance(error, psycopg.InterfaceError):
        return True
    if isinstance(error, psycopg.OperationalError):
        state = error.sqlstate
        return state is None or state.startswith("08") or state in _CONNECTION_STATES
    return False


def transient(error: BaseException) -> bool:
    """Whether ``error`` is worth waiting out: PostgreSQL away, a serialisation failure or deadlock, a
    statement timeout. Anything else from PostgreSQL (bad SQL, bad data) is a bug to report."""
    import sqlalchemy.exc

    if connection_lost(error):
        return True
    if isinstance(error, sqlalchemy.exc.DBAPIError) and error.orig is not None:
        error = error.orig
    if isinstance(error, EventStoreError) and isinstance(error.__cause__, psycopg.Error):
        error = error.__cause__  # the store's own error, for a deadlock its append lost (say)
    return isinstance(error, psycopg.OperationalError)


def _text(key: bytes) -> str:
    return key.decode("utf-8", "backslashreplace")
