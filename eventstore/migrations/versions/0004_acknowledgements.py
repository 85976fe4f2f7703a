"""Acknowledgements of strongly consistent handlers, for dispatches that wait for them.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22

One row per (handler, stream): the highest stream version the handler has finished with. Handlers take a
stream's events in order, so that version covers every earlier one. ``strong_handlers`` lists the
handlers a ``consistency="strong"`` dispatch waits for; workers register there when they start.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema = context.config.attributes["schema"]
    op.create_table(
        "handler_acks",
        sa.Column("handler", sa.Text, primary_key=True),
        sa.Column("stream_id", sa.Text, primary_key=True),
        sa.Column("stream_version", sa.BigInteger, nullable=False),
        sa.Column(
            "acknowledged_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        schema=schema,
    )
    # Expiry deletes the oldest acknowledgements first.
    op.create_index("handler_acks_acknowledged_at", "handler_acks", ["acknowledged_at"], schema=schema)
    op.create_table(
        "strong_handlers",
        sa.Column("handler", sa.Text, primary_key=True),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema=schema,
    )


def downgrade() -> None:
    schema = context.config.attributes["schema"]
    op.drop_table("strong_handlers", schema=schema)
    op.drop_table("handler_acks", schema=schema)
