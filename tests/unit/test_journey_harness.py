"""JourneyHarness: realistic journeys on a virtual clock, against fakes."""

from __future__ import annotations

import asyncio
import time as real_time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hogsend import Contact, Hogsend, JourneyContext, days, define_journey, hours, minutes, where
from hogsend.errors import NoRecipient, TemplateNotFound
from hogsend.testing import (
    HarnessContext,
    HarnessError,
    JourneyExit,
    JourneyHarness,
    make_contact,
)

FRIDAY_EVENING_BERLIN = datetime(2026, 1, 9, 17, 0, tzinfo=UTC)  # 18:00 CET


def harness_ctx(ctx: JourneyContext) -> HarnessContext:
    # The bodies below use the extended operations of the pinned authoring API.
    assert isinstance(ctx, HarnessContext)
    return ctx


@define_journey(
    id="activation-welcome",
    name="Activation - welcome",
    trigger="user.created",
    exit_on=[
        "user.deleted",
        where.event("plan.upgraded").where(where.property("plan").equals("pro")).exists(),
    ],
    suppress=hours(12),
)
async def activation_welcome(contact: Contact, ctx: JourneyContext) -> None:
    c = harness_ctx(ctx)
    await ctx.send_email(template="welcome")
    await ctx.sleep(days(2))
    got = await ctx.wait_for_event(
        "feature.used",
        timeout=days(5),
        match={"projectId": ctx.trigger_event.properties["projectId"]},
        lookback=hours(1),
    )
    if got is None:
        await c.send_email(
            template="nudge", send_window=c.when().weekdays().between("09:00", "17:00")
        )
    else:
        await ctx.log("activated", feature=got.properties.get("feature"))


def ada(**changes: Any) -> Contact:
    return make_contact(email="ada@example.com", timezone="Europe/Berlin", **changes)


class TestWelcomeSeries:
    async def test_wait_times_out_and_the_nudge_goes_out(self) -> None:
        h = JourneyHarness(activation_welcome)
        assert await h.start(ada(), properties={"projectId": "p1"}) is None
        assert [e.template for e in h.sent_emails] == ["welcome"]
        assert h.status == "waiting"
        await h.advance(days(2))
        assert h.waiting_for == "feature.used"
        await h.advance(days(5) - minutes(1))
        assert [e.template for e in h.sent_emails] == ["welcome"]
        await h.advance(minutes(1))
        assert h.status == "completed"
        assert [e.template for e in h.sent_emails] == ["welcome", "nudge"]
        assert h.sent_emails[1].sent_at == datetime(2026, 1, 12, 9, 0, tzinfo=UTC)
        steps = [log.step for log in h.logs]
        assert steps.index("wait_for_event:timed_out") < len(steps) - 1

    async def test_the_awaited_event_ends_the_wait(self) -> None:
        h = JourneyHarness(activation_welcome)
        await h.start(ada(), properties={"projectId": "p1"})
        await h.advance(days(3))
        await h.emit("feature.used", properties={"projectId": "other"})  # no match
        assert h.status == "waiting"
        await h.emit("feature.used", properties={"projectId": "p1", "feature": "alerts"})
        assert h.status == "completed"
        assert [e.template for e in h.sent_emails] == ["welcome"]
        assert h.logs[-2].step == "log"
        assert h.logs[-2].detail == {"message": "activated", "feature": "alerts"}

    async def test_lookback_accepts_an_event_received_just_before_the_wait(self) -> None:
        h = JourneyHarness(activation_welcome)
        await h.start(ada(), properties={"projectId": "p1"})
        await h.advance(days(2) - minutes(30))
        await h.emit("feature.used", properties={"projectId": "p1"})
        await h.advance(minutes(30))
        assert h.status == "completed"
        assert [e.template for e in h.sent_emails] == ["welcome"]

    async def test_an_event_older_than_the_lookback_does_not_count(self) -> None:
        h = JourneyHarness(activation_welcome)
        await h.start(ada(), properties={"projectId": "p1"})
        await h.advance(hours(20))
        await h.emit("feature.used", properties={"projectId": "p1"})
        await h.advance(days(2))
        assert h.status == "waiting"
        assert h.waiting_for == "feature.used"

    async def test_templates_render_subject_and_address(self, tmp_path: Path) -> None:
        (tmp_path / "welcome.html").write_text(
            "{#---\nsubject: Welcome, {{ contact.properties.first_name }}\n---#}\n<p>Hi</p>\n"
        )
        (tmp_path / "nudge.html").write_text("{#---\nsubject: Still there?\n---#}\n<p>?</p>\n")
        h = JourneyHarness(activation_welcome, templates=tmp_path)
        await h.start(ada(properties={"first_name": "Ada"}), properties={"projectId": "p1"})
        sent = h.sent_emails[0]
        assert (sent.template, sent.subject, sent.to) == (
            "welcome",
            "Welcome, Ada",
            "ada@example.com",
        )
        assert sent.html is not None
        assert "Hi" in sent.html

    async def test_it_runs_in_milliseconds(self) -> None:
        began = real_time.perf_counter()
        for _ in range(20):
            h = JourneyHarness(activation_welcome)
            await h.start(ada(), properties={"projectId": "p1"})
            await h.run_until_done()
            assert h.status == "completed"
        assert (real_time.perf_counter() - began) / 20 < 0.05


class TestExits:
    async def test_exit_mid_sleep_sends_nothing_after(self) -> None:
        h = JourneyHarness(activation_welcome)
        await h.start(ada(), properties={"projectId": "p1"})
        await h.advance(days(1))
        await h.emit("user.deleted")
        assert (h.status, h.exit_reason) == ("exited", "exit_on:user.deleted")
        await h.advance(days(30))
        assert [e.template for e in h.sent_emails] == ["welcome"]
        assert h.wake_at is None

    async def test_exit_mid_wait_and_exit_filters(self) -> None:
        h = JourneyHarness(activation_welcome)
        await h.start(ada(), properties={"projectId": "p1"})
        await h.advance(days(3))
        await h.emit("plan.upgraded", properties={"plan": "team"})  # the filter says no
        assert h.status == "waiting"
        await h.emit("plan.upgraded", properties={"plan": "pro"})
        assert (h.status, h.exit_reason) == ("exited", "exit_on:plan.upgraded")
        await h.advance(days(10))
        assert len(h.sent_emails) == 1

    async def test_exit_while_a_send_waits_for_its_window(self) -> None:
        h = JourneyHarness(activation_welcome, start_at=datetime(2026, 1, 2, 8, 0, tzinfo=UTC))
        await h.start(ada(), properties={"projectId": "p1"})
        await h.advance(days(7))  # Friday 09:00 UTC, 10:00 CET: nudge would go now...
        assert [e.template for e in h.sent_emails] == ["welcome", "nudge"]
        h2 = JourneyHarness(activation_welcome, start_at=FRIDAY_EVENING_BERLIN - days(7))
        await h2.start(ada(), properties={"projectId": "p1"})
        await h2.advance(days(7))  # ...but at 18:00 it waits for Monday
        assert h2.status == "waiting"
        await h2.emit("user.deleted")
        await h2.advance(days(5))
        assert [e.template for e in h2.sent_emails] == ["welcome"]
        assert h2.send_attempts[-1].decision == "deferred"

    async def test_a_body_cannot_swallow_the_exit(self) -> None:
        sent_after: list[str] = []

        @define_journey(id="stubborn", name="Stubborn", trigger="go", exit_on=["stop"])
        async def stubborn(contact: Contact, ctx: JourneyContext) -> None:
            try:
                await ctx.sleep(days(1))
            except Exception:  # the point: this does not catch the exit
                sent_after.append("caught by except Exception")
            except BaseException:
                sent_after.append("swallowed")
            await ctx.send_email(template="after-exit")

        h = JourneyHarness(stubborn)
        await h.start(ada())
        await h.emit("stop")
        assert sent_after == ["swallowed"]
        assert h.status == "exited"
        assert h.sent_emails == []
        assert h.send_attempts == []

    async def test_exit_after_completion_changes_nothing(self) -> None:
        h = JourneyHarness(activation_welcome)
        await h.start(ada(), properties={"projectId": "p1"})
        await h.run_until_done()
        await h.emit("user.deleted")
        assert h.status == "completed"

    async def test_admin_cancel(self) -> None:
        h = JourneyHarness(activation_welcome)
        await h.start(ada(), properties={"projectId": "p1"})
        await h.cancel()
        assert (h.status, h.exit_reason) == ("exited", "admin_cancel")


@define_journey(id="digest", name="Digest", trigger="digest.ready", entry_limit="unlimited")
async def digest(contact: Contact, ctx: JourneyContext) -> None:
    c = harness_ctx(ctx)
    await c.send_email(template="digest", send_window=c.when().weekdays().between("09:00", "17:00"))


class TestSendWindows:
    async def test_friday_evening_defers_to_monday_nine_in_the_contact_zone(self) -> None:
        h = JourneyHarness(digest, start_at=FRIDAY_EVENING_BERLIN)
        await h.start(ada())
        assert h.sent_emails == []
        assert h.status == "waiting"
        assert h.wake_at == datetime(2026, 1, 12, 8, 0, tzinfo=UTC)  # Monday 09:00 CET
        await h.advance(days(3))
        assert h.sent_emails[0].sent_at == datetime(2026, 1, 12, 8, 0, tzinfo=UTC)
        assert [a.decision for a in h.send_attempts] == ["deferred", "sent"]
        assert h.status == "completed"

    async def test_the_zone_comes_from_the_contact_then_the_app_default(self) -> None:
        # Same instant, New York contact: 12:00 EST on a Friday is inside the window.
        h = JourneyHarness(digest, start_at=FRIDAY_EVENING_BERLIN)
        await h.start(make_contact(timezone="America/New_York"))
        assert len(h.sent_emails) == 1
        # No contact zone: the app default decides (Tokyo is already Saturday).
        tokyo = JourneyHarness(
            digest, start_at=FRIDAY_EVENING_BERLIN, default_timezone="Asia/Tokyo"
        )
        await tokyo.start(make_contact(properties={"timezone": "Not/AZone"}))
        assert tokyo.timezone.name == "Asia/Tokyo"
        assert tokyo.wake_at == datetime(2026, 1, 12, 0, 0, tzinfo=UTC)

    async def test_the_window_works_across_dst(self) -> None:
        friday = datetime(2026, 3, 27, 17, 0, tzinfo=UTC)  # 18:00 CET; Sunday jumps to CEST
        h = JourneyHarness(digest, start_at=friday)
        await h.start(ada())
        await h.run_until_done()
        assert h.sent_emails[0].sent_at == datetime(2026, 3, 30, 7, 0, tzinfo=UTC)


@define_journey(id="double", name="Double", trigger="go", suppress=hours(12))
async def double(contact: Contact, ctx: JourneyContext) -> None:
    await ctx.send_email(template="first")
    await ctx.send_email(template="second")
    await ctx.sleep(hours(12))
    await ctx.send_email(template="third")


class TestSuppressGap:
    async def test_a_send_inside_the_gap_is_capped_like_the_mailer_does(self) -> None:
        h = JourneyHarness(double)
        await h.start(ada())
        await h.run_until_done()
        assert [e.template for e in h.sent_emails] == ["first", "third"]
        capped = h.send_attempts[1]
        assert (capped.template, capped.decision) == ("second", "capped")
        assert capped.detail["rule"] == "journey_suppress"

    async def test_a_transactional_template_reaches_an_unsubscribed_contact(
        self, tmp_path: Path
    ) -> None:
        for key, category in (("first", "transactional"), ("second", "news"), ("third", "news")):
            (tmp_path / f"{key}.html").write_text(
                f"{{#---\nsubject: {key}\ncategory: {category}\n---#}}<p>{key}</p>"
            )
        h = JourneyHarness(double, templates=tmp_path, unsubscribed=True)
        await h.start(ada())
        await h.run_until_done()
        assert [e.template for e in h.sent_emails] == ["first"]
        assert [a.decision for a in h.send_attempts] == ["sent", "unsubscribed", "unsubscribed"]

    async def test_unsubscribed_contacts_get_nothing(self) -> None:
        h = JourneyHarness(double, unsubscribed=True)
        await h.start(ada())
        await h.run_until_done()
        assert h.sent_emails == []
        assert {a.decision for a in h.send_attempts} == {"unsubscribed"}
        assert h.status == "completed"


@define_journey(id="pricing-test", name="Pricing test", trigger="trial.started")
async def pricing_test(contact: Contact, ctx: JourneyContext) -> None:
    arm = await harness_ctx(ctx).variant("pricing-page", ["control", "discount"], [1, 1])
    await ctx.send_email(template=f"pricing-{arm}")


class TestVariants:
    async def test_assignment_is_stable_and_recorded(self) -> None:
        contact_id = UUID("0b6f1e2a-8f5e-4d8e-9a5e-2f1c3d4b5a69")
        arms = set()
        for _ in range(3):
            h = JourneyHarness(pricing_test)
            await h.start(make_contact(id=contact_id))
            arms.add(h.variants["pricing-page"])
            assert h.sent_emails[0].template == f"pricing-{h.variants['pricing-page']}"
        assert len(arms) == 1
        seen = set()
        for n in range(40):
            h = JourneyHarness(pricing_test)
            await h.start(make_contact(user_id=f"u{n}"))
            seen.add(h.variants["pricing-page"])
        assert seen == {"control", "discount"}


class TestEntryAndTrigger:
    async def test_entry_limit_once(self) -> None:
        h = JourneyHarness(activation_welcome)
        contact = ada()
        await h.start(contact, properties={"projectId": "p1"})
        assert await h.start(contact, properties={"projectId": "p1"}) == "already_entered_once"
        await h.run_until_done()
        assert await h.start(contact, properties={"projectId": "p1"}) == "already_entered_once"

    async def test_once_per_period_and_one_live_run(self) -> None:
        @define_journey(
            id="weekly",
            name="Weekly",
            trigger="visit",
            entry_limit="once_per_period",
            entry_period=days(7),
        )
        async def weekly(contact: Contact, ctx: JourneyContext) -> None:
            await ctx.sleep(days(1))
            await ctx.send_email(template="weekly")

        h = JourneyHarness(weekly)
        contact = ada()
        assert await h.start(contact) is None
        assert await h.start(contact) == "period_not_elapsed"
        await h.advance(days(7))
        assert h.status == "completed"
        assert await h.start(contact) is None
        await h.run_until_done()
        assert len(h.sent_emails) == 2

    async def test_trigger_filter_and_disabled(self) -> None:
        @define_journey(
            id="pro-only",
            name="Pro only",
            trigger=where.event("plan.changed")
            .where(where.property("plan").equals("pro"))
            .exists(),
        )
        async def pro_only(contact: Contact, ctx: JourneyContext) -> None:
            await ctx.send_email(template="pro")

        h = JourneyHarness(pro_only)
        contact = ada()
        assert await h.start(contact, properties={"plan": "free"}) == "trigger_filter"
        assert await h.start(contact, enabled=False) == "disabled"
        assert h.status == "not_started"
        assert await h.start(contact, properties={"plan": "pro"}) is None
        assert h.status == "completed"
        with pytest.raises(HarnessError, match="one contact"):
            await h.start(ada())


class TestHistoryAndClock:
    async def test_history_reads_recorded_and_emitted_events(self) -> None:
        seen: dict[str, object] = {}

        @define_journey(id="reader", name="Reader", trigger="go")
        async def reader(contact: Contact, ctx: JourneyContext) -> None:
            history = harness_ctx(ctx).history
            seen["purchases"] = await history.count("purchase")
            seen["recent"] = await history.has_event("purchase", within=days(7))
            last = await history.last("purchase")
            seen["last"] = last.properties["sku"] if last else None
            await ctx.sleep_until(datetime(2026, 1, 6, 9, 0, tzinfo=UTC))
            seen["woke"] = ctx.now()
            seen["later"] = await history.count("purchase")

        h = JourneyHarness(reader)
        h.record("purchase", {"sku": "a"}, at=datetime(2025, 11, 1, tzinfo=UTC))
        h.record("purchase", {"sku": "b"}, at=datetime(2025, 12, 1, tzinfo=UTC))
        await h.start(ada())
        assert seen == {"purchases": 2, "recent": False, "last": "b"}
        await h.emit("purchase", {"sku": "c"})
        await h.advance(days(1))
        assert seen["woke"] == datetime(2026, 1, 6, 9, 0, tzinfo=UTC)
        assert seen["later"] == 3

    async def test_sleep_until_the_past_still_passes_an_await_point(self) -> None:
        @define_journey(id="past", name="Past", trigger="go")
        async def past(contact: Contact, ctx: JourneyContext) -> None:
            await ctx.sleep_until(datetime(2020, 1, 1, tzinfo=UTC))
            await ctx.send_email(template="now")

        h = JourneyHarness(past)
        await h.start(ada())
        assert h.status == "completed"
        assert h.sent_emails[0].sent_at == h.now


class TestFailures:
    async def test_a_failing_body_is_failed_and_the_error_surfaces(self) -> None:
        @define_journey(id="broken", name="Broken", trigger="go")
        async def broken(contact: Contact, ctx: JourneyContext) -> None:
            await ctx.sleep(hours(1))
            raise RuntimeError("boom")

        h = JourneyHarness(broken)
        await h.start(ada())
        with pytest.raises(RuntimeError, match="boom"):
            await h.advance(hours(1))
        assert h.status == "failed"
        assert isinstance(h.error, RuntimeError)

    async def test_unknown_template_and_missing_address(self, tmp_path: Path) -> None:
        (tmp_path / "welcome.html").write_text("{#---\nsubject: Hi\n---#}\n<p>Hi</p>\n")
        h = JourneyHarness(activation_welcome, templates=tmp_path)
        await h.start(ada(), properties={"projectId": "p1"})
        with pytest.raises(TemplateNotFound):
            await h.run_until_done()
        assert h.status == "failed"
        nobody = JourneyHarness(activation_welcome)
        with pytest.raises(NoRecipient):
            await nobody.start(make_contact(email=None), properties={"projectId": "p1"})

    async def test_real_waits_are_refused(self) -> None:
        @define_journey(id="real-sleep", name="Real sleep", trigger="go")
        async def real_sleep(contact: Contact, ctx: JourneyContext) -> None:
            await asyncio.sleep(10)

        h = JourneyHarness(real_sleep)
        with pytest.raises(HarnessError, match="only await ctx"):
            await h.start(ada())
        assert h.status == "failed"

    async def test_a_bare_yield_is_not_a_wait(self) -> None:
        @define_journey(id="yielder", name="Yielder", trigger="go")
        async def yielder(contact: Contact, ctx: JourneyContext) -> None:
            await asyncio.sleep(0)
            await ctx.send_email(template="after-yield")

        h = JourneyHarness(yielder)
        await h.start(ada())
        assert h.status == "completed"
        assert len(h.sent_emails) == 1

    async def test_clock_only_moves_forward(self) -> None:
        h = JourneyHarness(digest)
        with pytest.raises(ValueError, match="forward"):
            await h.advance(-hours(1))
        with pytest.raises(HarnessError, match="start"):
            _ = h.contact


class TestAppTarget:
    def test_pick_a_journey_from_an_app(self) -> None:
        app = Hogsend(journeys=[activation_welcome, digest])
        assert JourneyHarness(app, journey="digest").journey is digest
        with pytest.raises(HarnessError, match="journey=<id>"):
            JourneyHarness(app)
        with pytest.raises(HarnessError, match="known: activation-welcome, digest"):
            JourneyHarness(app, journey="nope")
        assert JourneyHarness(Hogsend(journeys=[digest])).journey is digest

    def test_the_exit_signal_is_not_an_exception(self) -> None:
        assert issubclass(JourneyExit, BaseException)
        assert not issubclass(JourneyExit, Exception)


class TestMatchAndChunking:
    async def test_match_is_json_strict(self) -> None:
        @define_journey(id="strict", name="Strict", trigger="go")
        async def strict(contact: Contact, ctx: JourneyContext) -> None:
            got = await ctx.wait_for_event("paid", timeout=days(1), match={"amount": 1})
            await ctx.log("got", amount=None if got is None else got.properties["amount"])

        h = JourneyHarness(strict)
        await h.start(ada())
        await h.emit("paid", {"amount": True})
        await h.emit("paid", {"amount": "1"})
        await h.emit("paid", {})
        assert h.status == "waiting"
        await h.emit("paid", {"amount": 1.0})
        assert h.status == "completed"
        assert h.logs[-2].detail == {"message": "got", "amount": 1.0}


@settings(max_examples=30, deadline=None)
@given(steps=st.lists(st.integers(min_value=1, max_value=60 * 60 * 30), min_size=1, max_size=40))
async def test_how_time_is_advanced_does_not_change_what_happens(steps: list[int]) -> None:
    # One jump or many small ones: every wake-up happens at its own instant.
    whole = JourneyHarness(activation_welcome, start_at=FRIDAY_EVENING_BERLIN)
    await whole.start(ada(id=UUID(int=1)), properties={"projectId": "p1"})
    await whole.advance(days(10))
    chunked = JourneyHarness(activation_welcome, start_at=FRIDAY_EVENING_BERLIN)
    await chunked.start(ada(id=UUID(int=1)), properties={"projectId": "p1"})
    for seconds in steps:
        if chunked.now - FRIDAY_EVENING_BERLIN + timedelta(seconds=seconds) > days(10):
            break
        await chunked.advance(timedelta(seconds=seconds))
    await chunked.advance_to(FRIDAY_EVENING_BERLIN + days(10))
    assert chunked.sent_emails == whole.sent_emails
    assert [(log.at, log.step) for log in chunked.logs] == [
        (log.at, log.step) for log in whole.logs
    ]
    assert chunked.status == whole.status == "completed"


async def test_patched_takes_the_new_path_in_the_harness() -> None:
    @define_journey(id="patched-h", name="Patched", trigger="p.start")
    async def body(contact: Contact, ctx: JourneyContext) -> None:
        if await ctx.patched("new-log"):
            await ctx.log("new path")

    h = JourneyHarness(body)
    assert await h.start(make_contact(email="p@example.com")) is None
    assert [line.detail["message"] for line in h.logs if line.step == "log"] == ["new path"]
    assert h.status == "completed"
