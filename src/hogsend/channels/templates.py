"""Loading, checking and rendering the email templates of a user's project.

A template directory holds, at its top level, one ``<key>.html`` (Jinja2 HTML) or
``<key>.mjml`` (Jinja2 over MJML) per template, an optional ``<key>.txt`` for the
plain-text part, and any number of layouts and partials: files whose name starts with
``_`` or that sit in a subdirectory. A template starts with an optional metadata
block (see :mod:`hogsend.core.templates`) and may ``{% extends "_layout.html" %}``.

Rendering, in order: validate props (pydantic model, if registered) → render the
subject and preheader → render the body (MJML compiled to HTML) → derive the text
part unless a ``.txt`` exists → add the standard preference footer where it is due
(see :meth:`TemplateRegistry.auto_footer`) → insert the hidden preheader → inline the
CSS.

The directory is read lazily, on first use, so building a registry at import time
touches no file.
"""

from __future__ import annotations

import difflib
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import jinja2
import jinja2.meta
from pydantic import BaseModel, ValidationError

from hogsend.channels.plaintext import html_to_text
from hogsend.core.contact import Contact
from hogsend.core.mailer_gates import TRANSACTIONAL_CATEGORY
from hogsend.core.templates import (
    EmailTemplate,
    RenderedEmail,
    TemplateFormat,
    is_template_key,
    parse_metadata,
    render_variables,
)
from hogsend.errors import TemplateError, TemplateNotFound, TemplatePropsError

_BODY_SUFFIXES: dict[str, TemplateFormat] = {".html": "html", ".mjml": "mjml"}
_BODY_TAG = re.compile(r"<body\b[^>]*>", re.IGNORECASE)
FINISHED_CACHE_SIZE = 256
"""How many finished bodies :meth:`TemplateRegistry.render` keeps (see ``_finish``)."""
LINK_VARIABLES = frozenset({"preferences_url", "unsubscribe_url"})
"""The variables through which a template shows a non-transactional message's own links."""
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)


@dataclass(frozen=True, slots=True, kw_only=True)
class JinjaOutput:
    """What Jinja produced for one message, before the finishing steps.

    Attributes:
        subject: the subject, whitespace collapsed.
        preheader: the rendered preheader, if the template has one.
        body: the HTML (or MJML) body as rendered.
        written: the rendered ``.txt`` part, if the template has one.
    """

    subject: str
    preheader: str | None
    body: str
    written: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class AutoFooter:
    """Which parts of a template's non-transactional messages get the standard footer.

    A part gets it when its file, with its layouts, includes and imports, never names
    ``preferences_url`` or ``unsubscribe_url``: every such message then still carries a
    link to the preference centre. A derived text part follows the HTML.
    """

    html: bool
    text: bool

    @property
    def any(self) -> bool:
        """Whether some part gets the footer."""
        return self.html or self.text


@dataclass(frozen=True, slots=True, kw_only=True)
class TemplateProblem:
    """One thing wrong with a template directory (reported by ``hogsend check``)."""

    where: str
    message: str


@dataclass(frozen=True, slots=True)
class _Scan:
    templates: dict[str, EmailTemplate]
    problems: list[TemplateProblem]


class TemplateRegistry:
    """The email templates of an app, read from one directory.

    Args:
        directory: the template directory.
        props: per template key, a pydantic model the send's props must validate
            against; the template then sees the validated values (defaults filled in).
        examples: per template key, sample props for previews (CLI, admin API, Studio).
        inline_css: inline ``<style>`` rules into ``style=""`` attributes (HTML
            templates; MJML inlines its own). Media queries stay in a ``<style>``.

    ``Hogsend(templates="dir")`` builds ``TemplateRegistry("dir")``; pass a registry
    yourself for props models or examples.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        props: Mapping[str, type[BaseModel]] | None = None,
        examples: Mapping[str, Mapping[str, Any]] | None = None,
        inline_css: bool = True,
    ) -> None:
        self.directory = Path(directory)
        self.props_models: dict[str, type[BaseModel]] = dict(props or {})
        self.examples: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (examples or {}).items()}
        self.inline_css = inline_css
        self._env: jinja2.Environment | None = None
        self._scan: _Scan | None = None
        self._lock = threading.Lock()
        # Subjects and preheaders, compiled once: compiling cost more than rendering.
        self._strings: dict[str, jinja2.Template] = {}
        # Jinja's output -> the finished HTML and text: deriving the text part and
        # inlining CSS cost several times the rendering itself, and a campaign renders
        # the same output over and over (the mailer renders its per-message links as
        # fixed placeholders, see hogsend.channels.message_plans).
        self._finished: OrderedDict[tuple[str, ...] | tuple[str | None, ...], tuple[str, str]]
        self._finished = OrderedDict()
        # Per template key: which parts get the standard footer (read from the syntax
        # trees once per scan, like the metadata; see auto_footer).
        self._footers: dict[str, AutoFooter] = {}

    def __repr__(self) -> str:
        return f"TemplateRegistry({str(self.directory)!r})"

    # -- discovery ---------------------------------------------------------------------

    @property
    def environment(self) -> jinja2.Environment:
        """The Jinja2 environment: HTML/MJML autoescaped, undefined variables are errors."""
        if self._env is None:
            self._env = jinja2.Environment(
                loader=jinja2.FileSystemLoader(self.directory),
                autoescape=jinja2.select_autoescape(
                    enabled_extensions=("html", "htm", "mjml", "xml"),
                    default_for_string=False,
                    default=False,
                ),
                undefined=jinja2.StrictUndefined,
                keep_trailing_newline=True,
                auto_reload=True,
            )
        return self._env

    def refresh(self) -> None:
        """Forget what was read from the directory (new or edited files are seen next use)."""
        with self._lock:
            self._scan = None
            self._finished.clear()
            self._footers = {}

    def _scanned(self) -> _Scan:
        # Read without the lock once scanned (a message asks several times): the
        # reference is swapped whole, so this sees the old scan or the new one, as a
        # caller ordered just before or after a concurrent refresh would.
        scan = self._scan
        if scan is not None:
            return scan
        with self._lock:
            if self._scan is None:
                self._scan = self._read_directory()
            return self._scan

    def _read_directory(self) -> _Scan:
        templates: dict[str, EmailTemplate] = {}
        problems: list[TemplateProblem] = []
        if not self.directory.is_dir():
            return _Scan(templates, problems)
        for path in sorted(self.directory.iterdir()):
            fmt = _BODY_SUFFIXES.get(path.suffix)
            if fmt is None or not path.is_file() or path.name.startswith("_"):
                continue
            key = path.stem
            if not is_template_key(key):
                problems.append(
                    TemplateProblem(
                        where=f"template file {path.name}",
                        message="name is not a kebab-case key (e.g. trial-ending.html); "
                        "start layouts and partials with '_'",
                    )
                )
                continue
            if key in templates:
                problems.append(
                    TemplateProblem(
                        where=f"template {key}",
                        message=f"both {templates[key].source} and {path.name} exist; keep one",
                    )
                )
                continue
            try:
                meta = parse_metadata(path.read_text(encoding="utf-8"), key=key)
            except TemplateError as exc:
                problems.append(TemplateProblem(where=f"template {key}", message=str(exc)))
                continue
            text_path = self.directory / f"{key}.txt"
            model = self.props_models.get(key)
            templates[key] = EmailTemplate(
                key=key,
                format=fmt,
                source=path.name,
                text_source=text_path.name if text_path.is_file() else None,
                meta=meta,
                props_model=f"{model.__module__}.{model.__qualname__}" if model else None,
            )
        return _Scan(templates, problems)

    def keys(self) -> frozenset[str]:
        """The keys of every template in the directory."""
        return frozenset(self._scanned().templates)

    def templates(self) -> list[EmailTemplate]:
        """Every template, sorted by key."""
        scan = self._scanned()
        return [scan.templates[key] for key in sorted(scan.templates)]

    def get(self, key: str) -> EmailTemplate:
        """The template called ``key``.

        Raises:
            TemplateNotFound: no such template (the message suggests close keys).
        """
        scan = self._scanned()
        try:
            return scan.templates[key]
        except KeyError:
            close = difflib.get_close_matches(key, list(scan.templates), n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise TemplateNotFound(
                f"no {key}.html or {key}.mjml in {self.directory}{hint}", key=key
            ) from None

    def preview_props(self, key: str) -> dict[str, Any]:
        """The example props of ``key`` (empty when none were given)."""
        return dict(self.examples.get(key, {}))

    def auto_footer(self, key: str) -> AutoFooter:
        """Which parts of ``key``'s non-transactional messages get the standard footer.

        Decided once per template (until :meth:`refresh`) from the syntax trees of its
        files and of every layout, include and import they name, not per message: a
        part whose files never name ``preferences_url`` or ``unsubscribe_url`` gets a
        short footer linking to the preference centre. A file that cannot be read or
        parsed counts as naming neither (rendering it fails anyway).

        Raises:
            TemplateNotFound: unknown key.
        """
        footers = self._footers
        found = footers.get(key)
        if found is not None:
            return found
        template = self.get(key)
        html = not _names_links(self.environment, template.source)
        text = html
        if template.text_source is not None:
            text = not _names_links(self.environment, template.text_source)
        found = footers[key] = AutoFooter(html=html, text=text)
        return found

    def warnings(self) -> list[TemplateProblem]:
        """What ``hogsend check`` points out without failing: the templates whose
        non-transactional messages get the standard preference footer (none of their
        files shows ``preferences_url`` or ``unsubscribe_url``)."""
        found: list[TemplateProblem] = []
        for template in self.templates():
            if template.meta.category == TRANSACTIONAL_CATEGORY:
                continue  # sent as transactional mail, which carries no such links
            parts = self.auto_footer(template.key)
            if not parts.any:
                continue
            which = {(True, True): "HTML and text parts", (True, False): "HTML part"}.get(
                (parts.html, parts.text), "text part"
            )
            found.append(
                TemplateProblem(
                    where=f"template {template.key}",
                    message=f"its {which} never show preferences_url or unsubscribe_url; "
                    "non-transactional sends get the standard footer linking to the "
                    "preference centre",
                )
            )
        return found

    # -- checking ----------------------------------------------------------------------

    def check(self) -> list[TemplateProblem]:
        """Compile every file and report what would fail at send time.

        Finds: a missing directory, badly named files, bad metadata, syntax errors
        (in templates, layouts and partials, with their line), references to layouts
        or partials that do not exist, props models or examples for unknown keys, and
        examples that fail their template's props model.
        """
        if not self.directory.is_dir():
            return [
                TemplateProblem(
                    where="templates", message=f"directory {self.directory} does not exist"
                )
            ]
        self.refresh()
        scan = self._scanned()
        problems = list(scan.problems)
        env = self.environment
        names = set(env.list_templates())
        for name in sorted(names):
            if Path(name).suffix not in (".html", ".mjml", ".txt", ".htm", ".xml"):
                continue
            where = _where_for(name, scan.templates)
            try:
                source = (self.directory / name).read_text(encoding="utf-8")
                tree = env.parse(source, name=name, filename=str(self.directory / name))
                env.compile(tree, name=name, filename=str(self.directory / name))
            except jinja2.TemplateSyntaxError as exc:
                problems.append(
                    TemplateProblem(where=where, message=f"line {exc.lineno}: {exc.message}")
                )
                continue
            for ref in jinja2.meta.find_referenced_templates(tree):
                if ref is not None and ref not in names:
                    problems.append(
                        TemplateProblem(where=where, message=f"uses missing template {ref!r}")
                    )
        for template in scan.templates.values():
            for label, value in (
                ("subject", template.meta.subject),
                ("preheader", template.meta.preheader),
            ):
                if value is None:
                    continue
                try:
                    env.parse(value)
                except jinja2.TemplateSyntaxError as exc:
                    problems.append(
                        TemplateProblem(
                            where=f"template {template.key}", message=f"{label}: {exc.message}"
                        )
                    )
        for label, keys in (("props model", self.props_models), ("example", self.examples)):
            for key in sorted(set(keys) - set(scan.templates)):
                problems.append(
                    TemplateProblem(
                        where=f"template {key}", message=f"{label} given, but no such template"
                    )
                )
        for key, example in sorted(self.examples.items()):
            model = self.props_models.get(key)
            if model is None or key not in scan.templates:
                continue
            try:
                model.model_validate(example)
            except ValidationError as exc:
                problems.append(
                    TemplateProblem(
                        where=f"template {key}",
                        message=f"example props fail {model.__name__}: {_summarise(exc)}",
                    )
                )
        return problems

    # -- rendering ---------------------------------------------------------------------

    def validate_props(self, key: str, props: Mapping[str, Any] | None) -> dict[str, Any]:
        """The props a template sees: validated by its model (if any), else as given.

        Raises:
            TemplateNotFound: unknown key.
            TemplatePropsError: the props fail the model; ``errors`` lists each field.
        """
        self.get(key)
        given = dict(props or {})
        model = self.props_models.get(key)
        if model is None:
            return given
        try:
            validated = model.model_validate(given)
        except ValidationError as exc:
            raise TemplatePropsError(
                f"invalid props for {model.__name__}: {_summarise(exc)}",
                key=key,
                errors=[
                    {"loc": ".".join(str(p) for p in err["loc"]), "msg": err["msg"]}
                    for err in exc.errors()
                ],
            ) from None
        # Attributes, not model_dump(): nested models and their methods stay usable.
        return {name: getattr(validated, name) for name in type(validated).model_fields}

    def render(
        self,
        key: str,
        *,
        contact: Contact,
        props: Mapping[str, Any] | None = None,
        subject: str | None = None,
        extra: Mapping[str, Any] | None = None,
        footer: str | None = None,
    ) -> RenderedEmail:
        """Render template ``key`` for ``contact``.

        Args:
            key: the template key.
            contact: the recipient; templates see it as ``contact``.
            props: the send's props; templates see each one by name and all as ``props``.
            subject: a literal subject replacing the template's (not a template).
            extra: variables the engine adds (``unsubscribe_url``, ``preferences_url``
                ...), not validated by the props model.
            footer: a non-transactional message's preference-centre URL: the parts
                that show neither link get the standard footer with it
                (:meth:`auto_footer`). None for a transactional message.

        Raises:
            TemplateNotFound: unknown key.
            TemplatePropsError: props fail the template's model.
            TemplateError: the template has no subject, does not compile, or fails while
                rendering (an undefined variable ...), with the file and line.
        """
        output = self.render_jinja(
            key, self.variables(key, contact=contact, props=props, extra=extra), subject=subject
        )
        return self.finish(key, output, footer=footer)

    def variables(
        self,
        key: str,
        *,
        contact: Contact,
        props: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The variables :meth:`render` gives template ``key`` (props validated).

        Raises:
            TemplateNotFound: unknown key.
            TemplatePropsError: props fail the template's model.
            TemplateError: a prop uses a reserved name.
        """
        values = self.validate_props(key, props)
        return render_variables(key=key, contact=contact, props=values, extra=extra)

    def render_jinja(
        self, key: str, variables: Mapping[str, Any], *, subject: str | None = None
    ) -> JinjaOutput:
        """The first stage of :meth:`render`: what Jinja produces, before :meth:`finish`.

        Raises:
            TemplateNotFound: unknown key.
            TemplateError: as :meth:`render`.
        """
        template = self.get(key)
        variables = dict(variables)
        preheader = None
        if template.meta.preheader is not None:
            preheader = self._render_string(key, "preheader", template.meta.preheader, variables)
        variables["preheader"] = preheader
        if subject is None:
            if template.meta.subject is None:
                raise TemplateError(
                    "has no subject: add 'subject: ...' to its {#--- ---#} metadata block "
                    "or pass subject=",
                    key=key,
                )
            subject = self._render_string(key, "subject", template.meta.subject, variables)
        subject = " ".join(subject.split())
        body = self._render_file(key, template.source, variables)
        written = None
        if template.text_source is not None:
            written = self._render_file(key, template.text_source, variables)
        return JinjaOutput(subject=subject, preheader=preheader, body=body, written=written)

    def finish(self, key: str, output: JinjaOutput, *, footer: str | None = None) -> RenderedEmail:
        """The second stage of :meth:`render`: MJML, text part, footer, preheader, inlined CSS.

        ``footer``: as for :meth:`render`.

        Raises:
            TemplateNotFound: unknown key.
            TemplateError: MJML or CSS that does not compile.
        """
        template = self.get(key)
        body, text = self._finish(template, output.body, output.preheader, output.written, footer)
        return RenderedEmail(
            key=key,
            subject=output.subject,
            html=body,
            text=text,
            preheader=output.preheader,
            category=template.meta.category,
        )

    def _finish(
        self,
        template: EmailTemplate,
        body: str,
        preheader: str | None,
        written: str | None,
        footer: str | None,
    ) -> tuple[str, str]:
        """(HTML, text) from Jinja's output: MJML, text part, footer, preheader, inlined CSS.

        A pure function of its arguments (and ``inline_css`` and the template's files),
        so the last :data:`FINISHED_CACHE_SIZE` results are kept: the same output is
        finished once.
        """
        cache_key = (template.key, template.format, body, preheader, written, footer)
        with self._lock:
            cached = self._finished.get(cache_key)
            if cached is not None:
                self._finished.move_to_end(cache_key)
                return cached
        key = template.key
        if template.format == "mjml":
            body = _mjml_to_html(key, body)
        text = written.strip() + "\n" if written is not None else html_to_text(body)
        if footer is not None:
            parts = self.auto_footer(key)
            if parts.text:
                text = f"{text}\n{FOOTER_TEXT}: {footer}\n"
            if parts.html:
                body = _insert_footer(body, footer)
        if preheader:
            body = _insert_preheader(body, preheader)
        if self.inline_css and template.format == "html":
            body = _inline_css(key, body)
        with self._lock:
            self._finished[cache_key] = (body, text)
            if len(self._finished) > FINISHED_CACHE_SIZE:
                self._finished.popitem(last=False)
        return body, text

    def _render_string(
        self, key: str, label: str, source: str, variables: Mapping[str, Any]
    ) -> str:
        try:
            compiled = self._strings.get(source)
            if compiled is None:
                compiled = self._strings[source] = self.environment.from_string(source)
            return compiled.render(variables)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"{label}: {exc.message}", key=key) from None
        except jinja2.UndefinedError as exc:
            raise TemplateError(f"{label}: {_undefined_hint(exc)}", key=key) from None

    def _render_file(self, key: str, name: str, variables: Mapping[str, Any]) -> str:
        try:
            return self.environment.get_template(name).render(variables)
        except jinja2.TemplateSyntaxError as exc:
            raise _located(key, name, exc.filename, exc.lineno, exc.message or str(exc)) from None
        except jinja2.TemplateNotFound as exc:
            raise TemplateError(
                f"uses missing template {exc.name!r} (looked in {self.directory})", key=key
            ) from None
        except jinja2.UndefinedError as exc:
            file, line = self._template_frame(exc.__traceback__)
            raise _located(key, name, file, line, _undefined_hint(exc)) from None
        except (
            TemplateError,
            jinja2.TemplateError,
            ArithmeticError,
            LookupError,
            TypeError,
            ValueError,
        ) as exc:
            file, line = self._template_frame(exc.__traceback__)
            raise _located(key, name, file, line, f"{type(exc).__name__}: {exc}") from None

    def _template_frame(self, tb: TracebackType | None) -> tuple[str | None, int | None]:
        # Jinja2 rewrites tracebacks so template lines appear as frames of the file.
        root = str(self.directory.resolve())
        found: tuple[str | None, int | None] = (None, None)
        while tb is not None:
            filename = tb.tb_frame.f_code.co_filename
            if filename.startswith(root) or filename.startswith(str(self.directory)):
                found = (filename, tb.tb_lineno)
            tb = tb.tb_next
        return found


def _where_for(name: str, templates: Mapping[str, EmailTemplate]) -> str:
    stem = Path(name).stem
    if stem in templates and "/" not in name:
        return f"template {stem}"
    return f"template file {name}"


def _located(
    key: str, own: str, filename: str | None, line: int | None, message: str
) -> TemplateError:
    file = Path(filename).name if filename else None
    # Name the file only when the error is in a layout or partial, not in the template.
    return TemplateError(message, key=key, line=line, file=None if file in (None, own) else file)


def _undefined_hint(exc: jinja2.UndefinedError) -> str:
    return (
        f"{exc.message} (pass it in props, or write "
        "{{ name | default('...') }} where it is optional)"
    )


def _summarise(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in exc.errors()
    )


FOOTER_TEXT = "Manage your email preferences or unsubscribe"
"""The words of the standard footer (its link's text in HTML, before the URL in text)."""


def _names_links(env: jinja2.Environment, name: str) -> bool:
    """Whether file ``name``, or a file it extends, includes or imports (and so on),
    names ``preferences_url`` or ``unsubscribe_url`` as a variable."""
    seen: set[str] = set()
    pending = [name]
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            assert env.loader is not None
            source, _, _ = env.loader.get_source(env, current)
            tree = env.parse(source, current)
        except jinja2.TemplateError:
            continue  # check() reports it, and rendering fails
        if LINK_VARIABLES & jinja2.meta.find_undeclared_variables(tree):
            return True
        # A name built at render time (None here) cannot be followed: its links are
        # not counted, so the footer errs towards a second link, never none.
        pending.extend(
            ref for ref in jinja2.meta.find_referenced_templates(tree) if ref is not None
        )
    return False


def _insert_footer(html: str, url: str) -> str:
    from markupsafe import escape

    # Plain and small, inline-styled: it must read well inside any layout.
    block = (
        '<p style="margin:24px 0 0;font-size:12px;line-height:1.5;color:#6b7280;'
        f'text-align:center"><a href="{escape(url)}" style="color:#6b7280">'
        f"{FOOTER_TEXT}</a></p>"
    )
    ends = list(_BODY_END.finditer(html))
    if not ends:
        return html + block
    at = ends[-1].start()
    return html[:at] + block + html[at:]


def _insert_preheader(html: str, preheader: str) -> str:
    from markupsafe import escape

    # Hidden text that inboxes show next to the subject; padded so body text doesn't follow.
    block = (
        '<div style="display:none;max-height:0;overflow:hidden;mso-hide:all" aria-hidden="true">'
        f"{escape(preheader)}{'&#847;&zwnj;&nbsp;' * 30}</div>"
    )
    match = _BODY_TAG.search(html)
    if match is None:
        return block + html
    return html[: match.end()] + block + html[match.end() :]


def _inline_css(key: str, html: str) -> str:
    import css_inline

    try:
        return str(css_inline.inline(html, keep_at_rules=True, load_remote_stylesheets=False))
    except ValueError as exc:
        raise TemplateError(f"CSS could not be inlined: {exc}", key=key) from None


def _mjml_to_html(key: str, source: str) -> str:
    try:
        import mjml
    except ImportError:  # pragma: no cover - mjml-python is a dependency
        raise TemplateError("MJML templates need the mjml-python package", key=key) from None
    try:
        return str(mjml.mjml2html(source))
    except ValueError as exc:
        raise TemplateError(f"MJML does not compile: {exc}", key=key) from None
