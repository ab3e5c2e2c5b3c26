"""The SQL compiler on real Postgres: the case table both ways, merges, facts, overlays."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from condition_cases import CASES, DAY, NOW, WEEK, Case
from hogsend import where
from hogsend.core.conditions import evaluate
from hogsend.core.identity import Identity
from hogsend.core.ingest import EventInput
from hogsend.db.conditions import (
    compile_sql,
    contact_matches,
    contacts,
    email_sends,
    load_facts,
    matching_contacts,
    user_events,
)
from hogsend.db.engine import make_async_engine, make_sessionmaker
from hogsend.db.repos.contacts import merge_contacts
from hogsend.db.repos.events import ingest_event
from hogsend.testing.postgres import TestPostgres


async def store_case(session: AsyncSession, case: Case) -> uuid.UUID:
    """Insert the case's contact with its events and sends; return its id."""
    contact_id = (
        await session.execute(
            insert(contacts).values(properties=case.properties).returning(contacts.c.id)
        )
    ).scalar_one()
    for name, age, props in case.events:
        await session.execute(
            insert(user_events).values(
                contact_id=contact_id,
                user_id=str(contact_id),
                event=name,
                properties=props,
                occurred_at=NOW - age,
            )
        )
    for send in case.emails:
        await session.execute(
            insert(email_sends).values(
                contact_id=contact_id,
                user_id=str(contact_id),
                template_key=send.template,
                from_email="team@example.com",
                to_email="someone@example.com",
                status="sent" if send.sent is not None else "queued",
                sent_at=None if send.sent is None else NOW - send.sent,
                opened_at=None if send.opened is None else NOW - send.opened,
                clicked_at=None if send.clicked is None else NOW - send.clicked,
            )
        )
    return contact_id


@pytest.fixture(scope="module")
async def stored(
    pg_server: TestPostgres,
) -> AsyncIterator[tuple[AsyncEngine, dict[str, uuid.UUID]]]:
    """One database holding every case's contact (the cases only read)."""
    url = pg_server.fresh_database()
    engine = make_async_engine(url, pool_size=2)
    ids: dict[str, uuid.UUID] = {}
    async with make_sessionmaker(engine)() as session, session.begin():
        for case in CASES:
            ids[case.id] = await store_case(session, case)
    yield engine, ids
    await engine.dispose()
    pg_server.drop(url)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_case_in_sql(stored: tuple[AsyncEngine, dict[str, uuid.UUID]], case: Case) -> None:
    engine, ids = stored
    async with make_sessionmaker(engine)() as session:
        assert await contact_matches(session, case.condition, ids[case.id], NOW) is case.expected
        # The facts read back from the database give the same answer in memory.
        facts = await load_facts(session, ids[case.id], case.condition, NOW)
        assert evaluate(case.condition, facts, NOW) is case.expected


async def test_audiences_agree_with_memory_over_every_case_contact(
    stored: tuple[AsyncEngine, dict[str, uuid.UUID]],
) -> None:
    engine, ids = stored
    disagreements: list[str] = []
    async with engine.connect() as conn:
        for case in CASES:
            found = set((await conn.execute(matching_contacts(case.condition, NOW))).scalars())
            wanted = {
                ids[other.id] for other in CASES if evaluate(case.condition, other.facts(), NOW)
            }
            if found != wanted:
                disagreements.append(case.id)
    assert disagreements == []


async def test_compile_sql_correlates_to_any_contact_column(
    stored: tuple[AsyncEngine, dict[str, uuid.UUID]],
) -> None:
    engine, ids = stored
    people = contacts.alias("people")
    either = where.any(where.event("app.active").at_least(2), where.property("n").equals(1))
    query = select(people.c.id).where(
        compile_sql(either, NOW, contact_id=people.c.id, properties=people.c.properties)
    )
    async with engine.connect() as conn:
        found = set((await conn.execute(query)).scalars())
    assert found == {ids[case.id] for case in CASES if evaluate(either, case.facts(), NOW)}
    assert {ids["equals-int-float"], ids["at-least-2"]} <= found
    assert ids["equals-bool-is-not-int"] not in found


def test_compile_sql_needs_an_aware_now() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        compile_sql(where.all(), NOW.replace(tzinfo=None))


async def test_contact_matches_overlays_a_patch(engine: AsyncEngine) -> None:
    async with make_sessionmaker(engine)() as session, session.begin():
        contact_id = await store_case(session, Case("c", where.all(), True, {"plan": "free"}))
        pro = where.property("plan").equals("pro")
        assert not await contact_matches(session, pro, contact_id, NOW)
        assert await contact_matches(session, pro, contact_id, NOW, patch={"plan": "pro"})
        # A None in the patch deletes the key; null and missing are the same to conditions.
        gone = where.property("plan").is_not_set()
        assert await contact_matches(session, gone, contact_id, NOW, patch={"plan": None})
        assert not await contact_matches(session, pro, uuid.uuid4(), NOW)


async def test_load_facts_reads_only_what_the_condition_needs(engine: AsyncEngine) -> None:
    case = Case(
        "facts",
        where.all(),
        True,
        {"plan": "pro"},
        events=(
            ("a", DAY, {}),
            ("a", 30 * DAY, {}),
            ("b", DAY, {"x": 1}),
            ("b", 30 * DAY, {}),
            ("c", DAY, {}),
        ),
    )
    async with make_sessionmaker(engine)() as session, session.begin():
        contact_id = await store_case(session, case)
        windowed = where.all(
            where.event("a").within(WEEK).exists(),
            where.event("a").within(2 * WEEK).exists(),
            where.event("b").within(WEEK).exists(),
            where.event("b").not_exists(),
        )
        facts = await load_facts(session, contact_id, windowed, NOW)
        seen = sorted((e.name, NOW - e.occurred_at) for e in facts.events)
        # "a": only inside the widest window; "b": all (one leg has no window); no "c".
        assert seen == [("a", DAY), ("b", DAY), ("b", 30 * DAY)]
        assert facts.properties == {"plan": "pro"}
        assert facts.emails == []
        nothing = await load_facts(session, uuid.uuid4(), where.email().sent(), NOW)
        assert (nothing.properties, list(nothing.events), list(nothing.emails)) == ({}, [], [])


async def ingest(session: AsyncSession, name: str, at: timedelta, **keys: Any) -> uuid.UUID:
    result = await ingest_event(
        session, EventInput(name=name, identity=Identity(**keys), occurred_at=NOW - at), now=NOW
    )
    assert result.contact_id is not None
    return result.contact_id


async def test_merged_and_keyless_contacts_are_found_by_contact(engine: AsyncEngine) -> None:
    twice = where.event("app.active").within(WEEK).at_least(2)
    async with make_sessionmaker(engine)() as session, session.begin():
        # Neither contact has an external id that the other's events mention.
        anonymous = await ingest(session, "app.active", DAY, anonymous_id="visitor-1")
        by_email = await ingest(session, "app.active", 2 * DAY, email="ada@example.com")
        alone = await ingest(session, "app.active", DAY, anonymous_id="visitor-2")
        await ingest(session, "app.active", 3 * DAY, anonymous_id="visitor-2")
        before = set((await session.execute(matching_contacts(twice, NOW))).scalars())
        assert before == {alone}
        resolution = await merge_contacts(session, [anonymous, by_email], now=NOW)
        assert resolution is not None
        survivor = resolution.contact_id
        after = set((await session.execute(matching_contacts(twice, NOW))).scalars())
        assert after == {alone, survivor}
        assert await contact_matches(session, twice, survivor, NOW)
        facts = await load_facts(session, survivor, twice, NOW)
        assert len(facts.events) == 2
        assert evaluate(twice, facts, NOW)
        # The merged-away contact is not in audiences any more.
        loser = by_email if survivor == anonymous else anonymous
        assert loser not in after
