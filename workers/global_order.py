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
have not fetched yet. Otherwise it waits for more messages, however long: the only other release,
``release_oldest``, needs a head on every partition. Pure: no I/O, no clock.

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
    """A message and what orders it: its event_number (None: not this store's event, so it orders
    nothing) and its previous-per-topic header (None when the message does not say: published by a
    relay older than the header)."""

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
        self._repeats: list[Any] = []

    def add(self, key: Key, item: Ordered) -> None:
        self._waiting.setdefault(key, deque()).append(item)

    def forget(self, key: Key) -> list[Ordered]:
        """Drop a partition (revoked); what waited there is returned, unhandled."""
        return list(self._waiting.pop(key, ()))

    def waiting(self) -> int:
        return sum(len(items) for items in self._waiting.values())

    def held(self) -> dict[Key, int]:
        """How many messages wait here, per partition (flow control bounds it)."""
        return {key: len(items) for key, items in self._waiting.items() if items}

    def empty(self) -> list[Key]:
        """The partitions without a waiting message. When nothing can be released, the next event is
        on one of them: never pause these (see ``release``)."""
        return [key for key, items in self._waiting.items() if not items]

    def unproven(self) -> int:
        """Heads that say nothing of their order (no previous header: an older relay's messages)."""
        return sum(1 for items in self._waiting.values() if items and items[0].previous is None)

    def release(self) -> list[tuple[Key, Any]]:
        """Every message that can be handed on now, in order.

        When nothing qualifies although messages wait, the next event of the handler's topics is on a
        partition that has no waiting message: the lowest-numbered event not handed on yet is at the
        head of its partition (Kafka keeps a partition's order, and the relay publishes a partition in
        event_number order), and it qualifies (every event before it is handed on).
        """
        released: list[tuple[Key, Any]] = []
        while True:
            found = self._next()
            if found is None:
                return released
            key, item = found
            self._waiting[key].popleft()
            if item.event_number is not None:
                if item.event_number > self.last:
                    self.last = item.event_number
                else:
                    self._repeats.append(item.payload)
            released.append((key, item.payload))

    def take_repeats(self) -> list[Any]:
        """The payloads released since the last call whose event_number was at or below ``last``: that
        event was handed on already (from this partition or, as a copy, from another one)."""
        repeats, self._repeats = self._repeats, []
        return repeats

    def release_oldest(self) -> list[tuple[Key, Any]]:
        """When no head qualifies because the lowest one carries no previous header (a relay older
        than it) and every partition of the handler's topics waits with a head: hand on the lowest.

        Sound because each head is its partition's earliest message not handed on and a partition is
        in event_number order, so whatever any partition has not delivered yet is numbered above its
        head: with a head on every partition (of a complete set: the runner joins partitions added to
        its topics), the lowest head is below everything still to come. Returns [] while a partition
        has no head (the next event may be there), when the lowest head carries the header (it would
        have qualified, so an earlier event is still to come), or when another head's header names an
        event between ``last`` and the lowest head. The merge then waits, however long: no timer trades
        order for progress."""
        heads = [(key, items[0]) for key, items in self._waiting.items() if items]
        if not heads or len(heads) < len(self._waiting):
            return []
        key, item = min(heads, key=lambda head: head[1].event_number or 0)
        lowest = item.event_number or 0
        if item.previous is not None:
            return []
        for _, head in heads:
            named = (head.previous or {}).items()
            if any(topic in self.topics and self.last < number < lowest for topic, number in named):
                return []
        self._waiting[key].popleft()
        self.last = max(self.last, lowest)
        return [(key, item.payload), *self.release()]

    def _next(self) -> tuple[Key, Ordered] | None:
        for key, items in self._waiting.items():
            if not items:
                continue
            head = items[0]
            if head.event_number is None or head.event_number <= self.last:
                # Foreign (no number to trust: the lane parks it, and ``last`` does not move), or a
                # redelivery (the lane skips it once the store confirms it is the event handled there).
                return key, head
            if head.previous is not None and self._follows(head.previous):
                return key, head
        return None

    def _follows(self, previous: dict[str, int]) -> bool:
        return all(previous.get(topic, 0) <= self.last for topic in self.topics)

    def assign(self, keys: Iterable[Key]) -> None:
        """Partitions that may deliver messages (a partition without a head blocks ``release_oldest``)."""
        for key in keys:
            self._waiting.setdefault(key, deque())
