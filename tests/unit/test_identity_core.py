"""The pure identity rules: normalisation, survivor choice, property merges, resolution plans."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hogsend.core.contact import Contact
from hogsend.core.identity import (
    MAX_EMAIL_LENGTH,
    MAX_ID_LENGTH,
    Identity,
    IdentityConflict,
    IdentityError,
    IdentityKey,
    ResolutionPlan,
    checked_ids_identity,
    choose_survivor,
    contact_value,
    email_key,
    fold_properties,
    merge_properties,
    normalize_email,
    normalize_id,
    order_for_merge,
    plan_merge,
    plan_resolution,
    resolved_key,
)
from hogsend.core.ingest import EventInput, IngestResult, ItemResult
from hogsend.core.pagination import InvalidCursor, Page, decode_cursor, encode_cursor, page_of
from hogsend.errors import HogsendError

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def contact(
    *,
    user_id: str | None = None,
    email: str | None = None,
    anonymous_id: str | None = None,
    first_seen: datetime | None = T0,
    properties: dict[str, object] | None = None,
    ident: str | None = None,
) -> Contact:
    cid = uuid.UUID(ident) if ident else uuid.uuid4()
    return Contact(
        id=cid,
        key=resolved_key(user_id, anonymous_id, cid),
        user_id=user_id,
        email=email,
        anonymous_id=anonymous_id,
        first_seen_at=first_seen,
        properties=properties or {},
    )


# --------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(None, None), ("", None), ("   ", None), (" u-1 ", "u-1"), ("Ünïcode id", "Ünïcode id")],
)
def test_ids_are_trimmed_and_blank_is_absent(raw: str | None, expected: str | None) -> None:
    assert normalize_id(raw) == expected


def test_ids_that_are_too_long_or_hold_control_characters_are_refused() -> None:
    assert normalize_id("x" * MAX_ID_LENGTH) == "x" * MAX_ID_LENGTH
    with pytest.raises(IdentityError, match="longer than") as too_long:
        normalize_id("x" * (MAX_ID_LENGTH + 1), field="anonymous_id")
    assert too_long.value.field == "anonymous_id"
    with pytest.raises(IdentityError, match="control characters"):
        normalize_id("a\x00b")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, None),
        ("  ", None),
        (" Ann.Lee@Example.COM ", "Ann.Lee@example.com"),
        ("a+tag@sub.example.co.uk", "a+tag@sub.example.co.uk"),
        ("JOSÉ@BÜCHER.DE", "JOSÉ@bücher.de"),
    ],
)
def test_emails_are_trimmed_with_the_domain_lower_cased(
    raw: str | None, expected: str | None
) -> None:
    assert normalize_email(raw) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("a" * 250 + "@x.io", "longer than 254"),
        ("a b@x.io", "whitespace"),
        ("a\x07@x.io", "control"),
        ("plainaddress", "exactly one @"),
        ("a@b@x.io", "exactly one @"),
        ("@x.io", "nothing before"),
        ("a" * 65 + "@x.io", "local part is longer"),
        ("<a>@x.io", "characters like"),
        ('"a"@x.io', "characters like"),
        (".a@x.io", "misplaced dot"),
        ("a.@x.io", "misplaced dot"),
        ("a..b@x.io", "misplaced dot"),
        ("a@", "nothing after"),
        ("a@localhost", "no dot"),
        ("a@x..io", "empty label"),
        ("a@" + "x" * 64 + ".io", "over 63"),
        ("a@-x.io", "starting or ending"),
        ("a@x-.io", "starting or ending"),
        ("a@x_y.io", "invalid characters"),
    ],
)
def test_obviously_invalid_emails_are_refused_with_a_reason(raw: str, reason: str) -> None:
    with pytest.raises(IdentityError, match=reason) as caught:
        normalize_email(raw)
    assert caught.value.field == "email"
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, HogsendError)
    assert caught.value.code == "invalid-identity"


def test_the_longest_allowed_email_passes() -> None:
    address = "a" * 64 + "@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 57 + ".io"
    assert len(address) == MAX_EMAIL_LENGTH - 1
    assert normalize_email(address) == address


@given(st.emails())
def test_normalising_an_email_is_idempotent(address: str) -> None:
    once = normalize_email(address)
    assert once is not None
    assert normalize_email(once) == once
    assert email_key(once) == once.lower()


def test_resolved_key_prefers_user_id_then_anonymous_id_then_contact_id() -> None:
    cid = uuid.uuid4()
    assert resolved_key("u", "a", cid) == "u"
    assert resolved_key(None, "a", cid) == "a"
    assert resolved_key(None, None, cid) == str(cid)


# --------------------------------------------------------------------------- Identity


def test_identity_normalises_and_lists_its_keys_in_a_fixed_order() -> None:
    identity = Identity(anonymous_id=" an ", email="X@Y.IO", user_id=" u ")
    assert (identity.user_id, identity.email, identity.anonymous_id) == ("u", "X@y.io", "an")
    assert identity.keys == (
        IdentityKey("external", "u"),
        IdentityKey("email", "X@y.io"),
        IdentityKey("anonymous", "an"),
    )
    assert identity.get("email") == "X@y.io"
    assert identity.signature == ("u", "x@y.io", "an")
    assert IdentityKey("email", "X@y.io").lock_name == "email:X@y.io"
    assert Identity(email="x@y.io").signature == (None, "x@y.io", None)


def test_identity_needs_at_least_one_key() -> None:
    with pytest.raises(IdentityError, match="at least one") as caught:
        Identity(user_id="  ", anonymous_id="")
    assert caught.value.field == "identity"
    with pytest.raises(IdentityError):
        Identity()


def test_contact_value_reads_each_slot() -> None:
    c = contact(user_id="u", email="e@x.io", anonymous_id="a")
    assert [contact_value(c, k) for k in ("external", "email", "anonymous")] == [
        "u",
        "e@x.io",
        "a",
    ]


# --------------------------------------------------------------------------- survivor


def test_identified_beats_email_beats_anonymous_regardless_of_age() -> None:
    anon = contact(anonymous_id="a", first_seen=T0 - timedelta(days=9))
    mail = contact(email="e@x.io", first_seen=T0 - timedelta(days=5))
    user = contact(user_id="u", first_seen=T0)
    assert order_for_merge([anon, mail, user]) == [user, mail, anon]
    assert choose_survivor([anon, mail]) is mail


def test_then_the_oldest_then_the_lowest_id() -> None:
    low = "00000000-0000-4000-8000-000000000001"
    high = "ffffffff-0000-4000-8000-000000000001"
    older = contact(user_id="u1", first_seen=T0 - timedelta(days=1), ident=high)
    newer = contact(user_id="u2", ident=low)
    assert choose_survivor([newer, older]) is older
    tie_high = contact(user_id="u3", ident=high)
    tie_low = contact(user_id="u4", ident=low)
    assert choose_survivor([tie_high, tie_low]) is tie_low
    unknown_age = contact(user_id="u5", first_seen=None, ident=low)
    assert choose_survivor([unknown_age, tie_high]) is tie_high
    assert (
        order_for_merge([unknown_age, contact(user_id="u6", first_seen=None, ident=high)])[0]
        is unknown_age
    )


def test_choose_survivor_needs_someone() -> None:
    with pytest.raises(ValueError, match="at least one"):
        choose_survivor([])


# --------------------------------------------------------------------------- properties


def test_merge_properties_is_shallow_the_patch_wins_and_none_deletes() -> None:
    base = {"a": 1, "nested": {"x": 1}, "gone": 2, "stale": None}
    assert merge_properties(base, {"nested": {"y": 2}, "gone": None, "new": 3}) == {
        "a": 1,
        "nested": {"y": 2},
        "new": 3,
    }
    assert merge_properties(base, None) == {"a": 1, "nested": {"x": 1}, "gone": 2}
    assert merge_properties({}, {"only": None}) == {}


def test_fold_properties_survivor_over_losers_and_the_patch_over_all() -> None:
    survivor = contact(user_id="u", properties={"plan": "pro", "s": 1})
    best_loser = contact(email="e@x.io", properties={"plan": "free", "l": "email", "b": 1})
    worst_loser = contact(anonymous_id="a", properties={"l": "anon", "w": 1})
    folded = fold_properties(survivor, [worst_loser, best_loser], {"s": None, "p": True})
    assert folded == {"plan": "pro", "l": "email", "b": 1, "w": 1, "p": True}


# --------------------------------------------------------------------------- plans


def test_no_known_key_plans_a_create_with_every_key() -> None:
    identity = Identity(user_id="u", email="e@x.io")
    plan = plan_resolution(identity, {})
    assert plan == ResolutionPlan(action="create", attach=identity.keys)
    assert not plan.linked
    with pytest.raises(ValueError, match="no target"):
        plan.key_after()


def test_a_contact_already_holding_every_key_is_a_plain_match() -> None:
    c = contact(user_id="u", email="e@x.io")
    identity = Identity(user_id="u", email="E@x.io")
    plan = plan_resolution(identity, {k: c for k in identity.keys})
    assert plan.action == "match"
    assert plan.target is c
    assert not plan.linked
    assert plan.attach == ()
    assert plan.conflicts == ()
    assert plan.key_after() == "u"


def test_one_key_plans_as_the_general_rules_do() -> None:
    # One key takes a shortcut; it must decide what the rules for several keys decide.
    holder = contact(user_id="u", email="e@x.io")
    known = Identity(user_id="u")
    assert plan_resolution(known, {known.keys[0]: holder}) == ResolutionPlan(
        action="match", target=holder
    )
    assert plan_resolution(Identity(email="new@x.io"), {}) == ResolutionPlan(
        action="create", attach=Identity(email="new@x.io").keys
    )
    # Known only through an alias, on a contact whose slot is empty: the key is attached.
    aliased = contact(anonymous_id="a")
    by_alias = Identity(user_id="old-id")
    plan = plan_resolution(by_alias, {by_alias.keys[0]: aliased})
    assert plan.action == "link"
    assert plan.target is aliased
    assert plan.attach == by_alias.keys


_PLAN_VALUES = st.sampled_from(["u", "v", "a@x.io", "b@x.io", "w"])
_PLAN_CONTACTS = [
    contact(user_id="u", ident="00000000-0000-4000-8000-000000000001"),
    contact(email="a@x.io", anonymous_id="w", ident="00000000-0000-4000-8000-000000000002"),
    contact(user_id="v", email="b@x.io", ident="00000000-0000-4000-8000-000000000003"),
    contact(anonymous_id="u", first_seen=None, ident="00000000-0000-4000-8000-000000000004"),
]


@given(
    st.fixed_dictionaries(
        {},
        optional={
            "user_id": st.sampled_from(["u", "v", "w"]),
            "email": st.sampled_from(["a@x.io", "b@x.io"]),
            "anonymous_id": st.sampled_from(["u", "w"]),
        },
    ).filter(bool),
    st.dictionaries(
        st.builds(IdentityKey, st.sampled_from(["external", "email", "anonymous"]), _PLAN_VALUES),
        st.sampled_from(_PLAN_CONTACTS),
        max_size=6,
    ),
)
def test_a_plan_reads_only_its_own_keys_of_the_matches(
    ids: dict[str, str], matches: dict[IdentityKey, Contact]
) -> None:
    # A batch hands every plan the whole lookup; the plan must be the one made from the
    # identity's own share of it.
    identity = Identity(**ids)
    own = {k: matches[k] for k in identity.keys if k in matches}
    assert plan_resolution(identity, matches) == plan_resolution(identity, own)


@given(
    st.one_of(st.none(), st.text(max_size=6)),
    st.one_of(st.none(), st.text(max_size=6)),
)
def test_an_identity_of_checked_ids_is_the_identity_the_constructor_makes(
    user_id: str | None, anonymous_id: str | None
) -> None:
    # Only ids that normalize_id leaves as they are may skip its checks.
    try:
        if normalize_id(user_id) != user_id or normalize_id(anonymous_id) != anonymous_id:
            return
    except IdentityError:
        return
    if user_id is None and anonymous_id is None:
        return
    checked = checked_ids_identity(user_id, anonymous_id)
    made = Identity(user_id=user_id, anonymous_id=anonymous_id)
    assert checked == made
    assert checked.keys == made.keys
    assert (checked.email, checked.signature, hash(checked)) == (None, made.signature, hash(made))


def test_unknown_keys_fill_empty_slots_and_promote_the_key() -> None:
    anon = contact(anonymous_id="a")
    identity = Identity(user_id="u", email="e@x.io", anonymous_id="a")
    plan = plan_resolution(identity, {IdentityKey("anonymous", "a"): anon})
    assert plan.action == "link"
    assert plan.linked
    assert plan.attach == (IdentityKey("external", "u"), IdentityKey("email", "e@x.io"))
    assert anon.key == "a"
    assert plan.key_after() == "u"


def test_an_unknown_key_for_a_taken_slot_is_a_conflict_not_a_change() -> None:
    c = contact(user_id="u-1", email="e@x.io")
    identity = Identity(user_id="u-2", email="e@x.io")
    plan = plan_resolution(identity, {IdentityKey("email", "e@x.io"): c})
    assert plan.action == "match"
    assert plan.conflicts == (IdentityConflict(kind="external", given="u-2", existing="u-1"),)


def test_several_contacts_merge_into_the_best_one() -> None:
    user = contact(user_id="u", email="u@x.io")
    anon = contact(anonymous_id="a", email="a@x.io")
    identity = Identity(user_id="u", anonymous_id="a")
    plan = plan_resolution(
        identity, {IdentityKey("external", "u"): user, IdentityKey("anonymous", "a"): anon}
    )
    assert plan.action == "merge"
    assert plan.linked
    assert plan.target is user
    assert plan.losers == (anon,)
    # The survivor takes the given anonymous id (known through the loser: no conflict);
    # the loser's email cannot move (slot taken) and becomes an alias instead.
    assert plan.attach == (IdentityKey("anonymous", "a"),)
    assert plan.conflicts == ()
    assert plan.key_after() == "u"


def test_a_merge_survivor_inherits_missing_keys_from_the_best_loser() -> None:
    mail = contact(email="m@x.io", first_seen=T0 - timedelta(days=1))
    anon_old = contact(anonymous_id="old", first_seen=T0 - timedelta(days=3))
    anon_new = contact(anonymous_id="new", first_seen=T0)
    identity = Identity(email="m@x.io", anonymous_id="new", user_id="fresh")
    plan = plan_resolution(
        identity,
        {IdentityKey("email", "m@x.io"): mail, IdentityKey("anonymous", "new"): anon_new},
    )
    assert plan.target is mail
    assert plan.attach == (IdentityKey("external", "fresh"), IdentityKey("anonymous", "new"))

    without_given = Identity(email="m@x.io", user_id="x")
    plan = plan_resolution(
        without_given,
        {IdentityKey("email", "m@x.io"): mail, IdentityKey("external", "x"): anon_old},
    )
    # "x" is known (through the anonymous contact): it fills the survivor's empty slot.
    assert plan.target is mail
    assert plan.attach == (IdentityKey("external", "x"), IdentityKey("anonymous", "old"))


def test_conflicts_are_reported_in_merges_too() -> None:
    one = contact(user_id="u-1", email="a@x.io")
    two = contact(anonymous_id="n")
    identity = Identity(user_id="u-2", email="a@x.io", anonymous_id="n")
    plan = plan_resolution(
        identity, {IdentityKey("email", "a@x.io"): one, IdentityKey("anonymous", "n"): two}
    )
    assert plan.action == "merge"
    assert plan.conflicts == (IdentityConflict(kind="external", given="u-2", existing="u-1"),)


def test_an_explicit_merge_plan_uses_the_survivor_rule_and_inherits_keys() -> None:
    user = contact(user_id="u")
    mail = contact(email="m@x.io", anonymous_id="a")
    plan = plan_merge([mail, user, mail])
    assert plan.action == "merge"
    assert plan.target is user
    assert plan.losers == (mail,)
    assert plan.attach == (IdentityKey("email", "m@x.io"), IdentityKey("anonymous", "a"))
    assert plan_merge([user, contact(user_id="v", first_seen=None)]).attach == ()
    with pytest.raises(ValueError, match="two distinct"):
        plan_merge([user, user])


# --------------------------------------------------------------------------- ingest & pages


def test_event_input_needs_exactly_one_subject_and_sane_fields() -> None:
    identity = Identity(user_id="u")
    ok = EventInput(name="x", identity=identity, occurred_at=T0, idempotency_key="k")
    assert ok.source == "api"
    with pytest.raises(ValueError, match="exactly one"):
        EventInput(name="x")
    with pytest.raises(ValueError, match="exactly one"):
        EventInput(name="x", identity=identity, contact_id=uuid.uuid4())
    with pytest.raises(ValueError, match="name"):
        EventInput(name="", identity=identity)
    with pytest.raises(ValueError, match="timezone"):
        EventInput(name="x", identity=identity, occurred_at=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="idempotency_key"):
        EventInput(name="x", identity=identity, idempotency_key="")
    assert ItemResult is IngestResult


def test_cursors_round_trip_and_foreign_ones_are_refused() -> None:
    cursor = encode_cursor("2026-01-01T00:00:00+00:00", "abc")
    assert decode_cursor(cursor, 2) == ["2026-01-01T00:00:00+00:00", "abc"]
    for bad in ("%%%", encode_cursor("one"), "x" * 2000, "bm90IGpzb24", "eyJhIjoxfQ", "WzFd"):
        with pytest.raises(InvalidCursor):
            decode_cursor(bad, 2)


def test_page_of_peeks_one_row_to_know_whether_more_follow() -> None:
    assert page_of([1, 2, 3], 2, str) == Page(items=(1, 2), next_cursor="2")
    assert page_of([1, 2], 2, str) == Page(items=(1, 2))
    assert page_of([], 2, str) == Page(items=())


def test_control_characters_are_exactly_unicode_category_cc() -> None:
    import sys
    import unicodedata

    from hogsend.core.identity import _has_control_characters

    for code in range(sys.maxunicode + 1):
        char = chr(code)
        expected = unicodedata.category(char) == "Cc"
        assert _has_control_characters(f"a{char}b") is expected, hex(code)
