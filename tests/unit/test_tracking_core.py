"""Tracking tokens and the HTML rewrite (pure code)."""

from __future__ import annotations

import base64
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hogsend.core import tracking
from hogsend.core.tokens import InvalidToken
from hogsend.core.tracking import (
    TRACK_ATTRIBUTE,
    SignedClick,
    sign_click,
    sign_id,
    track_html,
    verify_click,
    verify_id,
)

SECRET = b"k" * 32
BASE = "https://hs.example.test"


def rewrite(source: str, *, pixel: str | None = None, **kwargs: object) -> tracking.TrackedHtml:
    return track_html(
        source,
        click_url_of=lambda links, number: f"{BASE}/t/c/{number + 1}",
        pixel_url=pixel,
        **kwargs,  # type: ignore[arg-type]
    )


def urls(result: tracking.TrackedHtml) -> list[str]:
    return [] if result.links is None else list(result.links.urls)


# --------------------------------------------------------------------------- tokens


@given(st.uuids())
def test_token_round_trip(ident: uuid.UUID) -> None:
    for kind in ("open", "click"):
        token = sign_id(kind, ident, SECRET)  # type: ignore[arg-type]
        assert len(token) == tracking.TOKEN_LENGTH
        assert verify_id(kind, token, SECRET) == ident  # type: ignore[arg-type]
        assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_open_and_click_tokens_do_not_stand_in_for_each_other() -> None:
    ident = uuid.uuid4()
    with pytest.raises(InvalidToken, match="signature"):
        verify_id("click", sign_id("open", ident, SECRET), SECRET)
    with pytest.raises(InvalidToken, match="signature"):
        verify_id("open", sign_id("click", ident, SECRET), SECRET)


def test_another_key_is_refused() -> None:
    token = sign_id("click", uuid.uuid4(), SECRET)
    with pytest.raises(InvalidToken, match="signature"):
        verify_id("click", token, b"x" * 32)


@given(st.uuids(), st.integers(min_value=0, max_value=tracking.TOKEN_LENGTH - 1), st.data())
def test_changing_any_character_is_refused(ident: uuid.UUID, at: int, data: st.DataObject) -> None:
    token = sign_id("click", ident, SECRET)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    other = data.draw(st.sampled_from([c for c in alphabet if c != token[at]]))
    with pytest.raises(InvalidToken):
        verify_id("click", token[:at] + other + token[at + 1 :], SECRET)


def test_an_id_swapped_under_a_genuine_signature_is_refused() -> None:
    genuine = base64.urlsafe_b64decode(sign_id("click", uuid.uuid4(), SECRET) + "=")
    forged = uuid.uuid4().bytes + genuine[16:]
    token = base64.urlsafe_b64encode(forged).decode().rstrip("=")
    with pytest.raises(InvalidToken, match="signature"):
        verify_id("click", token, SECRET)


@pytest.mark.parametrize(
    "token",
    ["", "short", "x" * 42, "x" * 44, "!" * 43, "a.b", "=" * 43, str(uuid.UUID(int=7)) + "abcdefg"],
)
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(InvalidToken):
        verify_id("open", token, SECRET)


def test_urls() -> None:
    ident = uuid.uuid4()
    links = tracking.link_set(("https://example.com/a", "https://example.com/b"))
    opened, clicked = sign_id("open", ident, SECRET), sign_click(ident, links.id, 1, SECRET)
    assert tracking.open_url(BASE, ident, SECRET) == f"{BASE}/t/o/{opened}"
    assert tracking.click_url(BASE, ident, links, 1, SECRET) == f"{BASE}/t/c/{clicked}"


# --------------------------------------------------------------------------- click tokens


@given(st.uuids(), st.uuids(), st.integers(min_value=0, max_value=tracking.MAX_LINKS - 1))
def test_click_token_round_trip(send_id: uuid.UUID, set_id: uuid.UUID, number: int) -> None:
    token = sign_click(send_id, set_id, number, SECRET)
    assert len(token) == tracking.CLICK_TOKEN_LENGTH
    assert verify_click(token, SECRET) == SignedClick(
        send_id=send_id, link_set_id=set_id, number=number
    )
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@given(
    st.uuids(),
    st.integers(min_value=0, max_value=tracking.CLICK_TOKEN_LENGTH - 1),
    st.data(),
)
def test_changing_any_character_of_a_click_token_is_refused(
    send_id: uuid.UUID, at: int, data: st.DataObject
) -> None:
    token = sign_click(send_id, uuid.uuid4(), 3, SECRET)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    other = data.draw(st.sampled_from([c for c in alphabet if c != token[at]]))
    with pytest.raises(InvalidToken):
        verify_click(token[:at] + other + token[at + 1 :], SECRET)


def test_a_send_set_or_number_swapped_under_a_genuine_signature_is_refused() -> None:
    send_id, set_id = uuid.uuid4(), uuid.uuid4()
    genuine = base64.urlsafe_b64decode(sign_click(send_id, set_id, 1, SECRET) + "=")
    for payload in (
        uuid.uuid4().bytes + set_id.bytes + (1).to_bytes(2, "big"),  # another send
        send_id.bytes + uuid.uuid4().bytes + (1).to_bytes(2, "big"),  # another set
        send_id.bytes + set_id.bytes + (2).to_bytes(2, "big"),  # another link
    ):
        token = base64.urlsafe_b64encode(payload + genuine[34:]).decode().rstrip("=")
        with pytest.raises(InvalidToken, match="signature"):
            verify_click(token, SECRET)
    with pytest.raises(InvalidToken, match="signature"):
        verify_click(sign_click(send_id, set_id, 1, b"x" * 32), SECRET)


def test_a_click_token_from_before_link_sets_names_its_row() -> None:
    row = uuid.uuid4()
    assert verify_click(sign_id("click", row, SECRET), SECRET) == row
    # ... and an open token of the same length is still no click token
    with pytest.raises(InvalidToken, match="signature"):
        verify_click(sign_id("open", row, SECRET), SECRET)


@pytest.mark.parametrize("token", ["", "x" * 66, "x" * 68, "!" * 67, "=" * 67])
def test_malformed_click_tokens_are_refused(token: str) -> None:
    with pytest.raises(InvalidToken):
        verify_click(token, SECRET)


def test_a_link_set_is_named_by_its_urls_in_order() -> None:
    a, b = "https://example.com/a", "https://example.com/b"
    assert tracking.link_set((a, b)) == tracking.link_set((a, b))
    assert tracking.link_set((a, b)).id != tracking.link_set((b, a)).id
    # length-prefixed: no two lists concatenate to the same input
    assert tracking.link_set(("ab", "c")).id != tracking.link_set(("a", "bc")).id
    send_id = uuid.uuid4()
    assert tracking.link_id(send_id, 0) == tracking.link_id(send_id, 0)
    assert len({tracking.link_id(send_id, n) for n in range(100)}) == 100
    assert tracking.link_id(send_id, 0) != tracking.link_id(uuid.uuid4(), 0)


# --------------------------------------------------------------------------- rewrite


def test_http_links_are_rewritten_one_id_per_distinct_url() -> None:
    source = (
        '<p><a href="https://example.com/a">A</a> <a href="http://example.com/b">B</a>'
        ' <a class="x" href="https://example.com/a" title="again">A again</a></p>'
    )
    result = rewrite(source)
    assert urls(result) == ["https://example.com/a", "http://example.com/b"]
    assert result.links == tracking.link_set(("https://example.com/a", "http://example.com/b"))
    assert result.html == (
        f'<p><a href="{BASE}/t/c/1">A</a> <a href="{BASE}/t/c/2">B</a>'
        f' <a class="x" href="{BASE}/t/c/1" title="again">A again</a></p>'
    )


def test_any_quoting_case_and_entities() -> None:
    source = (
        "<A HREF='https://example.com/q?a=1&amp;b=2'>q</A>"
        "<a href=https://example.com/bare>bare</a>"
        '<a href="  https://example.com/spaced  ">spaced</a>'
        '<area shape="rect" href="https://example.com/area" />'
    )
    result = rewrite(source)
    assert urls(result) == [
        "https://example.com/q?a=1&b=2",  # what a browser would follow
        "https://example.com/bare",
        "https://example.com/spaced",
        "https://example.com/area",
    ]
    assert "example.com" not in result.html
    assert result.html.startswith(f'<A href="{BASE}/t/c/1">q</A>')
    assert result.html.endswith(f'<area shape="rect" href="{BASE}/t/c/4" />')


def test_what_is_left_alone() -> None:
    source = (
        '<a href="mailto:ann@example.com">mail</a><a href="tel:+331">call</a>'
        '<a href="#top">top</a><a href="/relative">rel</a><a name="anchor">no href</a>'
        '<a href="https://">empty</a><link href="https://example.com/style.css">'
        '<img src="https://example.com/i.png">'
        '<!--[if mso]><a href="https://example.com/mso">mso</a><![endif]-->'
        '<a href="https://hs.example.test/v1/email/one-click?token=x">unsubscribe</a>'
    )
    result = rewrite(source, skip=lambda url: url.startswith(f"{BASE}/v1/email/"))
    assert result.links is None
    assert result.html == source


def test_tags_in_raw_text_are_not_links_and_quoted_brackets_do_not_end_a_tag() -> None:
    source = (
        "<script>var s = '<a href=\"https://example.com/js\">';</script>"
        '<style>a[href="https://example.com/css"] { color: red }</style>'
        '<a title="a > b" href="https://example.com/gt">gt</a>'
        '<a\n  href="https://example.com/nl"\n>nl</a><a/href="https://example.com/odd">odd</a>'
        "<abbr href='https://example.com/abbr'>not a link tag</abbr>"
        "<!-- unterminated <a href='https://example.com/comment'>"
    )
    result = rewrite(source)
    assert urls(result) == [
        "https://example.com/gt",
        "https://example.com/nl",
        "https://example.com/odd",
    ]
    assert result.html == source.replace(
        '<a title="a > b" href="https://example.com/gt">',
        f'<a title="a &gt; b" href="{BASE}/t/c/1">',
    ).replace('<a\n  href="https://example.com/nl"\n>', f'<a href="{BASE}/t/c/2">').replace(
        '<a/href="https://example.com/odd">', f'<a href="{BASE}/t/c/3">'
    )


def test_links_marked_off_stay_and_lose_the_marker() -> None:
    source = (
        f'<a href="https://example.com/reset?t=secret" {TRACK_ATTRIBUTE}="off">reset</a>'
        f'<a href="https://example.com/on" {TRACK_ATTRIBUTE}="on">on</a>'
    )
    result = rewrite(source)
    assert urls(result) == ["https://example.com/on"]
    assert result.html == (
        f'<a href="https://example.com/reset?t=secret">reset</a><a href="{BASE}/t/c/1">on</a>'
    )
    # without click tracking the marker is still removed
    untracked = track_html(source, click_url_of=None, pixel_url=None)
    assert TRACK_ATTRIBUTE not in untracked.html
    assert untracked.links is None


def test_other_attributes_keep_their_values() -> None:
    source = (
        '<a style="color: red; font-family: &quot;Helvetica&quot;" target=_blank download '
        'href="https://example.com/x">x</a>'
    )
    result = rewrite(source)
    assert result.html == (
        '<a style="color: red; font-family: &quot;Helvetica&quot;" target="_blank" download '
        f'href="{BASE}/t/c/1">x</a>'
    )


def test_multiline_source_positions() -> None:
    source = '<html>\n<body>\n  <p>\n    <a\n      href="https://example.com/x"\n    >x</a>\n'
    source += '  </p>\n<a href="https://example.com/y">y</a>\n</body>\n</html>\n'
    result = rewrite(source)
    assert urls(result) == ["https://example.com/x", "https://example.com/y"]
    assert "example.com" not in result.html
    assert result.html.count("/t/c/") == 2


def test_pixel_goes_before_the_last_body_end_or_at_the_end() -> None:
    with_body = rewrite("<html><body><p>hi</p></BODY></html>", pixel=f"{BASE}/t/o/tok")
    assert with_body.html.startswith("<html><body><p>hi</p><img ")
    assert with_body.html.endswith("</BODY></html>")
    assert f'src="{BASE}/t/o/tok"' in with_body.html
    assert 'width="1" height="1"' in with_body.html
    fragment = rewrite("<p>hi</p>", pixel=f"{BASE}/t/o/tok")
    assert fragment.html.startswith("<p>hi</p><img ")
    assert rewrite("<p>hi</p>").html == "<p>hi</p>"


def test_no_click_tracking_leaves_links() -> None:
    source = '<a href="https://example.com/a">a</a>'
    result = track_html(source, click_url_of=None, pixel_url=f"{BASE}/t/o/x")
    assert result.links is None
    assert result.html.startswith(source)


@given(st.text(max_size=300))
def test_arbitrary_input_never_breaks(source: str) -> None:
    result = rewrite(source, pixel=f"{BASE}/t/o/p")
    assert f"{BASE}/t/o/p" in result.html
    for url in urls(result):
        assert tracking.is_trackable(url)


def test_strip_open_pixel_removes_only_the_pixel() -> None:
    from hogsend.core.tracking import strip_open_pixel

    pixel_url = "https://mail.example.com/t/o/abc.def.gif"
    html = (
        '<p><img src="https://cdn.example.com/logo.png" alt="Logo"></p>'
        '<a href="https://mail.example.com/t/c/xyz">Go</a>'
        f'<img src="{pixel_url}" width="1" height="1" alt="" />'
        "<IMG SRC='https://x.example/t/o/q.gif'>"
    )
    stripped = strip_open_pixel(html)
    assert "/t/o/" not in stripped
    assert "logo.png" in stripped
    assert "/t/c/xyz" in stripped  # links stay
    assert strip_open_pixel(stripped) == stripped


def test_strip_open_pixel_undoes_the_pixel_tracking_adds() -> None:
    from hogsend.core.tracking import strip_open_pixel, track_html

    source = "<html><body><p>Hi</p></body></html>"
    tracked = track_html(source, click_url_of=None, pixel_url="https://h.example/t/o/tok.gif")
    assert "/t/o/" in tracked.html
    assert strip_open_pixel(tracked.html) == source
