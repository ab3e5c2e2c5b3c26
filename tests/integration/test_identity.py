"""Identity resolution on real Postgres: create, link, promote, merge, conflicts, delete, erase."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from hogsend.core.identity import Identity, IdentityConflict, IdentityError, ResolutionPlan
from hogsend.core.ingest import EventInput
from hogsend.core.pagination import InvalidCursor, encode_cursor
from hogsend.db.engine import make_async_engine, make_sessionmaker
from hogsend.db.repos import contacts as repo
from hogsend.db.repos.events import ingest_batch, ingest_event

pytestmark = pytest.mark.timeout(120)

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_async_engine(database_url, pool_size=25)
    yield engine
    await engine.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return make_sessionmaker(engine)


async def resolve(
    sessions: async_sessionmaker[AsyncSession],
    now: datetime = T0,
    properties: dict[str, Any] | None = None,
    **keys: str,
) -> repo.Resolution:
    async with sessions() as session, session.begin():
        return await repo.resolve_contact(session, Identity(**keys), properties=properties, now=now)


async def ingest(
    sessions: async_sessionmaker[AsyncSession], name: str, now: datetime = T0, **keys: str
) -> uuid.UUID:
    async with sessions() as session, session.begin():
        result = await ingest_event(
            session, EventInput(name=name, identity=Identity(**keys)), now=now
        )
    assert result.status == "stored"
    assert result.event_id is not None
    return result.event_id


async def rows(engine: AsyncEngine, sql: str, **params: object) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        result = await conn.execute(text(sql), params)
        return [dict(row._mapping) for row in result]


async def contact_row(engine: AsyncEngine, contact_id: uuid.UUID) -> dict[str, Any]:
    [row] = await rows(engine, "SELECT * FROM contacts WHERE id = :id", id=contact_id)
    return row


async def add_run(
    engine: AsyncEngine,
    contact_id: uuid.UUID,
    key: str,
    journey: str,
    status: str = "active",
) -> uuid.UUID:
    async with engine.begin() as conn:
        run_id = (
            await conn.execute(
                text(
                    "INSERT INTO journey_states (contact_id, user_id, journey_id, workflow_id,"
                    " status, completed_at) VALUES (:c, :k, :j, :w, :s,"
                    " CASE WHEN :s = 'completed' THEN now() END) RETURNING id"
                ),
                {"c": contact_id, "k": key, "j": journey, "w": f"wf-{uuid.uuid4()}", "s": status},
            )
        ).scalar_one()
    return uuid.UUID(str(run_id))


async def add_send(
    engine: AsyncEngine, contact_id: uuid.UUID, key: str, run_id: uuid.UUID | None
) -> uuid.UUID:
    async with engine.begin() as conn:
        send_id = (
            await conn.execute(
                text(
                    "INSERT INTO email_sends (contact_id, user_id, journey_state_id, from_email,"
                    " to_email, status, decision) VALUES (:c, :k, :r, 'hi@us.io', 'x@y.io',"
                    " 'sent', 'sent') RETURNING id"
                ),
                {"c": contact_id, "k": key, "r": run_id},
            )
        ).scalar_one()
    return uuid.UUID(str(send_id))


async def add_stay(
    engine: AsyncEngine, contact_id: uuid.UUID, key: str, bucket: str, at: datetime = T0
) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO bucket_memberships (contact_id, user_id, bucket_id, entered_at)"
                " VALUES (:c, :k, :b, :at)"
            ),
            {"c": contact_id, "k": key, "b": bucket, "at": at},
        )


async def unsubscribe_all(engine: AsyncEngine, contact_id: uuid.UUID) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO email_preferences (contact_id, unsubscribed_all, unsubscribed_at)"
                " VALUES (:c, true, now())"
            ),
            {"c": contact_id},
        )


async def set_lists(
    sessions: async_sessionmaker[AsyncSession], contact_id: uuid.UUID, lists: dict[str, bool]
) -> None:
    async with sessions() as session, session.begin():
        await repo.set_list_subscriptions(session, contact_id, lists, source="api")


# --------------------------------------------------------------------------- create / match


async def test_new_identity_creates_a_contact_with_its_keys_and_properties(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    res = await resolve(
        sessions, user_id=" u-1 ", email=" Ann.Lee@Example.COM ", properties={"plan": "pro"}
    )
    assert res.created
    assert not res.linked
    assert not res.merged
    assert res.key == "u-1"
    row = await contact_row(engine, res.contact_id)
    assert row["external_id"] == "u-1"
    assert row["email"] == "Ann.Lee@example.com"  # domain lower-cased, local part kept
    assert row["properties"] == {"plan": "pro"}
    assert row["first_seen_at"] == T0 == row["last_seen_at"]


async def test_email_matches_case_insensitively_and_a_plain_match_is_not_linked(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    first = await resolve(sessions, email="Ann@x.io")
    later = T0 + timedelta(hours=1)
    again = await resolve(sessions, now=later, email="ann@X.IO", properties={"a": 1})
    assert again.contact_id == first.contact_id
    assert not again.created
    assert not again.linked
    assert not again.merged
    assert again.key == str(first.contact_id)
    row = await contact_row(engine, first.contact_id)
    assert row["email"] == "Ann@x.io"
    assert row["properties"] == {"a": 1}
    assert row["last_seen_at"] == later


async def test_property_patch_is_shallow_and_null_deletes(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    res = await resolve(sessions, user_id="u", properties={"a": 1, "b": {"x": 1}, "c": 3})
    await resolve(sessions, user_id="u", properties={"b": {"y": 2}, "c": None, "d": 4})
    row = await contact_row(engine, res.contact_id)
    assert row["properties"] == {"a": 1, "b": {"y": 2}, "d": 4}


# --------------------------------------------------------------------------- link / promote


async def test_unknown_key_with_an_empty_slot_is_linked_and_recorded(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    first = await resolve(sessions, user_id="u-1")
    res = await resolve(sessions, user_id="u-1", email="a@x.io")
    assert res.contact_id == first.contact_id
    assert res.linked
    assert not res.merged
    assert not res.created
    assert (await contact_row(engine, first.contact_id))["email"] == "a@x.io"
    aliases = await rows(engine, "SELECT alias_kind, alias_value, reason FROM contact_aliases")
    assert aliases == [{"alias_kind": "email", "alias_value": "a@x.io", "reason": "promote"}]


async def test_anonymous_visitor_is_promoted_when_identified(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    await ingest(sessions, "page_viewed", anonymous_id="anon-1")
    [anon] = await rows(engine, "SELECT id FROM contacts")
    await add_stay(engine, anon["id"], "anon-1", "visitors")
    run = await add_run(engine, anon["id"], "anon-1", "welcome")
    await add_send(engine, anon["id"], "anon-1", run)

    res = await resolve(sessions, user_id="u-9", anonymous_id="anon-1")
    assert res.contact_id == anon["id"]
    assert res.linked
    assert not res.merged
    assert res.key == "u-9"
    for table in ("user_events", "bucket_memberships", "journey_states", "email_sends"):
        keys = await rows(engine, f"SELECT DISTINCT user_id FROM {table}")
        assert keys == [{"user_id": "u-9"}], table
    [outbox] = await rows(engine, "SELECT contact_key FROM event_outbox")
    assert outbox["contact_key"] == "u-9"
    # The anonymous id still resolves (the contact keeps it).
    again = await resolve(sessions, anonymous_id="anon-1")
    assert again.contact_id == anon["id"]
    assert not again.linked


async def test_email_only_contact_gains_a_user_id_and_its_history_is_rekeyed(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    await ingest(sessions, "signed_up", email="b@x.io")
    [contact] = await rows(engine, "SELECT id FROM contacts")
    assert (await rows(engine, "SELECT user_id FROM user_events"))[0]["user_id"] == str(
        contact["id"]
    )
    res = await resolve(sessions, user_id="u-2", email="b@x.io")
    assert res.linked
    assert res.key == "u-2"
    assert (await rows(engine, "SELECT user_id FROM user_events"))[0]["user_id"] == "u-2"


# --------------------------------------------------------------------------- conflicts


async def test_conflicting_user_id_is_reported_not_applied(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    first = await resolve(sessions, user_id="u-1", email="a@x.io")
    res = await resolve(sessions, user_id="u-2", email="A@x.io")
    assert res.contact_id == first.contact_id
    assert not res.linked
    assert not res.created
    assert res.conflicts == (IdentityConflict(kind="external", given="u-2", existing="u-1"),)
    row = await contact_row(engine, first.contact_id)
    assert row["external_id"] == "u-1"
    assert await rows(engine, "SELECT id FROM contacts WHERE external_id = 'u-2'") == []


async def test_conflicting_email_is_reported_while_a_new_slot_is_still_linked(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    first = await resolve(sessions, user_id="u-1", email="a@x.io")
    res = await resolve(sessions, user_id="u-1", email="other@x.io", anonymous_id="an")
    assert res.linked
    assert res.conflicts == (IdentityConflict(kind="email", given="other@x.io", existing="a@x.io"),)
    row = await contact_row(engine, first.contact_id)
    assert row["email"] == "a@x.io"
    assert row["anonymous_id"] == "an"


# --------------------------------------------------------------------------- merges


async def test_anonymous_history_folds_into_the_identified_contact(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    """Anonymous events, then identify with a userId that already has a contact."""
    known = await resolve(sessions, user_id="u-1", email="k@x.io", properties={"plan": "pro"})
    await ingest(sessions, "page_viewed", now=T0 - timedelta(days=3), anonymous_id="anon")
    await ingest(sessions, "pricing_viewed", anonymous_id="anon")
    anon = await resolve(sessions, anonymous_id="anon", properties={"utm": "ad", "plan": "free"})
    assert anon.contact_id != known.contact_id

    # Memberships: both in "visitors" (loser's stay is left), only the loser in "pricing".
    await add_stay(engine, known.contact_id, "u-1", "visitors")
    await add_stay(engine, anon.contact_id, "anon", "visitors")
    await add_stay(engine, anon.contact_id, "anon", "pricing")
    # Preferences and lists: the loser unsubscribed globally and from "news".
    await unsubscribe_all(engine, anon.contact_id)
    await set_lists(sessions, known.contact_id, {"news": True, "tips": True})
    await set_lists(sessions, anon.contact_id, {"news": False, "offers": True})

    res = await resolve(sessions, user_id="u-1", anonymous_id="anon")
    assert res.contact_id == known.contact_id
    assert res.merged
    assert res.linked
    assert not res.created
    assert res.merged_contact_ids == (anon.contact_id,)
    assert res.key == "u-1"

    events = await rows(engine, "SELECT DISTINCT contact_id, user_id FROM user_events")
    assert events == [{"contact_id": known.contact_id, "user_id": "u-1"}]
    survivor = await contact_row(engine, known.contact_id)
    assert survivor["anonymous_id"] == "anon"
    assert survivor["properties"] == {"plan": "pro", "utm": "ad"}  # survivor wins
    assert survivor["first_seen_at"] == T0 - timedelta(days=3)
    loser = await contact_row(engine, anon.contact_id)
    assert loser["deleted_at"] is not None
    assert loser["anonymous_id"] == "anon"

    stays = await rows(
        engine,
        "SELECT bucket_id, status, left_reason, contact_id, user_id FROM bucket_memberships"
        " ORDER BY bucket_id, status",
    )
    assert [(s["bucket_id"], s["status"], s["left_reason"]) for s in stays] == [
        ("pricing", "active", None),
        ("visitors", "active", None),
        ("visitors", "left", "merge"),
    ]
    assert {(s["contact_id"], s["user_id"]) for s in stays} == {(known.contact_id, "u-1")}

    prefs = await rows(engine, "SELECT contact_id, unsubscribed_all FROM email_preferences")
    assert prefs == [{"contact_id": known.contact_id, "unsubscribed_all": True}]
    lists = await rows(
        engine, "SELECT contact_id, list_id, subscribed FROM list_subscriptions ORDER BY list_id"
    )
    assert [(r["list_id"], r["subscribed"]) for r in lists] == [
        ("news", False),  # "no" wins
        ("offers", True),
        ("tips", True),
    ]
    assert {r["contact_id"] for r in lists} == {known.contact_id}

    # The old anonymous key resolves to the survivor (directly and through its alias).
    again = await resolve(sessions, anonymous_id="anon")
    assert again.contact_id == known.contact_id
    assert not again.linked
    aliases = await rows(
        engine, "SELECT alias_kind, alias_value, contact_id, from_contact_id FROM contact_aliases"
    )
    assert aliases == [
        {
            "alias_kind": "anonymous",
            "alias_value": "anon",
            "contact_id": known.contact_id,
            "from_contact_id": anon.contact_id,
        }
    ]


async def test_two_identified_contacts_merge_and_old_keys_resolve_through_aliases(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    older = await resolve(sessions, now=T0 - timedelta(days=1), user_id="u-a", email="a@x.io")
    newer = await resolve(sessions, user_id="u-b", email="b@x.io", properties={"b": 1})
    await ingest(sessions, "x", user_id="u-b")

    res = await resolve(sessions, user_id="u-a", email="b@x.io")
    assert res.merged
    assert res.contact_id == older.contact_id
    assert res.conflicts == ()  # b@x.io is known: it becomes an alias, not a conflict
    loser = await contact_row(engine, newer.contact_id)
    assert loser["deleted_at"] is not None

    for keys in ({"user_id": "u-b"}, {"email": "B@x.io"}):
        found = await resolve(sessions, **keys)
        assert found.contact_id == older.contact_id
        assert not found.created
    async with sessions() as session:
        assert [c.id for c in await repo.find_contacts(session, user_id="u-b")] == [
            older.contact_id
        ]
        by_key = await repo.resolve_by_key(session, "u-b")
        assert by_key is not None
        assert by_key.contact_id == older.contact_id
        by_id = await repo.resolve_by_contact_id(session, newer.contact_id)
        assert by_id is not None
        assert by_id.contact_id == older.contact_id
    assert (await rows(engine, "SELECT user_id FROM user_events"))[0]["user_id"] == "u-a"


async def test_merge_chains_keep_every_old_key_pointing_at_the_last_survivor(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    a = await resolve(sessions, now=T0 - timedelta(days=2), user_id="a")
    b = await resolve(sessions, now=T0 - timedelta(days=1), anonymous_id="b")
    c = await resolve(sessions, anonymous_id="c")
    await resolve(sessions, anonymous_id="b", email="c@x.io")  # link email onto b
    merged_bc = await resolve(sessions, anonymous_id="c", email="c@x.io")  # b survives (email)
    assert merged_bc.contact_id == b.contact_id
    assert merged_bc.merged
    merged_ab = await resolve(sessions, user_id="a", email="c@x.io")
    assert merged_ab.contact_id == a.contact_id
    for keys in ({"anonymous_id": "c"}, {"anonymous_id": "b"}, {"email": "c@x.io"}):
        assert (await resolve(sessions, **keys)).contact_id == a.contact_id
    async with sessions() as session:
        followed = await repo.resolve_by_contact_id(session, c.contact_id)
        assert followed is not None
        assert followed.contact_id == a.contact_id


async def test_merge_with_running_journeys_on_both_sides_exits_the_losers_run(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    a = await resolve(sessions, user_id="u-a")
    b = await resolve(sessions, email="b@x.io")
    a_run = await add_run(engine, a.contact_id, "u-a", "onboarding")
    b_run = await add_run(engine, b.contact_id, str(b.contact_id), "onboarding", "waiting")
    b_other = await add_run(engine, b.contact_id, str(b.contact_id), "trial", "active")
    b_done = await add_run(engine, b.contact_id, str(b.contact_id), "onboarding", "completed")
    send = await add_send(engine, b.contact_id, str(b.contact_id), b_run)

    res = await resolve(sessions, user_id="u-a", email="b@x.io")
    assert res.merged
    assert res.contact_id == a.contact_id
    [exited_wf] = res.exited_workflow_ids
    states = {
        r["id"]: r
        for r in await rows(
            engine,
            "SELECT id, status, exit_reason, contact_id, user_id, workflow_id FROM journey_states",
        )
    }
    assert states[a_run]["status"] == "active"
    assert states[b_run]["status"] == "exited"
    assert states[b_run]["exit_reason"] == "merged"
    assert states[b_run]["workflow_id"] == exited_wf
    assert states[b_other]["status"] == "active"
    assert states[b_done]["status"] == "completed"
    assert {(r["contact_id"], r["user_id"]) for r in states.values()} == {(a.contact_id, "u-a")}
    [sent] = await rows(engine, "SELECT * FROM email_sends WHERE id = :id", id=send)
    assert sent["journey_state_id"] == b_run
    assert sent["contact_id"] == a.contact_id
    assert sent["user_id"] == "u-a"
    assert sent["user_email"] == "b@x.io"


async def test_merge_of_three_contacts_keeps_one_running_run_per_journey(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    a = await resolve(sessions, user_id="u")
    b = await resolve(sessions, email="e@x.io")
    c = await resolve(sessions, anonymous_id="n")
    await add_run(engine, b.contact_id, str(b.contact_id), "j")
    await add_run(engine, c.contact_id, "n", "j")
    await add_stay(engine, b.contact_id, str(b.contact_id), "bk")
    await add_stay(engine, c.contact_id, "n", "bk")
    res = await resolve(sessions, user_id="u", email="e@x.io", anonymous_id="n")
    assert res.contact_id == a.contact_id
    assert set(res.merged_contact_ids) == {b.contact_id, c.contact_id}
    running = await rows(
        engine, "SELECT user_id FROM journey_states WHERE status IN ('active', 'waiting')"
    )
    assert running == [{"user_id": "u"}]
    active = await rows(engine, "SELECT user_id FROM bucket_memberships WHERE status = 'active'")
    assert active == [{"user_id": "u"}]


async def test_survivor_prefers_identified_then_oldest(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    anon = await resolve(sessions, now=T0 - timedelta(days=10), anonymous_id="old")
    mail = await resolve(sessions, email="m@x.io")
    res = await resolve(sessions, email="m@x.io", anonymous_id="old")
    assert res.contact_id == mail.contact_id != anon.contact_id
    # The survivor takes the loser's anonymous id, which becomes its resolved key.
    assert res.key == "old"


async def alias(
    sessions: async_sessionmaker[AsyncSession], user_id: str, previous_id: str
) -> repo.Resolution:
    async with sessions() as session, session.begin():
        return await repo.alias_contact(session, user_id=user_id, previous_id=previous_id, now=T0)


async def test_segment_alias_of_an_anonymous_id_promotes_or_merges(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    visitor = await resolve(sessions, anonymous_id="anon-1")
    promoted = await alias(sessions, "u-1", "anon-1")
    assert promoted.contact_id == visitor.contact_id
    assert promoted.linked
    assert promoted.key == "u-1"

    other = await resolve(sessions, anonymous_id="anon-2")
    merged = await alias(sessions, "u-1", "anon-2")
    assert merged.merged
    assert merged.contact_id == visitor.contact_id
    assert merged.merged_contact_ids == (other.contact_id,)

    fresh = await alias(sessions, "u-new", "anon-new")
    assert fresh.created
    row = await contact_row(engine, fresh.contact_id)
    assert (row["external_id"], row["anonymous_id"]) == ("u-new", "anon-new")


async def test_segment_alias_between_two_user_ids_merges_them(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    old = await resolve(sessions, now=T0 - timedelta(days=1), user_id="old-id")
    new = await resolve(sessions, user_id="new-id")
    res = await alias(sessions, "new-id", "old-id")
    assert res.merged
    assert res.contact_id == old.contact_id  # identified both: the older survives
    assert res.merged_contact_ids == (new.contact_id,)
    assert (await resolve(sessions, user_id="new-id")).contact_id == old.contact_id
    # A user id nobody holds yet joins the existing person the same way.
    joined = await alias(sessions, "brand-new", "old-id")
    assert joined.contact_id == old.contact_id
    assert (await resolve(sessions, user_id="brand-new")).contact_id == old.contact_id
    same = await alias(sessions, "old-id", "old-id")
    assert same.contact_id == old.contact_id
    assert not same.merged


async def test_merge_contacts_follows_merges_and_refuses_unknown_ids(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    a = await resolve(sessions, user_id="a")
    b = await resolve(sessions, email="b@x.io")
    c = await resolve(sessions, anonymous_id="c")
    async with sessions() as session, session.begin():
        first = await repo.merge_contacts(session, [b.contact_id, a.contact_id], now=T0)
        assert first is not None
        assert first.contact_id == a.contact_id
        assert first.merged
        # b is gone: its id now means a; merging "b" and c merges c into a.
        second = await repo.merge_contacts(session, [b.contact_id, c.contact_id], now=T0)
        assert second is not None
        assert second.contact_id == a.contact_id
        assert second.merged_contact_ids == (c.contact_id,)
        again = await repo.merge_contacts(session, [a.contact_id, c.contact_id], now=T0)
        assert again is not None
        assert not again.merged
        assert await repo.merge_contacts(session, [a.contact_id, uuid.uuid4()]) is None
    survivor = await resolve(sessions, email="b@x.io")
    assert survivor.contact_id == a.contact_id
    assert survivor.key == "a"


async def test_merge_contacts_gives_up_when_contacts_keep_moving(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    a = await resolve(sessions, user_id="a")
    b = await resolve(sessions, user_id="b")

    async def nothing_locked(*args: object) -> repo.Matches:
        return repo.Matches(by_key={}, by_id={})

    monkeypatch.setattr(repo, "lock_matches", nothing_locked)
    async with sessions() as session:
        with pytest.raises(repo.ResolutionRace):
            await repo.merge_contacts(session, [a.contact_id, b.contact_id])


# --------------------------------------------------------------------------- concurrency


async def test_parallel_resolves_of_a_new_identity_create_one_contact(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    results = await asyncio.gather(
        *(resolve(sessions, user_id="same", email=f"same{i % 2}@x.io") for i in range(12))
    )
    live = await rows(engine, "SELECT id FROM contacts WHERE deleted_at IS NULL")
    assert len(live) == 1
    assert {r.contact_id for r in results} == {live[0]["id"]}
    assert sum(r.created for r in results) == 1


async def wait_for_lock_waiter(engine: AsyncEngine) -> None:
    for _ in range(500):
        waiting = await rows(
            engine,
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock'",
        )
        if waiting:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("nobody ever waited for the lock")


async def test_a_resolve_racing_a_merge_through_another_key_finds_the_survivor(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    keep = await resolve(sessions, user_id="keep")
    await resolve(sessions, email="drop@x.io", anonymous_id="drop")
    async with sessions() as merging:
        await merging.begin()
        # Locks user:keep and email:drop@x.io, not anonymous:drop.
        await repo.resolve_contact(merging, Identity(user_id="keep", email="drop@x.io"), now=T0)
        racing = asyncio.create_task(resolve(sessions, anonymous_id="drop"))
        await wait_for_lock_waiter(engine)
        await merging.commit()
    found = await racing
    assert found.contact_id == keep.contact_id
    assert not found.created


async def test_a_resolve_losing_an_insert_race_to_a_batch_reuses_its_contact(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    async with sessions() as first:
        await first.begin()
        # The bulk path takes no advisory locks; the unique index makes the resolve wait.
        [stored] = await ingest_batch(
            first, [EventInput(name="x", identity=Identity(user_id="z"))], now=T0
        )
        racing = asyncio.create_task(resolve(sessions, user_id="z"))
        await wait_for_lock_waiter(engine)
        await first.commit()
    found = await racing
    assert found.contact_id == stored.contact_id
    assert not found.created


async def test_resolution_gives_up_when_contacts_keep_vanishing(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    await resolve(sessions, user_id="u")

    async def vanish(*args: object) -> None:
        return None

    monkeypatch.setattr(repo, "lock_matches", vanish)
    with pytest.raises(repo.ResolutionRace):
        await resolve(sessions, user_id="u")
    async with sessions() as session:
        with pytest.raises(repo.ResolutionRace):
            await repo.soft_delete_contacts(session, Identity(user_id="u"))


async def test_other_integrity_errors_while_linking_propagate(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    await resolve(sessions, anonymous_id="v")

    class ForeignKey(Exception):
        sqlstate = "23503"

    async def broken(*args: object, **kwargs: object) -> None:
        raise IntegrityError("UPDATE ...", {}, ForeignKey())

    monkeypatch.setattr(repo, "apply_plan", broken)
    with pytest.raises(IntegrityError):
        await resolve(sessions, anonymous_id="v", user_id="u")


async def test_a_link_racing_a_batch_that_creates_the_key_becomes_a_merge(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    visitor = await resolve(sessions, anonymous_id="visitor")
    async with sessions() as first:
        await first.begin()
        [stored] = await ingest_batch(
            first, [EventInput(name="x", identity=Identity(user_id="taken"))], now=T0
        )
        racing = asyncio.create_task(resolve(sessions, user_id="taken", anonymous_id="visitor"))
        await wait_for_lock_waiter(engine)
        await first.commit()
    res = await racing
    assert res.merged
    assert res.contact_id == stored.contact_id
    assert res.merged_contact_ids == (visitor.contact_id,)


async def test_resolve_by_key_and_by_contact_id_never_create(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    user = await resolve(sessions, user_id="k-user", anonymous_id="k-anon-of-user")
    anon = await resolve(sessions, anonymous_id="k-anon")
    mail = await resolve(sessions, email="k@x.io")
    gone = await resolve(sessions, user_id="k-gone")
    merged = await resolve(sessions, now=T0 + timedelta(days=1), email="k2@x.io")
    await resolve(sessions, email="k2@x.io", user_id="k-user")  # merged into user
    async with sessions() as session, session.begin():
        await repo.soft_delete_contacts(session, Identity(user_id="k-gone"))
    async with sessions() as session:
        expectations = {
            "k-user": user.contact_id,
            "k-anon": anon.contact_id,
            str(mail.contact_id): mail.contact_id,
            str(merged.contact_id): user.contact_id,
            "k-anon-of-user": user.contact_id,  # a key it still holds (e.g. before promotion)
            "k-gone": None,
            str(uuid.uuid4()): None,
        }
        for key, expected in expectations.items():
            found = await repo.resolve_by_key(session, key)
            assert (found.contact_id if found else None) == expected, key
        assert await repo.resolve_by_contact_id(session, uuid.uuid4()) is None
        live = await repo.resolve_by_contact_id(session, anon.contact_id)
        assert live is not None
        assert live.key == "k-anon"
        assert await repo.resolve_by_contact_id(session, gone.contact_id) is None
        assert await repo.get_contact(session, gone.contact_id) is None
        deleted = await repo.get_contact(session, gone.contact_id, include_deleted=True)
        assert deleted is not None
        assert deleted.deleted_at is not None
        assert await repo.find_contacts(session, user_id="nobody") == []
        assert await repo.resolve_by_key(session, "nobody") is None
    async with sessions() as session, session.begin():
        await repo.soft_delete_contacts(session, Identity(user_id="k-user"), erase=True)
    async with sessions() as session:
        assert await repo.resolve_by_contact_id(session, user.contact_id) is None
        assert await repo.resolve_by_contact_id(session, merged.contact_id) is None


async def test_misuse_is_refused(sessions: async_sessionmaker[AsyncSession]) -> None:
    res = await resolve(sessions, user_id="u")
    async with sessions() as session:
        with pytest.raises(ValueError, match="timezone"):
            await repo.resolve_contact(
                session,
                Identity(user_id="u"),
                now=datetime(2026, 1, 1),
            )
        with pytest.raises(ValueError, match="cannot create"):
            await repo.apply_plan(session, ResolutionPlan(action="create"), None, now=T0)
        for cursor in (
            encode_cursor("yesterday", str(res.contact_id)),
            encode_cursor("2026-01-01T00:00:00", str(res.contact_id)),
            encode_cursor("2026-01-01T00:00:00+00:00", "not-a-uuid"),
        ):
            with pytest.raises(InvalidCursor):
                await repo.list_contacts(session, cursor=cursor)
        await repo.set_list_subscriptions(session, res.contact_id, {}, source="api")
        assert await repo.insert_contacts(session, [], T0) == {}


# --------------------------------------------------------------------------- delete / erase


async def test_soft_delete_ends_runs_and_stays_and_frees_the_keys(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    res = await resolve(sessions, user_id="u", email="d@x.io")
    await add_run(engine, res.contact_id, "u", "j")
    await add_stay(engine, res.contact_id, "u", "b")
    async with sessions() as session, session.begin():
        deleted = await repo.soft_delete_contacts(session, Identity(email="D@x.io"))
    assert deleted.contact_ids == (res.contact_id,)
    assert len(deleted.exited_workflow_ids) == 1
    assert deleted.erased_ids == ()
    row = await contact_row(engine, res.contact_id)
    assert row["deleted_at"] is not None
    assert row["email"] == "d@x.io"
    [run] = await rows(engine, "SELECT status, exit_reason FROM journey_states")
    assert run == {"status": "exited", "exit_reason": "contact_deleted"}
    [stay] = await rows(engine, "SELECT status, left_reason FROM bucket_memberships")
    assert stay == {"status": "left", "left_reason": "contact_deleted"}
    assert await rows(engine, "SELECT id FROM user_events") == []  # there were none
    again = await resolve(sessions, user_id="u")
    assert again.created
    assert again.contact_id != res.contact_id
    async with sessions() as session, session.begin():
        nothing = await repo.soft_delete_contacts(session, Identity(user_id="nobody"))
    assert nothing.contact_ids == ()


async def test_erase_removes_personal_data_and_events_but_keeps_suppressions(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    old = await resolve(sessions, anonymous_id="anon-e", properties={"ip": "1.2.3.4"})
    res = await resolve(sessions, user_id="u-e", email="e@x.io", properties={"name": "Eve"})
    await ingest(sessions, "x", anonymous_id="anon-e")
    await resolve(sessions, user_id="u-e", anonymous_id="anon-e")  # merge old into res
    await ingest(sessions, "y", user_id="u-e")
    run = await add_run(engine, res.contact_id, "u-e", "j")
    send = await add_send(engine, res.contact_id, "u-e", run)
    await unsubscribe_all(engine, res.contact_id)
    await set_lists(sessions, res.contact_id, {"news": True})
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO email_suppressions (email, suppressed, reason, suppressed_at)"
                " VALUES ('e@x.io', true, 'complaint', now())"
            )
        )

    async with sessions() as session, session.begin():
        deleted = await repo.soft_delete_contacts(session, Identity(user_id="u-e"), erase=True)
    assert deleted.contact_ids == (res.contact_id,)
    assert set(deleted.erased_ids) == {res.contact_id, old.contact_id}

    for contact_id in (res.contact_id, old.contact_id):
        row = await contact_row(engine, contact_id)
        assert row["erased_at"] is not None
        assert row["deleted_at"] is not None
        assert (row["external_id"], row["email"], row["anonymous_id"]) == (None, None, None)
        assert row["properties"] == {}
    for table in (
        "user_events",
        "event_outbox",
        "contact_aliases",
        "email_preferences",
        "list_subscriptions",
    ):
        assert await rows(engine, f"SELECT 1 FROM {table}") == [], table
    [sent] = await rows(engine, "SELECT * FROM email_sends WHERE id = :id", id=send)
    assert sent["to_email"] == ""
    assert sent["user_email"] is None
    assert sent["user_id"] == str(res.contact_id)
    assert sent["status"] == "sent"
    [state] = await rows(engine, "SELECT user_id, status FROM journey_states")
    assert state == {"user_id": str(res.contact_id), "status": "exited"}
    assert await rows(engine, "SELECT email FROM email_suppressions") == [{"email": "e@x.io"}]
    # Nothing resolves to the erased person any more.
    fresh = await resolve(sessions, anonymous_id="anon-e")
    assert fresh.created


# --------------------------------------------------------------------------- reads


async def test_find_get_and_list_contacts(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    ids = []
    for i in range(5):
        res = await resolve(sessions, now=T0 + timedelta(minutes=i), email=f"p{i}@x.io")
        ids.append(res.contact_id)
    await resolve(sessions, now=T0 + timedelta(hours=1), user_id="50%_off")
    async with sessions() as session:
        found = await repo.find_contacts(session, email="P1@x.io", user_id="nope")
        assert [c.id for c in found] == [ids[1]]
        with pytest.raises(IdentityError):
            await repo.find_contacts(session, email=" ")
        contact = await repo.get_contact(session, ids[0])
        assert contact is not None
        assert contact.email == "p0@x.io"
        assert await repo.get_contact(session, uuid.uuid4()) is None

        seen: list[uuid.UUID] = []
        cursor = None
        while True:
            page = await repo.list_contacts(session, cursor=cursor, limit=2)
            seen.extend(c.id for c in page.items)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert len(seen) == 6
        assert len(set(seen)) == 6
        assert seen[1:] == list(reversed(ids))  # newest first (created_at, then id)

        searched = await repo.list_contacts(session, search="%_")
        assert [c.user_id for c in searched.items] == ["50%_off"]
        by_id = await repo.list_contacts(session, search=str(ids[2]))
        assert [c.id for c in by_id.items] == [ids[2]]
        with pytest.raises(InvalidCursor):
            await repo.list_contacts(session, cursor="garbage!")
        with pytest.raises(ValueError, match="limit"):
            await repo.list_contacts(session, limit=0)


async def test_contact_events_page_newest_first(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    for i in range(5):
        await ingest(sessions, f"e{i}", now=T0 + timedelta(seconds=i), user_id="pager")
    async with sessions() as session:
        [contact] = await repo.find_contacts(session, user_id="pager")
        first = await repo.contact_events(session, contact.id, limit=3)
        assert [e.name for e in first.items] == ["e4", "e3", "e2"]
        assert first.next_cursor is not None
        second = await repo.contact_events(session, contact.id, cursor=first.next_cursor)
        assert [e.name for e in second.items] == ["e1", "e0"]
        assert second.next_cursor is None


async def test_timeline_merges_every_source_newest_first(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    res = await resolve(sessions, user_id="t")
    await ingest(sessions, "signed_up", now=T0 + timedelta(minutes=1), user_id="t")
    await add_stay(engine, res.contact_id, "t", "trial", at=T0 + timedelta(minutes=2))
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE bucket_memberships SET status = 'left', left_at = :at,"
                " left_reason = 'criteria'"
            ),
            {"at": T0 + timedelta(minutes=5)},
        )
        run = (
            await conn.execute(
                text(
                    "INSERT INTO journey_states (contact_id, user_id, journey_id, workflow_id,"
                    " created_at) VALUES (:c, 't', 'welcome', 'wf-t', :at) RETURNING id"
                ),
                {"c": res.contact_id, "at": T0 + timedelta(minutes=3)},
            )
        ).scalar_one()
        await conn.execute(
            text(
                "INSERT INTO journey_logs (journey_state_id, journey_id, contact_id, user_id,"
                " step, action, started_at) VALUES (:r, 'welcome', :c, 't', 'hello',"
                " 'send_email', :at)"
            ),
            {"r": run, "c": res.contact_id, "at": T0 + timedelta(minutes=4)},
        )
        await conn.execute(
            text(
                "INSERT INTO email_sends (contact_id, user_id, from_email, to_email, status,"
                " decision, created_at) VALUES (:c, 't', 'a@us.io', 't@x.io', 'sent', 'sent',"
                " :at)"
            ),
            {"c": res.contact_id, "at": T0 + timedelta(minutes=6)},
        )
    async with sessions() as session:
        kinds: list[str] = []
        cursor = None
        while True:
            page = await repo.timeline(session, res.contact_id, limit=2, cursor=cursor)
            kinds.extend(e.kind for e in page.items)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
    assert kinds == ["email", "bucket_left", "journey_step", "journey", "bucket_entered", "event"]
