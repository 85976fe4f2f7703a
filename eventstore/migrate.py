"""Apply the store's Alembic migrations inside its schema.

Each store's schema has its own ``alembic_version`` table, so stores in one database migrate
independently. Concurrent ``migrate`` calls for the same schema (two pods starting, a Helm hook racing a
developer) serialise on a transaction-scoped advisory lock and the second finds nothing left to do.
Within one process a lock serialises them too: Alembic keeps its running context in module globals.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

from eventstore.config import StoreConfig, sqlalchemy_url
from eventstore.rebase import rebase

if TYPE_CHECKING:
    import sqlalchemy as sa
    from alembic.config import Config

# SQLAlchemy and Alembic are imported inside the functions: they cost ~0.3 s at import, and only the
# migration path needs them, not every process that merely appends or reads.

__all__ = ["current_revision", "head_revision", "migrate"]

SCRIPTS = Path(__file__).parent / "migrations"
_ALEMBIC_IN_USE = threading.Lock()


def _alembic_config(store: StoreConfig, connection: sa.Connection | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(SCRIPTS))
    config.attributes["schema"] = store.schema
    config.attributes["connection"] = connection
    return config


def migrate(store: StoreConfig, revision: str = "head") -> str:
    """Upgrade the store's schema to ``revision``; return the revision now in place.

    At the head revision it also re-bases a store moved from another PostgreSQL cluster (a no-op
    otherwise, two index look-ups): a deployment pointed at a restored or replicated database runs
    this before its processes start (eventstore/rebase.py).

    Raises:
        sqlalchemy.exc.OperationalError: the database does not answer.
        StoreUnavailable, EventStoreError: the re-base could not be made (it is rolled back whole).
    """
    import sqlalchemy as sa
    from alembic import command

    engine = sa.create_engine(sqlalchemy_url(store.url), poolclass=sa.pool.NullPool)
    try:
        with _ALEMBIC_IN_USE, engine.begin() as connection:
            command.upgrade(_alembic_config(store, connection), revision)
        current = current_revision(store, engine) or ""
    finally:
        engine.dispose()
    if revision == "head":
        rebase(store)
    return current


def current_revision(store: StoreConfig, engine: sa.Engine | None = None) -> str | None:
    """The revision applied to the store's schema, or None when it was never migrated."""
    import sqlalchemy as sa
    from alembic.runtime.migration import MigrationContext

    own = engine is None
    engine = engine or sa.create_engine(sqlalchemy_url(store.url), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"version_table_schema": store.schema})
            return context.get_current_revision()
    finally:
        if own:
            engine.dispose()


def head_revision() -> str:
    """The newest revision this version of tidings ships."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config(StoreConfig("postgresql://unused"))).get_current_head()
    assert head is not None, "the migrations directory has no revision"
    return head
