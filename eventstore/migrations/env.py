"""Alembic environment of the event store: online only, inside the store's schema, one migrator at a time."""

from __future__ import annotations

import zlib

import sqlalchemy as sa
from alembic import context

schema: str = context.config.attributes["schema"]
connection: sa.Connection = context.config.attributes["connection"]

# Two migrators of the same schema must not interleave; the lock ends with the transaction.
lock_key = zlib.crc32(f"tidings.migrate.{schema}".encode())
connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key})
connection.execute(sa.schema.CreateSchema(schema, if_not_exists=True))
connection.execute(
    sa.text("SELECT set_config('search_path', quote_ident(:schema), true)"), {"schema": schema}
)

context.configure(connection=connection, version_table_schema=schema, target_metadata=None)
with context.begin_transaction():
    context.run_migrations()
