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
    "journeys": Upcoming(
        key="journeys",
        title="Journeys",
        will_show="each journey with its enabled switch, run counts per status, its funnel "
        "(enrolled → sent → opened → clicked → completed) and every run with its step log.",
        meanwhile="A contact's page already lists its journey runs and steps in its timeline.",
    ),
    "buckets": Upcoming(
        key="buckets",
        title="Buckets",
        will_show="each bucket with its size, entries and exits per day, readable criteria, "
        "members and backfill status.",
        meanwhile="Bucket entries and exits appear in each contact's timeline.",
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
