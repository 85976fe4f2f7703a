"""The newest event a set of topics holds, read back from the tail of every partition.

The relay publishes events in event_number order, one Kafka transaction per batch, and commits each
batch before it starts the next. So the highest event_number among the *committed* messages of its
topics is the last event it published, and everything below it is published too: that is where it
resumes. Only committed messages count (``isolation.level=read_committed``); the tail of a partition
may hold aborted messages and transaction markers, so each partition is read back through a window
that widens until a committed event is found or the partition's start is reached.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

__all__ = [
    "EVENT_NUMBER_HEADER",
    "PREVIOUS_HEADER",
    "Tail",
    "event_number_of",
    "last_published",
    "parse_previous",
    "previous_header",
]

EVENT_NUMBER_HEADER = "event_number"
PREVIOUS_HEADER = "tidings.previous"
"""For each of the relay's topics, the event_number of the last event it published there before this
one (``bank.events=41,bank.audit=17``; 0: none). A consumer reading several partitions, or several
topics, knows from it whether an event is the next one in the global order: see
``workers.global_order``."""
FIRST_WINDOW = 64


@dataclass(frozen=True, slots=True)
class Tail:
    """What the topics' tails say."""

    last_event_number: int | None
    """The highest event_number of a committed message, or None if no partition shows one."""
    ever_written: bool
    """Whether any partition has ever held a message (its end offset is above zero)."""
    per_topic: dict[str, int] = field(default_factory=dict)
    """The highest committed event_number of each topic that shows one."""


def last_published(config: Mapping[str, Any], topics: Iterable[str], timeout: float = 30.0) -> Tail:
    """Read back the tail of every partition of ``topics``.

    ``config`` holds the connection settings (``bootstrap.servers``, security); the consumer reads
    committed messages only and joins no group.

    Raises:
        KafkaException: the brokers did not answer within ``timeout`` seconds.
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
        partitions: list[tuple[TopicPartition, int, int]] = []
        ever_written = False
        metadata = consumer.list_topics(timeout=timeout)
        for topic in topics:
            described = metadata.topics.get(topic)
            if described is None or described.error is not None:
                continue
            for number in described.partitions:
                tp = TopicPartition(topic, number)
                low, high = consumer.get_watermark_offsets(tp, timeout=timeout, cached=False)
                ever_written = ever_written or high > 0
                if high > low:
                    partitions.append((tp, low, high))
        per_topic: dict[str, int] = {}
        window = FIRST_WINDOW
        while partitions:
            found = _read_back(consumer, partitions, window, timeout)
            pending = []
            for (tp, low, high), number in zip(partitions, found, strict=True):
                if number is not None:
                    per_topic[tp.topic] = max(per_topic.get(tp.topic, 0), number)
                elif high - window > low:
                    pending.append((tp, low, high))  # only aborted data or markers so far: look further back
            partitions, window = pending, window * 8
        return Tail(max(per_topic.values(), default=None), ever_written, per_topic)
    finally:
        consumer.close()


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


def _read_back(
    consumer: Consumer, partitions: list[tuple[TopicPartition, int, int]], window: int, timeout: float
) -> list[int | None]:
    """For each partition, the highest event_number committed in its last ``window`` offsets."""
    assignment = [
        TopicPartition(tp.topic, tp.partition, max(low, high - window)) for tp, low, high in partitions
    ]
    index = {(tp.topic, tp.partition): i for i, tp in enumerate(assignment)}
    found: list[int | None] = [None] * len(partitions)
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
                number = event_number_of(message.headers())
                if number is not None:
                    i = index[where]
                    found[i] = number if found[i] is None else max(found[i], number)  # type: ignore[type-var]
    finally:
        consumer.unassign()
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
