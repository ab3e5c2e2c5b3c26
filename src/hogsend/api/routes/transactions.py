"""Running a route's database work as one transaction, retried when Postgres asks for it.

Identity resolution can lose a race (a deadlock between two requests touching the same
contacts through different keys, or contacts merged away under it several times over);
Postgres then aborts one transaction and running it again works. Ingest is idempotent
per idempotency key, so a retry can never store an event twice. After a few attempts
the client gets a 503 with ``Retry-After`` instead of a 500.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from hogsend.api.deps import sessionmaker_of
from hogsend.core.pagination import InvalidCursor
from hogsend.db.repos import outbox
from hogsend.db.repos.contacts import ResolutionRace
from hogsend.db.repos.events import DATABASE_ERRORS, is_transient_error
from hogsend.errors import ServiceUnavailable

T = TypeVar("T")

ATTEMPTS = 3


async def in_transaction(request: Request, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run ``work`` in a transaction of its own and commit; retry transient failures.

    Raises:
        ServiceUnavailable: still failing transiently after :data:`ATTEMPTS` attempts.
    """
    sessions = sessionmaker_of(request)
    for _ in range(ATTEMPTS):
        try:
            async with sessions() as session, session.begin():
                return await work(session)
        except ResolutionRace:
            continue
        except DATABASE_ERRORS as exc:
            if not is_transient_error(exc):
                raise
    raise ServiceUnavailable(
        "Concurrent changes to the same contacts kept colliding; retry the request",
        headers={"Retry-After": "1"},
    )


def notify_throttle_of(request: Request) -> outbox.NotifyThrottle | None:
    """This API's outbox NOTIFY throttle (see :class:`~hogsend.db.repos.outbox.NotifyThrottle`)."""
    throttle = getattr(request.app.state, "outbox_notify", None)
    return throttle if isinstance(throttle, outbox.NotifyThrottle) else None


def invalid_field(location: tuple[str | int, ...], message: str) -> RequestValidationError:
    """A 422 naming one field, rendered like every other validation failure."""
    return RequestValidationError(
        [{"type": "value_error", "loc": location, "msg": message, "input": None}]
    )


def invalid_cursor(exc: InvalidCursor) -> RequestValidationError:
    """The 422 for a cursor this listing did not hand out."""
    return invalid_field(("query", "cursor"), str(exc))
