"""Bucket reactions as journey definitions (hogsend.core.reactions): pure, no database."""

from __future__ import annotations

from pathlib import Path

import pytest

from hogsend import Contact, Hogsend, JourneyContext, days, define_bucket, define_journey, where
from hogsend.core.enrollment import spec_event, spec_matches
from hogsend.core.reactions import all_journeys, reaction_journeys
from hogsend.errors import DefinitionError
from hogsend.testing import JourneyHarness, make_contact


def test_each_reaction_becomes_a_journey_on_its_transition_event() -> None:
    bucket = define_bucket(
        id="trial", name="Trial", criteria=where.property("plan").equals("trial")
    )

    @bucket.on_enter(first_entry_only=True)
    async def entered(contact: Contact, ctx: JourneyContext) -> None:
        """Hello."""

    @bucket.on_leave(reason=["criteria", "maxDwell"])
    async def left(contact: Contact, ctx: JourneyContext) -> None:
        await ctx.log("bye")

    @bucket.on_dwell(every=days(7))
    async def weekly(contact: Contact, ctx: JourneyContext) -> None:
        await ctx.log("week")

    enter, leave, dwell = reaction_journeys([bucket])
    assert [j.id for j in (enter, leave, dwell)] == [
        "bucket-trial-on-enter",
        "bucket-trial-on-leave",
        "bucket-trial-on-dwell-every-7d",
    ]
    assert {j.bucket_id for j in (enter, leave, dwell)} == {"trial"}
    assert {j.entry_limit for j in (enter, leave, dwell)} == {"unlimited"}
    assert enter.body is entered
    assert enter.description == "Hello."
    assert enter.name == "Trial: on enter"
    assert dwell.name == "Trial: on dwell (every-7d)"
    assert spec_event(enter.trigger) == "bucket:entered:trial"
    assert spec_event(leave.trigger) == "bucket:left:trial"
    assert dwell.trigger == "bucket:dwell:trial:every-7d"
    # first_entry_only reads the epoch; on_leave(reason=...) the reason.
    assert spec_matches(enter.trigger, "bucket:entered:trial", {"epoch": 1})
    assert not spec_matches(enter.trigger, "bucket:entered:trial", {"epoch": 2})
    assert spec_matches(leave.trigger, "bucket:left:trial", {"reason": "maxDwell"})
    assert not spec_matches(leave.trigger, "bucket:left:trial", {"reason": "manual"})


def test_an_id_used_by_a_journey_and_a_reaction_is_refused() -> None:
    bucket = define_bucket(id="vips", name="VIPs", kind="manual")

    @bucket.on_enter()
    async def hello(contact: Contact, ctx: JourneyContext) -> None:
        await ctx.log("hi")

    @define_journey(id="bucket-vips-on-enter", name="Mine", trigger="x")
    async def mine(contact: Contact, ctx: JourneyContext) -> None:
        await ctx.log("mine")

    with pytest.raises(DefinitionError, match="bucket-vips-on-enter"):
        all_journeys([mine], [bucket])
    with pytest.raises(DefinitionError, match="bucket-vips-on-enter"):
        Hogsend(journeys=[mine], buckets=[bucket]).launch()


def test_check_reports_a_reaction_sending_an_unknown_template(tmp_path: Path) -> None:
    (tmp_path / "hello.html").write_text("{#---\nsubject: Hi\n---#}\n<p>Hi</p>\n")
    bucket = define_bucket(id="vips", name="VIPs", kind="manual")

    @bucket.on_enter()
    async def hello(contact: Contact, ctx: JourneyContext) -> None:
        await ctx.send_email(template="missing")

    problems = [str(p) for p in Hogsend(buckets=[bucket], templates=tmp_path).check()]
    assert problems == [
        "journey bucket-vips-on-enter: sends unknown template 'missing' "
        f"(no missing.html or missing.mjml in {tmp_path})"
    ]


async def test_the_harness_runs_a_reaction_by_its_journey_id() -> None:
    bucket = define_bucket(id="vips", name="VIPs", kind="manual")

    @bucket.on_enter(first_entry_only=True)
    async def hello(contact: Contact, ctx: JourneyContext) -> None:
        await ctx.log("hi", epoch=ctx.trigger_event.properties["epoch"])

    app = Hogsend(buckets=[bucket])
    h = JourneyHarness(app, journey="bucket-vips-on-enter")
    assert await h.start(make_contact(), properties={"epoch": 2}) == "trigger_filter"
    assert await h.start(make_contact(id=h.contact.id), properties={"epoch": 1}) is None
    assert h.status == "completed"
    assert h.logs[-2].detail == {"message": "hi", "epoch": 1}
