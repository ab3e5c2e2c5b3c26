"""Reading suppression CSV files: header or not, per-line errors with line numbers."""

from __future__ import annotations

import pytest

from hogsend.core.suppression_imports import ImportLine, parse_import


def test_bare_addresses_default_to_reason_import() -> None:
    parsed = parse_import("ann@Example.COM\n\n  bob@x.io  \n")
    assert parsed.lines == [
        ImportLine(line=1, email="ann@example.com", reason="import"),
        ImportLine(line=3, email="bob@x.io", reason="import"),
    ]
    assert parsed.errors == []
    assert parsed.received == 2


def test_positional_reason_and_quoted_note() -> None:
    parsed = parse_import('a@x.io,complaint,"said so, twice"\nb@x.io,MANUAL\n')
    assert parsed.lines == [
        ImportLine(line=1, email="a@x.io", reason="complaint", note="said so, twice"),
        ImportLine(line=2, email="b@x.io", reason="manual"),
    ]


def test_a_header_names_the_columns_in_any_order() -> None:
    parsed = parse_import("Email,note,source,reason\na@x.io,old ESP,mailchimp,hard_bounce\n")
    assert parsed.lines == [
        ImportLine(line=2, email="a@x.io", reason="hard_bounce", note="old ESP"),
    ]


def test_bad_lines_are_reported_with_their_line_numbers() -> None:
    text = "\n".join(
        [
            "email,reason,note",
            "good@x.io",
            "not-an-address",
            "c@x.io,spam",
            ",manual",
            "d@x.io,manual," + "n" * 1001,
            "e@nodot",
            "good2@x.io,soft_bounce",
        ]
    )
    parsed = parse_import(text)
    assert [line.email for line in parsed.lines] == ["good@x.io", "good2@x.io"]
    assert [(e.line, e.field) for e in parsed.errors] == [
        (3, "email"),
        (4, "reason"),
        (5, "email"),
        (6, "note"),
        (7, "email"),
    ]
    assert parsed.errors[0].message == "must contain exactly one @"
    assert parsed.errors[1].value == "spam"
    assert parsed.errors[2].message == "is blank"
    assert len(parsed.errors[3].value or "") == 200
    assert parsed.received == 7


def test_too_many_columns_without_a_header() -> None:
    parsed = parse_import("a@x.io,manual,note,extra\n")
    assert parsed.lines == []
    assert parsed.errors[0].field == "line"


def test_a_multiline_quoted_note_counts_its_lines() -> None:
    parsed = parse_import('a@x.io,manual,"one\ntwo"\nbad\n')
    assert parsed.lines[0].note == "one\ntwo"
    assert parsed.lines[0].line == 1
    assert parsed.errors[0].line == 3


def test_nul_characters_refuse_the_file() -> None:
    with pytest.raises(ValueError, match="NUL"):
        parse_import("a@x.io\x00\n")
