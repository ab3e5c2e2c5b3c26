"""Svix / Standard Webhooks signatures: ours verify svix's, svix verifies ours, forgeries fail."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from svix.webhooks import Webhook
from svix.webhooks import WebhookVerificationError as SvixVerificationError

from hogsend.core.webhook_signatures import (
    SignedHeaders,
    WebhookVerificationError,
    decode_secret,
    sign,
    signed_headers,
    verify,
)

SECRET = "whsec_" + base64.b64encode(b"resend-signing-key-for-tests-000").decode()
OTHER = "whsec_" + base64.b64encode(b"another-signing-key-for-tests-00").decode()
KEY = decode_secret(SECRET)
NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def svix_signed(
    body: str, *, msg_id: str = "msg_1", at: datetime = NOW, secret: str = SECRET
) -> SignedHeaders:
    signature = Webhook(secret).sign(msg_id=msg_id, timestamp=at, data=body)
    return SignedHeaders(id=msg_id, timestamp=str(int(at.timestamp())), signature=signature)


@given(body=st.text(max_size=300), msg_id=st.from_regex(r"msg_[A-Za-z0-9]{1,40}", fullmatch=True))
def test_svix_signed_deliveries_verify(body: str, msg_id: str) -> None:
    signed = svix_signed(body, msg_id=msg_id)
    assert verify(KEY, signed, body.encode(), now=NOW) == msg_id


@given(body=st.text(max_size=300))
def test_svix_verifies_what_we_sign(body: str) -> None:
    # svix checks the timestamp against the real clock, so sign with the real time.
    at = datetime.now(UTC)
    signature = sign(SECRET, msg_id="msg_x", timestamp=at, body=body.encode())
    Webhook(SECRET).verify(
        body,
        {
            "svix-id": "msg_x",
            "svix-timestamp": str(int(at.timestamp())),
            "svix-signature": signature,
        },
    )
    with pytest.raises(SvixVerificationError):
        Webhook(OTHER).verify(
            body,
            {
                "svix-id": "msg_x",
                "svix-timestamp": str(int(at.timestamp())),
                "svix-signature": signature,
            },
        )


def test_secret_without_prefix_is_the_same_key() -> None:
    assert decode_secret(SECRET.removeprefix("whsec_")) == KEY


@pytest.mark.parametrize("bad", ["", "whsec_", "whsec_not base64!", "   "])
def test_malformed_secrets_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="secret"):
        decode_secret(bad)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"body": b'{"type":"email.bounced"} '}, "no webhook signature matches"),
        ({"msg_id": "msg_2"}, "no webhook signature matches"),
        ({"key": decode_secret(OTHER)}, "no webhook signature matches"),
        ({"timestamp": str(int(NOW.timestamp()) + 1)}, "no webhook signature matches"),
        ({"timestamp": "yesterday"}, "not a Unix time"),
        ({"signature": "v2," + "A" * 44}, "no webhook signature matches"),
        ({"signature": ""}, "no webhook signature matches"),
        ({"msg_id": "m" * 300}, "short printable"),
        ({"signature": "v1,x " * 2000}, "too long"),
    ],
)
def test_tampering_is_refused(change: dict[str, object], message: str) -> None:
    body = b'{"type":"email.bounced"}'
    good = svix_signed(body.decode())
    signed = SignedHeaders(
        id=str(change.get("msg_id", good.id)),
        timestamp=str(change.get("timestamp", good.timestamp)),
        signature=str(change.get("signature", good.signature)),
    )
    key = change.get("key", KEY)
    assert isinstance(key, bytes)
    raw = change.get("body", body)
    assert isinstance(raw, bytes)
    with pytest.raises(WebhookVerificationError, match=message):
        verify(key, signed, raw, now=NOW)


def test_timestamps_outside_the_tolerance_are_refused_both_ways() -> None:
    body = "{}"
    tolerance = timedelta(minutes=5)
    edge = svix_signed(body, at=NOW - tolerance)
    assert verify(KEY, edge, body.encode(), now=NOW, tolerance=tolerance) == "msg_1"
    stale = svix_signed(body, at=NOW - tolerance - timedelta(seconds=1))
    with pytest.raises(WebhookVerificationError, match="too old"):
        verify(KEY, stale, body.encode(), now=NOW, tolerance=tolerance)
    future = svix_signed(body, at=NOW + tolerance + timedelta(seconds=1))
    with pytest.raises(WebhookVerificationError, match="in the future"):
        verify(KEY, future, body.encode(), now=NOW, tolerance=tolerance)


def test_one_matching_signature_of_several_is_enough() -> None:
    """While a secret is rotated, the sender signs with both: either one verifies."""
    body = '{"a":1}'
    ours = svix_signed(body)
    theirs = svix_signed(body, secret=OTHER)
    rotated = SignedHeaders(
        id="msg_1", timestamp=ours.timestamp, signature=f"{theirs.signature} {ours.signature}"
    )
    assert verify(KEY, rotated, body.encode(), now=NOW) == "msg_1"


def test_headers_are_read_under_svix_or_webhook_names() -> None:
    svix = {"svix-id": "a", "svix-timestamp": "1", "svix-signature": "v1,x"}
    standard = {"webhook-id": "b", "webhook-timestamp": "2", "webhook-signature": "v1,y"}
    assert signed_headers(svix) == SignedHeaders(id="a", timestamp="1", signature="v1,x")
    assert signed_headers(standard).id == "b"
    with pytest.raises(WebhookVerificationError, match="svix-timestamp"):
        signed_headers({"svix-id": "a", "svix-signature": "v1,x"})
    with pytest.raises(WebhookVerificationError, match="expected svix-id or webhook-id"):
        signed_headers({})
    with pytest.raises(WebhookVerificationError, match="svix-id"):
        signed_headers({"svix-id": "", "svix-timestamp": "1", "svix-signature": "v1,x"})
