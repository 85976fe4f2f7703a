"""Streams, events, the global order, the sequencer's cursor and snapshots.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22

Writers insert events stamped with an ordering transaction id (``order_xid``: their own transaction id,
raised to the stream's previous one so that a stream's events never sort before its earlier ones) and
never touch the global order. The sequencer numbers committed events into ``event_order`` in
(order_xid, id) order, only below the oldest transaction still running, so a number once handed out can
never be preceded by a late commit (docs/decisions/0002-global-order.md).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql


class XID8(sa.types.UserDefinedType[str]):
    """PostgreSQL's 64-bit transaction id, which SQLAlchemy does not know."""

    cache_ok = True

    def get_col_spec(self, **kw: object) -> str:
        return "xid8"


revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema = context.config.attributes["schema"]
    op.create_table(
        "streams",
        sa.Column("stream_id", sa.Text, primary_key=True),
        sa.Column("stream_version", sa.BigInteger, nullable=False),
        # The order_xid of the stream's newest events; the next append's events sort at or after it.
        sa.Column("last_xid", XID8(), nullable=False, server_default=sa.text("pg_current_xact_id()")),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        schema=schema,
    )
    op.create_table(
        "events",
        sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
        # The sequencer's ordering key: never below the writer's own transaction id (commit safety) nor
        # below the stream's previous events' (stream order).
        sa.Column("order_xid", XID8(), nullable=False),
        sa.Column("event_id", postgresql.UUID(as_uuid=True), nullable=False, unique=True),
        sa.Column("stream_id", sa.Text, nullable=False),
        sa.Column("stream_version", sa.BigInteger, nullable=False),
        sa.Column("event_type", sa.Text, nullable=False),
        sa.Column("schema_id", sa.Text, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("metadata", sa.LargeBinary, nullable=False),
        sa.Column("causation_id", postgresql.UUID(as_uuid=True), nullable=True),
        sa.Column("correlation_id", postgresql.UUID(as_uuid=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.UniqueConstraint("stream_id", "stream_version", name="events_stream_version_key"),
        schema=schema,
    )
    op.create_index("events_order_xid_id", "events", ["order_xid", "id"], schema=schema)
    op.create_table(
        "event_order",
        sa.Column("event_number", sa.BigInteger, primary_key=True),
        sa.Column("id", sa.BigInteger, nullable=False, unique=True),
        schema=schema,
    )
    sequencer = op.create_table(
        "sequencer",
        sa.Column("singleton", sa.Boolean, primary_key=True, server_default=sa.true()),
        sa.Column("last_event_number", sa.BigInteger, nullable=False),
        # Everything at or before (cursor_xid, cursor_id) is numbered.
        sa.Column("cursor_xid", XID8(), nullable=False, server_default=sa.text("'0'::xid8")),
        sa.Column("cursor_id", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("singleton", name="sequencer_one_row"),
        schema=schema,
    )
    op.execute(sequencer.insert().values(last_event_number=0, cursor_id=0))
    op.create_table(
        "snapshots",
        sa.Column("source_type", sa.Text, primary_key=True),
        sa.Column("source_id", sa.Text, primary_key=True),
        sa.Column("source_version", sa.BigInteger, nullable=False),
        sa.Column("snapshot_version", sa.Integer, nullable=False),
        sa.Column("schema_id", sa.Text, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("metadata", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema=schema,
    )


def downgrade() -> None:
    schema = context.config.attributes["schema"]
    for table in ("snapshots", "sequencer", "event_order", "events", "streams"):
        op.drop_table(table, schema=schema)
