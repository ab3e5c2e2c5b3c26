"""Mount Studio on an API app (``hogsend dev`` and ``hogsend serve`` do this).

The API factory does not know Studio exists; the serving commands add it, so the data
plane can be deployed without the admin UI. Studio is its own Starlette app mounted at
``/studio``: its routes stay out of the API's OpenAPI document and scope checks (they
authenticate people with sessions, not keys), and its errors are HTML pages, not
problem+json.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from hogsend.studio.error_pages import install_error_pages
from hogsend.studio.pages import (
    api_keys,
    audit_log,
    buckets,
    campaigns,
    contacts,
    dead_letters,
    email,
    events,
    journeys,
    overview,
    signin,
)
from hogsend.studio.security import SecurityHeadersMiddleware
from hogsend.studio.state import StudioState

GET = ["GET"]
POST = ["POST"]


def studio_routes() -> list[BaseRoute]:
    """Every Studio route, relative to the mount point."""
    return [
        Route("/", overview.overview, methods=GET),
        Route("/setup", signin.setup, methods=["GET", "POST"]),
        Route("/login", signin.login, methods=["GET", "POST"]),
        Route("/logout", signin.logout, methods=POST),
        Route("/contacts", contacts.contact_list, methods=GET),
        Route("/contacts/{id}", contacts.contact_page, methods=GET),
        Route("/contacts/{id}/explain", contacts.explain_fragment, methods=GET),
        Route("/contacts/{id}/{action}", contacts.confirm_action, methods=GET),
        Route("/contacts/{id}/{action}", contacts.perform_action, methods=POST),
        Route("/contacts/{id}/buckets/{bucket}", contacts.change_manual_bucket, methods=POST),
        Route("/events", events.event_list, methods=GET),
        Route("/events/rows", events.event_rows, methods=GET),
        Route("/api-keys", api_keys.key_list, methods=GET),
        Route("/api-keys", api_keys.create_key, methods=POST),
        Route("/api-keys/{id}/revoke", api_keys.confirm_revoke, methods=GET),
        Route("/api-keys/{id}/revoke", api_keys.revoke_key, methods=POST),
        Route("/audit", audit_log.audit_list, methods=GET),
        Route("/dlq", dead_letters.dead_letter_list, methods=GET),
        Route("/dlq/{id}", dead_letters.dead_letter_page, methods=GET),
        Route("/dlq/{id}/{decision}", dead_letters.decide, methods=POST),
        Route("/journeys", journeys.journey_list, methods=GET),
        Route("/journeys/runs/{id}", journeys.run_page, methods=GET),
        Route("/journeys/runs/{id}/cancel", journeys.cancel_run, methods=POST),
        Route("/journeys/{id}", journeys.journey_page, methods=GET),
        Route("/journeys/{id}/enabled", journeys.switch_journey, methods=POST),
        Route("/buckets", buckets.bucket_list, methods=GET),
        Route("/buckets/{id}", buckets.bucket_page, methods=GET),
        Route("/buckets/{id}/enabled", buckets.switch_bucket, methods=POST),
        *campaigns.routes(),
        *email.routes(),
        Mount("/static", StaticFiles(packages=[("hogsend.studio", "static")]), name="static"),
    ]


def create_studio(api: FastAPI, *, prefix: str = "/studio") -> Starlette:
    """Studio's Starlette app, drawing its database and settings from ``api``."""
    studio = Starlette(
        routes=studio_routes(),
        middleware=[Middleware(SecurityHeadersMiddleware, static_prefix=f"{prefix}/static/")],
    )
    studio.state.studio = StudioState(api=api, prefix=prefix)
    install_error_pages(studio)
    return studio


def mount_studio(api: FastAPI, *, prefix: str = "/studio") -> None:
    """Serve Studio under ``prefix`` on ``api``.

    Args:
        api: the FastAPI app from :func:`hogsend.api.create_api`.
        prefix: the URL path Studio lives under.
    """

    async def with_slash(request: Request) -> Response:
        return RedirectResponse(prefix + "/", status_code=307)

    # The exact prefix (no slash) is not part of the mount; send it to the overview.
    api.add_route(prefix, with_slash, methods=["GET"], include_in_schema=False)
    api.mount(prefix, create_studio(api, prefix=prefix), name="studio")
