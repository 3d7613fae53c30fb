"""Large bodies stored as blobs of their own: `backup_blobs.body_hash`.

The copies of one message delivered to several mailboxes differ in their delivery headers;
a blob holding a header section now names the blob of the body that follows it, so the
body is stored once. Existing blobs (whole messages) keep `body_hash` NULL and read as
before.

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("backup_blobs", sa.Column("body_hash", sa.LargeBinary(), nullable=True))
    op.create_index(
        "ix_backup_blobs_body_hash",
        "backup_blobs",
        ["body_hash"],
        unique=False,
        postgresql_where=sa.text("body_hash IS NOT NULL"),
    )
    op.create_foreign_key(
        op.f("fk_backup_blobs_body_hash_backup_blobs"),
        "backup_blobs",
        "backup_blobs",
        ["body_hash"],
        ["hash"],
    )


def downgrade() -> None:
    # Header blobs cannot be read without their bodies, and dropping them would drop backed-up
    # mail: refuse rather than lose it.
    split = op.get_bind().scalar(
        sa.text("SELECT count(*) FROM backup_blobs WHERE body_hash IS NOT NULL")
    )
    if split:
        raise RuntimeError(
            f"{split} backed-up messages are stored with their bodies apart; "
            "the schema before 0005 cannot read them: restore or export them first"
        )
    op.drop_constraint(
        op.f("fk_backup_blobs_body_hash_backup_blobs"), "backup_blobs", type_="foreignkey"
    )
    op.drop_index("ix_backup_blobs_body_hash", table_name="backup_blobs")
    op.drop_column("backup_blobs", "body_hash")
