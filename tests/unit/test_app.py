"""The Hogsend app object: registration, validation and loading by dotted path."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from hogsend import (
    BucketDefinition,
    Contact,
    Hogsend,
    JourneyContext,
    define_bucket,
    define_journey,
    define_list,
    load_app,
)
from hogsend.errors import AppLoadError, DefinitionError, RegistrationClosedError


@define_journey(id="welcome", name="Welcome", trigger="signed_up")
async def welcome(contact: Contact, ctx: JourneyContext) -> None:
    await ctx.send_email(template="welcome")


@define_journey(id="nudge", name="Nudge", trigger="bucket:entered:ghosts")
async def nudge(contact: Contact, ctx: JourneyContext) -> None:
    await ctx.send_email(template="missing-template")


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    (tmp_path / "welcome.html").write_text("<p>hi</p>")
    return tmp_path


def test_registration_is_closed_after_launch(templates: Path) -> None:
    app = Hogsend(journeys=[welcome], templates=templates)
    assert not app.launched
    app.launch()
    assert app.launched
    with pytest.raises(RegistrationClosedError, match="launched"):
        app.add_list(define_list(id="news", name="News"))
    with pytest.raises(RegistrationClosedError):
        app.add_journey(nudge)
    assert app.journeys == (welcome,)


def test_duplicate_ids_are_rejected() -> None:
    with pytest.raises(DefinitionError, match="duplicate list id 'news'"):
        Hogsend(lists=[define_list(id="news", name="A"), define_list(id="news", name="B")])
    app = Hogsend(buckets=[define_bucket(id="vips", name="VIPs")])
    with pytest.raises(DefinitionError, match="duplicate bucket id 'vips'"):
        app.add_bucket(define_bucket(id="vips", name="Again"))


def test_same_id_in_different_kinds_is_fine() -> None:
    app = Hogsend(
        lists=[define_list(id="news", name="N")], buckets=[define_bucket(id="news", name="N")]
    )
    assert app.check() == []


def test_wrong_kind_is_rejected() -> None:
    with pytest.raises(DefinitionError, match="define_list"):
        Hogsend(lists=[define_bucket(id="vips", name="VIPs")])  # type: ignore[list-item]


@pytest.mark.parametrize("bad", ["Welcome", "welcome_series", "welcome--series", "-x", "x-", ""])
def test_ids_must_be_kebab_case(bad: str) -> None:
    with pytest.raises(DefinitionError, match="kebab-case"):
        define_list(id=bad, name="x")
    with pytest.raises(DefinitionError, match="kebab-case"):
        define_bucket(id=bad, name="x")
    with pytest.raises(DefinitionError, match="kebab-case"):
        define_journey(id=bad, name="x", trigger="e")


def test_journey_body_must_be_async() -> None:
    with pytest.raises(DefinitionError, match="async"):
        define_journey(id="sync-body", name="x", trigger="e")(lambda c, ctx: None)  # type: ignore[arg-type,return-value]


def test_check_passes_a_consistent_app(templates: Path) -> None:
    assert Hogsend(journeys=[welcome], templates=templates).check() == []


def test_check_reports_unknown_templates_and_buckets(templates: Path) -> None:
    problems = [str(p) for p in Hogsend(journeys=[welcome, nudge], templates=templates).check()]
    assert any("journey nudge" in p and "'missing-template'" in p for p in problems)
    assert any("journey nudge" in p and "bucket:entered:ghosts" in p for p in problems)
    assert not any("journey welcome" in p for p in problems)


def test_check_reports_a_missing_template_directory(tmp_path: Path) -> None:
    problems = Hogsend(templates=tmp_path / "nowhere").check()
    assert [p.where for p in problems] == ["templates"]


def test_criteria_that_are_not_conditions_are_rejected() -> None:
    # A dict is read as the JSON form of a condition; this one has no "type".
    with pytest.raises(DefinitionError, match=r"bucket 'odd': criteria at type: .*needs a 'type'"):
        define_bucket(id="odd", name="Odd", criteria={"plan": "pro"})
    hand_made = BucketDefinition(id="odd", name="Odd", criteria="plan = pro")  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="bucket 'odd': criteria: expected a condition"):
        Hogsend(buckets=[hand_made])


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    package = tmp_path / "userproj"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "good.py").write_text(
        textwrap.dedent(
            """
            from hogsend import Hogsend, define_list
            app = Hogsend(lists=[define_list(id="news", name="News")])
            not_an_app = 42
            """
        )
    )
    (package / "broken.py").write_text("import does_not_exist_anywhere\n")
    (package / "dupes.py").write_text(
        textwrap.dedent(
            """
            from hogsend import Hogsend, define_list
            app = Hogsend(lists=[define_list(id="a", name="A"), define_list(id="a", name="B")])
            """
        )
    )
    yield tmp_path
    for name in [m for m in sys.modules if m == "userproj" or m.startswith("userproj.")]:
        del sys.modules[name]
    while str(tmp_path) in sys.path:
        sys.path.remove(str(tmp_path))


def test_load_app_finds_the_object(project: Path) -> None:
    app = load_app("userproj.good:app", search=[project])
    assert [x.id for x in app.lists] == ["news"]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("userproj.good", "must look like 'package.module:attribute'"),
        (":app", "must look like"),
        ("userproj.nothing:app", "cannot import module 'userproj.nothing'"),
        ("userproj.good:missing", "has no attribute 'missing'"),
        ("userproj.good:not_an_app", "is a int, not a Hogsend app"),
        ("userproj.broken:app", "importing 'userproj.broken' failed"),
        ("userproj.dupes:app", "duplicate list id 'a'"),
    ],
)
def test_load_app_errors_say_what_to_fix(project: Path, path: str, expected: str) -> None:
    with pytest.raises(AppLoadError, match=expected.replace("(", r"\(").replace(".", r"\.")):
        load_app(path, search=[project])


def test_bearer_token_reads_the_header_like_fastapis_scheme() -> None:
    from hogsend.api.auth import bearer_token

    assert bearer_token("Bearer hsk_abc") == "hsk_abc"
    assert bearer_token("bearer   hsk_abc ") == "hsk_abc"
    assert bearer_token("Basic dXNlcjo=") is None
    assert bearer_token("Bearer") is None
    assert bearer_token("Bearer   ") is None
    assert bearer_token("") is None
    assert bearer_token(None) is None
