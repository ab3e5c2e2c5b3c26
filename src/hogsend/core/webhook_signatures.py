"""Signed webhooks as Svix and the Standard Webhooks spec define them. No I/O.

Resend signs its webhooks through Svix; hogsend's generic delivery webhook uses the same
scheme, so any Standard Webhooks library can sign for it. A delivery carries three
headers: an id, a Unix timestamp (seconds) and a signature list. The signature is
``v1,`` + base64(HMAC-SHA256(key, "<id>.<timestamp>.<raw body>")); the list holds one
or more of them separated by spaces (several while a secret is being rotated), and one
match is enough. The key is the secret's base64 part (``whsec_<base64>``).

Verification refuses a delivery whose timestamp is further than the tolerance from now,
in either direction, so a captured request cannot be replayed later; the receiver's
own dedupe on the id covers replays inside that window.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from hogsend.errors import HogsendError

SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE = timedelta(minutes=5)
MAX_ID_LENGTH = 255
# A signature list longer than this is not from a sender rotating a few secrets.
_MAX_SIGNATURE_HEADER = 4096


class WebhookVerificationError(HogsendError):
    """A webhook delivery whose headers are missing, malformed, stale or wrongly signed."""

    code = "webhook-signature"


@dataclass(frozen=True, slots=True, kw_only=True)
class SignedHeaders:
    """The three headers of a signed delivery, as received."""

    id: str
    timestamp: str
    signature: str


def decode_secret(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret (the prefix is optional).

    Raises:
        ValueError: the secret is empty or its key part is not base64.
    """
    encoded = secret.strip().removeprefix(SECRET_PREFIX)
    if not encoded:
        raise ValueError("the webhook secret is empty")
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            "the webhook secret must be whsec_ followed by base64 (copy it whole from "
            "the provider's webhook page)"
        ) from None
    if not key:
        raise ValueError("the webhook secret is empty")
    return key


def _signature(key: bytes, msg_id: str, timestamp: str, body: bytes) -> str:
    signed = msg_id.encode() + b"." + timestamp.encode() + b"." + body
    return base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def sign(secret: str, *, msg_id: str, timestamp: datetime, body: bytes) -> str:
    """The signature header value for a delivery (what a sender puts in ``webhook-signature``)."""
    stamp = str(int(timestamp.timestamp()))
    return "v1," + _signature(decode_secret(secret), msg_id, stamp, body)


def signed_headers(
    headers: Mapping[str, str], prefixes: tuple[str, ...] = ("svix", "webhook")
) -> SignedHeaders:
    """Pick the id, timestamp and signature headers, under the first prefix that has an id.

    ``headers`` must look names up case-insensitively (Starlette's ``Headers`` does).

    Raises:
        WebhookVerificationError: a header is missing.
    """
    for prefix in prefixes:
        msg_id = headers.get(f"{prefix}-id")
        if msg_id is None:
            continue
        missing = [
            f"{prefix}-{part}"
            for part in ("timestamp", "signature")
            if not headers.get(f"{prefix}-{part}")
        ]
        if missing or not msg_id:
            raise WebhookVerificationError(
                "missing webhook header(s): " + ", ".join(missing or [f"{prefix}-id"])
            )
        return SignedHeaders(
            id=msg_id,
            timestamp=headers[f"{prefix}-timestamp"],
            signature=headers[f"{prefix}-signature"],
        )
    raise WebhookVerificationError(
        "missing webhook headers: expected "
        + " or ".join(f"{p}-id" for p in prefixes)
        + " with its -timestamp and -signature"
    )


def verify(
    key: bytes,
    signed: SignedHeaders,
    body: bytes,
    *,
    now: datetime,
    tolerance: timedelta = DEFAULT_TOLERANCE,
) -> str:
    """Check a delivery's signature and age; return its id.

    Args:
        key: the HMAC key (:func:`decode_secret` of the secret).
        signed: the delivery's headers.
        body: the raw request body, byte for byte as received.
        now: the current instant (timezone-aware).
        tolerance: the largest accepted distance between ``now`` and the timestamp.

    Raises:
        WebhookVerificationError: saying what is wrong (never which signature was expected).
    """
    if len(signed.id) > MAX_ID_LENGTH or not signed.id.isprintable():
        raise WebhookVerificationError("the webhook id is not a short printable string")
    try:
        stamp = int(signed.timestamp)
    except ValueError:
        raise WebhookVerificationError("the webhook timestamp is not a Unix time") from None
    age = now.timestamp() - stamp
    if abs(age) > tolerance.total_seconds():
        raise WebhookVerificationError(
            "the webhook timestamp is too old"
            if age > 0
            else "the webhook timestamp is in the future"
        )
    if len(signed.signature) > _MAX_SIGNATURE_HEADER:
        raise WebhookVerificationError("the webhook signature header is too long")
    expected = _signature(key, signed.id, str(stamp), body).encode()
    for candidate in signed.signature.split():
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode(), expected):
            return signed.id
    raise WebhookVerificationError("no webhook signature matches the body and the secret")
