"""The four journeys of examples/quickstart, each driven by JourneyHarness (virtual clock).

The harness renders with the example's own templates and props models, so a journey
passing props a template's model refuses fails here.
"""

from __future__ import annotations

from datetime import UTC, datetime

from examples.quickstart.app import app

from hogsend import days, hours, minutes
from hogsend.core.contact import Contact
from hogsend.testing import JourneyHarness, make_contact

MONDAY = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def ada() -> Contact:
    return make_contact(email="ada@example.com", properties={"first_name": "Ada"})


def templates(h: JourneyHarness) -> list[str]:
    return [e.template for e in h.sent_emails]


def test_the_app_ships_four_journeys_one_of_them_a_bucket_reaction() -> None:
    assert [j.id for j in app.journeys] == ["welcome", "trial-ending", "payment-recovery"]
    [reaction] = next(r for r in app.buckets if r.id == "lapsed").reactions
    assert reaction.journey_id == "bucket-lapsed-on-enter"
    assert app.check() == []


class TestWelcome:
    async def test_tips_after_two_days_and_a_nudge_without_a_project(self) -> None:
        h = JourneyHarness(app, journey="welcome")
        assert await h.start(ada()) is None
        assert templates(h) == ["welcome"]
        assert h.sent_emails[0].subject == "Welcome to Quickstart, Ada"
        await h.advance(days(2))
        assert templates(h) == ["welcome", "getting-started"]
        assert h.waiting_for == "project_created"
        await h.run_until_done()
        assert templates(h) == ["welcome", "getting-started", "nudge"]
        # Five days after Wednesday 09:00 is Monday 09:00: inside the weekday window.
        assert h.sent_emails[2].sent_at == MONDAY + days(7)
        assert h.status == "completed"

    async def test_a_project_created_means_no_nudge(self) -> None:
        h = JourneyHarness(app, journey="welcome")
        await h.start(ada())
        await h.advance(days(3))
        await h.emit("project_created")
        assert h.status == "completed"
        assert templates(h) == ["welcome", "getting-started"]


class TestTrialEnding:
    async def test_reminds_three_days_and_one_day_before_the_end(self) -> None:
        h = JourneyHarness(app, journey="trial-ending")
        ends = MONDAY + days(14)
        await h.start(ada(), properties={"trialEndsAt": ends.isoformat(), "plan": "Team"})
        assert templates(h) == []
        assert h.wake_at == ends - days(3)
        await h.run_until_done()
        assert templates(h) == ["trial-ending", "trial-ending"]
        first, last = h.sent_emails
        assert first.sent_at == ends - days(3)
        assert last.sent_at == ends - days(1)
        assert first.subject == "Your trial ends in 3 days"
        assert last.subject == "Your trial ends in 1 day"
        assert "Team trial" in (first.html or "")
        assert "January 19" in (first.html or "")

    async def test_an_evening_deadline_waits_for_working_hours(self) -> None:
        h = JourneyHarness(app, journey="trial-ending")
        ends = datetime(2026, 1, 12, 22, 30, tzinfo=UTC)
        await h.start(ada(), properties={"trialEndsAt": ends.isoformat()})
        await h.advance_to(ends - days(3))
        assert templates(h) == []  # 22:30 is outside 09:00-18:00: deferred
        await h.advance(hours(11))
        assert templates(h) == ["trial-ending"]
        assert h.sent_emails[0].sent_at == datetime(2026, 1, 10, 9, 0, tzinfo=UTC)

    async def test_subscribing_ends_the_journey(self) -> None:
        h = JourneyHarness(app, journey="trial-ending")
        await h.start(ada(), properties={"trialEndsAt": (MONDAY + days(14)).isoformat()})
        await h.advance(days(11) + minutes(1))
        assert templates(h) == ["trial-ending"]
        await h.emit("subscription_started")
        assert h.status == "exited"
        await h.advance(days(5))
        assert templates(h) == ["trial-ending"]

    async def test_without_an_end_date_the_trial_lasts_fourteen_days(self) -> None:
        h = JourneyHarness(app, journey="trial-ending")
        await h.start(ada())
        assert h.wake_at == MONDAY + days(11)


INVOICE = {
    "invoiceId": "in_42",
    "amount": "$49.00",
    "plan": "Pro",
    "cardLast4": "4242",
    "updateUrl": "https://example.com/billing/card",
}


class TestPaymentRecovery:
    async def test_unpaid_gets_a_last_notice_then_ends_unpaid(self) -> None:
        h = JourneyHarness(app, journey="payment-recovery")
        await h.start(ada(), properties=INVOICE)
        assert templates(h) == ["payment-failed"]
        assert "January 8" in (h.sent_emails[0].html or "")  # the retry date
        assert "4242" in (h.sent_emails[0].html or "")
        await h.emit("payment_succeeded", properties={"invoiceId": "in_other"})
        assert h.status == "waiting"  # another invoice's payment does not count
        await h.advance(days(3))
        assert templates(h) == ["payment-failed", "payment-final-notice"]
        assert h.sent_emails[1].subject == "Last reminder: update your card by January 12"
        await h.run_until_done()
        assert h.status == "completed"
        assert h.logs[-2].detail == {"message": "unpaid", "invoiceId": "in_42"}

    async def test_paying_the_invoice_stops_the_reminders(self) -> None:
        h = JourneyHarness(app, journey="payment-recovery")
        await h.start(ada(), properties=INVOICE)
        await h.advance(days(1))
        await h.emit("payment_succeeded", properties={"invoiceId": "in_42"})
        assert h.status == "completed"
        assert templates(h) == ["payment-failed"]
        assert h.logs[-2].detail == {"message": "recovered", "invoiceId": "in_42"}


class TestWinBack:
    async def test_entering_the_dormant_bucket_sends_an_offer_and_a_last_call(self) -> None:
        h = JourneyHarness(app, journey="bucket-lapsed-on-enter")
        assert h.journey.trigger == "bucket:entered:lapsed"
        await h.start(ada(), properties={"bucketId": "lapsed", "epoch": 1})
        assert templates(h) == ["win-back"]
        assert "20% off for a year" in (h.sent_emails[0].html or "")
        await h.run_until_done()
        assert templates(h) == ["win-back", "win-back"]
        assert "Last call" in (h.sent_emails[1].html or "")
        assert h.sent_emails[1].sent_at == MONDAY + days(7)

    async def test_coming_back_ends_it_after_the_first_email(self) -> None:
        h = JourneyHarness(app, journey="bucket-lapsed-on-enter")
        await h.start(ada(), properties={"bucketId": "lapsed", "epoch": 1})
        await h.advance(days(2))
        await h.emit("app.opened")
        assert h.status == "completed"
        assert templates(h) == ["win-back"]
