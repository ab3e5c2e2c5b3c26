"""Template reads: the paths a template reads, printed whole or read as literals."""

from __future__ import annotations

import jinja2
import pytest

from hogsend.channels.template_reads import TemplateReads, analyse


def reads_of(files: dict[str, str], strings: tuple[str, ...] = ()) -> TemplateReads | None:
    env = jinja2.Environment(loader=jinja2.DictLoader(files), undefined=jinja2.StrictUndefined)
    return analyse(env, files=["main.html"], strings=strings)


def test_printed_and_literal_paths() -> None:
    reads = reads_of(
        {
            "main.html": '{% extends "layout.html" %}{% block body %}'
            "Hi {{ contact.properties.first_name | default('there') }},"
            " {{ days }} day{{ 's' if days != 1 }} on {{ props['plan'] }}"
            "{% for item in items %}{{ item.name }}{% endfor %}{% endblock %}",
            "layout.html": "<p>{% block body %}{% endblock %}</p>"
            "{% if unsubscribe_url is defined %}{{ unsubscribe_url }}{% endif %}",
        },
        strings=("For {{ contact.email }}",),
    )
    assert reads is not None
    assert set(reads.printed) == {
        ("contact", "properties", "first_name"),
        ("props", ("plan",)),
        ("contact", "email"),
        ("item", "name"),
    }
    # Read in a condition as well as printed: a literal.
    assert set(reads.literal) == {("days",), ("items",), ("unsubscribe_url",)}
    assert reads.files == ("main.html", "layout.html")


@pytest.mark.parametrize(
    "source",
    [
        "{% macro m(x) %}{{ x }}{% endmacro %}{{ m(contact.email) }}",
        "{% filter upper %}{{ contact.email }}{% endfilter %}",
        "{% set block %}{{ contact.email }}{% endset %}{{ block | upper }}",
        '{% import "other.html" as other %}',
        "{% include name %}",
        "{% extends layout %}",
        "{{ self.body() | upper }}{% block body %}{{ contact.email }}{% endblock %}",
        "{{ contact.email | default(x, *rest) }}",
    ],
)
def test_what_the_argument_does_not_cover(source: str) -> None:
    assert reads_of({"main.html": source, "other.html": ""}) is None


def test_filters_other_than_printing_make_a_literal() -> None:
    reads = reads_of({"main.html": "{{ contact.email | upper }} {{ name | e }}"})
    assert reads is not None
    assert reads.literal == (("contact", "email"),)
    assert reads.printed == (("name",),)


def test_a_block_printed_whole_is_covered() -> None:
    reads = reads_of(
        {
            "main.html": '{% extends "layout.html" %}'
            "{% block t %}{{ super() }} {{ x }}{% endblock %}",
            "layout.html": "{% block t %}T{% endblock %}{{ self.t() }}",
        }
    )
    assert reads is not None
    assert reads.printed == (("x",),)


def test_the_preheader_may_only_be_printed() -> None:
    assert reads_of({"main.html": "{{ preheader }}"}) is not None
    assert reads_of({"main.html": "{% if preheader %}x{% endif %}"}) is None


def test_a_missing_file_is_not_covered() -> None:
    assert reads_of({"main.html": '{% include "gone.html" %}'}) is None
