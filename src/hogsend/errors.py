"""The one error tree of hogsend.

::

    HogsendError                    base of every error we raise on purpose
    ├── ConfigurationError          bad settings or a bad app object (fix and restart)
    │   └── AppLoadError            --app / HOGSEND_APP path cannot be imported
    ├── DefinitionError             a journey/bucket/list/template definition is invalid
    ├── TemplateError               a template cannot be found, compiled or rendered
    │   ├── TemplateNotFound        no template has that key
    │   └── TemplatePropsError      props fail the template's pydantic model
    ├── ProviderError               an email provider refused or failed a message
    │   ├── TransientProviderError  worth retrying later (429, 5xx, SMTP 4xx, network)
    │   └── PermanentProviderError  retrying will not help (HTTP 4xx, SMTP 5xx)
    │       └── ProviderAlreadyAccepted  sent before under the same idempotency key
    ├── NoRecipient                 a send has no address to go to (nothing is written)
    ├── RegistrationClosedError     registering on a Hogsend app after launch
    ├── DatabaseError               embedded Postgres or migrations cannot be brought up
    └── ApiError                    mapped to problem+json by hogsend.api.errors
        ├── BadRequest (400)   ├── Unauthorized (401)   ├── Forbidden (403)
        ├── NotFound (404)     ├── Conflict (409)       ├── PayloadTooLarge (413)
        ├── RateLimited (429)  └── ServiceUnavailable (503)

Defined beside the code that raises them (all subclasses of HogsendError):
``hogsend.core.identity.IdentityError`` and ``hogsend.core.pagination.InvalidCursor``
(also ValueErrors, so pydantic validators can raise them),
``hogsend.core.tokens.InvalidToken``, ``hogsend.db.repos.contacts.ResolutionRace``,
``hogsend.core.webhook_signatures.WebhookVerificationError``,
``hogsend.channels.email.webhooks.WebhookPayloadError`` (also a ValueError) and
``hogsend.core.conditions.InvalidCondition`` (a DefinitionError, also a ValueError).

Each class carries a stable ``code`` string, which the API puts in the problem ``type``.
Control-flow signals (a journey being exited) derive from ``BaseException`` so that a
user's ``except Exception`` cannot swallow them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class HogsendError(Exception):
    """Base class of hogsend's own errors."""

    code = "hogsend-error"


class ConfigurationError(HogsendError):
    """Settings or the app object are invalid; the message says how to fix it."""

    code = "configuration"


class AppLoadError(ConfigurationError):
    """The dotted path to the Hogsend app object cannot be loaded."""

    code = "app-load"


class DefinitionError(HogsendError):
    """A journey, bucket, list or template definition is invalid."""

    code = "definition"


class TemplateError(HogsendError):
    """A template is unknown, does not compile or fails to render.

    Attributes:
        key: the template key, when known.
        line: the line in the template file (or the layout it extends), when known.
        file: the file that line is in, when it is not the template's own.
    """

    code = "template"

    def __init__(
        self,
        message: str,
        *,
        key: str | None = None,
        line: int | None = None,
        file: str | None = None,
    ) -> None:
        self.message = message
        self.key = key
        self.line = line
        self.file = file
        where = ""
        if key is not None:
            where = f"template {key!r}"
            if file is not None:
                where += f" ({file}"
                where += f", line {line})" if line is not None else ")"
            elif line is not None:
                where += f", line {line}"
            where += ": "
        super().__init__(where + message)


class TemplateNotFound(TemplateError):
    """No template is registered under the key."""

    code = "template-not-found"


class TemplatePropsError(TemplateError):
    """The props of a send fail the template's pydantic model.

    Attributes:
        errors: one ``{"loc": ..., "msg": ...}`` mapping per invalid field.
    """

    code = "template-props"

    def __init__(self, message: str, *, key: str, errors: Sequence[Mapping[str, Any]] = ()) -> None:
        super().__init__(message, key=key)
        self.errors = list(errors)


class ProviderError(HogsendError):
    """An email provider did not accept a message.

    Attributes:
        provider: ``smtp``, ``resend``, ``outbox`` ...
        status: the SMTP reply code or HTTP status, when there was one.
    """

    code = "provider"

    def __init__(self, message: str, *, provider: str, status: int | None = None) -> None:
        super().__init__(message)
        self.provider = provider
        self.status = status


class TransientProviderError(ProviderError):
    """A failure worth retrying: throttling, a server error, a dropped connection.

    Attributes:
        retry_after: seconds the provider asked us to wait, when it said.
        throttled: the provider said to slow down (HTTP 429, SMTP 421 or 45x), so every
            send to it should pause, not only this message's (see ``PacedProvider``).
    """

    code = "provider-transient"

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        status: int | None = None,
        retry_after: float | None = None,
        throttled: bool = False,
    ) -> None:
        super().__init__(message, provider=provider, status=status)
        self.retry_after = retry_after
        self.throttled = throttled


class PermanentProviderError(ProviderError):
    """A refusal that retrying cannot fix: a rejected recipient, a malformed request."""

    code = "provider-permanent"


class ProviderAlreadyAccepted(PermanentProviderError):
    """The provider already accepted a message under this idempotency key; its id is unknown.

    Resend answers so (409 ``invalid_idempotent_request``) when an earlier request with
    the key had a different body, e.g. an attempt that went out and then died before
    recording it. The mailer records such a send as gone out.
    """

    code = "provider-already-accepted"


class NoRecipient(HogsendError):
    """A send names a contact that has no email address, and no ``to_email``."""

    code = "no-recipient"


class RegistrationClosedError(HogsendError):
    """Something tried to register on a Hogsend app after it was launched."""

    code = "registration-closed"


class DatabaseError(HogsendError):
    """Postgres could not be started, reached or migrated."""

    code = "database"


class ApiError(HogsendError):
    """An error with an HTTP status, rendered as application/problem+json."""

    status = 500
    code = "internal"
    title = "Internal Server Error"

    def __init__(
        self,
        detail: str,
        *,
        errors: Sequence[Mapping[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = list(errors) if errors is not None else None
        self.headers = dict(headers) if headers is not None else {}


class BadRequest(ApiError):
    status = 400
    code = "bad-request"
    title = "Bad Request"


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"
    title = "Unauthorized"


class Forbidden(ApiError):
    status = 403
    code = "forbidden"
    title = "Forbidden"


class NotFound(ApiError):
    status = 404
    code = "not-found"
    title = "Not Found"


class Conflict(ApiError):
    status = 409
    code = "conflict"
    title = "Conflict"


class PayloadTooLarge(ApiError):
    status = 413
    code = "payload-too-large"
    title = "Payload Too Large"


class RateLimited(ApiError):
    status = 429
    code = "rate-limited"
    title = "Too Many Requests"


class ServiceUnavailable(ApiError):
    status = 503
    code = "service-unavailable"
    title = "Service Unavailable"


class JourneyExit(BaseException):
    """Raised inside a journey body when its run is exited (``exit_on``, admin, deletion).

    A ``BaseException`` so that a body's ``except Exception`` cannot swallow it; the
    runtime catches it, and nothing the body does after it is sent.

    Attributes:
        reason: why the run ended (``exit_on:<event>``, ``admin``, ``contact_deleted``...).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
