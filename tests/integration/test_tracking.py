"""Open and click tracking end to end: the real mailer into a real aiosmtpd sink, the
messages' own tracking URLs requested through the API, everything checked in Postgres."""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import psycopg
import pytest
from aiosmtpd.controller import Controller
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from hogsend import Hogsend, define_list
from hogsend.api import create_api
from hogsend.api.routes.tracking import PIXEL_GIF
from hogsend.channels.email import SmtpProvider
from hogsend.channels.mailer import Mailer, SendRequest
from hogsend.core.identity import Identity
from hogsend.core.tracking import SignedClick, link_id, sign_click, sign_id, verify_click
from hogsend.db.engine import libpq_url, make_sessionmaker
from hogsend.db.repos.contacts import soft_delete_contacts
from hogsend.settings import Settings

FetchAll = Callable[..., Awaitable[list[dict[str, Any]]]]
SECRET = "t" * 40
PUBLIC = "https://mail.example.test"
SALE = "https://shop.example.com/sale?utm=1&x=2"
ABOUT = "https://shop.example.com/about"
RESET = "https://shop.example.com/reset?secret=abc"
CHROME = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/124.0.0.0 Safari/537.36"
)
HIT_TABLES = ("link_clicks", "email_opens", "user_events", "event_outbox")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Sink:
    """Keeps every message, and how many links the set its click URLs name had stored
    when it arrived (0: no click URL, or a set not stored)."""

    database_url: str
    messages: list[EmailMessage] = field(default_factory=list)
    links_on_arrival: list[int] = field(default_factory=list)

    async def handle_DATA(  # noqa: N802 - aiosmtpd's hook name
        self, server: Any, session: Any, envelope: Any
    ) -> str:
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        # Read in another connection while the mailer waits for this reply: only what
        # the mailer committed before calling the provider is visible.
        tokens = re.findall(r"/t/c/([A-Za-z0-9_-]+)", html_of(parsed))
        stored = 0
        if tokens:
            signed = verify_click(tokens[0], SECRET.encode())
            assert isinstance(signed, SignedClick)
            assert str(signed.send_id) == parsed["X-Hogsend-Send-Id"]
            with psycopg.connect(libpq_url(self.database_url)) as conn:
                row = conn.execute(
                    "SELECT cardinality(urls) FROM tracked_link_sets WHERE id = %s",
                    (signed.link_set_id,),
                ).fetchone()
            stored = 0 if row is None else int(row[0])
        self.links_on_arrival.append(stored)
        self.messages.append(parsed)
        return "250 Message accepted"


def make_app(tmp_path: Path) -> Hogsend:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "promo.html").write_text(
        "{#---\nsubject: Sale\ncategory: newsletter\n---#}\n"
        "<html><body>\n"
        '<p><a href="https://shop.example.com/sale?utm=1&amp;x=2">Sale</a></p>\n'
        "<p><a href='https://shop.example.com/about'>About us</a>"
        ' and <a href="https://shop.example.com/sale?utm=1&amp;x=2">the sale again</a></p>\n'
        '<p><a href="mailto:help@example.com">Help</a></p>\n'
        '<p><a href="https://shop.example.com/reset?secret=abc" data-hogsend-track="off">'
        "Reset</a></p>\n"
        '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a>'
        ' <a href="{{ preferences_url }}">Preferences</a></p>\n'
        "</body></html>\n"
    )
    (templates / "one-link.html").write_text(
        '{#---\nsubject: One link\ncategory: newsletter\n---#}\n<a href="{{ link }}">Go</a>\n'
    )
    return Hogsend(
        lists=[define_list(id="newsletter", name="Newsletter", default_opt_in=True)],
        templates=templates,
    )


@dataclass
class Env:
    mailer: Mailer
    sink: Sink
    engine: AsyncEngine
    api: FastAPI
    client: httpx.AsyncClient
    app: Hogsend
    settings: Settings
    provider: SmtpProvider

    def mailer_with(self, **changes: object) -> Mailer:
        return Mailer(
            self.app, self.settings.model_copy(update=changes), self.engine, self.provider
        )

    def api_with(self, **changes: object) -> httpx.AsyncClient:
        api = create_api(self.app, self.settings.model_copy(update=changes), engine=self.engine)
        transport = httpx.ASGITransport(app=api, raise_app_exceptions=False)
        return httpx.AsyncClient(transport=transport, base_url="http://testserver")


@pytest.fixture
def sink(database_url: str) -> Iterator[tuple[Sink, int]]:
    handler = Sink(database_url)
    controller = Controller(handler, hostname="127.0.0.1", port=_free_port())
    controller.start()
    yield handler, controller.port
    controller.stop()


@pytest.fixture
async def env(
    tmp_path: Path, engine: AsyncEngine, database_url: str, sink: tuple[Sink, int]
) -> AsyncIterator[Env]:
    handler, port = sink
    app = make_app(tmp_path)
    settings = Settings(env="test", database_url=database_url, secret_key=SECRET, public_url=PUBLIC)
    provider = SmtpProvider(host="127.0.0.1", port=port, tls="none", pool_size=2)
    mailer = Mailer(app, settings, engine, provider)
    api = create_api(app, settings, engine=engine)
    transport = httpx.ASGITransport(app=api, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield Env(mailer, handler, engine, api, client, app, settings, provider)
    await api.state.driver_pool.close()
    await provider.aclose()


# --------------------------------------------------------------------------- helpers


async def new_contact(engine: AsyncEngine, address: str) -> uuid.UUID:
    async with engine.begin() as conn:
        contact_id = (
            await conn.execute(
                text("INSERT INTO contacts (email) VALUES (:e) RETURNING id"), {"e": address}
            )
        ).scalar_one()
    assert isinstance(contact_id, uuid.UUID)
    return contact_id


async def execute(engine: AsyncEngine, sql: str, **params: object) -> None:
    async with engine.begin() as conn:
        await conn.execute(text(sql), params)


async def age(engine: AsyncEngine, send_id: uuid.UUID) -> None:
    """Make the message an hour old (clicks within seconds of a send are a scanner's)."""
    await execute(
        engine,
        "UPDATE email_sends SET sent_at = now() - interval '1 hour',"
        " created_at = now() - interval '1 hour' WHERE id = :id",
        id=send_id,
    )


async def later(engine: AsyncEngine) -> None:
    """Move every recorded hit a minute back: what follows comes a while after them."""
    await execute(engine, "UPDATE link_clicks SET clicked_at = clicked_at - interval '1 minute'")


def html_of(message: EmailMessage) -> str:
    part = message.get_body(("html",))
    assert part is not None
    return str(part.get_content())  # type: ignore[attr-defined]


def text_of(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return str(part.get_content())  # type: ignore[attr-defined]


def hrefs(html: str) -> list[str]:
    return re.findall(r'href="([^"]*)"', html)


def path_of(url: str) -> str:
    parsed = urlparse(url)
    assert f"{parsed.scheme}://{parsed.netloc}" == PUBLIC
    return parsed.path


@dataclass
class Sent:
    send_id: uuid.UUID
    contact_id: uuid.UUID | None
    message: EmailMessage
    clicks: dict[str, str]  # original URL -> click path
    pixel: str | None  # open path
    link_set_id: uuid.UUID | None


async def send(
    env: Env,
    address: str = "ann@example.com",
    *,
    mailer: Mailer | None = None,
    template: str = "promo",
    props: dict[str, object] | None = None,
    contact: bool = True,
    **changes: Any,
) -> Sent:
    contact_id = await new_contact(env.engine, address) if contact else None
    request = SendRequest(
        template=template,
        contact_id=contact_id,
        to_email=None if contact else address,
        kind="campaign",
        props=props or {},
        **changes,
    )
    outcome = await (mailer or env.mailer).send(request)
    assert outcome.decision == "sent"
    message = env.sink.messages[-1]
    html = html_of(message)
    clicks: dict[str, str] = {}
    link_set_id = None
    for path in re.findall(rf'href="{re.escape(PUBLIC)}(/t/c/[^"]+)"', html):
        signed = verify_click(path.removeprefix("/t/c/"), SECRET.encode())
        assert isinstance(signed, SignedClick)
        assert signed.send_id == outcome.send_id
        assert link_set_id in (None, signed.link_set_id)  # one set per message
        link_set_id = signed.link_set_id
        async with env.engine.connect() as conn:
            urls = await conn.scalar(
                text("SELECT urls FROM tracked_link_sets WHERE id = :id"), {"id": link_set_id}
            )
        assert clicks.get(urls[signed.number], path) == path  # one link per distinct URL
        clicks[urls[signed.number]] = path
    pixels = re.findall(rf'<img src="{re.escape(PUBLIC)}(/t/o/[^"]+)"', html)
    pixel = pixels[0] if pixels else None
    return Sent(outcome.send_id, contact_id, message, clicks, pixel, link_set_id)


async def send_row(env: Env, send_id: uuid.UUID) -> dict[str, Any]:
    async with env.engine.connect() as conn:
        row = (
            await conn.execute(text("SELECT * FROM email_sends WHERE id = :id"), {"id": send_id})
        ).one()
    return dict(row._mapping)


async def rows(env: Env, sql: str, **params: object) -> list[dict[str, Any]]:
    async with env.engine.connect() as conn:
        return [dict(r._mapping) for r in await conn.execute(text(sql), params)]


async def counts(env: Env) -> dict[str, int]:
    async with env.engine.connect() as conn:
        return {
            table: (await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one()
            for table in HIT_TABLES
        }


async def events_named(env: Env, name: str) -> list[dict[str, Any]]:
    return await rows(
        env,
        "SELECT e.*, (SELECT count(*) FROM event_outbox o WHERE o.event_id = e.id) AS outbox"
        " FROM user_events e WHERE e.event = :n ORDER BY e.received_at",
        n=name,
    )


def human() -> dict[str, str]:
    return {"User-Agent": CHROME}


# --------------------------------------------------------------------------- sending


async def test_links_are_rewritten_recorded_first_and_the_pixel_added(env: Env) -> None:
    sent = await send(env)
    html = html_of(sent.message)
    # one tracked link per distinct http(s) URL, as the browser would follow it
    assert set(sent.clicks) == {SALE, ABOUT}
    # ... committed before the provider got the message
    assert env.sink.links_on_arrival == [2]
    links = hrefs(html)
    assert links.count(f"{PUBLIC}{sent.clicks[SALE]}") == 2
    assert links.count(f"{PUBLIC}{sent.clicks[ABOUT]}") == 1
    assert not any(link.startswith("https://shop.example.com/") and link != RESET for link in links)
    # left alone: mailto, the marked link (marker removed), unsubscribe and preferences
    assert "mailto:help@example.com" in links
    assert RESET in links
    assert "data-hogsend-track" not in html
    assert any(link.startswith(f"{PUBLIC}/v1/email/one-click?token=") for link in links)
    assert any(link.startswith(f"{PUBLIC}/v1/email/preferences?token=") for link in links)
    # the pixel sits before </body>
    assert sent.pixel is not None
    assert html.index(sent.pixel) < html.index("</body>")
    # the text part keeps the original, readable URLs
    plain = text_of(sent.message)
    assert SALE in plain
    assert "/t/c/" not in plain


async def test_tracking_off_by_settings_or_per_send(env: Env) -> None:
    off = await send(env, "off@example.com", mailer=env.mailer_with(track_opens=False))
    assert off.pixel is None
    assert set(off.clicks) == {SALE, ABOUT}
    none = await send(
        env, "none@example.com", mailer=env.mailer_with(track_opens=False, track_clicks=False)
    )
    assert none.pixel is None
    assert none.clicks == {}
    assert SALE.replace("&", "&amp;") in html_of(none.message)
    per_send = await send(env, "tx@example.com", track_clicks=False)
    assert per_send.clicks == {}
    assert per_send.pixel is not None
    forced = await send(
        env, "on@example.com", mailer=env.mailer_with(track_clicks=False), track_clicks=True
    )
    assert set(forced.clicks) == {SALE, ABOUT}


# --------------------------------------------------------------------------- clicks


async def test_a_click_redirects_to_the_recorded_url_and_the_first_emits_one_event(
    env: Env,
) -> None:
    sent = await send(env)
    await age(env.engine, sent.send_id)
    first = await env.client.get(sent.clicks[SALE], headers=human())
    assert first.status_code == 302
    assert first.headers["location"] == SALE
    assert first.headers["referrer-policy"] == "no-referrer"
    assert "no-store" in first.headers["cache-control"]
    stored = await send_row(env, sent.send_id)
    assert (stored["status"], stored["click_count"]) == ("clicked", 1)
    assert stored["clicked_at"] is not None
    [event] = await events_named(env, "email.clicked")
    assert event["contact_id"] == sent.contact_id
    assert event["source"] == "tracking"
    assert event["idempotency_key"] == f"email.clicked:{sent.send_id}"
    assert event["outbox"] == 1
    assert event["properties"] == {
        "sendId": str(sent.send_id),
        "templateKey": "promo",
        "journeyId": None,
        "campaignId": None,
        "url": SALE,
        "linkId": event["properties"]["linkId"],
        "isBot": False,
        "botReason": None,
    }
    # later clicks, on the same link or another, only count
    await later(env.engine)
    again = await env.client.get(sent.clicks[SALE], headers=human())
    await later(env.engine)
    other = await env.client.get(sent.clicks[ABOUT], headers=human())
    assert (again.headers["location"], other.headers["location"]) == (SALE, ABOUT)
    stored = await send_row(env, sent.send_id)
    assert (stored["click_count"], stored["clicked_at"]) == (3, stored["clicked_at"])
    assert len(await events_named(env, "email.clicked")) == 1
    # per link: counted from the clicks, which name the set and the link's number
    per_link = await rows(
        env,
        "SELECT s.urls[c.link_number + 1] AS url, count(*) AS n FROM link_clicks c"
        " JOIN tracked_link_sets s ON s.id = c.link_set_id"
        " WHERE c.email_send_id = :s AND NOT c.is_bot GROUP BY 1",
        s=sent.send_id,
    )
    assert {r["url"]: r["n"] for r in per_link} == {SALE: 2, ABOUT: 1}
    hits = await rows(env, "SELECT * FROM link_clicks WHERE email_send_id = :s", s=sent.send_id)
    assert len(hits) == 3
    assert all(not hit["is_bot"] and hit["user_agent"] == CHROME for hit in hits)
    assert all(hit["ip_address"] is not None for hit in hits)


async def test_forged_or_tampered_tokens_get_404_and_write_nothing(env: Env) -> None:
    sent = await send(env)
    await age(env.engine, sent.send_id)
    before = await counts(env)
    genuine = sent.clicks[SALE].removeprefix("/t/c/")
    link_set_id = sent.link_set_id
    assert link_set_id is not None
    flipped = genuine[:5] + ("A" if genuine[5] != "A" else "B") + genuine[6:]
    pixel_token = (sent.pixel or "").removeprefix("/t/o/")
    candidates = [
        flipped,  # one character changed
        genuine[:-1],  # truncated
        genuine + "A",  # extended
        pixel_token,  # an open token is not a click token
        sign_id("click", uuid.uuid4(), SECRET.encode()),  # genuine signature, no such link
        sign_id("click", uuid.uuid4(), b"another-key-another-key-another-key"),
        # genuine signatures: a link number past the set's end, a set never stored,
        # a send that does not exist
        sign_click(sent.send_id, link_set_id, 2, SECRET.encode()),
        sign_click(sent.send_id, link_set_id, 65535, SECRET.encode()),
        sign_click(sent.send_id, uuid.uuid4(), 0, SECRET.encode()),
        sign_click(uuid.uuid4(), link_set_id, 0, SECRET.encode()),
        sign_click(sent.send_id, link_set_id, 0, b"another-key-another-key-another-key"),
        str(uuid.uuid4()),
        "x" * 43,
    ]
    for token in candidates:
        response = await env.client.get(f"/t/c/{token}", headers=human())
        assert response.status_code == 404, token
        assert response.headers["content-type"] == "application/problem+json"
        assert "location" not in response.headers
    # the pixel route answers its GIF to anything, and records nothing for a bad token
    for token in [flipped, genuine, "nonsense"]:
        response = await env.client.get(f"/t/o/{token}", headers=human())
        assert (response.status_code, response.content) == (200, PIXEL_GIF)
    assert await counts(env) == before
    stored = await send_row(env, sent.send_id)
    assert (stored["open_count"], stored["click_count"], stored["status"]) == (0, 0, "sent")


async def test_a_token_only_ever_leads_to_its_own_links_url(env: Env) -> None:
    mine = await send(
        env, "me@example.com", template="one-link", props={"link": "https://a.example/"}
    )
    theirs = await send(
        env, "you@example.com", template="one-link", props={"link": "https://b.example/"}
    )
    for sent in (mine, theirs):
        await age(env.engine, sent.send_id)
    [mine_path] = mine.clicks.values()
    [their_path] = theirs.clicks.values()
    assert (await env.client.get(mine_path, headers=human())).headers["location"] == (
        "https://a.example/"
    )
    assert (await env.client.get(their_path, headers=human())).headers["location"] == (
        "https://b.example/"
    )
    # splice one link's id with the other's signature: refused
    mine_token, their_token = mine_path[5:], their_path[5:]
    spliced = mine_token[:21] + their_token[21:]
    assert (await env.client.get(f"/t/c/{spliced}", headers=human())).status_code == 404
    # only the first send's own click was counted on it
    assert (await send_row(env, mine.send_id))["click_count"] == 1
    assert (await send_row(env, theirs.send_id))["click_count"] == 1


async def test_the_query_string_cannot_change_the_destination(env: Env) -> None:
    sent = await send(env)
    await age(env.engine, sent.send_id)
    for query in (
        "?url=https://evil.example/",
        "?redirect=https%3A%2F%2Fevil.example%2F&next=//evil.example",
        "?to=javascript:alert(1)",
    ):
        response = await env.client.get(sent.clicks[ABOUT] + query, headers=human())
        assert response.status_code == 302
        assert response.headers["location"] == ABOUT
    # the token is the whole path segment: anything appended to it is another token
    assert (await env.client.get(sent.clicks[ABOUT] + "%2F..", headers=human())).status_code == 404
    assert (await env.client.get(sent.clicks[ABOUT] + "/x", headers=human())).status_code == 404


# --------------------------------------------------------------------------- opens


async def test_the_pixel_counts_opens_and_the_first_emits_one_event(env: Env) -> None:
    sent = await send(env)
    assert sent.pixel is not None
    await age(env.engine, sent.send_id)
    response = await env.client.get(sent.pixel, headers=human())
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/gif"
    assert response.content == PIXEL_GIF
    assert response.content[:6] == b"GIF89a"
    assert (response.content[6], response.content[8]) == (1, 1)  # 1x1
    assert "no-store" in response.headers["cache-control"]
    assert response.headers["pragma"] == "no-cache"
    stored = await send_row(env, sent.send_id)
    assert (stored["status"], stored["open_count"]) == ("opened", 1)
    first_opened_at = stored["opened_at"]
    assert first_opened_at is not None
    [event] = await events_named(env, "email.opened")
    assert event["idempotency_key"] == f"email.opened:{sent.send_id}"
    assert event["outbox"] == 1
    assert event["properties"]["sendId"] == str(sent.send_id)
    assert event["properties"]["isBot"] is False
    assert "url" not in event["properties"]
    await env.client.get(sent.pixel, headers=human())
    # a click moves the status on; a later open does not move it back
    await env.client.get(sent.clicks[SALE], headers=human())
    await env.client.get(sent.pixel, headers=human())
    stored = await send_row(env, sent.send_id)
    assert (stored["status"], stored["open_count"]) == ("clicked", 3)
    assert stored["opened_at"] == first_opened_at
    assert len(await events_named(env, "email.opened")) == 1
    assert len(await rows(env, "SELECT * FROM email_opens WHERE NOT is_bot")) == 3


async def test_concurrent_first_hits_make_one_event(env: Env) -> None:
    sent = await send(env)
    assert sent.pixel is not None
    await age(env.engine, sent.send_id)
    pixel = sent.pixel
    responses = await asyncio.gather(
        *(env.client.get(pixel, headers=human()) for _ in range(10)),
        *(env.client.get(sent.clicks[SALE], headers=human()) for _ in range(10)),
    )
    assert [r.status_code for r in responses] == [200] * 10 + [302] * 10
    stored = await send_row(env, sent.send_id)
    assert (stored["open_count"], stored["click_count"]) == (10, 10)
    assert len(await events_named(env, "email.opened")) == 1
    assert len(await events_named(env, "email.clicked")) == 1


async def test_opens_of_a_message_to_an_address_without_a_contact_count_without_events(
    env: Env,
) -> None:
    sent = await send(env, "stranger@example.com", contact=False)
    assert sent.pixel is not None
    await env.client.get(sent.pixel, headers=human())
    assert (await send_row(env, sent.send_id))["open_count"] == 1
    assert await events_named(env, "email.opened") == []


# --------------------------------------------------------------------------- bots


async def test_a_scanner_click_is_flagged_redirected_and_emits_nothing(env: Env) -> None:
    sent = await send(env)
    await age(env.engine, sent.send_id)
    response = await env.client.get(
        sent.clicks[SALE], headers={"User-Agent": "Mozilla/5.0 (compatible; Barracuda Sentinel)"}
    )
    assert (response.status_code, response.headers["location"]) == (302, SALE)
    [hit] = await rows(env, "SELECT * FROM link_clicks")
    assert (hit["is_bot"], hit["bot_reason"]) == (True, "scanner:barracuda")
    stored = await send_row(env, sent.send_id)
    assert (stored["click_count"], stored["clicked_at"], stored["status"]) == (0, None, "sent")
    assert await events_named(env, "email.clicked") == []
    # the person's click afterwards is the first that counts, and emits the event
    await env.client.get(sent.clicks[SALE], headers=human())
    assert len(await events_named(env, "email.clicked")) == 1


async def test_head_requests_are_answered_and_flagged(env: Env) -> None:
    sent = await send(env)
    assert sent.pixel is not None
    await age(env.engine, sent.send_id)
    clicked = await env.client.head(sent.clicks[SALE], headers=human())
    assert (clicked.status_code, clicked.headers["location"]) == (302, SALE)
    opened = await env.client.head(sent.pixel, headers=human())
    assert (opened.status_code, opened.headers["content-type"]) == (200, "image/gif")
    [click_hit] = await rows(env, "SELECT * FROM link_clicks")
    [open_hit] = await rows(env, "SELECT * FROM email_opens")
    assert (click_hit["is_bot"], click_hit["bot_reason"]) == (True, "head")
    assert (open_hit["is_bot"], open_hit["bot_reason"]) == (True, "head")
    stored = await send_row(env, sent.send_id)
    assert (stored["open_count"], stored["click_count"], stored["status"]) == (0, 0, "sent")
    # Only the send's own email.sent: the flagged hits emitted nothing.
    assert await events_named(env, "email.opened") == []
    assert await events_named(env, "email.clicked") == []
    assert len(await events_named(env, "email.sent")) == 1


async def test_a_click_seconds_after_the_send_is_a_scanners(env: Env) -> None:
    sent = await send(env)
    response = await env.client.get(sent.clicks[ABOUT], headers=human())
    assert response.headers["location"] == ABOUT
    [hit] = await rows(env, "SELECT * FROM link_clicks")
    assert (hit["is_bot"], hit["bot_reason"]) == (True, "too_soon")
    assert await events_named(env, "email.clicked") == []
    # with the delay rule off, the same click is a person's
    async with env.api_with(track_bot_click_seconds=0) as relaxed:
        await relaxed.get(sent.clicks[ABOUT], headers=human())
    assert len(await events_named(env, "email.clicked")) == 1


async def test_clicking_every_link_at_once_is_a_scanner_and_the_burst_is_relabelled(
    env: Env,
) -> None:
    sent = await send(env)
    await age(env.engine, sent.send_id)
    await env.client.get(sent.clicks[SALE], headers=human())
    assert (await send_row(env, sent.send_id))["click_count"] == 1
    await env.client.get(sent.clicks[ABOUT], headers=human())
    hits = await rows(env, "SELECT is_bot, bot_reason FROM link_clicks")
    assert [(h["is_bot"], h["bot_reason"]) for h in hits] == [(True, "all_links")] * 2
    stored = await send_row(env, sent.send_id)
    assert stored["click_count"] == 0


async def test_bot_hits_can_emit_events_when_asked(env: Env) -> None:
    sent = await send(env)
    await age(env.engine, sent.send_id)
    async with env.api_with(track_bot_events=True) as client:
        await client.get(sent.clicks[SALE], headers={"User-Agent": "curl/8.5.0"})
    [event] = await events_named(env, "email.clicked")
    assert (event["properties"]["isBot"], event["properties"]["botReason"]) == (
        True,
        "scanner:curl",
    )
    stored = await send_row(env, sent.send_id)
    assert stored["click_count"] == 0  # counters stay people-only


async def test_erasure_blanks_hit_details_and_stops_events(env: Env) -> None:
    sent = await send(env, "gone@example.com")
    assert sent.pixel is not None
    await age(env.engine, sent.send_id)
    await env.client.get(sent.pixel, headers=human())
    async with make_sessionmaker(env.engine)() as session, session.begin():
        await soft_delete_contacts(session, Identity(email="gone@example.com"), erase=True)
    # the hit recorded before loses its details (its event went with the contact's events)
    [opened] = await rows(env, "SELECT ip_address, user_agent FROM email_opens")
    assert opened == {"ip_address": None, "user_agent": None}
    assert await events_named(env, "email.opened") == []
    # the link keeps working and counting, but no event is made about an erased contact
    response = await env.client.get(sent.clicks[SALE], headers=human())
    assert response.headers["location"] == SALE
    assert (await send_row(env, sent.send_id))["click_count"] == 1
    assert await events_named(env, "email.clicked") == []


async def test_hits_past_the_hourly_cap_are_answered_but_not_stored(env: Env) -> None:
    sent = await send(env)
    assert sent.pixel is not None
    await age(env.engine, sent.send_id)
    async with env.api_with(track_max_hits_per_hour=3) as capped:
        for _ in range(2):
            assert (await capped.get(sent.pixel, headers=human())).status_code == 200
        assert (await capped.get(sent.clicks[SALE], headers=human())).status_code == 302
        before = await counts(env)
        # The message has its 3 hits of the hour: still a pixel and a redirect, no rows.
        pixel = await capped.get(sent.pixel, headers=human())
        click = await capped.get(sent.clicks[ABOUT], headers=human())
        assert pixel.content == PIXEL_GIF
        assert (click.status_code, click.headers["location"]) == (302, ABOUT)
        assert await counts(env) == before
        stored = await send_row(env, sent.send_id)
        assert (stored["open_count"], stored["click_count"]) == (2, 1)
        # An hour later the message has room again.
        await execute(
            env.engine,
            "UPDATE email_opens SET opened_at = opened_at - interval '61 minutes';"
            "UPDATE link_clicks SET clicked_at = clicked_at - interval '61 minutes'",
        )
        assert (await capped.get(sent.pixel, headers=human())).status_code == 200
    assert (await send_row(env, sent.send_id))["open_count"] == 3


# --------------------------------------------------------------------------- link sets


async def test_sends_sharing_a_link_set_each_get_their_own_clicks(env: Env) -> None:
    ann = await send(env, "ann@example.com")
    bob = await send(env, "bob@example.com")
    # One stored set for both messages, different click URLs in each.
    assert ann.link_set_id is not None
    assert ann.link_set_id == bob.link_set_id
    assert (await rows(env, "SELECT count(*) AS n FROM tracked_link_sets"))[0]["n"] == 1
    assert ann.clicks[SALE] != bob.clicks[SALE]
    for sent in (ann, bob):
        await age(env.engine, sent.send_id)
    response = await env.client.get(bob.clicks[SALE], headers=human())
    assert response.headers["location"] == SALE
    assert (await send_row(env, bob.send_id))["click_count"] == 1
    assert (await send_row(env, ann.send_id))["click_count"] == 0
    [event] = await events_named(env, "email.clicked")
    assert event["contact_id"] == bob.contact_id
    assert event["properties"]["sendId"] == str(bob.send_id)
    assert event["properties"]["linkId"] == str(link_id(bob.send_id, 0))
    await later(env.engine)
    await env.client.get(ann.clicks[ABOUT], headers=human())
    assert (await send_row(env, ann.send_id))["click_count"] == 1
    assert (await send_row(env, bob.send_id))["click_count"] == 1
    clicked = await events_named(env, "email.clicked")
    assert [(e["contact_id"], e["properties"]["url"]) for e in clicked] == [
        (bob.contact_id, SALE),
        (ann.contact_id, ABOUT),
    ]
    hits = await rows(
        env, "SELECT email_send_id, link_set_id, link_number FROM link_clicks ORDER BY clicked_at"
    )
    assert [(h["email_send_id"], h["link_number"]) for h in hits] == [
        (bob.send_id, 0),
        (ann.send_id, 1),
    ]
    assert {h["link_set_id"] for h in hits} == {ann.link_set_id}


async def test_a_click_token_sent_before_link_sets_still_redirects_and_counts(env: Env) -> None:
    sent = await send(env)
    await age(env.engine, sent.send_id)
    # Links as the mailer recorded them before migration 0017: a row per link, and a
    # 43-character token naming the row.
    async with env.engine.begin() as conn:
        old_ids = [
            (
                await conn.execute(
                    text(
                        "INSERT INTO tracked_links (email_send_id, original_url)"
                        " VALUES (:s, :u) RETURNING id"
                    ),
                    {"s": sent.send_id, "u": url},
                )
            ).scalar_one()
            for url in (SALE, ABOUT)
        ]
    old_token = sign_id("click", old_ids[1], SECRET.encode())
    assert len(old_token) == 43
    response = await env.client.get(f"/t/c/{old_token}", headers=human())
    assert (response.status_code, response.headers["location"]) == (302, ABOUT)
    stored = await send_row(env, sent.send_id)
    assert (stored["click_count"], stored["status"]) == (1, "clicked")
    [event] = await events_named(env, "email.clicked")
    assert event["contact_id"] == sent.contact_id
    assert (event["properties"]["url"], event["properties"]["linkId"]) == (ABOUT, str(old_ids[1]))
    [link] = await rows(env, "SELECT click_count FROM tracked_links WHERE id = :l", l=old_ids[1])
    assert link["click_count"] == 1
    [hit] = await rows(env, "SELECT tracked_link_id, link_set_id, link_number FROM link_clicks")
    assert hit == {"tracked_link_id": old_ids[1], "link_set_id": None, "link_number": None}
    # the all-links rule still sees every row of the message, and relabels the burst
    await env.client.get(f"/t/c/{sign_id('click', old_ids[0], SECRET.encode())}", headers=human())
    flagged = await rows(env, "SELECT is_bot, bot_reason FROM link_clicks")
    assert [(h["is_bot"], h["bot_reason"]) for h in flagged] == [(True, "all_links")] * 2
    links = await rows(
        env, "SELECT click_count FROM tracked_links WHERE email_send_id = :s", s=sent.send_id
    )
    assert [link["click_count"] for link in links] == [0, 0]
    assert (await send_row(env, sent.send_id))["click_count"] == 0
