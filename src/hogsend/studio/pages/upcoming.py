"""Pages the navigation already lists but later releases fill: a clear "not yet" state."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from hogsend.studio.rendering import render
from hogsend.studio.security import require_viewer
from hogsend.studio.state import database


@dataclass(frozen=True, slots=True, kw_only=True)
class Upcoming:
    """What a future page will show, and where to look meanwhile."""

    key: str
    title: str
    will_show: str
    meanwhile: str


UPCOMING = {
    "campaigns": Upcoming(
        key="campaigns",
        title="Campaigns",
        will_show="campaigns with their audience, schedule, live progress and funnel, and the "
        "form creating one.",
        meanwhile="Campaign sends appear on each contact's page with their decisions.",
    ),
    "email": Upcoming(
        key="email",
        title="Email",
        will_show="the template gallery with rendered previews and test sends, the dev outbox "
        "viewer, and the suppression list.",
        meanwhile="`hogsend templates` previews templates from the command line; each contact's "
        "page lists its send attempts and explains its suppression state.",
    ),
}


def upcoming_view(key: str) -> Callable[[Request], Awaitable[Response]]:
    """The view of the not-yet-built page ``key`` of :data:`UPCOMING`."""
    page = UPCOMING[key]

    async def upcoming_page(request: Request) -> Response:
        async with database(request) as db:
            await require_viewer(request, db)
        return render(request, "upcoming.html", title=page.title, current=page.key, page=page)

    return upcoming_page
