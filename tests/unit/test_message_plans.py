"""Message plans: one rendering finished and tracked once, per-message values filled in.

A planned message must be exactly the message rendered and tracked directly with its
own links, and renderings a plan cannot describe must fall back.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hogsend.channels.message_plans import FILES_CHECKED_EVERY, Composed, MessagePlans
from hogsend.channels.templates import JinjaOutput, TemplateRegistry
from hogsend.core.contact import Contact
from hogsend.core.tracking import (
    LinkSet,
    SignedClick,
    click_url,
    open_url,
    track_html,
    verify_click,
)

BASE = "https://mail.example.test"
SECRET = b"k" * 32
PREFIXES = {
    "unsubscribe_url": f"{BASE}/v1/email/one-click?token=",
    "preferences_url": f"{BASE}/v1/email/preferences?token=",
}
UNTRACKED = (f"{BASE}/v1/email/", f"{BASE}/t/")
ADA = Contact(id=uuid.uuid4(), key="u1", email="ada@example.com", properties={"first_name": "Ada"})

LAYOUT = """<!doctype html>
<html><head><style>a { color: #0969da; } @media (max-width: 600px) { p { margin: 0; } }</style>
</head><body><div class="card">{% block body %}{% endblock %}</div>
<p><a href="{{ unsubscribe_url }}">Unsubscribe</a> · <a href="{{ preferences_url }}">Prefs</a></p>
</body></html>
"""

OFFER = """{#---
subject: An offer for {{ contact.properties.first_name }}
preheader: Only {{ days }} days left
---#}
{% extends "_layout.html" %}
{% block body %}<p>Hi {{ contact.properties.first_name }},</p>
<p><a href="https://example.com/plans?x=1&amp;y=2">Choose a plan</a>
<a href="https://example.com/plans?x=1&amp;y=2">again</a>
<a href="https://example.com/help" data-hogsend-track="off">Help</a></p>{% endblock %}
"""


@pytest.fixture
def registry(tmp_path: Path) -> TemplateRegistry:
    (tmp_path / "_layout.html").write_text(LAYOUT)
    (tmp_path / "offer.html").write_text(OFFER)
    (tmp_path / "shouty.html").write_text(
        '{#---\nsubject: Hi\n---#}\n<p><a href="{{ unsubscribe_url | upper }}">Off</a></p>\n'
    )
    (tmp_path / "carried.html").write_text(
        "{#---\nsubject: Hi\n---#}\n"
        '<p><a href="https://example.com/bye?next={{ unsubscribe_url }}">Off</a></p>\n'
    )
    (tmp_path / "titled.html").write_text(
        "{#---\nsubject: Leave at {{ unsubscribe_url }}\n---#}\n<p>Hi</p>\n"
    )
    return TemplateRegistry(tmp_path)


def plans(
    registry: TemplateRegistry, size: int = 16, clock: Callable[[], float] = time.monotonic
) -> MessagePlans:
    return MessagePlans(
        registry,
        public_url=BASE,
        secret=SECRET,
        link_prefixes=PREFIXES,
        untracked=UNTRACKED,
        size=size,
        clock=clock,
    )


def direct(
    registry: TemplateRegistry,
    key: str,
    tokens: dict[str, str],
    send_id: uuid.UUID,
    links: LinkSet | None,
) -> tuple[str, str, str]:
    """The message rendered with its real links and tracked for the same send."""
    rendered = registry.render(
        key,
        contact=ADA,
        props={"days": 3},
        extra={name: PREFIXES[name] + token for name, token in tokens.items()},
    )
    tracked = track_html(
        rendered.html,
        click_url_of=lambda links, number: click_url(BASE, send_id, links, number, SECRET),
        pixel_url=open_url(BASE, send_id, SECRET),
        skip=lambda url: url.startswith(UNTRACKED),
    )
    assert tracked.links == links
    return rendered.subject, tracked.html, rendered.text


def test_a_planned_message_is_the_directly_rendered_one(registry: TemplateRegistry) -> None:
    planner = plans(registry)
    for n in range(3):  # the first builds the plan, the others use it
        tokens = {"unsubscribe_url": f"unsub.tok{n}", "preferences_url": f"pref.tok-{n}"}
        send_id = uuid.uuid4()
        composed = planner.compose(
            "offer",
            contact=ADA,
            props={"days": 3},
            subject=None,
            link_tokens=tokens,
            send_id=send_id,
            opens=True,
            clicks=True,
        )
        assert composed is not None
        assert composed.links is not None
        assert composed.links.urls == ("https://example.com/plans?x=1&y=2",)
        subject, html, text = direct(registry, "offer", tokens, send_id, composed.links)
        assert composed.rendered.subject == subject == "An offer for Ada"
        assert composed.rendered.html == html
        assert composed.rendered.text == text
        assert f"one-click?token=unsub.tok{n}" in html
        assert f"token=pref.tok-{n}" in text
        assert 'style="color: #0969da;"' in html  # CSS inlined
        assert "Only 3 days left" in html  # preheader
        click = html.split(f"{BASE}/t/c/")[1][:67]
        assert verify_click(click, SECRET) == SignedClick(
            send_id=send_id, link_set_id=composed.links.id, number=0
        )
        assert open_url(BASE, send_id, SECRET) in html


def test_messages_share_a_link_set_and_own_their_tokens(registry: TemplateRegistry) -> None:
    planner = plans(registry)
    tokens: set[str] = set()
    sets: set[LinkSet | None] = set()
    for _ in range(5):
        composed = planner.compose(
            "offer",
            contact=ADA,
            props={"days": 3},
            subject=None,
            link_tokens={"unsubscribe_url": "a", "preferences_url": "b"},
            send_id=uuid.uuid4(),
            opens=False,
            clicks=True,
        )
        assert composed is not None
        assert "/t/o/" not in composed.rendered.html  # no pixel asked for
        sets.add(composed.links)
        tokens.update(re.findall(f'{BASE}/t/c/([^"]+)', composed.rendered.html))
    # One set for all five (stored once), a click token of their own for each.
    assert len(sets) == 1
    assert len(tokens) == 5


def test_untracked_and_transactional_messages(registry: TemplateRegistry) -> None:
    planner = plans(registry)
    composed = planner.compose(
        "offer",
        contact=ADA,
        props={"days": 3},
        subject="A literal subject",
        link_tokens={"unsubscribe_url": "u1", "preferences_url": "p1"},
        send_id=uuid.uuid4(),
        opens=False,
        clicks=False,
    )
    assert composed is not None
    assert composed.links is None
    assert composed.rendered.subject == "A literal subject"
    assert 'href="https://example.com/plans?x=1&amp;y=2"' in composed.rendered.html
    assert "token=u1" in composed.rendered.html
    # A transactional message has no link variables: a template needing them fails as usual.
    from hogsend.errors import TemplateError

    with pytest.raises(TemplateError):
        planner.compose(
            "offer",
            contact=ADA,
            props={"days": 3},
            subject=None,
            link_tokens=None,
            send_id=uuid.uuid4(),
            opens=True,
            clicks=True,
        )


@pytest.mark.parametrize("key", ["shouty", "carried"])
def test_renderings_a_plan_cannot_describe_fall_back(registry: TemplateRegistry, key: str) -> None:
    # A link transformed by a filter, or carried inside a tracked URL: no plan.
    planner = plans(registry)
    for _ in range(2):
        assert (
            planner.compose(
                key,
                contact=ADA,
                props={},
                subject=None,
                link_tokens={"unsubscribe_url": "u", "preferences_url": "p"},
                send_id=uuid.uuid4(),
                opens=True,
                clicks=True,
            )
            is None
        )


def test_a_link_in_the_subject_is_filled_too(registry: TemplateRegistry) -> None:
    composed = plans(registry).compose(
        "titled",
        contact=ADA,
        props={},
        subject=None,
        link_tokens={"unsubscribe_url": "tok9", "preferences_url": "p"},
        send_id=uuid.uuid4(),
        opens=False,
        clicks=False,
    )
    assert composed is not None
    assert composed.rendered.subject == f"Leave at {PREFIXES['unsubscribe_url']}tok9"


def test_plans_are_kept_per_rendering_and_bounded(registry: TemplateRegistry) -> None:
    planner = plans(registry, size=2)
    # An int prop gets no value slot: each number renders (and plans) apart.
    for days in [1, 2, 3, 1]:
        composed = planner.compose(
            "offer",
            contact=ADA,
            props={"days": days},
            subject=None,
            link_tokens={"unsubscribe_url": "u", "preferences_url": "p"},
            send_id=uuid.uuid4(),
            opens=True,
            clicks=True,
        )
        assert composed is not None
        assert f"Only {days} days left" in composed.rendered.html
    assert len(planner._plans) == 2


def person(name: str, n: int) -> Contact:
    return Contact(
        id=uuid.uuid4(),
        key=f"user-{n}",
        email=f"user{n}@example.com",
        properties={"first_name": name, "team": "Blue"},
    )


def compose_for(planner: MessagePlans, key: str, contact: Contact) -> Composed | None:
    """``key`` composed for ``contact`` with the value-slot tests' props, links and tracking."""
    return planner.compose(
        key,
        contact=contact,
        props={"team": "Blue"},
        subject=None,
        link_tokens={name: "tok" for name in PREFIXES},
        send_id=uuid.uuid4(),
        opens=True,
        clicks=True,
    )


def direct_for(
    registry: TemplateRegistry,
    key: str,
    contact: Contact,
    props: dict[str, object],
    send_id: uuid.UUID,
    links: LinkSet | None,
) -> tuple[str, str, str]:
    """``direct`` for any contact: rendered with real values, tracked with the same ids."""
    rendered = registry.render(
        key,
        contact=contact,
        props=props,
        extra={name: PREFIXES[name] + "tok" for name in PREFIXES},
    )
    tracked = track_html(
        rendered.html,
        click_url_of=lambda links, number: click_url(BASE, send_id, links, number, SECRET),
        pixel_url=open_url(BASE, send_id, SECRET),
        skip=lambda url: url.startswith(UNTRACKED),
    )
    assert tracked.links == links
    return rendered.subject, tracked.html, rendered.text


# Templates using a per-contact value every way a template can: each message must be
# the directly rendered one, whether it went through a value-slotted plan or not.
VALUE_USES = {
    "greet": "<p>Hi {{ contact.properties.first_name }}, team {{ team }}.</p>",
    "branch": '<p>{% if contact.properties.first_name == "Ada" %}VIP{% else %}Hi{% endif %}'
    " {{ contact.properties.first_name }}</p>",
    "measure": "<p>{{ contact.properties.first_name | length }} letters</p>",
    "shout": "<p>{{ contact.properties.first_name | upper }}</p>",
    "attribute": '<p><img alt="{{ contact.properties.first_name }}" src="https://x.test/a.png">'
    '<span class="{{ team }}">x</span></p>',
    "linked": '<p><a href="https://x.test/{{ contact.properties.first_name }}">'
    "{{ contact.properties.first_name }}</a></p>",
    "link-text": '<p><a href="https://x.test/">{{ contact.properties.first_name }}</a></p>',
    "styled": "<style>.{{ team }} { color: red; }</style><p class=Blue>{{ team }}</p>",
    "commented": "<!-- {{ contact.properties.first_name }} --><p>Hi</p>",
    "emailed": "<p>Write to {{ contact.email }} as {{ contact.key }}</p>",
}


@pytest.fixture
def uses(tmp_path: Path) -> TemplateRegistry:
    (tmp_path / "_layout.html").write_text(LAYOUT)
    for key, body in VALUE_USES.items():
        (tmp_path / f"{key}.html").write_text(
            "{#---\nsubject: For {{ contact.properties.first_name }}\n"
            "preheader: Dear {{ contact.properties.first_name }}\n---#}\n"
            '{% extends "_layout.html" %}{% block body %}' + body + "{% endblock %}\n"
        )
    return TemplateRegistry(tmp_path)


@pytest.mark.parametrize("key", sorted(VALUE_USES))
def test_per_contact_values_give_the_direct_message(uses: TemplateRegistry, key: str) -> None:
    planner = plans(uses)
    names = ["Ada", "Bob", "Ada", "Cy-2", "Dee Dee", "O'Neil", "Zoë", "Ada"]
    for n, name in enumerate(names):
        contact = person(name, n)
        send_id = uuid.uuid4()
        composed = planner.compose(
            key,
            contact=contact,
            props={"team": "Blue"},
            subject=None,
            link_tokens={name: "tok" for name in PREFIXES},
            send_id=send_id,
            opens=True,
            clicks=True,
        )
        if composed is None:
            continue  # no plan: the mailer renders it directly
        subject, html, text = direct_for(
            uses, key, contact, {"team": "Blue"}, send_id, composed.links
        )
        assert composed.rendered.subject == subject
        assert composed.rendered.html == html
        assert composed.rendered.text == text


def test_names_in_body_text_share_one_plan(uses: TemplateRegistry) -> None:
    planner = plans(uses)
    for n in range(20):
        composed = compose_for(planner, "greet", person(f"Ada{n}", n))
        assert composed is not None
        assert f"Hi Ada{n}, team Blue." in composed.rendered.html
        assert f"Hi Ada{n}, team Blue." in composed.rendered.text
        assert f"Dear Ada{n}" in composed.rendered.html  # the preheader
        assert composed.rendered.subject == f"For Ada{n}"
    assert len(planner._plans) == 1


@pytest.mark.parametrize("key", ["measure", "attribute", "styled", "link-text"])
def test_values_the_finishing_steps_read_get_no_shared_plan(
    uses: TemplateRegistry, key: str
) -> None:
    # A value measured, in an attribute, a style sheet or a link's text: the slotted
    # rendering is refused, so each contact's rendering plans on its own.
    planner = plans(uses)
    for n in range(3):
        compose_for(planner, key, person(f"Ada{n}", n))
    used = [plan_key for plan_key, plan in planner._plans.items() if plan is not None]
    assert len(used) == 3
    assert all(f"Ada{n}" in str(plan_key) for n, plan_key in enumerate(used))


def test_a_kept_slotted_rendering_spares_the_second_render(
    uses: TemplateRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    planner = plans(uses)
    renders: list[str] = []
    render_jinja = uses.render_jinja

    def counted(key: str, variables: Any, *, subject: str | None = None) -> JinjaOutput:
        renders.append(key)
        return render_jinja(key, variables, subject=subject)

    monkeypatch.setattr(uses, "render_jinja", counted)

    def compose(key: str, n: int, name: str) -> Composed | None:
        return compose_for(planner, key, person(name, n))

    compose("greet", 0, "Ada0")
    assert len(renders) == 2  # the real rendering, then the slotted one
    renders.clear()
    for n in range(1, 11):
        composed = compose("greet", n, f"Ada{n}")
        assert composed is not None
        assert f"Hi Ada{n}, team Blue." in composed.rendered.html
        assert composed.rendered.subject == f"For Ada{n}"
    # The template only prints the name: the kept slotted rendering, filled, is the
    # real one (hogsend.channels.template_reads), so no rendering at all.
    assert renders == []
    # A template that branches on the value reads it as a literal: each name is a
    # rendering of its own (one render: with no value to slot, slotted is real).
    assert compose("branch", 11, "Bob") is not None
    assert compose("branch", 12, "Cy") is not None
    assert len(renders) == 2
    renders.clear()
    vip = compose("branch", 13, "Ada")
    assert len(renders) == 1
    assert vip is not None
    assert "VIP Ada" in vip.rendered.html


# --------------------------------------------------------------------------- known renderings

READS = {
    "coupon": "{#---\nsubject: {{ days }} days for {{ contact.properties.first_name }}\n---#}\n"
    "<p>Hi {{ contact.properties.first_name }}, {{ days }} days left."
    "{% if coupon is defined %} Use {{ coupon }}.{% endif %}"
    " Write to {{ contact.email }}.</p>\n",
    "listed": "{#---\nsubject: Items\n---#}\n<ul>{% for item in items %}<li>{{ item }}</li>"
    "{% endfor %}</ul><p>{{ contact.properties.first_name }}</p>\n",
}


@pytest.fixture
def reads(tmp_path: Path) -> TemplateRegistry:
    for key, body in READS.items():
        (tmp_path / f"{key}.html").write_text(body)
    return TemplateRegistry(tmp_path)


def compose_props(
    planner: MessagePlans, key: str, contact: Contact, props: dict[str, Any]
) -> tuple[Composed, uuid.UUID]:
    send_id = uuid.uuid4()
    composed = planner.compose(
        key,
        contact=contact,
        props=props,
        subject=None,
        link_tokens=None,
        send_id=send_id,
        opens=True,
        clicks=True,
    )
    assert composed is not None
    return composed, send_id


def test_known_renderings_follow_every_value_the_template_reads(
    reads: TemplateRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    planner = plans(reads)
    renders: list[str] = []
    render_jinja = reads.render_jinja

    def counted(key: str, variables: Any, *, subject: str | None = None) -> JinjaOutput:
        renders.append(key)
        return render_jinja(key, variables, subject=subject)

    monkeypatch.setattr(reads, "render_jinja", counted)
    # A value printed whole (the name, the email) never splits a rendering; one read
    # otherwise (days in the subject is printed, coupon's presence is tested) does.
    cases: list[dict[str, Any]] = [
        {"days": 3},
        {"days": 3},
        {"days": 3, "coupon": "SAVE10"},
        {"days": 3, "coupon": "SAVE10"},
        {"days": 4, "coupon": "SAVE10"},
        {"days": 3, "coupon": "OTHER"},
        {"days": 3},
        {"days": "3"},  # equal text, another type: a rendering of its own
    ]
    for n, props in enumerate(cases):
        contact = person(f"Ada{n}", n)
        before = len(renders)
        composed, send_id = compose_props(planner, "coupon", contact, props)
        renders_now = len(renders) - before
        # Seen before: no rendering; new: rendered with slots and for real, compared.
        assert renders_now == (0 if n in (1, 3, 6) else 2), (n, props)
        subject, html, text = direct_for(reads, "coupon", contact, props, send_id, composed.links)
        assert composed.rendered.subject == subject
        assert composed.rendered.html == html
        assert composed.rendered.text == text
        if "coupon" in props:
            assert f"Use {props['coupon']}." in composed.rendered.html
        else:
            assert "Use " not in composed.rendered.html
        assert f"Write to user{n}@example.com." in composed.rendered.html


def test_a_value_that_cannot_be_compared_renders_the_usual_way(reads: TemplateRegistry) -> None:
    planner = plans(reads)
    for n, items in enumerate([["a", "b"], ["c"], ["a", "b"]]):
        contact = person(f"Ada{n}", n)
        composed, send_id = compose_props(planner, "listed", contact, {"items": items})
        subject, html, _ = direct_for(
            reads, "listed", contact, {"items": items}, send_id, composed.links
        )
        assert (composed.rendered.subject, composed.rendered.html) == (subject, html)
        assert "".join(f"<li>{item}</li>" for item in items) in composed.rendered.html


class Clock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def edit(path: Path, text: str) -> None:
    """Rewrite ``path`` with a visibly newer modification time."""
    path.write_text(text)
    stat = path.stat()
    os.utime(path, (stat.st_atime + 10, stat.st_mtime + 10))


def test_an_edited_template_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "edited.html"
    path.write_text("{#---\nsubject: Hi\n---#}\n<p>Hello {{ contact.properties.first_name }}</p>\n")
    registry = TemplateRegistry(tmp_path)
    clock = Clock()
    planner = plans(registry, clock=clock)
    for n in range(2):
        composed, _ = compose_props(planner, "edited", person(f"Ada{n}", n), {})
        assert f"Hello Ada{n}" in composed.rendered.html
    edit(path, "{#---\nsubject: Hi\n---#}\n<p>Goodbye {{ contact.properties.first_name }}</p>\n")
    clock.now += FILES_CHECKED_EVERY
    composed, _ = compose_props(planner, "edited", person("Bob", 9), {})
    assert "Goodbye Bob" in composed.rendered.html
    assert "Hello" not in composed.rendered.html


def test_template_files_are_not_looked_at_for_every_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "hello.html").write_text(
        "{#---\nsubject: Hi\n---#}\n<p>Hello {{ contact.properties.first_name }}</p>\n"
    )
    clock = Clock()
    planner = plans(TemplateRegistry(tmp_path), clock=clock)
    compose_props(planner, "hello", person("Ada", 0), {})  # analysed and rendered
    looks: list[str] = []
    getmtime = os.path.getmtime

    def counted(path: Any) -> float:
        looks.append(str(path))
        return getmtime(path)

    monkeypatch.setattr(os.path, "getmtime", counted)
    for n in range(1, 20):
        composed, _ = compose_props(planner, "hello", person(f"Ada{n}", n), {})
        assert f"Hello Ada{n}" in composed.rendered.html
    assert looks == []  # known renderings within the second: no stat at all
    clock.now += FILES_CHECKED_EVERY
    compose_props(planner, "hello", person("Bob", 99), {})
    assert len(looks) == 1  # one look per file once the second is over


def test_a_file_edited_within_the_second_never_mixes_versions(tmp_path: Path) -> None:
    # Files are looked at once a second, but a new known rendering is kept only when they
    # are unchanged after rendering: the old version's analysis (which never saw
    # props.gold) must not file the new version's rendering under its key.
    path = tmp_path / "offer.html"
    path.write_text(
        "{#---\nsubject: Hi\n---#}\n"
        "<p>{% if props.vip %}VIP {% endif %}Hello {{ contact.properties.first_name }}</p>\n"
    )
    registry = TemplateRegistry(tmp_path)
    clock = Clock()
    planner = plans(registry, clock=clock)
    composed, _ = compose_props(planner, "offer", person("Ada", 0), {"vip": False})
    assert "<p>Hello Ada</p>" in composed.rendered.html
    edit(
        path,
        "{#---\nsubject: Hi\n---#}\n<p>{% if props.vip %}VIP {% endif %}"
        "{% if props.gold %}GOLD {% endif %}Hello {{ contact.properties.first_name }}</p>\n",
    )
    cases = [
        ({"vip": True, "gold": True}, "<p>VIP GOLD Hello Bea</p>"),
        ({"vip": True, "gold": False}, "<p>VIP Hello Bea</p>"),
        ({"vip": True, "gold": True}, "<p>VIP GOLD Hello Bea</p>"),
        ({"vip": False, "gold": False}, "<p>Hello Bea</p>"),
    ]
    for n, (props, expected) in enumerate(cases, start=1):
        composed, _ = compose_props(planner, "offer", person("Bea", n), props)
        assert expected in composed.rendered.html, props
