"""The base model and shared pieces of every API schema."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel

# Postgres text cannot hold NUL; refusing it at the edge turns a 500 into a 422.
Text = Annotated[str, StringConstraints(pattern=r"^[^\x00]*$")]
"""A string without NUL characters."""


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


class Page(ApiModel):
    """Offset pagination echoed on every list response."""

    total: int = Field(description="Rows matching the filters, across all pages.")
    limit: int = Field(description="Page size used.")
    offset: int = Field(description="Rows skipped before this page.")
