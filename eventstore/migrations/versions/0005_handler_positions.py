"""Where event handlers start, where projections are, and the events parked for them.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23

- ``handler_subscriptions``: one row per handler, written the first time it starts: the event_number its
  ``start_from`` resolved to. Handlers skip events at or below it until they are reset.
- ``handler_checkpoints``: a projection's position per (topic, partition), committed in the same
  transaction as its read-model writes; on assignment the worker seeks to it.
- ``parked_events``: events a handler gave up on, with every later event of the same key behind them,
  kept whole (key, value, headers) so that ``tidings parked retry`` can hand them back.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema = context.config.attributes["schema"]
    op.create_table(
        "handler_subscriptions",
        sa.Column("handler", sa.Text, primary_key=True),
        sa.Column("start_from", sa.Text, nullable=False),
        sa.Column("start_after", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema=schema,
    )
    op.create_table(
        "handler_checkpoints",
        sa.Column("handler", sa.Text, primary_key=True),
        sa.Column("topic", sa.Text, primary_key=True),
        sa.Column("partition", sa.Integer, primary_key=True),
        sa.Column("next_offset", sa.BigInteger, nullable=False),
        sa.Column("event_number", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema=schema,
    )
    op.create_table(
        "parked_events",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("handler", sa.Text, nullable=False),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("kafka_offset", sa.BigInteger, nullable=False),
        sa.Column("key", sa.LargeBinary, nullable=False),
        sa.Column("event_number", sa.BigInteger, nullable=True),
        sa.Column("stream_id", sa.Text, nullable=True),
        sa.Column("event_type", sa.Text, nullable=True),
        sa.Column("value", sa.LargeBinary, nullable=False),
        sa.Column("header_names", postgresql.ARRAY(sa.Text), nullable=False),
        sa.Column("header_values", postgresql.ARRAY(sa.LargeBinary), nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("released", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("parked_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.UniqueConstraint("handler", "topic", "partition", "kafka_offset"),
        schema=schema,
    )
    op.create_index(
        "parked_events_by_key", "parked_events", ["handler", "topic", "partition", "key"], schema=schema
    )


def downgrade() -> None:
    schema = context.config.attributes["schema"]
    op.drop_table("parked_events", schema=schema)
    op.drop_table("handler_checkpoints", schema=schema)
    op.drop_table("handler_subscriptions", schema=schema)
