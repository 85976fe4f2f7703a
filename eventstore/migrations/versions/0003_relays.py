"""The outbox relays' positions and leaders.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22

Kafka's committed tail says what a relay has published; this row repeats it for operators and metrics,
and is where a relay resumes when the tail holds nothing any more (retention deleted it). It also names
the process that leads.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "relays",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("last_event_number", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("leader", sa.Text, nullable=True),
        sa.Column("leader_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema=context.config.attributes["schema"],
    )


def downgrade() -> None:
    op.drop_table("relays", schema=context.config.attributes["schema"])
