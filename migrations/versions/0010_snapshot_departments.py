"""The department a snapshot's mail belongs to: `snapshots.department_id`.

Restoring one department's mail into another department's mailbox needs admin. Judged by
the mailboxes' current departments, a mailbox moved from HR to Sales let an operator restore
its HR-era snapshots into a Sales colleague's mailbox. Snapshots taken before this revision
are given their mailbox's department now, the best that is known of them.

Revision ID: 0010
Revises: 0009
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "snapshots",
        sa.Column(
            "department_id",
            sa.UUID(),
            sa.ForeignKey("departments.id", name="fk_snapshots_department_id_departments"),
        ),
    )
    op.execute(
        "UPDATE snapshots SET department_id = mailboxes.department_id "
        "FROM mailboxes WHERE mailboxes.id = snapshots.mailbox_id"
    )


def downgrade() -> None:
    op.drop_column("snapshots", "department_id")
