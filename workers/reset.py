"""Resetting a handler: it forgets where it is and what it derived, and starts over from ``start_from``.

After Commanded's ``mix commanded.reset``. ``reset_handler`` refuses while the handler's consumer group
has members (a running worker would go on from where it is, and write into the tables being emptied).
Otherwise it calls the handler's ``before_reset()``, then, in one PostgreSQL transaction:

- a ``Projection``'s ``tables`` are truncated,
- its checkpoints and its ``start_from`` subscription are deleted (``start_from`` applies afresh),
- its parked events are deleted;

and finally deletes the Kafka consumer group, so that a plain handler has no committed offsets to
resume from either. The next worker to start rebuilds the handler from ``start_from``.

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
from eventstore.errors import ConfigurationError
from workers.app import WorkerApp, WorkerConfig
from workers.parking import ParkedEvents
from workers.positions import Positions
from workers.process_manager import ProcessManager
from workers.projection import Projection

__all__ = ["GroupActive", "GroupNotDeleted", "ResetReport", "active_members", "reset_handler"]

log = logging.getLogger("workers.reset")

ADMIN_TIMEOUT_SECONDS = 30.0


class GroupActive(Exception):
    """The handler's consumer group has members: its workers must stop before a reset."""

    def __init__(self, handler: str, members: list[str]) -> None:
        super().__init__(
            f"handler {handler!r} is running: its consumer group has {len(members)} active member(s) "
            f"({', '.join(members)}). Scale the handler's workers to zero first (e.g. "
            "`kubectl scale deployment/<workers> --replicas=0`, or run them without this handler), "
            "then reset again"
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


def reset_handler(app: WorkerApp, config: WorkerConfig, name: str) -> ResetReport:
    """Reset handler ``name`` of ``app`` so that it starts over from ``start_from``.

    Raises:
        ConfigurationError: the app has no handler named ``name``.
        GroupActive: the handler's consumer group has members; nothing was changed.
        KafkaException: Kafka could not be asked about the group; nothing was changed.
        GroupNotDeleted: the store was reset but the group was not deleted (reset again).
        StoreUnavailable: PostgreSQL could not be reached; nothing of the store was changed.
    """
    handler = app.handler(name)
    members = active_members(config, name)
    if members:
        raise GroupActive(name, members)
    if issubclass(handler, ProcessManager):
        raise ConfigurationError(
            f"{name!r} is a process manager: a replay would dispatch its commands again (a second "
            "withdrawal, say). To start it over, give it a new name with start_from='current'"
        )
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
    deleted = _delete_group(config, name)
    report = ResetReport(name, [t.fullname for t in tables], parked_count, deleted)
    log.info(
        "handler reset",
        extra={"handler": name, "tables": report.tables, "parked": report.parked, "group_deleted": deleted},
    )
    return report


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
