"""LISTEN on a Postgres channel and wake a loop on each NOTIFY (the dispatcher, the courier)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import psycopg
import structlog

log = structlog.get_logger(__name__)


async def listen_for_wakeups(
    libpq_dsn: str,
    channel: str,
    wake: asyncio.Event,
    *,
    set_listening: Callable[[bool], None],
    what: str,
) -> None:
    """Set ``wake`` on every notification of ``channel``, reconnecting with back-off.

    ``wake`` is also set on each (re)connect: anything notified while nobody listened
    is looked for at once. ``set_listening`` reports whether the LISTEN is live; while
    it is not, the owner's poll interval is the only wake-up. Runs until cancelled.
    """
    delay = 1.0
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(libpq_dsn, autocommit=True) as conn:
                await conn.execute(f"LISTEN {channel}")
                set_listening(True)
                delay = 1.0
                wake.set()
                async for _ in conn.notifies():
                    wake.set()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning(f"{what} LISTEN connection failed; polling only", exc_info=True)
        finally:
            set_listening(False)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 30.0)
