"""The command sender: rows of ``command_outbox`` to their destination's commands topic, exactly once.

A process manager writes the commands bound to another application into ``command_outbox`` in its event's
transaction (``workers.process_manager``). The sender publishes them to ``<destination>.commands``, keyed
by the row's ``partition_key`` (the target aggregate's identity), so one partition carries a target's
commands in the order they were written. The receiving application's worker executes each one once
(``workers.command_receiver``).

Exactly once into Kafka, with the relay's means (docs/decisions/0006-exactly-once-relay.md and
0016-external-commands.md):

- one sender leads per store (an advisory lock, ``tidings-commands.<schema>``, ``eventstore.leadership``),
  beside the relay (``tidings relay`` runs both), whatever the relays' names: the outbox is one queue;
- every sender of a store shares one ``transactional.id`` (``tidings-commands.<store id>``): a new
  leader's ``init_transactions`` fences the previous one in Kafka and settles its open transaction;
- and in PostgreSQL: a new leader increments ``command_senders.leader_epoch``, and every write of a
  sender to that row and to the outbox names its epoch, so a deposed leader that wakes up (a pause, a cut
  session) writes nothing and steps down (``LeadershipLost``);
- each batch is one Kafka transaction. Before it begins, the sender records in PostgreSQL the batch's id,
  its outbox ids, and where its first message will land (the partition's end offset then, uncommitted
  messages included); after Kafka commits it, the rows are marked sent and the record cleared, in one
  PostgreSQL transaction. A new leader that finds a batch recorded reads that partition from that offset
  (``read_committed``) until the stable offset passes the partition's end: the batch is there
  (committed: mark its rows sent) or it is not (aborted: its rows go out again). While another
  producer's open transaction holds the stable offset back, it waits and says so (``BatchUnconfirmed``).

A command Kafka can never accept (larger than the message limit, a destination that is no topic name) is
set aside with its own error (``eventstore.command_outbox``); later commands of its target wait behind it,
other targets go on.

The outbox is read by ``sent_at IS NULL``, never "after the last id seen": ids commit out of order
(DESIGN.md, invariant 3), and a row that commits late is simply sent in a later batch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

import psycopg
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from psycopg import sql

from eventstore import metrics
from eventstore.command_outbox import OutboxStatus, outbox_status
from eventstore.errors import ConfigurationError, EventStoreError, LeadershipLost
from eventstore.kafka_tail import STORE_HEADER
from eventstore.leadership import Leadership
from eventstore.partitioner import KeyPartitioner
from eventstore.postgres.store import PostgresEventStore
from eventstore.routing import validate_topic

__all__ = [
    "BATCH_HEADER",
    "COMMAND_TYPE_HEADER",
    "COMMAND_UUID_HEADER",
    "CommandSender",
    "OutboxStatus",
    "SenderConfig",
    "commands_topic",
    "outbox_status",
]

log = logging.getLogger("eventstore.command_sender")

COMMAND_UUID_HEADER = "command_uuid"
COMMAND_TYPE_HEADER = "command_type"
BATCH_HEADER = "tidings.command_batch"
OUTBOX_ID_HEADER = "tidings.outbox_id"
CHECK_LEADERSHIP_EVERY_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 5.0
UNCONFIRMED_LOG_SECONDS = 5.0
SENDER_ROW = "default"
"""The store's one row in ``command_senders`` (one sender per store)."""
DEFAULT_MESSAGE_MAX_BYTES = 1_000_000
"""librdkafka's ``message.max.bytes`` when the settings do not give one."""

# What Kafka answers about one message that it will never accept, however often it is sent.
_REFUSED = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_RECORD,
        KafkaError.TOPIC_EXCEPTION,
        KafkaError.INVALID_MSG,
    }
)


def commands_topic(destination: str) -> str:
    """The topic an application receives its commands on: ``<destination>.commands``."""
    topic = f"{destination}.commands"
    validate_topic(topic)
    return topic


class BatchUnconfirmed(EventStoreError):
    """A new leader could not read far enough to tell whether the previous leader's last batch was
    committed (another producer's transaction holds the partition's stable offset back). Nothing is sent
    until it can tell; it tries again."""


@dataclass(frozen=True)
class SenderConfig:
    """How a sender reaches Kafka.

    Example::

        SenderConfig("kafka-0:9092", partitions=12)

    Attributes:
        bootstrap_servers: the Kafka cluster.
        name: the relay the sender runs beside (logs and metrics). It does not divide the outbox: the
            senders of one store elect one leader, whatever their names.
        kafka: further librdkafka settings (security, SASL...), except those the guarantee rests on.
        create_topics, partitions, replication_factor: for ``<destination>.commands`` topics that do not
            exist yet (the receiving worker creates its own topic too).
        batch_size: commands per Kafka transaction at most.
        poll_interval: seconds between looks at the outbox when it is empty.
        standby_poll: seconds between a standby's attempts to lead.
        transaction_timeout: ``transaction.timeout.ms`` in seconds.
    """

    bootstrap_servers: str
    name: str = "default"
    kafka: Mapping[str, str] = field(default_factory=dict)
    create_topics: bool = True
    partitions: int = -1
    replication_factor: int = -1
    batch_size: int = 500
    poll_interval: float = 0.2
    standby_poll: float = 1.0
    transaction_timeout: float = 60.0

    def __post_init__(self) -> None:
        if not self.bootstrap_servers:
            raise ConfigurationError(
                "the command sender needs Kafka's bootstrap servers (KAFKA_BOOTSTRAP_SERVERS)"
            )
        fixed = sorted(
            {"enable.idempotence", "acks", "transactional.id", "isolation.level"} & set(self.kafka)
        )
        if fixed:
            raise ConfigurationError(
                f"the command sender sets {', '.join(fixed)} itself (its exactly-once sending rests on "
                "them): remove them from the Kafka settings"
            )
        if self.batch_size < 1 or min(self.poll_interval, self.standby_poll, self.transaction_timeout) <= 0:
            raise ConfigurationError(
                "batch_size, poll_interval, standby_poll and transaction_timeout must be positive"
            )


class _Row(NamedTuple):
    id: int
    destination: str
    command_type: str
    command: str
    metadata: str
    command_uuid: uuid.UUID
    causation_id: uuid.UUID | None
    correlation_id: uuid.UUID | None
    created_by: str
    partition_key: str | None
    created_at: datetime


class _Statements:
    def __init__(self, schema: str) -> None:
        outbox = sql.Identifier(schema, "command_outbox")
        senders = sql.Identifier(schema, "command_senders")
        # Unsent and not set aside, and not behind a command of the same target that is set aside.
        self.unsent = sql.SQL(
            "SELECT id, destination, command_type, command::text, metadata::text, command_uuid, "
            "causation_id, correlation_id, created_by, partition_key, created_at FROM {} o "
            "WHERE sent_at IS NULL AND failed_at IS NULL AND NOT EXISTS ("
            "SELECT FROM {} f WHERE f.sent_at IS NULL AND f.failed_at IS NOT NULL "
            "AND f.destination = o.destination AND f.partition_key = o.partition_key AND f.id < o.id) "
            "ORDER BY id LIMIT %s"
        ).format(outbox, outbox)
        self.mark_sent = sql.SQL(
            "UPDATE {} SET sent_at = now(), attempts = attempts + 1, last_error = NULL WHERE id = ANY(%s)"
        ).format(outbox)
        self.failed = sql.SQL(
            "UPDATE {} SET attempts = attempts + 1, last_error = %s WHERE id = ANY(%s)"
        ).format(outbox)
        self.set_aside = sql.SQL(
            "UPDATE {} SET attempts = attempts + 1, last_error = %s, failed_at = now() "
            "WHERE id = %s AND sent_at IS NULL"
        ).format(outbox)
        self.ensure = sql.SQL("INSERT INTO {} (name) VALUES (%s) ON CONFLICT (name) DO NOTHING").format(
            senders
        )
        self.lead = sql.SQL(
            "UPDATE {} SET leader = %s, leader_since = now(), leader_epoch = leader_epoch + 1, "
            "updated_at = now() WHERE name = %s RETURNING leader_epoch"
        ).format(senders)
        # Every write of a leader begins here: 0 rows means another leader took over (a new epoch), and
        # the row stays locked until the write commits, so a new leader's epoch waits for it.
        self.fence = sql.SQL("UPDATE {} SET updated_at = now() WHERE name = %s AND leader_epoch = %s").format(
            senders
        )
        self.pending = sql.SQL(
            "SELECT batch_id, batch_ids, batch_topic, batch_partition, batch_offset FROM {} WHERE name = %s"
        ).format(senders)
        self.record_batch = sql.SQL(
            "UPDATE {} SET batch_id = %s, batch_ids = %s, batch_topic = %s, batch_partition = %s, "
            "batch_offset = %s, updated_at = now() WHERE name = %s AND leader_epoch = %s"
        ).format(senders)
        self.clear_batch = sql.SQL(
            "UPDATE {} SET batch_id = NULL, batch_ids = NULL, batch_topic = NULL, batch_partition = NULL, "
            "batch_offset = NULL, sent = sent + %s, updated_at = now() WHERE name = %s AND leader_epoch = %s"
        ).format(senders)
        self.store_id = sql.SQL("SELECT value FROM {} WHERE key = 'store_id'").format(
            sql.Identifier(schema, "store_info")
        )


class _ProducerFailed(Exception):
    """The producer cannot go on (fenced, or fatal): make a new one, and look for the last batch again."""


class _Stopped(Exception):
    """Asked to stop, or the leadership is gone."""


class CommandSender:
    """Sends a store's ``command_outbox`` to Kafka while it leads; stands by otherwise.

    Example::

        sender = CommandSender(store, SenderConfig(os.environ["KAFKA_BOOTSTRAP_SERVERS"]))
        sender.start()          # in a thread; or sender.run() in the foreground until sender.stop()
    """

    def __init__(self, store: PostgresEventStore, config: SenderConfig) -> None:
        self.store = store
        self.config = config
        self.schema = store.config.schema
        # One per store, whatever the relay's name: two senders would both read every unsent row.
        self.identity = f"tidings-commands.{self.schema}"
        self.whoami = f"{socket.gethostname()}:{os.getpid()}"
        self.leading = threading.Event()
        self.sent = 0
        self.failure: BaseException | None = None
        """What ended ``run()`` in its thread (None while it runs, or after ``stop()``)."""
        self.on_failure: Callable[[BaseException], None] | None = None
        """Called from the sender's thread when ``run()`` ends by an exception (``tidings relay`` stops)."""
        self._epoch = 0
        self._max_message_bytes = int(config.kafka.get("message.max.bytes", DEFAULT_MESSAGE_MAX_BYTES))
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._leadership = Leadership(store.config.leadership_url, self.identity)
        self._sql = _Statements(self.schema)
        self._labels = (self.schema, config.name)
        self._partitioner = KeyPartitioner()
        self._partitions: dict[str, int] = {}
        self._store_id = ""
        self._connection: dict[str, Any] = {"bootstrap.servers": config.bootstrap_servers, **config.kafka}
        self._watermarks: Consumer | None = None

    # --- running -----------------------------------------------------------------------------------

    def start(self) -> None:
        """Run in a background thread (``stop()`` ends it)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._guarded, name=f"sender-{self.identity}", daemon=True)
            self._thread.start()

    def alive(self) -> bool:
        """Whether the thread ``start()`` began still runs."""
        return self._thread is not None and self._thread.is_alive()

    def _guarded(self) -> None:
        try:
            self.run()
        except BaseException as exc:
            self.failure = exc
            metrics.SENDER_ERRORS.labels(*self._labels, "died").inc()
            log.exception("command sender stopped for good", extra={"sender": self.identity})
            if self.on_failure is not None:
                self.on_failure(exc)

    def stop(self, timeout: float = 30.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def run(self) -> None:
        """Lead when the leadership is free, stand by when it is not, until ``stop()``; outages of
        PostgreSQL or Kafka are waited out."""
        backoff = 0.1
        while not self._stopping.is_set():
            if not self._leadership.try_acquire():
                self._stopping.wait(self.config.standby_poll)
                continue
            try:
                self._lead()
                backoff = 0.1
            except ConfigurationError:
                raise
            except _Stopped:
                return
            except LeadershipLost:
                metrics.SENDER_ERRORS.labels(*self._labels, "deposed").inc()
                log.warning(
                    "command sender was deposed (another leader took over): it writes nothing and stands by",
                    extra={"sender": self.identity, "epoch": self._epoch},
                )
            except (EventStoreError, psycopg.Error, KafkaException, _ProducerFailed) as exc:
                metrics.SENDER_ERRORS.labels(*self._labels, "leading").inc()
                log.warning(
                    "command sender stopped leading after an error; it will try again",
                    extra={"sender": self.identity, "error": f"{type(exc).__name__}: {exc}"},
                )
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
            finally:
                self._leadership.release()
                self.leading.clear()
                metrics.SENDER_LEADER.labels(*self._labels).set(0)
                if self._watermarks is not None:
                    self._watermarks.close()
                    self._watermarks = None

    # --- leading -----------------------------------------------------------------------------------

    def _lead(self) -> None:
        with self.store.connection() as conn:
            conn.execute(self._sql.ensure, (SENDER_ROW,))
            (epoch,) = conn.execute(self._sql.lead, (self.whoami, SENDER_ROW)).fetchone() or (0,)
            row = conn.execute(self._sql.store_id).fetchone()
        self._epoch = int(epoch)
        self._store_id = str(row[0]) if row else self.schema
        log.info(
            "command sender leads", extra={"sender": self.identity, "leader": self.whoami, "epoch": epoch}
        )
        self.leading.set()
        metrics.SENDER_LEADER.labels(*self._labels).set(1)
        # The producer first: its init_transactions fences any earlier leader and settles its batch.
        producer = self._producer()
        # Where a batch starts is the partition's real end: uncommitted messages of other producers'
        # open transactions included (read_committed would answer the last stable offset, before them).
        self._watermarks = Consumer(
            {
                **self._connection,
                "group.id": self.identity,
                "enable.auto.commit": False,
                "isolation.level": "read_uncommitted",
            }
        )
        self._recover()
        checked = time.monotonic()
        try:
            while not self._stopping.is_set():
                if time.monotonic() - checked > CHECK_LEADERSHIP_EVERY_SECONDS:
                    if not self._leadership.check():
                        log.warning("command sender lost its leadership", extra={"sender": self.identity})
                        return
                    checked = time.monotonic()
                with self.store.connection() as conn:
                    rows = [_Row(*r) for r in conn.execute(self._sql.unsent, (self.config.batch_size,))]
                self._report(rows)
                if not rows:
                    self._stopping.wait(self.config.poll_interval)
                    continue
                self._send(producer, rows)
        finally:
            producer.flush(0)

    def _report(self, rows: list[_Row]) -> None:
        if not rows:
            metrics.OUTBOX_UNSENT.labels(self.schema).set(0)
            metrics.OUTBOX_OLDEST_SECONDS.labels(self.schema).set(0)
            return
        metrics.OUTBOX_UNSENT.labels(self.schema).set(len(rows))  # at least; a batch is read at most
        metrics.OUTBOX_OLDEST_SECONDS.labels(self.schema).set(
            max(0.0, time.time() - rows[0].created_at.timestamp())
        )

    def _send(self, producer: Producer, rows: list[_Row]) -> None:
        """One batch in one Kafka transaction, recorded before and marked sent after (see the module).

        A command Kafka can never take is set aside, with its own error, and the batch read again
        without it (and without the later commands of its target); other commands do not wait for it.
        """
        batch_id = uuid.uuid4()
        placed: list[tuple[_Row, str, bytes, int, list[tuple[str, str]]]] = []
        refused: dict[int, str] = {}
        for row in rows:
            try:
                topic, key, partition = self._place(producer, row)
            except ConfigurationError as exc:  # a destination that is no topic name
                refused[row.id] = str(exc)
                continue
            headers = self._headers(row, batch_id)
            size = len(row.command.encode()) + len(key) + sum(len(n) + len(v.encode()) for n, v in headers)
            if size > self._max_message_bytes:
                refused[row.id] = (
                    f"{KafkaError(KafkaError.MSG_SIZE_TOO_LARGE).name()}: the command's message is {size} "
                    f"bytes, more than Kafka takes (message.max.bytes {self._max_message_bytes})"
                )
                continue
            placed.append((row, topic, key, partition, headers))
        if refused:
            self._set_aside(refused, rows)
            return
        _, topic, _, partition, _ = placed[0]
        _, end = self._watermarks.get_watermark_offsets(  # type: ignore[union-attr]
            TopicPartition(topic, partition), timeout=self.config.transaction_timeout, cached=False
        )
        ids = [row.id for row in rows]
        with self.store.connection() as conn:
            recorded = conn.execute(
                self._sql.record_batch, (batch_id, ids, topic, partition, end, SENDER_ROW, self._epoch)
            ).rowcount
            if recorded != 1:
                raise LeadershipLost(self.identity)
        delivery: dict[int, KafkaError] = {}
        try:
            producer.begin_transaction()
            for row, row_topic, row_key, row_partition, headers in placed:
                self._produce(producer, row_topic, row_key, row_partition, headers, row, delivery)
            producer.commit_transaction(self.config.transaction_timeout)
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            producer.poll(0)  # the delivery reports still queued: which message Kafka refused, if any
            metrics.SENDER_ERRORS.labels(*self._labels, "kafka").inc()
            refused = {i: f"{e.name()}: {e.str()}" for i, e in delivery.items() if e.code() in _REFUSED}
            if not refused:
                with self._fenced() as conn:
                    conn.execute(self._sql.failed, (f"{error.name()}: {error.str()}", ids))
            if error.fatal():
                if refused:
                    self._set_aside(refused, rows)
                raise _ProducerFailed(error.str()) from exc
            try:
                producer.abort_transaction(self.config.transaction_timeout)
            except KafkaException as abort:
                raise _ProducerFailed(abort.args[0].str()) from abort
            if refused:
                self._set_aside(refused, rows)
                return
            log.warning(
                "command batch failed; aborted, it goes out again",
                extra={"sender": self.identity, "error": error.str(), "first": ids[0]},
            )
            self._stopping.wait(0.5)
            return
        self._sent(ids)

    def _set_aside(self, refused: dict[int, str], rows: list[_Row]) -> None:
        """Write each refused command's own error on its row and set it aside (``failed_at``)."""
        by_id = {row.id: row for row in rows}
        with self._fenced() as conn:
            for row_id, problem in refused.items():
                conn.execute(self._sql.set_aside, (problem, row_id))
        for row_id, problem in refused.items():
            row = by_id[row_id]
            metrics.COMMANDS_SET_ASIDE.labels(*self._labels).inc()
            log.error(
                "command set aside: Kafka can never take it; later commands of its target wait behind it "
                "(`tidings outbox list`, then `tidings outbox retry` or `discard`)",
                extra={
                    "sender": self.identity,
                    "outbox_id": row_id,
                    "destination": row.destination,
                    "command_type": row.command_type,
                    "error": problem,
                },
            )

    @contextlib.contextmanager
    def _fenced(self) -> Iterator[Any]:
        """A transaction of the store in which this sender still leads (its epoch is the row's).

        Raises:
            LeadershipLost: another sender took the leadership since (a newer epoch); nothing is written.
        """
        with self.store.connection() as conn:
            if conn.execute(self._sql.fence, (SENDER_ROW, self._epoch)).rowcount != 1:
                raise LeadershipLost(self.identity)
            yield conn

    def _sent(self, ids: list[int]) -> None:
        with self.store.connection() as conn:
            cleared = conn.execute(self._sql.clear_batch, (len(ids), SENDER_ROW, self._epoch)).rowcount
            if cleared != 1:
                raise LeadershipLost(self.identity)  # rolls back: the new leader settles the batch
            conn.execute(self._sql.mark_sent, (ids,))
        self.sent += len(ids)
        metrics.COMMANDS_SENT.labels(*self._labels).inc(len(ids))
        log.debug("commands sent", extra={"sender": self.identity, "count": len(ids), "first": ids[0]})

    def _place(self, producer: Producer, row: _Row) -> tuple[str, bytes, int]:
        """The row's topic, key and partition.

        Raises:
            ConfigurationError: its destination makes no topic name.
        """
        topic = commands_topic(row.destination)
        # The target aggregate's identity keeps its commands on one partition, in order; without one,
        # the command's own id (no order is asked for).
        key = (row.partition_key if row.partition_key is not None else str(row.command_uuid)).encode()
        count = self._partitions.get(topic) or self._partition_count(producer, topic)
        return topic, key, self._partitioner.partition(key, count)

    def _produce(
        self,
        producer: Producer,
        topic: str,
        key: bytes,
        partition: int,
        headers: list[Any],
        row: _Row,
        delivery: dict[int, KafkaError],
    ) -> None:
        def delivered(error: KafkaError | None, message: Any) -> None:
            if error is not None:
                delivery[row.id] = error

        while True:
            try:
                producer.produce(
                    topic,
                    row.command.encode(),
                    key,
                    partition=partition,
                    headers=headers,
                    on_delivery=delivered,
                )
                return
            except BufferError:
                producer.poll(0.05)
            except KafkaException as exc:
                delivery[row.id] = exc.args[0]  # refused before it left (too large for the client...)
                raise

    def _headers(self, row: _Row, batch_id: uuid.UUID) -> list[tuple[str, str]]:
        found = [
            (COMMAND_UUID_HEADER, str(row.command_uuid)),
            (COMMAND_TYPE_HEADER, row.command_type),
            ("metadata", row.metadata),
            ("sent_by", row.created_by),
            ("created_at", row.created_at.isoformat(timespec="microseconds")),
            (STORE_HEADER, self._store_id),
            (BATCH_HEADER, str(batch_id)),
            (OUTBOX_ID_HEADER, str(row.id)),
        ]
        if row.causation_id is not None:
            found.append(("causation_id", str(row.causation_id)))
        if row.correlation_id is not None:
            found.append(("correlation_id", str(row.correlation_id)))
        return found

    def _partition_count(self, producer: Producer, topic: str) -> int:
        deadline = time.monotonic() + self.config.transaction_timeout
        created = False
        while True:
            found = producer.list_topics(topic, timeout=self.config.transaction_timeout).topics.get(topic)
            if found is not None and found.error is None and found.partitions:
                self._partitions[topic] = len(found.partitions)
                return len(found.partitions)
            if not created and self.config.create_topics:
                self._create_topic(topic)
                created = True
            if time.monotonic() > deadline:
                raise KafkaException(
                    KafkaError(
                        KafkaError.UNKNOWN_TOPIC_OR_PART, f"topic {topic!r} has no partitions in Kafka"
                    )
                )
            if self._stopping.wait(0.2):
                raise _Stopped

    def _create_topic(self, topic: str) -> None:
        admin = AdminClient(self._connection)
        future = admin.create_topics(
            # Kept until received, however long the receiving application is down.
            [
                NewTopic(
                    topic,
                    self.config.partitions,
                    self.config.replication_factor,
                    config={"retention.ms": "-1"},
                )
            ],
            operation_timeout=self.config.transaction_timeout,
        )[topic]
        try:
            future.result()
            log.info("command sender created a topic", extra={"sender": self.identity, "topic": topic})
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise

    # --- starting ----------------------------------------------------------------------------------

    def _producer(self) -> Producer:
        try:
            producer = Producer(
                {
                    "linger.ms": 5,
                    **self._connection,
                    "enable.idempotence": True,
                    "acks": "all",
                    "transactional.id": f"tidings-commands.{self._store_id}",
                    "transaction.timeout.ms": int(self.config.transaction_timeout * 1000),
                }
            )
        except KafkaException as exc:
            raise ConfigurationError(
                f"Kafka refused the command sender's settings: {exc.args[0].str()}"
            ) from None
        backoff = 0.1
        while True:
            try:
                producer.init_transactions(self.config.transaction_timeout)
                return producer
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if error.fatal() or not error.retriable():
                    raise _ProducerFailed(error.str()) from exc
                log.warning("command sender cannot reach Kafka yet", extra={"error": error.str()})
                if self._stopping.wait(backoff):
                    raise _Stopped from exc
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    def _recover(self) -> None:
        """Settle the batch the previous leader recorded and may not have marked sent.

        Raises:
            BatchUnconfirmed: the partition could not be read far enough to tell.
        """
        with self.store.connection() as conn:
            row = conn.execute(self._sql.pending, (SENDER_ROW,)).fetchone()
        if row is None or row[0] is None:
            return
        batch_id, ids, topic, partition, offset = row
        committed = self._batch_committed(str(batch_id), topic, int(partition), int(offset))
        if committed:
            self._sent(list(ids))
        else:
            with self.store.connection() as conn:
                if conn.execute(self._sql.clear_batch, (0, SENDER_ROW, self._epoch)).rowcount != 1:
                    raise LeadershipLost(self.identity)
        log.info(
            "command sender settled the previous leader's last batch",
            extra={
                "sender": self.identity,
                "batch": str(batch_id),
                "committed": committed,
                "commands": len(ids),
            },
        )

    def _batch_committed(self, batch_id: str, topic: str, partition: int, offset: int) -> bool:
        """Whether the recorded batch, whose first message went at or after ``offset``, is committed.

        The producer that wrote it is fenced (``init_transactions``): nothing of it can still be added.
        The partition's real end (uncommitted messages included) bounds where the batch can be; reading
        ``read_committed`` from ``offset`` to that end tells committed (found) from aborted (the stable
        offset passed the end without it). Another producer's open transaction before that end holds the
        stable offset back: the sender waits for it (logged, ``tidings_command_sender_errors{kind=
        "unconfirmed"}``), bounded by twice the transaction timeout, and never guesses.

        Raises:
            BatchUnconfirmed: the stable offset did not pass the end within that bound.
        """
        tp = TopicPartition(topic, partition)
        _, end = self._watermarks.get_watermark_offsets(  # type: ignore[union-attr]
            tp, timeout=self.config.transaction_timeout, cached=False
        )
        if end <= offset:
            return False  # nothing was written there since the batch was recorded
        consumer = Consumer(
            {
                **self._connection,
                "group.id": f"{self.identity}.recovery",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
        try:
            consumer.assign([TopicPartition(topic, partition, offset)])
            started = time.monotonic()
            deadline = started + 2 * self.config.transaction_timeout
            said = started
            while time.monotonic() < deadline:
                for message in consumer.consume(500, 0.5):
                    if message.error() is not None:
                        continue
                    headers = dict(message.headers() or [])
                    if (
                        headers.get(BATCH_HEADER) == batch_id.encode()
                        and headers.get(STORE_HEADER) == self._store_id.encode()
                    ):
                        return True
                # read_committed stops at the last stable offset: once it passed the end found, the whole
                # batch (committed or aborted) lies behind it.
                position = consumer.position([tp])[0].offset
                if position >= end:
                    return False
                if self._stopping.is_set():
                    raise _Stopped
                if time.monotonic() - said > UNCONFIRMED_LOG_SECONDS:
                    said = time.monotonic()
                    metrics.SENDER_ERRORS.labels(*self._labels, "unconfirmed").inc()
                    log.warning(
                        "command sender waits: an open transaction holds the partition's stable offset "
                        "back, so whether the last batch committed cannot be told yet; nothing is sent",
                        extra={
                            "sender": self.identity,
                            "topic": topic,
                            "partition": partition,
                            "batch": batch_id,
                            "read_to": position,
                            "end": end,
                            "waited_seconds": round(said - started),
                        },
                    )
            raise BatchUnconfirmed(
                f"{self.identity}: cannot read {topic}[{partition}] from offset {offset} to its end {end} "
                f"to find batch {batch_id} (another producer's open transaction?); trying again"
            )
        finally:
            consumer.close()
