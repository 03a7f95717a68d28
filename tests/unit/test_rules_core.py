"""Follow rules, ids and items on a page (worker/extractors/rules_core.py, the lanes' side):
pure functions of the body, its URL, its encoding and the rules (as JSON)."""

from __future__ import annotations

import json
from typing import Any

from shared.ids import id_url
from worker.extractors import rules_core

BASE = "http://site.test/dir/page.html"


def follow(body: bytes | str, **rules: Any) -> list[tuple[str, dict[str, Any]]]:
    data = body.encode() if isinstance(body, str) else body
    return rules_core.follow(data, BASE, None, json.dumps(rules, sort_keys=True))


def items(body: bytes | str, **spec: Any) -> list[dict[str, Any]]:
    data = body.encode() if isinstance(body, str) else body
    return rules_core.items(data, BASE, None, json.dumps(spec, sort_keys=True))


def urls(found: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [v["url"] for k, v in found if k == "link"]


def test_link_regex_takes_its_first_group_resolved_canonical_http_only() -> None:
    body = ('<a href="/item/2?b=2&amp;a=1">x</a> <a href="item/3">3</a> <a href="/other/9">'
            'no</a> <a href="./item/3">again</a> <a href="mailto:item/4@x">m</a> '
            '<a href="HTTP://SITE.test:80/item/5#frag">5</a>')
    assert urls(follow(body, linkRegex=r'href="([^"]*item/[^"]*)"')) == [
        "http://site.test/item/2?a=1&b=2",   # resolved, &amp; read as &, query sorted
        "http://site.test/dir/item/3",       # relative to the page; found twice, listed once
        "http://site.test/item/5"]           # canonical: scheme, host, port, fragment
    # no group: the whole match; anything not http(s) after resolution is dropped
    assert urls(follow("see http://a.test/x and ftp://a.test/y and //b.test/z",
                       linkRegex=r"(?:https?|ftp):\S+|//\S+")) == [
        "http://a.test/x", "http://b.test/z"]


def test_link_regex_reads_the_body_in_its_encoding() -> None:
    body = "<a href='/caf\u00e9'>x</a>".encode("latin-1")
    got = rules_core.follow(body, BASE, "latin-1", json.dumps({"linkRegex": "href='([^']*)'"}))
    assert [v["url"] for _, v in got] == ["http://site.test/caf%C3%A9"]


def test_css_selectors_read_their_attribute() -> None:
    body = ('<div class="n"><a href="/p/1">1</a><a data-u="/p/2" href="/no">2</a></div>'
            '<a href="/p/3">3</a><span class="n">no href</span>')
    assert urls(follow(body, css=[".n a", "a[href='/p/3']"], attr="href")) == [
        "http://site.test/p/1", "http://site.test/no", "http://site.test/p/3"]
    assert urls(follow(body, css=["a[data-u]"], attr="data-u")) == ["http://site.test/p/2"]


def test_regex_and_css_together_and_nothing_found() -> None:
    body = '<a class="c" href="/c">c</a> /r/1'
    assert urls(follow(body, linkRegex=r"/r/\d", css=[".c"], attr="href")) == [
        "http://site.test/r/1", "http://site.test/c"]
    assert follow("<p>none</p>", linkRegex=r"/r/\d") == []


def test_ids_found_by_regex_become_urls_of_the_format() -> None:
    fmt = "http://ids.test/item?id={}"
    body = "id=17 id=4 id=17 id=a/b id=.. id=" + "x" * 600
    found = follow(body, idRegex=r"id=([^\s]+)", urlFormat=fmt)
    assert found == [("id", {"id": "17", "url": id_url(fmt, "17")}),
                     ("id", {"id": "4", "url": id_url(fmt, "4")}),
                     ("id", {"id": "a/b", "url": id_url(fmt, "a/b")})]  # ".." and too long: no
    assert found[2][1]["url"] == "http://ids.test/item?id=a%2Fb"


def test_links_and_ids_from_one_page() -> None:
    found = follow("<a href='/n/2'>2</a> #7", linkRegex=r"/n/\d", idRegex=r"#(\d+)",
                   urlFormat="http://ids.test/{}")
    assert found == [("link", {"url": "http://site.test/n/2"}),
                     ("id", {"id": "7", "url": "http://ids.test/7"})]


PAGE = """<html><head><title> The  Title </title></head><body>
<ul><li class="p"><b>Ann</b> <i>1,234</i> <a href="/a">a</a> yes</li>
<li class="p"><b>Bob</b> <i>n/a</i> <a href="/b">b</a> no</li></ul>
<p id="price">Price: 12.50 EUR</p></body></html>"""


def test_one_item_per_page_by_css_xpath_regex() -> None:
    got = items(PAGE, fields={
        "title": {"css": "title"},
        "names": {"css": "li b", "take": "all"},
        "first_link": {"xpath": "//li/a/@href"},
        "hrefs": {"css": "li a", "attr": "href", "take": "all"},
        "price": {"regex": r"Price: ([\d.]+)", "type": "float"},
        "count": {"xpath": "count(//li)", "type": "int"},
        "h1": {"css": "h1", "default": "none"},
        "missing_all": {"xpath": "//h2", "take": "all"},
    })
    assert got == [{"title": "The  Title", "names": ["Ann", "Bob"], "first_link": "/a",
                    "hrefs": ["/a", "/b"], "price": 12.5, "count": 2, "h1": "none",
                    "missing_all": []}]


def test_each_gives_one_item_per_match_with_its_type_name() -> None:
    got = items(PAGE, name="person", each="li.p", fields={
        "name": {"css": "b"},
        "n": {"css": "i", "type": "int", "default": -1},
        "link": {"xpath": "//a/@href"},
        "ok": {"regex": r"</a>\s*(\w+)", "type": "bool"},
    })
    assert got == [{"_type": "person", "name": "Ann", "n": 1234, "link": "/a", "ok": True},
                   {"_type": "person", "name": "Bob", "n": -1, "link": "/b", "ok": False}]
    assert items(PAGE, each="table", fields={"x": {"css": "td"}}) == []


def test_coercion_failures_give_the_default() -> None:
    body = "<p>abc</p><p>3</p><p>maybe</p><p>inf</p>"
    got = items(body, fields={
        "i": {"css": "p", "type": "int", "default": 0},
        "all": {"css": "p", "type": "int", "take": "all"},
        "f": {"css": "p:nth-of-type(4)", "type": "float", "default": 1.5},  # not finite: no
        "b": {"css": "p:nth-of-type(3)", "type": "bool"},
        "s": {"css": "p:nth-of-type(2)"},
    })
    assert got == [{"i": 0, "all": [None, 3, None, None], "f": 1.5, "b": None, "s": "3"}]


def test_items_of_a_page_that_is_not_html() -> None:
    body = b'{"price": "7", "name": "x\\u0000y"}'
    got = items(body, fields={"price": {"regex": r'"price": "(\d+)"', "type": "int"},
                              "name": {"regex": r'"name": "([^"]*)"'},
                              "d": {"xpath": "//div"}})
    assert got == [{"price": 7, "name": "x\\u0000y", "d": None}]
    assert items(b"", fields={"p": {"xpath": "//p"}, "c": {"css": "p"}}) == [
        {"p": None, "c": None}]


def test_text_never_holds_a_nul() -> None:  # PostgreSQL's jsonb refuses \u0000
    got = items(b"a\x00b", fields={"t": {"regex": "a.b"}})
    assert got == [{"t": "a\ufffdb"}]


def test_compiled_rules_are_cached_by_their_json() -> None:
    rules_core.compiled.cache_clear()
    for _ in range(3):
        follow("/r/1", linkRegex=r"/r/\d")
    info = rules_core.compiled.cache_info()
    assert (info.misses, info.hits) == (1, 2)
