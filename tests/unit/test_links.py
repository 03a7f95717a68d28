"""Tests for worker.extractors.links_html, cross-checked against an independent BeautifulSoup extractor."""

from __future__ import annotations

import pytest
from bs4 import BeautifulSoup

from shared.urls import resolve
from worker.extractors.links_html import decode_body, extract_links, parse_srcset

PAGE = "http://h/dir/page.html"

# --- an independent oracle: BeautifulSoup with Python's html.parser -------------------------

_ORACLE_URL_ATTRIBUTES = {
    "a": ["href"],
    "area": ["href"],
    "link": ["href"],
    "img": ["src", "srcset"],
    "source": ["src", "srcset"],
    "script": ["src"],
    "iframe": ["src"],
    "frame": ["src"],
}


def _oracle_srcset(value: str) -> list[str]:
    """Naive srcset split: good enough for URLs without commas or spaces."""
    return [part.split()[0] for part in value.split(",") if part.strip()]


def reference_links(html: str, page_url: str) -> set[str]:
    """Links of ``html`` as found by BeautifulSoup, resolved with shared.urls.resolve."""
    soup = BeautifulSoup(html, "html.parser")
    base = page_url
    base_tag = soup.find("base", href=True)
    if base_tag is not None:
        base = resolve(page_url, str(base_tag["href"])) or page_url
    found: set[str] = set()
    for tag in soup.find_all(list(_ORACLE_URL_ATTRIBUTES)):
        for name in _ORACLE_URL_ATTRIBUTES[tag.name]:
            value = tag.get(name)
            if value is None:
                continue
            values = _oracle_srcset(str(value)) if name == "srcset" else [str(value)]
            found.update(url for v in values if (url := resolve(base, v)) is not None)
    return found


# --- tricky documents: (name, html, expected links in document order) -----------------------

TRICKY_DOCUMENTS: list[tuple[str, str, list[str]]] = [
    (
        "comment",
        '<p><!-- <a href="commented.html">x</a> --><a href="real.html">r</a></p>',
        ["http://h/dir/real.html"],
    ),
    (
        "inline_script_text",
        (
            "<script>document.write('<a href=\"scripted.html\">x</a>');"
            ' var s = \'src="x.png"\';</script><a href="ok.html">ok</a>'
        ),
        ["http://h/dir/ok.html"],
    ),
    (
        "script_src_and_style_text",
        '<style>a { background: url("bg.png") }</style><script src="/js/app.js"></script>',
        ["http://h/js/app.js"],
    ),
    (
        "quoting_and_case",
        (
            "<A HREF=foo.html>u</A><a href='single.html'>s</a><a href=\"double.html\">d</a>"
            "<IMG SRC=Pic.PNG><a\nhref\n=\nspaced.html>w</a>"
        ),
        [
            "http://h/dir/foo.html",
            "http://h/dir/single.html",
            "http://h/dir/double.html",
            "http://h/dir/Pic.PNG",
            "http://h/dir/spaced.html",
        ],
    ),
    (
        "entities",
        (
            '<a href="a?x=1&amp;y=2">e</a><a href="caf&eacute;.html">c</a>'
            '<a href="&#47;abs&#x2F;path">n</a>'
        ),
        ["http://h/dir/a?x=1&y=2", "http://h/dir/caf%C3%A9.html", "http://h/abs/path"],
    ),
    (
        "base_href",
        (
            '<html><head><base href="/sub/"></head><body><a href="x.html">x</a>'
            '<a href="../up.html">u</a><a href="//cdn.example/lib.js">c</a></body></html>'
        ),
        ["http://h/sub/x.html", "http://h/up.html", "http://cdn.example/lib.js"],
    ),
    (
        "srcset",
        (
            '<img src="small.png" srcset="medium.png 2x, large.png 3x">'
            '<picture><source srcset="/a.webp 100w,/b.webp 200w" type="image/webp"></picture>'
            '<img srcset=" only.png ">'
        ),
        [
            "http://h/dir/small.png",
            "http://h/dir/medium.png",
            "http://h/dir/large.png",
            "http://h/a.webp",
            "http://h/b.webp",
            "http://h/dir/only.png",
        ],
    ),
    (
        "not_link_attributes",
        (
            '<img data-src="lazy.png"><a data-href="d.html">d</a><div href="div.html"></div>'
            '<svg><a xlink:href="svg.html"><text>t</text></a></svg><span src="s.png"></span>'
            '<a name="anchor">no href</a><img alt="no src">'
        ),
        [],
    ),
    (
        "unfetchable_schemes",
        (
            '<a href="mailto:a@b.c">m</a><a href="javascript:void(0)">j</a>'
            '<img src="data:image/png;base64,iVBORw0KGgo="><a href="tel:+1">t</a>'
            '<a href="ftp://h/f">f</a><a href="http://">empty</a><a href="ok.html">ok</a>'
        ),
        ["http://h/dir/ok.html"],
    ),
    (
        "fragments_and_duplicates",
        (
            '<a href="#top">t</a><a href="x.html#a">a</a><a href="x.html#b">b</a>'
            '<a href="X.html">X</a><a href="./x.html">dot</a><a href="http://H:80/dir/x.html">abs</a>'
        ),
        ["http://h/dir/page.html", "http://h/dir/x.html", "http://h/dir/X.html"],
    ),
    (
        "all_element_kinds",
        (
            '<link rel="stylesheet" href="s.css"><map><area href="area.html" shape="rect"></map>'
            '<iframe src="frame1.html"></iframe><video><source src="v.mp4"></video>'
            '<a href="https://Other.example/p?b=2&amp;a=1">o</a>'
        ),
        [
            "http://h/dir/s.css",
            "http://h/dir/area.html",
            "http://h/dir/frame1.html",
            "http://h/dir/v.mp4",
            "https://other.example/p?a=1&b=2",
        ],
    ),
    (
        "whitespace_in_values",
        '<a href="  spaced.html  ">s</a><a href="\ttab\nbed.html">t</a>',
        ["http://h/dir/spaced.html", "http://h/dir/tabbed.html"],
    ),
]

_DOCUMENT_IDS = [name for name, _, _ in TRICKY_DOCUMENTS]


@pytest.mark.parametrize(("name", "html", "expected"), TRICKY_DOCUMENTS, ids=_DOCUMENT_IDS)
def test_tricky_documents(name: str, html: str, expected: list[str]) -> None:
    assert extract_links(html, PAGE) == expected


@pytest.mark.parametrize(("name", "html", "expected"), TRICKY_DOCUMENTS, ids=_DOCUMENT_IDS)
def test_agrees_with_beautifulsoup(name: str, html: str, expected: list[str]) -> None:
    ours = extract_links(html, PAGE)
    assert set(ours) == reference_links(html, PAGE)
    assert len(ours) == len(set(ours))


def test_frameset_frames() -> None:
    html = '<html><frameset><frame src="left.html"><frame src="/right.html"></frameset></html>'
    assert extract_links(html, PAGE) == ["http://h/dir/left.html", "http://h/right.html"]
    assert set(extract_links(html, PAGE)) == reference_links(html, PAGE)


def test_the_original_relative_link_bug() -> None:
    html = b'<a href="deep1.html">deep</a>'
    assert extract_links(html, "http://h/dir/page1.html") == ["http://h/dir/deep1.html"]


def test_first_base_wins_and_applies_to_earlier_links() -> None:
    html = (
        '<a href="before.html">b</a><base target="_top"><base href="http://cdn.example/root/">'
        '<base href="/ignored/"><a href="after.html">a</a>'
    )
    assert extract_links(html, PAGE) == [
        "http://cdn.example/root/before.html",
        "http://cdn.example/root/after.html",
    ]


def test_relative_base_is_resolved_against_the_page() -> None:
    html = '<base href="../other/"><a href="x.html">x</a>'
    assert extract_links(html, PAGE) == ["http://h/other/x.html"]


def test_unusable_base_falls_back_to_page_url() -> None:
    html = '<base href="javascript:void(0)"><base href="/later/"><a href="x.html">x</a>'
    assert extract_links(html, PAGE) == ["http://h/dir/x.html"]


def test_legacy_entity_without_semicolon_in_attribute_is_not_decoded() -> None:
    # HTML spec: "&copy=" inside an attribute stays literal; "&copy;" is decoded.
    html = '<a href="q?a=1&copy=2">x</a>'
    assert extract_links(html, PAGE) == ["http://h/dir/q?a=1&copy=2"]


def test_first_occurrence_order_is_kept() -> None:
    html = '<a href="b.html"></a><a href="a.html"></a><a href="b.html"></a><img src="c.png">'
    assert extract_links(html, PAGE) == [
        "http://h/dir/b.html",
        "http://h/dir/a.html",
        "http://h/dir/c.png",
    ]


# --- bytes and encodings --------------------------------------------------------------------


def test_latin1_body_with_encoding() -> None:
    body = '<a href="café.html">c</a>'.encode("latin-1")
    assert extract_links(body, PAGE, encoding="latin-1") == ["http://h/dir/caf%C3%A9.html"]


def test_cp1251_body_with_encoding() -> None:
    body = '<a href="/привет">p</a>'.encode("cp1251")
    assert extract_links(body, PAGE, encoding="cp1251") == [
        "http://h/%D0%BF%D1%80%D0%B8%D0%B2%D0%B5%D1%82"
    ]


def test_undecodable_bytes_are_replaced_not_fatal() -> None:
    body = '<a href="café.html">c</a><a href="ok.html">o</a>'.encode("latin-1")
    assert extract_links(body, PAGE) == [
        "http://h/dir/caf%EF%BF%BD.html",  # U+FFFD replacement character
        "http://h/dir/ok.html",
    ]


def test_unknown_encoding_falls_back_to_utf8() -> None:
    body = '<a href="é.html">e</a>'.encode()
    assert extract_links(body, PAGE, encoding="no-such-codec") == ["http://h/dir/%C3%A9.html"]


def test_decode_body_passes_str_through() -> None:
    assert decode_body("<p>é</p>", encoding="ascii") == "<p>é</p>"
    assert decode_body(b"\xff", encoding=None) == "\ufffd"


def test_empty_and_garbage_documents() -> None:
    assert extract_links(b"", PAGE) == []
    assert extract_links("<<<>>><a href=", PAGE) == []
    assert extract_links("\x00\x01<a href=x.html>", PAGE) == ["http://h/dir/x.html"]


# --- srcset parsing -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("srcset", "expected"),
    [
        ("a.png 1x, b.png 2x", ["a.png", "b.png"]),
        ("a.png 1x,b.png 2x", ["a.png", "b.png"]),
        ("a.png, b.png", ["a.png", "b.png"]),
        ("a.png,", ["a.png"]),
        (" , a.png 100w , ", ["a.png"]),
        ("image,1.png 1x, b.png 2x", ["image,1.png", "b.png"]),  # comma inside a URL
        ("a.png (foo, bar) 1x, b.png", ["a.png", "b.png"]),  # comma inside parentheses
        ("one.png", ["one.png"]),
        ("", []),
        ("   ", []),
    ],
)
def test_parse_srcset(srcset: str, expected: list[str]) -> None:
    assert parse_srcset(srcset) == expected


def test_links_keep_their_fragment_when_asked() -> None:
    html = ('<a href="#top">t</a><a href="/p#a">a</a><a href="/p#b">b</a><a href="/p">p</a>'
            '<a href="/p#a">again</a><a href="other.html#x y">o</a><a href="#">self</a>'
            '<img srcset="/i.png#1 1x, /i.png#2 2x">')
    assert extract_links(html, PAGE) == ["http://h/dir/page.html", "http://h/p",
                                         "http://h/dir/other.html", "http://h/i.png"]
    assert extract_links(html, PAGE, keep_fragments=True) == [
        "http://h/dir/page.html#top", "http://h/p#a", "http://h/p#b", "http://h/p",
        "http://h/dir/other.html#x%20y", "http://h/dir/page.html", "http://h/i.png#1",
        "http://h/i.png#2"]
    # a page found by a URL with a fragment: its links are as the page's
    assert extract_links(html, PAGE + "#a", keep_fragments=True) == extract_links(
        html, PAGE, keep_fragments=True)
    base = '<base href="/root/#b"><a href="x#y">x</a><a href="">e</a>'
    assert extract_links(base, PAGE, keep_fragments=True) == ["http://h/root/x#y",
                                                              "http://h/root/"]


def test_the_lanes_links_keeping_fragments() -> None:
    from worker.extractors.lanes import LANE_FUNCTIONS

    body = b'<a href="/p#b">b</a><a href="/p.pdf#page=2">a</a><a href="/p">p</a>'
    assert LANE_FUNCTIONS["links"](body, PAGE, None, None) == [
        ("http://h/p", "text/html"), ("http://h/p.pdf", "")]
    assert LANE_FUNCTIONS["links#"](body, PAGE, None, None) == [
        ("http://h/p", "text/html"), ("http://h/p#b", "text/html"), ("http://h/p.pdf#page=2", "")]
