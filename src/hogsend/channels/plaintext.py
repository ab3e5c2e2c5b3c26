"""The plain-text part of an email, derived from its HTML when no ``.txt`` was written.

Readable rather than faithful: block elements become paragraphs, list items get a
dash, links keep their target as ``text (url)``, images their ``alt``; ``head``,
``style``, ``script`` and anything marked hidden (a preheader) are dropped.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

_BLOCK = frozenset(
    {
        "address", "article", "aside", "blockquote", "center", "dd", "div", "dl", "dt",
        "fieldset", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header",
        "hr", "main", "nav", "ol", "p", "pre", "section", "table", "tr", "ul",
    }
)  # fmt: skip
_SKIP = frozenset({"head", "style", "script", "title", "template", "noscript"})
_VOID = frozenset({"br", "hr", "img", "meta", "link", "input", "col", "area", "base", "wbr"})
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none", re.IGNORECASE)
_SPACES = re.compile(r"[ \t\r\f\v\n]+")


class _TextBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = []
        self.current: list[str] = []
        self.skip_depth = 0
        # Stack of open elements that started a skipped region (name) or not (None).
        self.stack: list[tuple[str, bool]] = []
        self.links: list[tuple[str, int]] = []
        self.pre = 0

    # -- output ----------------------------------------------------------------------

    def _flush(self, blank: bool = True) -> None:
        line = "".join(self.current).strip()
        self.current = []
        if line:
            self.lines.append(line)
        if blank and self.lines and self.lines[-1] != "":
            self.lines.append("")

    def _write(self, text: str) -> None:
        if self.skip_depth:
            return
        if self.pre:
            self.current.append(text)
            return
        text = _SPACES.sub(" ", text)
        if not self.current or "".join(self.current).endswith(" "):
            text = text.lstrip(" ")
        self.current.append(text)

    # -- parser callbacks --------------------------------------------------------------

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        hidden = (
            tag in _SKIP
            or "hidden" in values
            or bool(_HIDDEN_STYLE.search(values.get("style", "")))
            or values.get("aria-hidden") == "true"
        )
        if tag not in _VOID:
            self.stack.append((tag, hidden))
        if hidden and tag not in _VOID:
            self.skip_depth += 1
            return
        if self.skip_depth:
            return
        if tag == "br":
            self.current.append("\n")
        elif tag == "hr":
            self._flush()
            self.lines.append("----")
            self.lines.append("")
        elif tag == "img":
            alt = values.get("alt", "").strip()
            if alt:
                self._write(alt)
        elif tag == "li":
            self._flush(blank=False)
            self.current.append("- ")
        elif tag in ("td", "th"):
            if self.current and not "".join(self.current).endswith(" "):
                self.current.append(" ")
        elif tag in _BLOCK:
            self._flush()
            if tag == "pre":
                self.pre += 1
        if tag == "a":
            self.links.append((values.get("href", "").strip(), len("".join(self.current))))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in _VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in _VOID:
            return
        # Pop up to the matching element; browsers forgive unclosed tags, so do we.
        while self.stack:
            name, hidden = self.stack.pop()
            if hidden:
                self.skip_depth -= 1
            elif not self.skip_depth:
                self._close(name)
            if name == tag:
                break

    def _close(self, tag: str) -> None:
        if tag == "a" and self.links:
            href, start = self.links.pop()
            label = "".join(self.current)[start:].strip()
            target = href.removeprefix("mailto:")
            if target and not href.startswith(("#", "javascript:")) and target != label:
                self._write(f" ({target})" if label else target)
        elif tag == "li":
            self._flush(blank=False)
        elif tag in _BLOCK:
            if tag == "pre":
                self.pre = max(self.pre - 1, 0)
            self._flush()

    def handle_data(self, data: str) -> None:
        self._write(data)

    def result(self) -> str:
        self._flush(blank=False)
        lines = [line.rstrip() for line in "\n".join(self.lines).split("\n")]
        text = "\n".join(line.strip() if not self.pre else line for line in lines)
        return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def html_to_text(html: str) -> str:
    """Plain text for ``html``, ending with one newline (empty HTML gives ``"\\n"``)."""
    builder = _TextBuilder()
    builder.feed(html)
    builder.close()
    return builder.result()
