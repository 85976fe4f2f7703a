"""The command receiver: commands other applications sent, executed here exactly once.

A ``WorkerApp(..., receive_commands=True)`` makes ``tidings worker`` read ``<app>.commands`` (what other
applications' process managers sent with ``external``; ``eventstore.command_sender``) in the consumer
group ``<app>.commands``, and dispatch each command through the application's router.

Exactly once in effect: the command's ``command_uuid`` is inserted into ``received_commands`` in the
transaction of the events it causes (``INSERT ... ON CONFLICT DO NOTHING``; the dispatch joins that
transaction). A command delivered again (a worker killed between its commit and its offset commit, a
rebalance, a duplicate in the topic) finds its row and does nothing. The events carry
``causation_id`` = the command's uuid and the sending process manager's ``correlation_id``.

What cannot be executed is parked, per key, in ``parked_events`` under the receiver's name
(``<app>.commands``), with an error that says what to do; later commands of that key (the same target
aggregate) wait behind it, other keys go on. ``tidings parked list | retry | discard`` work on them:

- ``UnknownCommandType``: the router routes no command of that type name;
- ``UndecodableCommand``: a header is missing or malformed, the JSON is not JSON (or nested deeper than
  the decoder goes), or it does not fit the class, whose constructor refused it (any exception it raises,
  ``__post_init__``'s own included);
- ``CommandRejected``: the aggregate raised (a domain error) or the dispatch failed otherwise.

Business refusals the sender should hear of are events (``PaymentDeclined``), not exceptions: they reach
the sender like any reply (docs/process-managers.md). Nothing is dropped, and the worker never stops.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition
from psycopg import sql

from eventstore.command_sender import COMMAND_TYPE_HEADER, COMMAND_UUID_HEADER, commands_topic
from tidings.dispatch import Application
from tidings.json_decode import build_dataclass
from tidings.json_hints import ValueProblem
from workers import metrics
from workers.app import WorkerApp, WorkerConfig
from workers.delivery import Delivery, delivery_of
from workers.execution import transient
from workers.parking import BEHIND, ParkedEvents
from workers.scheduling import command_type_of
from workers.topics import ensure_topics

__all__ = [
    "CommandReceiver",
    "CommandRejected",
    "ReceivedCommand",
    "UndecodableCommand",
    "UnknownCommandType",
    "receiver_name",
]

log = logging.getLogger("workers.command_receiver")

RELEASED_CHECK_SECONDS = 1.0
LAG_REPORT_SECONDS = 5.0
MAX_BACKOFF_SECONDS = 5.0


def receiver_name(app: WorkerApp) -> str:
    """The receiver's consumer group, and the handler name its parked commands go under."""
    return f"{app.name}.commands"


class CommandNotExecuted(Exception):
    """Why a received command was parked instead of executed (the parked row's error is its text)."""


class UnknownCommandType(CommandNotExecuted):
    """The command's type name is not one the application's router routes."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(
            f"unknown command type {name!r}: this application routes {known}. Route it "
            "(router.dispatch(...)) and `tidings parked retry`, or `tidings parked discard` it"
        )


class UndecodableCommand(CommandNotExecuted):
    """The message is not a command a sender wrote (a header missing or malformed, JSON that does not
    fit the class)."""

    def __init__(self, problem: str) -> None:
        super().__init__(
            f"undecodable command: {problem}. Fix the sender or the class, then `tidings parked retry`; "
            "or `tidings parked discard` it"
        )


class CommandRejected(CommandNotExecuted):
    """The aggregate raised (a domain error), or the dispatch failed otherwise; nothing it did committed."""

    def __init__(self, command_type: str, error: BaseException) -> None:
        super().__init__(
            f"command {command_type} rejected: {type(error).__name__}: {error}. Once the cause is fixed "
            "`tidings parked retry` executes it again (still once); `tidings parked discard` drops it"
        )


@dataclass(frozen=True, slots=True)
class ReceivedCommand:
    """A decoded command and what came with it."""

    command: object
    command_type: str
    command_uuid: uuid.UUID
    causation_id: uuid.UUID | None
    correlation_id: uuid.UUID | None
    metadata: dict[str, Any]
    sent_by: str


class CommandReceiver:
    """Consumes ``<app>.commands`` and executes each command once; ``start()``, ``stop()``.

    Example::

        receiver = CommandReceiver(app, WorkerConfig(store, "kafka:9092"))
        receiver.start()
        ...
        receiver.stop()
    """

    def __init__(self, app: WorkerApp, config: WorkerConfig) -> None:
        if app.router is None:
            raise ValueError(f"{app.name}: receiving commands needs the application's router")
        self.app = app
        self.config = config
        self.store = config.store
        self.name = receiver_name(app)
        self.topic = commands_topic(app.name)
        self.application = Application(config.store, app.mapper, app.router)
        self.parked = ParkedEvents(config.store)
        self.state = "starting"
        self.reason = ""
        self.stopping = threading.Event()
        self._types = {command_type_of(cls): cls for cls in app.router.commands()}
        self._held: dict[tuple[str, int], set[bytes]] = {}
        self._assigned: set[tuple[str, int]] = set()
        self._thread: threading.Thread | None = None
        self._received = sql.SQL(
            "INSERT INTO {} (receiver, command_uuid, command_type, causation_id, correlation_id, sent_by) "
            "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING 1"
        ).format(sql.Identifier(config.store.config.schema, "received_commands"))

    # --- running -----------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"receiver-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.state = "stopped"

    def _run(self) -> None:
        backoff = 0.1
        while not self.stopping.is_set():
            try:
                self._consume()
            except Exception as exc:  # noqa: BLE001 - Kafka or PostgreSQL away: wait and start again
                metrics.ERRORS.labels(self.name, "receiver").inc()
                self.reason = f"{type(exc).__name__}: {exc}"
                log.warning(
                    "command receiver restarts after an error",
                    extra={"receiver": self.name, "error": self.reason},
                )
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    def _consume(self) -> None:
        ensure_topics(self.config, [self.topic])
        consumer = Consumer(
            {
                **self.config.connection(),
                "group.id": self.name,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                # Only what senders committed: an aborted batch is never executed.
                "isolation.level": "read_committed",
                "partition.assignment.strategy": "cooperative-sticky",
                "topic.metadata.refresh.interval.ms": 5000,
            }
        )
        consumer.subscribe(
            [self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
        )
        self.state, self.reason = "running", ""
        metrics.RUNNING.labels(self.name).set(1)
        released_check = lag_report = 0.0
        try:
            while not self.stopping.is_set():
                messages = consumer.consume(self.config.max_poll_records, 0.5)
                for message in messages:
                    if message.error() is not None:
                        log.warning(
                            "command receiver: consumer error",
                            extra={"receiver": self.name, "error": str(message.error())},
                        )
                        continue
                    self.receive(_delivery(message))
                if messages:
                    # After the effects committed: a crash before this line redelivers, and the
                    # received_commands row makes the redelivery a no-op.
                    consumer.commit(asynchronous=False)
                now = time.monotonic()
                if now >= released_check:
                    released_check = now + RELEASED_CHECK_SECONDS
                    self._retry_released()
                if now >= lag_report:
                    lag_report = now + LAG_REPORT_SECONDS
                    self._report_lag(consumer)
        finally:
            metrics.RUNNING.labels(self.name).set(0)
            consumer.close()

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            where = (tp.topic, tp.partition)
            self._assigned.add(where)
            self._held[where] = self.parked.keys(self.name, tp.topic, tp.partition)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._assigned.discard((tp.topic, tp.partition))
            self._held.pop((tp.topic, tp.partition), None)

    def _report_lag(self, consumer: Consumer) -> None:
        try:
            assigned = consumer.assignment()
            positions = consumer.position(assigned) if assigned else []
            lag = 0
            for tp in positions:
                _, high = consumer.get_watermark_offsets(tp, timeout=5, cached=False)
                lag += max(0, high - tp.offset) if tp.offset >= 0 else 0
            metrics.RECEIVER_LAG.labels(self.name).set(lag)
        except KafkaException as exc:
            log.warning("command receiver: lag unknown", extra={"receiver": self.name, "error": str(exc)})

    # --- one command -------------------------------------------------------------------------------

    def receive(self, delivery: Delivery) -> str:
        """Execute (or park) one received message; ``executed``, ``duplicate`` or ``parked``."""
        held = self._held.setdefault(
            (delivery.topic, delivery.partition),
            self.parked.keys(self.name, delivery.topic, delivery.partition),
        )
        if delivery.key in held:
            return self._park(delivery, BEHIND)
        try:
            received = self.decode(delivery)
        except CommandNotExecuted as problem:
            return self._park(delivery, str(problem))
        return self._execute(delivery, received)

    def decode(self, delivery: Delivery) -> ReceivedCommand:
        """The command a message carries.

        Raises:
            UndecodableCommand: a header is missing or malformed, or the JSON does not fit the class.
            UnknownCommandType: the router routes no command of its type.
        """
        headers = {name: value for name, value in delivery.headers}
        try:
            name = headers[COMMAND_TYPE_HEADER].decode()
            command_uuid = uuid.UUID(headers[COMMAND_UUID_HEADER].decode())
            causation = _optional_uuid(headers.get("causation_id"))
            correlation = _optional_uuid(headers.get("correlation_id"))
            metadata = json.loads(headers.get("metadata") or b"{}")
            document = json.loads(delivery.value)
            sent_by = (headers.get("sent_by") or b"").decode()
        except KeyError as missing:
            raise UndecodableCommand(f"header {missing} missing") from None
        except Exception as exc:  # noqa: BLE001 - any message, however made, is parked, never raised:
            # malformed UTF-8, UUIDs or JSON, and JSON nested deeper than the decoder goes (RecursionError)
            raise UndecodableCommand(_problem(exc)) from None
        if not isinstance(metadata, dict) or not isinstance(document, dict):
            raise UndecodableCommand("the command and its metadata must be JSON objects")
        cls = self._types.get(name)
        if cls is None:
            raise UnknownCommandType(name, sorted(self._types))
        try:
            command = build_dataclass(cls, document, name)
        except Exception as exc:  # noqa: BLE001 - the class's own checks (__post_init__) may raise anything
            raise UndecodableCommand(f"{name}: {_problem(exc)}") from None
        return ReceivedCommand(command, name, command_uuid, causation, correlation, metadata, sent_by)

    def _execute(self, delivery: Delivery, received: ReceivedCommand, parked_id: int | None = None) -> str:
        """Dispatch ``received`` once, in one transaction with its ``received_commands`` row (and, for a
        parked one, the removal of its row); park it when it fails. Waits out PostgreSQL outages."""
        backoff = 0.1
        while True:
            try:
                return self._execute_once(delivery, received, parked_id)
            except Exception as exc:
                if not transient(exc) or self.stopping.is_set():
                    raise
                metrics.ERRORS.labels(self.name, "postgres").inc()
                log.warning(
                    "command receiver waits for PostgreSQL", extra={"receiver": self.name, "error": str(exc)}
                )
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    def _execute_once(self, delivery: Delivery, received: ReceivedCommand, parked_id: int | None) -> str:
        result = None
        with self.store.connection() as conn:
            if parked_id is not None and not self.parked.lock(conn, parked_id):
                return "gone"  # discarded meanwhile, or handled by another member
            try:
                with conn.transaction():  # a savepoint: a rejected command leaves nothing behind
                    inserted = conn.execute(
                        self._received,
                        (
                            self.name,
                            received.command_uuid,
                            received.command_type,
                            received.causation_id,
                            received.correlation_id,
                            received.sent_by,
                        ),
                    ).fetchone()
                    if inserted is not None:
                        result = self.application.dispatch(
                            received.command,
                            command_uuid=received.command_uuid,
                            # The events are caused by the command; the sender's correlation goes on.
                            causation_id=received.command_uuid,
                            correlation_id=received.correlation_id,
                            metadata=received.metadata,
                            connection=conn,
                            returning="execution_result",
                        )
            except Exception as exc:
                if transient(exc):
                    raise
                problem = str(CommandRejected(received.command_type, exc))
                if parked_id is None:
                    self._park_in(conn, delivery, problem)
                else:
                    self.parked.parked_again(conn, parked_id, problem)
                    self.parked.hold(conn, self.name, delivery.topic, delivery.partition, delivery.key)
                outcome = "parked"
            else:
                if parked_id is not None:
                    self.parked.remove(conn, parked_id)
                outcome = "executed" if inserted is not None else "duplicate"
        if result is not None:
            self.application.remember(result)
        if outcome == "parked":
            self._held.setdefault((delivery.topic, delivery.partition), set()).add(delivery.key)
        metrics.COMMANDS_RECEIVED.labels(self.name, outcome).inc()
        log.log(
            logging.WARNING if outcome == "parked" else logging.DEBUG,
            f"command {outcome}",
            extra={
                "receiver": self.name,
                "command": received.command_type,
                "command_uuid": str(received.command_uuid),
                "offset": delivery.offset,
            },
        )
        return outcome

    def _park(self, delivery: Delivery, problem: str) -> str:
        with self.store.connection() as conn:
            self._park_in(conn, delivery, problem)
        self._held.setdefault((delivery.topic, delivery.partition), set()).add(delivery.key)
        metrics.COMMANDS_RECEIVED.labels(self.name, "parked").inc()
        log.warning(
            "command parked",
            extra={
                "receiver": self.name,
                "offset": delivery.offset,
                "partition": delivery.partition,
                "error": problem,
            },
        )
        return "parked"

    def _park_in(self, conn: Any, delivery: Delivery, problem: str) -> None:
        self.parked.park(conn, self.name, delivery, problem)

    # --- parked commands released by an operator ---------------------------------------------------

    def _retry_released(self) -> None:
        for (topic, partition), keys in self.parked.overview(self.name).items():
            if (topic, partition) not in self._assigned:
                continue  # its owner retries it
            for key, released in keys.items():
                if released:
                    self._drain(topic, partition, key)

    def _drain(self, topic: str, partition: int, key: bytes) -> None:
        with self.parked.draining(self.name, topic, partition, key) as mine:
            if not mine:
                return
            for parked in self.parked.of_key(self.name, topic, partition, key):
                delivery = parked.delivery
                try:
                    received = self.decode(delivery)
                except CommandNotExecuted as problem:
                    with self.store.connection() as conn:
                        self.parked.parked_again(conn, parked.id, str(problem))
                        self.parked.hold(conn, self.name, topic, partition, key)
                    return
                if self._execute(delivery, received, parked.id) == "parked":
                    return  # failed again: the key waits for the next release
            if not self.parked.of_key(self.name, topic, partition, key):
                self._held.get((topic, partition), set()).discard(key)
                log.info(
                    "parked commands of a key executed", extra={"receiver": self.name, "partition": partition}
                )


def _delivery(message: Message) -> Delivery:
    return delivery_of(
        message.topic() or "",
        message.partition() or 0,
        message.offset() or 0,
        message.key(),
        message.value(),
        message.headers(),
    )


def _problem(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "JSON nested deeper than the decoder goes (RecursionError)"
    if isinstance(exc, ValueProblem):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _optional_uuid(raw: bytes | None) -> uuid.UUID | None:
    return uuid.UUID(raw.decode()) if raw else None
