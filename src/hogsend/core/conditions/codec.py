"""The JSON form of conditions: encode, decode with located errors, fingerprint.

The JSON form is what the admin API accepts, what Studio shows and what the bucket
criteria fingerprint hashes. Durations are ISO 8601 (``"P7D"``, ``"PT1H30M"``); months
and years are refused because they have no fixed length.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from datetime import timedelta
from decimal import Decimal
from typing import Any, cast

from hogsend.core.conditions.model import (
    AllCondition,
    AnyCondition,
    Condition,
    EmailCondition,
    EventCondition,
    InvalidCondition,
    NotCondition,
    PropertyCondition,
)

MAX_DEPTH = 32
"""Deepest nesting accepted from JSON; deeper trees are refused, not recursed into."""

_DURATION = re.compile(
    r"P(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+(?:\.\d{1,6})?)S)?)?"
)


def format_duration(value: timedelta) -> str:
    """A positive ``timedelta`` as an ISO 8601 duration in days, hours, minutes, seconds.

    The form is canonical: ``timedelta(hours=36)`` is always ``"P1DT12H"``.
    """
    if value <= timedelta(0):
        raise ValueError(f"only positive durations have an ISO form here, got {value!r}")
    whole, micros = value.days * 86_400 + value.seconds, value.microseconds
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    out = f"P{days}D" if days else "P"
    clock = ""
    if hours:
        clock += f"{hours}H"
    if minutes:
        clock += f"{minutes}M"
    if secs or micros:
        clock += f"{secs}.{micros:06d}".rstrip("0") + "S" if micros else f"{secs}S"
    return out + ("T" + clock if clock else "")


def parse_duration(text: str) -> timedelta:
    """Parse an ISO 8601 duration made of weeks, days, hours, minutes and seconds.

    Raises:
        ValueError: not that form (months and years included), or zero.
    """
    match = _DURATION.fullmatch(text)
    if match is None or text.endswith(("P", "T")):
        if re.match(r"P[^T]*\d+[YM]", text):
            raise ValueError(
                f"{text!r}: months and years have no fixed length; use days (e.g. P30D)"
            )
        raise ValueError(f"{text!r} is not an ISO 8601 duration like P7D or PT1H30M")
    parts = {k: v for k, v in match.groupdict().items() if v is not None}
    seconds = Decimal(parts.pop("seconds", "0"))
    try:
        value = timedelta(
            weeks=int(parts.get("weeks", 0)),
            days=int(parts.get("days", 0)),
            hours=int(parts.get("hours", 0)),
            minutes=int(parts.get("minutes", 0)),
            microseconds=int(seconds * 1_000_000),
        )
    except OverflowError:
        raise ValueError(f"{text!r} is too long a duration") from None
    if value <= timedelta(0):
        raise ValueError(f"{text!r} is zero; a window must be positive")
    return value


def condition_to_dict(condition: Condition) -> dict[str, object]:
    """The JSON form of ``condition``: plain dicts, lists, strings, numbers, booleans."""
    if isinstance(condition, PropertyCondition):
        out: dict[str, object] = {
            "type": "property",
            "property": condition.property,
            "op": condition.op,
        }
        if isinstance(condition.value, tuple):
            out["value"] = list(condition.value)
        elif condition.value is not None:
            out["value"] = condition.value
        return out
    if isinstance(condition, EventCondition):
        out = {"type": "event", "event": condition.event, "check": condition.check}
        _counted(out, condition.count, condition.within)
        if condition.where is not None:
            out["where"] = condition_to_dict(condition.where)
        return out
    if isinstance(condition, EmailCondition):
        out = {"type": "email", "action": condition.action}
        if condition.template is not None:
            out["template"] = condition.template
        out["check"] = condition.check
        _counted(out, condition.count, condition.within)
        return out
    if isinstance(condition, AllCondition | AnyCondition):
        kind = "all" if isinstance(condition, AllCondition) else "any"
        return {"type": kind, "conditions": [condition_to_dict(c) for c in condition.conditions]}
    if isinstance(condition, NotCondition):
        return {"type": "not", "condition": condition_to_dict(condition.condition)}
    raise InvalidCondition(f"expected a condition (built with where...), got {condition!r}")


def _counted(out: dict[str, object], count: int | None, within: timedelta | None) -> None:
    if count is not None:
        out["count"] = count
    if within is not None:
        out["within"] = format_duration(within)


def canonical_json(condition: Condition) -> str:
    """The JSON form as one canonical string: sorted keys, no spaces, UTF-8 kept."""
    return json.dumps(
        condition_to_dict(condition),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )


def fingerprint(condition: Condition) -> str:
    """sha256 (hex) of :func:`canonical_json`: equal conditions, equal fingerprints.

    Buckets store it to notice that their criteria changed and a re-backfill is due.
    """
    return hashlib.sha256(canonical_json(condition).encode()).hexdigest()


_KEYS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    # type: (required keys, optional keys) besides "type"
    "property": (frozenset({"property", "op"}), frozenset({"value"})),
    "event": (frozenset({"event"}), frozenset({"check", "count", "within", "where"})),
    "email": (frozenset({"action"}), frozenset({"template", "check", "count", "within"})),
    "all": (frozenset({"conditions"}), frozenset()),
    "any": (frozenset({"conditions"}), frozenset()),
    "not": (frozenset({"condition"}), frozenset()),
}


def condition_from_dict(data: object) -> Condition:
    """Build a condition from its JSON form, validating every node.

    Raises:
        InvalidCondition: with ``path`` locating the bad node (e.g.
            ``conditions[1].where.value``) and a reason saying what is wrong.
    """
    return _decode(data, (), 0)


def _decode(data: object, path: tuple[str | int, ...], depth: int) -> Condition:
    if depth > MAX_DEPTH:
        raise InvalidCondition(f"nested deeper than {MAX_DEPTH} levels", path=path)
    if not isinstance(data, Mapping):
        raise InvalidCondition(f"expected an object with a 'type', got {data!r}", path=path)
    raw = cast("Mapping[str, Any]", data)
    kind = raw.get("type")
    if "type" not in raw:
        raise InvalidCondition(
            f"a condition needs a 'type': one of {', '.join(_KEYS)}", path=(*path, "type")
        )
    if not isinstance(kind, str) or kind not in _KEYS:
        raise InvalidCondition(
            f"unknown type {kind!r}; expected one of {', '.join(_KEYS)}", path=(*path, "type")
        )
    required, optional = _KEYS[kind]
    missing = sorted(required - raw.keys())
    if missing:
        raise InvalidCondition(f"a {kind} condition needs {missing[0]!r}", path=(*path, missing[0]))
    unknown = sorted(map(str, raw.keys() - required - optional - {"type"}))
    if unknown:
        raise InvalidCondition(
            f"unknown key; a {kind} condition takes {', '.join(sorted(required | optional))}",
            path=(*path, unknown[0]),
        )
    if kind == "property":
        value = raw.get("value")
        return _construct(
            path,
            lambda: PropertyCondition(
                property=raw["property"],
                op=raw["op"],
                value=tuple(value) if isinstance(value, list) else value,
            ),
        )
    if kind in ("all", "any"):
        items = raw["conditions"]
        if not isinstance(items, list):
            raise InvalidCondition(
                f"{kind} needs a list of conditions, got {items!r}", path=(*path, "conditions")
            )
        built = tuple(
            _decode(item, (*path, "conditions", index), depth + 1)
            for index, item in enumerate(items)
        )
        if kind == "all":
            return AllCondition(conditions=built)
        return AnyCondition(conditions=built)
    if kind == "not":
        return NotCondition(condition=_decode(raw["condition"], (*path, "condition"), depth + 1))
    within = _within(raw.get("within"), path)
    if kind == "event":
        where = raw.get("where")
        where_condition = None if where is None else _decode(where, (*path, "where"), depth + 1)
        return _construct(
            path,
            lambda: EventCondition(
                event=raw["event"],
                check=raw.get("check", "exists"),
                count=raw.get("count"),
                within=within,
                where=where_condition,
            ),
        )
    return _construct(
        path,
        lambda: EmailCondition(
            action=raw["action"],
            template=raw.get("template"),
            check=raw.get("check", "exists"),
            count=raw.get("count"),
            within=within,
        ),
    )


def _construct(path: tuple[str | int, ...], build: Callable[[], Condition]) -> Condition:
    # Constructors report paths relative to their own node; anchor them at this one.
    try:
        return build()
    except InvalidCondition as exc:
        raise exc.under(*path) from None


def _within(value: object, path: tuple[str | int, ...]) -> timedelta | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidCondition(
            f"within must be an ISO 8601 duration string like 'P7D', got {value!r}",
            path=(*path, "within"),
        )
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise InvalidCondition(str(exc), path=(*path, "within")) from None
