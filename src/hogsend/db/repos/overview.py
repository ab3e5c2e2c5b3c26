"""Counts of the admin overview that no other repository owns: runs, memberships, opt-outs."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineCounts:
    """What is live right now."""

    running_journey_runs: int
    active_buckets: int
    bucket_members: int
    unsubscribed_contacts: int


_COUNTS = text(
    """
    SELECT
      (SELECT count(*) FROM journey_states
       WHERE status IN ('enrolled', 'active', 'waiting') AND deleted_at IS NULL) AS runs,
      (SELECT count(DISTINCT bucket_id) FROM bucket_memberships
       WHERE status = 'active' AND deleted_at IS NULL) AS buckets,
      (SELECT count(*) FROM bucket_memberships
       WHERE status = 'active' AND deleted_at IS NULL) AS members,
      (SELECT count(*) FROM email_preferences WHERE unsubscribed_all) AS unsubscribed
    """
)


async def engine_counts(session: AsyncSession) -> EngineCounts:
    """Running journey runs, buckets with members, memberships, globally unsubscribed."""
    row = (await session.execute(_COUNTS)).one()
    return EngineCounts(
        running_journey_runs=int(row.runs),
        active_buckets=int(row.buckets),
        bucket_members=int(row.members),
        unsubscribed_contacts=int(row.unsubscribed),
    )
