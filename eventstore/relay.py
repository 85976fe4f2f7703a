"""The outbox relay: numbered events from PostgreSQL to Kafka, in order, exactly once.

One relay leads per store and relay name (an advisory lock, ``eventstore.leadership``); the others
stand by and take over within ``standby_poll`` seconds of the leader's death. The leader reads events
in event_number order and publishes each batch in one Kafka transaction, keyed and routed by
``eventstore.routing``; the message value is the stored bytes, the headers carry the event's identity
and place (``headers``).

Exactly once, as a ``read_committed`` consumer sees it (docs/decisions/0006-exactly-once-relay.md):

- every relay of a store shares one ``transactional.id`` (``tidings-relay.<store id>.<name>``), so a new
  leader's ``init_transactions`` fences the previous leader, even one that still runs, and settles its
  open transaction;
- the new leader then reads the committed tail of its topics (``eventstore.kafka_tail``) and resumes
  after the highest event_number there: batches are committed whole and in order, so everything below
  it is published and nothing above it is;
- a batch that fails is aborted and published again from PostgreSQL, which still has it.

Kafka being down stops nothing but publication: appends go on, the relay retries with backoff holding
one batch, and catches up when Kafka answers.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple, TypeVar

import psycopg
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from eventstore import metrics
from eventstore.errors import ConfigurationError, EventStoreError
from eventstore.kafka_limits import (
    RELAY_NAME_BYTES,
    TRACEPARENT_BYTES,
    TRACESTATE_BYTES,
    MessageLimits,
    TopicLimitTooSmall,
    check_topic_limits,
    message_bytes,
)
from eventstore.kafka_tail import (
    EPOCH_HEADER,
    EVENT_NUMBER_HEADER,
    PARTITION_HEADER,
    PREVIOUS_HEADER,
    RELAY_HEADER,
    STORE_HEADER,
    Tail,
    end_offsets,
    previous_header,
    read_tail,
    topic_ids,
)
from eventstore.leadership import Leadership
from eventstore.partitioner import KeyPartitioner
from eventstore.postgres.statements import notification_channel
from eventstore.postgres.store import PostgresEventStore
from eventstore.records import RecordedEvent
from eventstore.relay_position import (
    RelayIdentity,
    RelayRecord,
    RelayStatus,
    decide_resume,
    foreign_messages,
    numbers_to_check,
    relay_status,
    resume_after,
)
from eventstore.relay_problems import (
    EventUnpublishable,
    EventUnroutable,
    KafkaAheadOfStore,
    RelayProblem,
    TailMismatch,
)
from eventstore.routing import Routing, validate_topic

__all__ = [
    "RELAY_HEADER",
    "STORE_HEADER",
    "OutgoingEvent",
    "Relay",
    "RelayConfig",
    "RelayStatus",
    "TopicCreationFailed",
    "TopicLimitTooSmall",
    "TopicMissing",
    "headers",
    "relay_status",
    "resume_after",
]

log = logging.getLogger("eventstore.relay")

T = TypeVar("T")

# Settings that make the relay's guarantees; configuration may not change them.
_FIXED = {
    "enable.idempotence",
    "acks",
    "transactional.id",
    "isolation.level",
    "enable.auto.commit",
    "delivery.report.only.error",
}
MAX_BACKOFF_SECONDS = 5.0
PARTITION_COUNT_SECONDS = 10.0
"""How long the relay trusts a topic's partition count before it reads it again (``_produce``); less
when the Kafka settings' ``topic.metadata.refresh.interval.ms`` asks for less."""
CHECK_LEADERSHIP_EVERY_SECONDS = 1.0
# The position recorded in PostgreSQL and the lag metrics are refreshed this often, not per batch.
RECORD_EVERY_SECONDS = 1.0
COMMIT_WAIT_SECONDS = 2.0
FIRST_PROBLEM_WAIT_SECONDS = 0.1


class TopicCreationFailed(EventStoreError):
    """Kafka refused to create the relay's topics (too many replicas for the cluster, no permission...)."""

    def __init__(self, topic: str, reason: str) -> None:
        super().__init__(
            f"Kafka refused to create topic {topic}: {reason}. Create it yourself, or change "
            "partitions / replication_factor / topic_config (`tidings relay --partitions ... "
            "--replication-factor ...`)"
        )
        self.topic = topic


class TopicMissing(EventStoreError):
    """A topic the relay publishes to does not exist, and creating topics is turned off."""

    def __init__(self, topics: list[str]) -> None:
        super().__init__(
            f"the relay's topics {', '.join(topics)} do not exist and topic creation is off: create them "
            "(with the partition count the key mapping is planned for), or run the relay with "
            "create_topics=True (`tidings relay --create-topics`)"
        )
        self.topics = topics


@dataclass(frozen=True)
class RelayConfig:
    """How a relay reaches Kafka and what it publishes where.

    Example::

        RelayConfig("kafka-0:9092", app="bank", kafka={"security.protocol": "SASL_SSL", ...})

    Attributes:
        bootstrap_servers: the Kafka cluster.
        app: names the default topic, ``<app>.events`` (default: the store's schema).
        routing: topics and keys per event type or stream category (default: everything to the app's
            topic, keyed by stream id).
        name: the relay's name; relays of one store with one name elect one leader and share one
            ``transactional.id`` and position.
        kafka: further librdkafka settings (security, SASL, SSL, ``batch.size``, timeouts...), except
            those the guarantees rest on (idempotence, ``acks``, ``transactional.id``).
        create_topics: create missing topics (else a missing topic is a ``TopicMissing`` error).
        partitions, replication_factor: for created topics (-1: the broker's defaults).
        topic_config: for created topics; by default they keep every event (``retention.ms=-1``), so a
            handler added later can replay from the origin.
        batch_size: events per Kafka transaction at most.
        batch_bytes: a batch ends with the event that brings its data and metadata to this size (a
            single larger event goes alone): with ``batch_size``, what bounds the relay's memory.
        compression: ``compression.type`` (none, gzip, snappy, lz4, zstd).
        linger_ms: how long the producer gathers messages into a request.
        leader_url: a session-mode PostgreSQL URL for the leadership lock (default: the store's
            ``leader_url``, else its URL: ``StoreConfig.leadership_url``).
        standby_poll: seconds between a standby's attempts to lead.
        poll_interval: seconds between reads of the store when no notification arrives.
        transaction_timeout: ``transaction.timeout.ms`` in seconds: how long a silent leader's open
            transaction may hold back ``read_committed`` consumers before the broker aborts it.
        ignore_stores: ids of other stores whose messages on the relay's topics are known leftovers (a
            test, an old copy): the relay passes over them instead of refusing to publish.
        problem_retry: seconds between attempts while a problem stops publication
            (``eventstore.relay_problems``).
        tail_check_interval: seconds between looks at the topics' tails while publishing, for messages
            of another store or relay (also right after the first batch into topics without messages of
            the relay's: two relays that start together on empty topics find each other).
    """

    bootstrap_servers: str
    app: str | None = None
    routing: Routing | None = None
    name: str = "default"
    kafka: Mapping[str, str] = field(default_factory=dict)
    create_topics: bool = True
    partitions: int = -1
    replication_factor: int = -1
    topic_config: Mapping[str, str] = field(default_factory=lambda: {"retention.ms": "-1"})
    batch_size: int = 5000
    batch_bytes: int = 16 * 1024 * 1024
    compression: str = "lz4"
    linger_ms: float = 5.0
    leader_url: str | None = None
    standby_poll: float = 1.0
    poll_interval: float = 0.5
    transaction_timeout: float = 60.0
    ignore_stores: frozenset[str] = frozenset()
    problem_retry: float = 5.0
    tail_check_interval: float = 60.0

    def __post_init__(self) -> None:
        if not self.bootstrap_servers:
            raise ConfigurationError("the relay needs Kafka's bootstrap servers (KAFKA_BOOTSTRAP_SERVERS)")
        fixed = sorted(_FIXED & set(self.kafka))
        if fixed:
            raise ConfigurationError(
                f"the relay sets {', '.join(fixed)} itself (its exactly-once publication rests on them): "
                "remove them from the Kafka settings"
            )
        if self.batch_size < 1 or self.batch_bytes < 1:
            raise ConfigurationError(
                f"batch_size and batch_bytes must be at least 1, got {self.batch_size} and {self.batch_bytes}"
            )
        if not all(n == -1 or n > 0 for n in (self.partitions, self.replication_factor)):
            raise ConfigurationError(
                "partitions and replication_factor must be positive, or -1 for the broker's"
            )
        if (
            min(
                self.standby_poll,
                self.poll_interval,
                self.transaction_timeout,
                self.problem_retry,
                self.tail_check_interval,
            )
            <= 0
        ):
            raise ConfigurationError(
                "standby_poll, poll_interval, transaction_timeout, problem_retry and tail_check_interval "
                "must be positive"
            )
        for store in self.ignore_stores:
            try:
                uuid.UUID(store)
            except ValueError:
                raise ConfigurationError(
                    f"{store!r} is not a store id: ignore_stores takes the ids `tidings relay status` names"
                ) from None
        if not self.name or not all(c.isalnum() or c in "._-" for c in self.name):
            raise ConfigurationError(f"{self.name!r} is not a relay name: use letters, digits, . _ -")
        if self.app is not None:
            validate_topic(f"{self.app}.events")

    def __repr__(self) -> str:
        # Kafka settings hold SASL passwords and SSL keys: only their names are shown.
        return (
            f"RelayConfig(bootstrap_servers={self.bootstrap_servers!r}, app={self.app!r}, "
            f"name={self.name!r}, kafka=[{', '.join(sorted(self.kafka))}])"
        )

    def routing_for(self, schema: str) -> Routing:
        return self.routing if self.routing is not None else Routing(f"{self.app or schema}.events")


Headers = list[tuple[str, str | bytes | None]]


class OutgoingEvent(NamedTuple):
    """An event as the relay reads it: what it sends, with header values already as text."""

    event_number: int
    stream_id: str
    event_type: str
    data: bytes
    metadata: bytes
    event_id: str
    stream_version: str
    created_at: str
    """ISO 8601 in UTC, always with microseconds: ``2026-11-22T23:40:01.123456+00:00``."""
    schema_id: str
    causation_id: str | None
    correlation_id: str | None

    @classmethod
    def of(cls, event: RecordedEvent) -> OutgoingEvent:
        """The relay's view of a recorded event (for tests and benchmarks holding ``RecordedEvent``s)."""
        return cls(
            event.event_number or 0,
            event.stream_id,
            event.event_type,
            event.data,
            event.metadata,
            str(event.event_id),
            str(event.stream_version),
            event.created_at.astimezone(UTC).isoformat(timespec="microseconds"),
            event.schema_id,
            None if event.causation_id is None else str(event.causation_id),
            None if event.correlation_id is None else str(event.correlation_id),
        )

    def recorded(self) -> RecordedEvent:
        """The full ``RecordedEvent``, for key functions of the user's."""
        return RecordedEvent(
            uuid.UUID(self.event_id),
            self.event_number,
            self.stream_id,
            int(self.stream_version),
            self.event_type,
            self.data,
            self.metadata,
            self.schema_id,
            None if self.causation_id is None else uuid.UUID(self.causation_id),
            None if self.correlation_id is None else uuid.UUID(self.correlation_id),
            datetime.fromisoformat(self.created_at),
        )


def headers(event: OutgoingEvent) -> Headers:
    """The Kafka headers of ``event``'s message (its value is the stored bytes).

    Values go to the client as ``str`` where they are text: it encodes them to UTF-8 in C.
    """
    found: Headers = [
        ("event_id", event.event_id),
        ("event_type", event.event_type),
        (EVENT_NUMBER_HEADER, str(event.event_number)),
        ("stream_id", event.stream_id),
        ("stream_version", event.stream_version),
        ("created_at", event.created_at),
        ("schema_id", event.schema_id),
        ("metadata", event.metadata),
    ]
    if event.causation_id is not None:
        found.append(("causation_id", event.causation_id))
    if event.correlation_id is not None:
        found.append(("correlation_id", event.correlation_id))
    if b"traceparent" in event.metadata:
        found.extend(_trace_context(event.metadata))
    return found


def _key(problem: RelayProblem) -> tuple[type[RelayProblem], int | None]:
    """What makes two problems the same one (their texts may hold figures that move on)."""
    return type(problem), problem.event_number


def _discard(futures: list[Future[list[OutgoingEvent]]]) -> None:
    for future in futures:
        future.cancel()
    futures.clear()


def _partition_count_seconds(kafka: Mapping[str, str]) -> float:
    refresh = str(kafka.get("topic.metadata.refresh.interval.ms", ""))
    if refresh.isdigit() and int(refresh) > 0:
        return min(PARTITION_COUNT_SECONDS, int(refresh) / 1000)
    return PARTITION_COUNT_SECONDS


def _message_size(event: OutgoingEvent, key: bytes) -> int:
    """Roughly what ``event``'s message weighs before compression: value, key and headers."""
    return len(event.data) + len(key) + sum(len(n) + len(v or "") for n, v in headers(event))


def _trace_context(metadata: bytes) -> Headers:
    # W3C trace context kept in the metadata by the writer, repeated where tracing tools look for it.
    try:
        document = json.loads(metadata)
    except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes
        return []
    if not isinstance(document, dict):
        return []
    # Only at their W3C sizes: the Kafka limits allow for no more (eventstore.kafka_limits).
    found: Headers = []
    for name, longest in (("traceparent", TRACEPARENT_BYTES), ("tracestate", TRACESTATE_BYTES)):
        if name in document and len((value := str(document[name])).encode()) <= longest:
            found.append((name, value))
    return found


def _limits(store: PostgresEventStore, config: RelayConfig, routing: Routing) -> MessageLimits:
    """The producer's and the topics' message size limits for ``store``'s largest event.

    Raises:
        ConfigurationError: the Kafka settings or ``topic_config`` set smaller limits, or the relay's name
            is too long to travel in its messages.
    """
    if len(config.name.encode()) > RELAY_NAME_BYTES:
        raise ConfigurationError(f"a relay name has at most {RELAY_NAME_BYTES} bytes, got {config.name!r}")
    limits = MessageLimits.of(
        message_bytes(store.config.max_event_bytes, routing.topics()), config.kafka, config.compression
    )
    limits.topic_config(config.topic_config)  # a smaller max.message.bytes there is refused now
    return limits


class _ProducerFailed(Exception):
    """The producer cannot go on (fenced, or a fatal error): make a new one and find the tail again."""


class _Stopped(Exception):
    """Asked to stop, or the leadership is gone: leave the batch unpublished (it is aborted or fenced)."""


class _Resume(Exception):
    """An operator moved the relay's position (a new epoch): find where to go on again."""


class _Narrow(Exception):
    """Publish only the first ``keep`` events of the batch: the one after them is refused."""

    def __init__(self, keep: int) -> None:
        super().__init__(keep)
        self.keep = keep


# Kafka's answers about one message that no retry of the same batch changes: the batch is narrowed down
# to the event that draws them, which then stops publication (a RelayProblem), in order, loudly.
_REFUSALS = {
    KafkaError.MSG_SIZE_TOO_LARGE,
    KafkaError.RECORD_LIST_TOO_LARGE,
    KafkaError.INVALID_RECORD,
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.POLICY_VIOLATION,
    KafkaError.TOPIC_EXCEPTION,
    # A topic deleted under the running relay: said for the event that waits, and tried again.
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._UNKNOWN_TOPIC,
}


class Relay:
    """Publishes a store's numbered events to Kafka while it leads; stands by otherwise.

    Example::

        store = PostgresEventStore(StoreConfig(os.environ["DATABASE_URL"], schema="bank"))
        relay = Relay(store, RelayConfig(os.environ["KAFKA_BOOTSTRAP_SERVERS"]))
        relay.start()          # in a thread; or relay.run() in the foreground until relay.stop()
    """

    def __init__(self, store: PostgresEventStore, config: RelayConfig) -> None:
        self.store = store
        self.config = config
        self.schema = store.config.schema
        self.routing = config.routing_for(self.schema)
        self._recorded_keys = self.routing.needs_recorded_events
        self.identity = f"tidings-relay.{self.schema}.{config.name}"
        self.whoami = f"{socket.gethostname()}:{os.getpid()}"
        self.last_published = 0
        self._checkpointed = -1
        self._last_on_topic: dict[str, int] = {}
        self.leading = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._leadership = Leadership(config.leader_url or store.config.leadership_url, self.identity)
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"relay-read-{self.schema}")
        self._labels = (self.schema, config.name)
        self._record = RelayRecord(store, config.name)
        self._identity = RelayIdentity("", config.name)
        self._identity_headers: Headers = []
        self.problem: RelayProblem | None = None
        """What stops publication now, if anything (also in ``relay_status`` and the metrics)."""
        self._suspected: tuple[type[RelayProblem], int | None] | None = None
        self._complete_ids: tuple[dict[str, str], int] | None = None
        self._next_tail_check = 0.0
        self._refusals: list[KafkaError] = []
        self._partitioner = KeyPartitioner()
        self._partition_counts: dict[str, int] = {}
        self._partition_counts_used: dict[str, int] = {}  # never cleared: tells a change
        self._partition_counts_expire = 0.0
        self._partition_count_seconds = _partition_count_seconds(config.kafka)
        self._transactional_id = self.identity  # until it leads and knows its store's id
        self._problem_wait = FIRST_PROBLEM_WAIT_SECONDS
        self._verdict_cleared = False
        self._connection: dict[str, str | int | float | bool] = {
            "bootstrap.servers": config.bootstrap_servers,
            **config.kafka,
        }
        # What the producer and the topics must take: the largest event the store accepts.
        self.limits = _limits(store, config, self.routing)

    # --- running ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Run in a background thread (``stop()`` ends it)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self.run, name=f"relay-{self.identity}", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._reader.shutdown(wait=False, cancel_futures=True)

    def run(self) -> None:
        """Lead when the leadership is free, stand by when it is not, until ``stop()``.

        Outages of PostgreSQL or Kafka are waited out. Configuration that cannot work ends the run.

        Raises:
            TopicMissing: a topic is missing and creating topics is off (nothing was published).
            TopicCreationFailed: Kafka refused to create a topic.
            TopicLimitTooSmall: a topic takes smaller messages than the largest event makes, and creating
                topics is off (or raising its limit failed).
            ConfigurationError: Kafka refused the relay's settings.
        """
        backoff = 0.1
        while not self._stopping.is_set():
            if not self._leadership.try_acquire():
                self._stopping.wait(self.config.standby_poll)
                continue
            try:
                self._lead()
                backoff = 0.1
            except (ConfigurationError, TopicMissing, TopicCreationFailed, TopicLimitTooSmall):
                raise
            except (EventStoreError, psycopg.Error, KafkaException) as exc:
                metrics.RELAY_ERRORS.labels(*self._labels, "leading").inc()
                log.warning(
                    "relay stopped leading after an error; it will try again",
                    extra={"relay": self.identity, "error": str(exc)},
                )
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
            finally:
                self._leadership.release()
                self.leading.clear()
                metrics.RELAY_LEADER.labels(*self._labels).set(0)
                # The verdict stays in PostgreSQL until the next leader looks; this process says nothing.
                metrics.RELAY_BLOCKED.labels(*self._labels).set(0)
                self.problem, self._suspected = None, None
                log.info("relay stepped down", extra={"relay": self.identity, "leader": self.whoami})

    # --- leading ---------------------------------------------------------------------------------

    def _lead(self) -> None:
        log.info("relay leads", extra={"relay": self.identity, "leader": self.whoami})
        self.leading.set()
        metrics.RELAY_LEADER.labels(*self._labels).set(1)
        self._record.ensure()
        self._record.lead(self.whoami)
        self._identity = RelayIdentity(self._record.store_id(), self.config.name)
        # The store's id, not its schema's name: two stores with one schema name in two databases (staging
        # and production on one Kafka cluster) must not fence each other.
        self._transactional_id = f"tidings-relay.{self._identity.store}.{self.config.name}"
        self._leadership.listen(notification_channel(self.schema))
        topics_ready = False
        producer: Producer | None = None
        while not self._stopping.is_set():
            try:
                # The producer first: it fences any earlier leader, and it checks the Kafka settings.
                producer = producer or self._producer()
                if not topics_ready:
                    self._ensure_topics()
                    topics_ready = True
                self._resume()
                self._publish_until_stopped(producer)
            except _Resume:
                continue
            except _ProducerFailed as exc:
                producer = None
                metrics.RELAY_ERRORS.labels(*self._labels, "producer").inc()
                log.warning(
                    "relay producer failed; starting a new one",
                    extra={"relay": self.identity, "error": str(exc)},
                )
            except _Stopped:
                return
            if not self._leadership.check():
                return

    def _resume(self) -> None:
        """Find where to go on; while a problem stops that, say so and try again now and then."""
        while True:
            try:
                self.last_published = self._resume_point()
                self._report_problem(None)
                return
            except RelayProblem as problem:
                self._meet(problem)

    def _meet(self, problem: RelayProblem) -> None:
        """Say ``problem`` once it is met twice in a row, then wait before the next attempt.

        The first attempt again comes quickly and quietly, so that a blip (a new topic's metadata not yet
        on every broker) is not reported as a problem; what is met again is, within a fraction of a
        second. The waits then grow to ``problem_retry``.
        """
        if self.problem is not None or self._suspected == _key(problem):
            self._report_problem(problem)
        self._suspected = _key(problem)
        wait, self._problem_wait = self._problem_wait, min(self._problem_wait * 4, self.config.problem_retry)
        if self._stopping.wait(wait) or not self._leadership.check():
            raise _Stopped

    def _read_tail(self, identity: RelayIdentity, **options: Any) -> Tail:
        """The topics' tails as ``identity`` reads them (``kafka_tail.read_tail``), waiting out outages."""

        def read() -> Tail:
            try:
                return read_tail(
                    self._connection,
                    self.routing.topics(),
                    store=identity.store,
                    relay=identity.relay,
                    confirm=self._record.confirm,
                    timeout=self.config.transaction_timeout,
                    **options,
                )
            except KafkaException as exc:
                if exc.args[0].code() == KafkaError._INVALID_ARG:
                    raise ConfigurationError(
                        f"Kafka refused the relay's consumer settings: {exc.args[0].str()}"
                    ) from None
                raise

        return self._retrying("read the topics' tails", "kafka_unavailable", KafkaException, read)

    def _foreign_on_tail(self) -> bool:
        """Whether another store or relay has published on the topics (while this relay publishes)."""
        identity = self._identity
        tail = self._read_tail(identity, epoch=identity.epoch)
        found = foreign_messages(tail, identity, self.config.ignore_stores)
        if found:
            log.warning(
                "another store or relay publishes on the relay's topics",
                extra={"relay": self.identity, "origins": sorted({m.origin for m in found})},
            )
        return bool(found)

    def _report_problem(self, problem: RelayProblem | None) -> None:
        """Make ``problem`` (None: none any more) visible: log, metrics, and the verdict in PostgreSQL."""
        before, self.problem = self.problem, problem
        if problem is None:
            self._suspected, self._problem_wait = None, FIRST_PROBLEM_WAIT_SECONDS
            if before is not None or not self._verdict_cleared:
                metrics.RELAY_BLOCKED.labels(*self._labels).set(0)
                self._record.report(None)
                self._verdict_cleared = True
            if before is not None:
                log.info("relay publishes again", extra={"relay": self.identity, "verdict": before.verdict})
            return
        metrics.RELAY_BLOCKED.labels(*self._labels).set(1)
        self._verdict_cleared = False
        if before is not None and _key(before) == _key(problem):
            if str(before) != str(problem):
                self._record.report(problem)  # the same problem, its figures moved on
            return  # said already
        metrics.RELAY_PROBLEMS.labels(*self._labels, problem.verdict).inc()
        log.error(
            "relay cannot publish on",
            extra={
                "relay": self.identity,
                "verdict": problem.verdict,
                "problem": type(problem).__name__,
                "event_number": problem.event_number,
                "error": str(problem),
            },
        )
        self._record.report(problem)

    def _publish_until_stopped(self, producer: Producer) -> None:
        checked = recorded = time.monotonic()
        # The next batch, read from PostgreSQL while Kafka commits this one (at most one).
        upcoming: list[Future[list[OutgoingEvent]]] = []
        try:
            while True:
                if self._stopping.is_set():
                    raise _Stopped
                if time.monotonic() - checked > CHECK_LEADERSHIP_EVERY_SECONDS:
                    if not self._leadership.check():
                        log.warning("relay lost its leadership", extra={"relay": self.identity})
                        raise _Stopped
                    if self._record.epoch() != self._identity.epoch:
                        log.warning("an operator moved the relay's position", extra={"relay": self.identity})
                        raise _Resume
                    checked = time.monotonic()
                events = upcoming.pop().result() if upcoming else self._read(self.last_published + 1)
                if not events:
                    if self._checkpointed != self.last_published:
                        self._checkpoint()  # caught up: the recorded position catches up too
                    self._report_lag(caught_up=True)
                    self._wait()
                    continue
                after = events[-1].event_number or 0

                def read_ahead(after: int = after) -> None:
                    _discard(upcoming)  # a batch narrowed and published again reads ahead again
                    upcoming.append(self._reader.submit(self._read, after + 1))

                try:
                    published = self._publish(producer, events, read_ahead)
                except RelayProblem as problem:
                    # events[0] stops publication: nothing after it may pass it. Try again later.
                    _discard(upcoming)
                    self._meet(problem)
                    continue
                if published < len(events):
                    _discard(upcoming)  # it reads after the whole batch; the rest of the batch comes first
                if time.monotonic() >= self._next_tail_check:
                    self._next_tail_check = time.monotonic() + self.config.tail_check_interval
                    if self._foreign_on_tail():
                        _discard(upcoming)
                        raise _Resume  # where it says why, and waits
                if self.problem is not None or self._suspected is not None:
                    self._report_problem(None)
                after = events[published - 1].event_number
                self.last_published = after
                metrics.RELAY_PUBLISHED.labels(*self._labels).inc(published)
                metrics.RELAY_TRANSACTIONS.labels(*self._labels).inc()
                metrics.RELAY_LAST_PUBLISHED.labels(*self._labels).set(after)
                if time.monotonic() - recorded > RECORD_EVERY_SECONDS:
                    self._checkpoint()
                    if len(events) == self.config.batch_size:
                        self._report_lag(caught_up=False, newest=events[-1])
                    recorded = time.monotonic()
        finally:
            self._checkpoint()  # the position as it stands when leaving, whatever the reason
            _discard(upcoming)

    def _read(self, start: int) -> list[OutgoingEvent]:
        # While an event stops publication, it is tried alone: a whole batch behind it would be sent and
        # aborted at each attempt, holding back read_committed readers of every partition meanwhile.
        count = 1 if self.problem is not None else self.config.batch_size
        rows = self._retrying(
            "read the store",
            "postgres",
            EventStoreError,
            lambda: self.store._relay_batch(start, count, self.config.batch_bytes),
        )
        return [OutgoingEvent(*row) for row in rows]

    def _retrying(self, what: str, kind: str, retry_on: type[Exception], action: Callable[[], T]) -> T:
        """``action()``, tried again with backoff while it raises ``retry_on`` (an outage), until stopped."""
        backoff = 0.1
        while True:
            try:
                return action()
            except retry_on as exc:
                metrics.RELAY_ERRORS.labels(*self._labels, kind).inc()
                log.warning(
                    f"relay cannot {what} yet; retrying", extra={"relay": self.identity, "error": str(exc)}
                )
                backoff = self._pause(backoff)

    def _wait(self) -> None:
        """Until the sequencer announces new events, or ``poll_interval`` passes.

        Notifications that arrived while the relay was busy wait in psycopg's backlog and end the wait at
        once: a read too many, never a late one. They come on the lock's session, so a wait is also
        where an idle leader finds that session gone: it steps down then, rather than publish on.
        """
        if not self._leadership.wait(self.config.poll_interval):
            log.warning("relay lost its leadership", extra={"relay": self.identity})
            raise _Stopped

    def _publish(
        self, producer: Producer, events: list[OutgoingEvent], before_commit: Callable[[], None]
    ) -> int:
        """Publish ``events``, or the longest first part of them Kafka takes, in one transaction.

        Returns how many of ``events`` were committed (at least one). A batch Kafka refuses because of one
        event (``_REFUSALS``, or a routing that raises) is narrowed down to the events before it, so that
        they are published; when the refused event comes first, it is the problem.

        Raises:
            EventUnroutable: the routing raised for ``events[0]``.
            EventUnpublishable: Kafka refuses ``events[0]`` on its own.
        """
        backoff = 0.1
        while True:
            if time.monotonic() >= self._partition_counts_expire:
                # Partitions added to a topic are taken up within this time, as librdkafka's own
                # partitioner takes them up at its metadata refresh.
                self._partition_counts.clear()
                self._partition_counts_expire = time.monotonic() + self._partition_count_seconds
            # Each event says, per topic, which event was published there before it (the header
            # PREVIOUS_HEADER); a batch published again starts from the same state.
            previous = dict(self._last_on_topic)
            routes: list[tuple[str, bytes]] = []
            producing: int | None = None
            self._refusals.clear()
            try:
                producer.begin_transaction()
                route = self.routing.route
                for i, event in enumerate(events):
                    try:
                        topic, key = route(event.recorded() if self._recorded_keys else event)
                        message_headers = self._headers(event, previous)
                    except Exception as exc:  # the user's key function: anything may come out of it
                        if i == 0:
                            self._abort(producer)
                            raise EventUnroutable(
                                event.event_number, event.event_id, event.stream_id, exc
                            ) from exc
                        raise _Narrow(i) from exc
                    routes.append((topic, key))
                    producing = i
                    self._produce(producer, topic, key, event, message_headers)
                    previous[topic] = event.event_number
                producing = None
                before_commit()
                self._commit(producer, events)
                self._last_on_topic = previous
                return len(events)
            except _Narrow as narrow:
                self._abort(producer)
                events = events[: narrow.keep]
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if error.fatal():
                    raise _ProducerFailed(str(error)) from exc
                self._abort(producer)
                producer.poll(0)  # serve the delivery reports of the refused messages
                refusal = next((e for e in self._refusals if e.code() in _REFUSALS), None)
                if error.code() in _REFUSALS:
                    refusal = error
                if refusal is None:
                    metrics.RELAY_ERRORS.labels(*self._labels, "kafka").inc()
                    log.warning(
                        "relay batch failed; aborting it and publishing it again",
                        extra={"relay": self.identity, "error": str(error), "first": events[0].event_number},
                    )
                    backoff = self._pause(backoff)
                elif len(events) == 1 or producing == 0:
                    event = events[0]
                    topic, key = routes[0]
                    raise EventUnpublishable(
                        event.event_number,
                        event.event_id,
                        topic,
                        _message_size(event, key),
                        refusal.str(),
                        refusal.name(),
                    ) from exc
                elif producing is not None:
                    events = events[:producing]  # produce() itself refused that event: publish those before
                else:
                    # Kafka refused a record batch, and its reports do not say for which message (a
                    # per-message report would cost a third of the throughput): halve the batch until the
                    # refused event is first and alone. Each halving that succeeds publishes its events.
                    events = events[: len(events) // 2]

    def _produce(
        self, producer: Producer, topic: str, key: bytes, event: OutgoingEvent, message_headers: Headers
    ) -> None:
        count = self._partition_counts.get(topic) or self._partition_count(producer, topic)
        partition = self._partitioner.partition(key, count)
        message_headers.append((PARTITION_HEADER, str(partition)))
        while True:
            try:
                producer.produce(topic, event.data, key, partition=partition, headers=message_headers)
                return
            except BufferError:
                producer.poll(0.05)  # the local queue is full: let requests drain

    def _partition_count(self, producer: Producer, topic: str) -> int:
        found = producer.list_topics(topic, timeout=self.config.transaction_timeout).topics.get(topic)
        if found is None or found.error is not None or not found.partitions:
            # As produce() reports a topic deleted under the running relay: said, and tried again.
            raise KafkaException(
                KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART, f"topic {topic!r} has no partitions in Kafka")
            )
        self._partition_counts[topic] = count = len(found.partitions)
        before = self._partition_counts_used.setdefault(topic, count)
        if before != count:
            self._partition_counts_used[topic] = count
            log.warning(
                "a topic's partition count changed under the running relay: keys move to other "
                "partitions from now on, and per-key handlers may handle a moved key's events out of order "
                "while its earlier ones still wait (add partitions with the relay stopped and the handlers "
                "caught up)",
                extra={"relay": self.identity, "topic": topic, "partitions": count, "before": before},
            )
        return count

    def _delivery_failed(self, error: KafkaError | None, _: object) -> None:
        # Reports come only for failures (delivery.report.only.error): they say whether Kafka refused.
        if error is not None:
            self._refusals.append(error)

    def _headers(self, event: OutgoingEvent, previous: Mapping[str, int]) -> Headers:
        found = headers(event)
        found.append((PREVIOUS_HEADER, previous_header(previous)))
        found.extend(self._identity_headers)
        return found

    def _commit(self, producer: Producer, events: list[OutgoingEvent]) -> None:
        while True:
            try:
                # A short wait per call, so that a Kafka outage shows in logs and metrics while it
                # lasts; calling again resumes the same commit.
                producer.commit_transaction(COMMIT_WAIT_SECONDS)
                return
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if not error.retriable() or error.txn_requires_abort() or error.fatal():
                    raise
                metrics.RELAY_ERRORS.labels(*self._labels, "kafka_unavailable").inc()
                self._report_lag(caught_up=False, newest=events[0])
                log.warning(
                    "relay cannot commit its batch yet; retrying",
                    extra={"relay": self.identity, "error": str(error), "first": events[0].event_number},
                )
                if self._stopping.is_set():
                    raise _Stopped from exc

    def _abort(self, producer: Producer) -> None:
        backoff = 0.1
        while True:
            try:
                producer.abort_transaction(self.config.transaction_timeout)
                return
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if error.fatal() or not error.retriable():
                    raise _ProducerFailed(str(error)) from exc
                backoff = self._pause(backoff)

    def _pause(self, backoff: float) -> float:
        """Wait ``backoff`` seconds (less if asked to stop, then raise); return the next backoff."""
        if self._stopping.wait(backoff):
            raise _Stopped
        return min(backoff * 2, MAX_BACKOFF_SECONDS)

    # --- starting ---------------------------------------------------------------------------------

    def _producer(self) -> Producer:
        """A transactional producer that has fenced every earlier one of this relay."""
        try:
            producer = Producer(
                {
                    "linger.ms": self.config.linger_ms,
                    "compression.type": self.config.compression,
                    **self._connection,
                    "enable.idempotence": True,
                    "acks": "all",
                    "transactional.id": self._transactional_id,
                    "transaction.timeout.ms": int(self.config.transaction_timeout * 1000),
                    **self.limits.producer_settings(),
                    # Reports only for messages Kafka refused: they tell a refusal from an outage.
                    "delivery.report.only.error": True,
                    "on_delivery": self._delivery_failed,
                }
            )
        except KafkaException as exc:
            raise ConfigurationError(
                f"Kafka refused the relay's producer settings: {exc.args[0].str()}"
            ) from None
        backoff = 0.1
        while True:
            try:
                producer.init_transactions(self.config.transaction_timeout)
                return producer
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if error.fatal() or not error.retriable():
                    raise _ProducerFailed(str(error)) from exc
                metrics.RELAY_ERRORS.labels(*self._labels, "kafka_unavailable").inc()
                log.warning(
                    "relay cannot reach Kafka yet; retrying",
                    extra={"relay": self.identity, "error": str(error)},
                )
                backoff = self._pause(backoff)

    def _resume_point(self) -> int:
        """The last event published, as the topics' tail and the store confirm it together.

        Raises:
            RelayProblem: the tail cannot be trusted (``relay_position.decide_resume`` says why).
        """
        row = self._record.recorded()
        recorded, epoch, epoch_start, known_ids = row.position, row.epoch, row.epoch_start, row.topic_ids
        identity = RelayIdentity(self._identity.store, self.config.name, epoch, epoch_start)
        topics = self.routing.topics()
        timeout = self.config.transaction_timeout
        ids = self._retrying(
            "describe the topics",
            "kafka_unavailable",
            KafkaException,
            lambda: topic_ids(self._connection, topics, timeout),
        )
        boundary = row.boundary(ids)
        if epoch > 0 and boundary is None:
            # Taking the operator's decision: what the partitions hold now is of the epochs before it,
            # whatever epoch their headers claim (a store restored from an older backup, a forged header).
            ends = self._retrying(
                "read where the partitions end",
                "kafka_unavailable",
                KafkaException,
                lambda: end_offsets(self._connection, topics, timeout),
            )
            self._record.record_epoch_offsets(
                epoch, {f"{ids[t]}/{p}": offset for (t, p), offset in ends.items() if t in ids}
            )
            boundary = {(t, p): offset for (t, p), offset in ends.items() if t in ids}
        recreated = sorted(t for t in topics if t in known_ids and t in ids and known_ids[t] != ids[t])

        # It published at least as far as it recorded (in this epoch): a tail found below that is looked
        # at further back before it is believed.
        # (Not when a topic was made again: everything goes out again anyway.)
        at_least = recorded if (epoch == 0 or recorded > epoch_start) and not recreated else 0

        found = self._read_tail(identity, epoch=epoch, at_least=at_least, boundary=boundary)
        facts = self._record.facts(numbers_to_check(found, identity))
        try:
            resume = decide_resume(
                found,
                identity,
                facts,
                recorded=recorded,
                topics=topics,
                ignore_stores=self.config.ignore_stores,
                recreated=recreated,
            )
        except (KafkaAheadOfStore, TailMismatch) as problem:
            # Read the tail again, trusting nothing the store does not confirm: where the two agree is
            # where the operator will most likely want the relay to go on.
            agreed = self._read_tail(identity, trust_own=False).last_event_number
            raise problem.agreeing_up_to(agreed or 0) from None
        passed_over = found.ignored + len(resume.ignored_foreign)
        if passed_over:
            metrics.RELAY_FOREIGN_MESSAGES.labels(*self._labels).inc(passed_over)
            log.warning(
                "the relay's topics hold messages it did not publish; passed over",
                extra={"relay": self.identity, "messages": passed_over},
            )
        if recreated:
            log.warning(
                "topics were deleted and made again since the relay last had them complete: publishing every "
                "event again",
                extra={"relay": self.identity, "topics": recreated},
            )
        # The topics' ids are recorded once the relay has published as far as it had before: a relay that
        # dies before then finds the topics made again, again.
        self._complete_ids = (ids, recorded) if ids != known_ids else None
        if resume.republish_from is not None:
            metrics.RELAY_REPUBLISHED.labels(*self._labels).inc(recorded - resume.position)
            log.warning(
                "Kafka holds fewer events than the relay recorded publishing (a topic recreated, a Kafka "
                "restored from a backup): publishing again after the last one Kafka holds",
                extra={"relay": self.identity, "kafka": resume.position, "recorded": recorded},
            )
        self._identity = identity
        # Topics without a message of the relay's are looked at again right after its first batch: another
        # relay that started at the same moment on them shows there.
        fresh = not any(identity.owns(m) for m in found.newest)
        self._next_tail_check = 0.0 if fresh else time.monotonic() + self.config.tail_check_interval
        self._identity_headers = [
            (STORE_HEADER, identity.store),
            (RELAY_HEADER, identity.relay),
            (EPOCH_HEADER, str(identity.epoch)),
        ]
        self._last_on_topic = resume.previous
        log.info(
            "relay resumes",
            extra={"relay": self.identity, "after_event_number": resume.position, "epoch": epoch},
        )
        metrics.RELAY_LAST_PUBLISHED.labels(*self._labels).set(resume.position)
        return resume.position

    def _ensure_topics(self) -> None:
        try:
            admin = AdminClient(self._connection)
        except KafkaException as exc:
            raise ConfigurationError(
                f"Kafka refused the relay's admin settings: {exc.args[0].str()}"
            ) from None
        wanted = self.routing.topics()
        existing = self._retrying(
            "list topics",
            "kafka_unavailable",
            KafkaException,
            lambda: admin.list_topics(timeout=self.config.transaction_timeout).topics,
        )
        missing = [topic for topic in wanted if topic not in existing]
        for topic in set(wanted) - set(missing):
            count = len(existing[topic].partitions)
            if self.config.partitions not in (-1, count):
                # Changing a topic's partitions moves keys to other partitions: never done silently.
                log.warning(
                    "a topic has another partition count than configured; leaving it as it is",
                    extra={"relay": self.identity, "topic": topic, "partitions": count},
                )
        if missing:
            if not self.config.create_topics:
                raise TopicMissing(missing)
            self._create_topics(admin, missing)
        # The new topics too: the broker's defaults (its compression.type) may ask for more.
        self._retrying(
            "check the topics' message size limits",
            "kafka_unavailable",
            KafkaException,
            lambda: check_topic_limits(
                admin,
                wanted,
                self.limits,
                raise_limits=self.config.create_topics,
                bootstrap_servers=self.config.bootstrap_servers,
                timeout=self.config.transaction_timeout,
                who=self.identity,
            ),
        )

    def _create_topics(self, admin: AdminClient, missing: list[str]) -> None:
        futures = admin.create_topics(
            [
                NewTopic(
                    topic,
                    self.config.partitions,
                    self.config.replication_factor,
                    config=self.limits.topic_config(self.config.topic_config),
                )
                for topic in missing
            ],
            operation_timeout=self.config.transaction_timeout,
        )
        for topic, future in futures.items():
            try:
                future.result()
                log.info("relay created a topic", extra={"relay": self.identity, "topic": topic})
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if error.code() == KafkaError.TOPIC_ALREADY_EXISTS:  # another relay was quicker
                    continue
                if error.retriable():
                    raise
                raise TopicCreationFailed(topic, error.str()) from None

    # --- the position in PostgreSQL ------------------------------------------------------------------

    def _checkpoint(self) -> None:
        # Only a hint for operators and for topics emptied by retention: Kafka's tail is the truth. Not
        # written over an operator's decision taken meanwhile (another epoch).
        position = self.last_published
        try:
            self._record.checkpoint(position, self._identity.epoch)
            self._checkpointed = position
            if self._complete_ids is not None and position >= self._complete_ids[1]:
                self._record.record_topic_ids(self._complete_ids[0])
                self._complete_ids = None
        except EventStoreError as exc:
            metrics.RELAY_ERRORS.labels(*self._labels, "postgres").inc()
            log.warning(
                "relay could not record its position", extra={"relay": self.identity, "error": str(exc)}
            )

    def _report_lag(self, *, caught_up: bool, newest: OutgoingEvent | None = None) -> None:
        if caught_up:
            metrics.RELAY_LAG_EVENTS.labels(*self._labels).set(0)
            metrics.RELAY_LAG_SECONDS.labels(*self._labels).set(0)
            return
        try:
            last = self.store.last_event_number()
        except EventStoreError:
            return
        metrics.RELAY_LAG_EVENTS.labels(*self._labels).set(max(0, last - self.last_published))
        if newest is not None:
            metrics.RELAY_LAG_SECONDS.labels(*self._labels).set(
                max(0.0, time.time() - datetime.fromisoformat(newest.created_at).timestamp())
            )
