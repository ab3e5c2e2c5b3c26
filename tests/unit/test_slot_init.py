"""slot_init: the same construction as the dataclass's own ``__init__``, only faster."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime
from uuid import uuid4

import pytest

from hogsend.core.contact import Contact
from hogsend.core.identity import Identity, IdentityError, ResolutionPlan
from hogsend.core.ingest import EventInput, IngestResult
from hogsend.core.slot_init import slot_init


def _twins() -> tuple[type, type]:
    def make() -> type:
        @dataclass(frozen=True, slots=True, kw_only=True)
        class Item:
            name: str
            count: int = 0
            tags: list[str] = field(default_factory=list)
            derived: tuple[str, ...] = field(default=(), init=False)
            hidden: dict[str, int] = field(default_factory=dict, init=False)

            def __post_init__(self) -> None:
                if not self.name:
                    raise ValueError("name")
                object.__setattr__(self, "derived", (self.name,) * self.count)

        return Item

    return make(), slot_init(make())


def _values(obj: object) -> dict[str, object]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [{"name": "a"}, {"name": "b", "count": 2}, {"name": "c", "tags": ["x"], "count": 1}],
)
def test_same_values_as_the_generated_init(kwargs: dict[str, object]) -> None:
    generated, fast = _twins()
    assert _values(fast(**kwargs)) == _values(generated(**kwargs))


def test_factories_give_fresh_objects_and_post_init_runs() -> None:
    _, fast = _twins()
    one, two = fast(name="a"), fast(name="a")
    assert one.tags == []
    assert one.tags is not two.tags
    assert one.hidden == {}
    assert one.hidden is not two.hidden
    with pytest.raises(ValueError, match="name"):
        fast(name="")


def test_same_errors_for_bad_calls() -> None:
    _, fast = _twins()
    with pytest.raises(TypeError):
        fast()  # the required field
    with pytest.raises(TypeError):
        fast("a")  # keyword-only
    with pytest.raises(TypeError):
        fast(name="a", derived=("x",))  # init=False
    with pytest.raises(TypeError):
        fast(name="a", unknown=1)


def test_instances_stay_frozen_and_comparable() -> None:
    _, fast = _twins()
    item = fast(name="a", count=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        item.name = "b"
    assert item == fast(name="a", count=1)
    assert dataclasses.replace(item, count=2).derived == ("a", "a")


def test_refuses_what_it_cannot_build() -> None:
    @dataclass(slots=True, kw_only=True)
    class Mutable:
        name: str

    @dataclass(frozen=True, kw_only=True)
    class NoSlots:
        name: str

    @dataclass(frozen=True, slots=True)
    class Positional:
        name: str

    for cls in (Mutable, NoSlots, Positional):
        with pytest.raises(TypeError):
            slot_init(cls)


def test_the_ingest_classes_behave_as_before() -> None:
    identity = Identity(user_id="  u-1 ", email=" Ann@Example.COM")
    assert (identity.user_id, identity.email) == ("u-1", "Ann@example.com")
    assert [k.kind for k in identity.keys] == ["external", "email"]
    assert hash(identity) == hash(Identity(user_id="u-1", email="Ann@example.com"))
    with pytest.raises(IdentityError):
        Identity(user_id="  ")
    when = datetime(2026, 1, 31, tzinfo=UTC)
    item = EventInput(name="signed_up", identity=identity, occurred_at=when)
    assert item.properties == {}
    assert item.source == "api"
    assert item.lists is None
    with pytest.raises(ValueError, match="exactly one"):
        EventInput(name="x")
    with pytest.raises(ValueError, match="timezone-aware"):
        EventInput(name="x", identity=identity, occurred_at=datetime(2026, 1, 31))
    contact = Contact(id=uuid4(), key="u-1")
    assert contact.properties == {}
    assert contact.deleted_at is None
    assert Contact(id=contact.id, key="u-1").properties is not contact.properties
    plan = ResolutionPlan(action="match", target=contact)
    assert (plan.losers, plan.attach, plan.conflicts, plan.linked) == ((), (), (), False)
    assert IngestResult(status="stored").conflicts == ()
