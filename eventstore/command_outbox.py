"""The command outbox as an operator sees it: what waits to be sent, and the commands set aside.

Process managers write commands bound to other applications into ``command_outbox``; the command sender
(``eventstore.command_sender``) sends them. A command Kafka can never accept (larger than its message
limit, a destination that is not a topic name) is *set aside*: ``failed_at`` and its own ``last_error``
are written on its row, later commands of the same target (destination and key) wait behind it, and
every other target goes on. An operator then fixes the cause and retries it, or discards it
(``tidings outbox list | retry | discard``), as ``tidings parked`` does for events.

Example::

    for command in set_aside(store):
        print(command.id, command.destination, command.error)
    retry_set_aside(store, [command.id for command in set_aside(store)])
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from psycopg import sql

from eventstore.postgres.store import PostgresEventStore

__all__ = [
    "NotSetAside",
    "OutboxStatus",
    "SetAsideCommand",
    "discard_set_aside",
    "outbox_status",
    "retry_set_aside",
    "set_aside",
]


class NotSetAside(LookupError):
    """Some of the ids given are no command set aside (unknown, waiting to be sent, or sent): nothing
    was changed."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids
        super().__init__(f"no such command set aside: id {', '.join(map(str, ids))}")


@dataclass(frozen=True, slots=True)
class OutboxStatus:
    """Commands of one destination not sent yet: how many, since when, the last error met, and how many
    of them are set aside (Kafka refused them: ``tidings outbox list``)."""

    destination: str
    unsent: int
    oldest_seconds: float
    last_error: str | None
    set_aside: int = 0


@dataclass(frozen=True, slots=True)
class SetAsideCommand:
    """A command the sender set aside, and why."""

    id: int
    destination: str
    command_type: str
    partition_key: str | None
    error: str | None
    created_at: datetime
    failed_at: datetime


def _outbox(store: PostgresEventStore) -> sql.Identifier:
    return sql.Identifier(store.config.schema, "command_outbox")


def outbox_status(store: PostgresEventStore) -> list[OutboxStatus]:
    """Per destination, the commands waiting to be sent (none listed: everything was sent)."""
    statement = sql.SQL(
        "SELECT destination, count(*), extract(epoch FROM now() - min(created_at)), "
        "coalesce((array_agg(last_error ORDER BY id) FILTER (WHERE failed_at IS NOT NULL))[1], "
        "(array_agg(last_error ORDER BY id) FILTER (WHERE last_error IS NOT NULL))[1]), "
        "count(*) FILTER (WHERE failed_at IS NOT NULL) "
        "FROM {} WHERE sent_at IS NULL GROUP BY destination ORDER BY destination"
    ).format(_outbox(store))
    with store.connection() as conn:
        rows = conn.execute(statement).fetchall()
    return [OutboxStatus(d, int(n), float(age or 0.0), error, int(f)) for d, n, age, error, f in rows]


def set_aside(store: PostgresEventStore, limit: int = 1000) -> list[SetAsideCommand]:
    """The commands set aside, oldest first."""
    statement = sql.SQL(
        "SELECT id, destination, command_type, partition_key, last_error, created_at, failed_at FROM {} "
        "WHERE sent_at IS NULL AND failed_at IS NOT NULL ORDER BY id LIMIT %s"
    ).format(_outbox(store))
    with store.connection() as conn:
        return [SetAsideCommand(*row) for row in conn.execute(statement, (limit,))]


def retry_set_aside(store: PostgresEventStore, ids: list[int]) -> int:
    """Give the sender these set-aside commands again (after the cause is fixed); how many there were.

    Raises:
        NotSetAside: one of ``ids`` is no command set aside; none was given back.
    """
    statement = sql.SQL(
        "UPDATE {} SET failed_at = NULL WHERE id = ANY(%s) AND sent_at IS NULL AND failed_at IS NOT NULL "
        "RETURNING id"
    ).format(_outbox(store))
    return _all_or_none(store, statement, ids)


def discard_set_aside(store: PostgresEventStore, ids: list[int]) -> int:
    """Delete these set-aside commands (never sent); the commands of their targets go on without them.

    Raises:
        NotSetAside: one of ``ids`` is no command set aside; none was deleted.
    """
    statement = sql.SQL(
        "DELETE FROM {} WHERE id = ANY(%s) AND sent_at IS NULL AND failed_at IS NOT NULL RETURNING id"
    ).format(_outbox(store))
    return _all_or_none(store, statement, ids)


def _all_or_none(store: PostgresEventStore, statement: sql.Composed, ids: list[int]) -> int:
    with store.connection() as conn:
        done = {row[0] for row in conn.execute(statement, (ids,))}
        missing = sorted(set(ids) - done)
        if missing:
            raise NotSetAside(missing)  # the transaction is rolled back: nothing changed
    return len(done)
