"""Bucket definitions: reactions, labels, validation at definition and at Hogsend(...)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from hogsend import Hogsend, days, define_bucket, hours, where
from hogsend.core.buckets import Transition, dwell_interval
from hogsend.core.definitions import BucketDefinition, bucket_cycle, duration_label
from hogsend.errors import DefinitionError, RegistrationClosedError


async def handler(contact: object, ctx: object) -> None:
    return None


def active() -> BucketDefinition:
    return define_bucket(id="active", name="Active", criteria=where.event("app.opened").exists())


def test_reactions_register_with_default_labels() -> None:
    bucket = active()
    assert bucket.on_enter()(handler) is handler
    bucket.on_leave(reason="maxDwell")(handler)
    bucket.on_dwell(after=days(3))(handler)
    bucket.on_dwell(every=days(7))(handler)
    bucket.on_dwell(every=hours(36), label="day-and-a-half")(handler)
    kinds = [(r.kind, r.label, r.event, r.journey_id) for r in bucket.reactions]
    assert kinds == [
        ("enter", None, "bucket:entered:active", "bucket-active-on-enter"),
        ("leave", None, "bucket:left:active", "bucket-active-on-leave"),
        ("dwell", "after-3d", "bucket:dwell:active:after-3d", "bucket-active-on-dwell-after-3d"),
        ("dwell", "every-7d", "bucket:dwell:active:every-7d", "bucket-active-on-dwell-every-7d"),
        (
            "dwell",
            "day-and-a-half",
            "bucket:dwell:active:day-and-a-half",
            "bucket-active-on-dwell-day-and-a-half",
        ),
    ]
    assert bucket.reactions[1].reasons == ("maxDwell",)
    assert [r.label for r in bucket.dwell_schedules] == ["after-3d", "every-7d", "day-and-a-half"]
    assert bucket.entered == "bucket:entered:active"
    assert bucket.left == "bucket:left:active"


@pytest.mark.parametrize(
    ("value", "label"),
    [
        (days(3), "3d"),
        (hours(36), "36h"),
        (timedelta(minutes=90), "90m"),
        (timedelta(seconds=45), "45s"),
        (timedelta(seconds=1.5), "1500ms"),
    ],
)
def test_duration_labels(value: timedelta, label: str) -> None:
    assert duration_label(value) == label


def test_reaction_mistakes_name_the_bucket() -> None:
    bucket = active()
    with pytest.raises(DefinitionError, match="'active': on_dwell needs exactly one"):
        bucket.on_dwell()
    with pytest.raises(DefinitionError, match="exactly one"):
        bucket.on_dwell(after=days(1), every=days(1))
    with pytest.raises(DefinitionError, match="must be positive"):
        bucket.on_dwell(after=timedelta(0))
    with pytest.raises(DefinitionError, match="reason 'expired'"):
        bucket.on_leave(reason="expired")  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="must be an async function"):
        bucket.on_enter()(lambda c, x: None)  # type: ignore[arg-type,return-value]
    bucket.on_enter()(handler)
    with pytest.raises(DefinitionError, match="on_enter is registered twice"):
        bucket.on_enter()(handler)
    bucket.on_dwell(after=days(1))(handler)
    with pytest.raises(DefinitionError, match="dwell label 'after-1d' is registered twice"):
        bucket.on_dwell(after=days(1))(handler)


def test_reactions_close_at_launch() -> None:
    bucket = active()
    app = Hogsend(buckets=[bucket])
    app.launch()
    with pytest.raises(RegistrationClosedError, match="'active'"):
        bucket.on_enter()(handler)


def test_bucket_validation_messages() -> None:
    with pytest.raises(DefinitionError, match="'b' needs criteria"):
        define_bucket(id="b", name="B", kind="criteria")
    with pytest.raises(DefinitionError, match="manual and cannot have criteria"):
        define_bucket(id="b", name="B", kind="manual", criteria=where.event("x").exists())
    with pytest.raises(DefinitionError, match="max_dwell is shorter"):
        define_bucket(
            id="b",
            name="B",
            criteria=where.event("x").exists(),
            min_dwell=days(2),
            max_dwell=days(1),
        )
    with pytest.raises(DefinitionError, match="min_dwell must be positive"):
        define_bucket(id="b", name="B", criteria=where.event("x").exists(), min_dwell=timedelta(0))
    with pytest.raises(DefinitionError, match="entry_limit"):
        define_bucket(id="b", name="B", criteria=where.event("x").exists(), entry_limit=0)
    with pytest.raises(DefinitionError, match="time_based=False"):
        define_bucket(
            id="b", name="B", criteria=where.event("x").within(days(1)).exists(), time_based=False
        )
    with pytest.raises(DefinitionError, match="fast_expiry needs"):
        define_bucket(id="b", name="B", criteria=where.event("x").exists(), fast_expiry=True)
    with pytest.raises(DefinitionError, match="own transition events"):
        define_bucket(id="b", name="B", criteria=where.event("bucket:left:b").exists())
    # Hand-built definitions are checked when the app registers them.
    with pytest.raises(DefinitionError, match="'h' needs criteria"):
        Hogsend(buckets=[BucketDefinition(id="h", name="H")])


def test_time_based_is_inferred() -> None:
    assert not active().is_time_based
    windowed = define_bucket(id="w", name="W", criteria=where.event("x").within(days(1)).exists())
    assert windowed.is_time_based
    explicit = define_bucket(id="e", name="E", criteria=where.event("x").exists(), time_based=True)
    assert explicit.is_time_based
    assert not define_bucket(id="m", name="M").is_time_based


def test_cycles_between_buckets_are_refused_at_launch() -> None:
    a = define_bucket(id="a", name="A", criteria=where.event("bucket:entered:b").exists())
    b = define_bucket(id="b", name="B", criteria=where.event("bucket:left:a").not_exists())
    c = define_bucket(id="c", name="C", criteria=where.event("bucket:entered:a").exists())
    assert bucket_cycle([a, c]) is None
    assert bucket_cycle([a, b, c]) == ["a", "b", "a"]
    app = Hogsend(buckets=[a, b, c])
    assert any("cycle" in str(p) for p in app.check())
    with pytest.raises(DefinitionError, match="a -> b -> a"):
        app.launch()


def test_transition_names_keys_and_properties() -> None:
    contact = uuid.UUID("00000000-0000-0000-0000-000000000001")
    at = datetime(2026, 1, 1, tzinfo=UTC)
    joined = Transition(kind="entered", bucket_id="vip", contact_id=contact, epoch=2, entered_at=at)
    assert joined.event == "bucket:entered:vip"
    assert joined.idempotency_key == f"bucket:entered:vip:{contact}:2"
    left = Transition(
        kind="left", bucket_id="vip", contact_id=contact, epoch=2, entered_at=at, reason="maxDwell"
    )
    assert left.idempotency_key == f"bucket:left:vip:{contact}:2"
    assert left.properties() == {
        "bucketId": "vip",
        "epoch": 2,
        "enteredAt": at.isoformat(),
        "reason": "maxDwell",
    }
    dwell = Transition(
        kind="dwell",
        bucket_id="vip",
        contact_id=contact,
        epoch=3,
        entered_at=at,
        label="every-7d",
        interval=4,
    )
    assert dwell.event == "bucket:dwell:vip:every-7d"
    assert dwell.idempotency_key == f"bucket:dwell:vip:every-7d:{contact}:3:4"
    with pytest.raises(ValueError, match="reason"):
        Transition(kind="left", bucket_id="vip", contact_id=contact, epoch=1, entered_at=at)
    with pytest.raises(ValueError, match="epoch"):
        Transition(kind="entered", bucket_id="vip", contact_id=contact, epoch=0, entered_at=at)
    with pytest.raises(ValueError, match="interval"):
        Transition(
            kind="entered", bucket_id="v", contact_id=contact, epoch=1, entered_at=at, interval=1
        )


def test_dwell_interval_coalesces() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    assert dwell_interval(at, at, days(7)) == 0
    assert dwell_interval(at, at + days(6), days(7)) == 0
    assert dwell_interval(at, at + days(7), days(7)) == 1
    assert dwell_interval(at, at + days(30), days(7)) == 4


def test_reaction_ids_must_not_clash_with_journeys() -> None:
    from hogsend import define_journey

    bucket = active()
    bucket.on_enter()(handler)

    @define_journey(id="bucket-active-on-enter", name="Clash", trigger="x")
    async def clash(contact: object, ctx: object) -> None:
        return None

    app = Hogsend(buckets=[bucket], journeys=[clash])
    assert [str(p) for p in app.check()] == [
        "journey bucket-active-on-enter: id also used by a bucket reaction"
    ]
    with pytest.raises(DefinitionError, match="bucket-active-on-enter"):
        app.launch()
