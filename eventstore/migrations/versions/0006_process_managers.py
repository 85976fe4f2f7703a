"""Process manager instances, scheduled commands, and the command outbox.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23

- ``process_instances``: one row per live process manager instance (process manager, process id), its
  state as JSON, written in the same transaction as the events of the commands it dispatched and its
  checkpoint. ``Stop`` deletes the row.
- ``scheduled_commands``: commands to dispatch at ``due_at``, once, whatever the number of workers:
  the worker that dispatches one deletes its row in the transaction of the command's events.
- ``command_outbox``: commands that leave the application (another service, an HTTP call), written in
  a process manager's transaction and sent afterwards; ``sent_at`` is set once they are.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema = context.config.attributes["schema"]
    op.create_table(
        "process_instances",
        sa.Column("process_manager", sa.Text, primary_key=True),
        sa.Column("process_id", sa.Text, primary_key=True),
        sa.Column("state", postgresql.JSONB, nullable=False),
        sa.Column("events_applied", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("last_event_number", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema=schema,
    )
    op.create_table(
        "scheduled_commands",
        sa.Column("schedule_id", sa.Text, primary_key=True),
        sa.Column("command_type", sa.Text, nullable=False),
        sa.Column("command", postgresql.JSONB, nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("metadata", postgresql.JSONB, nullable=False, server_default="{}"),
        sa.Column("causation_id", postgresql.UUID, nullable=True),
        sa.Column("correlation_id", postgresql.UUID, nullable=True),
        sa.Column("scheduled_by", sa.Text, nullable=False, server_default=""),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema=schema,
    )
    op.create_index("scheduled_commands_due", "scheduled_commands", ["due_at"], schema=schema)
    op.create_table(
        "command_outbox",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("destination", sa.Text, nullable=False),
        sa.Column("command_type", sa.Text, nullable=False),
        sa.Column("command", postgresql.JSONB, nullable=False),
        sa.Column("metadata", postgresql.JSONB, nullable=False, server_default="{}"),
        sa.Column("causation_id", postgresql.UUID, nullable=True),
        sa.Column("correlation_id", postgresql.UUID, nullable=True),
        sa.Column("created_by", sa.Text, nullable=False, server_default=""),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text, nullable=True),
        schema=schema,
    )
    op.create_index(
        "command_outbox_unsent",
        "command_outbox",
        ["destination", "id"],
        schema=schema,
        postgresql_where=sa.text("sent_at IS NULL"),
    )


def downgrade() -> None:
    schema = context.config.attributes["schema"]
    op.drop_table("command_outbox", schema=schema)
    op.drop_table("scheduled_commands", schema=schema)
    op.drop_table("process_instances", schema=schema)
