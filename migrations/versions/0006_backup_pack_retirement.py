"""Packs retired by prune's repack: `backup_packs.retired_at`.

Prune copies the live blobs of a pack that is mostly unused into a new pack and retires the
old one. A retired pack's file is kept for a while, so that a restore, export or verify
that read a blob's old place just before the move still finds it there.

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "backup_packs", sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    # A retired pack holds no blob: without the column it is an empty pack, which the next
    # prune deletes at once instead of after the grace period.
    op.drop_column("backup_packs", "retired_at")
