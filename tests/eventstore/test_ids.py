"""Event ids are UUIDv7: time-ordered, unique, and different in forked children."""

from __future__ import annotations

import os
import time
import uuid

from eventstore import new_event_id


def test_ids_are_version_7_and_ordered_by_their_millisecond() -> None:
    before = time.time_ns() // 1_000_000
    ids = [new_event_id() for _ in range(5000)]
    after = time.time_ns() // 1_000_000
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)
    millis = [i.int >> 80 for i in ids]
    assert millis == sorted(millis)
    assert before <= millis[0] <= millis[-1] <= after
    assert len(set(ids)) == len(ids)


def test_a_forked_child_draws_other_ids() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next ids and leave at once
        os.write(write, b"".join(new_event_id().bytes for _ in range(4)))
        os._exit(0)
    os.close(write)
    child = os.read(read, 64)
    os.waitpid(pid, 0)
    parent = b"".join(new_event_id().bytes for _ in range(4))
    assert len(child) == 64
    # Same millisecond or not, the random parts must differ.
    assert {child[i : i + 16][6:] for i in range(0, 64, 16)}.isdisjoint(
        {parent[i : i + 16][6:] for i in range(0, 64, 16)}
    )
