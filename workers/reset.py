"""Resetting a handler: it forgets where it is and what it derived, and starts over from ``start_from``.

After Commanded's ``mix commanded.reset``. ``reset_handler`` refuses while any process runs the handler,
found out from what the runtime itself goes by (``handler_presence``):

- a global-order handler joins no consumer group: its active consumer holds the PostgreSQL advisory
  lock ``tidings-handler.<schema>.<name>``, and its standbys keep a session open, trying to take it;
- a per-key handler's workers are the members of its consumer group.

The reset takes that very lock first, and holds it until it has finished: a global-order worker that
starts meanwhile stands by, and leads only once the reset is over, from the reset positions. Then it
checks that nobody runs the handler (besides itself), calls the handler's ``before_reset()``, and, in one
PostgreSQL transaction:

- a ``Projection``'s ``tables`` are truncated,
- its checkpoints and its ``start_from`` subscription are deleted (``start_from`` applies afresh),
- its parked events are deleted;

it looks at the consumer group again (a per-key worker that joined during the reset may have read its
positions from before it: ``ResetRaced``), and finally deletes the Kafka consumer group, so that a plain
handler has no committed offsets to resume from either. The next worker to run the handler rebuilds it
from ``start_from``.

Example::

    report = reset_handler(app, config, "balances")
    print(report.tables, report.parked)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import psycopg
import sqlalchemy as sa
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from psycopg import sql

from eventstore.acknowledgements import Acknowledgements
from eventstore.errors import ConfigurationError, StoreUnavailable
from eventstore.leadership import Contender, Leadership, contenders
from workers.app import WorkerApp, WorkerConfig
from workers.handler import EventHandler
from workers.parking import ParkedEvents
from workers.positions import Positions
from workers.process_manager import ProcessManager
from workers.projection import Projection

__all__ = [
    "GroupNotDeleted",
    "HandlerRunning",
    "Presence",
    "ResetRaced",
    "ResetReport",
    "active_members",
    "handler_lock_name",
    "handler_presence",
    "reset_handler",
]

log = logging.getLogger("workers.reset")

ADMIN_TIMEOUT_SECONDS = 30.0


def handler_lock_name(schema: str, handler: str) -> str:
    """The leadership a global-order handler's active consumer holds (``workers.runner``)."""
    return f"tidings-handler.{schema}.{handler}"


@dataclass(frozen=True, slots=True)
class Presence:
    """Who runs a handler now, as the runtime itself knows it."""

    leader: Contender | None
    """The session holding the handler's global-order lock (its active consumer, or another reset)."""
    standbys: tuple[Contender, ...]
    """Global-order workers standing by to take over (their sessions try the lock every second)."""
    members: tuple[str, ...]
    """The consumer group's members (``client.id@host``): per-key workers."""

    @property
    def running(self) -> bool:
        return self.leader is not None or bool(self.standbys) or bool(self.members)

    def describe(self) -> str:
        parts = []
        if self.leader is not None:
            parts.append(
                f"its global-order lock is held by the session {self.leader} (its active consumer, or a "
                "reset under way)"
            )
        if self.standbys:
            parts.append(
                f"{len(self.standbys)} global-order standby session(s) wait for that lock "
                f"({', '.join(map(str, self.standbys))})"
            )
        if self.members:
            parts.append(
                f"its consumer group has {len(self.members)} active member(s) ({', '.join(self.members)})"
            )
        return "; ".join(parts) or "nobody runs it"


class HandlerRunning(Exception):
    """Some process runs the handler (or stands by to): its workers must stop before a reset.

    Nothing was changed.
    """

    def __init__(self, handler: str, presence: Presence) -> None:
        super().__init__(
            f"handler {handler!r} is running: {presence.describe()}. Scale the workers that run it to "
            "zero first (e.g. `kubectl scale deployment/<workers> --replicas=0`, or run them without this "
            "handler), then reset again"
        )
        self.handler = handler
        self.presence = presence


class ResetRaced(Exception):
    """A per-key worker joined the handler's consumer group while it was reset.

    The store's part of the reset committed, but that worker may go on from positions it read before;
    the consumer group was left as it was.
    """

    def __init__(self, handler: str, members: list[str]) -> None:
        super().__init__(
            f"the store's part of the reset of {handler!r} is committed, but {len(members)} worker(s) "
            f"joined its consumer group meanwhile ({', '.join(members)}) and may go on from positions "
            "read before the reset. Scale them to zero, then reset again"
        )
        self.handler = handler
        self.members = members


class GroupNotDeleted(Exception):
    """The store's part of the reset committed, but Kafka did not delete the consumer group."""


@dataclass(frozen=True, slots=True)
class ResetReport:
    handler: str
    tables: list[str]
    """The projection's tables that were truncated."""
    parked: int
    """Parked events deleted."""
    group_deleted: bool
    """False when Kafka had no such group (the handler never committed an offset)."""


def active_members(config: WorkerConfig, group: str) -> list[str]:
    """The members of consumer group ``group`` (``client.id@host`` each), none if it has no members.

    Raises:
        KafkaException: Kafka could not describe the group.
    """
    admin = AdminClient(config.connection())
    future = admin.describe_consumer_groups([group], request_timeout=ADMIN_TIMEOUT_SECONDS)[group]
    description = future.result(timeout=ADMIN_TIMEOUT_SECONDS)
    return [f"{member.client_id}@{member.host}" for member in description.members]


def handler_presence(config: WorkerConfig, name: str, *, besides: int | None = None) -> Presence:
    """Who runs handler ``name``: whatever its ordering, both the global-order lock's sessions and the
    consumer group's members are asked (a deployed worker may run another version of the handler).

    ``besides``: a session of the caller's own to leave out (the reset holding the lock).

    Raises:
        KafkaException: Kafka could not describe the group.
        StoreUnavailable: PostgreSQL could not be reached.
    """
    lock = handler_lock_name(config.store.config.schema, name)
    with config.store.connection() as conn:
        sessions = [c for c in contenders(conn, lock) if c.pid != besides]
    leader = next((c for c in sessions if c.holds), None)
    standbys = tuple(c for c in sessions if not c.holds)
    return Presence(leader, standbys, tuple(active_members(config, name)))


def reset_handler(app: WorkerApp, config: WorkerConfig, name: str) -> ResetReport:
    """Reset handler ``name`` of ``app`` so that it starts over from ``start_from``.

    Raises:
        ConfigurationError: the app has no handler named ``name``, or it is a process manager.
        HandlerRunning: a process runs the handler (or stands by to); nothing was changed.
        KafkaException: Kafka could not be asked about the group; nothing was changed.
        ResetRaced: the store was reset, but a worker joined the group meanwhile (stop it, reset again).
        GroupNotDeleted: the store was reset but the group was not deleted (reset again).
        StoreUnavailable: PostgreSQL could not be reached; nothing of the store was changed.
    """
    handler = app.handler(name)
    if issubclass(handler, ProcessManager):
        raise ConfigurationError(
            f"{name!r} is a process manager: a replay would dispatch its commands again (a second "
            "withdrawal, say). To start it over, give it a new name with start_from='current'"
        )
    store = config.store
    # The lock a global-order consumer leads by: held from the check to the end, so that no worker
    # starting meanwhile handles anything before the reset is over.
    lock = Leadership(store.config.leadership_url, handler_lock_name(store.config.schema, name))
    if not lock.try_acquire():
        lock.release()  # its session stays open otherwise, and would look like a standby's
        presence = handler_presence(config, name)
        if presence.running:
            raise HandlerRunning(name, presence)
        raise StoreUnavailable(
            f"cannot take the lock of handler {name!r} on the store's leader_url (PostgreSQL did not "
            "answer there, or the lock was taken and given up just now): nothing was changed; reset again"
        )
    try:
        presence = handler_presence(config, name, besides=lock.pid)
        if presence.running:
            raise HandlerRunning(name, presence)
        report = _reset(handler, config, name)
        if not lock.check():
            # Only an ended session loses it: a worker may have led meanwhile, from the old positions.
            raise StoreUnavailable(
                f"the reset of {name!r} lost its lock (its PostgreSQL session ended) after the store's "
                "part committed: make sure no worker runs the handler, then reset again"
            )
        late = active_members(config, name)
        if late:
            raise ResetRaced(name, late)
        deleted = _delete_group(config, name)
    finally:
        lock.release()
    report = ResetReport(name, report.tables, report.parked, deleted)
    log.info(
        "handler reset",
        extra={"handler": name, "tables": report.tables, "parked": report.parked, "group_deleted": deleted},
    )
    return report


def _reset(handler: type[EventHandler], config: WorkerConfig, name: str) -> ResetReport:
    """``before_reset()``, then the store's part in one transaction."""
    instance = handler(0)
    instance.init()  # before_reset may need what init sets up, as in a running handler
    instance.before_reset()
    tables = list(handler.tables) if issubclass(handler, Projection) else []
    store = config.store
    with store.connection() as conn:
        if tables:
            statement = sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(_qualified(t) for t in tables))
            try:
                conn.execute(statement)
            except psycopg.errors.UndefinedTable as exc:
                raise ConfigurationError(
                    f"{name!r} lists a table that does not exist ({exc.diag.message_primary}): create the "
                    "read model's tables (your migrations) or fix its tables, then reset again"
                ) from None
        Positions(store).unsubscribe(name, conn)
        # Strong dispatches stop waiting for it until it runs again (and registers what it is then).
        Acknowledgements(store).unregister_strong(name, conn)
        parked_count = ParkedEvents(store).discard(name, connection=conn)
    return ResetReport(name, [t.fullname for t in tables], parked_count, group_deleted=False)


def _delete_group(config: WorkerConfig, group: str) -> bool:
    admin = AdminClient(config.connection())
    future = admin.delete_consumer_groups([group], request_timeout=ADMIN_TIMEOUT_SECONDS)[group]
    try:
        future.result(timeout=ADMIN_TIMEOUT_SECONDS)
    except KafkaException as exc:
        error: KafkaError = exc.args[0]
        if error.code() == KafkaError.GROUP_ID_NOT_FOUND:
            return False
        raise GroupNotDeleted(
            f"the store's part of the reset of {group!r} is committed, but deleting its consumer group "
            f"failed: {error.str()}. Make sure no worker runs it, then reset again"
        ) from exc
    return True


def _qualified(table: sa.Table) -> sql.Composable:
    return sql.Identifier(table.schema, table.name) if table.schema else sql.Identifier(table.name)
