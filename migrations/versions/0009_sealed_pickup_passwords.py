"""A pickup keeps its generated password sealed until picked up: `sealed_password`.

The password was derived from the pickup token and the credential secret, so the database
and the secret together gave back every generated password, picked up or not. Now it is
random, sealed under a key derived from the token, and erased by the pickup. A pickup made
before this revision has no sealed password: it answers 410, and a password reset issues a
new one.

Revision ID: 0009
Revises: 0008
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("credential_pickups", sa.Column("sealed_password", sa.LargeBinary()))


def downgrade() -> None:
    op.drop_column("credential_pickups", "sealed_password")
