"""The command sender fenced in PostgreSQL, and commands Kafka can never accept set aside.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-09

- ``command_senders.leader_epoch``: incremented by each sender that takes the leadership; every write of
  the sender to its row (the batch it records, the batch it clears) names the epoch it leads in, so a
  deposed leader that wakes up writes nothing (0 rows: it steps down). docs/decisions/0016.
- ``command_outbox.failed_at``: a command the sender can never send (Kafka refuses it: too large, an
  invalid destination) is set aside with its own ``last_error``; later commands of the same target wait
  behind it, other targets go on. ``tidings outbox retry | discard`` end the wait.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema = context.config.attributes["schema"]
    op.add_column(
        "command_senders",
        sa.Column("leader_epoch", sa.BigInteger, nullable=False, server_default="0"),
        schema=schema,
    )
    op.add_column(
        "command_outbox", sa.Column("failed_at", sa.DateTime(timezone=True), nullable=True), schema=schema
    )
    op.create_index(
        "command_outbox_failed",
        "command_outbox",
        ["destination", "partition_key", "id"],
        schema=schema,
        postgresql_where=sa.text("sent_at IS NULL AND failed_at IS NOT NULL"),
    )


def downgrade() -> None:
    schema = context.config.attributes["schema"]
    op.drop_index("command_outbox_failed", table_name="command_outbox", schema=schema)
    op.drop_column("command_outbox", "failed_at", schema=schema)
    op.drop_column("command_senders", "leader_epoch", schema=schema)
