"""The rule extractors (worker/extractors/rules.py) run in the worker's parser lanes, real child
processes: what they find there is what rules_core finds, a page that takes too long (a deeply
nested document) is killed at the parse deadline, its lane replaced, while other pages are
read, and a regex that backtracks for ever in Python's re ends at once on RE2."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from shared.errors import ConfigError
from shared.model import FetchedPage
from tests.integration.test_parse import alive, lanes, nested_divs, until
from worker.extractors import ExtractFailed, rules_core
from worker.extractors.lanes import ParseFailed, Parser
from worker.extractors.rules import Follow, Items

BASE = "http://site.test/p"
FOLLOW = {"follow": {"linkRegex": r"href='(/n/\d+)'", "css": [], "attr": "href",
                     "html": False},
          "ids": {"regex": r"id:(\d+)", "urlFormat": "http://ids.test/item?id={}", "seeds": [],
                  "known": None, "explored": None}}
ITEMS = {"name": "t", "fields": {"title": {"css": "title"},
                                 "n": {"xpath": "count(//a)", "type": "int"}}}


def page(body: bytes) -> FetchedPage:
    return FetchedPage(1, 200, "text/plain", None, cacheable=True, body=body)


@pytest.fixture
async def parser() -> AsyncIterator[Parser]:
    async with Parser(timeout=1.0, lanes=2) as p:
        yield p


async def test_follow_and_items_run_in_the_lanes(parser: Parser) -> None:
    body = b"<title>T</title><a href='/n/1'>1</a> id:7 <a href='/n/1'>again</a> id:8"
    follow = Follow(None, FOLLOW, parser)
    got = await follow.extract(page(body), BASE)
    assert [(y.kind, y.value) for y in got.yields] == [
        ("link", {"url": "http://site.test/n/1"}),
        ("id", {"id": "7", "url": "http://ids.test/item?id=7"}),
        ("id", {"id": "8", "url": "http://ids.test/item?id=8"})]
    assert got.yields and got.links == ()  # yields only: the frontier follows them
    assert [(y.kind, y.value) for y in got.yields] == rules_core.follow(
        body, BASE, None, follow.rules)
    items = await Items(None, ITEMS, parser).extract(page(body), BASE)
    assert [(y.kind, y.value) for y in items.yields] == [
        ("item", {"_type": "t", "title": "T", "n": 2})]


async def test_a_page_past_the_deadline_is_killed_and_its_lane_replaced(
        parser: Parser) -> None:
    evil = Follow(None, {"follow": {"css": ["a"]}}, parser)
    good = Follow(None, FOLLOW, parser)
    pids = lanes(parser)
    hostile = page(nested_divs(100_000))  # about 30 s of parsing
    t0 = time.monotonic()
    slow = asyncio.create_task(evil.extract(hostile, BASE))
    # the other lane reads other pages meanwhile
    for _ in range(5):
        got = await good.extract(page(b"<a href='/n/2'>"), BASE)
        assert [y.value for y in got.yields] == [{"url": "http://site.test/n/2"}]
    with pytest.raises(ParseFailed, match="parsing took longer than 1s") as failed:
        await slow
    assert isinstance(failed.value, ExtractFailed)  # from a rule set's extractor: the visit fails
    assert time.monotonic() - t0 < 10
    await until(lambda: len(lanes(parser)) == 2 and lanes(parser) != pids, "a new lane")
    killed = next(iter(pids - lanes(parser)))
    assert not alive(killed)
    results = await asyncio.gather(*(good.extract(page(b"id:3"), BASE) for _ in range(4)))
    assert all([y.value["id"] for y in r.yields] == ["3"] for r in results)


async def test_a_catastrophic_regex_ends_at_once_on_re2(parser: Parser) -> None:
    """``(a+)+$`` on 64 a's and a "!": 2^64 ways to split the a's in Python's re, linear on
    RE2; the lane is not killed."""
    pids = lanes(parser)
    evil = Follow(None, {"follow": {"linkRegex": "(a+)+$"}}, parser)
    got = await evil.extract(page(b"a" * 100_000 + b"!"), BASE)
    assert got.yields == ()
    got = await evil.extract(page(b"x aaa"), BASE)
    assert [y.value for y in got.yields] == [{"url": "http://site.test/aaa"}]
    assert lanes(parser) == pids


async def test_rules_that_do_not_compile_fail_in_the_factory() -> None:
    lanes = Parser(1.0)  # not entered: no process is started
    with pytest.raises(ValueError, match="capture groups"):
        Follow(None, {"follow": {"linkRegex": "(a)(b)"}}, lanes)
    with pytest.raises(ValueError, match="a backreference is not supported"):
        Follow(None, {"follow": {"linkRegex": r"(a)\1"}}, lanes)
    with pytest.raises(ValueError, match="exactly one of css, xpath, regex"):
        Items(None, {"fields": {"x": {"css": "p", "regex": "p"}}}, lanes)
    assert json.loads(Follow(None, {"ids": FOLLOW["ids"]}, lanes).rules) == {
        "idRegex": r"id:(\d+)", "urlFormat": "http://ids.test/item?id={}"}




@pytest.mark.parametrize(("options", "reason"), [
    ({"follow": {"linkRegex": "a(?=b)"}}, r"follow\.linkRegex: a\(\?=b\) \(a lookahead is not"),
    ({"ids": {"regex": r"(?<=id:)\d+", "urlFormat": "http://x/{}"}},
     r"ids\.regex: .* \(a lookbehind is not"),
])
def test_a_stored_pre_re2_rule_regex_refuses_the_job_once(
        options: dict[str, Any], reason: str) -> None:
    """A job stored before patterns ran on RE2: its plan is refused, with the pattern's
    problem (``ConfigError``: "not served by this worker: <reason>"), before any page is read."""
    lanes = Parser(1.0)
    with pytest.raises(ConfigError, match=f"^{reason}"):
        Follow(None, options, lanes)
    with pytest.raises(ConfigError, match=r"^items\.fields\.x\.regex: a\(\?!b\) \(a lookahead"):
        Items(None, {"fields": {"x": {"regex": "a(?!b)"}}}, lanes)
