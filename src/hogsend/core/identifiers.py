"""Identifiers of definitions: kebab-case, unique, and the durable names built on them."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

from hogsend.errors import DefinitionError

_KEBAB = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
MAX_ID_LENGTH = 64


def check_id(kind: str, value: str) -> str:
    """Return ``value`` if it is a valid kebab-case id, else raise DefinitionError."""
    if not isinstance(value, str) or not _KEBAB.match(value):
        raise DefinitionError(
            f"{kind} id {value!r} is not kebab-case (lower-case letters, digits and single "
            f"dashes, e.g. 'trial-ending')"
        )
    if len(value) > MAX_ID_LENGTH:
        raise DefinitionError(f"{kind} id {value!r} is longer than {MAX_ID_LENGTH} characters")
    return value


def duplicates(ids: Iterable[str]) -> list[str]:
    """The ids that occur more than once, sorted."""
    return sorted(key for key, count in Counter(ids).items() if count > 1)


def durable_name(kind: str, ident: str) -> str:
    """The explicit durable name of a workflow or queue: ``hogsend.<kind>:<id>``."""
    return f"hogsend.{kind}:{ident}"
