"""Studio through the real ASGI app on a real Postgres: auth, CSRF, roles, pages, actions.

Every request goes through the API app with Studio mounted (as ``hogsend serve`` builds
it), with cookies kept by the client like a browser would. Changes made in Studio are
checked through the admin API and the database afterwards.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from hogsend.api import create_api
from hogsend.app import Hogsend, load_app
from hogsend.db.engine import make_async_engine, make_sessionmaker
from hogsend.db.repos import api_keys, demo, studio_users
from hogsend.runtime.dispatcher import DispatchedEvent, Dispatcher
from hogsend.settings import Settings
from hogsend.studio import mount_studio
from hogsend.studio.passwords import hash_password

REPO = Path(__file__).resolve().parents[2]
ADMIN = ("ada@example.com", "correct horse battery")
VIEWER = ("vic@example.com", "viewer password 123")
PAGES = (
    "/studio/",
    "/studio/?days=7",
    "/studio/?days=90",
    "/studio/contacts",
    "/studio/contacts?q=demo-0001",
    "/studio/contacts?prop=plan&value=pro",
    "/studio/events",
    "/studio/events?event=signed_up",
    "/studio/events/rows",
    "/studio/api-keys",
    "/studio/api-keys?all=1",
    "/studio/audit",
    "/studio/audit?resource=api-keys",
    "/studio/dlq",
    "/studio/dlq?status=all",
    "/studio/journeys",
    "/studio/buckets",
    "/studio/campaigns",
    "/studio/email",
)


def quickstart() -> Hogsend:
    return load_app("examples.quickstart.app:app", search=(REPO,))


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_async_engine(database_url, pool_size=10)
    yield engine
    await engine.dispose()


@pytest.fixture
async def seeded(engine: AsyncEngine) -> None:
    async with make_sessionmaker(engine)() as session, session.begin():
        await demo.seed(session)


ApiFactory = Callable[..., FastAPI]


@pytest.fixture
def api_factory(engine: AsyncEngine, database_url: str) -> ApiFactory:
    def build(**overrides: Any) -> FastAPI:
        values: dict[str, Any] = {
            "env": "test",
            "database_url": database_url,
            "rate_limit_admin": 1_000_000,
            "rate_limit_data_plane": 1_000_000,
            **overrides,
        }
        api = create_api(quickstart(), Settings(**values), engine=engine)
        mount_studio(api)
        return api

    return build


@pytest.fixture
async def api(api_factory: ApiFactory) -> AsyncIterator[FastAPI]:
    built = api_factory()
    yield built
    await built.state.driver_pool.close()


def client_for(api: FastAPI, base_url: str = "http://testserver") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=api, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url=base_url)


@pytest.fixture
async def browser(api: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(api) as client:
        yield client


def token_in(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found is not None, "the page has no form token"
    return found.group(1)


async def set_up_admin(client: httpx.AsyncClient) -> None:
    form = await client.get("/studio/setup")
    assert form.status_code == 200
    done = await client.post(
        "/studio/setup",
        data={
            "csrf_token": token_in(form.text),
            "email": ADMIN[0],
            "password": ADMIN[1],
            "confirm": ADMIN[1],
        },
    )
    assert done.status_code == 303, done.text
    assert done.headers["location"] == "/studio/"


async def sign_in(client: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    form = await client.get("/studio/login")
    assert form.status_code == 200, form.text
    return await client.post(
        "/studio/login",
        data={"csrf_token": token_in(form.text), "email": email, "password": password},
    )


async def add_user(engine: AsyncEngine, email: str, password: str, role: str) -> None:
    async with make_sessionmaker(engine)() as session:
        await studio_users.create_user(
            session, email=email, password_hash=hash_password(password), role=role
        )
        await session.commit()


async def admin_key(engine: AsyncEngine) -> dict[str, str]:
    async with make_sessionmaker(engine)() as session:
        _, raw = await api_keys.create_key(session, name="checker", scopes=["full-admin"])
        await session.commit()
    return {"Authorization": f"Bearer {raw}"}


async def scalar(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar()


async def demo_contact(engine: AsyncEngine, external_id: str = "demo-0002") -> uuid.UUID:
    found = await scalar(engine, "SELECT id FROM contacts WHERE external_id = :e", e=external_id)
    assert found is not None
    return uuid.UUID(str(found))


# -- setup, sign-in, pages, sign-out ---------------------------------------------------


async def test_setup_sign_in_every_page_and_sign_out(
    browser: httpx.AsyncClient, engine: AsyncEngine, seeded: None
) -> None:
    assert (await browser.get("/studio")).headers["location"] == "/studio/"
    first = await browser.get("/studio/")
    assert first.status_code == 303
    assert first.headers["location"] == "/studio/setup"
    assert (await browser.get("/studio/login")).headers["location"] == "/studio/setup"

    form = await browser.get("/studio/setup")
    token = token_in(form.text)
    mismatch = await browser.post(
        "/studio/setup",
        data={"csrf_token": token, "email": ADMIN[0], "password": ADMIN[1], "confirm": "other"},
    )
    assert mismatch.status_code == 400
    assert "does not match" in mismatch.text
    short = await browser.post(
        "/studio/setup",
        data={"csrf_token": token, "email": "not-an-email", "password": "short", "confirm": "x"},
    )
    assert short.status_code == 400
    assert "must contain exactly one @" in short.text
    assert "at least 10" in short.text
    assert await scalar(engine, "SELECT count(*) FROM studio_users") == 0

    await set_up_admin(browser)
    role = await scalar(engine, "SELECT role FROM studio_users WHERE email = :e", e=ADMIN[0])
    assert role == "admin"
    assert (await browser.get("/studio/setup")).status_code == 404
    again = await browser.post("/studio/setup", data={"email": "x@example.com"})
    assert again.status_code == 404
    assert await scalar(engine, "SELECT count(*) FROM studio_users") == 1

    for path in PAGES:
        page = await browser.get(path)
        assert page.status_code == 200, f"{path}: {page.status_code} {page.text[:300]}"
        assert page.headers["content-type"].startswith("text/html")
        assert page.headers["cache-control"] == "no-store"
        assert "script-src 'self'" in page.headers["content-security-policy"]
        if path != "/studio/events/rows":
            assert page.text.count("<nav") == 1, path
            assert 'aria-current="page"' in page.text, path
    overview = (await browser.get("/studio/")).text
    assert "Contacts</dt><dd>200</dd>" in overview
    assert "Events per day" in overview
    assert "<svg" in overview
    assert "day (UTC)" in overview

    contact_id = await demo_contact(engine)
    contact = await browser.get(f"/studio/contacts/{contact_id}")
    assert contact.status_code == 200
    for part in ("Identities", "Properties", "Timeline", "Send attempts", "Explain", "Lists"):
        assert part in contact.text
    explained = await browser.get(
        f"/studio/contacts/{contact_id}", params={"explain": "1", "template": "welcome"}
    )
    assert "an attempt now would be" in explained.text
    fragment = await browser.get(
        f"/studio/contacts/{contact_id}/explain", params={"template": "nope"}
    )
    assert fragment.status_code == 200
    assert "There is no template" in fragment.text
    assert "<nav" not in fragment.text
    assert (await browser.get(f"/studio/contacts/{uuid.uuid4()}")).status_code == 404
    assert (await browser.get("/studio/contacts/not-a-uuid")).status_code == 404
    assert (await browser.get("/studio/no-such-page")).status_code == 404
    static = await browser.get("/studio/static/htmx.min.js")
    assert static.status_code == 200
    assert "htmx" in static.text

    overview_page = await browser.get("/studio/")
    signed_out = await browser.post(
        "/studio/logout", data={"csrf_token": token_in(overview_page.text)}
    )
    assert signed_out.status_code == 303
    assert signed_out.headers["location"] == "/studio/login?notice=signed-out"
    assert await scalar(engine, "SELECT count(*) FROM studio_sessions") == 0
    after = await browser.get("/studio/contacts?q=x")
    assert after.status_code == 303
    assert after.headers["location"] == "/studio/login?next=%2Fstudio%2Fcontacts%3Fq%3Dx"


async def test_sign_in_goes_back_where_it_was_asked_and_never_off_site(
    browser: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await add_user(engine, *ADMIN, "admin")
    form = await browser.get("/studio/login", params={"next": "/studio/audit"})
    token = token_in(form.text)
    assert 'value="/studio/audit"' in form.text
    wrong = await browser.post(
        "/studio/login",
        data={"csrf_token": token, "email": ADMIN[0], "password": "nope", "next": "/x"},
    )
    assert wrong.status_code == 400
    assert "do not match" in wrong.text
    ok = await browser.post(
        "/studio/login",
        data={
            "csrf_token": token,
            "email": ADMIN[0].upper(),
            "password": ADMIN[1],
            "next": "/studio/audit",
        },
    )
    assert ok.status_code == 303
    assert ok.headers["location"] == "/studio/audit"
    last_login = await scalar(
        engine, "SELECT last_login_at FROM studio_users WHERE email = :e", e=ADMIN[0]
    )
    assert last_login is not None
    for evil in ("https://evil.example/", "//evil.example/studio", "/studio/../x\\y", "/v1/x"):
        form = await browser.get("/studio/login", params={"next": evil})
        assert form.status_code == 303  # signed in already: straight on, but only into Studio
        assert form.headers["location"] == "/studio/"
    async with client_for(browser._transport.app) as other:  # type: ignore[attr-defined]
        token = token_in((await other.get("/studio/login")).text)
        response = await other.post(
            "/studio/login",
            data={
                "csrf_token": token,
                "email": ADMIN[0],
                "password": ADMIN[1],
                "next": "https://evil.example/",
            },
        )
    assert response.status_code == 303
    assert response.headers["location"] == "/studio/"


# -- cookies and sessions ---------------------------------------------------------------


def cookie_attributes(response: httpx.Response, name: str) -> dict[str, str]:
    for header in response.headers.get_list("set-cookie"):
        if header.startswith(f"{name}="):
            parsed = SimpleCookie()
            parsed.load(header)
            morsel = parsed[name]
            attributes = {k: str(v) for k, v in morsel.items() if v}
            attributes["value"] = morsel.value
            attributes["raw"] = header
            return attributes
    raise AssertionError(f"no Set-Cookie for {name}")


async def test_session_cookie_flags(api_factory: ApiFactory, engine: AsyncEngine) -> None:
    await add_user(engine, *ADMIN, "admin")
    plain = api_factory()
    async with client_for(plain) as client:
        response = await sign_in(client, *ADMIN)
    cookie = cookie_attributes(response, "hogsend_studio")
    assert cookie["httponly"] == "True"
    assert cookie["samesite"] == "lax"
    assert cookie["path"] == "/studio"
    assert cookie["max-age"] == "43200"
    assert "secure" not in cookie
    assert len(cookie["value"]) >= 43
    stored = await scalar(engine, "SELECT token_hash FROM studio_sessions")
    assert stored == studio_users.hash_session_token(cookie["value"]) != cookie["value"]

    async with client_for(plain, "https://testserver") as client:
        response = await sign_in(client, *ADMIN)
    assert cookie_attributes(response, "hogsend_studio")["secure"] == "True"
    assert cookie_attributes(response, "hogsend_studio")["samesite"] == "lax"

    # "always" even over http (a proxy in front terminating TLS): the browser then only
    # sends the cookies back over https, so the sign-in form itself needs https too.
    always = api_factory(studio_cookie_secure="always", studio_session_seconds=600)
    async with client_for(always) as client:
        form = await client.get("/studio/login")
        assert "secure" in cookie_attributes(form, "hogsend_studio_form")
    async with client_for(always, "https://testserver") as client:
        response = await sign_in(client, *ADMIN)
    cookie = cookie_attributes(response, "hogsend_studio")
    assert cookie["secure"] == "True"
    assert cookie["max-age"] == "600"
    never = api_factory(studio_cookie_secure="never")
    async with client_for(never, "https://testserver") as client:
        response = await sign_in(client, *ADMIN)
    assert "secure" not in cookie_attributes(response, "hogsend_studio")
    for built in (plain, always, never):
        await built.state.driver_pool.close()


async def test_an_expired_or_unknown_session_signs_out(
    browser: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await add_user(engine, *ADMIN, "admin")
    assert (await sign_in(browser, *ADMIN)).status_code == 303
    assert (await browser.get("/studio/")).status_code == 200
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE studio_sessions SET expires_at = now() - interval '1s'"))
    expired = await browser.get("/studio/")
    assert expired.status_code == 303
    assert expired.headers["location"].startswith("/studio/login")
    # the live tail's htmx request is told to load the sign-in page as a whole page
    tail = await browser.get("/studio/events/rows", headers={"HX-Request": "true"})
    assert tail.status_code == 204
    assert tail.headers["hx-redirect"].startswith("/studio/login")
    browser.cookies.set("hogsend_studio", "made-up-token", path="/studio")
    assert (await browser.get("/studio/")).status_code == 303


# -- CSRF -------------------------------------------------------------------------------


async def test_posts_without_the_csrf_token_are_refused(
    browser: httpx.AsyncClient, engine: AsyncEngine, seeded: None
) -> None:
    await add_user(engine, *ADMIN, "admin")
    # the sign-in form itself needs its token
    bare = await browser.post("/studio/login", data={"email": ADMIN[0], "password": ADMIN[1]})
    assert bare.status_code == 403
    assert "CSRF" in bare.text
    assert "hogsend_studio=" not in bare.headers.get("set-cookie", "")
    assert (await sign_in(browser, *ADMIN)).status_code == 303
    keys_before = await scalar(engine, "SELECT count(*) FROM api_keys")
    contact_id = await demo_contact(engine)
    forged = {
        "/studio/api-keys": {"name": "forged", "scopes": "full-admin"},
        f"/studio/contacts/{contact_id}/delete": {},
        f"/studio/contacts/{contact_id}/unsubscribe": {},
        f"/studio/dlq/{uuid.uuid4()}/retry": {},
        "/studio/logout": {},
    }
    for path, data in forged.items():
        for token in (None, "wrong-token"):
            body = dict(data) if token is None else {**data, "csrf_token": token}
            response = await browser.post(path, data=body)
            assert response.status_code == 403, f"{path} {token}: {response.status_code}"
            assert "CSRF" in response.text
    assert await scalar(engine, "SELECT count(*) FROM api_keys") == keys_before
    assert await scalar(engine, "SELECT count(*) FROM contacts WHERE deleted_at IS NOT NULL") == 0
    assert await scalar(engine, "SELECT count(*) FROM audit_logs") == 0
    assert (await browser.get("/studio/")).status_code == 200  # still signed in
    # the same POST with the session's token goes through
    page = await browser.get("/studio/api-keys")
    created = await browser.post(
        "/studio/api-keys",
        data={"csrf_token": token_in(page.text), "name": "real", "scopes": "read"},
    )
    assert created.status_code == 201
    # a token of another session is no good either
    async with client_for(browser._transport.app) as other:  # type: ignore[attr-defined]
        await sign_in(other, *ADMIN)
        stolen = token_in((await other.get("/studio/api-keys")).text)
    theirs = await browser.post(
        "/studio/api-keys", data={"csrf_token": stolen, "name": "x", "scopes": "read"}
    )
    assert theirs.status_code == 403


# -- roles ------------------------------------------------------------------------------


async def test_a_viewer_reads_everything_and_changes_nothing(
    browser: httpx.AsyncClient, engine: AsyncEngine, seeded: None
) -> None:
    await add_user(engine, *VIEWER, "viewer")
    assert (await sign_in(browser, *VIEWER)).status_code == 303
    for path in PAGES:
        assert (await browser.get(path)).status_code == 200, path
    keys = await browser.get("/studio/api-keys")
    token = token_in(keys.text)
    assert "Create a key" not in keys.text
    contact_id = await demo_contact(engine)
    contact = await browser.get(f"/studio/contacts/{contact_id}")
    assert "Erase…" not in contact.text
    async with make_sessionmaker(engine)() as session:
        info, _ = await api_keys.create_key(session, name="victim", scopes=["read"])
        await session.commit()
    attempts = {
        "/studio/api-keys": {"name": "sneaky", "scopes": "full-admin"},
        f"/studio/api-keys/{info.id}/revoke": {},
        f"/studio/contacts/{contact_id}/erase": {},
        f"/studio/contacts/{contact_id}/unsubscribe": {},
        f"/studio/dlq/{uuid.uuid4()}/discard": {},
    }
    for path, data in attempts.items():
        refused = await browser.post(path, data={**data, "csrf_token": token})
        assert refused.status_code == 403, path
        assert "viewer" in refused.text
    for path in (f"/studio/contacts/{contact_id}/erase", f"/studio/api-keys/{info.id}/revoke"):
        assert (await browser.get(path)).status_code == 403
    assert await scalar(engine, "SELECT count(*) FROM api_keys WHERE revoked_at IS NULL") == 1
    assert await scalar(engine, "SELECT count(*) FROM contacts WHERE deleted_at IS NULL") == 200
    assert await scalar(engine, "SELECT count(*) FROM audit_logs") == 0
    # a viewer may still sign out (that changes only their own session)
    assert (await browser.post("/studio/logout", data={"csrf_token": token})).status_code == 303


# -- sign-in rate limit ---------------------------------------------------------------


@pytest.mark.parametrize("backend", ["postgres", "memory"])
async def test_sign_in_attempts_are_limited_per_address_and_email(
    api_factory: ApiFactory, engine: AsyncEngine, backend: str
) -> None:
    await add_user(engine, *ADMIN, "admin")
    await add_user(engine, *VIEWER, "viewer")
    # Windows are fixed: six attempts straddling a boundary would meet two budgets, so
    # use hour-long windows and start clear of the next boundary.
    window = 3600
    before_boundary = window - time.time() % window
    if before_boundary < 30:
        await asyncio.sleep(before_boundary + 0.5)
    api = api_factory(
        studio_login_attempts=5, rate_limit_backend=backend, rate_limit_window_seconds=window
    )
    async with client_for(api) as client:
        token = token_in((await client.get("/studio/login")).text)

        async def attempt(email: str, password: str) -> httpx.Response:
            return await client.post(
                "/studio/login", data={"csrf_token": token, "email": email, "password": password}
            )

        for _ in range(5):
            assert (await attempt(ADMIN[0], "wrong password")).status_code == 400
        limited = await attempt(ADMIN[0], ADMIN[1])  # even the right password
        assert limited.status_code == 429, limited.text
        assert int(limited.headers["retry-after"]) >= 1
        assert "Too many sign-in attempts" in limited.text
        assert "hogsend_studio=" not in limited.headers.get("set-cookie", "")
        assert (await attempt(ADMIN[0].upper(), ADMIN[1])).status_code == 429
        # another account from the same address is not locked out by it
        assert (await attempt(VIEWER[0], VIEWER[1])).status_code == 303
    await api.state.driver_pool.close()


# -- actions, checked through the API -----------------------------------------------------


async def signed_in_admin(browser: httpx.AsyncClient, engine: AsyncEngine) -> str:
    await add_user(engine, *ADMIN, "admin")
    assert (await sign_in(browser, *ADMIN)).status_code == 303
    return token_in((await browser.get("/studio/")).text)


async def test_api_keys_created_in_studio_work_once_shown_and_revoke(
    browser: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    token = await signed_in_admin(browser, engine)
    invalid = await browser.post(
        "/studio/api-keys", data={"csrf_token": token, "name": " ", "expires": "2001-01-01"}
    )
    assert invalid.status_code == 400
    assert "name: is required" in invalid.text
    assert "scopes: choose at least one" in invalid.text
    assert "expires: must be in the future" in invalid.text
    created = await browser.post(
        "/studio/api-keys",
        data={"csrf_token": token, "name": "ci", "scopes": ["read", "ingest"]},
    )
    assert created.status_code == 201
    raw = re.search(r'value="(hsk_[^"]+)"', created.text)
    assert raw is not None
    key = {"Authorization": f"Bearer {raw.group(1)}"}
    whoami = await browser.get("/v1/whoami", headers=key)
    assert whoami.status_code == 200, whoami.text
    assert raw.group(1) not in (await browser.get("/studio/api-keys")).text

    admin = await admin_key(engine)
    listed = (await browser.get("/v1/admin/api-keys", headers=admin)).json()["keys"]
    made = next(k for k in listed if k["name"] == "ci")
    assert sorted(made["scopes"]) == ["ingest", "read"]
    assert made["createdBy"] == f"studio:{ADMIN[0]}"
    confirm = await browser.get(f"/studio/api-keys/{made['id']}/revoke")
    assert confirm.status_code == 200
    assert "Revoke key" in confirm.text
    revoked = await browser.post(
        f"/studio/api-keys/{made['id']}/revoke", data={"csrf_token": token_in(confirm.text)}
    )
    assert revoked.status_code == 303
    assert (await browser.get("/v1/whoami", headers=key)).status_code == 401
    again = await browser.post(f"/studio/api-keys/{made['id']}/revoke", data={"csrf_token": token})
    assert again.status_code == 404

    audit = (await browser.get("/v1/admin/audit-logs", headers=admin)).json()["logs"]
    user_id = str(await scalar(engine, "SELECT id FROM studio_users"))
    assert [(e["action"], e["resourceId"], e["actor"], e["actorUserId"]) for e in audit] == [
        ("api-keys.revoke", made["id"], f"studio:{ADMIN[0]}", user_id),
        ("api-keys.create", made["id"], f"studio:{ADMIN[0]}", user_id),
    ]
    assert all(e["ipAddress"] == "127.0.0.1" and e["requestId"] for e in audit)
    assert "api-keys.revoke" in (await browser.get("/studio/audit")).text


async def test_contact_actions_unsubscribe_resubscribe_delete_erase(
    browser: httpx.AsyncClient, engine: AsyncEngine, seeded: None
) -> None:
    token = await signed_in_admin(browser, engine)
    admin = await admin_key(engine)
    contact_id = await demo_contact(engine, "demo-0003")
    async with engine.begin() as conn:  # start from a known state whatever the demo chose
        await conn.execute(
            text("DELETE FROM email_preferences WHERE contact_id = :c"), {"c": contact_id}
        )

    async def api_view() -> httpx.Response:
        return await browser.get(f"/v1/admin/contacts/{contact_id}", headers=admin)

    confirm = await browser.get(f"/studio/contacts/{contact_id}/unsubscribe")
    assert confirm.status_code == 200
    assert "Unsubscribe from all email" in confirm.text
    assert (await api_view()).json()["unsubscribedAll"] is False  # GET changed nothing
    done = await browser.post(
        f"/studio/contacts/{contact_id}/unsubscribe", data={"csrf_token": token}
    )
    assert done.status_code == 303
    assert done.headers["location"] == f"/studio/contacts/{contact_id}?notice=unsubscribed"
    assert (await api_view()).json()["unsubscribedAll"] is True
    page = await browser.get(done.headers["location"])
    assert "now unsubscribed" in page.text
    assert "Resubscribe…" in page.text
    explained = await browser.get(
        f"/studio/contacts/{contact_id}/explain", params={"template": "newsletter"}
    )
    assert "unsubscribed" in explained.text
    assert "<strong>No</strong>" in explained.text
    same = await browser.post(
        f"/studio/contacts/{contact_id}/unsubscribe", data={"csrf_token": token}
    )
    assert same.headers["location"].endswith("notice=unchanged")
    back = await browser.post(
        f"/studio/contacts/{contact_id}/resubscribe", data={"csrf_token": token}
    )
    assert back.status_code == 303
    assert (await api_view()).json()["unsubscribedAll"] is False

    deleted = await browser.post(
        f"/studio/contacts/{contact_id}/delete", data={"csrf_token": token}
    )
    assert deleted.status_code == 303
    assert deleted.headers["location"].endswith("notice=deleted")
    assert (await api_view()).status_code == 404
    assert (await browser.get(f"/studio/contacts/{contact_id}")).status_code == 404

    victim = await demo_contact(engine, "demo-0004")
    events_before = await scalar(
        engine, "SELECT count(*) FROM user_events WHERE contact_id = :c", c=victim
    )
    assert events_before > 0
    assert (await browser.get(f"/studio/contacts/{victim}/erase")).status_code == 200
    erased = await browser.post(f"/studio/contacts/{victim}/erase", data={"csrf_token": token})
    assert erased.status_code == 303
    assert (
        await scalar(engine, "SELECT count(*) FROM user_events WHERE contact_id = :c", c=victim)
        == 0
    )
    assert await scalar(engine, "SELECT email FROM contacts WHERE id = :c", c=victim) is None
    assert (await browser.get(f"/studio/contacts/{victim}/nuke")).status_code == 404

    audit = (await browser.get("/v1/admin/audit-logs", headers=admin)).json()["logs"]
    assert [e["action"] for e in audit] == [
        "contacts.erase",
        "contacts.delete",
        "contacts.resubscribe",
        "contacts.unsubscribe",
    ]
    erase_entry = audit[0]
    assert erase_entry["resourceId"] == str(victim)
    assert "@" not in str(erase_entry["detail"])  # no personal data kept about the erased


async def test_a_contact_goes_into_a_manual_bucket_and_out_again(
    browser: httpx.AsyncClient, engine: AsyncEngine, seeded: None
) -> None:
    token = await signed_in_admin(browser, engine)
    admin = await admin_key(engine)
    contact_id = await demo_contact(engine, "demo-0005")
    path = f"/studio/contacts/{contact_id}/buckets/vip-customers"

    async def members() -> list[str]:
        listed = await browser.get("/v1/admin/buckets/vip-customers/members", headers=admin)
        assert listed.status_code == 200, listed.text
        return [m["contactId"] for m in listed.json()["members"]]

    page = await browser.get(f"/studio/contacts/{contact_id}")
    assert "Manual buckets" in page.text
    assert 'aria-label="Add to VIP customers"' in page.text
    before = await members()  # the demo seed puts some contacts there already
    assert str(contact_id) not in before

    added = await browser.post(path, data={"csrf_token": token, "op": "add"})
    assert added.status_code == 303
    assert added.headers["location"].endswith("notice=bucket-added")
    assert sorted(await members()) == sorted([*before, str(contact_id)])
    page = await browser.get(f"/studio/contacts/{contact_id}")
    assert 'aria-label="Remove from VIP customers"' in page.text
    # adding again changes nothing and records nothing
    again = await browser.post(path, data={"csrf_token": token, "op": "add"})
    assert again.headers["location"].endswith("notice=unchanged")

    removed = await browser.post(path, data={"csrf_token": token, "op": "remove"})
    assert removed.headers["location"].endswith("notice=bucket-removed")
    assert sorted(await members()) == sorted(before)
    transitions = await scalar(
        engine,
        "SELECT count(*) FROM user_events WHERE contact_id = :c AND event IN"
        " ('bucket:entered:vip-customers', 'bucket:left:vip-customers')",
        c=contact_id,
    )
    assert transitions == 2

    # bad input and other buckets are refused with nothing written
    assert (await browser.post(path, data={"csrf_token": token, "op": "nuke"})).status_code == 400
    computed = f"/studio/contacts/{contact_id}/buckets/trial-users"
    assert (
        await browser.post(computed, data={"csrf_token": token, "op": "add"})
    ).status_code == 404
    assert (await browser.post(path, data={"op": "add"})).status_code == 403
    assert sorted(await members()) == sorted(before)
    audit = (await browser.get("/v1/admin/audit-logs", headers=admin)).json()["logs"]
    assert [e["action"] for e in audit] == ["buckets.members.remove", "buckets.members.add"]


async def test_dlq_retry_in_studio_really_requeues_the_event(
    browser: httpx.AsyncClient, engine: AsyncEngine, database_url: str
) -> None:
    token = await signed_in_admin(browser, engine)
    healed = False

    class Picky:
        name = "picky"

        async def consume(self, event: DispatchedEvent, session: Any) -> None:
            if not healed:
                raise RuntimeError("picky is not ready yet")

    contact = uuid.uuid4()
    event_id = uuid.uuid4()
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO user_events (id, contact_id, user_id, event)"
                " VALUES (:id, :c, 'u-1', 'order_placed')"
            ),
            {"id": event_id, "c": contact},
        )
        await conn.execute(
            text(
                "INSERT INTO event_outbox (event_id, contact_id, contact_key, event)"
                " VALUES (:id, :c, 'u-1', 'order_placed')"
            ),
            {"id": event_id, "c": contact},
        )
    settings = Settings(
        env="test",
        database_url=database_url,
        dispatcher_max_attempts=1,
        dispatcher_listen=False,
        dispatcher_poll_seconds=0.01,
    )
    dispatcher = Dispatcher(engine, settings, [Picky()], worker_id="studio-test")
    await dispatcher.drain()
    entry_id = await scalar(engine, "SELECT id FROM dead_letter_queue WHERE status = 'pending'")
    assert entry_id is not None

    listing = await browser.get("/studio/dlq")
    assert "order_placed" in listing.text
    assert str(entry_id) in listing.text
    page = await browser.get(f"/studio/dlq/{entry_id}")
    assert page.status_code == 200
    assert "picky is not ready yet" in page.text
    assert ">Retry</button>" in page.text

    healed = True
    retried = await browser.post(f"/studio/dlq/{entry_id}/retry", data={"csrf_token": token})
    assert retried.status_code == 303
    admin = await admin_key(engine)
    entry = (await browser.get(f"/v1/admin/dlq/{entry_id}", headers=admin)).json()
    assert entry["status"] == "retried"
    assert await dispatcher.drain() == 1
    processed = await scalar(
        engine, "SELECT processed_at FROM event_outbox WHERE event_id = :e", e=event_id
    )
    assert processed is not None
    assert (
        await browser.post(f"/studio/dlq/{entry_id}/retry", data={"csrf_token": token})
    ).status_code == 409
    assert (
        await browser.post(f"/studio/dlq/{entry_id}/discard", data={"csrf_token": token})
    ).status_code == 409
    assert (
        await browser.post(f"/studio/dlq/{entry_id}/shred", data={"csrf_token": token})
    ).status_code == 404
    audit = (await browser.get("/v1/admin/audit-logs", headers=admin)).json()["logs"]
    assert [(e["action"], e["resourceId"]) for e in audit] == [("dlq.retry", str(entry_id))]
    assert audit[0]["detail"]["sourceId"] == str(event_id)


# -- the API's contract is untouched ------------------------------------------------------


async def test_studio_routes_stay_out_of_the_openapi_document(
    api: FastAPI, browser: httpx.AsyncClient
) -> None:
    document = (await browser.get("/openapi.json")).json()
    assert not [p for p in document["paths"] if p.startswith("/studio")]
    assert "/v1/admin/dlq/{id}/retry" in document["paths"]
    # Studio answers errors with pages, the API keeps problem+json
    assert (await browser.get("/studio/nope")).headers["content-type"].startswith("text/html")
    missing = await browser.get("/v1/nope")
    assert missing.headers["content-type"] == "application/problem+json"


async def test_pages_run_a_fixed_number_of_queries(
    browser: httpx.AsyncClient, engine: AsyncEngine, seeded: None
) -> None:
    """No N+1: each page's query count is a small constant, whatever it lists (50 rows)."""
    from sqlalchemy import event

    await signed_in_admin(browser, engine)
    contact_id = await demo_contact(engine)
    counted = [0]

    def count(*_: Any) -> None:
        counted[0] += 1

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        limits = {
            "/studio/": 9,
            "/studio/contacts": 2,
            "/studio/contacts?prop=plan&value=free": 2,
            f"/studio/contacts/{contact_id}": 9,
            f"/studio/contacts/{contact_id}?explain=1&template=welcome": 14,
            "/studio/events": 2,
            "/studio/events/rows": 2,
            "/studio/api-keys": 3,
            "/studio/audit": 3,
            "/studio/dlq": 3,
            "/studio/journeys": 4,
            "/studio/journeys/welcome": 6,
            "/studio/buckets": 7,
            "/studio/buckets/trial-users": 7,
        }
        for path, limit in limits.items():
            counted[0] = 0
            page = await browser.get(path)
            assert page.status_code == 200, path
            assert counted[0] <= limit, f"{path} ran {counted[0]} queries"
        listing = (await browser.get("/studio/events")).text
        assert listing.count("<tr>") >= 50  # the constant held for a full page of rows
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", count)
