"""Global order: the events of several partitions (and topics), handed on in event_number order.

Kafka keeps order per partition only. A handler in global order reads every partition of its topics and
must see its events as PostgreSQL numbered them, as a Commanded handler does. Numbering is gapless, but a
handler's topics need not carry every event (a routing file sends some elsewhere), so "the next number"
is not enough to know which event comes next. The relay says it instead: each message carries, for each
of the relay's topics, the event_number of the last event published there before it
(``eventstore.kafka_tail.PREVIOUS_HEADER``).

Having handed on every event of its topics up to ``last``, the merge may hand on a partition's first
waiting event ``m`` when no event of its topics lies between ``last`` and ``m``: when, for each of its
topics ``t``, ``previous_t(m) <= last``. That ``m`` is the next one, whatever the other partitions hold or
have not fetched yet. Otherwise it waits for more messages. Pure: no I/O, no clock.

Example::

    merge = GlobalOrder(topics={"bank.events"}, last=0)
    merge.add(("bank.events", 1), Ordered(2, {"bank.events": 1}, message_b))
    merge.release()                       # []: event 1 is on its way on another partition
    merge.add(("bank.events", 0), Ordered(1, {"bank.events": 0}, message_a))
    merge.release()                       # [(("bank.events", 0), message_a), (("bank.events", 1), message_b)]
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["GlobalOrder", "Ordered"]

Key = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Ordered:
    """A message and what orders it: its event_number and its previous-per-topic header (None when the
    message does not say: unreadable, or published by a relay older than the header)."""

    event_number: int | None
    previous: dict[str, int] | None
    payload: Any


class GlobalOrder:
    """Holds each partition's waiting messages and releases them in global order.

    Args:
        topics: the topics the handler reads (the merge's criterion spans all of them).
        last: the event_number up to which every event of ``topics`` has been handled.
    """

    def __init__(self, topics: Collection[str], last: int) -> None:
        self.topics = frozenset(topics)
        self.last = last
        self._waiting: dict[Key, deque[Ordered]] = {}

    def add(self, key: Key, item: Ordered) -> None:
        self._waiting.setdefault(key, deque()).append(item)

    def forget(self, key: Key) -> list[Ordered]:
        """Drop a partition (revoked); what waited there is returned, unhandled."""
        return list(self._waiting.pop(key, ()))

    def waiting(self) -> int:
        return sum(len(items) for items in self._waiting.values())

    def release(self) -> list[tuple[Key, Any]]:
        """Every message that can be handed on now, in order."""
        released: list[tuple[Key, Any]] = []
        while True:
            found = self._next()
            if found is None:
                return released
            key, item = found
            self._waiting[key].popleft()
            if item.event_number is not None and item.event_number > self.last:
                self.last = item.event_number
            released.append((key, item.payload))

    def release_oldest(self, *, every_partition: bool = True) -> list[tuple[Key, Any]]:
        """When no head qualifies although every partition waits with one (messages whose header is
        missing, or ``last`` unknown after a change of mode): hand on the lowest event_number, which is
        then the next by Kafka's per-partition order. Returns [] unless every partition has a head, or
        ``every_partition`` is False (the caller has waited long enough for the empty ones)."""
        heads = [(key, items[0]) for key, items in self._waiting.items() if items]
        if not heads or (every_partition and len(heads) < len(self._waiting)):
            return []
        key, item = min(heads, key=lambda head: head[1].event_number or 0)
        self._waiting[key].popleft()
        self.last = max(self.last, item.event_number or 0)
        return [(key, item.payload), *self.release()]

    def _next(self) -> tuple[Key, Ordered] | None:
        for key, items in self._waiting.items():
            if not items:
                continue
            head = items[0]
            if head.event_number is None or head.event_number <= self.last:
                return key, head  # unreadable (the lane parks it), or a redelivery (the lane skips it)
            if head.previous is not None and self._follows(head.previous):
                return key, head
        return None

    def _follows(self, previous: dict[str, int]) -> bool:
        return all(previous.get(topic, 0) <= self.last for topic in self.topics)

    def assign(self, keys: Iterable[Key]) -> None:
        """Partitions that may deliver messages (a partition without a head blocks ``release_oldest``)."""
        for key in keys:
            self._waiting.setdefault(key, deque())
