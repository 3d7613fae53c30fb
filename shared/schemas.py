"""Base classes of the services' request and response bodies."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

# PostgreSQL's bigint: a larger id or offset is a 422 naming the field, not an overflow in the
# driver (a 500).
BIGINT_MAX = 2**63 - 1
RowId = Annotated[int, Field(ge=1, le=BIGINT_MAX)]


class Strict(BaseModel):
    """A request body: an unknown field is a 422 naming it, not silently ignored (a typo in
    an HR script must not pass as a default)."""

    model_config = ConfigDict(extra="forbid")


class FromRow(BaseModel):
    """A response body read from a database row's attributes."""

    model_config = ConfigDict(from_attributes=True)
