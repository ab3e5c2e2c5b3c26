"""Studio passwords: argon2id hashes, the rules for new passwords, constant-ish timing.

Hashing takes tens of milliseconds and 64 MiB on purpose (argon2-cffi's RFC 9106 "low
memory" profile): callers on the event loop run it in a thread (:func:`verify_in_thread`).
"""

from __future__ import annotations

import asyncio
import functools

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 1024


@functools.cache
def _hasher() -> PasswordHasher:
    return PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    # Verified against when the email is unknown, so that answer takes as long as a
    # wrong password and response times do not reveal which emails have accounts.
    return _hasher().hash("not a password anyone has")


def password_problem(password: str) -> str | None:
    """Why ``password`` cannot be a new Studio password, or None when it can."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"must be at least {MIN_PASSWORD_LENGTH} characters"
    if len(password) > MAX_PASSWORD_LENGTH:
        return f"must be at most {MAX_PASSWORD_LENGTH} characters"
    if not password.strip():
        return "must not be only spaces"
    return None


def hash_password(password: str) -> str:
    """An argon2id hash of ``password`` (salt and parameters included)."""
    return str(_hasher().hash(password))


def verify_password(stored_hash: str | None, password: str) -> bool:
    """Whether ``password`` matches ``stored_hash``; None (unknown user) costs the same."""
    try:
        return bool(_hasher().verify(stored_hash or _dummy_hash(), password)) and (
            stored_hash is not None
        )
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(stored_hash: str) -> bool:
    """Whether the hash was made with weaker parameters than today's."""
    return bool(_hasher().check_needs_rehash(stored_hash))


async def verify_in_thread(stored_hash: str | None, password: str) -> bool:
    """:func:`verify_password` off the event loop."""
    return await asyncio.to_thread(verify_password, stored_hash, password)


async def hash_in_thread(password: str) -> str:
    """:func:`hash_password` off the event loop."""
    return await asyncio.to_thread(hash_password, password)
