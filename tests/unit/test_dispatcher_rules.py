"""Dispatcher rules that need no database: backoff, consumer names, the registry."""

from __future__ import annotations

import random

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from hogsend.app import Hogsend
from hogsend.db.engine import make_async_engine
from hogsend.db.repos.outbox import NotifyThrottle
from hogsend.errors import DefinitionError, RegistrationClosedError
from hogsend.runtime.dispatcher import (
    DispatchedEvent,
    Dispatcher,
    add_extra_consumers,
    backoff_seconds,
    build_consumers,
)
from hogsend.settings import Settings


class Named:
    def __init__(self, name: str) -> None:
        self.name = name

    async def consume(self, event: DispatchedEvent, session: AsyncSession) -> None:
        return None


def test_backoff_doubles_with_jitter_in_the_upper_half_and_is_capped() -> None:
    rng = random.Random(1)
    for attempt, nominal in [(1, 2.0), (2, 4.0), (3, 8.0), (6, 64.0), (10, 100.0), (50, 100.0)]:
        delays = [backoff_seconds(attempt, base=2.0, maximum=100.0, rng=rng) for _ in range(200)]
        assert all(nominal / 2 <= d <= nominal for d in delays)
        assert max(delays) - min(delays) > nominal / 4  # actually jittered


def test_backoff_works_without_a_generator() -> None:
    assert 0.5 <= backoff_seconds(1, base=1.0, maximum=1.0) <= 1.0


def test_consumer_names_are_kebab_case_and_unique() -> None:
    engine = make_async_engine("postgresql://unused@127.0.0.1/unused")
    settings = Settings(env="test")
    Dispatcher(engine, settings, [Named("buckets"), Named("wake-ups")])
    with pytest.raises(DefinitionError, match="kebab-case"):
        Dispatcher(engine, settings, [Named("Wake Ups")])
    with pytest.raises(DefinitionError, match="used twice: buckets"):
        Dispatcher(engine, settings, [Named("buckets"), Named("buckets")])


def test_extra_consumers_come_after_the_built_in_ones_until_launch() -> None:
    app = Hogsend()
    assert build_consumers(app) == ()
    first, second = Named("first"), Named("second")
    add_extra_consumers(app, [first])
    add_extra_consumers(app, [second])
    assert build_consumers(app) == (first, second)
    assert build_consumers(Hogsend()) == ()
    app.launch()
    with pytest.raises(RegistrationClosedError):
        add_extra_consumers(app, [Named("late")])


def test_backoff_settings_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="BACKOFF_MAX_SECONDS"):
        Settings(env="test", dispatcher_backoff_base_seconds=10, dispatcher_backoff_max_seconds=1)


def test_notify_throttle_lets_one_through_per_interval() -> None:
    now = [100.0]
    throttle = NotifyThrottle(0.05, clock=lambda: now[0])
    assert throttle.due()
    assert not throttle.due()
    now[0] += 0.049
    assert not throttle.due()
    now[0] += 0.002
    assert throttle.due()
    assert not throttle.due()
