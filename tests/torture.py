"""How many rounds the kill -9 loops run.

CI runs each loop for enough rounds to land kills at every kind of moment (before leading, inside a
batch, between a commit and its checkpoint) within the suite's time budget. A long torture run raises
every loop at once with ``TIDINGS_KILL_ROUNDS=<n>``: each loop then runs ``n`` rounds, never fewer than
its CI count.
"""

from __future__ import annotations

import os

__all__ = ["kill_rounds"]


def kill_rounds(ci: int) -> int:
    """``ci`` rounds, or ``TIDINGS_KILL_ROUNDS`` when that asks for more."""
    wanted = os.environ.get("TIDINGS_KILL_ROUNDS", "")
    if not wanted:
        return ci
    if not wanted.isdigit():
        raise ValueError(f"TIDINGS_KILL_ROUNDS must be a whole number of rounds, got {wanted!r}")
    return max(ci, int(wanted))
