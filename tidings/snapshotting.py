"""Aggregate snapshots: the state every N events, so that a long stream is not replayed from its start.

Configured per aggregate class on the application (Commanded's ``snapshotting``)::

    Application(store, mapper, router, snapshotting={BankAccount: Snapshotting(every=100, version=1)})

A snapshot is the aggregate's state as JSON (the aggregate is a dataclass; the same types as events'
JSON are allowed) at a stream version. Loading an aggregate reads its snapshot, then only the events
after it. Raise ``version`` whenever the state's shape changes: snapshots of another version are
ignored and the stream is replayed, and the next snapshot is written in the new version. A snapshot
that cannot be read or written is logged and skipped: snapshots only ever save time.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import psycopg

from eventstore import EventStoreError, PostgresEventStore, SnapshotData, StoreUnavailable
from tidings.json_decode import build_dataclass
from tidings.json_encode import dataclass_to_json
from tidings.json_hints import ValueProblem

__all__ = ["Snapshotting"]

log = logging.getLogger("tidings.snapshotting")


@dataclass(frozen=True)
class Snapshotting:
    """Take a snapshot every ``every`` events, in format ``version``."""

    every: int
    version: int = 1

    def __post_init__(self) -> None:
        if self.every < 1 or self.version < 1:
            raise ValueError(f"every and version must be at least 1, got {self.every} and {self.version}")

    def due(self, snapshot_at: int, version: int) -> bool:
        """Whether the stream has moved ``every`` events or more past its last snapshot."""
        return version - snapshot_at >= self.every

    def load(
        self,
        store: PostgresEventStore,
        aggregate: type,
        stream_id: str,
        connection: psycopg.Connection[Any] | None = None,
    ) -> tuple[Any, int] | None:
        """The state and version from the aggregate's snapshot, or None (none, other version, unreadable).

        With ``connection`` it is read in that connection's transaction (no other session is taken)."""
        try:
            snapshot = store.read_snapshot(_source_type(aggregate), stream_id, self.version, connection)
            if snapshot is None:
                return None
            state = build_dataclass(aggregate, json.loads(snapshot.data), aggregate.__qualname__)
        except StoreUnavailable:
            raise  # the stream could not be read either: not a reason to replay
        except (EventStoreError, ValueError, TypeError, KeyError, ValueProblem) as exc:
            log.warning(
                "an aggregate snapshot could not be read; replaying the stream instead",
                extra={"stream_id": stream_id, "error": f"{type(exc).__name__}: {exc}"},
            )
            return None
        return state, snapshot.source_version

    def record(self, store: PostgresEventStore, state: Any, stream_id: str, version: int) -> None:
        try:
            data = json.dumps(dataclass_to_json(state, type(state).__qualname__)).encode()
            store.record_snapshot(
                SnapshotData(
                    _source_type(type(state)), stream_id, version, data, self.version, schema_id="json"
                )
            )
        except (EventStoreError, ValueError, TypeError, KeyError, ValueProblem) as exc:
            log.warning(
                "an aggregate snapshot could not be written; the next one will be tried as usual",
                extra={"stream_id": stream_id, "error": f"{type(exc).__name__}: {exc}"},
            )


def _source_type(aggregate: type) -> str:
    return f"{aggregate.__module__}.{aggregate.__qualname__}"
