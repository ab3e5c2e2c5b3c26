"""/v1/admin/outbox: the messages the dev outbox provider kept, as a mailbox viewer.

Listing and reading need ``admin:read``; clearing needs ``admin:write`` and is audited.
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query

from hogsend.api.audit import AdminChange, audited
from hogsend.api.auth import require_scope
from hogsend.api.deps import DbSession
from hogsend.api.errors import problem_responses
from hogsend.api.routes.transactions import invalid_cursor
from hogsend.api.schemas.outbox import (
    OutboxCleared,
    OutboxClearQuery,
    OutboxMessageOut,
    OutboxPage,
    OutboxQuery,
    outbox_message,
    outbox_summary,
)
from hogsend.core.pagination import InvalidCursor
from hogsend.db.repos import outbox_messages
from hogsend.errors import NotFound

router = APIRouter(prefix="/v1/admin", tags=["admin: outbox"])


@router.get(
    "/outbox",
    summary="List the messages in the dev outbox",
    dependencies=[require_scope("admin:read")],
)
async def list_outbox(session: DbSession, query: Annotated[OutboxQuery, Query()]) -> OutboxPage:
    """Messages the outbox provider stored, newest first, without their parts; filter by
    recipient (`to`), a substring of recipient, sender or subject (`search`), or the send
    attempt (`sendId`)."""
    try:
        page = await outbox_messages.page_messages(
            session,
            to_email=query.to,
            search=query.search,
            email_send_id=query.send_id,
            limit=query.limit,
            cursor=query.cursor,
        )
    except InvalidCursor as exc:
        raise invalid_cursor(exc) from None
    return OutboxPage(
        messages=[outbox_summary(m) for m in page.items], next_cursor=page.next_cursor
    )


@router.get(
    "/outbox/{id}",
    summary="Read one message of the dev outbox",
    dependencies=[require_scope("admin:read")],
    responses=problem_responses(404),
)
async def get_outbox_message(id: UUID, session: DbSession) -> OutboxMessageOut:
    """The whole message: headers (Message-ID, Reply-To, List-Unsubscribe, X-Hogsend-*),
    HTML and text parts, and the send attempt it belongs to. 404 if unknown."""
    message = await outbox_messages.get(session, id)
    if message is None:
        raise NotFound(f"outbox message {id} does not exist")
    return outbox_message(message)


@router.delete("/outbox", summary="Empty the dev outbox")
async def clear_outbox(
    query: Annotated[OutboxClearQuery, Query()],
    change: AdminChange = audited("admin:write", resource="outbox", action="outbox.clear"),
) -> OutboxCleared:
    """Delete every stored message, or only those to `to`. The send attempts they belong
    to stay in the decision log."""
    deleted = await outbox_messages.delete_messages(change.session, to_email=query.to)
    # The target is the recipient cleared, or the whole outbox.
    change.resource_id = query.to or "all"
    # Counted by the delete itself: the messages matching the filter, then none.
    change.detail = {
        "to": query.to,
        "deleted": deleted,
        "before": {"matching": deleted},
        "after": {"matching": 0},
    }
    return OutboxCleared(deleted=deleted)
