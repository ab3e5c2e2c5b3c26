"""The mailer against a real aiosmtpd server and real Postgres: every decision, one row each."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import httpx
import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from hogsend import Hogsend, define_list
from hogsend.api import create_api
from hogsend.channels.email import SmtpProvider
from hogsend.channels.mailer import Mailer, SendOutcome, SendRequest
from hogsend.core import tokens
from hogsend.core.identity import Identity
from hogsend.core.mailer_gates import SendWindow
from hogsend.db.repos import contacts as contacts_repo
from hogsend.db.repos import sends
from hogsend.errors import NoRecipient
from hogsend.settings import Settings
from mail_sink import Sink

FetchAll = Callable[..., Awaitable[list[dict[str, Any]]]]
MintKey = Callable[..., Awaitable[str]]
SECRET = "s" * 40
PUBLIC = "https://mail.example.test"


def api_settings(database_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "env": "test",
        "database_url": database_url,
        "rate_limit_admin": 1_000_000,
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]


def make_app(tmp_path: Path) -> Hogsend:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "news.html").write_text(
        "{#---\nsubject: News for {{ contact.email }}\ncategory: newsletter\n---#}\n"
        '<p>Hello</p><p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>\n'
    )
    (templates / "receipt.html").write_text(
        "{#---\nsubject: Your receipt\ncategory: transactional\n---#}\n<p>Paid: {{ amount }}</p>\n"
    )
    (templates / "nudge.html").write_text("{#---\nsubject: Still there?\n---#}\n<p>Hi</p>\n")
    return Hogsend(
        lists=[
            define_list(id="newsletter", name="Newsletter", default_opt_in=True),
            define_list(id="beta", name="Beta news"),
        ],
        templates=templates,
    )


@dataclass
class Env:
    mailer: Mailer
    sink: Sink
    sleeps: list[float]
    engine: AsyncEngine
    app: Hogsend
    settings: Settings

    def with_settings(self, **changes: object) -> Mailer:
        settings = self.settings.model_copy(update=changes)
        return Mailer(
            self.app, settings, self.engine, self.mailer.provider, sleep=self.mailer._sleep
        )


@pytest.fixture
async def env(
    tmp_path: Path, engine: AsyncEngine, database_url: str, sink: tuple[Sink, int]
) -> AsyncIterator[Env]:
    handler, port = sink
    app = make_app(tmp_path)
    settings = api_settings(database_url, secret_key=SECRET, public_url=PUBLIC)
    provider = SmtpProvider(host="127.0.0.1", port=port, tls="none", pool_size=4)
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    mailer = Mailer(app, settings, engine, provider, sleep=fake_sleep)
    yield Env(mailer, handler, sleeps, engine, app, settings)
    await provider.aclose()


async def new_contact(engine: AsyncEngine, email_address: str, **columns: object) -> uuid.UUID:
    names = ["email", *columns]
    async with engine.begin() as conn:
        contact_id = (
            await conn.execute(
                text(
                    f"INSERT INTO contacts ({', '.join(names)}) "
                    f"VALUES ({', '.join(':' + n for n in names)}) RETURNING id"
                ),
                {"email": email_address, **columns},
            )
        ).scalar_one()
    assert isinstance(contact_id, uuid.UUID)
    return contact_id


async def execute(engine: AsyncEngine, sql: str, **params: object) -> None:
    async with engine.begin() as conn:
        await conn.execute(text(sql), params)


async def row(fetch_all: FetchAll, send_id: uuid.UUID) -> dict[str, Any]:
    rows = await fetch_all("SELECT * FROM email_sends WHERE id = :id", id=send_id)
    return rows[0]


def news(contact_id: uuid.UUID, **changes: Any) -> SendRequest:
    return SendRequest(template="news", contact_id=contact_id, kind="campaign", **changes)


def receipt(contact_id: uuid.UUID, **changes: Any) -> SendRequest:
    return SendRequest(template="receipt", contact_id=contact_id, props={"amount": 5}, **changes)


# --------------------------------------------------------------------------- sent + headers


async def test_sent_with_well_formed_unsubscribe_headers(env: Env, fetch_all: FetchAll) -> None:
    contact_id = await new_contact(env.engine, "ann@example.com")
    outcome = await env.mailer.send(news(contact_id, idempotency_key="k-sent"))
    assert outcome.decision == "sent"
    stored = await row(fetch_all, outcome.send_id)
    assert stored["decision"] == "sent"
    assert stored["status"] == "sent"
    assert stored["idempotency_key"] == "k-sent"
    assert stored["provider"] == "smtp"
    assert stored["provider_message_id"] == outcome.provider_message_id
    assert stored["category"] == "newsletter"
    assert stored["subject"] == "News for ann@example.com"
    assert stored["sent_at"] is not None

    [message] = env.sink.messages
    assert message["To"] == "ann@example.com"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    header = message["List-Unsubscribe"]
    assert header.startswith("<")
    assert header.endswith(">")
    url = urlparse(header[1:-1])
    assert f"{url.scheme}://{url.netloc}" == PUBLIC
    assert url.path == "/v1/email/one-click"
    [token] = parse_qs(url.query)["token"]
    claims = tokens.verify(token, SECRET.encode(), purpose="unsubscribe", now=datetime.now(UTC))
    assert claims.contact_id == str(contact_id)
    assert claims.list_id == "newsletter"
    assert claims.email == "ann@example.com"
    assert message["X-Hogsend-Send-Id"] == str(outcome.send_id)
    html = message.get_body(("html",))
    assert html is not None
    assert header[1:-1] in html.get_content().replace("&amp;", "&")
    assert unsubscribe_uris(header) == [header[1:-1]]  # no mailto: unless configured


MAILTO = "unsubscribe+lists@mail.example.test"


def unsubscribe_uris(header: str) -> list[str]:
    """The URIs of a List-Unsubscribe value: ``<uri>``, comma-separated (RFC 2369)."""
    uris = re.findall(r"<([^<>]*)>", header)
    assert header == ", ".join(f"<{uri}>" for uri in uris)
    return uris


def check_unsubscribe_uris(message: EmailMessage, *, mailto: str | None) -> None:
    """The one-click URL, then (with ``mailto``) a mailto: URI with the same token."""
    uris = unsubscribe_uris(message["List-Unsubscribe"])
    one_click = urlparse(uris[0])
    assert f"{one_click.scheme}://{one_click.netloc}{one_click.path}" == (
        f"{PUBLIC}/v1/email/one-click"
    )
    [token] = parse_qs(one_click.query)["token"]
    claims = tokens.verify(token, SECRET.encode(), purpose="unsubscribe", now=datetime.now(UTC))
    assert claims.email == message["To"]
    if mailto is None:
        assert len(uris) == 1
        return
    assert len(uris) == 2
    by_mail = urlparse(uris[1])
    assert by_mail.scheme == "mailto"
    assert unquote(by_mail.path) == mailto
    assert parse_qs(by_mail.query) == {"subject": [f"unsubscribe {token}"]}


async def test_list_unsubscribe_adds_a_mailto_when_configured_on_both_paths(
    env: Env,
) -> None:
    settings = env.settings.model_copy(update={"unsubscribe_mailto": MAILTO})
    single = Mailer(env.app, settings, env.engine, env.mailer.provider, coalesce=False)
    ann = await new_contact(env.engine, "ann@example.com")
    assert (await single.send(news(ann, idempotency_key="k-mailto"))).decision == "sent"
    [message] = env.sink.messages
    check_unsubscribe_uris(message, mailto=MAILTO)
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

    batch = Mailer(env.app, settings, env.engine, env.mailer.provider)
    people = [await new_contact(env.engine, f"b{i}@example.com") for i in range(3)]
    outcomes = await batch.send_batch(
        [news(c, idempotency_key=f"k-mailto:{c}") for c in people], concurrency=2
    )
    assert [o.decision for o in outcomes if isinstance(o, SendOutcome)] == ["sent"] * 3
    for message in env.sink.messages[1:]:
        check_unsubscribe_uris(message, mailto=MAILTO)

    # Not configured: the one-click URL alone, on the batch path too.
    plain = await new_contact(env.engine, "plain@example.com")
    [outcome] = await env.mailer.send_batch([news(plain, idempotency_key="k-plain")], concurrency=1)
    assert isinstance(outcome, SendOutcome)
    assert outcome.decision == "sent"
    check_unsubscribe_uris(env.sink.messages[-1], mailto=None)

    # Transactional mail carries neither.
    assert (await single.send(receipt(ann))).decision == "sent"
    assert env.sink.messages[-1]["List-Unsubscribe"] is None


def test_the_mailto_address_is_percent_encoded_in_the_uri(env: Env) -> None:
    odd = "a%b/c?d#e&f=g@example.com"
    settings = env.settings.model_copy(update={"unsubscribe_mailto": odd})
    mailer = Mailer(env.app, settings, env.engine, env.mailer.provider)
    assert mailer._unsubscribe_mailto == (
        ", <mailto:a%25b%2Fc%3Fd%23e%26f%3Dg@example.com?subject=unsubscribe%20"
    )


async def test_transactional_mail_has_no_unsubscribe_header(env: Env) -> None:
    contact_id = await new_contact(env.engine, "tx@example.com")
    outcome = await env.mailer.send(receipt(contact_id))
    assert outcome.decision == "sent"
    [message] = env.sink.messages
    assert message["List-Unsubscribe"] is None
    assert message["List-Unsubscribe-Post"] is None


# --------------------------------------------------------------------------- standard footer

FOOTER_WORDS = "Manage your email preferences or unsubscribe"


def add_linkless_template(env: Env) -> None:
    """``promo``: a marketing template whose files (it and its layout) show no link."""
    directory = env.app.template_dir
    assert directory is not None
    (directory / "_plain.html").write_text(
        "<html><head><title>Promo</title></head>"
        "<body>{% block body %}{% endblock %}</body></html>\n"
    )
    (directory / "promo.html").write_text(
        "{#---\nsubject: Sale\ncategory: marketing\n---#}\n"
        '{% extends "_plain.html" %}{% block body %}<p>Half price, {{ contact.email }}</p>'
        "{% endblock %}\n"
    )
    assert env.app.templates is not None
    env.app.templates.refresh()


def preference_links(message: Any) -> tuple[list[str], str]:
    """The preference-centre links of a message's HTML part, and its text part."""
    html = message.get_body(("html",)).get_content()
    text_part = message.get_body(("plain",)).get_content()
    hrefs = [h.replace("&amp;", "&") for h in re.findall(r'href="([^"]+)"', html)]
    return [h for h in hrefs if "/v1/email/preferences" in h], text_part


@pytest.mark.parametrize("keyed", [True, False], ids=["coalesced", "lone"])
async def test_a_marketing_template_without_links_gets_the_preference_footer(
    env: Env, database_url: str, keyed: bool
) -> None:
    add_linkless_template(env)
    contact_id = await new_contact(env.engine, "promo@example.com")
    outcome = await env.mailer.send(
        SendRequest(
            template="promo",
            contact_id=contact_id,
            kind="campaign",
            idempotency_key="k-promo" if keyed else None,
        )
    )
    assert outcome.decision == "sent"
    [message] = env.sink.messages
    [link], text_part = preference_links(message)
    html = message.get_body(("html",)).get_content()
    assert html.index(FOOTER_WORDS) < html.index("</body>")
    assert f"{FOOTER_WORDS}: {link}" in text_part
    url = urlparse(link)
    assert f"{url.scheme}://{url.netloc}{url.path}" == f"{PUBLIC}/v1/email/preferences"
    api = create_api(env.app, api_settings(database_url, secret_key=SECRET), engine=env.engine)
    transport = httpx.ASGITransport(app=api, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        page = await client.get(f"{url.path}?{url.query}")
    await api.state.driver_pool.close()
    assert page.status_code == 200, page.text
    assert "promo@example.com" in page.text


async def test_a_template_showing_a_link_gets_no_footer_and_transactional_mail_none(
    env: Env,
) -> None:
    add_linkless_template(env)
    contact_id = await new_contact(env.engine, "nofooter@example.com")
    shown = await env.mailer.send(news(contact_id, idempotency_key="k-news"))
    transactional = await env.mailer.send(
        SendRequest(template="promo", contact_id=contact_id, idempotency_key="k-tx")
    )
    assert (shown.decision, transactional.decision) == ("sent", "sent")
    for message in env.sink.messages:
        links, text_part = preference_links(message)
        html = message.get_body(("html",)).get_content()
        assert links == []
        assert FOOTER_WORDS not in html
        assert FOOTER_WORDS not in text_part


# --------------------------------------------------------------------------- duplicates


async def test_duplicate_key_points_at_the_original(env: Env, fetch_all: FetchAll) -> None:
    contact_id = await new_contact(env.engine, "dup@example.com")
    first = await env.mailer.send(news(contact_id, idempotency_key="k-dup"))
    second = await env.mailer.send(news(contact_id, idempotency_key="k-dup"))
    assert first.decision == "sent"
    assert second.decision == "duplicate"
    assert second.duplicate_of == first.send_id
    stored = await row(fetch_all, second.send_id)
    assert stored["duplicate_of_id"] == first.send_id
    assert stored["status"] == "skipped"
    assert stored["idempotency_key"] is None
    assert len(env.sink.messages) == 1


async def test_ten_concurrent_sends_with_one_key_send_once(env: Env, fetch_all: FetchAll) -> None:
    contact_id = await new_contact(env.engine, "race@example.com")
    outcomes = await asyncio.gather(
        *(env.mailer.send(news(contact_id, idempotency_key="k-race")) for _ in range(10))
    )
    decisions = sorted(o.decision for o in outcomes)
    assert decisions == ["duplicate"] * 9 + ["sent"]
    [winner] = [o for o in outcomes if o.decision == "sent"]
    assert {o.duplicate_of for o in outcomes if o.decision == "duplicate"} == {winner.send_id}
    assert len(env.sink.messages) == 1
    rows = await fetch_all(
        "SELECT count(*) AS n FROM email_sends WHERE contact_id = :c", c=contact_id
    )
    assert rows[0]["n"] == 10


async def test_an_interrupted_attempt_is_taken_over_with_the_same_key(
    env: Env, fetch_all: FetchAll
) -> None:
    contact_id = await new_contact(env.engine, "crash@example.com")
    # What a process killed between queueing and recording the outcome leaves behind.
    await execute(
        env.engine,
        "INSERT INTO email_sends (contact_id, to_email, from_email, status, decision,"
        " idempotency_key) VALUES (:c, 'crash@example.com', 'x@example.com', 'queued',"
        " 'queued', 'k-crash')",
        c=contact_id,
    )
    outcome = await env.mailer.send(news(contact_id, idempotency_key="k-crash"))
    assert outcome.decision == "sent"
    orphan = await fetch_all(
        "SELECT * FROM email_sends WHERE contact_id = :c AND id <> :id",
        c=contact_id,
        id=outcome.send_id,
    )
    assert orphan[0]["decision"] == "provider_error"
    assert orphan[0]["decision_detail"]["interrupted"] is True
    [message] = env.sink.messages
    # Same key, same Message-ID: receivers and providers can drop the repeat.
    assert message["Message-ID"] == outcome.provider_message_id


# --------------------------------------------------------------------------- gates


async def test_deleted_contact_is_skipped(env: Env, fetch_all: FetchAll) -> None:
    contact_id = await new_contact(env.engine, "gone@example.com", deleted_at=datetime.now(UTC))
    outcome = await env.mailer.send(news(contact_id))
    assert outcome.decision == "skipped_deleted"
    stored = await row(fetch_all, outcome.send_id)
    assert (stored["status"], stored["to_email"]) == ("skipped", "gone@example.com")
    assert env.sink.messages == []


async def test_suppressed_address_wins_over_unsubscribe(env: Env, fetch_all: FetchAll) -> None:
    contact_id = await new_contact(env.engine, "Bounce@example.com")
    await execute(
        env.engine,
        "INSERT INTO email_suppressions (email, suppressed, reason, suppressed_at)"
        " VALUES ('bounce@EXAMPLE.com', true, 'hard_bounce', now())",
    )
    await execute(
        env.engine,
        "INSERT INTO email_preferences (contact_id, unsubscribed_all) VALUES (:c, true)",
        c=contact_id,
    )
    marketing = await env.mailer.send(news(contact_id))
    transactional = await env.mailer.send(receipt(contact_id))
    assert marketing.decision == "suppressed"
    assert transactional.decision == "suppressed"
    stored = await row(fetch_all, marketing.send_id)
    assert stored["decision_detail"] == {"gate": "suppressed", "reason": "hard_bounce"}
    assert env.sink.messages == []


async def test_unsubscribed_globally_yet_transactional_still_goes(env: Env) -> None:
    contact_id = await new_contact(env.engine, "quiet@example.com")
    await execute(
        env.engine,
        "INSERT INTO email_preferences (contact_id, unsubscribed_all) VALUES (:c, true)",
        c=contact_id,
    )
    marketing = await env.mailer.send(news(contact_id))
    transactional = await env.mailer.send(receipt(contact_id))
    assert marketing.decision == "unsubscribed"
    assert marketing.detail["scope"] == "all"
    assert transactional.decision == "sent"
    assert [m["Subject"] for m in env.sink.messages] == ["Your receipt"]


async def test_list_polarity(env: Env) -> None:
    contact_id = await new_contact(env.engine, "lists@example.com")
    # newsletter: default opt-in, explicit unsubscribe blocks it.
    await execute(
        env.engine,
        "INSERT INTO list_subscriptions (contact_id, list_id, subscribed)"
        " VALUES (:c, 'newsletter', false)",
        c=contact_id,
    )
    left = await env.mailer.send(news(contact_id))
    assert left.decision == "unsubscribed"
    assert left.detail["why"] == "unsubscribed"
    # beta: opt-in list, needs an explicit subscribe.
    never = await env.mailer.send(news(contact_id, list_id="beta"))
    assert never.decision == "unsubscribed"
    assert never.detail["why"] == "opt-in list, never subscribed"
    await execute(
        env.engine,
        "INSERT INTO list_subscriptions (contact_id, list_id, subscribed)"
        " VALUES (:c, 'beta', true)",
        c=contact_id,
    )
    joined = await env.mailer.send(news(contact_id, list_id="beta"))
    assert joined.decision == "sent"
    assert len(env.sink.messages) == 1


async def test_frequency_cap_exempts_transactional(env: Env, fetch_all: FetchAll) -> None:
    mailer = env.with_settings(frequency_cap_count=1)
    contact_id = await new_contact(env.engine, "cap@example.com")
    assert (await mailer.send(news(contact_id))).decision == "sent"
    capped = await mailer.send(news(contact_id))
    assert capped.decision == "capped"
    assert capped.detail["rule"] == "frequency_cap"
    assert (await row(fetch_all, capped.send_id))["status"] == "skipped"
    assert (await mailer.send(receipt(contact_id))).decision == "sent"
    assert len(env.sink.messages) == 2


async def test_journey_suppress_gap(env: Env) -> None:
    contact_id = await new_contact(env.engine, "gap@example.com")
    request = SendRequest(
        template="nudge",
        contact_id=contact_id,
        kind="journey",
        journey_id="onboarding",
        suppress_gap=timedelta(days=3),
    )
    assert (await env.mailer.send(request)).decision == "sent"
    again = await env.mailer.send(request)
    assert again.decision == "capped"
    assert again.detail["rule"] == "journey_suppress"
    other = SendRequest(template="nudge", contact_id=contact_id, kind="journey", journey_id="x")
    assert (await env.mailer.send(other)).decision == "sent"
    assert len(env.sink.messages) == 2


async def test_outside_the_send_window_is_deferred(env: Env, fetch_all: FetchAll) -> None:
    contact_id = await new_contact(env.engine, "later@example.com", timezone="Europe/Paris")
    window = SendWindow(start=time(9), end=time(17))
    friday_night = datetime(2026, 3, 6, 20, 0, tzinfo=UTC)  # 21:00 in Paris
    mailer = Mailer(
        env.app, env.settings, env.engine, env.mailer.provider, clock=lambda: friday_night
    )
    outcome = await mailer.send(news(contact_id, send_window=window, idempotency_key="k-later"))
    assert outcome.decision == "deferred"
    assert outcome.deferred_until == datetime(2026, 3, 7, 8, 0, tzinfo=UTC)  # 09:00 Paris
    stored = await row(fetch_all, outcome.send_id)
    assert stored["decision_detail"]["deferredUntil"] == "2026-03-07T08:00:00+00:00"
    assert stored["idempotency_key"] is None  # the later attempt may use the key
    assert env.sink.messages == []
    inside = Mailer(
        env.app,
        env.settings,
        env.engine,
        env.mailer.provider,
        clock=lambda: datetime(2026, 3, 7, 8, 30, tzinfo=UTC),
    )
    later = await inside.send(news(contact_id, send_window=window, idempotency_key="k-later"))
    assert later.decision == "sent"


async def test_test_mode_redirects_with_the_original_recipient(
    env: Env, fetch_all: FetchAll
) -> None:
    mailer = env.with_settings(test_mode=True, test_mode_recipient="qa@example.com")
    contact_id = await new_contact(env.engine, "real@example.com")
    outcome = await mailer.send(news(contact_id))
    assert outcome.decision == "redirected"
    stored = await row(fetch_all, outcome.send_id)
    assert (stored["decision"], stored["status"]) == ("redirected", "sent")
    assert (stored["to_email"], stored["redirected_to"]) == ("real@example.com", "qa@example.com")
    [message] = env.sink.messages
    assert message["To"] == "qa@example.com"
    assert message["X-Test-Envelope-To"] == "qa@example.com"
    assert message["X-Hogsend-Original-To"] == "real@example.com"


async def test_test_mode_without_recipient_goes_to_the_outbox(
    env: Env, fetch_all: FetchAll
) -> None:
    mailer = env.with_settings(test_mode=True)
    contact_id = await new_contact(env.engine, "box@example.com")
    outcome = await mailer.send(receipt(contact_id))
    assert outcome.decision == "redirected"
    assert env.sink.messages == []
    [stored] = await fetch_all(
        "SELECT * FROM outbox_messages WHERE email_send_id = :id", id=outcome.send_id
    )
    assert stored["to_email"] == "box@example.com"
    assert stored["headers"]["X-Hogsend-Original-To"] == "box@example.com"


# --------------------------------------------------------------------------- provider errors


async def test_transient_451_is_retried_then_sent(env: Env, fetch_all: FetchAll) -> None:
    env.sink.script.append("451 4.3.0 try again later")
    contact_id = await new_contact(env.engine, "retry@example.com")
    outcome = await env.mailer.send(news(contact_id))
    assert outcome.decision == "sent"
    assert env.sleeps == [1.0]
    stored = await row(fetch_all, outcome.send_id)
    assert stored["attempts"] == 2
    # A sent row's stored detail leaves out what its columns say; reads put it back.
    async with AsyncSession(env.engine) as session:
        record = await sends.get_send(session, outcome.send_id)
    assert record is not None
    assert record.detail is not None
    assert record.detail["providerCalls"] == 2
    assert len(env.sink.messages) == 1


async def test_transient_errors_give_up_after_max_attempts(env: Env, fetch_all: FetchAll) -> None:
    env.sink.script.extend(["451 4.3.0 busy"] * 3)
    contact_id = await new_contact(env.engine, "busy@example.com")
    outcome = await env.mailer.send(news(contact_id, idempotency_key="k-busy"))
    assert outcome.decision == "provider_error"
    assert outcome.detail["transient"] is True
    assert env.sleeps == [1.0, 2.0]
    stored = await row(fetch_all, outcome.send_id)
    assert (stored["status"], stored["attempts"]) == ("failed", 3)
    assert stored["idempotency_key"] is None  # released: a later retry may send


async def test_permanent_550_is_final_and_releases_the_key(env: Env, fetch_all: FetchAll) -> None:
    env.sink.script.append("550 5.1.1 no such mailbox")
    contact_id = await new_contact(env.engine, "nobody@example.com")
    outcome = await env.mailer.send(news(contact_id, idempotency_key="k-550"))
    assert outcome.decision == "provider_error"
    assert outcome.detail["status"] == 550
    assert env.sleeps == []
    stored = await row(fetch_all, outcome.send_id)
    assert "550" in stored["last_error"]
    assert stored["idempotency_key"] is None
    retry = await env.mailer.send(news(contact_id, idempotency_key="k-550"))
    assert retry.decision == "sent"


# --------------------------------------------------------------------------- admin API


async def test_admin_sends_and_explain(env: Env, database_url: str, mint_key: MintKey) -> None:
    contact_id = await new_contact(env.engine, "admin@example.com")
    await env.mailer.send(news(contact_id, idempotency_key="k-a"))
    await env.mailer.send(news(contact_id, idempotency_key="k-a"))
    await env.mailer.send(receipt(contact_id))
    api = create_api(env.app, api_settings(database_url, secret_key=SECRET), engine=env.engine)
    raw = await mint_key("admin:read")
    headers = {"Authorization": f"Bearer {raw}"}
    transport = httpx.ASGITransport(app=api, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        first = await client.get(
            f"/v1/admin/contacts/{contact_id}/sends", params={"limit": 2}, headers=headers
        )
        assert first.status_code == 200, first.text
        body = first.json()
        assert [s["templateKey"] for s in body["sends"]] == ["receipt", "news"]
        assert body["sends"][1]["decision"] == "duplicate"
        assert body["sends"][1]["duplicateOfId"] is not None
        second = await client.get(
            f"/v1/admin/contacts/{contact_id}/sends",
            params={"cursor": body["nextCursor"]},
            headers=headers,
        )
        assert [s["decision"] for s in second.json()["sends"]] == ["sent"]
        assert second.json()["nextCursor"] is None
        bad = await client.get(
            f"/v1/admin/contacts/{contact_id}/sends", params={"cursor": "nope"}, headers=headers
        )
        assert bad.status_code == 422

        await execute(
            env.engine,
            "INSERT INTO list_subscriptions (contact_id, list_id, subscribed)"
            " VALUES (:c, 'newsletter', false)",
            c=contact_id,
        )
        why = await client.get(
            f"/v1/admin/contacts/{contact_id}/explain",
            params={"template": "news"},
            headers=headers,
        )
        assert why.status_code == 200, why.text
        answer = why.json()
        assert answer["wouldSend"] is False
        assert answer["decision"] == "unsubscribed"
        assert answer["facts"]["listChoice"] is False
        assert [r["decision"] for r in answer["recent"]] == ["duplicate", "sent"]
        receipt_ok = await client.get(
            f"/v1/admin/contacts/{contact_id}/explain",
            params={"template": "receipt"},
            headers=headers,
        )
        assert receipt_ok.json()["wouldSend"] is True
        assert receipt_ok.json()["facts"]["kind"] == "transactional"
        for params in ({"template": "nope"}, {"journey": "nope"}):
            missing = await client.get(
                f"/v1/admin/contacts/{contact_id}/explain", params=params, headers=headers
            )
            assert missing.status_code == 404
            assert missing.headers["content-type"] == "application/problem+json"
        anything = await client.get(f"/v1/admin/contacts/{contact_id}/explain", headers=headers)
        assert anything.status_code == 200
        assert anything.json()["facts"]["kind"] == "campaign"
        assert anything.json()["wouldSend"] is True
        unknown = await client.get(f"/v1/admin/contacts/{uuid.uuid4()}/sends", headers=headers)
        assert unknown.status_code == 404
    await api.state.driver_pool.close()


async def test_explain_and_sends_of_deleted_erased_and_merged_contacts(
    env: Env, database_url: str, mint_key: MintKey
) -> None:
    """A contact deleted or erased still has its attempts listed and an attempt now is
    explained as `skipped_deleted` (as the mailer would decide it); one merged away is
    answered for its survivor, which is named. Only an id no contact had is a 404."""
    deleted = await new_contact(env.engine, "deleted@example.com", external_id="u-deleted")
    erased = await new_contact(env.engine, "erased@example.com", external_id="u-erased")
    loser = await new_contact(env.engine, "loser@example.com", external_id="u-loser")
    survivor = await new_contact(env.engine, "survivor@example.com", external_id="u-survivor")
    for contact_id in (deleted, erased, loser, survivor):
        assert (await env.mailer.send(news(contact_id))).decision == "sent"
    async with AsyncSession(env.engine) as session, session.begin():
        await contacts_repo.soft_delete_contacts(session, Identity(user_id="u-deleted"))
        await contacts_repo.soft_delete_contacts(session, Identity(user_id="u-erased"), erase=True)
        merged = await contacts_repo.merge_contacts(session, [survivor, loser])
    assert merged is not None
    kept = merged.contact_id
    gone = loser if kept == survivor else survivor
    api = create_api(env.app, api_settings(database_url, secret_key=SECRET), engine=env.engine)
    headers = {"Authorization": f"Bearer {await mint_key('admin:read')}"}
    transport = httpx.ASGITransport(app=api, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:

        async def get(contact_id: uuid.UUID, what: str) -> dict[str, Any]:
            response = await client.get(
                f"/v1/admin/contacts/{contact_id}/{what}",
                params={"template": "news"},
                headers=headers,
            )
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            return body

        for contact_id in (deleted, erased):
            why = await get(contact_id, "explain")
            assert (why["wouldSend"], why["decision"]) == (False, "skipped_deleted")
            assert why["facts"]["contactDeleted"] is True
            assert why["mergedInto"] is None
            assert [r["decision"] for r in why["recent"]] == ["sent"]
            listed = await get(contact_id, "sends")
            assert [s["decision"] for s in listed["sends"]] == ["sent"]
            assert listed["mergedInto"] is None
        # The erased contact's attempt is listed with its address blanked.
        assert (await get(erased, "sends"))["sends"][0]["toEmail"] == ""

        why = await get(gone, "explain")
        assert (why["wouldSend"], why["decision"], why["mergedInto"]) == (True, "sent", str(kept))
        listed = await get(gone, "sends")
        assert listed["mergedInto"] == str(kept)
        assert len(listed["sends"]) == 2  # both contacts' attempts, moved to the survivor
        live = await get(kept, "explain")
        assert (live["decision"], live["mergedInto"]) == ("sent", None)

        for what in ("sends", "explain"):
            unknown = await client.get(f"/v1/admin/contacts/{uuid.uuid4()}/{what}", headers=headers)
            assert unknown.status_code == 404
            assert unknown.headers["content-type"] == "application/problem+json"
    await api.state.driver_pool.close()


async def test_an_address_without_a_contact_and_a_contact_without_an_address(
    env: Env, fetch_all: FetchAll
) -> None:
    outcome = await env.mailer.send(
        SendRequest(template="news", to_email="Stranger@Example.com", kind="campaign")
    )
    assert outcome.decision == "sent"
    stored = await row(fetch_all, outcome.send_id)
    assert (stored["contact_id"], stored["to_email"]) == (None, "Stranger@example.com")
    [message] = env.sink.messages
    assert message["List-Unsubscribe"] is not None
    contact_id = await new_contact(env.engine, "placeholder@example.com")
    await execute(env.engine, "UPDATE contacts SET email = NULL WHERE id = :c", c=contact_id)
    with pytest.raises(NoRecipient):
        await env.mailer.send(news(contact_id))
    with pytest.raises(ValueError, match="contact_id or a to_email"):
        SendRequest(template="news")


# --------------------------------------------------------------------------- round trips


def count_round_trips(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The round trips to Postgres from now on, in order, until ``monkeypatch.undo()``:
    "statement" for one sent on its own, "pipeline" for a pipeline (its statements
    together)."""
    trips: list[str] = []
    execute, pipeline = psycopg.AsyncCursor.execute, psycopg.AsyncConnection.pipeline

    async def counted(cursor: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        if cursor.connection._pipeline is None:
            trips.append("statement")
        return await execute(cursor, query, *args, **kwargs)

    def piped(conn: Any) -> Any:
        if conn._pipeline is None:
            trips.append("pipeline")
        return pipeline(conn)

    monkeypatch.setattr(psycopg.AsyncCursor, "execute", counted)
    monkeypatch.setattr(psycopg.AsyncConnection, "pipeline", piped)
    return trips


def lone(of: Env) -> Mailer:
    """A mailer that sends every call on its own (no coalescing)."""
    return Mailer(
        of.app, of.settings, of.engine, of.mailer.provider, sleep=of.mailer._sleep, coalesce=False
    )


async def test_a_lone_send_makes_three_round_trips(
    env: Env, fetch_all: FetchAll, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Locks, contact and facts; the decision row and its commit; the outcome with its
    # event, its commit and the key's unlock: one pipeline each, nothing else.
    contact_id = await new_contact(env.engine, "trips@example.com")
    await lone(env).send(news(contact_id, idempotency_key="warm"))  # the pool connects
    trips = count_round_trips(monkeypatch)
    outcome = await lone(env).send(news(contact_id, idempotency_key="trips"))
    monkeypatch.undo()
    assert outcome.decision == "sent"
    assert trips == ["pipeline"] * 3
    events = await fetch_all(
        "SELECT properties FROM user_events WHERE event = 'email.sent' AND contact_id = :c",
        c=contact_id,
    )
    assert str(outcome.send_id) in {e["properties"]["sendId"] for e in events}


async def test_a_lone_send_whose_decision_fails_to_commit_sends_nothing(
    env: Env, fetch_all: FetchAll, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The provider gets the message ready while the decision row commits; it may accept
    # it only once that commit succeeded.
    contact_id = await new_contact(env.engine, "unwritten@example.com")
    write = sends.write_attempt

    async def failing(*args: Any, durable: bool, **kwargs: Any) -> None:
        if not durable:
            raise RuntimeError("the decision row was not written")
        await write(*args, durable=durable, **kwargs)

    monkeypatch.setattr(sends, "write_attempt", failing)
    with pytest.raises(RuntimeError, match="not written"):
        await lone(env).send(news(contact_id, idempotency_key="unwritten"))
    monkeypatch.undo()
    assert env.sink.messages == []
    assert await fetch_all("SELECT id FROM email_sends WHERE contact_id = :c", c=contact_id) == []
    again = await asyncio.wait_for(
        lone(env).send(news(contact_id, idempotency_key="unwritten")), timeout=30
    )
    assert again.decision == "sent"  # the key was released
    assert len(env.sink.messages) == 1
