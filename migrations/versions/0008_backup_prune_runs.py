"""A record of each prune: `backup_prune_runs`.

The nightly prune gives up when mailbox backups hold the store for too long; without a
record, a prune skipped night after night showed only in the worker's log. The monitor
exports the time of the last one that succeeded.

Revision ID: 0008
Revises: 0007
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "backup_prune_runs",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "finished_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "counts",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "status IN ('succeeded', 'skipped', 'failed')",
            name=op.f("ck_backup_prune_runs_status_known"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_backup_prune_runs")),
    )
    op.create_index(
        "ix_backup_prune_runs_status_finished_at",
        "backup_prune_runs",
        ["status", "finished_at"],
    )


def downgrade() -> None:
    op.drop_index("ix_backup_prune_runs_status_finished_at", table_name="backup_prune_runs")
    op.drop_table("backup_prune_runs")
