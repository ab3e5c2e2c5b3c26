"""Suppression imports: reading a CSV list of addresses to suppress. No I/O.

The file is comma-separated, one address per line, optionally with a reason and a note:

    email,reason,note
    ann@example.com,complaint,reported by support
    bob@example.com

A first line whose first cell is ``email`` is a header: columns are then found by name
(``email``, ``reason``, ``note``; others are ignored). Without a header the columns are
``email[,reason[,note]]``. Blank lines are skipped. The reason defaults to ``import``
and may be any suppression reason. Every other line is checked on its own; a bad line
is reported with its line number and never stops the others.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from hogsend.core.identity import IdentityError, normalize_email
from hogsend.core.suppression import REASONS, Reason

DEFAULT_REASON: Reason = "import"
MAX_NOTE_LENGTH = 1000
_MAX_SHOWN = 200
_HEADER_NAMES = ("email", "reason", "note")

LineField = Literal["email", "reason", "note", "line"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ImportLine:
    """A valid line: a normalised address, its reason and note."""

    line: int
    email: str
    reason: Reason
    note: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class LineError:
    """A refused line: where, which field, the value and what is wrong with it."""

    line: int
    field: LineField
    value: str | None
    message: str


@dataclass(slots=True, kw_only=True)
class ParsedImport:
    """A whole file read: the valid lines in order, and the refused ones."""

    lines: list[ImportLine] = field(default_factory=list)
    errors: list[LineError] = field(default_factory=list)

    @property
    def received(self) -> int:
        """Data lines read (valid or not)."""
        return len(self.lines) + len(self.errors)


def _shown(value: str) -> str:
    return value[:_MAX_SHOWN]


def _rows(text: str) -> Iterator[tuple[int, list[str]]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    consumed = 0
    for cells in reader:
        # A record starts on the line after the previous one ended (quoted fields can
        # span lines): report that first line.
        start, consumed = consumed + 1, reader.line_num
        if any(cell.strip() for cell in cells):
            yield start, [cell.strip() for cell in cells]


def _pick(cells: list[str], columns: dict[str, int], name: str) -> str:
    index = columns.get(name)
    return cells[index] if index is not None and index < len(cells) else ""


def _line(number: int, email_cell: str, reason_cell: str, note_cell: str) -> ImportLine | LineError:
    try:
        email = normalize_email(email_cell)
    except IdentityError as exc:
        return LineError(line=number, field="email", value=_shown(email_cell), message=exc.reason)
    if email is None:
        return LineError(line=number, field="email", value="", message="is blank")
    reason = reason_cell.lower() or DEFAULT_REASON
    if reason not in REASONS:
        return LineError(
            line=number,
            field="reason",
            value=_shown(reason_cell),
            message="must be one of " + ", ".join(REASONS),
        )
    if len(note_cell) > MAX_NOTE_LENGTH:
        return LineError(
            line=number,
            field="note",
            value=_shown(note_cell),
            message=f"is longer than {MAX_NOTE_LENGTH} characters",
        )
    return ImportLine(line=number, email=email, reason=reason, note=note_cell or None)


def parse_import(text: str) -> ParsedImport:
    """Read a whole CSV file (see the module docstring).

    Raises:
        ValueError: the text contains NUL characters (it is not a text file).
    """
    if "\x00" in text:
        raise ValueError("contains NUL characters: is it a text (CSV) file?")
    parsed = ParsedImport()
    columns: dict[str, int] | None = None
    first = True
    for number, cells in _rows(text):
        if first:
            first = False
            if cells[0].lower() == "email":
                names = [cell.lower() for cell in cells]
                columns = {name: names.index(name) for name in _HEADER_NAMES if name in names}
                continue
        if columns is None:
            if len(cells) > len(_HEADER_NAMES):
                parsed.errors.append(
                    LineError(
                        line=number,
                        field="line",
                        value=_shown(",".join(cells)),
                        message="has more than 3 columns (email, reason, note); quote a note "
                        "that contains commas",
                    )
                )
                continue
            cells = cells + [""] * (len(_HEADER_NAMES) - len(cells))
            email_cell, reason_cell, note_cell = cells
        else:
            email_cell, reason_cell, note_cell = (_pick(cells, columns, n) for n in _HEADER_NAMES)
        outcome = _line(number, email_cell, reason_cell, note_cell)
        if isinstance(outcome, LineError):
            parsed.errors.append(outcome)
        else:
            parsed.lines.append(outcome)
    return parsed
