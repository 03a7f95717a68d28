"""Per-version results per rule set, end to end: a job answered from the store gets exactly the
yields a fresh fetch with the same spec gives; a job of another rule set fetches the pages again;
a links-only job uses a cache an extracting job built; a page that changed gives each job the
version it used. The extractor is tests/plugins.py's ``test-title`` (one item, ``{"title": the
text of <tag>}``, ``tag`` defaulting to ``title``)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp import web

import tests.plugins  # noqa: F401 - registers the test-title extractor
from shared.config import Settings
from shared.db import jobs
from tests.e2e.stack import Stack
from tests.servers import serve

pytestmark = pytest.mark.e2e

TITLE = [{"kind": "test-title"}]
H1 = [{"kind": "test-title", "tag": "h1"}]


class Site:
    """Three pages with a title and a heading each; ``pages`` may change between jobs."""

    def __init__(self) -> None:
        self.base = ""
        self.hits: Counter[str] = Counter()
        self.pages = {"/": ("Home", "Welcome", ["/a", "/b"]), "/a": ("A", "About", ["/"]),
                      "/b": ("B", "Blog", [])}
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.hits[request.path] += 1
        if request.path not in self.pages:
            return web.Response(status=404, text="<html>not found</html>",
                                content_type="text/html")
        title, h1, links = self.pages[request.path]
        anchors = "".join(f'<a href="{link}">{link}</a>' for link in links)
        return web.Response(text=f"<html><head><title>{title}</title></head><body><h1>{h1}</h1>"
                                 f"{anchors}</body></html>", content_type="text/html")


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    s = Site()
    s.runner, s.base = await serve(s.handle)
    yield s
    await s.runner.cleanup()


@pytest.fixture
async def stack(settings: Settings) -> AsyncIterator[Stack]:
    st = await Stack(settings.model_copy(update={"extractor_kinds": ("test-title",)})).start()
    yield st
    await st.stop()


async def run_job(stack: Stack, site: Site, extract: list[dict[str, Any]] | None = None,
                  force_crawl: bool = False) -> int:
    spec: dict[str, Any] = {"urls": [site.base + "/"], "depth": 2, "forceCrawl": force_crawl}
    if extract is not None:
        spec["extract"] = extract
    assert stack.http
    async with stack.http.post(stack.base + "/", data=json.dumps(spec),
                               headers={"Content-Type": "application/json"}) as r:
        assert r.status == 200, await r.text()
        job = int((await r.json())["jobId"])
    st = await stack.wait_complete(job)
    assert st["pages"]["failed"] == 0, st
    return job


async def yields(db: asyncpg.Connection, job: int) -> list[tuple[str, str, int, Any]]:
    return [(y.url, y.kind, y.seq, y.value) for _, y in await jobs.job_yields(db, job)]


def titles(site: Site, **by_path: str) -> list[tuple[str, str, int, Any]]:
    return sorted([(site.base + path, "item", 0, {"title": t}) for path, t in by_path.items()])


async def test_a_cached_job_gets_exactly_the_yields_a_fresh_one_got(
        stack: Stack, site: Site, db: asyncpg.Connection) -> None:
    fresh = await run_job(stack, site, TITLE)
    assert site.hits == {"/": 1, "/a": 1, "/b": 1}
    expected = titles(site, **{"/": "Home", "/a": "A", "/b": "B"})
    assert sorted(await yields(db, fresh)) == expected
    cached = await run_job(stack, site, TITLE)
    assert site.hits == {"/": 1, "/a": 1, "/b": 1}, "the second job fetched again"
    assert (await stack.status(cached))["pages"]["cached"] == 3
    assert await yields(db, cached) == await yields(db, fresh)
    assert await stack.result(cached) == await stack.result(fresh)
    # And both are what a fresh crawl of the same spec gets.
    forced = await run_job(stack, site, TITLE, force_crawl=True)
    assert site.hits == {"/": 2, "/a": 2, "/b": 2}
    assert await yields(db, forced) == await yields(db, fresh)


async def test_a_different_ruleset_fetches_again_and_gets_what_a_fresh_crawl_gets(
        stack: Stack, site: Site, db: asyncpg.Connection) -> None:
    by_title = await run_job(stack, site, TITLE)
    by_h1 = await run_job(stack, site, H1)
    assert site.hits == {"/": 2, "/a": 2, "/b": 2}, "another rule set reused a cache"
    assert sorted(await yields(db, by_h1)) == titles(
        site, **{"/": "Welcome", "/a": "About", "/b": "Blog"})
    forced = await run_job(stack, site, H1, force_crawl=True)
    assert await yields(db, forced) == await yields(db, by_h1)
    assert await stack.result(by_h1) == await stack.result(by_title)


async def test_links_only_jobs_still_use_a_cache_built_by_an_extracting_job(
        stack: Stack, site: Site, db: asyncpg.Connection) -> None:
    extracting = await run_job(stack, site, TITLE)
    links_only = await run_job(stack, site)
    assert site.hits == {"/": 1, "/a": 1, "/b": 1}
    assert await yields(db, links_only) == []
    assert await stack.result(links_only) == await stack.result(extracting) != {}


async def test_a_changed_page_gives_each_job_the_version_it_used(
        stack: Stack, site: Site, db: asyncpg.Connection) -> None:
    first = await run_job(stack, site, TITLE)
    site.pages["/a"] = ("A, changed", "About", ["/"])
    second = await run_job(stack, site, TITLE, force_crawl=True)
    assert sorted(await yields(db, first)) == titles(site, **{"/": "Home", "/a": "A", "/b": "B"})
    changed = titles(site, **{"/": "Home", "/a": "A, changed", "/b": "B"})
    assert sorted(await yields(db, second)) == changed
    # A later job of the rule set is answered from the store with the version it extracted last.
    hits = Counter(site.hits)
    third = await run_job(stack, site, TITLE)
    assert site.hits == hits
    assert sorted(await yields(db, third)) == changed
    # A links-only fetch of a new version leaves the rule set without it: fetched again.
    site.pages["/b"] = ("B, changed", "Blog", [])
    await run_job(stack, site, force_crawl=True)
    fourth = await run_job(stack, site, TITLE)
    assert site.hits - hits == {"/": 2, "/a": 2, "/b": 2}
    assert sorted(await yields(db, fourth)) == titles(
        site, **{"/": "Home", "/a": "A, changed", "/b": "B, changed"})
