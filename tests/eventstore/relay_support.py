"""Shared by the relay tests: appending, and reading back what a read_committed consumer sees."""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException

from eventstore import ANY, EventData, PostgresEventStore


@dataclass(frozen=True)
class Seen:
    """One message as a read_committed consumer received it."""

    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes
    headers: dict[str, bytes]

    @property
    def event_id(self) -> uuid.UUID:
        return uuid.UUID(self.headers["event_id"].decode())

    @property
    def event_number(self) -> int:
        return int(self.headers["event_number"])


def append_events(
    store: PostgresEventStore, streams: int, per_stream: int, prefix: str = "account"
) -> list[uuid.UUID]:
    """Append ``per_stream`` events to each of ``streams`` streams, interleaved; return their ids."""
    ids = []
    for version in range(per_stream):
        for stream in range(streams):
            event = EventData("Noted", f"{stream}:{version}".encode(), schema_id="test:1")
            store.append_to_stream(f"{prefix}-{stream}", ANY, [event])
            ids.append(event.event_id)
    return ids


def read_committed(
    bootstrap_servers: str,
    topics: list[str],
    group: str,
    until: Callable[[list[Seen]], bool],
    timeout: float = 60.0,
) -> list[Seen]:
    """Consume ``topics`` from the start with read_committed until ``until(seen)`` holds.

    Raises:
        AssertionError: ``until`` did not hold within ``timeout`` seconds (with what was seen).
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": group,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 50,
        }
    )
    consumer.subscribe(topics)
    seen: list[Seen] = []
    deadline = time.monotonic() + timeout
    try:
        while not until(seen):
            if time.monotonic() > deadline:
                raise AssertionError(f"gave up after {timeout}s with {len(seen)} messages")
            for message in consumer.consume(num_messages=1000, timeout=0.2):
                error = message.error()
                if error is not None:
                    if error.code() in (KafkaError._PARTITION_EOF, KafkaError.UNKNOWN_TOPIC_OR_PART):
                        continue  # the end for now, or a topic the relay has not created yet
                    raise KafkaException(error)
                seen.append(
                    Seen(
                        str(message.topic()),
                        int(message.partition() or 0),
                        int(message.offset() or 0),
                        message.key() or b"",
                        message.value() or b"",
                        {name: bytes(value or b"") for name, value in message.headers() or []},
                    )
                )
    finally:
        consumer.close()
    return seen


def assert_exactly_once_in_order(seen: list[Seen], appended: list[uuid.UUID]) -> None:
    """Every appended event seen once, and per key in event_number (and stream_version) order."""
    ids = [message.event_id for message in seen]
    duplicates = {i for i in ids if ids.count(i) > 1} if len(ids) != len(set(ids)) else set()
    assert not duplicates, f"{len(duplicates)} events published twice, e.g. {sorted(duplicates)[:3]}"
    assert set(ids) == set(appended), (
        f"missing {len(set(appended) - set(ids))}, unexpected {len(set(ids) - set(appended))}"
    )
    by_key: dict[bytes, list[Seen]] = defaultdict(list)
    for message in sorted(seen, key=lambda m: (m.topic, m.partition, m.offset)):
        by_key[message.key].append(message)
    for key, messages in by_key.items():
        numbers = [m.event_number for m in messages]
        assert numbers == sorted(numbers), f"key {key!r} out of event_number order: {numbers}"
        versions = [int(m.headers["stream_version"]) for m in messages]
        assert versions == list(range(1, len(versions) + 1)), f"key {key!r} stream versions {versions}"
