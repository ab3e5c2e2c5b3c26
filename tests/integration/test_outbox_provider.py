"""The outbox provider stores whole messages in Postgres; the repo lists and reads them."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import event

from hogsend.channels.email import OutboxProvider, OutgoingEmail, build_provider
from hogsend.db.engine import make_async_engine, make_sessionmaker
from hogsend.db.repos import outbox_messages
from hogsend.errors import ConfigurationError
from hogsend.settings import Settings


async def test_outbox_stores_and_lists(database_url: str) -> None:
    engine = make_async_engine(database_url, pool_size=2)
    try:
        provider = build_provider(Settings(env="test", email_provider="outbox"), engine)
        assert isinstance(provider.inner, OutboxProvider)
        first = await provider.send(
            OutgoingEmail(
                from_email="Acme <hello@acme.test>",
                to="ada@example.com",
                subject="One",
                html="<p>1</p>",
                text="1\n",
                reply_to="help@acme.test",
                headers={"List-Unsubscribe": "<https://acme.test/u>"},
                idempotency_key="wf:1",
                tags={"template": "welcome"},
            )
        )
        second = await provider.send(
            OutgoingEmail(from_email="a@acme.test", to="bob@example.com", subject="Two", text="2")
        )
        assert first.provider == "outbox"
        async with make_sessionmaker(engine)() as session:
            assert await outbox_messages.count(session) == 2
            newest, oldest = await outbox_messages.list_messages(session)
            assert {newest.subject, oldest.subject} == {"One", "Two"}
            stored = await outbox_messages.get(session, uuid.UUID(first.message_id))
            assert stored is not None
            assert stored.html == "<p>1</p>"
            assert stored.text == "1\n"
            assert stored.headers["List-Unsubscribe"] == "<https://acme.test/u>"
            assert stored.headers["Reply-To"] == "help@acme.test"
            assert stored.headers["X-Hogsend-Tags"] == {"template": "welcome"}
            assert stored.headers["Message-ID"].endswith("@acme.test>")
            only_bob = await outbox_messages.list_messages(session, to_email="BOB@example.com")
            assert [m.id for m in only_bob] == [uuid.UUID(second.message_id)]
            page = await outbox_messages.list_messages(session, limit=1)
            rest = await outbox_messages.list_messages(
                session, before=(page[0].created_at, page[0].id)
            )
            assert len(page) == 1
            assert len(rest) == 1
            assert rest[0].id != page[0].id
            assert await outbox_messages.get(session, uuid.uuid4()) is None
    finally:
        await engine.dispose()


def test_outbox_needs_an_engine() -> None:
    with pytest.raises(ConfigurationError, match="engine"):
        build_provider(Settings(env="test", email_provider="outbox"))


async def test_concurrent_sends_share_one_write_and_each_gets_its_own_row(
    database_url: str,
) -> None:
    engine = make_async_engine(database_url, pool_size=2)
    statements: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if "outbox_messages" in statement:
            statements.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        provider = OutboxProvider(engine)
        results = await asyncio.gather(
            *(
                provider.send(
                    OutgoingEmail(
                        from_email="a@acme.test", to=f"r{n}@example.com", subject=f"S{n}", text="t"
                    )
                )
                for n in range(8)
            )
        )
        # The first send writes alone; the seven handed in meanwhile share the next write.
        assert len(statements) <= 2
        async with make_sessionmaker(engine)() as session:
            for n, result in enumerate(results):
                stored = await outbox_messages.get(session, uuid.UUID(result.message_id))
                assert stored is not None
                assert (stored.to_email, stored.subject) == (f"r{n}@example.com", f"S{n}")
            # Rows written together still list newest first, in the order handed in.
            listed = await outbox_messages.list_messages(session)
            assert [m.subject for m in listed] == [f"S{n}" for n in reversed(range(8))]
    finally:
        await engine.dispose()
