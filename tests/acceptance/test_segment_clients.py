"""Unmodified Segment and RudderStack Python clients against a live hogsend API.

A real uvicorn server runs in a thread on a free port against the test database; each
client is configured only with its host (``http://127.0.0.1:PORT/segment``) and an
``ingest`` API key as its write key, sends track / identify / alias / page / group /
screen, flushes, and the rows must be there: events, contact properties and the
merged identity.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from rudderstack.analytics import Client as RudderClient
from segment.analytics import Client as SegmentClient
from sqlalchemy import text

from hogsend.api import create_api
from hogsend.app import Hogsend
from hogsend.db.engine import make_async_engine, make_sessionmaker
from hogsend.db.repos import api_keys
from hogsend.settings import Settings
from live_server import live_server


async def _mint(database_url: str) -> str:
    engine = make_async_engine(database_url)
    try:
        async with make_sessionmaker(engine)() as session:
            _, raw = await api_keys.create_key(session, name="segment", scopes=["ingest"])
            await session.commit()
    finally:
        await engine.dispose()
    return raw


async def _query(database_url: str, sql: str) -> list[dict[str, Any]]:
    engine = make_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            return [dict(row._mapping) for row in await conn.execute(text(sql))]
    finally:
        await engine.dispose()


def query(database_url: str, sql: str) -> list[dict[str, Any]]:
    return asyncio.run(_query(database_url, sql))


@pytest.fixture
def live(database_url: str) -> Iterator[tuple[str, str]]:
    """The API's base URL over real HTTP, and an ingest key for it."""
    key = asyncio.run(_mint(database_url))
    settings = Settings(
        env="test", database_url=database_url, log_level="warning", rate_limit_data_plane=0
    )
    with live_server(create_api(Hogsend(), settings)) as base:
        assert httpx.get(base + "/v1/health", timeout=5).status_code == 200
        yield base, key


def _send_journey(client: Any, prefix: str) -> None:
    """The same visitor-to-customer story through either client's API."""
    anon = f"{prefix}-visitor"
    user = f"{prefix}-user"
    client.page(anonymous_id=anon, name="Pricing", properties={"path": "/pricing"})
    client.track(anonymous_id=anon, event="Trial Started", properties={"plan": "pro"})
    client.identify(
        user_id=user,
        anonymous_id=anon,
        traits={"email": f"{prefix}@example.com", "plan": "pro", "company": "Acme"},
    )
    client.track(user_id=user, event="Order Completed", properties={"total": 42.5})
    client.group(user_id=user, group_id="acme", traits={"name": "Acme Inc."})
    client.screen(user_id=user, name="Settings")
    # A second identity of the same person, folded in by alias.
    client.track(user_id=f"{prefix}-legacy", event="Legacy Login")
    client.alias(previous_id=f"{prefix}-legacy", user_id=user)


def _check_rows(database_url: str, prefix: str) -> None:
    user, legacy = f"{prefix}-user", f"{prefix}-legacy"
    # The alias merged the two users; the survivor rule picks which id stays in the
    # column, the other resolves through an alias. Either way: one live person.
    contacts = query(
        database_url,
        "SELECT id, external_id, email, anonymous_id, properties FROM contacts"
        f" WHERE deleted_at IS NULL AND (external_id IN ('{user}', '{legacy}') OR id IN"
        " (SELECT contact_id FROM contact_aliases WHERE alias_kind = 'external'"
        f" AND alias_value IN ('{user}', '{legacy}')))",
    )
    assert len(contacts) == 1, contacts
    contact = contacts[0]
    aliases = query(
        database_url,
        f"SELECT alias_value FROM contact_aliases WHERE contact_id = '{contact['id']}'"
        " AND alias_kind = 'external'",
    )
    assert {user, legacy} <= {contact["external_id"]} | {a["alias_value"] for a in aliases}
    assert contact["email"] == f"{prefix}@example.com"
    assert contact["anonymous_id"] == f"{prefix}-visitor"
    assert contact["properties"]["plan"] == "pro"
    assert contact["properties"]["company"] == "Acme"
    events = query(
        database_url,
        f"SELECT event, properties, source, contact_id FROM user_events"
        f" WHERE contact_id = '{contact['id']}'",
    )
    names = sorted(e["event"] for e in events)
    assert names == sorted(
        [
            "page",
            "Trial Started",
            "identify",
            "Order Completed",
            "group",
            "screen",
            "Legacy Login",
            "alias",
        ]
    )
    assert {e["source"] for e in events} == {"segment"}
    by_name = {e["event"]: e["properties"] for e in events}
    assert by_name["Order Completed"] == {"total": 42.5}
    assert by_name["page"]["name"] == "Pricing"
    assert by_name["group"]["groupId"] == "acme"


def test_segment_analytics_python(live: tuple[str, str], database_url: str) -> None:
    base, key = live
    errors: list[Any] = []
    client = SegmentClient(
        write_key=key,
        host=f"{base}/segment",
        on_error=lambda error, batch: errors.append(error),
        max_retries=1,
    )
    _send_journey(client, "seg")
    client.flush()
    client.join()
    assert errors == []
    _check_rows(database_url, "seg")


def test_rudder_sdk_python_with_gzip(live: tuple[str, str], database_url: str) -> None:
    base, key = live
    errors: list[Any] = []
    client = RudderClient(
        write_key=key,
        host=f"{base}/segment",
        on_error=lambda error, batch: errors.append(error),
        gzip=True,
        max_retries=1,
    )
    _send_journey(client, "rudder")
    client.flush()
    client.join()
    assert errors == []
    _check_rows(database_url, "rudder")


def test_a_wrong_write_key_is_refused(live: tuple[str, str]) -> None:
    base, _ = live
    errors: list[Any] = []
    client = SegmentClient(
        write_key="hsk_not-a-key",
        host=f"{base}/segment",
        on_error=lambda error, batch: errors.append(error),
        max_retries=0,
    )
    client.track(user_id="u", event="x")
    client.flush()
    client.join()
    assert errors
    assert getattr(errors[0], "status", None) == 401
