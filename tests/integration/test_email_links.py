"""The links in emails: RFC 8058 one-click unsubscribe and the preference centre.

Messages go through the real mailer to a real aiosmtpd server; the links are taken from
what arrived there and exercised through the ASGI app on real Postgres, the way a
mailbox provider (one-click POST) or a person (GET pages, form POST) uses them. The
next send through the same mailer must obey what was recorded.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from hogsend import Hogsend, define_list
from hogsend.api import create_api
from hogsend.channels.email import SmtpProvider
from hogsend.channels.mailer import Mailer, SendRequest
from hogsend.core import tokens
from hogsend.settings import Settings
from mail_sink import Sink

FetchAll = Callable[..., Awaitable[list[dict[str, Any]]]]
SECRET = "k" * 40
PUBLIC = "https://mail.example.test"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
ONE_CLICK_BODY = "List-Unsubscribe=One-Click"
PREFERENCE_TABLES = ("contacts", "list_subscriptions", "email_preferences", "contact_aliases")


def make_app(tmp_path: Path) -> Hogsend:
    templates = tmp_path / "templates"
    templates.mkdir()
    footer = (
        '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a> · '
        '<a href="{{ preferences_url }}">Preferences</a></p>'
    )
    (templates / "news.html").write_text(
        "{#---\nsubject: News\ncategory: newsletter\n---#}\n<p>News</p>" + footer
    )
    (templates / "tips.html").write_text(
        "{#---\nsubject: Tips\ncategory: tips\n---#}\n<p>Tips</p>" + footer
    )
    (templates / "beta.html").write_text(
        "{#---\nsubject: Beta\ncategory: beta\n---#}\n<p>Beta</p>" + footer
    )
    (templates / "nudge.html").write_text("{#---\nsubject: Still there?\n---#}\n<p>Hi</p>" + footer)
    (templates / "receipt.html").write_text(
        "{#---\nsubject: Your receipt\ncategory: transactional\n---#}\n<p>Paid</p>\n"
    )
    return Hogsend(
        lists=[
            define_list(
                id="newsletter",
                name="Newsletter",
                description="Product news, monthly",
                default_opt_in=True,
            ),
            define_list(id="beta", name="Beta programme"),
        ],
        templates=templates,
    )


@dataclass
class Env:
    mailer: Mailer
    sink: Sink
    engine: AsyncEngine
    client: httpx.AsyncClient
    fetch_all: FetchAll

    async def send(self, template: str, contact_id: uuid.UUID | None, **kw: Any) -> str:
        kind = "transactional" if template == "receipt" else kw.pop("kind", "campaign")
        outcome = await self.mailer.send(
            SendRequest(template=template, contact_id=contact_id, kind=kind, **kw)
        )
        return outcome.decision

    def last_links(self) -> dict[str, str]:
        """The one-click URL of the last message's header and its preference link."""
        message = self.sink.messages[-1]
        header = message["List-Unsubscribe"]
        assert message["List-Unsubscribe-Post"] == ONE_CLICK_BODY
        html = message.get_body(("html",))
        assert html is not None
        hrefs = [unescape(h) for h in re.findall(r'href="([^"]+)"', html.get_content())]
        [preferences] = [h for h in hrefs if "/v1/email/preferences" in h]
        return {"one_click": header[1:-1], "preferences": preferences}

    async def counts(self) -> dict[str, int]:
        async with self.engine.connect() as conn:
            return {
                t: (await conn.execute(text(f"SELECT count(*) FROM {t}"))).scalar_one()
                for t in PREFERENCE_TABLES
            }


def local(url: str) -> str:
    """The path and query of an emailed link (the ASGI client serves PUBLIC's paths)."""
    parsed = urlparse(url)
    assert f"{parsed.scheme}://{parsed.netloc}" == PUBLIC
    return f"{parsed.path}?{parsed.query}"


@pytest.fixture
async def env(
    tmp_path: Path,
    engine: AsyncEngine,
    database_url: str,
    sink: tuple[Sink, int],
    fetch_all: FetchAll,
) -> AsyncIterator[Env]:
    handler, port = sink
    app = make_app(tmp_path)
    settings = Settings(env="test", database_url=database_url, secret_key=SECRET, public_url=PUBLIC)
    provider = SmtpProvider(host="127.0.0.1", port=port, tls="none", pool_size=2)
    api: FastAPI = create_api(app, settings, engine=engine)
    transport = httpx.ASGITransport(app=api, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield Env(Mailer(app, settings, engine, provider), handler, engine, client, fetch_all)
    await api.state.driver_pool.close()
    await provider.aclose()


async def new_contact(engine: AsyncEngine, address: str | None, **columns: object) -> uuid.UUID:
    values = {"email": address, **columns}
    async with engine.begin() as conn:
        contact_id = (
            await conn.execute(
                text(
                    f"INSERT INTO contacts ({', '.join(values)}) "
                    f"VALUES ({', '.join(':' + n for n in values)}) RETURNING id"
                ),
                values,
            )
        ).scalar_one()
    assert isinstance(contact_id, uuid.UUID)
    return contact_id


async def as_mailbox_provider(client: httpx.AsyncClient, url: str) -> httpx.Response:
    """What Gmail does on "Unsubscribe": POST the header's URL with the RFC 8058 form body,
    no cookie, no credentials, no Accept: text/html."""
    return await client.post(
        local(url),
        content=ONE_CLICK_BODY,
        headers={**FORM, "User-Agent": "Mozilla/5.0 (compatible; Google-OneClick)"},
    )


# --------------------------------------------------------------------------- one-click


async def test_one_click_from_a_mailbox_provider_stops_that_list_only(env: Env) -> None:
    ann = await new_contact(env.engine, "ann@example.com")
    assert await env.send("news", ann) == "sent"
    link = env.last_links()["one_click"]
    before = datetime.now(UTC)

    response = await as_mailbox_provider(env.client, link)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == "Unsubscribed\n"
    [row] = await env.fetch_all("SELECT * FROM list_subscriptions")
    assert (row["contact_id"], row["list_id"], row["subscribed"]) == (ann, "newsletter", False)
    assert row["source"] == "one_click"
    assert row["unsubscribed_at"] >= before
    assert await env.fetch_all("SELECT * FROM email_preferences") == []

    # The next newsletter is refused by the gate; a transactional mail still goes out,
    # and so does mail of another category.
    delivered = len(env.sink.messages)
    assert await env.send("news", ann) == "unsubscribed"
    assert await env.send("receipt", ann) == "sent"
    assert await env.send("tips", ann) == "sent"
    subjects = [m["Subject"] for m in env.sink.messages[delivered:]]
    assert subjects == ["Your receipt", "Tips"]
    [gated] = await env.fetch_all(
        "SELECT decision_detail FROM email_sends WHERE decision = 'unsubscribed'"
    )
    assert gated["decision_detail"]["listId"] == "newsletter"

    # A provider retrying the POST changes nothing.
    again = await as_mailbox_provider(env.client, link)
    assert again.status_code == 200
    assert await env.fetch_all("SELECT * FROM list_subscriptions") == [row]


async def test_one_click_without_a_list_unsubscribes_from_everything(env: Env) -> None:
    bob = await new_contact(env.engine, "bob@example.com")
    assert await env.send("nudge", bob, kind="journey") == "sent"
    link = local(env.last_links()["one_click"])
    # Some providers send the same field as multipart/form-data; a broken body is a 400.
    broken = await env.client.post(
        link, content=b"--x\r\n\r\nzz", headers={"Content-Type": "multipart/form-data"}
    )
    assert broken.status_code == 400
    assert await env.fetch_all("SELECT * FROM email_preferences") == []
    response = await env.client.post(
        link, data={"List-Unsubscribe": "One-Click"}, files={"unused": ("a.txt", b"")}
    )
    assert response.status_code == 200
    assert response.request.headers["content-type"].startswith("multipart/form-data")
    [prefs] = await env.fetch_all("SELECT * FROM email_preferences")
    assert (prefs["contact_id"], prefs["unsubscribed_all"]) == (bob, True)
    assert prefs["source"] == "one_click"
    assert prefs["unsubscribed_at"] is not None
    assert await env.send("nudge", bob, kind="journey") == "unsubscribed"
    assert await env.send("news", bob) == "unsubscribed"
    assert await env.send("receipt", bob) == "sent"


async def test_get_only_shows_a_confirmation_and_its_button_unsubscribes(env: Env) -> None:
    cat = await new_contact(env.engine, "cat@example.com")
    assert await env.send("news", cat) == "sent"
    links = env.last_links()
    before = await env.counts()

    page = await env.client.get(local(links["one_click"]))
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "script-src" not in page.headers["content-security-policy"]
    assert "Newsletter" in page.text
    assert "cat@example.com" in page.text
    form = re.search(r'<form method="post" action="([^"]+)">', page.text)
    assert form is not None
    assert 'name="List-Unsubscribe" value="One-Click"' in page.text
    assert unescape(form.group(1)) == local(links["one_click"])
    # Scanners prefetch links, sometimes many times: nothing may change.
    for _ in range(3):
        assert (await env.client.get(local(links["one_click"]))).status_code == 200
    assert (await env.client.get(local(links["preferences"]))).status_code == 200
    assert await env.counts() == before
    assert await env.send("news", cat) == "sent"

    # The button: a browser posting the page's form, asking for HTML back.
    done = await env.client.post(
        unescape(form.group(1)),
        data={"List-Unsubscribe": "One-Click"},
        headers={"Accept": "text/html,application/xhtml+xml"},
    )
    assert done.status_code == 200
    assert done.headers["content-type"].startswith("text/html")
    assert "You are unsubscribed" in done.text
    assert "/v1/email/preferences?token=" in done.text
    assert await env.send("news", cat) == "unsubscribed"


async def test_forged_expired_and_misused_tokens_write_nothing(env: Env) -> None:
    dan = await new_contact(env.engine, "dan@example.com")
    assert await env.send("news", dan) == "sent"
    links = env.last_links()
    url = urlparse(links["one_click"])
    [token] = parse_qs(url.query)["token"]
    payload, signature = token.split(".")
    # A forgery: the same claims re-signed with another key; and a tampered signature.
    claims = tokens.verify(token, SECRET.encode(), purpose="unsubscribe", now=datetime.now(UTC))
    other_key = tokens.sign(claims, b"x" * 40)
    tampered = f"{payload}.{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BB'}"
    expired = tokens.issue(
        purpose="unsubscribe",
        secret=SECRET.encode(),
        now=datetime.now(UTC) - timedelta(days=400),
        contact_id=str(dan),
        email="dan@example.com",
        list_id="newsletter",
    )
    [preference_token] = parse_qs(urlparse(links["preferences"]).query)["token"]
    before = await env.counts()
    for bad in (other_key, tampered, expired, preference_token, "", "garbage"):
        path = f"/v1/email/one-click?token={bad}"
        posted = await env.client.post(path, content=ONE_CLICK_BODY, headers=FORM)
        assert posted.status_code == 400, bad
        shown = await env.client.get(path)
        assert shown.status_code == 400
        assert "This link does not work" in shown.text
    assert (await env.client.post("/v1/email/one-click", content=ONE_CLICK_BODY)).status_code == 400
    # A genuine token without the RFC 8058 body is refused too.
    for body, headers in (("", FORM), ("List-Unsubscribe=Nope", FORM), (ONE_CLICK_BODY, {})):
        response = await env.client.post(local(links["one_click"]), content=body, headers=headers)
        assert response.status_code == 400
    assert await env.counts() == before
    assert await env.send("news", dan) == "sent"


async def test_one_click_follows_a_merge_and_refuses_a_deleted_contact(env: Env) -> None:
    loser = await new_contact(env.engine, "old@example.com")
    survivor = await new_contact(env.engine, "new@example.com", external_id="u-1")
    assert await env.send("news", loser) == "sent"
    link = env.last_links()["one_click"]
    # Merge the way identity resolution records it: loser deleted, its key aliased.
    async with env.engine.begin() as conn:
        await conn.execute(
            text("UPDATE contacts SET deleted_at = now(), email = NULL WHERE id = :c"),
            {"c": loser},
        )
        await conn.execute(
            text(
                "INSERT INTO contact_aliases (contact_id, alias_kind, alias_value, reason,"
                " from_contact_id) VALUES (:s, 'email', 'old@example.com', 'merge', :l)"
            ),
            {"s": survivor, "l": loser},
        )
    assert (await as_mailbox_provider(env.client, link)).status_code == 200
    [row] = await env.fetch_all("SELECT contact_id, subscribed FROM list_subscriptions")
    assert row == {"contact_id": survivor, "subscribed": False}

    gone = await new_contact(env.engine, "gone@example.com")
    assert await env.send("news", gone) == "sent"
    link = env.last_links()
    async with env.engine.begin() as conn:
        await conn.execute(
            text("UPDATE contacts SET deleted_at = now() WHERE id = :c"), {"c": gone}
        )
    before = await env.counts()
    assert (await as_mailbox_provider(env.client, link["one_click"])).status_code == 404
    assert (await env.client.get(local(link["preferences"]))).status_code == 404
    assert await env.counts() == before


async def test_address_without_a_contact_gets_one_only_when_it_chooses(env: Env) -> None:
    assert await env.send("news", None, to_email="walk-in@example.com") == "sent"
    links = env.last_links()
    before = await env.counts()
    page = await env.client.get(local(links["preferences"]))
    assert page.status_code == 200
    assert "walk-in@example.com" in page.text
    token = parse_qs(urlparse(links["preferences"]).query)["token"][0]
    # Saving the form unchanged records nothing and creates nobody.
    unchanged = {"token": token, "shown": ["newsletter", "beta"], "list": ["newsletter"]}
    assert (await env.client.post("/v1/email/preferences", data=unchanged)).status_code == 303
    assert await env.counts() == before

    assert (await as_mailbox_provider(env.client, links["one_click"])).status_code == 200
    [contact] = await env.fetch_all("SELECT id, email FROM contacts")
    assert contact["email"] == "walk-in@example.com"
    [row] = await env.fetch_all("SELECT contact_id, list_id, subscribed FROM list_subscriptions")
    assert row == {"contact_id": contact["id"], "list_id": "newsletter", "subscribed": False}
    assert await env.send("news", contact["id"]) == "unsubscribed"


# --------------------------------------------------------------------------- preference centre


def checkbox_states(page: str) -> dict[str, bool]:
    boxes = re.findall(r'<input type="checkbox"[^>]*>', page)
    states = {}
    for box in boxes:
        value = re.search(r'value="([^"]+)"', box)
        assert value is not None
        states[value.group(1)] = re.search(r"\schecked[\s>]", box) is not None
    return states


async def test_preference_centre_shows_and_saves_choices(env: Env) -> None:
    eve = await new_contact(env.engine, "eve@example.com")
    assert await env.send("news", eve) == "sent"
    path = local(env.last_links()["preferences"])
    page = await env.client.get(path)
    assert page.status_code == 200
    assert page.headers["cache-control"] == "no-store"
    assert "<script" not in page.text
    assert 'for="unsubscribe-all"' in page.text
    assert "Product news, monthly" in page.text
    # newsletter defaults to subscribed, beta (opt-in) to not; "on" is the global switch.
    assert checkbox_states(page.text) == {"newsletter": True, "beta": False, "on": False}
    token = parse_qs(path.split("?", 1)[1])["token"][0]
    before = datetime.now(UTC)

    saved = await env.client.post(
        "/v1/email/preferences",
        data={"token": token, "shown": ["newsletter", "beta"], "list": ["beta"]},
    )
    assert saved.status_code == 303
    assert saved.headers["location"].endswith("&saved=1")
    rows = await env.fetch_all(
        "SELECT list_id, subscribed, source, subscribed_at, unsubscribed_at"
        " FROM list_subscriptions ORDER BY list_id"
    )
    assert [(r["list_id"], r["subscribed"], r["source"]) for r in rows] == [
        ("beta", True, "preference_center"),
        ("newsletter", False, "preference_center"),
    ]
    assert rows[0]["subscribed_at"] >= before
    assert rows[1]["unsubscribed_at"] >= before
    assert await env.fetch_all("SELECT * FROM email_preferences") == []
    confirmed = await env.client.get(saved.headers["location"])
    assert 'role="status"' in confirmed.text
    assert checkbox_states(confirmed.text) == {"newsletter": False, "beta": True, "on": False}
    assert await env.send("news", eve) == "unsubscribed"
    assert await env.send("beta", eve) == "sent"

    # Everything off, then back on: list choices survive the global switch.
    off = {
        "token": token,
        "shown": ["newsletter", "beta"],
        "list": ["beta"],
        "unsubscribe_all": "on",
    }
    assert (await env.client.post("/v1/email/preferences", data=off)).status_code == 303
    [prefs] = await env.fetch_all("SELECT * FROM email_preferences")
    assert (prefs["unsubscribed_all"], prefs["source"]) == (True, "preference_center")
    assert await env.send("beta", eve) == "unsubscribed"
    assert await env.send("receipt", eve) == "sent"
    on = {"token": token, "shown": ["newsletter", "beta"], "list": ["beta"]}
    assert (await env.client.post("/v1/email/preferences", data=on)).status_code == 303
    [prefs] = await env.fetch_all("SELECT * FROM email_preferences")
    assert prefs["unsubscribed_all"] is False
    assert prefs["resubscribed_at"] is not None
    assert await env.send("beta", eve) == "sent"


async def test_preference_centre_offers_back_a_category_and_ignores_unshown_lists(
    env: Env,
) -> None:
    fay = await new_contact(env.engine, "fay@example.com")
    assert await env.send("tips", fay) == "sent"
    assert (await as_mailbox_provider(env.client, env.last_links()["one_click"])).status_code == 200
    path = local(env.last_links()["preferences"])
    page = await env.client.get(path)
    assert checkbox_states(page.text) == {
        "newsletter": True,
        "beta": False,
        "tips": False,
        "on": False,
    }
    token = parse_qs(path.split("?", 1)[1])["token"][0]
    # "beta" was not shown (say, registered after the page loaded): it stays as it was,
    # and an id that is no list at all is ignored.
    form = {"token": token, "shown": ["newsletter", "tips", "bogus"], "list": ["tips", "bogus"]}
    assert (await env.client.post("/v1/email/preferences", data=form)).status_code == 303
    rows = await env.fetch_all("SELECT list_id, subscribed FROM list_subscriptions ORDER BY 1")
    assert rows == [
        {"list_id": "newsletter", "subscribed": False},
        {"list_id": "tips", "subscribed": True},
    ]
    assert await env.send("tips", fay) == "sent"


async def test_preference_centre_refuses_bad_tokens_and_writes_nothing(env: Env) -> None:
    gus = await new_contact(env.engine, "gus@example.com")
    assert await env.send("news", gus) == "sent"
    links = env.last_links()
    [unsubscribe_token] = parse_qs(urlparse(links["one_click"]).query)["token"]
    [token] = parse_qs(urlparse(links["preferences"]).query)["token"]
    forged = tokens.sign(
        tokens.verify(token, SECRET.encode(), purpose="preferences", now=datetime.now(UTC)),
        b"y" * 40,
    )
    before = await env.counts()
    for bad in (forged, unsubscribe_token, "", "a.b"):
        assert (await env.client.get(f"/v1/email/preferences?token={bad}")).status_code == 400
        posted = await env.client.post(
            "/v1/email/preferences",
            data={"token": bad, "shown": ["newsletter"], "unsubscribe_all": "on"},
        )
        assert posted.status_code == 400
        assert "This link does not work" in posted.text
    no_token = await env.client.post("/v1/email/preferences", data={"unsubscribe_all": "on"})
    assert no_token.status_code == 400
    assert await env.counts() == before
