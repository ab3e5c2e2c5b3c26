"""The pure import-line parser: mapping defaults and checks, CSV and JSON lines."""

from __future__ import annotations

import pytest

from hogsend.core.contact_imports import (
    ImportRow,
    MappingError,
    RowError,
    check_mapping,
    default_mapping,
    parse_csv_line,
    parse_json_line,
    prepare,
)

LISTS = frozenset({"news", "promo"})


def test_default_mapping_knows_the_key_columns_and_makes_the_rest_properties() -> None:
    assert default_mapping(["Email", "externalId", "user_id", "lists", "Plan"]) == {
        "Email": "email",
        "externalId": "userId",
        "user_id": "userId",
        "lists": "lists",
        "Plan": "properties.Plan",
    }


@pytest.mark.parametrize(
    ("columns", "given", "message"),
    [
        (["email"], {"mail": "email"}, "not in the header"),
        (["email", "x"], {"x": "phone"}, "unknown field"),
        (["email", "x"], {"x": "properties."}, "unknown field"),
        (["email", "x"], {"x": "lists.gone"}, "unknown list 'gone'"),
        (["plan"], {}, "no column maps to email or userId"),
    ],
)
def test_bad_mappings_name_the_column(
    columns: list[str], given: dict[str, str], message: str
) -> None:
    with pytest.raises(MappingError, match=message):
        check_mapping(columns, given, LISTS)


def test_csv_line_maps_every_kind_of_field() -> None:
    columns = ["e", "id", "plan", "news", "all", "skip"]
    mapping = check_mapping(
        columns,
        {"e": "email", "id": "userId", "news": "lists.news", "all": "lists", "skip": "ignore"},
        LISTS,
    )
    row = parse_csv_line(7, "Ann@Example.com,u-1,pro,no,promo; ,x", columns, mapping, LISTS)
    assert isinstance(row, ImportRow)
    assert row.line == 7
    assert (row.identity.email, row.identity.user_id) == ("Ann@example.com", "u-1")
    assert row.properties == {"plan": "pro"}
    assert row.lists == {"news": False, "promo": True}


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("a@example.com,1", "expected 3 columns, found 2"),
        (",,", "neither email nor userId"),
        ("nope,,", "email:"),
        ("a@example.com,maybe,", "expected true or false"),
        ("a@example.com,,other", "unknown list 'other'"),
        ("a@exa\rmple.com,,", "not valid CSV"),
    ],
)
def test_bad_csv_lines_say_why(raw: str, reason: str) -> None:
    columns = ["email", "news", "lists"]
    mapping = check_mapping(columns, {"news": "lists.news"}, LISTS | {"x"})
    found = parse_csv_line(3, raw, columns, mapping, LISTS)
    assert isinstance(found, RowError)
    assert found.line == 3
    assert reason in found.reason
    assert found.raw == raw


def test_empty_cells_set_nothing() -> None:
    columns = ["email", "plan", "news"]
    mapping = check_mapping(columns, {"news": "lists.news"}, LISTS)
    row = parse_csv_line(2, "a@example.com,,", columns, mapping, LISTS)
    assert isinstance(row, ImportRow)
    assert (row.properties, row.lists) == ({}, {})


def test_json_lines() -> None:
    row = parse_json_line(
        1, '{"externalId": "u-2", "properties": {"n": 1}, "lists": ["news"]}', LISTS
    )
    assert isinstance(row, ImportRow)
    assert (row.identity.user_id, row.properties, row.lists) == ("u-2", {"n": 1}, {"news": True})
    mapped = parse_json_line(2, '{"email": "b@example.com", "lists": {"promo": false}}', LISTS)
    assert isinstance(mapped, ImportRow)
    assert mapped.lists == {"promo": False}


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("{", "not JSON"),
        ("[]", "expected a JSON object"),
        ('{"email": 5}', "must be strings"),
        ('{"email": "a@example.com", "properties": []}', "properties must be an object"),
        ('{"email": "a@example.com", "lists": {"news": "yes"}}', "lists must be"),
        ('{"email": "a@example.com", "lists": 3}', "lists must be"),
        ("{}", "neither email nor userId"),
    ],
)
def test_bad_json_lines_say_why(raw: str, reason: str) -> None:
    found = parse_json_line(4, raw, LISTS)
    assert isinstance(found, RowError)
    assert reason in found.reason


def test_prepare_records_where_the_data_starts() -> None:
    stored = prepare(b"email,plan\r\na@example.com,x\r\n", "csv", {}, LISTS)
    assert stored == {
        "columns": ["email", "plan"],
        "targets": {"email": "email", "plan": "properties.plan"},
        "firstLine": 2,
        "dataOffset": len(b"email,plan\r\n"),
    }
    assert prepare(b'{"email": "a@example.com"}\n', "jsonl", {}, LISTS) == {
        "firstLine": 1,
        "dataOffset": 0,
    }
    with pytest.raises(MappingError, match="CSV files only"):
        prepare(b"{}\n", "jsonl", {"a": "email"}, LISTS)
    with pytest.raises(MappingError, match="empty"):
        prepare(b"\n", "csv", {}, LISTS)


def test_a_header_that_is_not_csv_is_a_mapping_error() -> None:
    with pytest.raises(MappingError, match="not valid CSV"):
        prepare(b"email,na\rme\n", "csv", {}, LISTS)
