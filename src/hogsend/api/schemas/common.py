"""The base model and shared pieces of every API schema."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel

# Postgres text cannot hold NUL; refusing it at the edge turns a 500 into a 422.
Text = Annotated[str, StringConstraints(pattern=r"^[^\x00]*$")]
"""A string without NUL characters."""

_ISO_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")


def _iso_only(value: object) -> object:
    # pydantic would also take 1700000000 or "0.5" as Unix times; the contract says ISO 8601.
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and _ISO_DATE_TIME.match(value):
        return value
    raise ValueError("must be an ISO 8601 date-time with an offset, e.g. 2026-01-31T12:00:00Z")


IsoDateTime = Annotated[AwareDatetime, BeforeValidator(_iso_only)]
"""A timezone-aware date-time, accepted only as ISO 8601 text (any UTC offset)."""


class ApiModel(BaseModel):
    """Base of every API body: snake_case in Python, camelCase on the wire."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_alias=True,
        validate_by_name=True,
        serialize_by_alias=True,
    )


MAX_PAGE_SIZE = 100
MAX_OFFSET = 2_147_483_647


class PageQuery(ApiModel):
    """Offset pagination parameters. Unknown query parameters are refused (a misspelled
    filter must not silently return everything)."""

    model_config = ConfigDict(extra="forbid")

    limit: int = Field(default=50, ge=1, le=MAX_PAGE_SIZE, description="Page size, 1..100.")
    offset: int = Field(default=0, ge=0, le=MAX_OFFSET, description="Rows to skip.")


class Page(ApiModel):
    """Offset pagination echoed on every list response."""

    total: int = Field(description="Rows matching the filters, across all pages.")
    limit: int = Field(description="Page size used.")
    offset: int = Field(description="Rows skipped before this page.")
