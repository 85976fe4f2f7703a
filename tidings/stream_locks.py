"""One command at a time per aggregate within a process.

Commanded runs each aggregate instance as one process, so commands to it queue; tidings holds a lock
per stream while a command loads, decides and appends, so that commands from one process to one busy
aggregate wait for each other instead of racing to the store and retrying. Writers in other processes
are still met by the store's optimistic check.

The locks are striped: a fixed table of locks, a stream taking the one its id hashes to. Two streams
may share a lock, and then wait for each other for the length of one command (with 4,096 stripes and 8
commands running, about one dispatch in 150 meets such a neighbour); what it buys is one uncontended
lock per dispatch and no shared table to keep, which under many threads costs more than the waits.
The locks are re-entrant, so a command dispatched from inside another's ``execute`` never waits for
the lock its own thread holds.
"""

from __future__ import annotations

import threading

__all__ = ["StreamLocks"]

STRIPES = 4096


class StreamLocks:
    def __init__(self, stripes: int = STRIPES) -> None:
        self._locks = [threading.RLock() for _ in range(stripes)]

    def acquire(self, stream_id: str, timeout: float) -> bool:
        """Take the stream's lock within ``timeout`` seconds; False when it stayed busy."""
        return self._locks[hash(stream_id) % len(self._locks)].acquire(timeout=max(0.0, timeout))

    def release(self, stream_id: str) -> None:
        self._locks[hash(stream_id) % len(self._locks)].release()
