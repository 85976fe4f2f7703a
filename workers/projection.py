"""Projection: a read model in PostgreSQL, written exactly once per event.

``project(event, metadata, connection)`` gets a SQLAlchemy connection inside a transaction that also
stores the projection's checkpoint for the message's (topic, partition). Both commit or neither does; on
assignment the worker seeks to those checkpoints, so a redelivered message is never projected twice.

Example::

    balances = sa.Table("balances", metadata, sa.Column("account", sa.Text, primary_key=True),
                        sa.Column("cents", sa.BigInteger, nullable=False))

    class Balances(Projection):
        name = "balances"
        tables = (balances,)
        consistency = "strong"

        def project(self, event, metadata, connection):
            match event:
                case AccountOpened(account=account):
                    self.upsert(connection, balances, {"account": account, "cents": 0}, key=["account"])
                case MoneyDeposited(account=account, cents=cents):
                    connection.execute(balances.update().where(balances.c.account == account)
                                       .values(cents=balances.c.cents + cents))

``tidings reset balances`` empties ``tables`` and replays from ``start_from`` (a rebuild).
``project_batch`` takes the events of a poll at once, for read models written in bulk.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from workers.delivery import EventMetadata
from workers.handler import EventHandler

__all__ = ["Projection"]


class Projection(EventHandler):
    """Subclass, set ``name`` (and ``tables`` for rebuilds), define ``project``."""

    tables: ClassVar[Sequence[sa.Table]] = ()
    """The read model's tables: ``tidings reset`` empties them before the replay."""

    def project(self, event: Any, metadata: EventMetadata, connection: sa.Connection) -> None:
        """Write the event's effect through ``connection``; raise to fail (the transaction rolls back)."""
        raise NotImplementedError(
            f"{type(self).__qualname__} must define project(event, metadata, connection)"
        )

    def project_batch(self, batch: list[tuple[Any, EventMetadata]], connection: sa.Connection) -> None:
        """Project consecutive events of one partition at once, in the same transaction as ever.

        Override it to write a batch in few statements (``upsert_many``, or one ``execute`` with a list
        of parameters, which psycopg sends in one round trip). Raise ``BatchFailed(index, error)`` to
        name the event that failed; any other exception counts against the batch's first event. Either
        way the transaction rolls back, the events before the failed one are projected again on their
        own, and the failed one alone goes to ``error``. The default calls ``project`` for each event.
        """
        for event, metadata in batch:
            self.project(event, metadata, connection)

    @classmethod
    def projects_batches(cls) -> bool:
        return cls.project_batch is not Projection.project_batch

    def after_update(self, event: Any, metadata: EventMetadata) -> None:
        """Called after the transaction with the event's effect committed (notify, invalidate caches)."""

    def handle(self, event: Any, metadata: EventMetadata, /) -> Any:
        raise TypeError("a Projection is driven through project(event, metadata, connection)")

    def _unit_started(self) -> None:
        """The runtime's: a transaction of this projection begins (what a previous one left is void)."""

    def _unit_committed(self) -> None:
        """The runtime's: the transaction of the events just projected has committed."""

    @staticmethod
    def upsert(
        connection: sa.Connection,
        table: sa.Table,
        values: Mapping[str, Any],
        *,
        key: Sequence[str],
        update: Sequence[str] | None = None,
    ) -> None:
        """Insert ``values``, or update the row with the same ``key`` columns (``update``: which columns;
        default all the others)."""
        statement = insert(table).values(**values)
        columns = [name for name in values if name not in key] if update is None else list(update)
        if columns:
            statement = statement.on_conflict_do_update(
                index_elements=list(key), set_={name: statement.excluded[name] for name in columns}
            )
        else:
            statement = statement.on_conflict_do_nothing(index_elements=list(key))
        connection.execute(statement)

    @staticmethod
    def upsert_many(
        connection: sa.Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]], *, key: Sequence[str]
    ) -> None:
        """``upsert`` for several rows with the same columns, in one statement."""
        if not rows:
            return
        statement = insert(table).values(list(rows))
        columns = [name for name in rows[0] if name not in key]
        connection.execute(
            statement.on_conflict_do_update(
                index_elements=list(key), set_={name: statement.excluded[name] for name in columns}
            )
            if columns
            else statement.on_conflict_do_nothing(index_elements=list(key))
        )
