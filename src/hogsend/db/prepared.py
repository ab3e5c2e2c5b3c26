"""Hot statements run on the psycopg connection under a SQLAlchemy one.

For the statements the mailer runs for every few messages (``hogsend.db.repos.sends``'s
batch statements): SQLAlchemy's execution (a greenlet hop, its result and row objects)
and psycopg's list dumping (a dumper looked up for every element, in Python) cost more
of the sending process's CPU than building the statement's values. Here a statement is
bytes with ``%(name)s`` placeholders, prepared on the server on its first use on each
connection (psycopg keeps the prepared names), its values plain strings, timestamps and
flags (each dumped in C), arrays given as the text of an array literal
(:func:`text_array`), and its rows plain tuples.

It runs in whatever the connection is in: a transaction SQLAlchemy began, one opened by
hand (``sends.begin_and_read_batch``), or autocommit. A psycopg error is raised as
it is (``psycopg.Error``), not wrapped in SQLAlchemy's ``DBAPIError``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from hogsend.db.engine import driver_connection


async def execute(conn: AsyncConnection, query: bytes, params: Mapping[str, object]) -> None:
    """Run ``query`` (prepared) on ``conn``'s driver connection."""
    driver = await driver_connection(conn)
    await driver.execute(query, params, prepare=True)


async def fetch(
    conn: AsyncConnection, query: bytes, params: Mapping[str, object]
) -> list[tuple[Any, ...]]:
    """Run ``query`` (prepared) on ``conn``'s driver connection; its rows as tuples."""
    driver = await driver_connection(conn)
    cursor = await driver.execute(query, params, prepare=True)
    return await cursor.fetchall()


# A backslash that starts an escape other than \\ and \" (a false match, such as the n of
# an escaped backslash followed by "n", only sends the values the slower way).
_OTHER_ESCAPE = re.compile(rb'\\[^\\"]')


def text_array(values: Sequence[str | uuid.UUID | None]) -> str:
    """The text of a Postgres array literal of ``values`` (None as NULL).

    For a parameter cast in the statement (``CAST(%(ids)s AS uuid[])``). A JSON array of
    strings, its brackets made braces, is an array literal Postgres reads back as the
    same strings: each element double-quoted, ``\\`` and ``"`` escaped alike, and an
    unquoted ``null`` is NULL. orjson writes it in C (UUIDs too). JSON's other escapes
    (control characters, written as ``\\n`` or ``\\u0001``) read differently in an
    array, so values with one are quoted here instead.
    """
    dumped: bytes | None
    try:
        dumped = orjson.dumps(values)
    except orjson.JSONEncodeError:
        dumped = None  # a lone surrogate: quoted here, then refused by the encoding as ever
    if dumped is None or (b"\\" in dumped and _OTHER_ESCAPE.search(dumped)):
        return "{" + ",".join(_quoted(value) for value in values) + "}"
    return "{" + dumped[1:-1].decode() + "}"


def _quoted(value: str | uuid.UUID | None) -> str:
    if value is None:
        return "NULL"
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
