"""The store's identity: when it was created and by which tidings release.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    store_info = op.create_table(
        "store_info",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema=context.config.attributes["schema"],
    )
    op.execute(store_info.insert().values(key="store_id", value=sa.cast(sa.func.gen_random_uuid(), sa.Text)))


def downgrade() -> None:
    op.drop_table("store_info", schema=context.config.attributes["schema"])
