"""Signed link tokens: round trip, forgery, purpose, expiry, malformed input."""

from __future__ import annotations

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
    encoded = tokens._b64(payload)
    return f"{encoded}.{tokens._b64(tokens._signature(encoded, SECRET))}"


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
