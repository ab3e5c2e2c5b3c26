"""Alert rules and their notification history.

``threshold`` is stored as ``{"value", "windowMinutes", "minVolume"}`` and
``channel_config`` as ``{"to", "template"}`` (email) or ``{"url", "secret"}``
(webhook). The evaluator's measurements (rates over a window, lag, failed runs, live
workers) are read here too, so the sweep holds no SQL.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from hogsend.db.tables.operations import AlertHistory, AlertRule

SWEEP_LOCK = 0x68_6F_67_61_6C_72_74  # "hogalrt": one evaluator at a time, cluster-wide


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """One alert rule as stored."""

    id: uuid.UUID
    name: str
    type: str
    threshold: float
    window_minutes: int
    min_volume: int
    channel: str
    channel_config: dict[str, Any]
    enabled: bool
    cooldown_minutes: int
    last_fired_at: datetime | None
    firing_since: datetime | None
    last_evaluated_at: datetime | None
    last_value: float | None
    created_at: datetime
    updated_at: datetime

    @property
    def window(self) -> timedelta:
        """The period rates and counts are measured over."""
        return timedelta(minutes=self.window_minutes)

    @property
    def cooldown(self) -> timedelta:
        """The least time between two notifications while firing."""
        return timedelta(minutes=self.cooldown_minutes)

    def public(self) -> dict[str, Any]:
        """The rule without its webhook secret (for audit rows and API answers)."""
        config = {k: v for k, v in self.channel_config.items() if k != "secret"}
        return {
            "name": self.name,
            "type": self.type,
            "threshold": self.threshold,
            "windowMinutes": self.window_minutes,
            "minVolume": self.min_volume,
            "channel": self.channel,
            "channelConfig": config,
            "enabled": self.enabled,
            "cooldownMinutes": self.cooldown_minutes,
        }


def _rule(row: AlertRule) -> Rule:
    threshold = row.threshold or {}
    return Rule(
        id=row.id,
        name=row.name,
        type=row.type,
        threshold=float(threshold.get("value", 0)),
        window_minutes=int(threshold.get("windowMinutes", 60)),
        min_volume=int(threshold.get("minVolume", 0)),
        channel=row.channel,
        channel_config=dict(row.channel_config or {}),
        enabled=row.enabled,
        cooldown_minutes=row.cooldown_minutes,
        last_fired_at=row.last_fired_at,
        firing_since=row.firing_since,
        last_evaluated_at=row.last_evaluated_at,
        last_value=row.last_value,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def threshold_json(value: float, window_minutes: int, min_volume: int) -> dict[str, Any]:
    """The stored form of a rule's threshold."""
    return {"value": value, "windowMinutes": window_minutes, "minVolume": min_volume}


async def create_rule(
    session: AsyncSession,
    *,
    name: str,
    type: str,
    threshold: float,
    window_minutes: int,
    min_volume: int,
    channel: str,
    channel_config: dict[str, Any],
    cooldown_minutes: int,
    enabled: bool = True,
) -> Rule:
    """Insert a rule and return it."""
    row = await session.scalar(
        insert(AlertRule)
        .values(
            name=name,
            type=type,
            threshold=threshold_json(threshold, window_minutes, min_volume),
            channel=channel,
            channel_config=channel_config,
            cooldown_minutes=cooldown_minutes,
            enabled=enabled,
        )
        .returning(AlertRule)
    )
    assert row is not None
    return _rule(row)


async def get_rule(session: AsyncSession, rule_id: uuid.UUID, *, lock: bool = False) -> Rule | None:
    """One rule, optionally locked for update."""
    statement = select(AlertRule).where(AlertRule.id == rule_id)
    if lock:
        statement = statement.with_for_update()
    row = await session.scalar(statement)
    return None if row is None else _rule(row)


async def list_rules(
    session: AsyncSession, *, enabled: bool | None = None, limit: int = 50, offset: int = 0
) -> tuple[list[Rule], int]:
    """Rules newest first, and how many match."""
    where = [] if enabled is None else [AlertRule.enabled.is_(enabled)]
    rows = await session.scalars(
        select(AlertRule)
        .where(*where)
        .order_by(AlertRule.created_at.desc(), AlertRule.id)
        .limit(limit)
        .offset(offset)
    )
    total = await session.scalar(select(func.count()).select_from(AlertRule).where(*where))
    return [_rule(r) for r in rows], int(total or 0)


async def update_rule(session: AsyncSession, rule_id: uuid.UUID, **values: Any) -> Rule | None:
    """Change the given columns of a rule (``threshold`` as its stored JSON)."""
    row = await session.scalar(
        update(AlertRule)
        .where(AlertRule.id == rule_id)
        .values(**values, updated_at=func.now())
        .returning(AlertRule)
    )
    return None if row is None else _rule(row)


async def delete_rule(session: AsyncSession, rule_id: uuid.UUID) -> bool:
    """Delete a rule and (by cascade) its history; False when it did not exist."""
    result = await session.execute(
        delete(AlertRule).where(AlertRule.id == rule_id).returning(AlertRule.id)
    )
    return result.first() is not None


async def record_evaluation(
    session: AsyncSession,
    rule_id: uuid.UUID,
    *,
    now: datetime,
    value: float,
    firing_since: datetime | None,
    notified: bool,
) -> None:
    """Store what an evaluation measured and the rule's firing state after it."""
    values: dict[str, Any] = {
        "last_evaluated_at": now,
        "last_value": value,
        "firing_since": firing_since,
    }
    if notified:
        values["last_fired_at"] = now
    await session.execute(update(AlertRule).where(AlertRule.id == rule_id).values(**values))


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery:
    """One notification attempt of a rule."""

    id: uuid.UUID
    rule_id: uuid.UUID
    payload: dict[str, Any] | None
    delivery_status: str
    error: str | None
    created_at: datetime


async def record_delivery(
    session: AsyncSession,
    rule_id: uuid.UUID,
    *,
    payload: dict[str, Any],
    status: str,
    error: str | None = None,
) -> uuid.UUID:
    """Append a notification attempt to the rule's history."""
    delivery_id: uuid.UUID | None = await session.scalar(
        insert(AlertHistory)
        .values(alert_rule_id=rule_id, payload=payload, delivery_status=status, error=error)
        .returning(AlertHistory.id)
    )
    assert delivery_id is not None
    return delivery_id


async def history(
    session: AsyncSession,
    *,
    rule_id: uuid.UUID | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[Delivery], int]:
    """Notification attempts newest first, of one rule or all, and how many match."""
    where = [] if rule_id is None else [AlertHistory.alert_rule_id == rule_id]
    rows = await session.scalars(
        select(AlertHistory)
        .where(*where)
        .order_by(AlertHistory.created_at.desc(), AlertHistory.id)
        .limit(limit)
        .offset(offset)
    )
    total = await session.scalar(select(func.count()).select_from(AlertHistory).where(*where))
    return [
        Delivery(
            id=r.id,
            rule_id=r.alert_rule_id,
            payload=r.payload,
            delivery_status=r.delivery_status,
            error=r.error,
            created_at=r.created_at,
        )
        for r in rows
    ], int(total or 0)


_FAILED_RUNS = text(
    "SELECT count(*) FROM journey_states WHERE status = 'failed' AND failed_at >= :since"
)
_ALIVE_WORKERS = text(
    "SELECT count(*) FROM worker_heartbeats WHERE stopped_at IS NULL AND last_seen_at >= :since"
)


async def failed_runs_since(session: AsyncSession, since: datetime) -> int:
    """Journey runs that failed since ``since``."""
    return int((await session.execute(_FAILED_RUNS, {"since": since})).scalar_one())


async def alive_workers(session: AsyncSession, seen_since: datetime) -> int:
    """Workers not stopped whose heartbeat is newer than ``seen_since``."""
    return int((await session.execute(_ALIVE_WORKERS, {"since": seen_since})).scalar_one())
