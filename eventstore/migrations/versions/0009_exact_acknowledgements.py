"""Strong-consistency acknowledgements per event, and parked events keyed by the message.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07

(Being written: issue 20, cases 8 and 9.)
"""

from __future__ import annotations

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
