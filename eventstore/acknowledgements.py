"""Acknowledgements: which stream versions each strongly consistent handler has finished with.

A handler acknowledges an event after its effects are committed (in the same transaction, when it has
one); a dispatch with strong consistency waits until every handler it names has acknowledged the
stream version its command reached. Acknowledging sends a NOTIFY, so waiters wake at once; they also
poll, so a lost notification costs latency and never a wrong answer.

Rows are one per (handler, stream) and expire: ``expire(older_than)`` deletes acknowledgements nobody
has refreshed for that long (a dispatch waiting on such a stream only waits for the next one).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

import psycopg
from psycopg import sql

from eventstore.postgres.store import PostgresEventStore

__all__ = ["Acknowledgements", "acknowledgement_channel"]


def acknowledgement_channel(schema: str) -> str:
    channel = f"tidings_acks_{schema}"
    return channel if len(channel) <= 63 else channel[:63]


class Acknowledgements:
    """The acknowledgement store of one event store.

    Example::

        acks = Acknowledgements(store)
        acks.register_strong("balances")                      # a worker, at start
        acks.acknowledge("balances", "account-1", 7)          # the worker, after handling version 7
        acks.wait(["balances"], "account-1", 7, timeout=5.0)  # a dispatch; returns the pending names
    """

    def __init__(self, store: PostgresEventStore) -> None:
        self.store = store
        schema = store.config.schema
        acks = sql.Identifier(schema, "handler_acks")
        strong = sql.Identifier(schema, "strong_handlers")
        self._channel = acknowledgement_channel(schema)
        self._acknowledge = sql.SQL(
            "WITH acknowledged AS ("
            "INSERT INTO {acks} (handler, stream_id, stream_version) "
            "VALUES (%(handler)s, %(stream)s, %(version)s) "
            "ON CONFLICT (handler, stream_id) DO UPDATE SET acknowledged_at = now(), "
            "stream_version = greatest({acks}.stream_version, excluded.stream_version) RETURNING 1) "
            "SELECT pg_notify(%(channel)s, %(stream)s) FROM acknowledged"
        ).format(acks=acks)
        self._acknowledged = sql.SQL(
            "SELECT handler FROM {} WHERE stream_id = %s AND handler = ANY(%s) AND stream_version >= %s"
        ).format(acks)
        self._register = sql.SQL(
            "INSERT INTO {} (handler) VALUES (%s) ON CONFLICT (handler) DO NOTHING"
        ).format(strong)
        self._unregister = sql.SQL("DELETE FROM {} WHERE handler = %s").format(strong)
        self._strong = sql.SQL("SELECT handler FROM {} ORDER BY handler").format(strong)
        self._expire = sql.SQL(
            "DELETE FROM {} WHERE acknowledged_at < now() - make_interval(secs => %s)"
        ).format(acks)

    def register_strong(self, handler: str) -> None:
        """``handler`` is strongly consistent: ``consistency="strong"`` dispatches wait for it."""
        with self.store.connection() as conn:
            conn.execute(self._register, (handler,))

    def unregister_strong(self, handler: str, connection: psycopg.Connection | None = None) -> None:
        """Dispatches stop waiting for ``handler`` (in the caller's transaction, with ``connection``)."""
        if connection is not None:
            connection.execute(self._unregister, (handler,))
            return
        with self.store.connection() as conn:
            conn.execute(self._unregister, (handler,))

    def strong_handlers(self) -> list[str]:
        with self.store.connection() as conn:
            return [row[0] for row in conn.execute(self._strong).fetchall()]

    def acknowledge(
        self, handler: str, stream_id: str, stream_version: int, connection: psycopg.Connection | None = None
    ) -> None:
        """Record that ``handler`` is done with ``stream_id`` up to ``stream_version``.

        With ``connection`` the acknowledgement commits with the handler's own transaction.
        """
        params = {
            "handler": handler,
            "stream": stream_id,
            "version": stream_version,
            "channel": self._channel,
        }
        if connection is not None:
            connection.execute(self._acknowledge, params)
            return
        with self.store.connection() as conn:
            conn.execute(self._acknowledge, params)

    def acknowledge_many(
        self, handler: str, versions: Iterable[tuple[str, int]], connection: psycopg.Connection
    ) -> None:
        """``acknowledge`` for several streams at once, in the caller's transaction (one round trip)."""
        params = [
            {"handler": handler, "stream": stream, "version": version, "channel": self._channel}
            for stream, version in versions
        ]
        if params:
            with connection.cursor() as cursor:
                cursor.executemany(self._acknowledge, params)

    def pending(self, handlers: Sequence[str], stream_id: str, stream_version: int) -> list[str]:
        """Which of ``handlers`` have not acknowledged ``stream_id`` up to ``stream_version``."""
        with self.store.connection() as conn:
            done = {
                row[0]
                for row in conn.execute(self._acknowledged, (stream_id, list(handlers), stream_version))
            }
        return [h for h in handlers if h not in done]

    def wait(
        self, handlers: Iterable[str], stream_id: str, stream_version: int, timeout: float, poll: float = 0.25
    ) -> list[str]:
        """Wait until every handler acknowledged ``stream_version`` of ``stream_id``; return those that
        had not when ``timeout`` ran out (empty: all did)."""
        waiting = list(handlers)
        if not waiting:
            return []
        deadline = time.monotonic() + timeout
        with psycopg.connect(self.store.config.url, autocommit=True) as listener:
            listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
            while True:
                waiting = self.pending(waiting, stream_id, stream_version)
                remaining = deadline - time.monotonic()
                if not waiting or remaining <= 0:
                    return waiting
                for _ in listener.notifies(timeout=min(poll, remaining), stop_after=1):
                    pass

    def expire(self, older_than: float) -> int:
        """Delete acknowledgements not refreshed for ``older_than`` seconds; return how many."""
        with self.store.connection() as conn:
            return conn.execute(self._expire, (older_than,)).rowcount
