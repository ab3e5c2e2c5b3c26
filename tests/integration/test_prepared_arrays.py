"""Array parameters given as the text of their literal (``hogsend.db.prepared.text_array``).

Postgres must read back exactly the values: the mailer's batch statements pass
idempotency keys, addresses, URLs and ids this way.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hogsend.db.engine import libpq_url
from hogsend.db.prepared import text_array

# Any text Postgres can store (no NUL) and Python can encode (no lone surrogates).
texts = st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)))


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        yield conn


def _read_back(conn: psycopg.Connection[tuple[object, ...]], literal: str, kind: str) -> object:
    row = conn.execute(f"SELECT CAST(%s AS {kind}[])", (literal,)).fetchone()
    assert row is not None
    return row[0]


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(values=st.lists(st.none() | texts, max_size=8))
def test_text_arrays_read_back_as_the_values(
    conn: psycopg.Connection[tuple[object, ...]], values: list[str | None]
) -> None:
    assert _read_back(conn, text_array(values), "text") == values


@pytest.mark.parametrize(
    "values",
    [
        [],
        [None],
        ["null", "NULL", ""],
        ['quote " and \\ backslash', "{braces}, [brackets]", "  spaced  "],
        ["tab\there", "line\nbreak", "bell\x07", "\\n is not a newline"],
        ["héllo", "✉️", "\u2028"],
    ],
)
def test_awkward_text_reads_back(
    conn: psycopg.Connection[tuple[object, ...]], values: list[str | None]
) -> None:
    assert _read_back(conn, text_array(values), "text") == values


def test_uuid_arrays_read_back(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    ids = [uuid.uuid4() for _ in range(3)]
    assert _read_back(conn, text_array([*ids, None]), "uuid") == [*ids, None]
