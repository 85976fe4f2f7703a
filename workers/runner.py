"""HandlerRunner: one handler's Kafka consumer, its lanes, and its place in the consumer group.

The consumer thread polls and never blocks on handling: it hands each partition's messages to the lane
that owns the partition (``concurrency`` lanes, each with its own handler instance) and stores the
offsets lanes report finished. A partition belongs to one lane, so a key's events are handled in order
whatever the concurrency; different partitions run in parallel.

- **Offsets** are stored only once a message is finished with (handled, skipped, parked), and committed
  by librdkafka's auto-commit, synchronously on revocation, and on close.
- **Assignment** (cooperative-sticky): a projection's partitions start at its PostgreSQL checkpoints,
  set in the assign callback before anything is fetched; other handlers resume at the group's committed
  offsets. A partition with neither starts at its beginning, filtered by ``start_from``; if retention
  already deleted its first events and the handler needs them (``start_from = "origin"``), the handler
  stops with a clear error instead of silently starting later.
- **Revocation** waits for the lane to finish (or abandon, mid-retry) the partition's message in flight,
  commits what is finished, then lets the partition go; queued messages are dropped for the next owner.
- **Flow control** pauses a partition whose lane is behind (or waiting to retry), and keeps polling so
  the member stays in the group (``max.poll.interval.ms``).
"""

from __future__ import annotations

import functools
import itertools
import logging
import operator
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from eventstore.acknowledgements import Acknowledgements, Carried
from eventstore.kafka_tail import (
    EVENT_ID_HEADER,
    EVENT_NUMBER_HEADER,
    PREVIOUS_HEADER,
    parse_previous,
)
from eventstore.leadership import Leadership
from eventstore.relay import Relay, RelayConfig
from eventstore.routing import Routing
from tidings.dispatch import Application
from workers import metrics
from workers.app import WorkerApp, WorkerConfig
from workers.delivery import Delivery, EventMetadata, delivery_of
from workers.execution import Executor, HandlerStopped, PartitionState, Shared, connection_lost, transient
from workers.global_order import GlobalOrder, Ordered
from workers.handler import EventHandler, ordering_of, validate_handler
from workers.handler_states import HandlerStates
from workers.identity import FOREIGN, StoreIdentity, placement
from workers.parking import ParkedEvents
from workers.positions import Positions, StartFromFixed, Subscription
from workers.process_instances import ProcessInstances
from workers.process_manager import ProcessManager
from workers.projection import Projection
from workers.scheduling import ScheduledCommands
from workers.topics import MAX_REASON_BYTES, dead_letter_limits, ensure_topic_limits, ensure_topics

__all__ = ["HandlerRunner", "HandlerStatus", "HistoryUnavailable", "handler_topics"]

log = logging.getLogger("workers.runner")

PAUSE_AT = 10_000
"""Messages queued for one partition's lane before it may be paused (the least, whatever the pace)."""
PAUSE_SECONDS = 5.0
RESUME_SECONDS = 2.0
MIN_RATE = 100.0
PARKED_POLL_SECONDS = 1.0
LAG_POLL_SECONDS = 5.0
ACK_EXPIRY_SECONDS = 60.0
STANDBY_POLL_SECONDS = 1.0
"""How often a global-order standby tries to become the handler's active consumer."""
LEADERSHIP_CHECK_SECONDS = 1.0
METADATA_SECONDS = 5.0
"""In global order, how often the topics' partitions are read again (a topic grown under the handler)."""
UNPROVEN_LOG_SECONDS = 30.0
"""In global order, how often a wait for messages without proof of their order is said again."""
WATERMARK_SECONDS = 30.0  # how long a newly assigned partition may go without an answer on its offsets


T = TypeVar("T")


class _Stopping(Exception):
    """Asked to stop while waiting for PostgreSQL."""


class HistoryUnavailable(Exception):
    """A partition no longer holds the events a handler starting from the origin needs."""


@dataclass(slots=True)
class HandlerStatus:
    """Where a runner is: ``starting``, ``running``, ``stopped`` (by its error policy) or ``failed``."""

    handler: str
    state: str = "starting"
    reason: str = ""
    assigned: list[str] = field(default_factory=list)

    ordering: str = "per_key"
    leading: bool | None = None
    """In global order: whether this process is the handler's active consumer (None: per key)."""

    @property
    def ready(self) -> bool:
        # A standby is healthy: it is what takes over when the active consumer dies.
        return self.state in ("running", "standby")


class _Rate:
    """Messages a partition's lane gets through per second (the slowest recent lane pace, roughly)."""

    def __init__(self, window: float = 1.0) -> None:
        self._window = window
        self._started = time.monotonic()
        self._count = 0
        self._last = 0.0

    def add(self, count: int) -> None:
        self._count += count
        now = time.monotonic()
        if now - self._started >= self._window:
            self._last = self._count / (now - self._started)
            self._started, self._count = now, 0

    def per_second(self) -> float:
        return self._last


_Where = tuple[tuple[str, int], int]
"""A message's place: (topic, partition) and offset."""


@dataclass(slots=True)
class _Run:
    """Messages of one partition the global-order merge hands to the lane, their identities checked:
    those found foreign (offset -> why: they ordered nothing, and must move no position in the lane
    either), and those whose event the merge had handed on before."""

    messages: list[Message]
    foreign: dict[int, str]
    seen: set[int] = field(default_factory=set)
    """Offsets of messages whose event was handed on already (a redelivery, or a copy on another
    partition): the lane skips them once the store confirms they are that event."""

    def __len__(self) -> int:
        return len(self.messages)


class _Lane:
    """A thread handling the partitions given to it, one work item at a time."""

    def __init__(self, runner: HandlerRunner, index: int, executor: Executor) -> None:
        self.runner = runner
        self.index = index
        self.executor = executor
        self.work: queue.SimpleQueue[tuple[PartitionState, list[Message] | _Run | bytes] | None] = (
            queue.SimpleQueue()
        )
        self.current: PartitionState | None = None
        self.idle = threading.Condition()
        self.partitions = 0
        self.thread = threading.Thread(target=self._run, name=f"{runner.name}-lane-{index}", daemon=True)

    def _run(self) -> None:
        while True:
            item = self.work.get()
            if item is None:
                return
            ps, payload = item
            with self.idle:
                self.current = ps
            try:
                if not ps.revoked.is_set() and not self.runner.stopping.is_set():
                    self._do(ps, payload)
            except HandlerStopped as stopped:
                self.runner.handler_stopped(stopped)
            except Exception as exc:
                log.exception("a lane failed", extra={"handler": self.runner.name})
                self.runner.failed(f"{type(exc).__name__}: {exc}")
            finally:
                if not isinstance(payload, bytes):
                    self.runner.dequeued(ps, len(payload))
                with self.idle:
                    self.current = None
                    self.idle.notify_all()
                self.runner.finished(ps)

    def _do(self, ps: PartitionState, payload: list[Message] | _Run | bytes) -> None:
        backoff = 0.2
        while True:
            try:
                if isinstance(payload, bytes):
                    self.executor.drain(ps, payload)
                else:
                    # A run's identities were checked by the consumer; a bare list's the executor checks.
                    run = payload if isinstance(payload, _Run) else None
                    messages = payload.messages if isinstance(payload, _Run) else payload
                    deliveries = [
                        delivery_of(ps.topic, ps.partition, offset, m.key(), m.value(), m.headers())
                        for m in messages
                        if (offset := m.offset() or 0) >= (ps.next_offset or 0)
                    ]
                    if run is None:
                        self.executor.process(ps, deliveries)
                    else:
                        self.executor.process(ps, deliveries, run.foreign, run.seen)
                return
            except Exception as exc:
                if not isinstance(exc, KafkaException) and not transient(exc):
                    raise
                # PostgreSQL or Kafka is away: wait and try again; finished messages are not redone.
                kind = "kafka" if isinstance(exc, KafkaException) else "postgres"
                metrics.ERRORS.labels(self.runner.name, kind).inc()
                log.warning(
                    "handling waits for %s", kind, extra={"handler": self.runner.name, "error": str(exc)}
                )
                if ps.revoked.wait(backoff) or self.runner.stopping.is_set():
                    return
                backoff = min(backoff * 2, 5.0)

    def wait_idle(self, ps: PartitionState, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.idle:
            while self.current is ps and time.monotonic() < deadline:
                self.idle.wait(0.05)


class HandlerRunner:
    """Runs one handler class in this process: ``start()``, ``stop()``, ``status``."""

    def __init__(self, handler: type[EventHandler], app: WorkerApp, config: WorkerConfig) -> None:
        self.handler = validate_handler(handler)
        self.app = app
        self.config = config
        self.name = handler.name
        self.store = config.store
        self.status = HandlerStatus(self.name)
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._partitions: dict[tuple[str, int], PartitionState] = {}
        self._lanes: list[_Lane] = []
        self._lane_of: dict[tuple[str, int], _Lane] = {}
        self._queued: dict[tuple[str, int], int] = {}
        self._paused: set[tuple[str, int]] = set()
        self._finished: set[tuple[str, int]] = set()
        self._resyncs: list[PartitionState] = []
        self._rate = _Rate()
        self._stored: dict[tuple[str, int], int] = {}
        self._thread: threading.Thread | None = None
        self._consumer: Consumer | None = None
        self._repartition: Relay | None = None
        self._dead_letters: Producer | None = None
        self._commands: Application | None = None
        self.positions = Positions(self.store)
        self.parked = ParkedEvents(self.store)
        self.is_projection = issubclass(handler, Projection)
        self.topics = self._topics()
        self.global_order = ordering_of(handler) == "global"
        self.status.ordering = ordering_of(handler)
        self._merge: GlobalOrder | None = None
        self._identity = StoreIdentity(self.store)
        self._unproven_said = 0.0
        self._leadership = (
            Leadership(
                self.store.config.leadership_url, f"tidings-handler.{self.store.config.schema}.{self.name}"
            )
            if self.global_order
            else None
        )

    # --- running -----------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=f"handler-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop consuming, finish the messages in flight, commit, and leave the group."""
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        try:
            self._run()
        except _Stopping:
            self.status.state = "stopped" if self.status.state == "starting" else self.status.state
        except (HistoryUnavailable, StartFromFixed) as exc:
            self.failed(str(exc))
        except Exception as exc:
            log.exception("handler failed", extra={"handler": self.name})
            self.failed(f"{type(exc).__name__}: {exc}")
        finally:
            metrics.RUNNING.labels(self.name).set(0)

    def _run(self) -> None:
        if self._leadership is None:
            self._consume()
            return
        # Global order: one active consumer per handler across every process; the others stand by on
        # the advisory lock and take over within STANDBY_POLL_SECONDS of its session ending.
        while not self.stopping.is_set():
            self._await_leadership(self._leadership)
            try:
                self._consume()
            finally:
                self._leadership.release()
                self.status.leading = False

    def _await_leadership(self, leadership: Leadership) -> None:
        self.status.leading = False
        while not leadership.try_acquire():
            if self.status.state != "standby":
                # Only now, once its session has asked for the lock: status and `tidings status` count
                # the standbys by their sessions, and both must say the same.
                self.status.state = "standby"
                log.info("handler stands by for its global order", extra={"handler": self.name})
            if self.stopping.wait(STANDBY_POLL_SECONDS):
                raise _Stopping
        self.status.leading = True
        log.info("handler leads its global order", extra={"handler": self.name})

    def _consume(self) -> None:
        # The consumer connects to the brokers while PostgreSQL is asked, and the topics' metadata comes
        # over that connection: workers started together subscribe within milliseconds of one another,
        # and so share the group's first assignment instead of waiting a heartbeat for a rebalance.
        consumer = Consumer(self._consumer_settings())
        self._consumer = consumer
        try:
            subscription, acks = self._prepare(consumer)
            # A run begins: the stops recorded before it are over (`tidings status` shows them no more).
            states = HandlerStates(self.store)
            self._while_postgres_away("superseding older stops", lambda: states.supersede(self.name))
            if self.global_order:
                self._assign_everything(consumer, subscription)
            else:
                consumer.subscribe(
                    self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
                )
        except BaseException:
            consumer.close()
            raise
        for lane in self._lanes:
            lane.thread.start()
            lane.executor.handler.after_start()
        self.status.state = "running"
        metrics.RUNNING.labels(self.name).set(1)
        metrics.STOPPED.labels(self.name).set(0)
        log.info(
            "handler started",
            extra={
                "handler": self.name,
                "topics": self.topics,
                "concurrency": self.handler.concurrency,
                "ordering": self.status.ordering,
                "start_after": subscription.start_after,
                "projection": self.is_projection,
            },
        )
        next_parked = next_lag = next_expiry = 0.0
        next_metadata = time.monotonic() + METADATA_SECONDS
        next_check = time.monotonic() + LEADERSHIP_CHECK_SECONDS
        lost = False
        try:
            while not self.stopping.is_set():
                if self._leadership is not None and time.monotonic() >= next_check:
                    if not self._leadership.check():
                        log.warning(
                            "handler lost its global-order leadership (its PostgreSQL session ended or "
                            "holds no lock); standing by",
                            extra={"handler": self.name},
                        )
                        lost = True
                        break
                    next_check = time.monotonic() + LEADERSHIP_CHECK_SECONDS
                self._route(self._poll(consumer))
                self._store_finished(consumer)
                self._flow_control(consumer)
                self._resync(consumer)
                now = time.monotonic()
                if now >= next_expiry and self.handler.consistency == "strong":
                    self._expire_acknowledgements(acks)
                    next_expiry = now + ACK_EXPIRY_SECONDS
                if now >= next_parked:
                    self._release_parked()
                    next_parked = now + PARKED_POLL_SECONDS
                if now >= next_lag:
                    self._report_lag(consumer)
                    next_lag = now + LAG_POLL_SECONDS
                if self._merge is not None and now >= next_metadata:
                    self._join_new_partitions(consumer)  # a topic not read now is read at the next look
                    next_metadata = now + METADATA_SECONDS
        finally:
            self._shutdown(consumer, final=not lost)

    def _assign_everything(self, consumer: Consumer, subscription: Subscription) -> None:
        """Global order: this consumer takes every partition of the handler's topics itself (it joins no
        group, so a standby takes over the moment it holds the lock, without waiting for a session to
        time out), and the merge starts after the last event it handled."""
        metadata = consumer.list_topics(timeout=30)
        partitions = [
            TopicPartition(topic, number)
            for topic in self.topics
            for number in sorted(metadata.topics[topic].partitions)
        ]
        self._on_assign(consumer, partitions)
        last = max([subscription.start_after, *(ps.last_event_number for ps in self._partitions.values())])
        self._merge = GlobalOrder(self.topics, last)
        self._merge.assign(self._partitions)

    def _join_new_partitions(self, consumer: Consumer) -> bool:
        """Global order: read the topics' partitions again and take those added since (a topic grown
        with more partitions), from their beginning, without a restart. The merge needs no more: each
        message says which event came before it on its topic, whatever partition that went to.
        Returns whether every topic's partitions were read (else the set may be incomplete)."""
        added = []
        complete = True
        for topic in self.topics:
            try:
                # Per topic: the whole cluster's metadata every few seconds would weigh on big clusters.
                found = consumer.list_topics(topic, timeout=10).topics.get(topic)
            except KafkaException as exc:
                log.info("partitions not read again", extra={"handler": self.name, "error": str(exc)})
                return False
            if found is None or found.error is not None:
                complete = False
                continue
            added += [
                TopicPartition(topic, n)
                for n in sorted(found.partitions)
                if (topic, n) not in self._partitions
            ]
        if not added:
            return complete
        log.info(
            "partitions added to the handler's topics are read",
            extra={"handler": self.name, "partitions": [f"{tp.topic}[{tp.partition}]" for tp in added]},
        )
        self._on_assign(consumer, added)
        assert self._merge is not None
        self._merge.assign((tp.topic, tp.partition) for tp in added)
        return complete

    def _prepare(self, consumer: Consumer) -> tuple[Subscription, Acknowledgements]:
        """The handler's subscription and registration, its topics, and its lanes (not started yet)."""
        subscription = self._while_postgres_away(
            "subscribing",
            lambda: self.positions.subscribe(
                self.name,
                self.handler.start_from,
                given_at_start="start_from" in self.handler.given_at_start,
            ),
        )
        acks = Acknowledgements(self.store)
        if self.handler.consistency == "strong":
            # What reaches its topics, so that a strong dispatch of other events does not wait for it.
            feed = self._repartition.config.routing if self._repartition is not None else None
            carried = Carried.by(feed or self.app.routing_for(), self.topics)
            self._while_postgres_away("registering", lambda: acks.register_strong(self.name, carried))
        else:
            # A handler made eventual must no longer hold strong dispatches back.
            self._while_postgres_away("registering", lambda: acks.unregister_strong(self.name))
        # Topics created here, and the dead letters, take the largest event the store accepts.
        limits = dead_letter_limits(self.config, [*self.app.routing_for().topics(), *self.topics])
        ensure_topics(self.config, self.topics, known_by=consumer, limits=limits)
        if self.handler.on_poison == "dead_letter":
            ensure_topics(self.config, [self.dead_letter_topic], known_by=consumer, limits=limits)
            ensure_topic_limits(self.config, [self.dead_letter_topic], limits, who=self.name)
            self._dead_letters = Producer(
                {
                    **self.config.connection(),
                    "enable.idempotence": True,
                    "acks": "all",
                    "linger.ms": 5,
                    **limits.producer_settings(),
                }
            )
        shared = Shared(
            name=self.name,
            store=self.store,
            mapper=self.app.mapper,
            subscription=subscription,
            subscribe_to=self.handler.subscribe_to,
            positions=self.positions,
            parked=self.parked,
            acknowledgements=acks if self.handler.consistency == "strong" else None,
            stopping=self.stopping,
            dead_letter=self._dead_letter if self._dead_letters is not None else None,
            engine=self.config.engine() if self.is_projection else None,
            resync=self.resync,
            identity=self._identity,
            application=self.app.name,
        )
        for index in range(self.handler.concurrency):
            instance = self.handler(index)
            if isinstance(instance, ProcessManager):
                instance.bind(
                    self._application(),
                    ProcessInstances(self.store),
                    ScheduledCommands(self.store, self._application().router),
                )
            instance.init()
            self._lanes.append(_Lane(self, index, Executor(instance, shared)))
        if self._repartition is not None:
            self._repartition.start()
        return subscription, acks

    def _application(self) -> Application:
        """The application a process manager's commands are dispatched through (one per handler)."""
        if self._commands is None:
            assert self.app.router is not None, "WorkerApp checks that process managers have a router"
            self._commands = Application(self.store, self.app.mapper, self.app.router)
        return self._commands

    def _shutdown(self, consumer: Consumer, *, final: bool = True) -> None:
        """Stop the lanes and close the consumer; ``final`` stops the handler, otherwise (a global-order
        consumer that lost its leadership) it stands by again: the work in flight is dropped, not
        committed, for the new leader to do."""
        if final:
            self.stopping.set()
        else:
            for ps in self._partitions.values():
                ps.revoked.set()
        for lane in self._lanes:
            lane.work.put(None)
        for lane in self._lanes:
            lane.thread.join(self.config.shutdown_timeout)
        self._store_finished(consumer)
        try:
            consumer.close()  # commits the stored offsets and leaves the group
        except (KafkaException, RuntimeError) as exc:
            log.warning("closing the consumer failed", extra={"handler": self.name, "error": str(exc)})
        for lane in self._lanes:
            lane.executor.close()
        if self._repartition is not None:
            self._repartition.stop()
        if self._dead_letters is not None:
            self._dead_letters.flush(10)
        self.status.assigned = []
        if not final:
            self._lanes, self._lane_of, self._partitions = [], {}, {}
            self._queued, self._paused, self._stored, self._finished = {}, set(), {}, set()
            self._merge = None
            return
        if self.status.state in ("starting", "running", "standby"):
            self.status.state = "stopped" if not self.status.reason else self.status.state
        log.info("handler stopped", extra={"handler": self.name, "state": self.status.state})

    # --- lanes' reports ----------------------------------------------------------------------------

    def handler_stopped(self, stopped: HandlerStopped) -> None:
        log.error("handler stopped by its error policy", extra={"handler": self.name, "reason": str(stopped)})
        self.status.state = "stopped"
        self.status.reason = str(stopped)
        self.stopping.set()
        self._record_stop("stopped", str(stopped), stopped.delivery.event_number)

    def failed(self, reason: str) -> None:
        self.status.state = "failed"
        self.status.reason = reason
        self.stopping.set()
        self._record_stop("failed", reason, None)

    def _record_stop(self, state: str, reason: str, event_number: int | None) -> None:
        metrics.STOPPED.labels(self.name).set(1)
        try:
            HandlerStates(self.store).record(self.name, state, reason, event_number)
        except Exception as exc:  # noqa: BLE001 - the stop stands; only its record for status is lost
            log.warning("cannot record the handler's stop", extra={"handler": self.name, "error": str(exc)})

    def finished(self, ps: PartitionState) -> None:
        with self._lock:
            self._finished.add((ps.topic, ps.partition))

    def dequeued(self, ps: PartitionState, count: int) -> None:
        with self._lock:
            key = (ps.topic, ps.partition)
            self._queued[key] = self._queued.get(key, 0) - count
            self._rate.add(count)

    # --- the consumer thread -----------------------------------------------------------------------

    def _route(self, messages: list[Message]) -> None:
        by_partition: dict[tuple[str, int], list[Message]] = {}
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    metrics.ERRORS.labels(self.name, "kafka").inc()
                    log.warning("consumer error", extra={"handler": self.name, "error": error.str()})
                continue
            by_partition.setdefault((message.topic() or "", message.partition() or 0), []).append(message)
        if self._merge is not None:
            self._route_in_order(self._merge, by_partition)
            return
        # Per key, the lanes check identities: an event_id query per poll on this thread would hold
        # back every lane (a no-op handler caught up at half the pace).
        for key, batch in by_partition.items():
            ps = self._partitions.get(key)
            if ps is None:
                continue  # revoked meanwhile
            with self._lock:
                self._queued[key] = self._queued.get(key, 0) + len(batch)
            self._lane_of[key].work.put((ps, batch))

    def _route_in_order(self, merge: GlobalOrder, by_partition: dict[tuple[str, int], list[Message]]) -> None:
        """Global order: messages wait in the merge until they are the next event, then go to the lane
        in runs of one partition's messages. Only this store's events order anything: the others pass
        through to be parked, and move neither the merge nor a partition's position."""
        foreign = self._admit(merge, by_partition)
        released = merge.release()
        # Handing on the lowest head is sound only on the complete set of partitions: look at the
        # topics again first (a partition added since the last look may hold an earlier event), and
        # hand on nothing when a topic could not be read. A metadata request per message without the
        # header: the price of old relays' messages.
        if (
            not released
            and merge.unproven()
            and not merge.empty()
            and self._consumer is not None
            and self._join_new_partitions(self._consumer)
        ):
            released = merge.release_oldest()
        if not released and merge.unproven():
            self._say_unproven(merge)
        elif released and self._unproven_said:
            self._unproven_said = 0.0
            self.status.reason = ""
        repeats = {id(message) for message in merge.take_repeats()}
        for key, run in itertools.groupby(released, key=operator.itemgetter(0)):
            messages = [message for _, message in run]
            reasons = {o: foreign[(key, o)] for m in messages if (key, o := m.offset() or 0) in foreign}
            seen = {m.offset() or 0 for m in messages if id(m) in repeats}
            with self._lock:
                self._queued[key] = self._queued.get(key, 0) + len(messages)
            self._lane_of[key].work.put((self._partitions[key], _Run(messages, reasons, seen)))

    def _admit(
        self, merge: GlobalOrder, by_partition: dict[tuple[str, int], list[Message]]
    ) -> dict[tuple[tuple[str, int], int], str]:
        """Add the poll's messages to the merge; return those that are not this store's events, and
        why. A foreign message enters the merge without a number: it orders nothing."""
        claims, foreign = self._identify(by_partition)
        for key, message, number, previous in claims:
            if (key, message.offset() or 0) in foreign:
                merge.add(key, Ordered(None, None, message))
            else:
                merge.add(key, Ordered(number, previous, message))
        return foreign

    def _identify(
        self, by_partition: dict[tuple[str, int], list[Message]]
    ) -> tuple[list[tuple[tuple[str, int], Message, int | None, dict[str, int] | None]], dict[_Where, str]]:
        """What each message of the poll claims (its event_number and previous header), and those that
        are not this store's events, and why: another store's header, a number beyond the store's head,
        or another event_id than the store holds at the number (one query for the whole poll). In global
        order every message is asked: one that passed the merge as "the next event" would move its
        ``last`` past events still to come, and one below ``last`` would be taken as seen."""
        claims = []
        asked: list[tuple[_Where, int | None, Any, Any, Any]] = []
        for key, batch in by_partition.items():
            if key not in self._partitions:
                continue
            for message in batch:
                # One look at the headers (the client builds a new list at each headers() call).
                listed = message.headers() or ()
                found = dict(listed)
                number = _number(found.get(EVENT_NUMBER_HEADER))
                claims.append((key, message, number, parse_previous(found.get(PREVIOUS_HEADER))))
                store, placed = placement(listed)
                where = (key, message.offset() or 0)
                asked.append((where, number, store, found.get(EVENT_ID_HEADER), placed))
        # The event_ids the store holds at the claimed numbers (one query for the whole poll), then its
        # head, which needs a query only if some number is beyond every one held (made-up numbers).
        numbers = [number for _, number, *_ in asked if number is not None]
        held = (
            self._while_postgres_away(
                "checking messages", functools.partial(self._identity.event_ids, numbers)
            )
            if numbers
            else {}
        )
        top, known = max(numbers, default=0), max(held, default=0)
        head = self._while_postgres_away("checking messages", lambda: self._identity.head(top, known))
        foreign: dict[_Where, str] = {}
        for where, number, store, _, placed in asked:
            reason = self._identity.foreign(number, store, head, placed=placed, partition=where[0][1])
            if reason is not None:
                foreign[where] = reason
        for where, number, _, event_id, _ in asked:
            if where in foreign or number is None:
                continue
            claimed = _text(event_id)
            if not StoreIdentity.same_event(held.get(number), claimed):
                foreign[where] = (
                    f"{FOREIGN}: the store holds event {held.get(number)} at event_number {number}, "
                    f"not {claimed or 'this message'}"
                )
        return claims, foreign

    def _say_unproven(self, merge: GlobalOrder) -> None:
        """Messages without proof of their order wait until every partition has one (the lowest head is
        then the next): say so, now and then, rather than guess."""
        now = time.monotonic()
        if now - self._unproven_said < UNPROVEN_LOG_SECONDS:
            return
        self._unproven_said = now
        waiting_for = sorted(f"{t}[{p}]" for t, p in merge.empty())
        self.status.reason = (
            f"waiting: {merge.unproven()} message(s) carry no tidings.previous header (published by a relay "
            f"older than it), so they are handed on only once every partition has a message; none yet "
            f"from {', '.join(waiting_for)}"
        )
        metrics.ERRORS.labels(self.name, "unproven_order").inc()
        log.warning(self.status.reason, extra={"handler": self.name, "waiting": merge.waiting()})

    def _poll(self, consumer: Consumer) -> list[Message]:
        """What is there now, without waiting for a full batch: wait for one message, then take what
        else has arrived. ``consume(n, timeout)`` would wait out its timeout for n messages."""
        first = consumer.poll(0.1)
        if first is None:
            return []
        return [first, *consumer.consume(num_messages=self.config.max_poll_records - 1, timeout=0)]

    def _store_finished(self, consumer: Consumer) -> None:
        with self._lock:
            finished, self._finished = self._finished, set()
        offsets = []
        for key in finished:
            ps = self._partitions.get(key)
            if ps is None or ps.next_offset is None or self._stored.get(key) == ps.next_offset:
                continue
            self._stored[key] = ps.next_offset
            # In global order the last event handled rides along: it is where the merge resumes.
            if self.global_order:
                metadata = str(ps.last_event_number)
                offsets.append(TopicPartition(ps.topic, ps.partition, ps.next_offset, metadata=metadata))
            else:
                offsets.append(TopicPartition(ps.topic, ps.partition, ps.next_offset))
        if offsets:
            try:
                consumer.store_offsets(offsets=offsets)
            except KafkaException as exc:  # the partition went away meanwhile: its next owner redoes it
                log.info("offsets not stored", extra={"handler": self.name, "error": str(exc)})

    def _flow_control(self, consumer: Consumer) -> None:
        """Pause partitions whose lane has over ``PAUSE_SECONDS`` of work queued; resume them below
        ``RESUME_SECONDS``. Pausing drops librdkafka's prefetched messages and resuming costs a fetch
        round (up to a second), so the thresholds are in time at the lane's pace, never a few messages.

        In global order, messages waiting in the merge are counted apart from the lane's queue, and a
        partition is paused for them only while it holds ``PAUSE_AT`` or more there. A partition the
        merge waits for has nothing waiting in it (see ``GlobalOrder.release``), so it is never paused
        on that count, and a pause for the lane's queue ends as the lane works: the next event is always
        fetched, and memory stays bounded.
        """
        with self._lock:
            queued = dict(self._queued)
        rate = max(self._rate.per_second(), MIN_RATE)
        pause_at, resume_at = max(PAUSE_AT, rate * PAUSE_SECONDS), max(PAUSE_AT // 2, rate * RESUME_SECONDS)
        held = self._merge.held() if self._merge is not None else {}
        pause, resume = [], []
        for key in self._partitions:
            lane, merge = queued.get(key, 0), held.get(key, 0)
            if key in self._paused:
                if lane < resume_at and merge < PAUSE_AT // 2:
                    resume.append(key)
            elif lane >= pause_at or merge >= PAUSE_AT:
                pause.append(key)
        if pause:
            consumer.pause([TopicPartition(*k) for k in pause])
            self._paused.update(pause)
        if resume:
            consumer.resume([TopicPartition(*k) for k in resume])
            self._paused.difference_update(resume)

    def _release_parked(self) -> None:
        """Hand released keys to the lanes, and let lanes recheck keys an operator discarded."""
        try:
            overview = self.parked.overview(self.name)
        except Exception as exc:
            if not transient(exc):
                raise
            metrics.ERRORS.labels(self.name, "postgres").inc()
            log.warning("cannot read parked events", extra={"handler": self.name, "error": str(exc)})
            return
        metrics.PARKED.labels(self.name).set(sum(len(keys) for keys in overview.values()))
        for key, ps in list(self._partitions.items()):
            keys = overview.get(key, {})
            wanted = {k for k, released in keys.items() if released} | (ps.parked_keys - set(keys))
            for parked_key in wanted:
                self._lane_of[key].work.put((ps, parked_key))

    def _report_lag(self, consumer: Consumer) -> None:
        for key, ps in list(self._partitions.items()):
            tp = TopicPartition(*key)
            try:
                # The high watermark that fetch responses carry: asking the broker here would queue behind
                # the consumer's own long-poll fetch and hold the consumer thread for half a second.
                _, high = consumer.get_watermark_offsets(tp, cached=True)
                (fetched,) = consumer.position([tp])
            except KafkaException:
                continue
            handled = ps.next_offset if ps.next_offset is not None else -1
            with self._lock:
                idle = self._queued.get(key, 0) == 0
            if self._merge is not None and self._merge.held().get(key):
                idle = False  # messages fetched wait in the merge: not finished with
            if idle:
                # Nothing waits for the lane: everything fetched is finished with. The fetch position
                # is past the transaction markers the last message is followed by; the handled one not.
                handled = max(handled, fetched.offset)
            if handled >= 0 and high >= 0:
                metrics.LAG.labels(self.name, key[0], str(key[1])).set(max(0, high - handled))

    # --- group membership callbacks (called by consume(), on the consumer thread) -------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        checkpoints = (
            self._while_postgres_away(
                "reading checkpoints", lambda: self.positions.checkpoints(self.name, self.topics)
            )
            if self.is_projection
            else {}
        )
        committed_offsets = [] if self.is_projection else consumer.committed(partitions, timeout=30)
        committed = {(tp.topic, tp.partition): tp.offset for tp in committed_offsets}
        handled = {(tp.topic, tp.partition): tp.metadata for tp in committed_offsets}
        for tp in partitions:
            key = (tp.topic, tp.partition)
            ps = self._partition_state(tp.topic, tp.partition)
            checkpoint = checkpoints.get(key)
            if checkpoint is not None:
                tp.offset = checkpoint.next_offset
                ps.last_event_number = checkpoint.event_number
                ps.next_offset = checkpoint.next_offset
            elif committed.get(key, OFFSET_INVALID) >= 0:
                tp.offset = committed[key]
                if self.global_order and (handled.get(key) or "").isdigit():
                    ps.last_event_number = int(handled[key] or 0)
            else:
                tp.offset = OFFSET_BEGINNING
            self._check_history(consumer, tp)
            self._partitions[key] = ps
            lane = min(self._lanes, key=lambda lane: lane.partitions)
            lane.partitions += 1
            self._lane_of[key] = lane
            self._queued[key] = 0
        consumer.incremental_assign(partitions)
        self.status.assigned = sorted(f"{t}[{p}]" for t, p in self._partitions)
        log.info(
            "partitions assigned",
            extra={
                "handler": self.name,
                "partitions": [f"{tp.topic}[{tp.partition}]@{tp.offset}" for tp in partitions],
            },
        )

    def _partition_state(self, topic: str, partition: int) -> PartitionState:
        ps = PartitionState(topic, partition)
        ps.parked_keys = self._while_postgres_away(
            "reading parked keys", lambda: self.parked.keys(self.name, topic, partition)
        )
        return ps

    def _check_history(self, consumer: Consumer, tp: TopicPartition) -> None:
        """Refuse to skip events retention deleted before this handler saw them."""
        low = self._low_watermark(consumer, tp)
        where = f"{tp.topic}[{tp.partition}] starts at offset {low}: retention deleted the events before it"
        if tp.offset >= 0 and tp.offset < low:
            raise HistoryUnavailable(
                f"{where}, and {self.name!r} stopped at offset {tp.offset}: events it never handled are "
                "gone from Kafka. Keep the events topics' retention.ms=-1 (the relay creates them so); "
                "`tidings reset` starts the handler over from its start_from"
            )
        if tp.offset != OFFSET_BEGINNING or low <= 0:
            return
        if self.handler.start_from == "origin":
            raise HistoryUnavailable(
                f"{where}. {self.name!r} has no position there yet, and starting from the origin needs "
                "every event. Keep the events topics' retention.ms=-1 (the relay creates them so), or "
                "start the handler from 'current'"
            )
        log.warning(f"{where}; {self.name!r} starts at the oldest event kept", extra={"handler": self.name})

    def _low_watermark(self, consumer: Consumer, tp: TopicPartition) -> int:
        # A partition created a moment ago may have no leader yet: ask again (a rebalance callback
        # must not raise) until Kafka answers or the time is up.
        deadline = time.monotonic() + WATERMARK_SECONDS
        while True:
            try:
                low, _ = consumer.get_watermark_offsets(tp, timeout=WATERMARK_SECONDS, cached=False)
                return int(low)
            except KafkaException as exc:
                # Not only retriable() errors: a new partition's leader answers NOT_LEADER for a moment.
                if time.monotonic() >= deadline or self.stopping.is_set():
                    raise
                log.info("watermarks not available yet", extra={"handler": self.name, "error": str(exc)})
                self.stopping.wait(0.1)

    def resync(self, ps: PartitionState) -> None:
        """Called by a lane: read the partition's position again (on the consumer thread)."""
        with self._lock:
            self._resyncs.append(ps)

    def _resync(self, consumer: Consumer) -> None:
        with self._lock:
            pending, self._resyncs = self._resyncs, []
        for stale in pending:
            key = (stale.topic, stale.partition)
            if self._partitions.get(key) is not stale:
                continue  # revoked meanwhile
            checkpoint = self._while_postgres_away(
                "reading checkpoints", functools.partial(self.positions.checkpoints, self.name, [stale.topic])
            ).get(key)
            ps = self._partition_state(stale.topic, stale.partition)
            if checkpoint is not None:
                ps.last_event_number = checkpoint.event_number
                ps.next_offset = checkpoint.next_offset
            offset = checkpoint.next_offset if checkpoint is not None else OFFSET_BEGINNING
            self._partitions[key] = ps
            self._stored.pop(key, None)
            consumer.seek(TopicPartition(stale.topic, stale.partition, offset))
            log.info(
                "partition read again from its checkpoint", extra={"handler": self.name, "offset": offset}
            )

    def _expire_acknowledgements(self, acks: Acknowledgements) -> None:
        try:
            expired = acks.expire(self.config.acknowledgement_ttl)
        except Exception as exc:
            if not transient(exc):
                raise
            return
        if expired:
            log.info("acknowledgements expired", extra={"handler": self.name, "rows": expired})

    def _while_postgres_away(self, what: str, action: Callable[[], T]) -> T:
        """``action()``, retried with backoff while PostgreSQL is away.

        Raises:
            _Stopping: asked to stop while waiting.
        """
        backoff = 0.2
        while True:
            try:
                return action()
            except Exception as exc:
                if not connection_lost(exc):
                    raise
                metrics.ERRORS.labels(self.name, "postgres").inc()
                log.warning(f"{what} waits for PostgreSQL", extra={"handler": self.name, "error": str(exc)})
                if self.stopping.wait(backoff):
                    raise _Stopping from None
                backoff = min(backoff * 2, 5.0)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._release(consumer, partitions, commit=True)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._release(consumer, partitions, commit=False)

    def _release(self, consumer: Consumer, partitions: list[TopicPartition], *, commit: bool) -> None:
        released = []
        for tp in partitions:
            key = (tp.topic, tp.partition)
            ps = self._partitions.get(key)
            if ps is None:
                continue
            ps.revoked.set()
            released.append((key, ps))
        for key, ps in released:
            self._lane_of[key].wait_idle(ps, self.config.shutdown_timeout)
        self._store_finished(consumer)
        offsets = [
            TopicPartition(ps.topic, ps.partition, ps.next_offset)
            for _, ps in released
            if ps.next_offset is not None
        ]
        if commit and offsets:
            try:
                consumer.commit(offsets=offsets, asynchronous=False)
            except KafkaException as exc:
                log.warning("commit on revocation failed", extra={"handler": self.name, "error": str(exc)})
        for key, _ in released:
            self._partitions.pop(key, None)
            lane = self._lane_of.pop(key)
            lane.partitions -= 1
            self._queued.pop(key, None)
            self._stored.pop(key, None)
            self._paused.discard(key)
        consumer.incremental_unassign(partitions)
        self.status.assigned = sorted(f"{t}[{p}]" for t, p in self._partitions)
        log.info(
            "partitions released",
            extra={
                "handler": self.name,
                "partitions": [f"{tp.topic}[{tp.partition}]" for tp in partitions],
                "committed": commit,
            },
        )

    # --- configuration -----------------------------------------------------------------------------

    def _consumer_settings(self) -> dict[str, Any]:
        settings: dict[str, Any] = {
            # The group learns of partitions added to its topics at this refresh (librdkafka's default is
            # five minutes); the relay puts keys on them within 10 s (eventstore.partitioner). The
            # worker's Kafka settings may say otherwise.
            "topic.metadata.refresh.interval.ms": int(METADATA_SECONDS * 1000),
            **self.config.connection(),
            "group.id": self.name,
            "partition.assignment.strategy": "cooperative-sticky",
            "enable.auto.commit": True,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "enable.partition.eof": False,
        }
        if self.handler.static_membership and self.config.instance_id:
            settings["group.instance.id"] = f"{self.name}.{self.config.instance_id}"
        return settings

    @property
    def dead_letter_topic(self) -> str:
        return f"{self.name}.dead-letter"

    def _dead_letter(self, delivery: Delivery, reason: str) -> None:
        assert self._dead_letters is not None
        failures: list[KafkaError] = []

        def reported(error: KafkaError | None, _message: Message) -> None:
            if error is not None:
                failures.append(error)

        self._dead_letters.produce(
            self.dead_letter_topic,
            value=delivery.value,
            key=delivery.key,
            headers=[
                *delivery.headers,
                # Cut to its limit, and back to whole characters.
                ("tidings_error", reason.encode()[:MAX_REASON_BYTES].decode(errors="ignore").encode()),
                ("tidings_source", f"{delivery.topic}/{delivery.partition}/{delivery.offset}".encode()),
            ],
            on_delivery=reported,
        )
        if self._dead_letters.flush(30) > 0 or failures:
            raise KafkaException(failures[0] if failures else KafkaError(KafkaError._TIMED_OUT))

    def _topics(self) -> list[str]:
        topics = handler_topics(self.handler, self.app)
        if not _repartitions(self.handler, self.app):
            return topics
        (topic,) = topics
        by = self.handler.partition_by
        key = by if isinstance(by, str) else _key_function(self.handler, self.app)
        self._repartition = Relay(
            self.store,
            RelayConfig(
                self.config.bootstrap_servers,
                app=self.app.name,
                routing=Routing(topic, key=key),
                name=f"repartition.{self.name}",
                kafka=self.config.kafka,
                partitions=self.config.partitions,
                replication_factor=self.config.replication_factor,
                leader_url=self.store.config.leadership_url,
            ),
        )
        return [topic]


def _number(value: Any) -> int | None:
    """An event_number header's value, or None where it is missing or damaged."""
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _text(value: Any) -> str:
    """A header's value as text ("" where missing or not text)."""
    try:
        return bytes(value).decode() if value is not None else ""
    except (TypeError, UnicodeDecodeError):
        return ""


def handler_topics(handler: type[EventHandler], app: WorkerApp) -> list[str]:
    """The topics ``handler`` reads: its own ``topics``, the app's, or the one it repartitions to."""
    if _repartitions(handler, app):
        return [f"{app.name}.{handler.name}.by-key"]
    return list(handler.topics or app.routing_for().topics())


def _repartitions(handler: type[EventHandler], app: WorkerApp) -> bool:
    by = handler.partition_by
    return not (by is None or (isinstance(by, str) and app.routing_for().keys_by(by)))


def _key_function(handler: type[EventHandler], app: WorkerApp) -> Callable[[Any], str | bytes | None]:
    """The repartitioning relay's key: the handler's ``partition_by(event, metadata)``."""
    partition_by: Callable[[Any, EventMetadata], str | bytes | None] = handler(0).partition_by  # type: ignore[assignment]
    name = handler.name

    def key(recorded: Any) -> str | bytes | None:
        try:
            event, user_metadata = app.mapper.from_recorded(recorded)
        except Exception:  # noqa: BLE001 - undecodable: keyed by its stream, and parked by the handler
            return str(recorded.stream_id)
        metadata = EventMetadata(recorded, name, user_metadata, None, app.name)
        try:
            return partition_by(event, metadata)
        except Exception:
            # Keyed by its stream instead, so the repartitioning relay goes on: it is logged and counted.
            metrics.ERRORS.labels(name, "partition_by").inc()
            log.exception(
                "partition_by failed; the event is keyed by its stream id",
                extra={"handler": name, "event_number": recorded.event_number},
            )
            return str(recorded.stream_id)

    return key
