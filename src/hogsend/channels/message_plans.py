"""Message plans: a rendering finished and tracked once, per-message values filled in after.

Rendering a template for a message costs little next to what follows it: deriving the
text part, inlining CSS and finding the links to track. Those depend only on what Jinja
produced, and within a campaign Jinja produces the same output for most recipients once
the per-message values are out of it. So the mailer renders with *slots* in their place
(the unsubscribe and preference tokens), tracks the finished HTML with slots for the
click and pixel URLs, and keeps the result, split at its slots, as a :class:`_Plan`.
Each message then costs a Jinja render, a dictionary look-up and the signatures of its
own tokens, link ids and pixel.

A slot is ``hs<nonce><kind><n>z``: letters and digits, so HTML escaping, CSS inlining
and the text part leave it intact, and a nonce drawn at start-up that no template can
contain. A rendering whose nonce shows up anywhere but in a whole slot (a template that
transformed a link, say ``{{ unsubscribe_url | upper }}``), or inside a tracked URL, has
no plan: :meth:`MessagePlans.compose` returns None and the mailer renders that message
the ordinary way, with its real links.
"""

from __future__ import annotations

import re
import secrets
import threading
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hogsend.channels.templates import TemplateRegistry
from hogsend.core.contact import Contact
from hogsend.core.templates import RenderedEmail
from hogsend.core.tracking import TrackedLink, click_url, open_url, track_html

PLAN_CACHE_SIZE = 256
"""How many plans a mailer keeps (least recently used dropped first)."""

_LINK, _CLICK, _PIXEL = "l", "c", "p"


@dataclass(frozen=True, slots=True)
class _Filled:
    """A text split at its slots: ``literals[i]``, then slot ``slots[i]``, ..., last literal."""

    literals: tuple[str, ...]
    slots: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class _Plan:
    html: _Filled
    text: _Filled
    link_urls: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Composed:
    """One message's parts, finished and tracked.

    Attributes:
        rendered: subject, HTML (tracked), text, preheader and category.
        links: the tracked links to record before the message is sent.
    """

    rendered: RenderedEmail
    links: tuple[TrackedLink, ...]


class MessagePlans:
    """Plans per rendering for one mailer (its templates, public URL and signing key).

    Args:
        templates: the registry to render with.
        public_url: ``HOGSEND_PUBLIC_URL`` (links and tracking URLs start with it).
        secret: the key signing tracking ids.
        link_prefixes: per extra template variable (``unsubscribe_url`` ...), its URL
            up to the per-message token.
        untracked: URL prefixes never rewritten to click URLs.
        size: how many plans to keep.
    """

    def __init__(
        self,
        templates: TemplateRegistry,
        *,
        public_url: str,
        secret: bytes,
        link_prefixes: Mapping[str, str],
        untracked: tuple[str, ...],
        size: int = PLAN_CACHE_SIZE,
    ) -> None:
        self._templates = templates
        self._base = public_url
        self._secret = secret
        self._names = tuple(link_prefixes)
        self._untracked = untracked
        self._size = size
        # Digits only: no filter or escaping changes them, and no template has them.
        self._nonce = "".join(str(secrets.randbelow(10)) for _ in range(24))
        self._slot = re.compile(f"hs{self._nonce}([a-z])(\\d+)z")
        self._placeholders = {
            name: f"{prefix}{self._slot_text(_LINK, i)}"
            for i, (name, prefix) in enumerate(link_prefixes.items())
        }
        self._plans: OrderedDict[tuple[Any, ...], _Plan | None] = OrderedDict()
        self._lock = threading.Lock()

    def _slot_text(self, kind: str, n: int) -> str:
        return f"hs{self._nonce}{kind}{n}z"

    def compose(
        self,
        key: str,
        *,
        contact: Contact,
        props: Mapping[str, Any],
        subject: str | None,
        link_tokens: Mapping[str, str] | None,
        send_id: uuid.UUID,
        opens: bool,
        clicks: bool,
    ) -> Composed | None:
        """The message of ``send_id``, or None when this rendering has no plan.

        Args:
            link_tokens: per link variable, this message's token (None: no links, a
                transactional message).
            opens: add the open pixel.
            clicks: rewrite links to click URLs.

        Raises:
            TemplateError: rendering failed (as ``TemplateRegistry.render``).
        """
        rendered = self._templates.render(
            key,
            contact=contact,
            props=props,
            subject=subject,
            extra=self._placeholders if link_tokens is not None else None,
        )
        plan_key = (key, rendered.html, rendered.text, opens, clicks)
        with self._lock:
            found = plan_key in self._plans
            plan = self._plans.get(plan_key)
            if found:
                self._plans.move_to_end(plan_key)
        if not found:
            plan = self._plan(rendered.html, rendered.text, opens=opens, clicks=clicks)
            with self._lock:
                self._plans[plan_key] = plan
                if len(self._plans) > self._size:
                    self._plans.popitem(last=False)
        if plan is None:
            return None
        subject_text = rendered.subject
        subject_filled: _Filled | None = None
        if self._nonce in subject_text:
            subject_filled = self._split(subject_text)
            if subject_filled is None:
                return None
        ids = tuple(uuid.uuid4() for _ in plan.link_urls)
        values: dict[tuple[str, int], str] = {}
        for i, name in enumerate(self._names):
            if link_tokens is not None and name in link_tokens:
                values[(_LINK, i)] = link_tokens[name]
        for i, link_id in enumerate(ids):
            values[(_CLICK, i)] = click_url(self._base, link_id, self._secret)
        if opens:
            values[(_PIXEL, 0)] = open_url(self._base, send_id, self._secret)
        try:
            html = _fill(plan.html, values)
            text = _fill(plan.text, values)
            if subject_filled is not None:
                subject_text = _fill(subject_filled, values)
        except KeyError:
            return None  # a slot with no value (a link variable without its token)
        return Composed(
            rendered=RenderedEmail(
                key=rendered.key,
                subject=subject_text,
                html=html,
                text=text,
                preheader=rendered.preheader,
                category=rendered.category,
            ),
            links=tuple(
                TrackedLink(id=link_id, url=url)
                for link_id, url in zip(ids, plan.link_urls, strict=True)
            ),
        )

    def _plan(self, html: str, text: str, *, opens: bool, clicks: bool) -> _Plan | None:
        """Track ``html`` with slots for the click and pixel URLs; None if unplannable."""
        counter = iter(range(1 << 30))

        def new_id() -> uuid.UUID:
            return uuid.UUID(int=next(counter))

        def click_slot(link_id: uuid.UUID) -> str:
            return self._slot_text(_CLICK, link_id.int)

        untracked = self._untracked
        tracked = track_html(
            html,
            click_url_of=click_slot if clicks else None,
            pixel_url=self._slot_text(_PIXEL, 0) if opens else None,
            skip=lambda url: url.startswith(untracked),
            new_id=new_id,
        )
        if any(self._nonce in link.url for link in tracked.links):
            return None  # a tracked URL carrying a per-message value
        html_filled = self._split(tracked.html)
        text_filled = self._split(text)
        if html_filled is None or text_filled is None:
            return None
        return _Plan(
            html=html_filled,
            text=text_filled,
            link_urls=tuple(link.url for link in tracked.links),
        )

    def _split(self, source: str) -> _Filled | None:
        """``source`` split at its slots; None when the nonce appears outside a slot."""
        pieces = self._slot.split(source)
        literals = tuple(pieces[0::3])
        if any(self._nonce in literal for literal in literals):
            return None
        slots = tuple((kind, int(n)) for kind, n in zip(pieces[1::3], pieces[2::3], strict=True))
        return _Filled(literals=literals, slots=slots)


def _fill(filled: _Filled, values: Mapping[tuple[str, int], str]) -> str:
    if not filled.slots:
        return filled.literals[0]
    out = [filled.literals[0]]
    for slot, literal in zip(filled.slots, filled.literals[1:], strict=True):
        out.append(values[slot])
        out.append(literal)
    return "".join(out)
