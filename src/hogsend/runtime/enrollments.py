"""Enqueueing a journey run inside the transaction that enrolls it.

DBOS keeps its tables in the ``dbos`` schema of hogsend's own database, and DBOS 3.4's
``DBOSClient.enqueue_in_transaction`` writes a queued workflow through a connection the
caller owns. The enrolling transaction therefore inserts the ``journey_states`` row and
the queued workflow together: both commit or neither does.

Enqueueing through ``DBOS.enqueue_workflow_async`` instead (its own transaction, two
thread hops) made the workflow visible before the enrollment committed: a worker could
dequeue it and its start step then waited, in 100 ms lock-timeout slices, for the
dispatcher's transaction (which holds up to ``dispatcher_events_per_transaction``
events) to commit. That wait was most of the event → first step latency
(bench/journeys.py). Now a dequeued run's row is always there, and a transaction that
rolls back leaves no workflow behind.
"""

from __future__ import annotations

from typing import Any

from dbos import DBOS, DBOSClient, EnqueueOptions
from sqlalchemy.ext.asyncio import AsyncSession

from hogsend.db.engine import libpq_url
from hogsend.runtime.dbos_setup import DBOS_APP_NAME, DBOS_SCHEMA
from hogsend.runtime.queues import JOURNEYS


class JourneyEnqueuer:
    """Puts journey workflows on the journeys queue within a caller's transaction.

    Args:
        database_url: hogsend's database (the DBOS system database is its ``dbos``
            schema). The client never connects on its own: every enqueue goes through
            the session it is given.
    """

    def __init__(self, database_url: str) -> None:
        self._client = DBOSClient(
            system_database_url=libpq_url(database_url),
            dbos_system_schema=DBOS_SCHEMA,
            application_name=DBOS_APP_NAME,
            lazy=True,
            system_database_pool_size=1,
        )

    async def enqueue(
        self, session: AsyncSession, *, workflow_name: str, workflow_id: str, args: tuple[Any, ...]
    ) -> None:
        """Enqueue ``workflow_name(*args)`` as ``workflow_id`` in ``session``'s transaction.

        Idempotent: an id already enqueued (or run) is left as it is.
        """
        options: EnqueueOptions = {
            "workflow_name": workflow_name,
            "queue_name": JOURNEYS.name,
            "workflow_id": workflow_id,
            # The worker's pinned version: DBOS dequeues only its own version's runs.
            "app_version": DBOS.application_version,
            "application_name": DBOS_APP_NAME,
        }
        client = self._client
        await session.run_sync(
            lambda sync_session: client.enqueue_in_transaction(sync_session, options, *args)
        )

    def close(self) -> None:
        """Release the client (it holds no connection, but may hold an engine)."""
        self._client.destroy()
