"""The batch ingest's contact lookup: key arrays as literals, only the columns it reads.

The lookup reads contacts' properties only when an item of the batch patches a contact;
what a batch stores must not depend on that (properties kept, patches merged).
"""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from hogsend.core.identity import Identity, IdentityKey
from hogsend.core.ingest import EventInput
from hogsend.db.engine import make_sessionmaker
from hogsend.db.repos import contacts as contacts_repo
from hogsend.db.repos import events as events_repo
from hogsend.db.repos.contacts import IngestColumns, text_array


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return make_sessionmaker(engine)


AWKWARD = [
    "plain",
    'with "quotes"',
    "back\\slash\\",
    "NULL",
    "null",
    "comma, {braces}",
    " spaced ",
    "Zoë ✓",
    "",
    '\\"',
]


async def test_text_array_keeps_every_element_as_given(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with sessions() as session:
        for values in (AWKWARD, [], ["only"]):
            row = await session.execute(
                text("SELECT CAST(:a AS text[])"), {"a": text_array(values)}
            )
            assert row.scalar_one() == values


def _item(name: str, user_id: str, patch: dict[str, object] | None = None) -> EventInput:
    return EventInput(
        name=name, identity=Identity(user_id=user_id), contact_properties=patch, source="batch"
    )


async def test_ingest_columns_read_what_the_full_lookup_reads(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with sessions() as session:
        await events_repo.ingest_batch(
            session,
            [
                _item("a", "u-1", {"plan": "pro"}),
                EventInput(
                    name="b",
                    identity=Identity(user_id="u-2", email="Ann@Example.com", anonymous_id="v"),
                    source="batch",
                ),
            ],
        )
        await session.commit()
    keys = [
        IdentityKey("external", "u-1"),
        IdentityKey("email", "ann@example.com"),
        IdentityKey("anonymous", "v"),
        IdentityKey("external", "nobody"),
    ]
    async with sessions() as session:
        full = await contacts_repo.lock_matches(session, keys)
        with_properties = await contacts_repo.lock_matches(
            session, keys, (), IngestColumns(properties=True)
        )
        without = await contacts_repo.lock_matches(
            session, keys, (), IngestColumns(properties=False)
        )
    assert full is not None
    assert with_properties is not None
    assert without is not None
    assert set(full.by_key) == set(with_properties.by_key) == set(without.by_key) == set(keys[:3])
    for key, contact in full.by_key.items():
        for lean in (with_properties.by_key[key], without.by_key[key]):
            assert (lean.id, lean.key, lean.user_id, lean.email, lean.anonymous_id) == (
                contact.id,
                contact.key,
                contact.user_id,
                contact.email,
                contact.anonymous_id,
            )
            assert lean.first_seen_at == contact.first_seen_at
            assert lean.last_seen_at == contact.last_seen_at
            assert lean.deleted_at is None
        assert with_properties.by_key[key].properties == contact.properties
        assert without.by_key[key].properties == {}
    assert full.by_key[keys[0]].properties == {"plan": "pro"}


async def _properties(sessions: async_sessionmaker[AsyncSession], user_id: str) -> object:
    async with sessions() as session:
        row = await session.execute(
            text("SELECT properties FROM contacts WHERE external_id = :u"), {"u": user_id}
        )
        return row.scalar_one()


async def test_batches_keep_and_merge_existing_properties(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with sessions() as session:
        await events_repo.ingest_batch(
            session, [_item("seed", "a", {"kept": 1}), _item("seed", "b", {"kept": 2})]
        )
        await session.commit()
    # No item patches anything: properties are not read, and must not be written.
    async with sessions() as session:
        results = await events_repo.ingest_batch(session, [_item("x", "a"), _item("x", "b")])
        await session.commit()
    assert [r.status for r in results] == ["stored", "stored"]
    assert await _properties(sessions, "a") == {"kept": 1}
    assert await _properties(sessions, "b") == {"kept": 2}
    # One item patches "a": its existing properties are merged, "b" is left alone.
    async with sessions() as session:
        await events_repo.ingest_batch(
            session,
            [
                _item("y", "b"),
                _item("y", "a", {"plan": "pro", "gone": 1}),
                _item("z", "a", {"gone": None}),
            ],
        )
        await session.commit()
    assert await _properties(sessions, "a") == {"kept": 1, "plan": "pro"}
    assert await _properties(sessions, "b") == {"kept": 2}
