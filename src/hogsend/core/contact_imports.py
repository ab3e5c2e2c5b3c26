"""Contact import files: the column mapping and turning one line into one contact row.

Pure: no I/O. An import file is CSV (with a header line) or JSON lines, read one
physical line at a time so a job can resume at a byte offset; a CSV value cannot hold a
line break.

A mapping sends each CSV column to a field::

    email            the contact's address
    userId           your id for the contact (``externalId`` is read the same way)
    properties.NAME  a contact property (a string; empty cells are left out)
    lists.ID         a list choice: true/yes/1 subscribes, false/no/0 unsubscribes
    lists            list ids separated by ``;``, each subscribed
    ignore           not imported

Without a mapping, ``email``, ``userId``/``externalId``/``user_id`` and ``lists`` map to
themselves and every other column becomes ``properties.<column>``. A JSON line is an
object with ``email``, ``userId`` (or ``externalId``), ``properties`` (an object) and
``lists`` (an object of list id → bool, or an array of ids).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from hogsend.core.identity import Identity, IdentityError

ImportFormat = Literal["csv", "jsonl"]

_ID_ALIASES = {"userid": "userId", "externalid": "userId", "user_id": "userId"}
_TRUE = {"true", "yes", "1", "y"}
# What makes the csv module's reading of a line differ from splitting it on commas.
_PLAIN_CSV = re.compile('["\r\x00]')
_FALSE = {"false", "no", "0", "n"}


class MappingError(ValueError):
    """The mapping or header cannot describe a contact (names the column)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ImportRow:
    """One line that became a contact: who, their properties and list choices."""

    line: int
    identity: Identity
    properties: dict[str, Any] = field(default_factory=dict)
    lists: dict[str, bool] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class RowError:
    """One line that could not be imported, and why (for people)."""

    line: int
    reason: str
    raw: str


def default_mapping(columns: Sequence[str]) -> dict[str, str]:
    """Each column's field when the caller gives no mapping."""
    mapping: dict[str, str] = {}
    for column in columns:
        key = column.strip()
        lowered = key.lower()
        if lowered == "email":
            mapping[column] = "email"
        elif lowered in _ID_ALIASES:
            mapping[column] = "userId"
        elif lowered == "lists":
            mapping[column] = "lists"
        else:
            mapping[column] = f"properties.{key}"
    return mapping


def check_mapping(
    columns: Sequence[str], mapping: Mapping[str, str], known_lists: frozenset[str]
) -> dict[str, str]:
    """The mapping for ``columns`` (defaults for columns it leaves out), validated.

    Raises:
        MappingError: a mapped column is not in the header, a target is unknown, a list
            is not registered, or nothing maps to ``email`` or ``userId``.
    """
    full = default_mapping(columns)
    for column, target in mapping.items():
        if column not in full:
            raise MappingError(f"column {column!r} is not in the header")
        full[column] = target
    for column, target in full.items():
        if target in ("email", "userId", "lists", "ignore"):
            continue
        kind, _, name = target.partition(".")
        if kind not in ("properties", "lists") or not name:
            raise MappingError(
                f"column {column!r}: unknown field {target!r}; use email, userId, "
                "properties.<name>, lists.<id>, lists or ignore"
            )
        if kind == "lists" and name not in known_lists:
            raise MappingError(f"column {column!r}: unknown list {name!r}")
    if not {"email", "userId"} & set(full.values()):
        raise MappingError("no column maps to email or userId")
    return full


def parse_header(line: str) -> list[str]:
    """The column names of a CSV header line.

    Raises:
        MappingError: the line is not CSV (e.g. a bare carriage return inside a field).
    """
    try:
        return next(csv.reader([line]), [])
    except csv.Error as exc:
        raise MappingError(f"the header line is not valid CSV: {exc}") from None


def _choice(value: str) -> bool | None:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    return None


def _row(
    line: int,
    raw: str,
    *,
    email: str | None,
    user_id: str | None,
    properties: dict[str, Any],
    lists: dict[str, bool],
    known_lists: frozenset[str],
) -> ImportRow | RowError:
    unknown = sorted(set(lists) - known_lists)
    if unknown:
        return RowError(line=line, reason=f"unknown list {unknown[0]!r}", raw=raw)
    if not (email or "").strip() and not (user_id or "").strip():
        return RowError(line=line, reason="row has neither email nor userId", raw=raw)
    try:
        identity = Identity(email=email or None, user_id=user_id or None)
    except IdentityError as exc:
        return RowError(line=line, reason=f"{exc.field}: {exc.reason}", raw=raw)
    return ImportRow(line=line, identity=identity, properties=properties, lists=lists)


def parse_csv_line(
    line: int,
    raw: str,
    columns: Sequence[str],
    mapping: Mapping[str, str],
    known_lists: frozenset[str],
) -> ImportRow | RowError:
    """One CSV data line, read with ``mapping`` (from :func:`check_mapping`)."""
    if _PLAIN_CSV.search(raw) is None:
        # No quote, carriage return or NUL: the csv module would split on commas; doing
        # it directly halves the cost of an ordinary line.
        cells = raw.split(",") if raw else []
    else:
        try:
            cells = next(csv.reader([raw]), [])
        except csv.Error as exc:
            return RowError(line=line, reason=f"not valid CSV: {exc}", raw=raw)
    if len(cells) != len(columns):
        return RowError(
            line=line, reason=f"expected {len(columns)} columns, found {len(cells)}", raw=raw
        )
    email: str | None = None
    user_id: str | None = None
    properties: dict[str, Any] = {}
    lists: dict[str, bool] = {}
    for column, value in zip(columns, cells, strict=True):
        target = mapping[column]
        if target == "email":
            email = value
        elif target == "userId":
            user_id = value
        elif target == "lists":
            lists.update({item.strip(): True for item in value.split(";") if item.strip()})
        elif target.startswith("lists."):
            if value.strip():
                choice = _choice(value)
                if choice is None:
                    return RowError(
                        line=line,
                        reason=f"{column}: expected true or false, got {value!r}",
                        raw=raw,
                    )
                lists[target.removeprefix("lists.")] = choice
        elif target.startswith("properties.") and value != "":
            properties[target.removeprefix("properties.")] = value
    return _row(
        line,
        raw,
        email=email,
        user_id=user_id,
        properties=properties,
        lists=lists,
        known_lists=known_lists,
    )


def parse_json_line(line: int, raw: str, known_lists: frozenset[str]) -> ImportRow | RowError:
    """One JSON line: an object with email, userId, properties, lists."""
    try:
        data = json.loads(raw)
    except ValueError as exc:
        return RowError(line=line, reason=f"not JSON: {exc}", raw=raw)
    if not isinstance(data, dict):
        return RowError(line=line, reason="expected a JSON object", raw=raw)
    email = data.get("email")
    user_id = data.get("userId", data.get("externalId"))
    # Only absent or null means "none": an empty array is the wrong type, not nothing.
    properties = {} if data.get("properties") is None else data["properties"]
    given_lists = {} if data.get("lists") is None else data["lists"]
    if not isinstance(email, str | None) or not isinstance(user_id, str | None):
        return RowError(line=line, reason="email and userId must be strings", raw=raw)
    if not isinstance(properties, dict):
        return RowError(line=line, reason="properties must be an object", raw=raw)
    if isinstance(given_lists, list) and all(isinstance(i, str) for i in given_lists):
        lists = dict.fromkeys(given_lists, True)
    elif isinstance(given_lists, dict) and all(isinstance(v, bool) for v in given_lists.values()):
        lists = dict(given_lists)
    else:
        return RowError(
            line=line, reason="lists must be an array of ids or an object of booleans", raw=raw
        )
    return _row(
        line,
        raw,
        email=email,
        user_id=user_id,
        properties=properties,
        lists=lists,
        known_lists=known_lists,
    )


def prepare(
    raw: bytes, kind: ImportFormat, given: Mapping[str, str], known_lists: frozenset[str]
) -> dict[str, Any]:
    """What an import job stores to read its file: for CSV the header's columns, each
    column's field, and where the data lines start.

    Raises:
        MappingError: an empty CSV, a mapping that does not fit the header, or a mapping
            given for JSON lines.
    """
    if kind == "jsonl":
        if given:
            raise MappingError("a mapping applies to CSV files only")
        return {"firstLine": 1, "dataOffset": 0}
    header, newline, _ = raw.partition(b"\n")
    if not header.strip():
        raise MappingError("the file is empty: expected a header line")
    columns = parse_header(header.decode("utf-8", errors="replace").rstrip("\r"))
    return {
        "columns": columns,
        "targets": check_mapping(columns, given, known_lists),
        "firstLine": 2,
        "dataOffset": len(header) + len(newline),
    }
