"""The scope matrix: every route but an explicit allow-list refuses missing and weak keys.

The routes are walked from the app itself, so a route added later without a scope
declaration fails here (no key must give 401) without anyone updating this file.
"""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from hogsend.api import create_api
from hogsend.api.audit import route_audit_action
from hogsend.api.auth import ANY_KEY, SCOPES, has_scope, route_scope, scopes_satisfying
from hogsend.api.routing import iter_api_routes
from hogsend.app import Hogsend
from hogsend.db.engine import make_async_engine, make_sessionmaker
from hogsend.db.repos import api_keys
from hogsend.settings import Settings

OPEN_ROUTES = {
    ("GET", "/v1/health"),
    ("GET", "/v1/ready"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    # Tracking pixel and click redirect: opened by mail clients, which hold no key; the
    # signed token in the path is the credential (see docs/email.md, Tracking).
    ("GET", "/t/o/{token}"),
    ("HEAD", "/t/o/{token}"),
    ("GET", "/t/c/{token}"),
    ("HEAD", "/t/c/{token}"),
    # Links in emails: the signed token in the URL (or form) is the credential, and
    # RFC 8058 forbids requiring anything else of a one-click POST.
    ("GET", "/v1/email/one-click"),
    ("POST", "/v1/email/one-click"),
    ("GET", "/v1/email/preferences"),
    ("POST", "/v1/email/preferences"),
    # Provider webhooks carry no API key: a signature over the body authenticates them
    # (test_signed_webhooks_refuse_unsigned_requests below).
    ("POST", "/v1/webhooks/resend"),
    ("POST", "/v1/webhooks/generic"),
}
"""Routes anyone may call. Adding to this set is a security decision: say why in review."""

SIGNED_ROUTES = {("POST", "/v1/webhooks/resend"), ("POST", "/v1/webhooks/generic")}


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_async_engine(database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
def api(engine: AsyncEngine, database_url: str) -> FastAPI:
    return create_api(Hogsend(), Settings(env="test", database_url=database_url), engine=engine)


@pytest.fixture
async def client(api: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=api, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client
    await api.state.driver_pool.close()


async def mint(engine: AsyncEngine, scopes: list[str]) -> str:
    async with make_sessionmaker(engine)() as session:
        _, raw = await api_keys.create_key(session, name="-".join(scopes), scopes=scopes)
        await session.commit()
    return raw


def every_route(api: FastAPI) -> list[tuple[str, str]]:
    """(method, path) of every route the app serves, API routes or plain Starlette ones."""
    found = []
    for route in api.routes:
        methods = getattr(route, "methods", None)
        path = getattr(route, "path", None)
        if methods and path:
            found += [(m, path) for m in methods if m != "HEAD"]
    for mounted in iter_api_routes(api.routes):
        found += [(m, mounted.path) for m in mounted.route.methods or () if m != "HEAD"]
    return sorted(set(found))


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", str(uuid.uuid4()), path)


def test_scope_algebra() -> None:
    assert has_scope({"full-admin"}, "ingest")
    assert has_scope({"admin:write"}, "admin:read")
    assert not has_scope({"admin:read"}, "admin:write")
    assert not has_scope({"admin:write"}, "full-admin")
    assert not has_scope({"ingest"}, "read")
    assert not has_scope({"read"}, "ingest")
    assert scopes_satisfying(ANY_KEY) == frozenset(SCOPES)


async def test_route_walk_covers_the_whole_openapi_document(
    api: FastAPI, client: httpx.AsyncClient
) -> None:
    walked = set(every_route(api))
    document = (await client.get("/openapi.json")).json()
    for path, operations in document["paths"].items():
        for method in operations:
            assert (method.upper(), path) in walked


async def test_every_route_refuses_a_missing_key(api: FastAPI, client: httpx.AsyncClient) -> None:
    guarded = [r for r in every_route(api) if r not in OPEN_ROUTES]
    assert guarded, "the walk found no guarded route"
    for method, path in guarded:
        response = await client.request(method, concrete(path))
        assert response.status_code == 401, f"{method} {path} answered {response.status_code}"
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["www-authenticate"].startswith("Bearer")


async def test_every_route_refuses_a_key_without_its_scope(
    api: FastAPI, client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    checked = 0
    for mounted in iter_api_routes(api.routes):
        required = route_scope(mounted.route)
        for method in sorted(mounted.route.methods or ()):
            if (method, mounted.path) in OPEN_ROUTES:
                assert required is None
                continue
            assert required is not None, f"{method} {mounted.path} declares no scope"
            weak = sorted(set(SCOPES) - scopes_satisfying(required))
            if weak:
                raw = await mint(engine, weak)
                response = await client.request(
                    method, concrete(mounted.path), headers={"Authorization": f"Bearer {raw}"}
                )
                assert response.status_code == 403, (
                    f"{method} {mounted.path} with {weak} answered {response.status_code}"
                )
                assert response.headers["content-type"] == "application/problem+json"
                checked += 1
            # and the least scope that satisfies it is enough to get past the guard
            least = [required] if required != ANY_KEY else ["read"]
            raw = await mint(engine, least)
            response = await client.request(
                method, concrete(mounted.path), headers={"Authorization": f"Bearer {raw}"}
            )
            assert response.status_code not in (401, 403), f"{method} {mounted.path} with {least}"
    assert checked > 0


def test_admin_routes_need_admin_scopes_and_mutations_are_audited(api: FastAPI) -> None:
    admin_scopes = {"admin:read", "admin:write", "full-admin"}
    for mounted in iter_api_routes(api.routes):
        if not mounted.path.startswith("/v1/admin"):
            continue
        assert route_scope(mounted.route) in admin_scopes, mounted.path
        methods = mounted.route.methods or set()
        if methods - {"GET", "HEAD"}:
            assert route_scope(mounted.route) in {"admin:write", "full-admin"}, mounted.path
            assert route_audit_action(mounted.route) is not None, f"{mounted.path} is not audited"
        else:
            assert route_audit_action(mounted.route) is None


async def test_segment_routes_take_the_write_key_as_basic_auth_with_the_same_scopes(
    api: FastAPI, client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """Segment clients send the key as HTTP Basic; the scope rules are the same."""

    def basic(key: str) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}

    segment = [m for m in iter_api_routes(api.routes) if m.path.startswith("/segment/")]
    assert len(segment) == 7
    weak = await mint(engine, ["read", "admin:write"])
    good = await mint(engine, ["ingest"])
    for mounted in segment:
        assert route_scope(mounted.route) == "ingest"
        missing = await client.post(mounted.path, json={})
        assert missing.status_code == 401
        assert "Basic" in missing.headers["www-authenticate"]
        unknown = await client.post(mounted.path, json={}, headers=basic("hsk_unknown"))
        assert unknown.status_code == 401
        refused = await client.post(mounted.path, json={}, headers=basic(weak))
        assert refused.status_code == 403
        allowed = await client.post(mounted.path, json={}, headers=basic(good))
        assert allowed.status_code not in (401, 403), mounted.path


async def test_signed_webhooks_refuse_unsigned_requests(
    api: FastAPI, client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """Open to API keys, but nothing gets past them without a valid signature."""
    assert set(every_route(api)) >= SIGNED_ROUTES
    key = await mint(engine, ["full-admin"])
    for method, path in sorted(SIGNED_ROUTES):
        for headers in (
            {},
            {"Authorization": f"Bearer {key}"},
            {"svix-id": "msg_1", "svix-timestamp": "1", "svix-signature": "v1,forged"},
        ):
            response = await client.request(method, path, json={}, headers=headers)
            assert response.status_code == 401, f"{method} {path} with {headers}"
            assert response.headers["content-type"] == "application/problem+json"


EMAIL_ROUTE_SCOPES = {
    ("POST", "/v1/emails"): "ingest",
    ("GET", "/v1/admin/templates"): "admin:read",
    ("GET", "/v1/admin/templates/{key}/preview"): "admin:read",
    ("POST", "/v1/admin/templates/{key}/send-test"): "full-admin",
    ("GET", "/v1/admin/outbox"): "admin:read",
    ("GET", "/v1/admin/outbox/{id}"): "admin:read",
    ("DELETE", "/v1/admin/outbox"): "admin:write",
}
"""The scopes of the email routes, pinned (the reference makes send-test full-admin)."""


def test_email_routes_require_their_pinned_scopes(api: FastAPI) -> None:
    found = {
        (method, mounted.path): route_scope(mounted.route)
        for mounted in iter_api_routes(api.routes)
        for method in mounted.route.methods or ()
        if (method, mounted.path) in EMAIL_ROUTE_SCOPES
    }
    assert found == EMAIL_ROUTE_SCOPES


async def test_skip_preference_check_needs_full_admin_beyond_the_route_scope(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """A body flag raises the scope a request needs: ingest may send, not skip checks."""
    body = {"to": "a@example.com", "template": "welcome", "skipPreferenceCheck": True}
    for scopes in (["ingest"], ["ingest", "admin:write"], ["ingest", "read", "admin:read"]):
        raw = await mint(engine, scopes)
        response = await client.post(
            "/v1/emails", json=body, headers={"Authorization": f"Bearer {raw}"}
        )
        assert response.status_code == 403, scopes
        assert response.headers["content-type"] == "application/problem+json"
        assert 'scope="full-admin"' in response.headers["www-authenticate"]
    raw = await mint(engine, ["full-admin"])
    allowed = await client.post("/v1/emails", json=body, headers={"Authorization": f"Bearer {raw}"})
    # past the scope checks; this app registers no templates
    assert allowed.status_code == 422
    assert allowed.json()["errors"][0]["field"] == "body.template"


async def test_studio_routes_are_outside_the_key_matrix_and_behind_a_sign_in(
    engine: AsyncEngine, database_url: str
) -> None:
    """Studio (mounted by the serving commands) authenticates people, not keys.

    Its routes live in a Starlette mount the walk above does not descend into, stay out
    of the OpenAPI document, and each one sends an anonymous visitor to the setup or
    sign-in page (GET) or refuses the request (POST) instead of doing anything.
    """
    from starlette.routing import Mount, Route

    from hogsend.studio import mount_studio

    plain = create_api(Hogsend(), Settings(env="test", database_url=database_url), engine=engine)
    api = create_api(Hogsend(), Settings(env="test", database_url=database_url), engine=engine)
    mount_studio(api)
    assert set(every_route(api)) - {("GET", "/studio")} == set(every_route(plain))
    transport = httpx.ASGITransport(app=api, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        document = (await client.get("/openapi.json")).json()
        assert not [path for path in document["paths"] if path.startswith("/studio")]
        [studio] = [r for r in api.routes if isinstance(r, Mount) and r.path == "/studio"]
        checked = 0
        for route in studio.routes:
            if not isinstance(route, Route):
                continue  # the static files
            for method in sorted((route.methods or set()) - {"HEAD"}):
                path = "/studio" + concrete(route.path)
                response = await client.request(method, path)
                if route.path in ("/setup", "/login"):
                    # the forms themselves: shown to anyone, posted only with their token
                    expected = {"GET": (200, 303), "POST": (403,)}[method]
                else:
                    expected = (303,)
                assert response.status_code in expected, f"{method} {path}"
                if response.status_code == 303:
                    assert response.headers["location"].startswith(
                        ("/studio/setup", "/studio/login")
                    )
                checked += 1
    assert checked > 20
    await api.state.driver_pool.close()
    await plain.state.driver_pool.close()


JOURNEY_ROUTE_SCOPES = {
    ("GET", "/v1/admin/journeys"): "admin:read",
    ("GET", "/v1/admin/journeys/runs"): "admin:read",
    ("GET", "/v1/admin/journeys/runs/{id}"): "admin:read",
    ("POST", "/v1/admin/journeys/runs/{id}/cancel"): "admin:write",
    ("PUT", "/v1/admin/journeys/{id}/enabled"): "admin:write",
}
"""The scopes of the admin journeys routes, pinned."""


def test_journey_routes_require_their_pinned_scopes(api: FastAPI) -> None:
    found = {
        (method, mounted.path): route_scope(mounted.route)
        for mounted in iter_api_routes(api.routes)
        for method in mounted.route.methods or ()
        if (method, mounted.path) in JOURNEY_ROUTE_SCOPES
    }
    assert found == JOURNEY_ROUTE_SCOPES


BUCKET_ROUTE_SCOPES = {
    ("GET", "/v1/admin/buckets"): "admin:read",
    ("GET", "/v1/admin/criteria/preview"): "admin:read",
    ("GET", "/v1/admin/buckets/{id}"): "admin:read",
    ("PATCH", "/v1/admin/buckets/{id}"): "admin:write",
    ("GET", "/v1/admin/buckets/{id}/members"): "admin:read",
    ("POST", "/v1/admin/buckets/{id}/members"): "admin:write",
    ("DELETE", "/v1/admin/buckets/{id}/members/{contact_id}"): "admin:write",
    ("GET", "/v1/admin/contacts/{id}/buckets"): "admin:read",
}
"""The scopes of the bucket admin routes, pinned."""


def test_bucket_routes_require_their_pinned_scopes(api: FastAPI) -> None:
    found = {
        (method, mounted.path): route_scope(mounted.route)
        for mounted in iter_api_routes(api.routes)
        for method in mounted.route.methods or ()
        if (method, mounted.path) in BUCKET_ROUTE_SCOPES
    }
    assert found == BUCKET_ROUTE_SCOPES


def test_campaign_routes_take_ingest_and_operator_actions_are_audited(api: FastAPI) -> None:
    """Create/read follow the data-plane contract; pause/resume/cancel are operator actions."""
    found = {
        (method, mounted.path): (route_scope(mounted.route), route_audit_action(mounted.route))
        for mounted in iter_api_routes(api.routes)
        if mounted.path.startswith("/v1/campaigns")
        for method in mounted.route.methods or ()
    }
    assert found == {
        ("POST", "/v1/campaigns"): ("ingest", None),
        ("GET", "/v1/campaigns"): ("ingest", None),
        ("GET", "/v1/campaigns/{id}"): ("ingest", None),
        ("POST", "/v1/campaigns/{id}/pause"): ("admin:write", "campaigns.pause"),
        ("POST", "/v1/campaigns/{id}/resume"): ("admin:write", "campaigns.resume"),
        ("POST", "/v1/campaigns/{id}/cancel"): ("admin:write", "campaigns.cancel"),
    }


REPORTING_ROUTE_SCOPES = {
    ("GET", "/v1/admin/metrics/overview"): ("admin:read", None),
    ("GET", "/v1/admin/metrics/journeys/{id}/funnel"): ("admin:read", None),
    ("GET", "/v1/admin/metrics/templates"): ("admin:read", None),
    ("GET", "/v1/admin/metrics/deliverability"): ("admin:read", None),
    ("GET", "/v1/admin/metrics/campaigns"): ("admin:read", None),
    ("GET", "/v1/admin/metrics/campaigns/{id}/funnel"): ("admin:read", None),
    ("GET", "/v1/admin/metrics/buckets/{id}"): ("admin:read", None),
    ("GET", "/v1/admin/event-search"): ("admin:read", None),
    ("GET", "/v1/admin/alerts/rules"): ("admin:read", None),
    ("POST", "/v1/admin/alerts/rules"): ("admin:write", "alert-rules.create"),
    ("GET", "/v1/admin/alerts/rules/{id}"): ("admin:read", None),
    ("PATCH", "/v1/admin/alerts/rules/{id}"): ("admin:write", "alert-rules.update"),
    ("DELETE", "/v1/admin/alerts/rules/{id}"): ("admin:write", "alert-rules.delete"),
    ("GET", "/v1/admin/alerts/history"): ("admin:read", None),
}
"""The scopes and audit actions of the reporting and alert routes, pinned."""


def test_reporting_and_alert_routes_require_their_pinned_scopes(api: FastAPI) -> None:
    found = {
        (method, mounted.path): (route_scope(mounted.route), route_audit_action(mounted.route))
        for mounted in iter_api_routes(api.routes)
        for method in mounted.route.methods or ()
        if (method, mounted.path) in REPORTING_ROUTE_SCOPES
    }
    assert found == REPORTING_ROUTE_SCOPES
