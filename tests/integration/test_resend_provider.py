"""The Resend provider against a live local HTTP server (uvicorn + Starlette)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from hogsend.channels.email import OutgoingEmail, ResendProvider, build_provider
from hogsend.errors import PermanentProviderError, ProviderAlreadyAccepted, TransientProviderError
from hogsend.settings import Settings
from live_server import live_server

received: list[dict[str, Any]] = []


async def emails(request: Request) -> JSONResponse:
    body = json.loads(await request.body())
    received.append({"headers": dict(request.headers), "body": body})
    to = body["to"][0]
    if to.startswith("status429"):
        return JSONResponse(
            {"name": "rate_limit_exceeded", "message": "slow down"},
            status_code=429,
            headers={"Retry-After": "7"},
        )
    if to.startswith("status409replay"):
        return JSONResponse(
            {
                "name": "invalid_idempotent_request",
                "message": "Same idempotency key used with a different request payload.",
            },
            status_code=409,
        )
    if to.startswith("status409busy"):
        return JSONResponse(
            {"name": "concurrent_idempotent_requests", "message": "in progress"},
            status_code=409,
        )
    if to.startswith("status500"):
        return JSONResponse({"name": "internal_server_error", "message": "x"}, status_code=500)
    if to.startswith("status422"):
        return JSONResponse(
            {"name": "validation_error", "message": "Invalid `to` field."}, status_code=422
        )
    return JSONResponse({"id": f"re_{len(received)}"})


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    app = Starlette(routes=[Route("/emails", emails, methods=["POST"])])
    with live_server(app) as base:
        yield base


def message(to: str = "ada@example.com", **overrides: Any) -> OutgoingEmail:
    values: dict[str, Any] = {
        "from_email": "Acme <hello@acme.test>",
        "to": to,
        "subject": "Hi",
        "html": "<p>Hi</p>",
        "text": "Hi\n",
        "reply_to": "support@acme.test",
        "headers": {"List-Unsubscribe": "<https://acme.test/u>"},
        "idempotency_key": "wf-9:2",
        "tags": {"template": "welcome"},
    }
    values.update(overrides)
    return OutgoingEmail(**values)


async def test_send_posts_body_and_idempotency_key(base_url: str) -> None:
    received.clear()
    provider = ResendProvider(api_key="re_test_key", base_url=base_url)
    result = await provider.send(message())
    await provider.aclose()
    assert result.provider == "resend"
    assert result.message_id == "re_1"
    ((request,),) = [received]
    assert request["headers"]["idempotency-key"] == "wf-9:2"
    assert request["headers"]["authorization"] == "Bearer re_test_key"
    assert request["body"] == {
        "from": "Acme <hello@acme.test>",
        "to": ["ada@example.com"],
        "subject": "Hi",
        "html": "<p>Hi</p>",
        "text": "Hi\n",
        "reply_to": "support@acme.test",
        "headers": {"List-Unsubscribe": "<https://acme.test/u>"},
        "tags": [{"name": "template", "value": "welcome"}],
    }


async def test_no_key_no_header(base_url: str) -> None:
    received.clear()
    provider = ResendProvider(api_key="k", base_url=base_url)
    await provider.send(message(idempotency_key=None))
    await provider.aclose()
    assert "idempotency-key" not in received[0]["headers"]


async def test_429_is_transient_with_retry_after(base_url: str) -> None:
    provider = ResendProvider(api_key="k", base_url=base_url)
    with pytest.raises(TransientProviderError) as info:
        await provider.send(message(to="status429@example.com"))
    await provider.aclose()
    assert info.value.status == 429
    assert info.value.retry_after == 7
    assert info.value.throttled


async def test_500_is_transient(base_url: str) -> None:
    provider = ResendProvider(api_key="k", base_url=base_url)
    with pytest.raises(TransientProviderError) as info:
        await provider.send(message(to="status500@example.com"))
    await provider.aclose()
    assert info.value.status == 500
    assert info.value.retry_after is None
    assert not info.value.throttled


async def test_422_is_permanent(base_url: str) -> None:
    provider = ResendProvider(api_key="k", base_url=base_url)
    with pytest.raises(PermanentProviderError, match="Invalid `to` field") as info:
        await provider.send(message(to="status422@example.com"))
    await provider.aclose()
    assert info.value.status == 422


async def test_unreachable_is_transient() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    provider = ResendProvider(api_key="k", base_url=f"http://127.0.0.1:{port}")
    with pytest.raises(TransientProviderError, match="unreachable"):
        await provider.send(message())
    await provider.aclose()


async def test_factory_builds_a_paced_resend_provider(base_url: str) -> None:
    settings = Settings(
        env="test", email_provider="resend", resend_api_key="k", resend_base_url=base_url
    )
    provider = build_provider(settings)
    assert provider.name == "resend"
    result = await provider.send(message())
    await provider.aclose()
    assert result.message_id.startswith("re_")
    assert result.attempts == 1


async def test_a_key_reused_with_another_body_was_already_accepted(base_url: str) -> None:
    provider = ResendProvider(api_key="k", base_url=base_url)
    with pytest.raises(ProviderAlreadyAccepted, match="invalid_idempotent_request") as info:
        await provider.send(message(to="status409replay@example.com"))
    await provider.aclose()
    assert info.value.status == 409
    assert isinstance(info.value, PermanentProviderError)


async def test_a_concurrent_request_with_the_key_is_transient(base_url: str) -> None:
    provider = ResendProvider(api_key="k", base_url=base_url)
    with pytest.raises(TransientProviderError, match="concurrent_idempotent_requests"):
        await provider.send(message(to="status409busy@example.com"))
    await provider.aclose()
