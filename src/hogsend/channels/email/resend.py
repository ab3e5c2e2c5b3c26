"""The Resend provider: POST /emails over httpx, with Resend's Idempotency-Key header."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from hogsend.channels.email.message import OutgoingEmail, ProviderResult
from hogsend.errors import PermanentProviderError, ProviderAlreadyAccepted, TransientProviderError

DEFAULT_BASE_URL = "https://api.resend.com"


class ResendProvider:
    """Send through Resend's HTTP API.

    Args:
        api_key: the Resend API key.
        base_url: the API root (tests point it at a local server).
        timeout: seconds per request.
        transport: an httpx transport to use instead of the network (for fakes).

    429, 5xx and network errors raise TransientProviderError (``retry_after`` from the
    ``Retry-After`` header when sent; a 429 is ``throttled``); other 4xx raise
    PermanentProviderError, except 409 ``concurrent_idempotent_requests``, which is
    transient, and 409 ``invalid_idempotent_request`` (the key went out before, with
    another body), which raises ProviderAlreadyAccepted.
    """

    name = "resend"

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            timeout=timeout,
            transport=transport,
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": "hogsend"},
        )

    @staticmethod
    def payload(message: OutgoingEmail) -> dict[str, Any]:
        """The JSON body Resend expects for ``message``."""
        body: dict[str, Any] = {
            "from": message.from_email,
            "to": [message.to],
            "subject": message.subject,
        }
        if message.html is not None:
            body["html"] = message.html
        if message.text is not None:
            body["text"] = message.text
        if message.reply_to:
            body["reply_to"] = message.reply_to
        if message.headers:
            body["headers"] = dict(message.headers)
        if message.tags:
            body["tags"] = [{"name": k, "value": v} for k, v in message.tags.items()]
        return body

    async def send(self, message: OutgoingEmail) -> ProviderResult:
        """Deliver ``message``."""
        headers = {}
        if message.idempotency_key is not None:
            # Resend caps keys at 256 characters; ours are far shorter.
            headers["Idempotency-Key"] = message.idempotency_key
        try:
            response = await self._client.post(
                "/emails", json=self.payload(message), headers=headers
            )
        except httpx.TransportError as exc:
            raise TransientProviderError(
                f"Resend unreachable: {exc!r}", provider=self.name
            ) from exc
        status = response.status_code
        if 200 <= status < 300:
            message_id = _json(response).get("id")
            if not isinstance(message_id, str):
                raise TransientProviderError(
                    f"Resend answered {status} without an id", provider=self.name, status=status
                )
            return ProviderResult(provider=self.name, message_id=message_id)
        detail = _json(response)
        text = f"Resend {status}: {detail.get('name', '')} {detail.get('message', response.text)}"
        if status == 409 and detail.get("name") == "invalid_idempotent_request":
            raise ProviderAlreadyAccepted(text.strip(), provider=self.name, status=status)
        if (
            status == 429
            or status >= 500
            or (status == 409 and detail.get("name") == "concurrent_idempotent_requests")
        ):
            raise TransientProviderError(
                text.strip(),
                provider=self.name,
                status=status,
                retry_after=_retry_after(response.headers.get("Retry-After")),
                throttled=status == 429,
            )
        raise PermanentProviderError(text.strip(), provider=self.name, status=status)

    async def aclose(self) -> None:
        """Close the HTTP connection pool."""
        await self._client.aclose()


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        value = response.json()
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)
