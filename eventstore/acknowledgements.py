"""Acknowledgements: which events of which streams each strongly consistent handler has finished with.

A handler acknowledges each event (its stream version) after its effects are committed (in the same
transaction, when it has one); a dispatch with strong consistency waits until every handler it awaits
has acknowledged **each** version the command appended. One version never stands for another: a handler
may take a stream's events out of stream order (a routing that spreads the stream over partitions or
topics, lanes running in parallel), and version 2 handled says nothing of version 1.

A dispatch awaits only the handlers that will see one of its events: each strong handler registers which
events reach its topics (``Carried``, decided as the relay routes: by event type, then by stream
category, else the default topic), and the dispatch reads its events' types from the store.

Acknowledging sends a NOTIFY, so waiters wake at once; they also poll, so a lost notification costs
latency and never a wrong answer.

Rows are one per (handler, stream), holding the acknowledged versions as an ``int8multirange`` (one range
while a handler sees every version in order). They are bounded twice, and both bounds only ever make a
dispatch wait longer, never return early: runs of versions that end more than ``WINDOW`` below a
stream's newest acknowledgement are forgotten (whole: a run reaching into the window is kept, so a
dispatch of more than ``WINDOW`` events is acknowledged in full), and ``expire(older_than)`` deletes
rows nobody has refreshed for that long (a dispatch appends new versions, which are acknowledged anew).
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from eventstore.postgres.store import PostgresEventStore
from eventstore.routing import Routing, stream_category

__all__ = ["WINDOW", "Acknowledgements", "Carried", "acknowledgement_channel"]

WINDOW = 1_000
"""How far below a stream's newest acknowledgement runs of versions are remembered: a stream whose
versions a handler partly never sees (they go to other topics) keeps one range per gap, and this bounds
them. A run that reaches into the window is kept whole."""


def acknowledgement_channel(schema: str) -> str:
    channel = f"tidings_acks_{schema}"
    return channel if len(channel) <= 63 else channel[:63]


@dataclass(frozen=True, slots=True)
class Carried:
    """Which events reach a handler's topics, decided as ``Routing.route`` decides an event's topic: the
    rule for its event type, else the rule for its stream category, else ``default``.

    Example::

        Carried.by(routing, ["bank.events"]).carries("bank.AuditNoted", "account-1")  # False
    """

    default: bool = True
    event_types: Mapping[str, bool] = field(default_factory=dict)
    categories: Mapping[str, bool] = field(default_factory=dict)

    @classmethod
    def by(cls, routing: Routing, topics: Collection[str]) -> Carried:
        """What a reader of ``topics`` sees of the events ``routing`` publishes."""
        by_type, by_category = routing.topic_rules()
        return cls(
            routing.default_topic in topics,
            {name: topic in topics for name, topic in by_type.items()},
            {name: topic in topics for name, topic in by_category.items()},
        )

    @property
    def everything(self) -> bool:
        return self.default and all(self.event_types.values()) and all(self.categories.values())

    def carries(self, event_type: str, stream_id: str) -> bool:
        found = self.event_types.get(event_type)
        if found is None and self.categories:
            found = self.categories.get(stream_category(stream_id))
        return self.default if found is None else found

    def document(self) -> str | None:
        """As stored in ``strong_handlers.carries`` (None: every event)."""
        if self.everything:
            return None
        return json.dumps(
            {"default": self.default, "event_types": self.event_types, "categories": self.categories}
        )

    @classmethod
    def of_document(cls, document: Mapping[str, object] | None) -> Carried:
        if document is None:
            return cls()
        event_types, categories = document.get("event_types", {}), document.get("categories", {})
        return cls(
            bool(document.get("default", True)),
            dict(event_types) if isinstance(event_types, Mapping) else {},
            dict(categories) if isinstance(categories, Mapping) else {},
        )


def _multirange(versions: Iterable[int]) -> str:
    """``versions`` as an ``int8multirange`` literal of their runs: ``{[1,4),[7,8)}``."""
    runs: list[list[int]] = []
    for version in sorted(set(versions)):
        if runs and runs[-1][1] == version:
            runs[-1][1] = version + 1
        else:
            runs.append([version, version + 1])
    return "{" + ",".join(f"[{low},{high})" for low, high in runs) + "}"


def _versions(versions: int | Iterable[int]) -> list[int]:
    return [versions] if isinstance(versions, int) else list(versions)


class Acknowledgements:
    """The acknowledgement store of one event store.

    Example::

        acks = Acknowledgements(store)
        acks.register_strong("balances")                      # a worker, at start
        acks.acknowledge("balances", "account-1", 7)          # the worker, after handling version 7
        awaited = acks.awaited(None, "account-1", range(6, 8))  # a dispatch that appended 6 and 7...
        acks.wait(awaited, "account-1", timeout=5.0)          # ...waits; returns the names still pending
    """

    def __init__(self, store: PostgresEventStore) -> None:
        self.store = store
        schema = store.config.schema
        acks = sql.Identifier(schema, "handler_acks")
        strong = sql.Identifier(schema, "strong_handlers")
        self._channel = acknowledgement_channel(schema)
        self._acknowledge = sql.SQL(
            "WITH acknowledged AS ("
            "INSERT INTO {acks} (handler, stream_id, versions) "
            "VALUES (%(handler)s, %(stream)s, %(versions)s::int8multirange) "
            "ON CONFLICT (handler, stream_id) DO UPDATE SET acknowledged_at = now(), "
            # Whole runs are forgotten, never part of one: a run that reaches into the window is
            # the versions of one dispatch (or of a stream seen in order) and costs one range however
            # long it is; cutting it made a dispatch of more than WINDOW events wait for ever.
            "versions = (SELECT range_agg(run) FROM unnest({acks}.versions + excluded.versions) AS run "
            "WHERE upper(run) > upper(excluded.versions) - {window}) RETURNING 1) "
            "SELECT pg_notify(%(channel)s, %(stream)s) FROM acknowledged"
        ).format(acks=acks, window=sql.Literal(WINDOW))
        self._acknowledged = sql.SQL(
            "SELECT handler FROM {} WHERE stream_id = %s AND handler = ANY(%s) "
            "AND versions @> %s::int8multirange"
        ).format(acks)
        self._register = sql.SQL(
            "INSERT INTO {} (handler, carries) VALUES (%s, %s::jsonb) "
            "ON CONFLICT (handler) DO UPDATE SET carries = excluded.carries"
        ).format(strong)
        self._unregister = sql.SQL("DELETE FROM {} WHERE handler = %s").format(strong)
        self._strong = sql.SQL("SELECT handler, carries FROM {} ORDER BY handler").format(strong)
        self._types = sql.SQL(
            "SELECT stream_version, event_type FROM {} WHERE stream_id = %s "
            "AND stream_version BETWEEN %s AND %s"
        ).format(sql.Identifier(schema, "events"))
        self._expire = sql.SQL(
            "DELETE FROM {} WHERE acknowledged_at < now() - make_interval(secs => %s)"
        ).format(acks)

    def register_strong(self, handler: str, carries: Carried | None = None) -> None:
        """``handler`` is strongly consistent: ``consistency="strong"`` dispatches wait for it, when it
        will see one of their events (``carries``; None: every event)."""
        document = carries.document() if carries is not None else None
        with self.store.connection() as conn:
            conn.execute(self._register, (handler, document))

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

    def awaited(
        self, handlers: Sequence[str] | None, stream_id: str, versions: range
    ) -> dict[str, list[int]]:
        """Which of ``versions`` of ``stream_id`` each handler will see, for the handlers that see any.

        ``handlers`` None: every registered strong handler. A named handler that is not registered is
        awaited for every version (nothing says what it reads).
        """
        with self.store.connection() as conn:
            registered = {
                name: Carried.of_document(carries) for name, carries in conn.execute(self._strong).fetchall()
            }
            names = list(registered) if handlers is None else list(handlers)
            carried = {name: registered.get(name, Carried()) for name in names}
            types: dict[int, str] = {}
            if versions and not all(c.everything for c in carried.values()):
                rows = conn.execute(self._types, (stream_id, versions.start, versions.stop - 1)).fetchall()
                types = {int(version): event_type for version, event_type in rows}
        awaited: dict[str, list[int]] = {}
        for name, carries in carried.items():
            seen = [
                v
                for v in versions
                if carries.everything or v not in types or carries.carries(types[v], stream_id)
            ]
            if seen:
                awaited[name] = seen
        return awaited

    def acknowledge(
        self,
        handler: str,
        stream_id: str,
        versions: int | Iterable[int],
        connection: psycopg.Connection | None = None,
    ) -> None:
        """Record that ``handler`` is done with these versions of ``stream_id`` (each one, no other).

        With ``connection`` the acknowledgement commits with the handler's own transaction.
        """
        params = {
            "handler": handler,
            "stream": stream_id,
            "versions": _multirange(_versions(versions)),
            "channel": self._channel,
        }
        if connection is not None:
            connection.execute(self._acknowledge, params)
            return
        with self.store.connection() as conn:
            conn.execute(self._acknowledge, params)

    def acknowledge_many(
        self,
        handler: str,
        versions: Iterable[tuple[str, Iterable[int]]],
        connection: psycopg.Connection,
    ) -> None:
        """``acknowledge`` for several streams at once, in the caller's transaction (one round trip).

        Rows are locked in stream order, whatever order the streams were handled in: two lanes of one
        handler acknowledging the same streams in opposite orders deadlocked.
        """
        params = [
            {
                "handler": handler,
                "stream": stream,
                "versions": _multirange(numbers),
                "channel": self._channel,
            }
            for stream, numbers in sorted(versions, key=lambda item: item[0])
        ]
        if params:
            with connection.cursor() as cursor:
                cursor.executemany(self._acknowledge, params)

    def pending(self, handlers: Sequence[str], stream_id: str, versions: int | Iterable[int]) -> list[str]:
        """Which of ``handlers`` have not acknowledged every one of ``versions`` of ``stream_id``."""
        return self._pending({name: _versions(versions) for name in handlers}, stream_id)

    def _pending(self, awaited: Mapping[str, Collection[int]], stream_id: str) -> list[str]:
        by_versions: dict[str, list[str]] = {}
        for name, versions in awaited.items():
            by_versions.setdefault(_multirange(versions), []).append(name)
        done: set[str] = set()
        with self.store.connection() as conn:
            for literal, names in by_versions.items():
                rows = conn.execute(self._acknowledged, (stream_id, names, literal)).fetchall()
                done.update(str(row[0]) for row in rows)
        return [name for name in awaited if name not in done]

    def wait(
        self,
        awaited: Mapping[str, Collection[int]],
        stream_id: str,
        timeout: float,
        poll: float = 0.25,
    ) -> list[str]:
        """Wait until each handler acknowledged each of its versions of ``stream_id`` (``awaited``, as
        ``awaited()`` gives it); return those that had not when ``timeout`` ran out (empty: all did)."""
        waiting = dict(awaited)
        if not waiting:
            return []
        deadline = time.monotonic() + timeout
        with psycopg.connect(self.store.config.url, autocommit=True) as listener:
            listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
            while True:
                still = self._pending(waiting, stream_id)
                waiting = {name: waiting[name] for name in still}
                remaining = deadline - time.monotonic()
                if not waiting or remaining <= 0:
                    return list(waiting)
                for _ in listener.notifies(timeout=min(poll, remaining), stop_after=1):
                    pass

    def expire(self, older_than: float) -> int:
        """Delete acknowledgements not refreshed for ``older_than`` seconds; return how many."""
        with self.store.connection() as conn:
            return conn.execute(self._expire, (older_than,)).rowcount
