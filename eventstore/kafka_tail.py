"""Where a relay's topics end, as far as the relay and its store can confirm it.

The relay publishes events in event_number order, one Kafka transaction per batch, and commits each
batch before it starts the next. So the newest of *its own* committed messages on its topics is the last
event it published, and everything below it is published too: that is where it resumes.

A topic is not a source of truth: anything can be produced into it (a test producer, a replayed backup,
another store misconfigured onto the same app name). So the tail is read back partition by partition,
newest first, and each message is classified by what the relay can confirm:

- **own**: it carries this store's and this relay's identity (``STORE_HEADER``, ``RELAY_HEADER``). The
  newest one per partition is the candidate tail; the relay still checks its epoch (``EPOCH_HEADER``) and
  checks it against the store (a store that lost its tail, or was restored from a backup, disagrees).
- **foreign**: it carries another store's (or another relay's) identity. The relay reports it.
- **confirmed**: it has no identity (written by a relay of an earlier release) but the store holds an
  event with its ``event_id`` at its ``event_number``. It counts as own.
- **ignored**: anything else (random bytes, tombstones, made-up event numbers).

Only committed messages count (``isolation.level=read_committed``); the tail of a partition may hold
aborted messages, transaction markers and foreign messages, so each partition is read back through a
window that widens until its newest own or confirmed message is found or the partition's start is reached.
(docs/decisions/0013-the-relays-tail-trust.md)
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from eventstore.relay_problems import RelayProblem

__all__ = [
    "EPOCH_HEADER",
    "EVENT_ID_HEADER",
    "EVENT_NUMBER_HEADER",
    "PREVIOUS_HEADER",
    "RELAY_HEADER",
    "STORE_HEADER",
    "Confirm",
    "PartitionTail",
    "Tail",
    "TailMessage",
    "TailUnreadable",
    "classify",
    "event_number_of",
    "parse_previous",
    "previous_header",
    "read_tail",
]

EVENT_NUMBER_HEADER = "event_number"
EVENT_ID_HEADER = "event_id"
STORE_HEADER = "tidings.store"
"""The id of the store that published the message (``store_info.store_id``, a UUID)."""
RELAY_HEADER = "tidings.relay"
"""The name of the relay of that store that published it (``default``, ``repartition.<handler>``)."""
EPOCH_HEADER = "tidings.epoch"
"""The relay's epoch: 0, then one more with each operator's ``tidings relay resume-after``. Messages of an
older epoch no longer say where the relay stands."""
PREVIOUS_HEADER = "tidings.previous"
"""For each of the relay's topics, the event_number of the last event it published there before this
one (``bank.events=41,bank.audit=17``; 0: none). A consumer reading several partitions, or several
topics, knows from it whether an event is the next one in the global order: see
``workers.global_order``."""
FIRST_WINDOW = 64

Confirm = Callable[[Sequence[tuple[int, str]]], Collection[tuple[int, str]]]
"""Given (event_number, event_id) pairs, those the store holds: the event with that id has that number."""

# Errors that pass: a broker restarting, a leader moving. Anything else about a topic is an answer.
_TRANSIENT = {
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.REPLICA_NOT_AVAILABLE,
    KafkaError._TRANSPORT,
    KafkaError._TIMED_OUT,
    KafkaError._ALL_BROKERS_DOWN,
}


class TailUnreadable(RelayProblem):
    """Kafka will not say what a topic holds (missing, not authorised, damaged): no resume point is safe."""

    verdict = "tail_unreadable"

    def __init__(self, topic: str, reason: str) -> None:
        super().__init__(
            f"cannot read the tail of topic {topic}: {reason}. The relay publishes nothing until it can "
            "(a resume point computed without this topic could repeat or skip events): check that the topic "
            "exists and that the relay's principal may Describe and Read it"
        )
        self.topic = topic
        self.reason = reason


@dataclass(frozen=True, slots=True)
class TailMessage:
    """One message of a tail, by what its headers claim."""

    topic: str
    partition: int
    offset: int
    event_number: int | None
    event_id: str | None
    store: str | None
    """The ``STORE_HEADER``, when it is a well-formed store id."""
    relay: str | None
    epoch: int = 0
    previous: dict[str, int] | None = None
    """Its ``PREVIOUS_HEADER``: per topic, the event published there before it."""

    @property
    def origin(self) -> str:
        return f"store {self.store}, relay {self.relay or '?'}"


@dataclass(frozen=True, slots=True)
class Tail:
    """What the topics' tails say, once classified."""

    newest: list[TailMessage]
    """Per partition that shows one, its newest own or confirmed message."""
    foreign: list[TailMessage]
    """Messages of other stores or relays, newer than the newest own one of their partition."""
    ignored: int
    """Messages passed over: no identity, and the store does not confirm them."""
    ever_written: bool
    """Whether any partition has ever held a message (its end offset is above zero)."""

    def own(self, store: str, relay: str) -> list[TailMessage]:
        """The newest messages that carry this store's and relay's identity (the store must agree)."""
        return [m for m in self.newest if (m.store, m.relay) == (store, relay)]

    @property
    def per_topic(self) -> dict[str, int]:
        """The highest own or confirmed event_number of each topic that shows one."""
        found: dict[str, int] = {}
        for message in self.newest:
            number = message.event_number or 0
            found[message.topic] = max(found.get(message.topic, 0), number)
        return found

    @property
    def last_event_number(self) -> int | None:
        """The highest own or confirmed event_number, or None if no partition shows one."""
        return max(self.per_topic.values(), default=None)


@dataclass
class _Partition:
    tp: TopicPartition
    low: int
    high: int


def read_tail(
    config: Mapping[str, Any],
    topics: Iterable[str],
    *,
    store: str,
    relay: str,
    confirm: Confirm,
    timeout: float = 30.0,
    trust_own: bool = True,
) -> Tail:
    """Read back the tail of every partition of ``topics`` and classify it for ``store``'s ``relay``.

    ``config`` holds the connection settings (``bootstrap.servers``, security); the consumer reads
    committed messages only and joins no group. With ``trust_own=False`` the relay's own messages, too,
    count only once the store confirms them: the tail is then where Kafka and the store last agree.

    Raises:
        TailUnreadable: a topic is missing, or Kafka answers its metadata with an error that does not pass.
        KafkaException: the brokers did not answer within ``timeout`` seconds (try again).
    """
    consumer = Consumer(
        {
            **config,
            "group.id": "tidings-relay-tail",  # required by the client; nothing is committed under it
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        pending: list[_Partition] = []
        ever_written = False
        for topic in topics:
            for number in _partitions(consumer, topic, timeout):
                tp = TopicPartition(topic, number)
                low, high = consumer.get_watermark_offsets(tp, timeout=timeout, cached=False)
                ever_written = ever_written or high > 0
                if high > low:
                    pending.append(_Partition(tp, low, high))
        newest: list[TailMessage] = []
        foreign: list[TailMessage] = []
        ignored = 0
        window = FIRST_WINDOW
        while pending:
            read = _read_back(consumer, pending, window, timeout)
            complete = [p.high - window <= p.low for p in pending]
            found = classify(read, complete, store=store, relay=relay, confirm=confirm, trust_own=trust_own)
            still_pending = []
            for partition, result in zip(pending, found, strict=True):
                if result is None:
                    still_pending.append(partition)  # nothing own or confirmed so far: look further back
                    continue
                if result.newest is not None:
                    newest.append(result.newest)
                foreign.extend(result.foreign)
                ignored += result.ignored
            pending, window = still_pending, window * 8
        return Tail(newest, foreign, ignored, ever_written)
    finally:
        consumer.close()


@dataclass(frozen=True, slots=True)
class PartitionTail:
    """What one partition's tail says."""

    newest: TailMessage | None
    """Its newest own or confirmed message."""
    foreign: list[TailMessage]
    """Messages of other stores or relays newer than it."""
    ignored: int
    """Other messages newer than it: no identity, and not confirmed."""


def classify(
    windows: Sequence[list[TailMessage]],
    complete: Sequence[bool],
    *,
    store: str,
    relay: str,
    confirm: Confirm,
    trust_own: bool = True,
) -> list[PartitionTail | None]:
    """For each partition's window of messages, what it says; None where the window must reach further
    back (it holds nothing own or confirmed, and does not begin at the partition's start: ``complete``).

    Messages without identity count only once the store confirms them: one ``confirm`` call for all.
    """
    classified = [_classify(messages, store, relay, trust_own) for messages in windows]
    asked = [_pair(m) for c in classified if c.own is None for m in c.candidates]
    confirmed = set(confirm(asked)) if asked else set()
    results: list[PartitionTail | None] = []
    for c, reaches_start in zip(classified, complete, strict=True):
        found = c.own or next((m for m in c.candidates if _pair(m) in confirmed), None)
        if found is None and not reaches_start:
            results.append(None)
            continue
        newer = [m for m in c.candidates if found is None or m.offset > found.offset]
        foreign = [m for m in c.foreign if found is None or m.offset > found.offset]
        results.append(PartitionTail(found, foreign, c.ignored + len(newer)))
    return results


def _pair(message: TailMessage) -> tuple[int, str]:
    return message.event_number or 0, message.event_id or ""


def _partitions(consumer: Consumer, topic: str, timeout: float) -> list[int]:
    """The partition numbers of ``topic``; ``TailUnreadable`` if Kafka will not say."""
    described = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
    error: KafkaError | None = None if described is None else described.error
    if described is not None and error is None:
        error = next((p.error for p in described.partitions.values() if p.error is not None), None)
    if error is not None and error.code() in _TRANSIENT:
        raise KafkaException(error)
    if described is None or error is not None or not described.partitions:
        raise TailUnreadable(topic, error.str() if error is not None else "Kafka does not know it")
    return sorted(described.partitions)


@dataclass
class _Classified:
    own: TailMessage | None
    candidates: list[TailMessage]
    foreign: list[TailMessage]
    ignored: int


def _classify(messages: list[TailMessage], store: str, relay: str, trust_own: bool) -> _Classified:
    """Walk a partition's window newest first, up to its newest own message."""
    result = _Classified(None, [], [], 0)
    for message in sorted(messages, key=lambda m: m.offset, reverse=True):
        if not trust_own and (message.store, message.relay) == (store, relay):
            if message.event_number is not None and message.event_id is not None:
                result.candidates.append(message)
            else:
                result.ignored += 1
        elif message.store is not None:
            if (message.store, message.relay) == (store, relay):
                result.own = message
                break
            result.foreign.append(message)
        elif message.event_number is not None and message.event_id is not None:
            result.candidates.append(message)
        else:
            result.ignored += 1
    return result


def _read_back(
    consumer: Consumer, partitions: list[_Partition], window: int, timeout: float
) -> list[list[TailMessage]]:
    """For each partition, the committed messages of its last ``window`` offsets."""
    assignment = [TopicPartition(p.tp.topic, p.tp.partition, max(p.low, p.high - window)) for p in partitions]
    index = {(tp.topic, tp.partition): i for i, tp in enumerate(assignment)}
    found: list[list[TailMessage]] = [[] for _ in partitions]
    open_partitions = set(index)
    consumer.assign(assignment)
    deadline = time.monotonic() + timeout
    try:
        while open_partitions:
            if time.monotonic() > deadline:
                raise KafkaException(
                    KafkaError(
                        KafkaError._TIMED_OUT, f"no answer reading back the topics' tails in {timeout}s"
                    )
                )
            # consume() waits for its whole count or its timeout: short waits, many times.
            for message in consumer.consume(num_messages=500, timeout=0.1):
                where = (str(message.topic()), int(message.partition() or 0))
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        open_partitions.discard(where)
                        continue
                    raise KafkaException(error)
                found[index[where]].append(
                    _tail_message(where, int(message.offset() or 0), message.headers())
                )
    finally:
        consumer.unassign()
    return found


def _tail_message(where: tuple[str, int], offset: int, headers: Any) -> TailMessage:
    values: dict[str, Any] = {}
    for name, value in headers or ():
        values.setdefault(name, value)  # the first of a repeated header, as event_number_of reads it
    return TailMessage(
        where[0],
        where[1],
        offset,
        event_number_of(headers),
        _text(values.get(EVENT_ID_HEADER)),
        _store_id(values.get(STORE_HEADER)),
        _text(values.get(RELAY_HEADER)),
        _epoch(values.get(EPOCH_HEADER)),
        parse_previous(values.get(PREVIOUS_HEADER)),
    )


def _text(value: Any) -> str | None:
    if value is None:
        return None
    try:
        return bytes(value).decode() if not isinstance(value, str) else value
    except (UnicodeDecodeError, TypeError):
        return None


def _epoch(value: Any) -> int:
    text = _text(value)
    try:
        return int(text) if text is not None else 0
    except ValueError:
        return 0


def _store_id(value: Any) -> str | None:
    """A well-formed store id; a damaged one claims nothing."""
    text = _text(value)
    if text is None:
        return None
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return None


def previous_header(previous: Mapping[str, int]) -> str:
    """The value of ``PREVIOUS_HEADER`` for ``previous`` (topic -> last event_number published there)."""
    return ",".join(f"{topic}={number}" for topic, number in previous.items())


def parse_previous(value: bytes | str | None) -> dict[str, int] | None:
    """The ``topic=number,...`` header as a mapping; None if it is missing or damaged."""
    if value is None:
        return None
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    found: dict[str, int] = {}
    for part in filter(None, text.split(",")):
        topic, sep, number = part.rpartition("=")
        if not sep or not topic:
            return None
        try:
            found[topic] = int(number)
        except ValueError:
            return None
    return found


def event_number_of(headers: Any) -> int | None:
    """A message's ``event_number`` header, or None where it is missing or damaged."""
    for name, value in headers or ():
        if name == EVENT_NUMBER_HEADER:
            try:
                return int(value)
            except (TypeError, ValueError):
                return None
    return None
