"""Every table of the shared schema, imported in one place for Alembic and the tests."""

from shared import models as _core  # noqa: F401
from shared.db import Base

metadata = Base.metadata
