"""Which messages are this store's events: a topic is not a source of truth.

Anything can be produced into an events topic (another store under the same app name, a test producer, a
replayed backup, plain garbage). A handler moves its positions (a partition's last event_number, the
global-order merge's ``last``, checkpoints, the committed offsets' metadata) only on messages whose
identity it has checked, and cheaply, without a query per event:

- the ``tidings.store`` header, where there is one, names this store (a comparison of bytes);
- the ``tidings.partition`` header, where there is one, names the partition the message was read from:
  an exact copy on another partition (a replayed backup) passes every other check, and a per-key lane,
  whose positions are per partition, would handle it again;
- the event_number is not beyond the store's head (the highest number handed out: cached, and read
  again only when a message claims more, so at most once per poll);
- a message that does not decode is this store's only if the store holds its event_id at its number,
  and so is a redelivery (at or below the partition's position): asked only for such messages, in one
  query for all of a unit's.

Anything else is foreign: parked (or dead-lettered) with a reason starting with ``FOREIGN``, without
holding its key back (it is no event of that key) and without moving any position.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Collection
from typing import Any

from psycopg import sql

from eventstore.kafka_tail import PARTITION_HEADER, STORE_HEADER
from eventstore.postgres.store import PostgresEventStore
from eventstore.relay_position import RelayRecord

__all__ = ["FOREIGN", "StoreIdentity", "placement"]

_LARGEST_NUMBER = 2**63 - 1  # event_order.event_number is a bigint

FOREIGN = "not an event of this store"
"""How the reason of a foreign message's parked row starts (such rows hold no key back)."""


TWICE = b"\x00twice"
"""What ``placement`` gives for a header the message carries more than once: no store's id and no
partition, so the message is foreign (a relay writes each once; a second one is an edit)."""


def placement(headers: Any) -> tuple[bytes | None, bytes | None]:
    """The ``tidings.store`` and ``tidings.partition`` headers' values; None where the message has none
    (an older relay), ``TWICE`` where it has more than one."""
    store = placed = None
    for name, value in headers or ():
        if name == STORE_HEADER:
            store = TWICE if store is not None else bytes(value) if value is not None else b""
        elif name == PARTITION_HEADER:
            placed = TWICE if placed is not None else bytes(value) if value is not None else b""
    return store, placed


class StoreIdentity:
    """What tells this store's messages from others; shared by a handler's consumer thread and lanes."""

    def __init__(self, store: PostgresEventStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._store_id: bytes | None = None
        self._head = 0
        schema = store.config.schema
        tables = (sql.Identifier(schema, "event_order"), sql.Identifier(schema, "events"))
        self._event_ids = sql.SQL(
            "SELECT o.event_number, e.event_id::text FROM {} o JOIN {} e ON e.id = o.id "
            "WHERE o.event_number = ANY(%s)"
        ).format(*tables)
        # A catch-up's poll holds a dense run of numbers: one range scan beats a probe per number.
        self._event_id_range = sql.SQL(
            "SELECT o.event_number, e.event_id::text FROM {} o JOIN {} e ON e.id = o.id "
            "WHERE o.event_number BETWEEN %s AND %s"
        ).format(*tables)
        self._data_digest = sql.SQL(
            "SELECT sha256(e.data) FROM {} o JOIN {} e ON e.id = o.id WHERE o.event_number = %s"
        ).format(*tables)

    def data_digest(self, number: int) -> bytes | None:
        """SHA-256 of the data the store holds at ``number`` (None: no event there, deleted or never
        numbered). Asked only of repeats, which are rare, to tell a redelivery from other bytes under a
        handled event's headers."""
        with self.store.connection() as conn:
            row = conn.execute(self._data_digest, (number,)).fetchone()
        return bytes(row[0]) if row is not None else None

    def store_id(self) -> bytes:
        if self._store_id is None:
            self._store_id = RelayRecord(self.store, "").store_id().encode()
        return self._store_id

    def head(self, at_least: int = 0, held: int = 0) -> int:
        """The store's highest event_number; read again only when ``at_least`` is beyond what is known.
        The head only grows, so a number at or below the cached one is within it, and so is ``held``, a
        number the store was just found to hold (``event_ids``): asking for the event_ids first spares
        the query for the head whenever every message's number is held."""
        with self._lock:
            self._head = max(self._head, held)
            if at_least > self._head:
                self._head = max(self._head, self.store.last_event_number())
            return self._head

    def foreign(
        self,
        number: int | None,
        store: bytes | None,
        head: int | None = None,
        *,
        placed: bytes | None = None,
        partition: int = 0,
    ) -> str | None:
        """Why a message claiming ``number``, ``store`` (its ``tidings.store`` header) and ``placed`` (its
        ``tidings.partition`` header), read from ``partition``, cannot be one of this store's events;
        None when it can be (decoding, or its event_id, says the rest). ``head``: the store's head as
        read once for a whole poll (else read again when ``number`` is beyond the cached one)."""
        if number is None:
            return f"{FOREIGN}: its event_number header is missing or damaged"
        if TWICE in (store, placed):
            return f"{FOREIGN}: it carries the tidings.store or tidings.partition header more than once"
        if store is not None and store != self.store_id():
            claimed = store.decode("utf-8", "backslashreplace")
            return f"{FOREIGN}: published for store {claimed!r}, this store is {self.store_id().decode()!r}"
        if placed is not None and placed != str(partition).encode():
            shown = placed.decode("utf-8", "backslashreplace")
            return (
                f"{FOREIGN}: published to partition {shown!r}, read from partition {partition} "
                "(a copy of a message, not the event)"
            )
        head = self.head(number) if head is None else head
        if number > head:
            return f"{FOREIGN}: event_number {number} is beyond the last this store handed out ({head})"
        if number < 1:
            return f"{FOREIGN}: event_number {number} is not a position"
        return None

    def event_ids(self, numbers: Collection[int]) -> dict[int, str]:
        """The event_id the store holds at each of ``numbers`` (a number whose event was deleted, or
        never was, is missing)."""
        wanted = {n for n in numbers if 0 < n <= _LARGEST_NUMBER}  # others are no position at all
        if not wanted:
            return {}
        low, high = min(wanted), max(wanted)
        with self.store.connection() as conn:
            if high - low < 2 * len(wanted):
                rows = conn.execute(self._event_id_range, (low, high)).fetchall()
            else:
                rows = conn.execute(self._event_ids, (sorted(wanted),)).fetchall()
        return {int(number): str(event_id) for number, event_id in rows if number in wanted}

    @staticmethod
    def same_event(found: str | None, claimed: str) -> bool:
        """Whether the store's event_id ``found`` is the message's ``claimed`` one (a deleted event,
        ``found`` None, cannot say otherwise)."""
        if found is None or found == claimed:
            return True  # the store's text and the relay's are both the canonical spelling
        try:
            return uuid.UUID(found) == uuid.UUID(claimed)
        except ValueError:
            return False
