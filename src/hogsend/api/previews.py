"""Rendering a template for someone without sending it: API previews and trial renders.

``POST /v1/emails`` renders once before it hands a send to a worker, so a template that
cannot be rendered with the given props is a 422 now rather than a ``provider_error``
later; the admin preview and test-send routes render the same way. Links the mailer
signs per recipient (``unsubscribe_url``, ``preferences_url``) are placeholders here,
and a template that shows neither gets the standard footer with the placeholder (as a
marketing send would), unless it is marked ``category: transactional``.
"""

from __future__ import annotations

import difflib
import uuid
from collections.abc import Mapping
from typing import Any

from fastapi.exceptions import RequestValidationError

from hogsend.api.routes.transactions import invalid_field
from hogsend.channels.templates import TemplateRegistry
from hogsend.core.contact import Contact
from hogsend.core.mailer_gates import TRANSACTIONAL_CATEGORY
from hogsend.core.templates import EmailTemplate, RenderedEmail
from hogsend.errors import TemplateError, TemplateNotFound, TemplatePropsError

PREVIEW_LINKS: Mapping[str, str] = {
    "unsubscribe_url": "https://example.com/unsubscribe?preview=1",
    "preferences_url": "https://example.com/preferences?preview=1",
}
SAMPLE_ADDRESS = "preview@example.com"


def stand_in_contact(address: str) -> Contact:
    """The contact a template sees for an address no contact holds (as the mailer does)."""
    return Contact(
        id=uuid.uuid5(uuid.NAMESPACE_URL, f"mailto:{address}"), key=address, email=address
    )


def unknown_template_message(registry: TemplateRegistry | None, key: str) -> str:
    """Says the key is unknown and suggests close ones (never the server's paths)."""
    if registry is None:
        return "the app registers no templates (Hogsend(templates=...))"
    close = difflib.get_close_matches(key, sorted(registry.keys()), n=3)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    return f"unknown template {key!r}{hint}"


def find_template(
    registry: TemplateRegistry | None, key: str, location: tuple[str | int, ...]
) -> EmailTemplate:
    """The template ``key``, or a 422 naming ``location``."""
    if registry is None:
        raise invalid_field(location, unknown_template_message(registry, key))
    try:
        return registry.get(key)
    except TemplateNotFound:
        raise invalid_field(location, unknown_template_message(registry, key)) from None


def render_or_422(
    registry: TemplateRegistry,
    key: str,
    *,
    contact: Contact,
    props: Mapping[str, Any],
    subject: str | None,
    marketing: bool,
    location: tuple[str | int, ...],
) -> RenderedEmail:
    """Render ``key``; props failing its model or its variables are a 422 under ``location``.

    Raises:
        RequestValidationError: one entry per field the props model refused, else one
            naming ``location`` with the template's error (an undefined variable ...).
    """
    try:
        return registry.render(
            key,
            contact=contact,
            props=props,
            subject=subject,
            extra=PREVIEW_LINKS if marketing else None,
            # A preview shows the standard footer where a marketing send gets it.
            footer=(
                PREVIEW_LINKS["preferences_url"]
                if marketing and registry.get(key).meta.category != TRANSACTIONAL_CATEGORY
                else None
            ),
        )
    except TemplatePropsError as exc:
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": (*location, *[part for part in str(err["loc"]).split(".") if part]),
                    "msg": str(err["msg"]),
                    "input": None,
                }
                for err in exc.errors
            ]
        ) from None
    except TemplateError as exc:
        raise invalid_field(
            location, f"the template cannot be rendered with these props: {exc}"
        ) from None
