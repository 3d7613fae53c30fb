"""Every table of the shared schema, imported in one place for Alembic and the tests."""

from shared.db import Base
from shared.models import backup, core, monitor, provisioning  # noqa: F401 - registers tables

metadata = Base.metadata
