"""The interface a journey body talks to. The durable implementation lives in runtime/."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, Protocol

from hogsend.core.contact import Event


class JourneyContext(Protocol):
    """Durable operations available to a journey body; each call is one recorded step."""

    @property
    def trigger_event(self) -> Event:
        """The event that enrolled the contact."""
        ...

    def now(self) -> datetime:
        """The current time (virtual in the test harness), timezone-aware UTC."""
        ...

    async def sleep(self, duration: timedelta) -> None:
        """Wait durably for ``duration``."""
        ...

    async def sleep_until(self, when: datetime) -> None:
        """Wait durably until ``when``."""
        ...

    async def send_email(
        self,
        *,
        template: str,
        props: Mapping[str, Any] | None = None,
        subject: str | None = None,
    ) -> None:
        """Send ``template`` to the contact through the gated mailer."""
        ...

    async def wait_for_event(
        self,
        name: str,
        *,
        timeout: timedelta,
        match: Mapping[str, Any] | None = None,
        lookback: timedelta | None = None,
    ) -> Event | None:
        """Wait for the contact's next ``name`` event; None on timeout."""
        ...

    async def log(self, message: str, **fields: Any) -> None:
        """Record a line in the run's step log."""
        ...
