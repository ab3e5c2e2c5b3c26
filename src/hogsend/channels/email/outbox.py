"""The outbox provider: nothing leaves the machine; each message is stored in Postgres."""

from __future__ import annotations

import asyncio
import uuid
import weakref
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from hogsend.channels.email.message import OutgoingEmail, ProviderResult
from hogsend.channels.send_batches import GroupCommit
from hogsend.errors import TransientProviderError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine


class OutboxProvider:
    """Store messages in ``outbox_messages`` (the default of ``hogsend dev``).

    Everything a real provider would get is kept: the headers (with Message-ID,
    Reply-To and tags), the HTML and the text, so Studio can show the message as
    sent. A database error is transient.
    """

    name = "outbox"

    def __init__(self, engine: AsyncEngine) -> None:
        from hogsend.db.engine import make_sessionmaker

        self._sessions = make_sessionmaker(engine)
        # Concurrent sends (a batch's lanes) share one INSERT and one commit; one group
        # per event loop (its futures belong to that loop).
        self._groups: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, GroupCommit[dict[str, Any]]
        ] = weakref.WeakKeyDictionary()

    async def send(self, message: OutgoingEmail) -> ProviderResult:
        """Store ``message``; its outbox row id is the message id.

        Returns once the row is committed, with whatever other sends handed in
        meanwhile (one statement and one commit for all of them).
        """
        from sqlalchemy.exc import SQLAlchemyError

        headers: dict[str, object] = {"Message-ID": message.message_id()}
        if message.reply_to:
            headers["Reply-To"] = message.reply_to
        headers.update(message.headers)
        if message.tags:
            headers["X-Hogsend-Tags"] = dict(message.tags)
        if message.idempotency_key:
            headers["X-Hogsend-Idempotency-Key"] = message.idempotency_key
        row_id = uuid.uuid4()
        loop = asyncio.get_running_loop()
        group = self._groups.get(loop)
        if group is None:
            group = self._groups[loop] = GroupCommit(self._store)
        try:
            await group.submit(
                {
                    "id": row_id,
                    "to_email": message.to,
                    "from_email": message.from_email,
                    "subject": message.subject,
                    "headers": headers,
                    "html": message.html,
                    "text": message.text,
                    "email_send_id": message.email_send_id,
                    # The time it was handed in, not the shared commit's: rows stored
                    # together still list newest first in the order they were sent.
                    "created_at": datetime.now(UTC),
                }
            )
        except SQLAlchemyError as exc:
            raise TransientProviderError(f"outbox: {exc}", provider=self.name) from exc
        return ProviderResult(provider=self.name, message_id=str(row_id))

    async def _store(self, rows: list[dict[str, Any]]) -> None:
        from hogsend.db.repos import outbox_messages

        async with self._sessions() as session, session.begin():
            await outbox_messages.add_many(session, rows)

    async def aclose(self) -> None:
        """Nothing to release: the engine belongs to the caller."""
