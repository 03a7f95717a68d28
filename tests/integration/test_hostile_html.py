"""A hostile-HTML corpus through the real parser lanes (worker/extractors/lanes.py ``Parser``):
every page is generated here by code (no stored binaries): 100,000-deep nesting, 200,000 links,
NULs, invalid UTF-8, BOM soup, giant attributes, unclosed comments and the like. Each page
gives its links or fails with ``ParseFailed`` within the parse deadline, never a crash of the
worker; the lanes a page killed are replaced and the parser serves a plain page after it all.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest

from shared.config import Settings
from shared.model import FetchedPage
from shared.urls import canonicalize
from tests.integration.test_parse import padded
from worker.extractors import ExtractFailed
from worker.extractors.lanes import INLINE_BYTES, ParseFailed, Parser
from worker.extractors.rules import Follow, Items

PARSE_TIMEOUT = 5.0  # the parseTimeout of this test (the default is 10 s)
MARGIN = 5.0         # a lane's replacement and the pipes: seconds, not a measurement
BASE = "http://h.example/d/p.html"
PLAIN = b'<a href="/plain">plain</a>'


def links_of(urls: list[str]) -> Callable[[list[str]], bool]:
    return lambda got: set(urls) <= set(got)


@dataclass(frozen=True)
class Page:
    name: str
    body: bytes
    encoding: str | None = None
    # None: either outcome is fine (links or ParseFailed); else what the links must satisfy
    expect: Callable[[list[str]], bool] | None = None


def corpus() -> list[Page]:
    link = b'<a href="/after">x</a>'
    after = links_of(["http://h.example/after"])
    utf16 = '<a href="/utf16">x</a>'.encode("utf-16-le")
    return [
        Page("100,000 nested divs", b"<div>" * 100_000 + link + b"</div>" * 100_000),
        Page("100,000 nested tables", b"<table><tr><td>" * 100_000 + link),
        Page("mis-nested formatting (adoption agency)", b"<b><i><u><s>" * 20_000 + link
             + b"</b></i></u></s>" * 20_000),
        Page("200,000 links",
             b"".join(b'<a href="/p/%d">x</a>' % i for i in range(200_000)),
             expect=lambda got: len(got) == 200_000),
        Page("NULs everywhere", b"\x00" * 1_000_000 + link + b"<a\x00 href=/n\x00ul>"
             + b"\x00" * 1_000_000, expect=after),
        Page("invalid UTF-8", bytes(range(128, 256)) * 5_000 + link + b"\xc3\x28\xa0\xa1"
             + b"\xf0\x28\x8c\xbc" * 10_000 + b"\xed\xa0\x80", expect=after),
        Page("invalid bytes in a declared encoding", b"\x82\xa0" * 100_000 + link,
             encoding="shift_jis", expect=after),
        Page("BOM soup", (b"\xef\xbb\xbf\xff\xfe\xfe\xff" + utf16 + b"\x00\x00\xfe\xff")
             * 20_000 + link, expect=after),
        Page("an unknown encoding", link, encoding="x-no-such-encoding", expect=after),
        Page("a 5 MB attribute", b'<a href="/' + b"a" * 5_000_000 + b'">x</a>' + link,
             expect=after),
        # About 45 s of parsing (quadratic in the attributes of one element): the deadline's.
        Page("100,000 attributes", b"<a " + b"".join(b"x%d=y " % i for i in range(100_000))
             + b'href="/many">x</a>' + link),
        Page("a 5 MB srcset", b'<img srcset="' + b"/i.png 1x, " * 450_000 + b'">' + link,
             expect=after),
        Page("an unclosed comment", b"<!--" + link * 50_000,
             expect=lambda got: got == []),
        Page("unclosed comments, CDATA and scripts",
             b"<!-- -- --!><![CDATA[<script><style><textarea><title><xmp>" * 20_000 + link),
        Page("an unclosed tag to the end", b'<a href="/open' + b" x" * 2_000_000),
        Page("2 MB of entities", b'<a href="/e?' + b"&amp;" * 400_000 + b'">x</a>' + link
             + b"&#x10FFFF;&#0;&#xD800;" * 20_000, expect=after),
        Page("10,000 bases", b'<base href="http://b.example/">' * 10_000 + b'<a href="x">x</a>',
             expect=links_of(["http://b.example/x"])),
        Page("15 KB of id'd paragraphs in bold", b"".join(b"<b id=%d><p>x" % i
                                                          for i in range(1_500)) + link),
        Page("nothing", b""),
        Page("a deep svg/math mix", b"<svg><math><mi><svg><foreignObject>" * 20_000 + link),
    ]


@pytest.fixture
async def parser() -> AsyncIterator[Parser]:
    async with Parser(timeout=PARSE_TIMEOUT, lanes=2) as p:
        yield p


def check_links(urls: list[str]) -> None:
    for url in urls:
        parts = urlsplit(url)
        assert parts.scheme in ("http", "https") and parts.hostname
        assert canonicalize(url) == url


async def test_every_hostile_page_is_parsed_or_failed_within_the_deadline(
        parser: Parser) -> None:
    outcomes: dict[str, str] = {}
    for page in corpus():
        t0 = time.monotonic()
        try:
            found = [u for u, _ in await parser.links(page.body, BASE, page.encoding)]
        except ParseFailed as e:
            outcome = f"failed: {e}"
            assert page.expect is None, f"{page.name}: {e}"
        else:
            outcome = f"{len(found)} links"
            check_links(found)
            assert page.expect is None or page.expect(found), page.name
        elapsed = time.monotonic() - t0
        assert elapsed < PARSE_TIMEOUT + MARGIN, f"{page.name}: {elapsed:.1f}s ({outcome})"
        outcomes[page.name] = outcome
    print("\n".join(f"{k}: {v}" for k, v in outcomes.items()))  # the corpus's record, -s
    # The deep pages took a lane each (killed at the deadline): both lanes serve again (a page
    # over parseInlineBytes: a smaller one is parsed on the event loop).
    plain = padded(PLAIN, INLINE_BYTES + 1)
    assert await asyncio.gather(*(parser.links(plain, BASE, None) for _ in range(4))) == [
        [("http://h.example/plain", "text/html")]] * 4


async def test_a_page_over_the_lanes_memory_cap_fails_alone() -> None:
    # 200,000 links take a lane about 200 MB of address space: over a 128 MiB cap the page
    # fails (MemoryError, or the lane dies and is replaced) and the next page is parsed; under
    # the default cap (parseMemory, 1 GiB) it is parsed whole.
    big = b"".join(b'<a href="/p/%d">x</a>' % i for i in range(200_000))
    async with Parser(timeout=30, lanes=1, memory=128 << 20, inline_bytes=0) as parser:
        assert await parser.links(PLAIN, BASE, None)
        with pytest.raises(ParseFailed):
            await parser.links(big, BASE, None)
        assert await parser.links(PLAIN, BASE, None) == [("http://h.example/plain", "text/html")]
    async with Parser(timeout=30, lanes=1, memory=Settings().parse_memory) as parser:
        assert len(await parser.links(big, BASE, None)) == 200_000


RULES_FOLLOW = {"follow": {"linkRegex": r"href=\"?(/[a-z]+)", "css": ["a", "img"],
                           "attr": "href", "html": False}}
RULES_ITEMS = {"name": "t", "each": "div, td, p",
               "fields": {"title": {"css": "a"}, "n": {"xpath": "count(//a)", "type": "int"},
                          "word": {"regex": r"href=\"?/([a-z]+)"}}}


async def test_the_rule_extractors_bound_every_hostile_page_too(parser: Parser) -> None:
    """The same corpus through the rule extractors (``follow`` by regex and CSS, ``items`` by
    CSS, XPath and regex within ``each``), in the same lanes: each page gives its yields or
    fails (``ParseFailed``, ``ExtractFailed``) within the deadline; the lanes serve after."""
    follow = Follow(None, RULES_FOLLOW, parser)
    items = Items(None, RULES_ITEMS, parser)
    outcomes: dict[str, str] = {}
    for page in corpus():
        fetched = FetchedPage(1, 200, "text/html", page.encoding, cacheable=True,
                              body=page.body)
        t0 = time.monotonic()
        got = await asyncio.gather(follow.extract(fetched, BASE), items.extract(fetched, BASE),
                                   return_exceptions=True)
        elapsed = time.monotonic() - t0
        for result in got:
            if isinstance(result, BaseException):
                assert isinstance(result, ParseFailed | ExtractFailed), (page.name, result)
        assert elapsed < PARSE_TIMEOUT + MARGIN, f"{page.name}: {elapsed:.1f}s"
        outcomes[page.name] = ", ".join(
            type(r).__name__ if isinstance(r, BaseException) else f"{len(r.yields)} yields"
            for r in got)
    print("\n".join(f"{k}: {v}" for k, v in outcomes.items()))  # the corpus's record, -s
    plain = FetchedPage(1, 200, "text/html", None, cacheable=True, body=b"<p>" + PLAIN)
    for _ in range(4):  # the deep pages took a lane each (killed at the deadline): both serve
        got_follow = await follow.extract(plain, BASE)
        assert [y.value for y in got_follow.yields] == [{"url": "http://h.example/plain"}]
        got_items = await items.extract(plain, BASE)
        assert [y.value for y in got_items.yields] == [
            {"_type": "t", "title": "plain", "n": 1, "word": "plain"}]
