"""Engines: one async engine per process for our tables, sync ones for migrations."""

from __future__ import annotations

from typing import Any

import psycopg
from sqlalchemy import Engine, create_engine
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.ext.asyncio import AsyncSession as AsyncSession


def normalize_url(url: str) -> str:
    """The SQLAlchemy URL for psycopg 3, whatever Postgres scheme the user wrote."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def libpq_url(url: str) -> str:
    """The plain libpq URL (what psycopg.connect and DBOS accept)."""
    return "postgresql://" + normalize_url(url)[len("postgresql+psycopg://") :]


def make_async_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    """The async engine the API and worker use for hogsend's own tables."""
    return create_async_engine(
        normalize_url(url),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_recycle=1800,
    )


def make_sync_engine(url: str) -> Engine:
    """A small sync engine for migrations and CLI one-offs."""
    return create_engine(normalize_url(url), pool_size=2, max_overflow=2, pool_pre_ping=True)


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded values after commit (we hand them to the API layer)."""
    return async_sessionmaker(engine, expire_on_commit=False)


async def driver_connection(conn: AsyncConnection) -> psycopg.AsyncConnection[Any]:
    """The psycopg connection under ``conn``, for what SQLAlchemy cannot send: COPY, and
    several statements in one simple-protocol round trip."""
    raw = await conn.get_raw_connection()
    driver: psycopg.AsyncConnection[Any] = raw.driver_connection  # type: ignore[assignment]
    return driver
