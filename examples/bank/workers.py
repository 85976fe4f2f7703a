"""The bank's workers: the balances read model and the transfer process manager, as one ``WorkerApp``.

Run it as any application runs its workers (the Helm chart and docker-compose.yml do the same)::

    export DATABASE_URL=... KAFKA_BOOTSTRAP_SERVERS=... TIDINGS_SCHEMA=bank
    tidings relay --app bank
    tidings worker examples.bank.workers:build --handler bank.balances
    tidings worker examples.bank.workers:build --handler bank.transfers

``build`` reads the store's schema from ``TIDINGS_SCHEMA`` and the application's name from ``TIDINGS_APP``
(default ``bank``: the topic ``bank.events`` and the handlers ``bank.balances`` and ``bank.transfers``),
the variables the relay reads too, and creates the read model's table if it is missing. A real
application creates its read models in its own migrations; the example does it here so that it runs on a
fresh store with nothing else.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from eventstore import DEFAULT_SCHEMA, sqlalchemy_url, validate_schema
from examples.bank.events import (
    AccountOpened,
    MoneyDeposited,
    MoneyWithdrawn,
    events,
)
from examples.bank.transfers import TransferProcess, bank
from tidings.avro import AvroCodec, SchemaSet
from tidings.mapper import EventMapper
from workers.app import Tenant, WorkerApp
from workers.delivery import EventMetadata
from workers.projection import Projection

__all__ = ["SCHEMAS", "balances_table", "build", "mapper"]

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
"""The event contracts (``schemas/`` beside ``examples/``: the bank's image copies both)."""


def mapper() -> EventMapper:
    """The bank's events, encoded with their Avro schemas."""
    return EventMapper(AvroCodec(events, SchemaSet.load(SCHEMAS)))


def balances_table(schema: str) -> sa.Table:
    """The read model: each account's owner and balance, as of the last event projected."""
    return sa.Table(
        "bank_balances",
        sa.MetaData(),
        sa.Column("account_id", sa.Uuid, primary_key=True),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("balance", sa.Numeric, nullable=False),
        sa.Column("event_number", sa.BigInteger, nullable=False),
        schema=schema,
    )


def build(tenant: Tenant | None = None) -> WorkerApp:
    """The bank's ``WorkerApp`` for ``TIDINGS_SCHEMA`` and ``TIDINGS_APP`` (``tidings worker`` calls it).

    For a tenant (``tidings worker ... --tenant acme``), the tenant's schema, and every name behind its
    prefix: the topic ``acme.bank.events``, the handlers ``acme.bank.balances`` and so on.
    """
    schema = tenant.schema if tenant else validate_schema(os.environ.get("TIDINGS_SCHEMA", DEFAULT_SCHEMA))
    app_name = os.environ.get("TIDINGS_APP") or "bank"
    if tenant is not None:
        app_name = f"{tenant.name}.{app_name}"
    balances = balances_table(schema)
    if url := os.environ.get("DATABASE_URL"):
        _create(balances, url)

    class Balances(Projection):
        name = f"{app_name}.balances"
        tables = (balances,)
        concurrency = 4

        def project(self, event: Any, metadata: EventMetadata, connection: sa.Connection) -> None:
            number = metadata.event_number
            match event:
                case AccountOpened(account_id=account, owner=owner):
                    self.upsert(
                        connection,
                        balances,
                        {"account_id": account, "owner": owner, "balance": 0, "event_number": number},
                        key=["account_id"],
                    )
                case (
                    MoneyDeposited(account_id=account, balance=balance)
                    | MoneyWithdrawn(account_id=account, balance=balance)
                ):
                    # The account's events share its partition, so its row exists by now.
                    connection.execute(
                        balances.update()
                        .where(balances.c.account_id == account)
                        .values(balance=balance, event_number=number)
                    )

    class Transfers(TransferProcess):
        name = f"{app_name}.transfers"

    return WorkerApp(app_name, mapper=mapper(), handlers=[Balances, Transfers], router=bank)


def _create(table: sa.Table, database_url: str) -> None:
    engine = sa.create_engine(sqlalchemy_url(database_url))
    try:
        with engine.begin() as connection:
            # Several workers start at once; CREATE TABLE IF NOT EXISTS alone races on the catalog.
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('tidings.examples.bank'))"))
            table.create(connection, checkfirst=True)
    finally:
        engine.dispose()
