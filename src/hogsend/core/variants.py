"""A/B variants: which arm of a test a contact is in, the same answer every time. No I/O.

The choice hashes ``(test id, contact id)`` with SHA-256, not Python's ``hash()``
(salted per process), so every worker, every replay and every release puts one
contact in the same arm, and different tests split the same contacts independently.
Changing the weights (or the list of variants) of a running test moves some contacts
to another arm; add a new test id instead when that matters.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

_SCALE = float(2**64)


def check_variants(
    variants: Sequence[str], weights: Sequence[float] | None = None
) -> tuple[float, ...]:
    """The weights to use (equal when None), after checking both lists.

    Raises:
        ValueError: no variant, an empty or repeated name, a weight count that does
            not match, a negative or non-finite weight, or weights summing to zero.
    """
    if isinstance(variants, str) or not variants:
        raise ValueError("variants must be a non-empty list of names")
    for name in variants:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"variant names must be non-empty strings, got {name!r}")
    if len(set(variants)) != len(variants):
        raise ValueError(f"variant names must be unique, got {list(variants)!r}")
    if weights is None:
        return tuple(1.0 for _ in variants)
    if len(weights) != len(variants):
        raise ValueError(
            f"{len(weights)} weights for {len(variants)} variants: give one weight per variant"
        )
    checked: list[float] = []
    for weight in weights:
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            raise ValueError(f"weights must be numbers, got {weight!r}")
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"weights must be finite and not negative, got {weight!r}")
        checked.append(float(weight))
    if sum(checked) <= 0:
        raise ValueError("at least one weight must be positive")
    return tuple(checked)


def variant_point(test_id: str, contact_id: str) -> float:
    """Where the contact falls in ``[0, 1)`` for ``test_id``: uniform and stable."""
    # "<test id>:<contact id>": contact ids are UUIDs, so the colon cannot be ambiguous.
    digest = hashlib.sha256(f"{test_id}:{contact_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def assign_variant(
    test_id: str,
    contact_id: str,
    variants: Sequence[str],
    weights: Sequence[float] | None = None,
) -> str:
    """The variant of ``test_id`` for ``contact_id``, drawn with ``weights`` (equal by default).

    Raises:
        ValueError: an empty test id, or bad variants / weights (see :func:`check_variants`).
    """
    if not test_id or not test_id.strip():
        raise ValueError("test id must be a non-empty string")
    checked = check_variants(variants, weights)
    target = variant_point(test_id, contact_id) * sum(checked)
    running = 0.0
    for name, weight in zip(variants, checked, strict=True):
        running += weight
        if weight > 0 and target < running:
            return name
    # Float rounding can leave target at the very top: the last arm that can be drawn.
    return next(n for n, w in zip(reversed(variants), reversed(checked), strict=True) if w > 0)
