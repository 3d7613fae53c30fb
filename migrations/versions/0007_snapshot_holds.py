"""Holds on snapshots: `snapshots.held_at`, `held_by`, `hold_reason`.

A legal or audit request may need a snapshot that its department's retention would expire;
a held snapshot is kept by prune until the hold is released.

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("snapshots", sa.Column("held_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("snapshots", sa.Column("held_by", sa.Text(), nullable=True))
    op.add_column("snapshots", sa.Column("hold_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    # Without the columns, prune expires what the holds kept at its next run.
    op.drop_column("snapshots", "hold_reason")
    op.drop_column("snapshots", "held_by")
    op.drop_column("snapshots", "held_at")
