"""What a relay could not do, and what the operator told it.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07

- ``verdict``, ``problem``, ``problem_event``, ``problem_since``: set by the leading relay when it cannot
  publish (its topics' tail disagrees with the store, another store publishes there, one event cannot be
  routed or published) and cleared when it publishes again. ``tidings relay status`` shows them; the relay
  may run in another process than the one asking.
- ``topic_ids``: the Kafka ids of the relay's topics when it last had them complete (JSON); a topic
  with another id was deleted and made again, and gets every event again.
- ``epoch``, ``epoch_start``: an operator's decision (``tidings relay resume-after N``): the relay goes on
  after event_number N, and its messages from before the decision no longer say where it stands.
- ``epoch_offsets``: where each partition ended when the relay took the decision (JSON, by topic id):
  what lies before is of an older epoch, whatever its ``tidings.epoch`` header claims.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema = context.config.attributes["schema"]
    op.add_column("relays", sa.Column("verdict", sa.Text, nullable=False, server_default="ok"), schema=schema)
    op.add_column("relays", sa.Column("problem", sa.Text, nullable=False, server_default=""), schema=schema)
    op.add_column("relays", sa.Column("problem_event", sa.BigInteger, nullable=True), schema=schema)
    op.add_column(
        "relays", sa.Column("problem_since", sa.DateTime(timezone=True), nullable=True), schema=schema
    )
    op.add_column(
        "relays", sa.Column("epoch", sa.BigInteger, nullable=False, server_default="0"), schema=schema
    )
    op.add_column(
        "relays", sa.Column("epoch_start", sa.BigInteger, nullable=False, server_default="0"), schema=schema
    )
    op.add_column(
        "relays", sa.Column("topic_ids", sa.Text, nullable=False, server_default="{}"), schema=schema
    )
    op.add_column(
        "relays", sa.Column("epoch_offsets", sa.Text, nullable=False, server_default="{}"), schema=schema
    )


def downgrade() -> None:
    schema = context.config.attributes["schema"]
    for column in (
        "epoch_offsets",
        "topic_ids",
        "epoch_start",
        "epoch",
        "problem_since",
        "problem_event",
        "problem",
        "verdict",
    ):
        op.drop_column("relays", column, schema=schema)
