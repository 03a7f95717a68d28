"""The issue's catastrophic pattern, end to end: a job with ``allow=(a+)+$`` on a page whose
link is a long run of a's (Python's re: 2^n steps for each link, a worker pinned) finishes, and
a small job sharing the one worker completes meanwhile; a construct RE2 has not is a 400 that
names it."""

from __future__ import annotations

import pytest
from aiohttp import web

from tests.e2e.stack import Stack
from tests.servers import serve

pytestmark = pytest.mark.e2e

RUN = "a" * 2000


async def handle(request: web.Request) -> web.Response:
    if request.path == "/evil":
        body = "".join(f"<a href='/{RUN}{i}!'>a</a>" for i in range(20)) + f"<p>{RUN}!</p>"
    elif request.path == "/small":
        body = "<a href='/small/1'>1</a><a href='/small/2'>2</a>"
    else:
        body = "leaf"
    return web.Response(text=f"<html><body>{body}</body></html>", content_type="text/html")


async def test_a_catastrophic_allow_pattern_does_not_hold_the_worker(stack: Stack) -> None:
    runner, base = await serve(handle)
    try:
        evil = await stack.post_job([base + "/evil"], allow="(a+)+$", depth="3")
        small = await stack.post_job([base + "/small"], depth="2")
        st = await stack.wait_complete(small, timeout=30)
        assert st["pages"]["fetched"] == 3, st
        st = await stack.wait_complete(evil, timeout=30)
        assert st["pages"]["fetched"] == 1, st  # no link ends in an a: none followed
        result = await stack.result(evil)
        assert len(result[base + "/evil"]) == 20  # listed, as links out of scope are
    finally:
        await runner.cleanup()


async def test_a_construct_re2_has_not_is_a_400_naming_it(stack: Stack) -> None:
    for pattern, construct in ((r"(a)\1", "a backreference"), ("(?=a)", "a lookahead"),
                               ("a++", "a possessive repeat")):
        status, body, _ = await stack.request("POST", "/", "http://127.0.0.1:9/",
                                              allow=pattern)
        assert status == 400
        assert body["message"] == (f"Invalid allow pattern: {pattern} ({construct} is not "
                                   "supported: patterns run on a linear-time engine)")
        status, body = await stack.post_json({"urls": ["http://127.0.0.1:9/"],
                                              "scope": {"deny": [pattern]}})
        assert status == 400 and f"{construct} is not supported" in body["message"], body
