"""Base classes of the services' request and response bodies."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt
from pydantic_core import PydanticCustomError

# PostgreSQL's bigint: a larger id or offset is a 422 naming the field, not an overflow in the
# driver (a 500).
BIGINT_MAX = 2**63 - 1
RowId = Annotated[int, Field(ge=1, le=BIGINT_MAX)]
# In a request body a number or a boolean is taken only as JSON writes it: "3600" or true
# for a count is a 422 naming the field, not 3600 or 1 (a `keep_last` of true would keep
# one snapshot). Body models use pydantic's StrictInt, StrictBool and StrictFloat, and this
# for ids; a URL's query and path values are text, and stay as lax as RowId.
RowIdIn = Annotated[StrictInt, Field(ge=1, le=BIGINT_MAX)]

# PostgreSQL's text cannot hold a NUL character: a string with one is a 422 naming the field.
NO_NUL = r"^[^\x00]*$"


def representable(value: datetime) -> datetime:
    """A time the database driver can send: one that converts to UTC (Python cannot carry
    9999-12-31T23:00-01:00 there, and the driver's conversion would fail with a 500)."""
    if value.tzinfo is not None:
        try:
            value.astimezone(UTC)
        except OverflowError:
            raise ValueError("the time is out of range") from None
    return value


def _as_utc(value: datetime) -> datetime:
    return representable(value if value.tzinfo else value.replace(tzinfo=UTC))


# A time a client gives; without a timezone it is UTC.
UtcTime = Annotated[datetime, AfterValidator(_as_utc)]


def field_error(field: str, message: str) -> PydanticCustomError:
    """The error of a check across fields (a model validator's), naming the field it is
    about: such an error has no location of its own, and the problem+json answer names the
    field from this (`target.folder` for a check of the `target` object)."""
    return PydanticCustomError("field_check", message, {"field": field})


class Strict(BaseModel):
    """A request body: an unknown field is a 422 naming it, not silently ignored (a typo in
    an HR script must not pass as a default); its numbers and booleans are StrictInt,
    StrictBool, StrictFloat (see RowIdIn)."""

    model_config = ConfigDict(extra="forbid")


class FromRow(BaseModel):
    """A response body read from a database row's attributes."""

    model_config = ConfigDict(from_attributes=True)
