"""API keys: minting, listing, revoking, and checking a presented key.

A raw key is ``hsk_`` followed by 32 random bytes in base64url (47 characters). Only
its SHA-256 hex digest is stored, next to a visible prefix (the first 12 characters)
that lets people tell keys apart. A salted slow hash would buy nothing here: the key
carries 256 bits of entropy, so the digest cannot be brute-forced, and the lookup by
digest has to be an indexed equality.

Nothing is cached here: :func:`authenticate` reads the row on every call. The API keeps
the keys it checked for a few seconds (:class:`hogsend.api.auth.KeyCache`), which bounds
how long another process may still accept a revoked key.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from hogsend.db.tables.auth import API_SCOPES, ApiKey

KEY_PREFIX = "hsk_"
VISIBLE_PREFIX_LENGTH = 12
# A key looks like hsk_ + 43 base64url characters; anything far off that is not worth a query.
_MAX_RAW_LENGTH = 128
LAST_USED_RESOLUTION = timedelta(minutes=1)
"""``last_used_at`` is refreshed at most this often per key, so busy keys cost no writes."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiKeyInfo:
    """An API key as people may see it: everything except the secret."""

    id: uuid.UUID
    name: str
    key_prefix: str
    scopes: tuple[str, ...]
    created_by: str | None
    created_by_key_id: uuid.UUID | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    expires_at: datetime | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Principal:
    """Who is calling: the key a request authenticated with."""

    key_id: uuid.UUID
    name: str
    key_prefix: str
    scopes: frozenset[str]
    expires_at: datetime | None


def generate_key() -> str:
    """A new raw key: ``hsk_`` + base64url of 32 random bytes."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(raw: str) -> str:
    """The stored form of a raw key (SHA-256, hex)."""
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def _info(row: ApiKey) -> ApiKeyInfo:
    return ApiKeyInfo(
        id=row.id,
        name=row.name,
        key_prefix=row.key_prefix,
        scopes=tuple(row.scopes),
        created_by=row.created_by,
        created_by_key_id=row.created_by_key_id,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
        expires_at=row.expires_at,
    )


async def create_key(
    session: AsyncSession,
    *,
    name: str,
    scopes: Sequence[str],
    expires_at: datetime | None = None,
    created_by: str | None = None,
    created_by_key_id: uuid.UUID | None = None,
) -> tuple[ApiKeyInfo, str]:
    """Mint a key; the caller commits.

    Returns:
        The stored key's info and the raw key, which exists nowhere else: show it once.

    Raises:
        ValueError: an empty name, no scopes, an unknown scope or a naive ``expires_at``.
    """
    if not name.strip():
        raise ValueError("an API key needs a non-empty name")
    unique_scopes = list(dict.fromkeys(scopes))
    if not unique_scopes:
        raise ValueError("an API key needs at least one scope")
    unknown = [s for s in unique_scopes if s not in API_SCOPES]
    if unknown:
        raise ValueError(f"unknown scope(s) {unknown}; known scopes: {', '.join(API_SCOPES)}")
    if expires_at is not None and expires_at.tzinfo is None:
        raise ValueError("expires_at must be timezone-aware")
    raw = generate_key()
    row = ApiKey(
        name=name,
        key_prefix=raw[:VISIBLE_PREFIX_LENGTH],
        key_hash=hash_key(raw),
        scopes=unique_scopes,
        expires_at=expires_at,
        created_by=created_by,
        created_by_key_id=created_by_key_id,
    )
    session.add(row)
    await session.flush()
    await session.refresh(row)
    return _info(row), raw


async def get_key(session: AsyncSession, key_id: uuid.UUID) -> ApiKeyInfo | None:
    """One key by id, revoked or not."""
    row = await session.get(ApiKey, key_id)
    return None if row is None else _info(row)


async def list_keys(
    session: AsyncSession,
    *,
    include_revoked: bool = False,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[ApiKeyInfo], int]:
    """Keys newest first, and how many match in total (for pagination)."""
    where = [] if include_revoked else [ApiKey.revoked_at.is_(None)]
    total = await session.scalar(select(func.count()).select_from(ApiKey).where(*where))
    rows = await session.scalars(
        select(ApiKey)
        .where(*where)
        .order_by(ApiKey.created_at.desc(), ApiKey.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return [_info(row) for row in rows], int(total or 0)


async def revoke_key(session: AsyncSession, key_id: uuid.UUID) -> bool:
    """Revoke a key; the caller commits. False if it does not exist or is already revoked."""
    revoked = await session.scalar(
        update(ApiKey)
        .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=func.now())
        .returning(ApiKey.id)
    )
    return revoked is not None


_AUTHENTICATE = """
SELECT id, name, key_prefix, key_hash, scopes, expires_at, revoked_at, last_used_at, now()
FROM api_keys
WHERE key_hash = %(key_hash)s
"""

# The WHERE repeats the age check so concurrent requests write once a minute, not N times.
_TOUCH = """
UPDATE api_keys
SET last_used_at = now()
WHERE id = %(id)s
  AND (last_used_at IS NULL OR last_used_at < now() - %(resolution)s)
"""


async def authenticate(conn: psycopg.AsyncConnection[Any], raw: str) -> Principal | None:
    """The principal a raw key stands for, or None if it is unknown, expired or revoked.

    This runs on every API request, so it is plain SQL on a psycopg connection (SQLAlchemy's
    execution layer costs several times the query itself; see bench/auth.py). Refreshes
    ``last_used_at`` when older than :data:`LAST_USED_RESOLUTION`; on an autocommit
    connection that is stored at once, otherwise the caller commits.
    """
    if not raw.startswith(KEY_PREFIX) or len(raw) > _MAX_RAW_LENGTH:
        return None
    digest = hash_key(raw)
    cursor = await conn.execute(_AUTHENTICATE, {"key_hash": digest})
    found = await cursor.fetchone()
    if found is None:
        return None
    key_id, name, prefix, stored, scopes, expires_at, revoked_at, last_used_at, now = found
    # The indexed lookup already matched; the constant-time compare is belt and braces.
    if not hmac.compare_digest(stored, digest):
        return None
    if revoked_at is not None or (expires_at is not None and expires_at <= now):
        return None
    if last_used_at is None or now - last_used_at >= LAST_USED_RESOLUTION:
        await conn.execute(_TOUCH, {"id": key_id, "resolution": LAST_USED_RESOLUTION})
    return Principal(
        key_id=key_id,
        name=name,
        key_prefix=prefix,
        scopes=frozenset(scopes),
        expires_at=expires_at,
    )
