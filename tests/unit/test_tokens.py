"""Signed link tokens: round trip, forgery, purpose, expiry, malformed input."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest

from hogsend.core import tokens
from hogsend.core.tokens import InvalidToken, TokenClaims

SECRET = b"k" * 32
NOW = datetime(2026, 3, 4, 12, 0, tzinfo=UTC)


def make(**changes: object) -> str:
    values: dict[str, object] = {
        "purpose": "unsubscribe",
        "secret": SECRET,
        "now": NOW,
        "contact_id": "c-1",
        "email": "ann@example.com",
        "list_id": "newsletter",
    }
    values.update(changes)
    return tokens.issue(**values)  # type: ignore[arg-type]


def test_round_trip() -> None:
    claims = tokens.verify(make(), SECRET, purpose="unsubscribe", now=NOW)
    assert claims == TokenClaims(
        purpose="unsubscribe",
        contact_id="c-1",
        email="ann@example.com",
        list_id="newsletter",
        expires_at=int((NOW + tokens.DEFAULT_TTL).timestamp()),
    )
    assert "=" not in make()
    assert "/" not in make()
    assert "+" not in make()


def test_other_secret_or_edited_payload_is_refused() -> None:
    token = make()
    with pytest.raises(InvalidToken, match="signature"):
        tokens.verify(token, b"x" * 32, purpose="unsubscribe", now=NOW)
    other = make(list_id=None)
    forged = other.split(".")[0] + "." + token.split(".")[1]
    with pytest.raises(InvalidToken, match="signature"):
        tokens.verify(forged, SECRET, purpose="unsubscribe", now=NOW)


def test_purpose_is_checked() -> None:
    with pytest.raises(InvalidToken, match="not for preferences"):
        tokens.verify(make(), SECRET, purpose="preferences", now=NOW)


def test_expiry() -> None:
    token = make(ttl=timedelta(seconds=10))
    tokens.verify(token, SECRET, purpose="unsubscribe", now=NOW + timedelta(seconds=9))
    with pytest.raises(InvalidToken, match="expired"):
        tokens.verify(token, SECRET, purpose="unsubscribe", now=NOW + timedelta(seconds=10))


@pytest.mark.parametrize("bad", ["", "abc", "a.b.c", "x" * 3000, "a.!!!", "e30.%%"])
def test_malformed(bad: str) -> None:
    with pytest.raises(InvalidToken):
        tokens.verify(bad, SECRET, purpose="unsubscribe", now=NOW)


def _signed(payload: bytes) -> str:
    encoded = tokens.b64url(payload)
    return f"{encoded}.{tokens.b64url(tokens._signature(encoded, SECRET))}"


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[]",
        b'{"p":"other","x":1}',
        b'{"p":"unsubscribe","x":"soon"}',
        b'{"p":"unsubscribe","x":9999999999,"c":5}',
    ],
)
def test_signed_but_malformed_payloads(payload: bytes) -> None:
    with pytest.raises(InvalidToken, match="payload"):
        tokens.verify(_signed(payload), SECRET, purpose="unsubscribe", now=NOW)


@pytest.mark.parametrize(
    "secret",
    [b"", b"k", b"b" * 40, b"x" * 64, b"y" * 65, bytes(range(256))],
    ids=["empty", "one", "40", "block", "block+1", "256"],
)
def test_hmac_sha256_is_the_standard_hmac(secret: bytes) -> None:
    # Keys shorter than, equal to and longer than SHA-256's block (hashed first).
    import hmac

    for data in (b"", b"payload", b"z" * 1000):
        assert tokens.hmac_sha256(secret, data) == hmac.digest(secret, data, "sha256")
    # The cached key states are copied, never advanced: a second call is the same.
    assert tokens.hmac_sha256(secret, b"again") == tokens.hmac_sha256(secret, b"again")


@pytest.mark.parametrize(
    "values",
    [
        ("unsubscribe", "c-1", "ann@example.com", "newsletter", 1_800_000_000),
        ("preferences", None, None, None, 0),
        ("unsubscribe", 'q"uote\\slash', "tab\there\nnew\rline\x00\x1f\x7f", "ünï©ødé ☃ 𝄞", -5),
        ("unsubscribe", "\ud800 lone surrogate", "</script>&<>", "", 2**70),
        ("unsubscribe", "c", "e", "l", True),  # a bool is written by the encoder: true
        ("unsubscribe", 12, "e", None, 3),  # a number where a string belongs: the encoder's
    ],
)
def test_payload_is_what_the_json_encoder_writes(values: tuple[object, ...]) -> None:
    purpose, contact_id, email, list_id, expires_at = values
    expected = json.dumps(
        {"p": purpose, "c": contact_id, "e": email, "l": list_id, "x": expires_at},
        separators=(",", ":"),
    )
    assert tokens._payload_json(*values) == expected  # type: ignore[arg-type]


def test_b64url_is_urlsafe_base64_without_padding() -> None:
    for size in range(70):
        data = bytes((n * 37 + size) % 256 for n in range(size))
        assert tokens.b64url(data) == base64.urlsafe_b64encode(data).decode().rstrip("=")
