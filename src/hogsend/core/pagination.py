"""Keyset pagination: pages of results and the opaque cursors that continue them."""

from __future__ import annotations

import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from hogsend.core.tokens import b64url, unb64url
from hogsend.errors import HogsendError

T = TypeVar("T")

MAX_CURSOR_LENGTH = 1024


class InvalidCursor(HogsendError, ValueError):
    """A cursor that this listing did not hand out (edited, truncated, or from another list)."""

    code = "invalid-cursor"


@dataclass(frozen=True, slots=True, kw_only=True)
class Page(Generic[T]):
    """One page of a listing, newest first; ``next_cursor`` is None on the last page."""

    items: tuple[T, ...]
    next_cursor: str | None = None


def encode_cursor(*parts: str) -> str:
    """An opaque, URL-safe cursor holding the sort key of the last row of a page."""
    raw = json.dumps(list(parts), separators=(",", ":")).encode()
    return b64url(raw)


def decode_cursor(cursor: str, arity: int) -> list[str]:
    """The parts :func:`encode_cursor` packed, checked to be ``arity`` strings.

    Raises:
        InvalidCursor: the cursor is not one of ours.
    """
    if len(cursor) > MAX_CURSOR_LENGTH:
        raise InvalidCursor("cursor is too long")
    try:
        raw = unb64url(cursor)
        parts = json.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise InvalidCursor("cursor is not valid") from exc
    if (
        not isinstance(parts, list)
        or len(parts) != arity
        or not all(isinstance(part, str) for part in parts)
    ):
        raise InvalidCursor("cursor is not valid")
    return parts


def page_of(rows: Sequence[T], limit: int, cursor_of: Callable[[T], str]) -> Page[T]:
    """The first ``limit`` rows as a page; ``rows`` holds up to ``limit + 1`` (one to peek)."""
    if len(rows) > limit:
        kept = tuple(rows[:limit])
        return Page(items=kept, next_cursor=cursor_of(kept[-1]))
    return Page(items=tuple(rows))
