"""Signed tokens for the links in emails (one-click unsubscribe, preference centre). No I/O.

A token is ``<payload>.<signature>``, both base64url without padding: the payload is
compact JSON of :class:`TokenClaims`, the signature HMAC-SHA256 of the encoded payload
under the secret key. Verification compares signatures in constant time, then checks
the purpose (a preference token cannot unsubscribe) and the expiry.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from json.encoder import encode_basestring_ascii
from typing import Any, Literal

from hogsend.errors import HogsendError

Purpose = Literal["unsubscribe", "preferences"]
PURPOSES: tuple[Purpose, ...] = ("unsubscribe", "preferences")

DEFAULT_TTL = timedelta(days=365)
"""How long an emailed link keeps working: people unsubscribe from old messages too."""

MAX_TOKEN_LENGTH = 2048


class InvalidToken(HogsendError):
    """A token that is malformed, forged, for another purpose, or expired."""

    code = "invalid-token"


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenClaims:
    """What a token grants.

    Attributes:
        purpose: ``unsubscribe`` (one-click) or ``preferences`` (the preference centre).
        contact_id: the contact, as text; None for an address no contact holds.
        email: the recipient address the message went to.
        list_id: the list or category to unsubscribe from; None means all email.
        expires_at: Unix seconds after which the token is refused.
    """

    purpose: Purpose
    contact_id: str | None
    email: str | None
    list_id: str | None
    expires_at: int


# What base64.urlsafe_b64encode does to standard base64, in one C call.
_URLSAFE = bytes.maketrans(b"+/", b"-_")


def b64url(data: bytes) -> str:
    """``data`` in base64url without padding (``base64.urlsafe_b64encode``, ``=`` removed)."""
    return binascii.b2a_base64(data, newline=False).translate(_URLSAFE).decode().rstrip("=")


def unb64url(text: str) -> bytes:
    """The bytes of :func:`b64url`'s ``text`` (padding put back).

    Raises:
        binascii.Error: ``text`` is not base64url.
    """
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_BLOCK = 64
"""SHA-256's block size in bytes (the HMAC key pads to it)."""


@functools.lru_cache(maxsize=16)
def _keyed(secret: bytes) -> tuple[Any, Any]:
    """SHA-256 states with the HMAC inner and outer padded keys already absorbed."""
    key = hashlib.sha256(secret).digest() if len(secret) > _BLOCK else secret
    key = key.ljust(_BLOCK, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
    return inner, outer


def hmac_sha256(secret: bytes, data: bytes) -> bytes:
    """HMAC-SHA256 of ``data`` under ``secret`` (RFC 2104), what ``hmac.digest`` gives.

    The padded key's two blocks are hashed once per secret and the states copied per
    call: half the CPU of ``hmac.digest``, which sets the key up anew each time, and a
    message signs four or more values (its link tokens, click ids and pixel).
    """
    inner, outer = _keyed(secret)
    inner = inner.copy()
    inner.update(data)
    outer = outer.copy()
    outer.update(inner.digest())
    digest: bytes = outer.digest()
    return digest


def _signature(encoded_payload: str, secret: bytes) -> bytes:
    return hmac_sha256(secret, encoded_payload.encode())


# One encoder: json.dumps with options builds a new one on every call.
_COMPACT = json.JSONEncoder(separators=(",", ":")).encode


def sign(claims: TokenClaims, secret: bytes) -> str:
    """The token carrying ``claims``, signed with ``secret``."""
    return _signed(
        claims.purpose, claims.contact_id, claims.email, claims.list_id, claims.expires_at, secret
    )


def _signed(
    purpose: str,
    contact_id: str | None,
    email: str | None,
    list_id: str | None,
    expires_at: int,
    secret: bytes,
) -> str:
    encoded = b64url(_payload_json(purpose, contact_id, email, list_id, expires_at).encode())
    return f"{encoded}.{b64url(_signature(encoded, secret))}"


def _payload_json(
    purpose: str, contact_id: str | None, email: str | None, list_id: str | None, expires_at: int
) -> str:
    """``_COMPACT`` of the claims' payload, written out: a message signs two tokens, and the
    encoder's Python layers cost more than the payload. Strings go through the escaping
    the encoder itself calls for each string (``encode_basestring_ascii``, in C) and the
    expiry through ``int.__repr__``, as the encoder writes an int; any other value (a
    bool, a number where a string belongs) is left to the encoder."""
    if type(expires_at) is int:
        try:
            return (
                f'{{"p":{_json_text(purpose)},"c":{_json_text(contact_id)},'
                f'"e":{_json_text(email)},"l":{_json_text(list_id)},'
                f'"x":{int.__repr__(expires_at)}}}'
            )
        except TypeError:
            pass  # not a string: the encoder writes it (or refuses it) as before
    return _COMPACT({"p": purpose, "c": contact_id, "e": email, "l": list_id, "x": expires_at})


def _json_text(value: str | None) -> str:
    return "null" if value is None else encode_basestring_ascii(value)


def issue(
    *,
    purpose: Purpose,
    secret: bytes,
    now: datetime,
    contact_id: str | None,
    email: str | None,
    list_id: str | None = None,
    ttl: timedelta = DEFAULT_TTL,
) -> str:
    """Sign a new token valid for ``ttl`` from ``now``."""
    return _signed(purpose, contact_id, email, list_id, int((now + ttl).timestamp()), secret)


def verify(token: str, secret: bytes, *, purpose: Purpose, now: datetime) -> TokenClaims:
    """The claims of a genuine, unexpired ``token`` made for ``purpose``.

    Raises:
        InvalidToken: malformed, bad signature, another purpose, or expired.
    """
    if len(token) > MAX_TOKEN_LENGTH or token.count(".") != 1:
        raise InvalidToken("malformed token")
    encoded, signature = token.split(".")
    try:
        given = unb64url(signature)
    except (binascii.Error, ValueError):
        raise InvalidToken("malformed token") from None
    # compare_digest: the time taken must not reveal how much of a forgery matched.
    if not hmac.compare_digest(given, _signature(encoded, secret)):
        raise InvalidToken("bad token signature")
    try:
        payload = json.loads(unb64url(encoded))
    except (binascii.Error, ValueError):
        raise InvalidToken("malformed token payload") from None
    if not isinstance(payload, dict) or payload.get("p") not in PURPOSES:
        raise InvalidToken("malformed token payload")
    expires_at = payload.get("x")
    if not isinstance(expires_at, int):
        raise InvalidToken("malformed token payload")
    fields = (payload.get("c"), payload.get("e"), payload.get("l"))
    if not all(value is None or isinstance(value, str) for value in fields):
        raise InvalidToken("malformed token payload")
    if payload["p"] != purpose:
        raise InvalidToken(f"token is not for {purpose}")
    if now.timestamp() >= expires_at:
        raise InvalidToken("token has expired")
    return TokenClaims(
        purpose=payload["p"],
        contact_id=fields[0],
        email=fields[1],
        list_id=fields[2],
        expires_at=expires_at,
    )
