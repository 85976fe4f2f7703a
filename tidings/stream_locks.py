"""One command at a time per aggregate within a process.

Commanded runs each aggregate instance as one process, so commands to it queue; tidings holds a lock
per stream while a command loads, decides and appends, so that commands from one process to one busy
aggregate wait for each other instead of racing to the store and retrying. Writers in other processes
are still met by the store's optimistic check.

A lock exists only while some thread holds or waits for it, so the table stays as small as the number
of aggregates busy at this moment.
"""

from __future__ import annotations

import threading

__all__ = ["StreamLocks"]


class StreamLocks:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[threading.Lock, list[int]]] = {}

    def acquire(self, stream_id: str, timeout: float) -> bool:
        """Take the stream's lock within ``timeout`` seconds; False when it stayed busy."""
        with self._lock:
            entry = self._entries.get(stream_id)
            if entry is None:
                entry = self._entries[stream_id] = (threading.Lock(), [0])
            entry[1][0] += 1
        if entry[0].acquire(timeout=max(0.0, timeout)):
            return True
        self._leave(stream_id, entry)
        return False

    def release(self, stream_id: str) -> None:
        with self._lock:
            entry = self._entries[stream_id]
        entry[0].release()
        self._leave(stream_id, entry)

    def _leave(self, stream_id: str, entry: tuple[threading.Lock, list[int]]) -> None:
        with self._lock:
            entry[1][0] -= 1
            if not entry[1][0]:
                del self._entries[stream_id]

    def __len__(self) -> int:
        return len(self._entries)
