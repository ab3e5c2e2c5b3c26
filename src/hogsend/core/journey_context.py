"""The interface a journey body talks to. The durable implementation lives in runtime/.

:class:`JourneyContext` is the contract shared by the DBOS runtime
(``hogsend.runtime.journeys``) and the test harness (``hogsend.testing``): a journey body
only awaits these operations, and each one is a recorded, durable step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

from hogsend.core.contact import Contact, Event
from hogsend.core.mailer_gates import SendWindow
from hogsend.core.send_windows import SendWindowBuilder

# The fluent send-window builder ``ctx.when()`` returns (one definition, shared with the
# mailer's gate and the test harness).
When = SendWindowBuilder


class JourneyHistory(Protocol):
    """The contact's stored events, read durably (``ctx.history``)."""

    async def has_event(self, name: str, *, within: timedelta | None = None) -> bool:
        """Whether the contact has a ``name`` event (in the last ``within``)."""
        ...

    async def count(self, name: str, *, within: timedelta | None = None) -> int:
        """How many ``name`` events the contact has (in the last ``within``)."""
        ...

    async def last(self, name: str) -> Event | None:
        """The contact's latest ``name`` event, if any."""
        ...


class JourneyContext(Protocol):
    """Durable operations available to a journey body; each call is one recorded step."""

    @property
    def trigger_event(self) -> Event:
        """The event that enrolled the contact."""
        ...

    @property
    def history(self) -> JourneyHistory:
        """The contact's event history."""
        ...

    def now(self) -> datetime:
        """The current time (virtual in the test harness), timezone-aware UTC."""
        ...

    def when(self) -> When:
        """Start a send window (``ctx.when().weekdays().between("09:00", "17:00")``)."""
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
        send_window: When | SendWindow | None = None,
    ) -> None:
        """Send ``template`` to the contact through the gated mailer.

        Outside ``send_window`` the run waits durably until it opens, then sends.
        """
        ...

    async def wait_for_event(
        self,
        name: str,
        *,
        timeout: timedelta,
        match: Mapping[str, Any] | None = None,
        lookback: timedelta | None = None,
    ) -> Event | None:
        """Wait for the contact's next ``name`` event; None on timeout.

        ``match`` keeps only events whose properties have these values; ``lookback``
        also accepts a matching event stored up to that long before the wait began.
        """
        ...

    async def enroll(self, journey_id: str, contact: Contact) -> bool:
        """Enroll ``contact`` in journey ``journey_id`` (guards apply); whether it started."""
        ...

    async def variant(
        self, test_id: str, variants: Sequence[str], weights: Sequence[float] | None = None
    ) -> str:
        """The contact's variant of test ``test_id`` (deterministic, recorded in the log)."""
        ...

    async def log(self, message: str, **fields: Any) -> None:
        """Record a line in the run's step log."""
        ...

    async def patched(self, name: str) -> bool:
        """Whether this run takes the new code of a change named ``name``.

        Guards an edit made while runs wait (docs/journeys.md, "Changing a live
        journey"): True for runs that reach this point under the new code, False for
        runs that had already passed it (they replay the old path).
        """
        ...
