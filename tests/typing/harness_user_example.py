"""What a user's journey test looks like; type-checked with mypy --strict by a test.

Written as a user would: the journey and its test in plain user code, importing only
the public API (``hogsend`` and ``hogsend.testing``).
"""

from __future__ import annotations

from datetime import datetime

from hogsend import Contact, JourneyContext, days, define_journey, hours
from hogsend.testing import JourneyHarness, SentEmail, make_contact


@define_journey(
    id="trial-ending",
    name="Trial ending",
    trigger="trial.started",
    exit_on=["subscription.created"],
    suppress=hours(12),
)
async def trial_ending(contact: Contact, ctx: JourneyContext) -> None:
    plan: str = str(ctx.trigger_event.properties.get("plan", "pro"))
    await ctx.sleep(days(11))
    await ctx.send_email(template="trial-ending", props={"plan": plan, "days_left": 3})
    paid = await ctx.wait_for_event("subscription.created", timeout=days(3))
    if paid is None:
        await ctx.log("trial lapsed", plan=plan)


async def test_reminder_then_lapse() -> None:
    h = JourneyHarness(trial_ending)
    refused = await h.start(make_contact(email="ada@example.com"), properties={"plan": "team"})
    assert refused is None
    await h.advance(days(11))
    first: SentEmail = h.sent_emails[0]
    assert first.template == "trial-ending"
    assert first.props["plan"] == "team"
    sent_at: datetime = first.sent_at
    assert sent_at == h.now
    await h.advance(days(3))
    assert h.status == "completed"
    assert [log.step for log in h.logs][-2] == "log"


async def test_paying_exits() -> None:
    h = JourneyHarness(trial_ending)
    await h.start(make_contact())
    await h.advance(days(2))
    await h.emit("subscription.created", properties={"plan": "team"})
    assert h.status == "exited"
    assert h.exit_reason == "exit_on:subscription.created"
    assert h.sent_emails == []
