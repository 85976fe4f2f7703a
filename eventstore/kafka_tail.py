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

import logging
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicCollection, TopicPartition
from confluent_kafka.admin import AdminClient

from eventstore.relay_problems import RelayProblem

__all__ = [
    "EPOCH_HEADER",
    "EVENT_ID_HEADER",
    "EVENT_NUMBER_HEADER",
    "PARTITION_HEADER",
    "PREVIOUS_HEADER",
    "RELAY_HEADER",
    "STORE_HEADER",
    "Confirm",
    "PartitionTail",
    "Tail",
    "TailMessage",
    "TailUnreadable",
    "TailUnsettled",
    "classify",
    "end_offsets",
    "event_number_of",
    "parse_previous",
    "previous_header",
    "read_tail",
    "topic_ids",
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
PARTITION_HEADER = "tidings.partition"
"""The partition the relay produced the message to (``eventstore.partitioner``): a copy found on another
partition is a copy, not the event."""
PREVIOUS_HEADER = "tidings.previous"
"""For each of the relay's topics, the event_number of the last event it published there before this
one (``bank.events=41,bank.audit=17``; 0: none). A consumer reading several partitions, or several
topics, knows from it whether an event is the next one in the global order: see
``workers.global_order``."""
FIRST_WINDOW = 64

log = logging.getLogger("eventstore.relay")

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


class TailUnsettled(RelayProblem):
    """Another producer holds a transaction open on a partition: its stable end is below its end."""

    verdict = "tail_unsettled"

    def __init__(self, topic: str, partition: int, stable: int, end: int) -> None:
        super().__init__(
            f"partition {partition} of topic {topic} holds a transaction another producer left open: its "
            f"last stable offset is {stable}, its end {end}, and nothing after the open transaction can be "
            "read until it ends (the relay's own transactions are always settled when it starts). The "
            "relay waits rather than guess its tail. Find the producer (`kafka-transactions.sh "
            f"--bootstrap-server ... describe-producers --topic {topic} --partition {partition}`) and end "
            "its transaction, or wait for the broker to abort it (transaction.timeout.ms)"
        )
        self.topic = topic
        self.partition = partition


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
    trimmed: frozenset[str] = frozenset()
    """Topics retention (or DeleteRecords) has removed messages from: a partition starts above offset 0."""

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
    epoch: int = 0,
    at_least: int = 0,
    boundary: Mapping[tuple[str, int], int] | None = None,
    timeout: float = 30.0,
    trust_own: bool = True,
) -> Tail:
    """Read back the tail of every partition of ``topics`` and classify it for ``store``'s ``relay``.

    ``config`` holds the connection settings (``bootstrap.servers``, security); the consumers join no
    group, and only committed messages are read. Per partition, the relay's last message is its own
    message of the current ``epoch`` with the highest event_number: a copy of an earlier one replayed
    after it does not hide it. While what was found lies below ``at_least`` (the position the relay
    recorded: it published at least that far), partitions are read further back, since a long run of
    copies may hide more. With ``trust_own=False`` the relay's own messages, too, count only once the
    store confirms them: the tail is then where Kafka and the store last agree. ``boundary`` gives, per
    (topic, partition), where the current epoch began: the relay's messages before it are of an older
    epoch and those after it of the current one, whatever their ``EPOCH_HEADER`` claims.

    Raises:
        TailUnreadable: a topic is missing, or Kafka answers its metadata with an error that does not pass.
        TailUnsettled: another producer holds a transaction open on a partition: what follows it cannot be
            read until it ends.
        KafkaException: the brokers did not answer within ``timeout`` seconds (try again).
    """
    settings = {
        **config,
        "group.id": "tidings-relay-tail",  # required by the client; nothing is committed under it
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
    }
    consumer = Consumer({**settings, "isolation.level": "read_committed"})
    # Its end offsets are the partitions' true ends; the read_committed consumer's are the stable ones.
    ends = Consumer({**settings, "isolation.level": "read_uncommitted"})
    try:
        partitions: list[_Partition] = []
        ever_written = False
        trimmed: set[str] = set()
        for topic in topics:
            for number in _partitions(consumer, topic, timeout):
                tp = TopicPartition(topic, number)
                low, stable = consumer.get_watermark_offsets(tp, timeout=timeout, cached=False)
                end = ends.get_watermark_offsets(tp, timeout=timeout, cached=False)[1]
                if stable < end:
                    raise TailUnsettled(topic, number, stable, end)
                ever_written = ever_written or end > 0
                if low > 0:
                    trimmed.add(topic)
                if end > low:
                    partitions.append(_Partition(tp, low, end))
        found: dict[int, PartitionTail] = {}
        partial: set[int] = set()  # found in a window that does not reach the partition's start
        reading = list(range(len(partitions)))
        window = FIRST_WINDOW
        while reading:
            read = _read_back(consumer, [partitions[i] for i in reading], window, timeout)
            if boundary:
                read = [_placed(messages, boundary, epoch) for messages in read]
            complete = [partitions[i].high - window <= partitions[i].low for i in reading]
            results = classify(
                read, complete, store=store, relay=relay, confirm=confirm, epoch=epoch, trust_own=trust_own
            )
            still = []
            for i, whole, result in zip(reading, complete, results, strict=True):
                if result is None:
                    still.append(i)  # nothing of the relay's so far: look further back
                    continue
                found[i] = result
                if whole:
                    partial.discard(i)
                else:
                    partial.add(i)
            reading, window = still, window * 8
            if not reading and partial and _position(found.values()) < at_least:
                # The relay published further than this: copies of older messages hide its last ones,
                # or the topics lost their end. Only the whole partitions can tell.
                log.warning(
                    "the tails show less than the relay recorded publishing; reading further back",
                    extra={"found": _position(found.values()), "recorded": at_least, "window": window},
                )
                reading = sorted(partial)
        return Tail(
            [m for r in found.values() for m in r.messages],
            [m for r in found.values() for m in r.foreign],
            sum(r.ignored for r in found.values()),
            ever_written,
            frozenset(trimmed),
        )
    finally:
        consumer.close()
        ends.close()


def topic_ids(config: Mapping[str, Any], topics: Iterable[str], timeout: float = 30.0) -> dict[str, str]:
    """Kafka's id of each of ``topics``: a topic deleted and made again under the same name has another.

    A topic Kafka will not describe is left out.

    Raises:
        KafkaException: the brokers did not answer (try again).
    """
    admin = AdminClient(dict(config))
    futures = admin.describe_topics(TopicCollection(list(topics)), request_timeout=timeout)
    found = {}
    for topic, future in futures.items():
        try:
            found[topic] = str(future.result(timeout).topic_id)
        except KafkaException as exc:
            if exc.args[0].retriable():
                raise
            # No Describe permission, say: without the id, a topic made again goes unnoticed by it.
    return found


def end_offsets(
    config: Mapping[str, Any], topics: Iterable[str], timeout: float = 30.0
) -> dict[tuple[str, int], int]:
    """Where each partition of ``topics`` ends now (its next offset).

    Raises:
        TailUnreadable: a topic is missing or cannot be described.
        KafkaException: the brokers did not answer (try again).
    """
    consumer = Consumer({**config, "group.id": "tidings-relay-tail", "isolation.level": "read_uncommitted"})
    try:
        return {
            (topic, number): consumer.get_watermark_offsets(
                TopicPartition(topic, number), timeout=timeout, cached=False
            )[1]
            for topic in topics
            for number in _partitions(consumer, topic, timeout)
        }
    finally:
        consumer.close()


def _placed(
    messages: list[TailMessage], boundary: Mapping[tuple[str, int], int], epoch: int
) -> list[TailMessage]:
    """The messages with the epoch their place gives them: before the boundary, an older one."""
    return [
        replace(m, epoch=epoch if m.offset >= boundary.get((m.topic, m.partition), 0) else epoch - 1)
        for m in messages
    ]


def _position(found: Iterable[PartitionTail]) -> int:
    return max((r.current.event_number or 0 for r in found if r.current is not None), default=0)


@dataclass(frozen=True, slots=True)
class PartitionTail:
    """What one partition's tail says."""

    current: TailMessage | None
    """The relay's last message: its own of the current epoch (or, in epoch 0, one the store confirms)
    with the highest event_number."""
    latest: TailMessage | None
    """Its own (or confirmed) message of any epoch with the highest event_number: where the header chain
    goes on."""
    foreign: list[TailMessage]
    """Messages of other stores or relays in the window read."""
    ignored: int
    """Other messages passed over: no identity and not confirmed, copies, damaged numbers."""

    @property
    def messages(self) -> list[TailMessage]:
        if self.latest is None or self.latest == self.current:
            return [self.current] if self.current is not None else []
        return [self.latest] if self.current is None else [self.current, self.latest]


def classify(
    windows: Sequence[list[TailMessage]],
    complete: Sequence[bool],
    *,
    store: str,
    relay: str,
    confirm: Confirm,
    epoch: int = 0,
    trust_own: bool = True,
) -> list[PartitionTail | None]:
    """For each partition's window of messages, what it says; None where the window must reach further
    back (it holds nothing of the relay's, and does not begin at the partition's start: ``complete``).

    Messages without identity count only once the store confirms them: one ``confirm`` call for all.
    """
    classified = [_classify(messages, store, relay, trust_own) for messages in windows]
    asked = [_pair(m) for c in classified for m in c.candidates]
    confirmed = set(confirm(asked)) if asked else set()
    results: list[PartitionTail | None] = []
    for c, reaches_start in zip(classified, complete, strict=True):
        held = [m for m in c.candidates if _pair(m) in confirmed]
        current = _highest([m for m in c.own if m.epoch >= epoch] or (held if epoch == 0 else []))
        latest = _highest(c.own or held)
        if current is None and latest is None and not reaches_start:
            results.append(None)
            continue
        mark = max((m.offset for m in (current, latest) if m is not None), default=-1)
        passed_over = [m for m in c.own + c.candidates if m.offset > mark]
        foreign = c.foreign  # wherever they are in the window: two histories in one topic either way
        results.append(PartitionTail(current, latest, foreign, c.ignored + len(passed_over)))
    return results


def _highest(messages: list[TailMessage]) -> TailMessage | None:
    """The message with the highest event_number; of equal ones the first written (copies come later)."""
    return min(messages, key=lambda m: (-(m.event_number or 0), m.offset), default=None)


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
    own: list[TailMessage]
    candidates: list[TailMessage]
    foreign: list[TailMessage]
    ignored: int


# What a relay's message can hold: an event_number that fits PostgreSQL's bigint, and an event id.
_LARGEST_NUMBER = 2**63 - 1


def _classify(messages: list[TailMessage], store: str, relay: str, trust_own: bool) -> _Classified:
    """Sort a partition's window: the relay's own, those the store must confirm, other stores', the rest."""
    result = _Classified([], [], [], 0)
    for message in messages:
        number = message.event_number
        whole = number is not None and 0 < number <= _LARGEST_NUMBER and message.event_id is not None
        ours = (message.store, message.relay) == (store, relay)
        if ours and whole:
            (result.own if trust_own else result.candidates).append(message)
        elif message.store is not None and not ours:
            result.foreign.append(message)
        elif whole and message.store is None:
            result.candidates.append(message)
        else:
            result.ignored += 1  # damaged: no number, a number no event can have, or no event id
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
