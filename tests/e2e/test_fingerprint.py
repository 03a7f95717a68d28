"""SZ-T2 end to end: a URL is fetched once per job, however many pages link to it and however
its query is written, with two workers committing at once (the fingerprint is the canonical
URL: ``job_visit``'s key, inserted ``ON CONFLICT`` in the parent's commit); a job's
``fingerprint.ignoreParams`` makes URLs that differ only by those parameters one request; a
job with a ``bloom`` filter (a saturated one: nearly every link "maybe seen") gets the exact
link graph, each page fetched once."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from shared.config import Settings
from tests.e2e.site import TestSite
from tests.e2e.stack import Stack
from tests.servers import serve

pytestmark = pytest.mark.e2e
PAGES = 40


def html(*links: str) -> web.Response:
    body = "".join(f'<a href="{u}">x</a>' for u in links)
    return web.Response(text=f"<html><body>{body}</body></html>", content_type="text/html")


class Site:
    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.base = ""

    async def handler(self, request: web.Request) -> web.StreamResponse:
        self.hits[request.path_qs] += 1
        path = request.path
        if path == "/":
            return html(*(f"/p{i}" for i in range(PAGES)))
        if path.startswith("/p"):
            return html("/target", "/target?b=1&a=2", "/target?a=2&b=1#x", f"{self.base}/target#y")
        if path == "/utm":
            return html("/t?utm_source=a", "/t?utm_source=b&id=1", "/t?id=1&UTM_medium=z",
                        "/t?id=1", "/t", "/t?sid=9")
        return html()


@pytest.fixture
async def local() -> AsyncIterator[Site]:
    s = Site()
    runner, s.base = await serve(s.handler)
    yield s
    await runner.cleanup()


async def test_a_url_linked_from_many_pages_is_fetched_once_by_two_workers(
        settings: Settings, local: Site) -> None:
    stack = await Stack(settings).start(workers=2)
    try:
        job = await stack.post_spec({"urls": [local.base + "/"], "depth": 3})
        st = await stack.wait_complete(job)
    finally:
        await stack.stop()
    assert local.hits["/target"] == 1
    assert local.hits["/target?a=2&b=1"] == 1  # its query sorted: one URL, one request
    assert "/target?b=1&a=2" not in local.hits
    assert all(n == 1 for n in local.hits.values()), local.hits
    assert len(local.hits) == 1 + PAGES + 2
    assert st["pages"]["fetched"] == 1 + PAGES + 2


async def test_ignored_params_make_one_request(stack: Stack, local: Site) -> None:
    job = await stack.post_spec({"urls": [local.base + "/utm?utm_campaign=x"], "depth": 2,
                                 "fingerprint": {"ignoreParams": ["utm_*", "SID"]}})
    await stack.wait_complete(job)
    assert local.hits == Counter({"/utm": 1, "/t?id=1": 1, "/t": 1}), local.hits
    result = await stack.result(job)
    assert result == {f"{local.base}/utm": [f"{local.base}/t", f"{local.base}/t?id=1"]}


async def test_a_job_with_a_bloom_filter_gets_the_link_graph(stack: Stack, site: TestSite,
                                                             settings: Settings) -> None:
    job = await stack.post_spec({"urls": [site.a + "/"], "depth": 3,
                                 "bloom": {"capacity": 1000, "errorRate": 0.5}})
    await stack.wait_complete(job)
    assert await stack.result(job) == site.expected_result(site.a + "/", 3)
    error_page = f"{site.a}/error.html"
    assert all(n == 1 for u, n in site.hits.items() if u != error_page), site.hits
