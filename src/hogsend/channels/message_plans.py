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

Per-recipient values get slots too (*value slots*), so that a campaign greeting every
contact by name still shares one plan. Each short word-like string the template is
given (the contact's string fields and top-level properties, string props: letters,
digits, ``@._+-`` and single spaces) is replaced by a slot, and Jinja renders twice:
with the real values and with the slots. The plan is used only when the slotted
output, its value slots filled, *is* the real output, character for character (so a
template that branched on, measured or transformed a value falls back), and every
value slot stands in body text: not in a tag, an attribute, a comment, a link's text
or a ``style``/``script``/``head``-like element. There the finishing steps cannot tell
the slot from the value: CSS selectors never look at text, the text part copies words
as they are, escaping leaves these characters alone, and tracking rewrites tags only.
When a plan is built, the message is also finished the direct way and compared.
Templates whose renderings keep failing the check stop getting value slots. The last
slotted renderings of each template are kept and tried first: one that passes the
check for this message's values spares the second Jinja render.

*Known renderings* spare the first one too. When the template only ever prints a value
whole (:mod:`hogsend.channels.template_reads` reads that from its syntax tree), its
slotted rendering filled with a message's values is that message's real rendering,
provided everything else the template reads (its *literal* reads) has the same values.
So slotted renderings are also kept by the values of those literal reads, and a message
matching one is not rendered at all. The first message of each set of literal values is
rendered with slots and for real and the two compared; a difference turns the
template's known renderings off.

An edited file is noticed by its modification time, as Jinja notices it, but looked at
no more than once every :data:`FILES_CHECKED_EVERY` seconds: a ``stat`` per file per
message was 2-3% of a campaign worker's CPU. Within that second a message may still get
the last version's known rendering (as if it had been composed a moment earlier). A new
known rendering is kept only if the files are unchanged after it was rendered, so none
ever pairs one version's analysis with another version's output.
"""

from __future__ import annotations

import dataclasses
import math
import re
import secrets
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any

import jinja2

from hogsend.channels.template_reads import Path as ReadPath
from hogsend.channels.template_reads import TemplateReads, analyse
from hogsend.channels.templates import JinjaOutput, TemplateRegistry
from hogsend.core.contact import Contact
from hogsend.core.slot_init import slot_init
from hogsend.core.templates import RenderedEmail
from hogsend.core.tracking import LinkSet, click_url, open_url, track_html

PLAN_CACHE_SIZE = 256
"""How many plans a mailer keeps (least recently used dropped first)."""
FILES_CHECKED_EVERY = 1.0
"""Seconds between two looks at a template's files for edits (see the module doc)."""

_LINK, _CLICK, _PIXEL, _VALUE = "l", "c", "p", "v"
_SLOTTABLE = re.compile(r"[A-Za-z0-9@._+\-]+(?: [A-Za-z0-9@._+\-]+)*")
"""Values that get a slot: escaping, CSS inlining and the text part leave them as they are."""
_RECENT_SLOTTED = 2
"""Slotted renderings kept per template and tried before rendering with slots again."""
_CONTACT_FIELDS = ("key", "user_id", "email", "anonymous_id")
_VALUE_MISSES = 16
"""Failed checks (with none passing four times as often) that end value slots for a template."""
# Elements whose text a finishing step reads or treats apart (or a link, whose text the
# text part compares with its target): a value slot in them gets no plan.
_NO_VALUE_ELEMENTS = frozenset(
    {
        "a", "head", "title", "style", "script", "template", "noscript", "textarea", "xmp",
        "iframe", "noembed", "noframes", "plaintext", "select", "option", "svg", "math",
    }
)  # fmt: skip
_VOID = frozenset(
    {"br", "hr", "img", "meta", "link", "input", "col", "area", "base", "wbr", "source", "embed"}
)


@dataclass(frozen=True, slots=True)
class _Filled:
    """A text split at its slots: ``literals[i]``, then slot ``slots[i]``, ..., last literal."""

    literals: tuple[str, ...]
    slots: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class _Plan:
    html: _Filled
    text: _Filled
    links: LinkSet | None
    opens: bool
    clicks: bool


@slot_init
@dataclass(frozen=True, slots=True, kw_only=True)
class Composed:
    """One message's parts, finished and tracked.

    Attributes:
        rendered: subject, HTML (tracked), text, preheader and category.
        links: the tracked links to record before the message is sent (None: none).
    """

    rendered: RenderedEmail
    links: LinkSet | None


class MessagePlans:
    """Plans per rendering for one mailer (its templates, public URL and signing key).

    Args:
        templates: the registry to render with.
        public_url: ``HOGSEND_PUBLIC_URL`` (links and tracking URLs start with it).
        secret: the key signing tracking ids.
        link_prefixes: per extra template variable (``unsubscribe_url`` ...), its URL
            up to the per-message token; ``preferences_url``'s also links the standard
            footer of a template that shows neither link (``TemplateRegistry.auto_footer``).
        untracked: URL prefixes never rewritten to click URLs.
        size: how many plans to keep.
        clock: monotonic seconds (when the template files were last checked).
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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._templates = templates
        self._clock = clock
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
        self._footer = self._placeholders.get("preferences_url")
        self._value_marker = f"hs{self._nonce}{_VALUE}"
        self._value_slot = re.compile(f"hs{self._nonce}{_VALUE}(\\d+)z")
        self._plans: OrderedDict[tuple[Any, ...], _Plan | None] = OrderedDict()
        # Per template: value-slot checks passed and failed (see _value_slots).
        self._tally: dict[str, tuple[int, int]] = {}
        # Per template: its latest slotted renderings that passed (see _value_slots).
        self._recent: OrderedDict[str, tuple[JinjaOutput, ...]] = OrderedDict()
        # Per template: what it reads (see hogsend.channels.template_reads), and its
        # slotted renderings by the values of what it reads (see _known_rendering).
        self._reads: dict[tuple[Any, ...], _Reads] = {}
        self._known: OrderedDict[tuple[Any, ...], JinjaOutput] = OrderedDict()
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
        templates = self._templates
        marketing = link_tokens is not None
        variables = templates.variables(
            key,
            contact=contact,
            props=props,
            extra=self._placeholders if marketing else None,
        )
        # A marketing message's standard footer (if its template needs one) links to
        # the preference centre through the same slot as ``preferences_url``.
        footer = self._footer if marketing else None
        known = self._known_rendering(key, variables, subject)
        if known is not None:
            slotted_output, real_of, values, head_of = known
            plan = self._plan_for(
                key, slotted_output, real_of, values, opens=opens, clicks=clicks, footer=footer
            )
            if plan is not None:
                # Only the subject and preheader: the body comes from the plan.
                subject_text, preheader = head_of(slotted_output)
                return self._filled(
                    key, subject_text, preheader, plan, values, link_tokens, send_id, opens
                )
        real = templates.render_jinja(key, variables, subject=subject)
        slotted = self._value_slots(key, variables, real)
        if slotted is not None:
            plan = self._plan_for(
                key,
                slotted[0],
                lambda: real,
                slotted[1],
                opens=opens,
                clicks=clicks,
                footer=footer,
            )
            if plan is not None:
                return self._filled(
                    key, real.subject, real.preheader, plan, slotted[1], link_tokens, send_id, opens
                )
        plan = self._plan_for(
            key, real, lambda: real, None, opens=opens, clicks=clicks, footer=footer
        )
        if plan is None:
            return None
        return self._filled(
            key, real.subject, real.preheader, plan, (), link_tokens, send_id, opens
        )

    def _cached_plan(self, plan_key: tuple[Any, ...]) -> tuple[bool, _Plan | None]:
        """(found, plan) of ``plan_key`` in the cache (None: known to have no plan)."""
        with self._lock:
            found = plan_key in self._plans
            plan = self._plans.get(plan_key)
            if found:
                self._plans.move_to_end(plan_key)
        return found, plan

    def _plan_for(
        self,
        key: str,
        source: JinjaOutput,
        real_of: Callable[[], JinjaOutput],
        values: tuple[str, ...] | None,
        *,
        opens: bool,
        clicks: bool,
        footer: str | None,
    ) -> _Plan | None:
        """The plan of ``source`` (from the cache, else built); None when it has none.

        ``real_of`` gives the real rendering ``source`` stands for, called only when a
        new plan is checked against it (a known rendering makes it only then).
        ``footer``: the standard footer's URL (with its slot) for a marketing message.
        """
        plan_key = (key, source.body, source.preheader, source.written, opens, clicks, footer)
        found, plan = self._cached_plan(plan_key)
        if found:
            if values is not None:
                self._count(key, hit=plan is not None)
            return plan
        finished = self._templates.finish(key, source, footer=footer)
        plan = self._plan(finished.html, finished.text, opens=opens, clicks=clicks)
        if plan is not None and values is not None:
            plan = self._checked(key, source, real_of(), values, plan, footer)
            self._count(key, hit=plan is not None)
        with self._lock:
            self._plans[plan_key] = plan
            if len(self._plans) > self._size:
                self._plans.popitem(last=False)
        return plan

    def _filled(
        self,
        key: str,
        subject: str,
        preheader: str | None,
        plan: _Plan,
        values: tuple[str, ...],
        link_tokens: Mapping[str, str] | None,
        send_id: uuid.UUID,
        opens: bool,
    ) -> Composed | None:
        """The message of ``send_id`` from ``plan``: its own values, tokens, ids, pixel."""
        subject_text = subject
        subject_filled: _Filled | None = None
        if self._nonce in subject_text:
            subject_filled = self._split(subject_text)
            if subject_filled is None:
                return None
        filling: dict[tuple[str, int], str] = {}
        for i, name in enumerate(self._names):
            if link_tokens is not None and name in link_tokens:
                filling[(_LINK, i)] = link_tokens[name]
        links = plan.links
        if links is not None:
            for i in range(len(links.urls)):
                filling[(_CLICK, i)] = click_url(self._base, send_id, links, i, self._secret)
        if opens:
            filling[(_PIXEL, 0)] = open_url(self._base, send_id, self._secret)
        for i, value in enumerate(values):
            filling[(_VALUE, i)] = value
        try:
            html = _fill(plan.html, filling)
            text = _fill(plan.text, filling)
            if subject_filled is not None:
                subject_text = _fill(subject_filled, filling)
        except KeyError:
            return None  # a slot with no value (a link variable without its token)
        return Composed(
            rendered=RenderedEmail(
                key=key,
                subject=subject_text,
                html=html,
                text=text,
                preheader=preheader,
                category=self._templates.get(key).meta.category,
            ),
            links=links,
        )

    # -- known renderings: value slots without the real render --------------------

    def _reads_of(self, key: str) -> _Reads | None:
        """What template ``key`` reads (analysed once per version of its files)."""
        templates = self._templates
        template = templates.get(key)
        if template.format != "html":
            return None
        meta = template.meta
        state_key = (key, template.source, template.text_source, meta.subject, meta.preheader)
        with self._lock:
            state = self._reads.get(state_key)
        now = self._clock()
        if state is not None and now - state.checked_at >= FILES_CHECKED_EVERY:
            if all(fresh() for fresh in state.fresh):
                state.checked_at = now
            else:
                state = None  # a file changed: analysed again, its renderings dropped
        if state is None:
            env = templates.environment
            files = [template.source]
            if template.text_source is not None:
                files.append(template.text_source)
            strings = [text for text in (meta.subject, meta.preheader) if text is not None]
            reads = analyse(env, files=files, strings=strings)
            state = _Reads(
                reads=reads, fresh=_freshness(env, reads), version=object(), checked_at=now
            )
            with self._lock:
                self._reads[state_key] = state
        if state.reads is None or state.off:
            return None
        if state.misses >= _VALUE_MISSES and state.misses > 4 * state.hits:
            return None  # its renderings seldom repeat (literal reads differ per message)
        return state

    def _known_rendering(
        self, key: str, variables: Mapping[str, Any], subject: str | None
    ) -> (
        tuple[
            JinjaOutput,
            Callable[[], JinjaOutput],
            tuple[str, ...],
            Callable[[JinjaOutput], tuple[str, str | None]],
        ]
        | None
    ):
        """A slotted rendering for these variables without rendering them, when known.

        Returns (the slotted output, the real output (computed on demand), the values
        of its slots, the real subject and preheader of a slotted output), or None:
        the template is not covered or a value cannot be compared. The first message
        with its literal reads is rendered with slots and for real, the two compared
        (a difference turns the template's known renderings off), and kept.
        """
        state = self._reads_of(key)
        if state is None:
            return None
        reads = state.reads
        assert reads is not None
        env = self._templates.environment
        values: list[str] = []
        slots: dict[ReadPath, str] = {}
        signature: list[Any] = []
        for path in reads.printed:
            value = _read(env, variables, path)
            if (
                type(value) is str
                and _slottable_path(path)
                and _SLOTTABLE.fullmatch(value)
                and self._nonce not in value
            ):
                slots[path] = self._slot_text(_VALUE, len(values))
                values.append(value)
                signature.append(_SLOT)
            else:
                signature.append((type(value), value))
        for path in reads.literal:
            value = _read(env, variables, path)
            signature.append((type(value), value))
        known_key = (key, state.version, subject, tuple(signature))
        try:
            with self._lock:
                output = self._known.get(known_key)
                if output is not None:
                    self._known.move_to_end(known_key)
        except TypeError:
            return None  # a value that cannot be compared (a list, a dict ...)
        fill = _value_filler(self._value_slot, tuple(values))

        def head(output: JinjaOutput) -> tuple[str, str | None]:
            return fill(output.subject) or "", fill(output.preheader)

        if output is not None:
            state.hits += 1
            known = output

            def real_of() -> JinjaOutput:
                # What the real rendering gives (the module doc of template_reads).
                return JinjaOutput(
                    subject=fill(known.subject) or "",
                    preheader=fill(known.preheader),
                    body=fill(known.body) or "",
                    written=fill(known.written),
                )

            return known, _once(real_of), tuple(values), head

        state.misses += 1
        slotted_variables = _with_slots(variables, slots)
        if slotted_variables is None:
            return None
        real = self._templates.render_jinja(key, variables, subject=subject)
        # Without slots the slotted rendering is the real one.
        output = (
            self._templates.render_jinja(key, slotted_variables, subject=subject) if slots else real
        )
        if (
            fill(output.subject) != real.subject
            or fill(output.preheader) != real.preheader
            or fill(output.body) != real.body
            or fill(output.written) != real.written
        ):
            state.off = True  # the analysis missed something: this template goes without
            return None
        if not all(fresh() for fresh in state.fresh):
            # Edited since it was analysed (its files are not looked at for every
            # message): Jinja rendered the new version, which this analysis may not
            # describe. The next message has it analysed again.
            state.checked_at = -math.inf
            return None
        with self._lock:
            self._known[known_key] = output
            if len(self._known) > self._size:
                self._known.popitem(last=False)
        return output, lambda: real, tuple(values), head

    # -- value slots ---------------------------------------------------------------

    def _value_slots(
        self, key: str, variables: Mapping[str, Any], real: JinjaOutput
    ) -> tuple[JinjaOutput, tuple[str, ...]] | None:
        """Jinja's output with value slots, and the values; None when it cannot be used.

        None when the template takes no slottable value, is not HTML, stopped getting
        value slots, fails with them, or the slotted output filled is not ``real``.
        """
        if self._templates.get(key).format != "html":
            return None
        with self._lock:
            hits, misses = self._tally.get(key, (0, 0))
        if misses >= _VALUE_MISSES and misses > 4 * hits:
            return None
        slots: dict[str, str] = {}
        slotted = self._slotted_variables(variables, slots)
        if not slots:
            return None
        values = tuple(slots)
        fill = _value_filler(self._value_slot, values)

        def gives_real(output: JinjaOutput) -> bool:
            try:
                return (
                    fill(output.body) == real.body
                    and fill(output.preheader) == real.preheader
                    and fill(output.written) == real.written
                )
            except IndexError:  # a slot this message has no value for
                return False

        # A recent slotted rendering of this template is usually this message's too
        # (the contacts of a campaign differ in their slotted values only); the check
        # above is what makes a slotted rendering usable, wherever it came from.
        with self._lock:
            recent = self._recent.get(key, ())
        for output in recent:
            if gives_real(output):
                return dataclasses.replace(output, subject=real.subject), values
        try:
            output = self._templates.render_jinja(key, slotted, subject=real.subject)
        except Exception:
            self._count(key, hit=False)  # the template needed the real value
            return None
        if not gives_real(output):
            self._count(key, hit=False)
            return None
        with self._lock:
            self._recent[key] = (output, *self._recent.get(key, ()))[:_RECENT_SLOTTED]
            self._recent.move_to_end(key)
            if len(self._recent) > self._size:
                self._recent.popitem(last=False)
        return output, values

    def _slotted_variables(
        self, variables: Mapping[str, Any], slots: dict[str, str]
    ) -> dict[str, Any]:
        """``variables`` with each slottable value replaced by its slot (added to ``slots``)."""

        def slot(value: Any) -> Any:
            if type(value) is not str or not _SLOTTABLE.fullmatch(value) or self._nonce in value:
                return value
            found = slots.get(value)
            if found is None:
                found = slots[value] = self._slot_text(_VALUE, len(slots))
            return found

        out = dict(variables)
        props = variables.get("props")
        if isinstance(props, dict):
            out["props"] = {name: slot(value) for name, value in props.items()}
            for name in props:
                if name in out and out[name] is props[name]:
                    out[name] = out["props"][name]
        contact = variables.get("contact")
        if isinstance(contact, Contact):
            changes: dict[str, Any] = {
                name: slot(getattr(contact, name)) for name in _CONTACT_FIELDS
            }
            changes["properties"] = {
                name: slot(value) for name, value in contact.properties.items()
            }
            out["contact"] = dataclasses.replace(contact, **changes)
        return out

    def _checked(
        self,
        key: str,
        source: JinjaOutput,
        real: JinjaOutput,
        values: tuple[str, ...],
        plan: _Plan,
        footer: str | None,
    ) -> _Plan | None:
        """``plan`` if its value slots stand where the finishing steps cannot see them.

        Also finishes ``real`` the direct way once and compares: a new plan must give
        the message the direct path gives.
        """
        if not _in_text_only(source.body, self._value_marker):
            return None
        direct = self._templates.finish(key, real, footer=footer)
        filling = {(_VALUE, i): value for i, value in enumerate(values)}
        # Only value slots are filled: the link, click and pixel slots stay on both sides.
        html = _fill(plan.html, _Keep(filling, self._slot_text))
        text = _fill(plan.text, _Keep(filling, self._slot_text))
        direct_plan = self._plan(direct.html, direct.text, opens=plan.opens, clicks=plan.clicks)
        if direct_plan is None:
            return None
        keep = _Keep({}, self._slot_text)
        if html != _fill(direct_plan.html, keep) or text != _fill(direct_plan.text, keep):
            return None
        if direct_plan.links != plan.links:
            return None
        return plan

    def _count(self, key: str, *, hit: bool) -> None:
        with self._lock:
            hits, misses = self._tally.get(key, (0, 0))
            self._tally[key] = (hits + 1, misses) if hit else (hits, misses + 1)

    # -- plans -----------------------------------------------------------------------

    def _plan(self, html: str, text: str, *, opens: bool, clicks: bool) -> _Plan | None:
        """Track ``html`` with slots for the click and pixel URLs; None if unplannable."""

        def click_slot(links: LinkSet, number: int) -> str:
            return self._slot_text(_CLICK, number)

        untracked = self._untracked
        tracked = track_html(
            html,
            click_url_of=click_slot if clicks else None,
            pixel_url=self._slot_text(_PIXEL, 0) if opens else None,
            skip=lambda url: url.startswith(untracked),
        )
        links = tracked.links
        if links is not None and any(self._nonce in url for url in links.urls):
            return None  # a tracked URL carrying a per-message value
        html_filled = self._split(tracked.html)
        text_filled = self._split(text)
        if html_filled is None or text_filled is None:
            return None
        return _Plan(
            html=html_filled,
            text=text_filled,
            links=links,
            opens=opens,
            clicks=clicks,
        )

    def _split(self, source: str) -> _Filled | None:
        """``source`` split at its slots; None when the nonce appears outside a slot."""
        pieces = self._slot.split(source)
        literals = tuple(pieces[0::3])
        if any(self._nonce in literal for literal in literals):
            return None
        slots = tuple((kind, int(n)) for kind, n in zip(pieces[1::3], pieces[2::3], strict=True))
        return _Filled(literals=literals, slots=slots)


class _Keep(dict[tuple[str, int], str]):
    """Slot values for :func:`_fill` where a slot without one stays as its own text."""

    def __init__(
        self, values: Mapping[tuple[str, int], str], text_of: Callable[[str, int], str]
    ) -> None:
        super().__init__(values)
        self._text_of = text_of

    def __missing__(self, slot: tuple[str, int]) -> str:
        return self._text_of(*slot)


def _value_filler(
    pattern: re.Pattern[str], values: tuple[str, ...]
) -> Callable[[str | None], str | None]:
    def fill(text: str | None) -> str | None:
        if text is None:
            return None
        return pattern.sub(lambda match: values[int(match.group(1))], text)

    return fill


class _TextOnly(HTMLParser):
    """Finds a marker anywhere but in body text outside the elements the steps read."""

    def __init__(self, marker: str) -> None:
        super().__init__(convert_charrefs=True)
        self.marker = marker
        self.stack: list[str] = []
        self.bad = False
        self.seen = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.marker in tag or any(
            self.marker in name or self.marker in (value or "") for name, value in attrs
        ):
            self.bad = True
        if tag not in _VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in _VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if self.marker in tag:
            self.bad = True
        if tag in self.stack:
            while self.stack and self.stack.pop() != tag:
                pass

    def handle_data(self, data: str) -> None:
        if self.marker in data:
            self.seen += data.count(self.marker)
            if _NO_VALUE_ELEMENTS.intersection(self.stack):
                self.bad = True

    def _other(self, data: str) -> None:
        if self.marker in data:
            self.bad = True

    def handle_comment(self, data: str) -> None:
        self._other(data)

    def handle_decl(self, decl: str) -> None:
        self._other(decl)

    def handle_pi(self, data: str) -> None:
        self._other(data)

    def unknown_decl(self, data: str) -> None:
        self._other(data)


def _in_text_only(html: str, marker: str) -> bool:
    """Whether every ``marker`` in ``html`` stands in plain body text (see module doc)."""
    checker = _TextOnly(marker)
    checker.feed(html)
    checker.close()
    # Each occurrence must have been seen as text: none hidden in a construct the
    # parser skipped or left in its buffer (an unterminated tag, say).
    return not checker.bad and checker.seen == html.count(marker)


def _fill(filled: _Filled, values: Mapping[tuple[str, int], str]) -> str:
    literals = filled.literals
    if not filled.slots:
        return literals[0]
    # Literals and values interleaved by slice assignment (in C), not appended in turn.
    out = [""] * (2 * len(literals) - 1)
    out[0::2] = literals
    out[1::2] = [values[slot] for slot in filled.slots]
    return "".join(out)


_SLOT = object()
"""In a rendering's signature: a printed value that a slot stands in for."""
_UNDEFINED = object()
"""In a rendering's signature: a path that reads nothing (an undefined variable)."""


@dataclass(slots=True, kw_only=True)
class _Reads:
    """One version of a template: what it reads, and how its known renderings fare."""

    reads: TemplateReads | None
    fresh: tuple[Callable[[], bool], ...]
    version: object
    """Part of each known rendering's key: a new version never meets the old ones."""
    checked_at: float
    """When ``fresh`` last said every file is unchanged (the clock of MessagePlans)."""
    hits: int = 0
    misses: int = 0
    off: bool = False


def _freshness(
    env: jinja2.Environment, reads: TemplateReads | None
) -> tuple[Callable[[], bool], ...]:
    """Per file the template reads, whether it is unchanged since now (as Jinja checks)."""
    if reads is None or env.loader is None:
        return ()
    checks: list[Callable[[], bool]] = []
    for name in reads.files:
        # Jinja reloads a file when this says it changed; a loader without it never does.
        _, _, uptodate = env.loader.get_source(env, name)
        if uptodate is not None:
            checks.append(uptodate)
    return tuple(checks)


def _read(env: jinja2.Environment, variables: Mapping[str, Any], path: ReadPath) -> Any:
    """What the template reads at ``path``, looked up as Jinja looks it up."""
    root = path[0]
    assert isinstance(root, str)
    if root not in variables:
        return _UNDEFINED
    value = variables[root]
    for part in path[1:]:
        # Items and attributes as Jinja reads them (a dict key, else an attribute ...).
        value = _step(env, value, part)
        if isinstance(value, jinja2.Undefined):
            return _UNDEFINED
    return value


def _step(env: jinja2.Environment, value: Any, part: str | tuple[str | int]) -> Any:
    if isinstance(part, tuple):
        return env.getitem(value, part[0])
    return env.getattr(value, part)


def _slottable_path(path: ReadPath) -> bool:
    """Whether :func:`_with_slots` can put a slot at ``path``."""
    if len(path) == 1:
        return path[0] not in ("props", "contact")
    if path[0] == "props":
        return len(path) == 2
    if path[0] == "contact":
        return (len(path) == 2 and path[1] in _CONTACT_FIELDS) or (
            len(path) == 3 and path[1] == "properties"
        )
    return False


def _with_slots(
    variables: Mapping[str, Any], slots: Mapping[ReadPath, str]
) -> dict[str, Any] | None:
    """``variables`` with a slot at each path of ``slots`` (see :func:`_slottable_path`)."""
    out = dict(variables)
    props: dict[str, Any] | None = None
    changes: dict[str, Any] = {}
    properties: dict[str, Any] | None = None
    for path, slot in slots.items():
        name = [part[0] if isinstance(part, tuple) else part for part in path]
        if len(path) == 1:
            out[str(name[0])] = slot
        elif name[0] == "props":
            if props is None:
                given = variables.get("props")
                if not isinstance(given, dict):
                    return None
                props = dict(given)
            props[str(name[1])] = slot
        elif len(path) == 2:
            changes[str(name[1])] = slot
        else:
            if properties is None:
                contact = variables.get("contact")
                if not isinstance(contact, Contact):
                    return None
                properties = dict(contact.properties)
            properties[str(name[2])] = slot
    if props is not None:
        out["props"] = props
    if changes or properties is not None:
        contact = variables.get("contact")
        if not isinstance(contact, Contact):
            return None
        if properties is not None:
            changes["properties"] = properties
        out["contact"] = dataclasses.replace(contact, **changes)
    return out


def _once(make: Callable[[], JinjaOutput]) -> Callable[[], JinjaOutput]:
    made: list[JinjaOutput] = []

    def once() -> JinjaOutput:
        if not made:
            made.append(make())
        return made[0]

    return once
