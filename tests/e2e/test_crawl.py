"""End to end: the three tiers on real PostgreSQL and NATS JetStream crawl a local site."""

from __future__ import annotations

import asyncio
import random
import string

import asyncpg
import pytest
from aiohttp import web

from shared.config import Settings
from tests.e2e.site import TestSite
from tests.e2e.stack import Stack
from tests.servers import serve

pytestmark = pytest.mark.e2e


def st_job(stack: Stack) -> int:
    return stack.last_job


async def crawl_and_watch(stack: Stack, site: TestSite, depth: int, **params: str) -> tuple[dict, dict]:
    """Run a job, polling its status; the result seen at completion must be the final one."""
    job = await stack.post_job([site.a + "/"], depth=str(depth), **params)
    st = await stack.wait_complete(job)
    at_completion = await stack.result(job)
    await stack.wait_idle()
    final = await stack.result(job)
    assert final == at_completion, "results arrived after the job was reported complete"
    assert (await stack.status(job))["pending"] == 0
    return st, final


async def pending_rows(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT count(*) FROM job_pending"))


def assert_fetched_once(site: TestSite, settings: Settings) -> None:
    """Every page at most once per job, except the 500 page: tried once plus each retry."""
    error_page = f"{site.a}/error.html"
    assert all(n == 1 for u, n in site.hits.items() if u != error_page), site.hits
    assert site.hits[error_page] in (0, settings.retries + 1)


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
async def test_result_is_the_link_graph(stack: Stack, site: TestSite, db: asyncpg.Connection,
                                        settings: Settings, depth: int) -> None:
    st, result = await crawl_and_watch(stack, site, depth)
    assert result == site.expected_result(site.a + "/", depth)
    assert st["completed"] == 1 and st["urls"] == {site.a + "/": True}
    assert st["pages"]["queued"] == 0
    assert await pending_rows(db) == 0
    # Each page at most once per job; images, CSS and JS never; nothing from comments or scripts.
    assert_fetched_once(site, settings)
    never = {f"{site.a}/{p}" for p in ("style.css", "app.js", "img/logo.png", "img/s1.png",
                                       "commented.html", "script-only.html", "data-only.html",
                                       "never.html")}
    assert not never & site.fetched()


async def test_status_counts_fetches_and_failures(stack: Stack, site: TestSite,
                                                  settings: Settings) -> None:
    st, _ = await crawl_and_watch(stack, site, 2)
    # Every page the site served was fetched for a visit, except the redirect's target.
    assert st["pages"]["fetched"] == len(site.fetched()) - 1
    assert st["pages"]["failed"] == 2
    assert st["pages"]["processed"] == st["pages"]["fetched"] + st["pages"]["cached"]
    assert st["elapsed"].endswith("s")
    failures = await stack.result(int(st_job(stack)), status="failed")
    assert failures == {
        f"{site.a}/error.html": {"status": 500, "reason": "HTTP 500 Internal Server Error",
                                 "attempts": settings.retries + 1},
        f"{site.a}/missing.html": {"status": 404, "reason": "HTTP 404 Not Found", "attempts": 1},
    }


async def test_shortest_level_wins_whatever_arrives_first(stack: Stack, site: TestSite) -> None:
    # /c/deep/f.html is 2 links away through the slow page and 3 through fast pages. At depth 4
    # the fast path reaches it first at level 3; it must still be expanded from level 2, so g.html
    # (level 3) is fetched and its links listed.
    _, result = await crawl_and_watch(stack, site, 4)
    assert f"{site.a}/c/deep/g.html" in result
    assert result[f"{site.a}/c/deep/g.html"] == sorted([f"{site.a}/", f"{site.a}/c/deep/h.html"])
    assert site.hits[f"{site.a}/c/deep/f.html"] == 1


async def test_cache_and_force_crawl(stack: Stack, site: TestSite, settings: Settings) -> None:
    _, first = await crawl_and_watch(stack, site, 2)
    hits_after_first = sum(site.hits.values())
    assert hits_after_first > 10
    st, second = await crawl_and_watch(stack, site, 2)
    assert second == first
    assert sum(site.hits.values()) == hits_after_first, "a cached job fetched pages again"
    assert st["pages"]["fetched"] == 0 and st["pages"]["cached"] > 0
    before = site.hits.copy()
    st, forced = await crawl_and_watch(stack, site, 2, forceCrawl="")
    assert forced == first
    refetched = {u for u in site.hits if site.hits[u] > before[u]}
    assert f"{site.a}/" in refetched and f"{site.a}/a.html" in refetched
    again = {u: site.hits[u] - before[u] for u in refetched}
    assert again.pop(f"{site.a}/error.html") == settings.retries + 1
    assert set(again.values()) == {1}
    assert st["forceCrawl"] is True


async def test_mime_filter(stack: Stack, site: TestSite) -> None:
    # Depth 3: /photo (level 2, no extension) is fetched, and its type comes from the response.
    job = await stack.post_job([site.a + "/"], depth="3")
    await stack.wait_complete(job)
    images = await stack.result(job, mime="image")
    assert images == {site.a + "/": sorted(f"{site.a}/img/{n}.png" for n in ("logo", "s1", "s2")),
                      site.a + "/a.html": [f"{site.a}/photo"]}  # type learnt from the fetch
    assert await stack.result(job, mime="IMAGE") == images
    assert await stack.result(job, mime="text/javascript") == {site.a + "/": [f"{site.a}/app.js"]}
    assert await stack.result(job, mime="%") == {}  # LIKE wildcards are literal
    assert await stack.result(job, mime="image/_ng") == {}


async def test_results_are_partial_while_running(stack: Stack, site: TestSite) -> None:
    gate = site.gates[f"{site.a}/slow.html"] = asyncio.Event()
    job = await stack.post_job([site.a + "/"], depth="2")
    for _ in range(400):
        partial = await stack.result(job)
        if len(partial) >= 3:
            break
        await asyncio.sleep(0.05)
    st = await stack.status(job)
    assert st["pending"] == 1 and st["urls"] == {site.a + "/": False}
    assert site.a + "/" in partial and f"{site.a}/slow.html" not in partial
    gate.set()
    await stack.wait_complete(job)
    assert await stack.result(job) == site.expected_result(site.a + "/", 2)


async def test_two_job_urls_and_a_shared_page(stack: Stack, site: TestSite) -> None:
    urls = [site.a + "/a.html", site.b + "/ext.html"]
    job = await stack.post_job(urls, depth="2")
    st = await stack.wait_complete(job)
    assert st["completed"] == 2 and set(st["urls"]) == set(urls)
    expected = site.expected_result(urls[0], 2)
    for page, links in site.expected_result(urls[1], 2).items():
        expected[page] = links  # ext.html links a.html, itself a job URL: same page, same links
    # a.html is level 0 (job URL) and also linked at level 1 from ext.html: processed once.
    result = await stack.result(job)
    assert result == expected
    assert max(site.hits.values()) == 1


async def test_scaled_tiers_give_the_same_result(settings: Settings, site: TestSite,
                                                 db: asyncpg.Connection) -> None:
    stack = await Stack(settings).start(foremen=2, workers=3)
    try:
        _, result = await crawl_and_watch(stack, site, 3)
    finally:
        await stack.stop()
    assert result == site.expected_result(site.a + "/", 3)
    assert_fetched_once(site, settings)
    assert await pending_rows(db) == 0


async def test_long_urls_are_stored_as_links_and_as_job_urls(settings: Settings,
                                                             db: asyncpg.Connection) -> None:
    # A btree index entry holds at most about 2.7 KB (compressed): URLs are looked up by their
    # hash instead. Random characters, so that compression does not hide the length. Past the
    # default maxURLLength (2048, a crawler trap past it): a server that allows longer.
    stack = await Stack(settings.model_copy(update={"max_url_length": 16384})).start()
    rnd = random.Random(12)
    letters = string.ascii_letters + string.digits
    long_link = "/link/" + "".join(rnd.choices(letters, k=8000))  # under aiohttp's 8190-byte line
    long_job = "/job/" + "".join(rnd.choices(letters, k=4000))

    async def handle(request: web.Request) -> web.Response:
        links = {"/": [long_link], long_link: ["/"], long_job: [long_link, "/"]}[request.path]
        return web.Response(text="".join(f'<a href="{u}">x</a>' for u in links),
                            content_type="text/html")

    runner, base = await serve(handle)
    try:
        job = await stack.post_job([base + "/"])
        st = await stack.wait_complete(job)
        assert st["pages"] == {"queued": 0, "processed": 2, "fetched": 2, "cached": 0,
                               "failed": 0, "blocked": 0}
        assert await stack.result(job) == {base + "/": [base + long_link],
                                           base + long_link: [base + "/"]}
        job = await stack.post_job([base + long_job])
        st = await stack.wait_complete(job)
        assert st["urls"] == {base + long_job: True} and st["pages"]["failed"] == 0
        assert await stack.result(job) == {base + long_job: [base + "/", base + long_link],
                                           base + "/": [base + long_link],  # from the store
                                           base + long_link: [base + "/"]}
        assert await db.fetchval("SELECT count(*) FROM url WHERE url = $1", base + long_link) == 1
    finally:
        await runner.cleanup()
        await stack.stop()
