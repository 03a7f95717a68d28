"""What a request carries: User-Agent pool (SZ-T5), per-host headers (never leaked by a
redirect), links rewritten by a job's fingerprint, and conditional re-fetches of expired
pages."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from shared.config import Settings
from tests.e2e.stack import Stack
from tests.servers import serve

pytestmark = pytest.mark.e2e

def html(*links: str, **headers: str) -> web.Response:
    return web.Response(text="".join(f'<a href="{u}">x</a>' for u in links),
                        content_type="text/html", headers=headers)


async def test_user_agent_pool(settings: Settings) -> None:
    """SZ-T5: across 200 requests at least 2 User-Agents, all from the pool: never aiohttp's
    default nor ``userAgent``."""
    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.headers["User-Agent"])
        return html(*(f"/p{i}" for i in range(199))) if request.path == "/" else html()

    runner, base = await serve(handle, "127.0.0.1")
    pool = ("HarvesterA/1.0 (+https://example.org/bot)", "HarvesterB/1.0 (+https://example.org/bot)",
            "HarvesterC/1.0 (+https://example.org/bot)")
    stack = await Stack(settings.model_copy(update={"user_agents": pool})).start()
    try:
        await stack.wait_complete(await stack.post_job([base + "/"]))
        assert len(seen) == 200 and len(set(seen)) >= 2 and set(seen) <= set(pool)
        assert not any("aiohttp" in ua or "Python" in ua or ua == settings.user_agent
                       for ua in seen)
    finally:
        await stack.stop()
        await runner.cleanup()


async def test_ignored_query_parameters_fetch_a_page_once(settings: Settings) -> None:
    """A job's ``fingerprint.ignoreParams``: a page's links are rewritten without them, so
    the variants of one page are one visit (and the job's result lists the rewritten links)."""
    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.path_qs)
        if request.path == "/":
            return html("/a?utm_source=x", "/a?utm_medium=y&id=1", "/a?id=1&UTM_x=2", "/b?sid=9")
        return html()

    runner, base = await serve(handle, "127.0.0.1")
    stack = await Stack(settings).start()
    try:
        status, body = await stack.post_json({"urls": [base + "/?utm_campaign=z"],
                                              "fingerprint": {"ignoreParams": ["utm_*", "sid"]}})
        assert status == 200, body
        job = int(body["jobId"])
        st = await stack.wait_complete(job)
        assert sorted(seen) == ["/", "/a", "/a?id=1", "/b"] and st["pages"]["failed"] == 0
        assert await stack.result(job) == {base + "/": [base + "/a", base + "/a?id=1", base + "/b"]}
    finally:
        await stack.stop()
        await runner.cleanup()


async def test_host_headers_never_follow_a_redirect_elsewhere(settings: Settings) -> None:
    auth: dict[str, list[str | None]] = {"a": [], "b": []}

    async def host_b(request: web.Request) -> web.Response:
        auth["b"].append(request.headers.get("Authorization"))
        return html()

    runner_b, b = await serve(host_b, "127.0.0.2")

    async def host_a(request: web.Request) -> web.StreamResponse:
        auth["a"].append(request.headers.get("Authorization"))
        if request.path == "/":
            return html("/away", "/here", f"{b}/direct")
        if request.path == "/away":
            raise web.HTTPFound(f"{b}/landing")
        return html()

    runner_a, a = await serve(host_a, "127.0.0.1")
    host_a_name = a.split("://", 1)[1]
    configured = settings.model_copy(update={
        "host_headers": {host_a_name: {"Authorization": "Bearer s3cret"}}})
    stack = await Stack(configured).start()
    try:
        job = await stack.post_job([a + "/"])
        await stack.wait_complete(job)
        assert auth["a"] == ["Bearer s3cret"] * 3  # /, /away, /here
        assert auth["b"] == [None, None]  # /landing (through the redirect) and /direct
        assert (await stack.result(job))[a + "/"] == sorted([a + "/away", a + "/here", b + "/direct"])
    finally:
        await stack.stop()
        await runner_a.cleanup()
        await runner_b.cleanup()


async def test_expired_pages_are_revalidated(settings: Settings) -> None:
    requests: list[tuple[str, str | None, str | None, int]] = []

    async def handle(request: web.Request) -> web.Response:
        inm, ims = request.headers.get("If-None-Match"), request.headers.get("If-Modified-Since")
        if request.path == "/" and inm == '"v1"' or request.path != "/" and ims == "Wed, 21 Oct 2015 07:28:00 GMT":
            status = 304
        else:
            status = 200
        requests.append((request.path, inm, ims, status))
        if status == 304:
            return web.Response(status=304)
        if request.path == "/":
            return html("/old", "/other", ETag='"v1"')
        return html("/", **{"Last-Modified": "Wed, 21 Oct 2015 07:28:00 GMT"})

    runner, base = await serve(handle, "127.0.0.1")
    stack = await Stack(settings.model_copy(update={"cache_max_age": 1.0})).start()
    try:
        first = await stack.post_job([base + "/"])
        await stack.wait_complete(first)
        assert [r[3] for r in requests] == [200, 200, 200]
        await asyncio.sleep(1.2)  # the cached copies expire
        second = await stack.post_job([base + "/"])
        st = await stack.wait_complete(second)
        revalidated = sorted(r for r in requests[3:])
        assert revalidated == sorted([("/", '"v1"', None, 304),
                                      ("/old", None, "Wed, 21 Oct 2015 07:28:00 GMT", 304),
                                      ("/other", None, "Wed, 21 Oct 2015 07:28:00 GMT", 304)])
        assert await stack.result(second) == await stack.result(first)  # links reused, not parsed
        assert st["pages"]["fetched"] == 3 and st["pages"]["failed"] == 0
        third = await stack.post_job([base + "/"])
        await stack.wait_complete(third)
        assert len(requests) == 6, "a 304 must refresh the cache time"
        forced = await stack.post_job([base + "/"], forceCrawl="1")
        await stack.wait_complete(forced)
        assert [r[1:] for r in requests[6:]] == [(None, None, 200)] * 3  # forceCrawl: full fetch
    finally:
        await stack.stop()
        await runner.cleanup()


async def test_sitemaps_from_robots_txt(settings: Settings) -> None:
    hits: list[str] = []
    holder: dict[str, str] = {}

    async def handle(request: web.Request) -> web.Response:
        hits.append(request.path)
        b = holder["base"]
        if request.path == "/robots.txt":
            return web.Response(text=f"User-agent: *\nAllow: /\nSitemap: {b}/index.xml\n")
        if request.path == "/index.xml":
            return web.Response(text=f'<sitemapindex xmlns="http://www.sitemaps.org/schemas/'
                                f'sitemap/0.9"><sitemap><loc>{b}/pages.xml</loc></sitemap>'
                                f'</sitemapindex>', content_type="application/xml")
        if request.path == "/pages.xml":
            return web.Response(text=f'<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
                                f'<url><loc>{b}/hidden</loc></url><url><loc>{b}/a</loc></url>'
                                f'<url><loc>http://elsewhere.example/x</loc></url></urlset>',
                                content_type="application/xml")
        if request.path == "/hidden":
            return html("/deep")
        return html("/a") if request.path == "/" else html()

    runner, base = await serve(handle, "127.0.0.1")
    holder["base"] = base
    stack = await Stack(settings.model_copy(update={"robots": True})).start()
    try:
        plain = await stack.post_job([base + "/"])
        await stack.wait_complete(plain)
        assert "/hidden" not in hits and "/index.xml" not in hits
        job = await stack.post_job([base + "/"], sitemaps="1", forceCrawl="1")
        st = await stack.wait_complete(job)
        assert hits.count("/hidden") == 1 and hits.count("/pages.xml") == 1
        assert await stack.result(job) == {base + "/": [base + "/a"],  # only real links
                                           base + "/hidden": [base + "/deep"]}
        assert st["pages"]["processed"] == 3  # /, /a (linked and in the sitemap), /hidden
    finally:
        await stack.stop()
        await runner.cleanup()
