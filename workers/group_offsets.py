"""Where consumer groups are in Kafka: their committed offsets, the partitions' ends, and what lies between.

``tidings status`` asks Kafka through ``KafkaView``. Every question has a timeout; answers that say
"not ready yet" (a group coordinator loading, a leader being elected) are asked again until it passes;
a cluster that does not answer in time raises ``KafkaUnavailable``.

The lag of a partition is counted by reading it, not by subtracting offsets: the relay publishes each
batch in a Kafka transaction whose commit marker takes an offset too, so a group that has handled every
event sits one offset below the end, and ``end - position`` would never reach 0. ``read_positions``
reads each partition from a group's position to its end (a ``read_committed`` consumer, as the workers
are) and counts the events there, up to ``MAX_COUNTED``; past that the offset difference stands in, marked
inexact. The same read starts a few offsets before the position, to find the ``event_number`` header of
the last message the group finished with.

Example::

    view = KafkaView({"bootstrap.servers": "kafka:9092"}, timeout=10)
    ends = view.ends(view.partitions(["bank.events"]))
    committed = view.committed({"bank.balances": view.partitions(["bank.events"])})["bank.balances"]
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from confluent_kafka import (
    Consumer,
    IsolationLevel,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

from eventstore.kafka_tail import event_number_of

__all__ = ["MAX_COUNTED", "READ_BACK", "KafkaUnavailable", "KafkaView", "Reading", "ToRead"]

MAX_COUNTED = 1000
"""Events counted per partition; a longer lag is given as the offset difference (an upper bound)."""
READ_BACK = 64
"""Offsets read before a position to find the last finished message (past markers and aborted data)."""

CONCURRENT_GROUPS = 8
RETRY_SECONDS = 0.2
_NOT_READY = {
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.NOT_COORDINATOR,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.UNKNOWN_TOPIC_OR_PART,  # a topic just created, not yet known to every broker
}

Where = tuple[str, int]
"""A partition: (topic, partition number)."""

T = TypeVar("T")


class KafkaUnavailable(Exception):
    """Kafka did not answer a question of ``tidings status`` in time, or refused it."""


@dataclass(frozen=True, slots=True)
class ToRead:
    """A partition to read for one group: from ``start`` (its position, or the log start) to ``end``."""

    topic: str
    partition: int
    start: int
    end: int
    look_back: bool
    """Also find the event_number of the last message before ``start`` (the last one handled)."""


@dataclass(frozen=True, slots=True)
class Reading:
    """What a partition holds past a group's position."""

    lag: int
    """Events from the position to the end (the offset difference when not ``exact``)."""
    exact: bool
    last_event_number: int | None
    """The event_number of the last message before the position (None: not asked, or none found)."""


class KafkaView:
    """Questions about topics and consumer groups, each answered within ``timeout`` seconds."""

    def __init__(self, connection: Mapping[str, Any], timeout: float = 10.0) -> None:
        self.connection = {**connection, "log_level": 0}  # failures are raised, not logged by librdkafka
        self.timeout = timeout
        self.admin = AdminClient(dict(self.connection))
        self.servers = str(connection.get("bootstrap.servers", ""))
        self._topics: dict[str, Any] | None = None

    def topics(self) -> dict[str, Any]:
        """Every topic of the cluster, as Kafka described it when first asked (``TopicMetadata``)."""
        if self._topics is None:
            metadata = self._ask("listing topics", lambda: self.admin.list_topics(timeout=self.timeout))
            self._topics = dict(metadata.topics)
        return self._topics

    def partitions(self, topics: Iterable[str]) -> list[Where]:
        """The partitions of those ``topics`` that exist."""
        found: list[Where] = []
        for topic in dict.fromkeys(topics):
            described = self.topics().get(topic)
            if described is not None and described.error is None:
                found.extend((topic, number) for number in sorted(described.partitions))
        return found

    def ends(self, partitions: Iterable[Where]) -> dict[Where, tuple[int, int]]:
        """Each partition's first offset and its end as a ``read_committed`` consumer sees it."""
        wanted = list(partitions)
        if not wanted:
            return {}
        firsts = self._offsets(wanted, OffsetSpec.earliest())  # type: ignore[no-untyped-call]
        lasts = self._offsets(wanted, OffsetSpec.latest())  # type: ignore[no-untyped-call]
        return {where: (firsts[where], lasts[where]) for where in wanted}

    def groups(self) -> list[str]:
        """Every consumer group of the cluster."""
        listing = self._ask(
            "listing consumer groups",
            lambda: self.admin.list_consumer_groups(request_timeout=self.timeout).result(self.timeout),
        )
        return sorted(group.group_id for group in listing.valid)

    def committed(self, partitions: Mapping[str, list[Where]]) -> dict[str, dict[Where, int]]:
        """The offsets each group committed on its ``partitions`` (none where it committed nothing).

        Asked as a consumer of the group that never joins it: the admin client's offset listing
        crashes librdkafka while a group's coordinator is loading (confluentinc/librdkafka#5040).
        Groups are asked ``CONCURRENT_GROUPS`` at a time.
        """
        with concurrent.futures.ThreadPoolExecutor(CONCURRENT_GROUPS, "tidings-status") as pool:
            asked = {
                group: pool.submit(self._committed, group, wanted) for group, wanted in partitions.items()
            }
            return {group: future.result() for group, future in asked.items()}

    def members(self, groups: list[str]) -> dict[str, tuple[str, int]]:
        """Each group's state (``stable``, ``empty``, ``dead``...) and number of members."""
        if not groups:
            return {}

        def describe() -> dict[str, Any]:
            futures = self.admin.describe_consumer_groups(groups, request_timeout=self.timeout)
            return {group: future.result(self.timeout) for group, future in futures.items()}

        described = self._ask("describing consumer groups", describe)
        return {
            group: (getattr(d.state, "name", str(d.state)).lower(), len(d.members))
            for group, d in described.items()
        }

    def read_positions(self, partitions: list[ToRead]) -> dict[Where, Reading]:
        """Read each partition from its start (less ``READ_BACK`` when looking back) to its end."""
        wanted = [p for p in partitions if p.start < p.end or (p.look_back and p.start > 0)]
        found = {(p.topic, p.partition): Reading(0, True, None) for p in partitions}
        if not wanted:
            return found
        consumer = Consumer(
            {
                **self.connection,
                "group.id": "tidings-status",  # required by the client; nothing is committed under it
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            }
        )
        try:
            return found | _read(consumer, wanted, self.timeout, self.servers)
        finally:
            consumer.close()

    def _committed(self, group: str, partitions: list[Where]) -> dict[Where, int]:
        if not partitions:
            return {}
        consumer = Consumer({**self.connection, "group.id": group, "enable.auto.commit": False})
        try:
            found = self._ask(
                f"reading the offsets of group {group!r}",
                lambda: consumer.committed([TopicPartition(*where) for where in partitions], self.timeout),
            )
        finally:
            consumer.close()
        return {(tp.topic, tp.partition): tp.offset for tp in found if tp.error is None and tp.offset >= 0}

    def _offsets(self, partitions: list[Where], spec: Any) -> dict[Where, int]:
        def ask() -> dict[Where, int]:
            futures = self.admin.list_offsets(
                {TopicPartition(topic, number): spec for topic, number in partitions},
                isolation_level=IsolationLevel.READ_COMMITTED,
                request_timeout=self.timeout,
            )
            return {(tp.topic, tp.partition): int(f.result(self.timeout).offset) for tp, f in futures.items()}

        return self._ask("reading the partitions' offsets", ask)

    def _ask(self, what: str, call: Callable[[], T]) -> T:
        """``call()``, again while Kafka answers that it is not ready (a coordinator loading, a leader being
        elected) for up to ``timeout`` seconds; its failures as ``KafkaUnavailable``."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                return call()
            except concurrent.futures.TimeoutError as exc:
                raise KafkaUnavailable(
                    f"Kafka at {self.servers} did not answer within {self.timeout:g}s ({what})"
                ) from exc
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if _not_ready(error) and time.monotonic() + RETRY_SECONDS < deadline:
                    time.sleep(RETRY_SECONDS)
                    continue
                reason = error.str() if isinstance(error, KafkaError) else str(exc)
                raise KafkaUnavailable(f"Kafka at {self.servers} failed {what}: {reason}") from exc


def _not_ready(error: object) -> bool:
    return isinstance(error, KafkaError) and (error.retriable() or error.code() in _NOT_READY)


def _read(consumer: Consumer, partitions: list[ToRead], timeout: float, servers: str) -> dict[Where, Reading]:
    plan = {(p.topic, p.partition): p for p in partitions}
    counted = dict.fromkeys(plan, 0)
    last: dict[Where, int | None] = dict.fromkeys(plan)
    capped: set[Where] = set()
    consumer.assign(
        [
            TopicPartition(p.topic, p.partition, max(0, p.start - READ_BACK) if p.look_back else p.start)
            for p in partitions
        ]
    )
    reading = set(plan)
    deadline = time.monotonic() + timeout
    while reading:
        if time.monotonic() > deadline:
            raise KafkaUnavailable(
                f"Kafka at {servers} did not hand over partitions {sorted(reading)} within {timeout:g}s"
            )
        # consume() waits for its whole count or its timeout: short waits, many times.
        for message in consumer.consume(num_messages=500, timeout=0.1):
            where = (str(message.topic()), int(message.partition() or 0))
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    raise KafkaUnavailable(f"Kafka at {servers} failed reading {where}: {error.str()}")
                reading.discard(where)
                continue
            if where not in reading:
                continue
            if int(message.offset() or 0) < plan[where].start:
                number = event_number_of(message.headers())
                if number is not None:
                    last[where] = number
            else:
                counted[where] += 1
                if counted[where] >= MAX_COUNTED:
                    capped.add(where)
                    reading.discard(where)
                    consumer.pause([TopicPartition(*where)])
    return {
        where: Reading(
            p.end - p.start if where in capped else counted[where], where not in capped, last[where]
        )
        for where, p in plan.items()
    }
