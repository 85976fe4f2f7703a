"""Handlers stopped by their error policy, and the operator's requests to restart them.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23

- ``handler_states``: one row per handler that has stopped on its error policy's ``Stop`` (or failed):
  why, where (host and pid), when, and at which event. A worker keeps running with the handler stopped,
  so that Kubernetes does not restart the pod into the same event; ``tidings handler restart NAME`` sets
  ``restart_requested_at``, and the worker that holds the stopped handler starts it again.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema = context.config.attributes["schema"]
    op.create_table(
        "handler_states",
        sa.Column("handler", sa.Text, primary_key=True),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.Column("worker", sa.Text, nullable=False, server_default=""),
        sa.Column("event_number", sa.BigInteger, nullable=True),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("restart_requested_at", sa.DateTime(timezone=True), nullable=True),
        schema=schema,
    )


def downgrade() -> None:
    schema = context.config.attributes["schema"]
    op.drop_table("handler_states", schema=schema)
