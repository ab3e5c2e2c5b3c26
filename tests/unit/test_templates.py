"""Email templates: metadata, rendering, layouts, CSS inlining, text parts, props, errors."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from pydantic import BaseModel

from hogsend import Contact, Hogsend, JourneyContext, define_journey
from hogsend.channels.plaintext import html_to_text
from hogsend.channels.templates import TemplateRegistry
from hogsend.core.templates import parse_metadata, render_variables
from hogsend.errors import (
    ConfigurationError,
    TemplateError,
    TemplateNotFound,
    TemplatePropsError,
)

ADA = Contact(id=uuid.uuid4(), key="u1", email="ada@example.com", properties={"first_name": "Ada"})

LAYOUT = """<!doctype html>
<html><head><title>{% block title %}{% endblock %}</title>
<style>p { color: #123456; } @media (max-width: 600px) { p { color: red; } }</style></head>
<body><div class="card">{% block body %}{% endblock %}</div></body></html>
"""

WELCOME = """{#---
subject: Welcome, {{ contact.properties.first_name }}
preheader: Hello {{ plan }} user
category: onboarding
---#}
{% extends "_layout.html" %}
{% block title %}Welcome{% endblock %}
{% block body %}<h1>Hi {{ contact.properties.first_name }}</h1>
<p>Your plan: {{ plan }}. <a href="https://example.com/start">Get started</a></p>
<p>{{ note }}</p>{% endblock %}
"""


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    (tmp_path / "_layout.html").write_text(LAYOUT)
    (tmp_path / "welcome.html").write_text(WELCOME)
    (tmp_path / "plain.html").write_text("{#---\nsubject: Plain\n---#}<p>{{ greeting }}</p>")
    (tmp_path / "plain.txt").write_text("Text part: {{ greeting }} & more\n")
    return tmp_path


class WelcomeProps(BaseModel):
    plan: str
    seats: int = 1
    note: str = "<b>n</b>"


def test_metadata_block_is_parsed() -> None:
    meta = parse_metadata(
        "\n{#---\nsubject: Hi {{ x }}\n# a comment\n\ncategory: billing\n---#}\nbody", key="k"
    )
    assert meta.subject == "Hi {{ x }}"
    assert meta.category == "billing"
    assert meta.preheader is None
    assert parse_metadata("<p>no block</p>", key="k").subject is None


@pytest.mark.parametrize(
    ("source", "message", "line"),
    [
        ("{#---\nsubject: a\n", "never closed", 1),
        ("{#---\nsubject: a\ncolour: red\n---#}", "unknown metadata 'colour'", 3),
        ("{#---\nsubject a\n---#}", "not 'name: value'", 2),
        ("{#---\nsubject: a\nsubject: b\n---#}", "given twice", 3),
    ],
)
def test_bad_metadata_names_key_and_line(source: str, message: str, line: int) -> None:
    with pytest.raises(TemplateError, match=message) as info:
        parse_metadata(source, key="welcome")
    assert info.value.key == "welcome"
    assert info.value.line == line
    assert f"template 'welcome', line {line}" in str(info.value)


def test_props_may_not_shadow_engine_variables() -> None:
    with pytest.raises(TemplateError, match="'contact'"):
        render_variables(key="k", contact=ADA, props={"contact": 1})


def test_render_with_layout_metadata_inlining_and_preheader(directory: Path) -> None:
    registry = TemplateRegistry(directory)
    assert registry.keys() == {"welcome", "plain"}
    rendered = registry.render("welcome", contact=ADA, props={"plan": "Pro", "note": "<i>x</i>"})
    assert rendered.subject == "Welcome, Ada"
    assert rendered.preheader == "Hello Pro user"
    assert rendered.category == "onboarding"
    # Inheritance: the layout's wrapper around the template's block.
    assert '<div class="card"><h1>Hi Ada</h1>' in rendered.html
    # CSS inlined into the element; the media query kept in a style tag.
    assert '<p style="color: #123456;">' in rendered.html
    assert "@media (max-width: 600px)" in rendered.html
    # HTML is autoescaped.
    assert "&lt;i&gt;x&lt;/i&gt;" in rendered.html
    # The preheader is hidden right after <body>.
    body_at = rendered.html.index("<body")
    assert rendered.html.index("Hello Pro user") > body_at
    assert 'aria-hidden="true"' in rendered.html
    # Text derived from the HTML: links as "text (url)", no preheader, no CSS.
    assert "Get started (https://example.com/start)" in rendered.text
    assert "Hi Ada" in rendered.text
    assert "Hello Pro user" not in rendered.text
    assert "color" not in rendered.text


def test_text_part_from_txt_file_is_not_escaped(directory: Path) -> None:
    rendered = TemplateRegistry(directory).render("plain", contact=ADA, props={"greeting": "a<b"})
    assert rendered.text == "Text part: a<b & more\n"
    assert "a&lt;b" in rendered.html
    assert rendered.preheader is None
    assert rendered.category is None


def test_subject_override_is_literal(directory: Path) -> None:
    rendered = TemplateRegistry(directory).render(
        "plain", contact=ADA, props={"greeting": "x"}, subject="Hi {{ nope }}"
    )
    assert rendered.subject == "Hi {{ nope }}"


def test_extra_variables_reach_the_template(tmp_path: Path) -> None:
    (tmp_path / "t.html").write_text(
        '{#---\nsubject: s\n---#}<a href="{{ unsubscribe_url }}">Unsubscribe</a>'
    )
    rendered = TemplateRegistry(tmp_path).render(
        "t", contact=ADA, extra={"unsubscribe_url": "https://x/u"}
    )
    assert 'href="https://x/u"' in rendered.html
    assert rendered.text == "Unsubscribe (https://x/u)\n"


def test_undefined_variable_names_the_variable_and_line(directory: Path) -> None:
    registry = TemplateRegistry(directory)
    with pytest.raises(TemplateError) as info:
        registry.render("welcome", contact=ADA, props={"note": "n"})
    error = info.value
    assert error.key == "welcome"
    assert "'plan' is undefined" in str(error)
    # The subject and body are fine; the preheader uses plan first.
    assert "preheader" in str(error)
    with pytest.raises(TemplateError) as info:
        registry.render("welcome", contact=ADA, props={"plan": "Pro"})
    assert "'note' is undefined" in str(info.value)
    assert info.value.line == 10


def test_undefined_in_a_layout_names_the_layout(tmp_path: Path) -> None:
    (tmp_path / "_base.html").write_text(
        "<html><body>\n\n{{ footer_text }}{% block b %}{% endblock %}</body></html>"
    )
    (tmp_path / "t.html").write_text('{#---\nsubject: s\n---#}{% extends "_base.html" %}')
    with pytest.raises(TemplateError) as info:
        TemplateRegistry(tmp_path).render("t", contact=ADA)
    assert info.value.file == "_base.html"
    assert info.value.line == 3
    assert "template 't' (_base.html, line 3)" in str(info.value)


def test_syntax_error_has_the_line(tmp_path: Path) -> None:
    (tmp_path / "broken.html").write_text("{#---\nsubject: s\n---#}\n<p>\n{% if x %}\n</p>")
    registry = TemplateRegistry(tmp_path)
    with pytest.raises(TemplateError) as info:
        registry.render("broken", contact=ADA, props={"x": 1})
    assert info.value.line is not None
    assert "broken" in str(info.value)
    (problem,) = registry.check()
    assert problem.where == "template broken"
    assert "line" in problem.message


def test_unknown_key_suggests_close_ones(directory: Path) -> None:
    with pytest.raises(TemplateNotFound, match="did you mean 'welcome'"):
        TemplateRegistry(directory).render("welcom", contact=ADA)


def test_missing_subject_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "t.html").write_text("<p>x</p>")
    with pytest.raises(TemplateError, match="has no subject"):
        TemplateRegistry(tmp_path).render("t", contact=ADA)


def test_props_model_validates_and_fills_defaults(directory: Path) -> None:
    registry = TemplateRegistry(directory, props={"welcome": WelcomeProps})
    with pytest.raises(TemplatePropsError) as info:
        registry.render("welcome", contact=ADA, props={"seats": "many"})
    assert {e["loc"] for e in info.value.errors} == {"plan", "seats"}
    assert "WelcomeProps" in str(info.value)
    rendered = registry.render("welcome", contact=ADA, props={"plan": "Team"})
    assert "&lt;b&gt;n&lt;/b&gt;" in rendered.html  # the model's default, escaped
    assert registry.get("welcome").props_model is not None


def test_mjml_templates_compile(tmp_path: Path) -> None:
    (tmp_path / "news.mjml").write_text(
        "{#---\nsubject: {{ title }}\n---#}\n<mjml><mj-body><mj-section><mj-column>"
        "<mj-text>{{ title }}</mj-text>"
        '<mj-button href="https://example.com/read">Read</mj-button>'
        "</mj-column></mj-section></mj-body></mjml>"
    )
    registry = TemplateRegistry(tmp_path)
    rendered = registry.render("news", contact=ADA, props={"title": "March & more"})
    assert registry.get("news").format == "mjml"
    assert rendered.subject == "March & more"
    assert "March &amp; more" in rendered.html
    assert "<mj-" not in rendered.html
    assert "Read (https://example.com/read)" in rendered.text


def test_bad_mjml_is_a_template_error(tmp_path: Path) -> None:
    (tmp_path / "news.mjml").write_text("{#---\nsubject: s\n---#}<mjml><mj-body>")
    with pytest.raises(TemplateError, match="MJML"):
        TemplateRegistry(tmp_path).render("news", contact=ADA)


def test_check_finds_directory_problems(tmp_path: Path) -> None:
    (tmp_path / "Bad_Name.html").write_text("x")
    (tmp_path / "a.html").write_text('{% extends "_missing.html" %}')
    (tmp_path / "b.html").write_text("{#---\nsubject: {{ oops\n---#}x")
    (tmp_path / "c.html").write_text("c")
    (tmp_path / "c.mjml").write_text("c")
    (tmp_path / "_partial.html").write_text("{% for %}")
    registry = TemplateRegistry(
        tmp_path,
        props={"ghost": WelcomeProps, "b": WelcomeProps},
        examples={"b": {"seats": 2}},
    )
    problems = {(p.where, p.message.split(" ")[0]) for p in registry.check()}
    assert ("template file Bad_Name.html", "name") in problems
    assert ("template a", "uses") in problems
    assert ("template b", "subject:") in problems
    assert ("template c", "both") in problems
    assert ("template file _partial.html", "line") in problems
    assert ("template ghost", "props") in problems
    assert ("template b", "example") in problems


def test_check_reports_a_missing_directory(tmp_path: Path) -> None:
    (problem,) = TemplateRegistry(tmp_path / "nowhere").check()
    assert problem.where == "templates"


def test_registry_reads_nothing_until_used(tmp_path: Path) -> None:
    registry = TemplateRegistry(tmp_path)
    (tmp_path / "late.html").write_text("x")
    assert registry.keys() == {"late"}
    (tmp_path / "later.html").write_text("x")
    assert registry.keys() == {"late"}
    registry.refresh()
    assert registry.keys() == {"late", "later"}


@define_journey(id="sender", name="Sender", trigger="e")
async def sender(contact: Contact, ctx: JourneyContext) -> None:
    await ctx.send_email(template="nope")


def test_app_check_and_launch_fail_on_template_problems(directory: Path) -> None:
    (directory / "broken.html").write_text("{% if %}")
    app = Hogsend(journeys=[sender], templates=TemplateRegistry(directory))
    messages = [str(p) for p in app.check()]
    assert any("broken" in m for m in messages)
    assert any("journey sender" in m and "'nope'" in m for m in messages)
    with pytest.raises(ConfigurationError, match="templates are not ready"):
        app.launch()
    assert not app.launched


def test_app_accepts_a_directory(directory: Path) -> None:
    app = Hogsend(templates=str(directory))
    assert app.template_keys() == {"welcome", "plain"}
    assert app.template_dir == directory
    app.launch()


def test_html_to_text() -> None:
    html = (
        "<html><head><title>T</title><style>p{}</style></head><body>"
        '<div style="display: none">hidden</div><h1>Title</h1><p>One <b>two</b><br>three</p>'
        '<ul><li>a</li><li>b <a href="https://x.com/b">link</a></li></ul>'
        '<p><a href="https://x.com">https://x.com</a> <a href="mailto:a@b.c">a@b.c</a></p>'
        '<img alt="Logo" src="l.png"><hr><table><tr><td>x</td><td>y</td></tr></table></body></html>'
    )
    assert html_to_text(html) == (
        "Title\n\nOne two\nthree\n\n- a\n- b link (https://x.com/b)\n\n"
        "https://x.com a@b.c\n\nLogo\n\n----\n\nx y\n"
    )


def test_quickstart_templates_all_render() -> None:
    root = Path(__file__).parents[2]
    code = (
        "import uuid\n"
        "from examples.quickstart.app import app\n"
        "from hogsend import Contact\n"
        "reg = app.templates\n"
        "assert app.check() == [], app.check()\n"
        "c = Contact(id=uuid.uuid4(), key='k', email='a@b.c')\n"
        "for k in sorted(reg.keys()):\n"
        "    r = reg.render(k, contact=c, props=reg.preview_props(k))\n"
        "    assert r.subject and r.html and r.text.strip(), k\n"
        "print(len(reg.keys()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert int(out.stdout) >= 7


def test_cli_lists_and_previews_quickstart_templates(tmp_path: Path) -> None:
    root = Path(__file__).parents[2]
    props = tmp_path / "props.json"
    props.write_text('{"days_left": 1, "ends_on": "May 2"}')
    base = [sys.executable, "-m", "hogsend.cli.main", "--app", "examples.quickstart.app:app"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*base, *args], cwd=root, capture_output=True, text=True)

    listed = run("templates", "list")
    assert listed.returncode == 0, listed.stderr
    assert "trial-ending\thtml\tbilling" in listed.stdout
    preview = run("templates", "preview", "trial-ending", "--props", str(props))
    assert preview.returncode == 0, preview.stderr
    assert preview.stdout.startswith("Subject: Your trial ends in 1 day\n")
    html = run("templates", "preview", "welcome", "--format", "html", "-o", str(tmp_path / "w"))
    assert html.returncode == 0, html.stderr
    assert "<body" in (tmp_path / "w").read_text()
    unknown = run("templates", "preview", "welcom")
    assert unknown.returncode == 1
    assert "did you mean 'welcome'" in unknown.stderr


# --------------------------------------------------------------------------- standard footer

URL = "https://mail.example.test/v1/email/preferences?token=abc"


def test_a_linkless_template_gets_the_footer_before_body_end_in_both_parts(
    directory: Path,
) -> None:
    registry = TemplateRegistry(directory)
    props = {"plan": "Pro", "note": "n"}
    rendered = registry.render("welcome", contact=ADA, props=props, footer=URL)
    assert rendered.html.count(URL) == 1
    assert rendered.html.index(URL) < rendered.html.index("</body>")
    assert rendered.text.endswith(f"Manage your email preferences or unsubscribe: {URL}\n")
    # Transactional (no footer URL): nothing added.
    plain = registry.render("welcome", contact=ADA, props=props)
    assert "preferences" not in plain.html + plain.text
    # A written text part gets it too.
    assert registry.render(
        "plain", contact=ADA, props={"greeting": "hi"}, footer=URL
    ).text.endswith(f": {URL}\n")


def test_a_link_anywhere_in_the_layout_chain_means_no_footer(tmp_path: Path) -> None:
    (tmp_path / "_base.html").write_text(
        "<html><body>{% block body %}{% endblock %}{% include 'parts/_foot.html' %}</body></html>"
    )
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "_foot.html").write_text(
        '{% if unsubscribe_url is defined %}<a href="{{ unsubscribe_url }}">Bye</a>{% endif %}'
    )
    (tmp_path / "_middle.html").write_text('{% extends "_base.html" %}')
    (tmp_path / "deep.html").write_text(
        '{#---\nsubject: Deep\n---#}{% extends "_middle.html" %}{% block body %}Hi{% endblock %}'
    )
    (tmp_path / "deep.txt").write_text("Hi, no link here\n")
    registry = TemplateRegistry(tmp_path)
    footer = registry.auto_footer("deep")
    assert (footer.html, footer.text) == (False, True)
    rendered = registry.render(
        "deep",
        contact=ADA,
        extra={"unsubscribe_url": "https://u", "preferences_url": URL},
        footer=URL,
    )
    assert URL not in rendered.html
    assert rendered.text.endswith(f": {URL}\n")
    [warning] = registry.warnings()
    assert warning.where == "template deep"
    assert "text part" in warning.message


def test_mjml_templates_get_the_footer_in_the_compiled_html(tmp_path: Path) -> None:
    (tmp_path / "news.mjml").write_text(
        "{#---\nsubject: N\ncategory: news\n---#}"
        "<mjml><mj-body><mj-section><mj-column><mj-text>Hello</mj-text>"
        "</mj-column></mj-section></mj-body></mjml>"
    )
    (tmp_path / "receipt.html").write_text(
        "{#---\nsubject: R\ncategory: transactional\n---#}<p>Paid</p>"
    )
    registry = TemplateRegistry(tmp_path)
    rendered = registry.render("news", contact=ADA, footer=URL)
    assert rendered.html.count(URL) == 1
    assert rendered.html.index(URL) < rendered.html.lower().rindex("</body>")
    # Warned about: news (a transactional template is sent without such links).
    assert [w.where for w in registry.warnings()] == ["template news"]
    app = Hogsend(templates=registry)
    assert app.check() == []
    assert [str(w) for w in app.warnings()] == [f"template news: {registry.warnings()[0].message}"]
