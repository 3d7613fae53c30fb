"""Base classes of the services' request and response bodies."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """A request body: an unknown field is a 422 naming it, not silently ignored (a typo in
    an HR script must not pass as a default)."""

    model_config = ConfigDict(extra="forbid")


class FromRow(BaseModel):
    """A response body read from a database row's attributes."""

    model_config = ConfigDict(from_attributes=True)
