"""Per-job scope, page limits and compressed answers, end to end."""

from __future__ import annotations

import gzip

import brotli
import pytest
from aiohttp import web

from harvester_ops.embedded import free_port
from shared.config import Settings
from shared.scope import Scope
from tests.e2e.site import TestSite
from tests.e2e.stack import Stack

pytestmark = pytest.mark.e2e


async def run(stack: Stack, urls: list[str], **params: str) -> tuple[int, dict, dict]:
    job = await stack.post_job(urls, **params)
    st = await stack.wait_complete(job)
    return job, st, await stack.result(job)


async def test_scope_host_lists_but_does_not_follow_other_hosts(stack: Stack, site: TestSite) -> None:
    _, st, result = await run(stack, [site.a + "/"], depth="3", scope="host")
    scope = Scope("host")
    assert result == site.expected_result(site.a + "/", 3, lambda u: scope.follows(u, site.a + "/"))
    assert site.b + "/ext.html" in result[site.a + "/"]  # listed
    assert not any(u.startswith(site.b) for u in site.fetched())  # never fetched
    assert st["scope"] == {"scope": "host", "allow": [], "deny": [], "maxPages": None}


async def test_allow_and_deny_patterns(stack: Stack, site: TestSite) -> None:
    params = {"depth": "3", "deny": r"/c/", "allow": r"127\.0\.0\.1"}
    _, _, result = await run(stack, [site.a + "/"], **params)
    scope = Scope("any", (params["allow"],), (params["deny"],))
    assert result == site.expected_result(site.a + "/", 3, lambda u: scope.follows(u, ""))
    # Nothing under /c/ was followed (the one fetch there is where /redirect leads).
    assert {u for u in site.fetched() if "/c/" in u} == {site.a + "/c/moved.html"}


async def test_max_pages(stack: Stack, site: TestSite) -> None:
    _, st, _result = await run(stack, [site.a + "/"], depth="4", maxPages="5")
    assert st["pages"]["processed"] == 5 and st["completed"] == 1
    assert len(site.fetched()) <= 6  # five pages, plus the redirect's target if one of them


@pytest.mark.parametrize(("params", "message"), [
    ({"scope": "everything"}, "Invalid scope: everything (use any, host or domain)"),
    ({"allow": "("}, "Invalid allow pattern: ( (missing ), unterminated subpattern at position 0)"),
    ({"deny": "[a"}, "Invalid deny pattern: [a (unterminated character set at position 0)"),
    ({"maxPages": "0"}, "Invalid maxPages: 0 (allowed 1 to 2147483647)"),
    ({"maxPages": "x"}, "Invalid maxPages: x"),
])
async def test_bad_scope_parameters(stack: Stack, params: dict[str, str], message: str) -> None:
    status, body, _ = await stack.request("POST", "/", "http://x.example/", **params)
    assert (status, body) == (400, {"code": "BadRequest", "message": message})


async def test_compressed_answers_and_a_decompression_bomb(settings: Settings) -> None:
    page = b'<a href="/b">b</a><a href="/bomb">bomb</a>'

    async def handle(request: web.Request) -> web.Response:
        if request.path == "/":
            assert "br" in request.headers["Accept-Encoding"]
            return web.Response(body=brotli.compress(page), content_type="text/html",
                                headers={"Content-Encoding": "br"})
        if request.path == "/b":
            return web.Response(body=gzip.compress(b"<p>fine</p>"), content_type="text/html",
                                headers={"Content-Encoding": "gzip"})
        # 64 MiB of zeros in about 64 KiB: the cap must apply to what it expands to.
        return web.Response(body=gzip.compress(b"\0" * (64 << 20)), content_type="text/html",
                            headers={"Content-Encoding": "gzip"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    base = f"http://127.0.0.1:{port}"
    stack = await Stack(settings.model_copy(update={"max_body_bytes": 1 << 20})).start()
    try:
        job = await stack.post_job([base + "/"])
        await stack.wait_complete(job)
        assert await stack.result(job) == {base + "/": [base + "/b", base + "/bomb"]}
        failures = await stack.result(job, status="failed")
        assert failures == {base + "/bomb": {"status": None, "attempts": 1,
                                             "reason": "body exceeds the 1048576-byte limit"}}
    finally:
        await stack.stop()
        await runner.cleanup()
