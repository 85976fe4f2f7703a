"""Event ids: time-ordered UUIDs (version 7, RFC 9562).

Ids that grow with time land at the right edge of the ``event_id`` index instead of at random pages,
and making one needs no system call: 48 bits of Unix milliseconds, then 74 random bits from a generator
seeded from the OS (and reseeded in every forked child, so that two worker processes never draw the same
sequence). They are unique identifiers, not secrets.
"""

from __future__ import annotations

import os
import random
import time
import uuid

__all__ = ["new_event_id"]

_random = random.Random(os.urandom(32))  # noqa: S311 - ids must be unique, not unguessable


def _reseed() -> None:
    _random.seed(os.urandom(32))


os.register_at_fork(after_in_child=_reseed)

_VERSION_7 = 0x7 << 76
_VARIANT_RFC = 0b10 << 62


def new_event_id() -> uuid.UUID:
    """A new UUIDv7: time-ordered to the millisecond, random below that."""
    millis = time.time_ns() // 1_000_000
    rand_a = _random.getrandbits(12)
    rand_b = _random.getrandbits(62)
    return uuid.UUID(
        int=(millis & 0xFFFF_FFFF_FFFF) << 80 | _VERSION_7 | rand_a << 64 | _VARIANT_RFC | rand_b
    )
