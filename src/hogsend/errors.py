"""The one error tree of hogsend.

::

    HogsendError                    base of every error we raise on purpose
    ├── ConfigurationError          bad settings or a bad app object (fix and restart)
    │   └── AppLoadError            --app / HOGSEND_APP path cannot be imported
    ├── DefinitionError             a journey/bucket/list/template definition is invalid
    ├── RegistrationClosedError     registering on a Hogsend app after launch
    ├── DatabaseError               embedded Postgres or migrations cannot be brought up
    └── ApiError                    mapped to problem+json by hogsend.api.errors
        ├── BadRequest (400)   ├── Unauthorized (401)   ├── Forbidden (403)
        ├── NotFound (404)     ├── Conflict (409)       ├── PayloadTooLarge (413)
        ├── RateLimited (429)  └── ServiceUnavailable (503)

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
