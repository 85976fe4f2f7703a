"""Aggregates kept in memory between commands, so that a busy aggregate is not read back every time.

An entry holds the state and the stream version it reflects. It leaves the cache after its lifespan of
idleness, or when the cache is full (the least recently used first). A cached state may be behind the
store (another process appended since): the dispatcher finds out from ``WrongExpectedVersion``, reads
the events it missed and tries again, so the cache is never trusted over the store.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

__all__ = ["AggregateCache", "Cached"]


@dataclass(frozen=True, slots=True)
class Cached:
    state: Any
    version: int
    expires_at: float
    snapshot_at: int = 0
    """The stream version of the aggregate's latest snapshot (0: none)."""


class AggregateCache:
    """At most ``max_aggregates`` entries, each dropped after ``lifespan`` seconds without use."""

    def __init__(self, max_aggregates: int = 10_000, lifespan: float = 300.0) -> None:
        if max_aggregates < 0 or lifespan < 0:
            raise ValueError("max_aggregates and lifespan must not be negative (0 turns the cache off)")
        self.max_aggregates = max_aggregates
        self.lifespan = lifespan
        self._entries: OrderedDict[str, Cached] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, stream_id: str) -> Cached | None:
        with self._lock:
            entry = self._entries.get(stream_id)
            if entry is None:
                return None
            if entry.expires_at < time.monotonic():
                del self._entries[stream_id]
                return None
            self._entries.move_to_end(stream_id)
            return entry

    def put(
        self, stream_id: str, state: Any, version: int, lifespan: float | None = None, snapshot_at: int = 0
    ) -> None:
        span = self.lifespan if lifespan is None else lifespan
        if not self.max_aggregates or span <= 0:
            return
        with self._lock:
            current = self._entries.get(stream_id)
            if current is not None and current.version > version:
                return  # a thread that finished later had an older state: keep the newer one
            self._entries[stream_id] = Cached(state, version, time.monotonic() + span, snapshot_at)
            self._entries.move_to_end(stream_id)
            while len(self._entries) > self.max_aggregates:
                self._entries.popitem(last=False)

    def evict(self, stream_id: str) -> None:
        with self._lock:
            self._entries.pop(stream_id, None)

    def __len__(self) -> int:
        return len(self._entries)
