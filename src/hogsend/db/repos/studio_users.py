"""Studio users and their browser sessions.

Passwords arrive here already hashed (argon2, see :mod:`hogsend.studio.passwords`); this
module never sees a plain password. A session is stored as the SHA-256 of the random
token its cookie holds, next to the CSRF token its forms must echo, so a copy of the
table lets nobody sign in. Every function takes the caller's session and never commits.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from hogsend.db.tables.auth import STUDIO_ROLES, StudioSession, StudioUser
from hogsend.errors import Conflict

# Serialises "create the first admin" so two setup forms posted at once make one admin.
_FIRST_USER_LOCK = 0x73747564696F  # "studio" in ASCII


@dataclass(frozen=True, slots=True, kw_only=True)
class StudioUserInfo:
    """A Studio user as the UI shows it (never the password hash)."""

    id: uuid.UUID
    email: str
    name: str | None
    role: str
    created_at: datetime
    last_login_at: datetime | None
    disabled_at: datetime | None

    @property
    def is_admin(self) -> bool:
        """Whether the user may change things (``admin``) or only look (``viewer``)."""
        return self.role == "admin"

    def created_detail(self, via: str) -> dict[str, object]:
        """The audit detail of this user's creation (``via``: how it was created)."""
        shown = {"email": self.email, "role": self.role}
        return {**shown, "via": via, "before": None, "after": shown}


@dataclass(frozen=True, slots=True, kw_only=True)
class SignedIn:
    """A live session and the user it belongs to."""

    session_id: uuid.UUID
    csrf_token: str
    expires_at: datetime
    user: StudioUserInfo


def hash_session_token(raw: str) -> str:
    """The stored form of a session cookie's token (SHA-256, hex).

    The token carries 256 random bits, so a fast digest is enough; a slow hash would
    cost every page view for nothing.
    """
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def _info(row: StudioUser) -> StudioUserInfo:
    return StudioUserInfo(
        id=row.id,
        email=row.email,
        name=row.name,
        role=row.role,
        created_at=row.created_at,
        last_login_at=row.last_login_at,
        disabled_at=row.disabled_at,
    )


async def count_users(session: AsyncSession) -> int:
    """How many Studio users exist (disabled ones included)."""
    return int(await session.scalar(select(func.count()).select_from(StudioUser)) or 0)


async def create_user(
    session: AsyncSession,
    *,
    email: str,
    password_hash: str,
    role: str = "viewer",
    name: str | None = None,
) -> StudioUserInfo:
    """Add a user; the caller commits.

    Raises:
        ValueError: an unknown role.
        Conflict: a user with this email (compared case-insensitively) exists.
    """
    if role not in STUDIO_ROLES:
        raise ValueError(f"unknown role {role!r}; choose from {', '.join(STUDIO_ROLES)}")
    row = StudioUser(email=email, password_hash=password_hash, role=role, name=name)
    try:
        async with session.begin_nested():
            session.add(row)
            await session.flush()
    except IntegrityError:
        raise Conflict(f"a Studio user with the email {email} already exists") from None
    await session.refresh(row)
    return _info(row)


async def create_first_admin(
    session: AsyncSession, *, email: str, password_hash: str, name: str | None = None
) -> StudioUserInfo | None:
    """Create the first user, as an admin, unless some user exists; the caller commits.

    Returns:
        The new admin, or None when a user already existed (nothing is written).
    """
    await session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _FIRST_USER_LOCK})
    if await count_users(session) > 0:
        return None
    return await create_user(
        session, email=email, password_hash=password_hash, role="admin", name=name
    )


async def credentials(session: AsyncSession, email: str) -> tuple[StudioUserInfo, str] | None:
    """The enabled user with this email (case-insensitive) and its password hash."""
    row = await session.scalar(
        select(StudioUser).where(
            func.lower(StudioUser.email) == email.lower(), StudioUser.disabled_at.is_(None)
        )
    )
    return None if row is None else (_info(row), row.password_hash)


async def list_users(session: AsyncSession) -> list[StudioUserInfo]:
    """Every user, oldest first."""
    rows = await session.scalars(select(StudioUser).order_by(StudioUser.created_at, StudioUser.id))
    return [_info(row) for row in rows]


async def set_password_hash(session: AsyncSession, user_id: uuid.UUID, password_hash: str) -> None:
    """Store a new hash (a changed password, or stronger hashing parameters)."""
    await session.execute(
        update(StudioUser).where(StudioUser.id == user_id).values(password_hash=password_hash)
    )


async def start_session(
    session: AsyncSession,
    *,
    user_id: uuid.UUID,
    token_hash: str,
    csrf_token: str,
    lifetime_seconds: int,
    ip_address: str | None,
    user_agent: str | None,
) -> SignedIn:
    """Record a sign-in: a new session row, the user's last login, and expired rows gone.

    The expiry is computed by the database clock, like every later check against it.
    """
    await session.execute(delete(StudioSession).where(StudioSession.expires_at <= func.now()))
    expires_at = func.now() + func.make_interval(0, 0, 0, 0, 0, 0, lifetime_seconds)
    row = StudioSession(
        user_id=user_id,
        token_hash=token_hash,
        csrf_token=csrf_token,
        expires_at=expires_at,
        ip_address=ip_address,
        user_agent=(user_agent or "")[:512] or None,
    )
    session.add(row)
    user = await session.scalar(
        update(StudioUser)
        .where(StudioUser.id == user_id)
        .values(last_login_at=func.now())
        .returning(StudioUser)
        .execution_options(populate_existing=True)
    )
    await session.flush()
    await session.refresh(row)
    assert user is not None
    return SignedIn(
        session_id=row.id, csrf_token=row.csrf_token, expires_at=row.expires_at, user=_info(user)
    )


async def signed_in(session: AsyncSession, token_hash: str) -> SignedIn | None:
    """The live session holding this token, with its enabled user; one query.

    None for an unknown token, an expired session or a disabled user.
    """
    found = (
        await session.execute(
            select(StudioSession, StudioUser)
            .join(StudioUser, StudioUser.id == StudioSession.user_id)
            .where(
                StudioSession.token_hash == token_hash,
                StudioSession.expires_at > func.now(),
                StudioUser.disabled_at.is_(None),
            )
        )
    ).first()
    if found is None:
        return None
    row, user = found
    return SignedIn(
        session_id=row.id, csrf_token=row.csrf_token, expires_at=row.expires_at, user=_info(user)
    )


async def end_session(session: AsyncSession, token_hash: str) -> bool:
    """Delete the session holding this token (sign-out). False if there was none."""
    result = await session.execute(
        delete(StudioSession).where(StudioSession.token_hash == token_hash)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]
