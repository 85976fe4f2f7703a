"""Commands to other applications: who sent what, and who received what.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-09

- ``command_outbox.command_uuid``: the command's identity on the wire; the receiver deduplicates by it.
  Given by the process manager that writes the row (rows written before get one here).
- ``command_outbox.partition_key``: the Kafka key (the target aggregate's identity), so that one
  partition keeps a target's commands in order.
- ``command_senders``: one row per sender (``eventstore.command_sender``): its leader, and the batch it
  has in flight (its id, outbox ids, and where in Kafka its first message must be) until the batch is
  marked sent. A new leader looks there for that batch before it sends anything, so a batch committed to
  Kafka just before its sender died is not sent a second time.
- ``received_commands``: the commands a receiver has executed, keyed (receiver, command_uuid), inserted
  in the transaction of the command's events: a redelivered command finds its row and does nothing.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema = context.config.attributes["schema"]
    op.add_column(
        "command_outbox",
        sa.Column(
            "command_uuid", postgresql.UUID, nullable=False, server_default=sa.text("gen_random_uuid()")
        ),
        schema=schema,
    )
    op.add_column("command_outbox", sa.Column("partition_key", sa.Text, nullable=True), schema=schema)
    op.create_index(
        "command_outbox_command_uuid", "command_outbox", ["command_uuid"], unique=True, schema=schema
    )
    op.create_table(
        "command_senders",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("leader", sa.Text, nullable=True),
        sa.Column("leader_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("batch_id", postgresql.UUID, nullable=True),
        sa.Column("batch_ids", postgresql.ARRAY(sa.BigInteger), nullable=True),
        sa.Column("batch_topic", sa.Text, nullable=True),
        sa.Column("batch_partition", sa.Integer, nullable=True),
        sa.Column("batch_offset", sa.BigInteger, nullable=True),
        sa.Column("sent", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema=schema,
    )
    op.create_table(
        "received_commands",
        sa.Column("receiver", sa.Text, primary_key=True),
        sa.Column("command_uuid", postgresql.UUID, primary_key=True),
        sa.Column("command_type", sa.Text, nullable=False),
        sa.Column("causation_id", postgresql.UUID, nullable=True),
        sa.Column("correlation_id", postgresql.UUID, nullable=True),
        sa.Column("sent_by", sa.Text, nullable=False, server_default=""),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema=schema,
    )


def downgrade() -> None:
    schema = context.config.attributes["schema"]
    op.drop_table("received_commands", schema=schema)
    op.drop_table("command_senders", schema=schema)
    op.drop_index("command_outbox_command_uuid", table_name="command_outbox", schema=schema)
    op.drop_column("command_outbox", "partition_key", schema=schema)
    op.drop_column("command_outbox", "command_uuid", schema=schema)
