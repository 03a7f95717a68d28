"""SZ-T2 end to end: a URL is fetched once per job, however many pages link to it and however
its query is written, with two workers committing at once (the fingerprint is the canonical
URL: ``job_visit``'s key, inserted ``ON CONFLICT`` in the parent's commit); a job's
``fingerprint.ignoreParams`` makes URLs that differ only by those parameters one request; a
job with a ``bloom`` filter (a saturated one: nearly every link "maybe seen") gets the exact
link graph, each page fetched once; a job's ``fingerprint.keepFragment`` makes ``/p#a`` and
``/p#b`` two URLs of the job, each fetched (without its fragment on the wire) and each a page of
its result."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

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
        self.hits[request.raw_path] += 1  # the request line's target, as sent
        path = request.path
        if path == "/":
            return html(*(f"/p{i}" for i in range(PAGES)))
        if path == "/frag":
            return html("/p#a", "/p#b", "/p", "/p?utm_source=z#b", "#top")
        if path == "/p":
            return html("/q#s")
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


DEFAULT_PAGES = {"/frag": ["/frag", "/p", "/p?utm_source=z"], "/p": ["/q"],
                 "/p?utm_source=z": ["/q"]}
DEFAULT_HITS = {"/frag": 1, "/p": 1, "/p?utm_source=z": 1}
ROOT = ["/frag#top", "/p", "/p#a", "/p#b"]


@pytest.mark.parametrize(("fingerprint", "pages", "hits"), [
    (None, DEFAULT_PAGES, DEFAULT_HITS),
    ({"keepFragment": False}, DEFAULT_PAGES, DEFAULT_HITS),
    ({"keepFragment": True},
     {"/frag#in": [*ROOT, "/p?utm_source=z#b"], "/frag#top": [*ROOT, "/p?utm_source=z#b"],
      "/p": ["/q#s"], "/p#a": ["/q#s"], "/p#b": ["/q#s"], "/p?utm_source=z#b": ["/q#s"]},
     {"/frag": 2, "/p": 3, "/p?utm_source=z": 1}),
    ({"keepFragment": True, "ignoreParams": ["utm_*"]},
     {"/frag#in": ROOT, "/frag#top": ROOT, "/p": ["/q#s"], "/p#a": ["/q#s"], "/p#b": ["/q#s"]},
     {"/frag": 2, "/p": 3}),
], ids=["default", "keepFragment-false", "keepFragment", "keepFragment-ignoreParams"])
async def test_kept_fragments_are_urls_of_the_job_fetched_without_them(
        stack: Stack, local: Site, fingerprint: dict[str, Any] | None,
        pages: dict[str, list[str]], hits: dict[str, int]) -> None:
    """``/frag#in`` links ``/p#a``, ``/p#b``, ``/p`` (and ``#top``, itself): with
    ``keepFragment`` each is a URL of the job, its page fetched (``/p`` three times, never with
    a fragment in the request line) and a page of the result; without, one URL, one request."""
    spec: dict[str, Any] = {"urls": [local.base + "/frag#in"], "depth": 2}
    if fingerprint is not None:
        spec["fingerprint"] = fingerprint
    job = await stack.post_spec(spec)
    st = await stack.wait_complete(job)
    assert await stack.result(job) == {local.base + page: [local.base + u for u in links]
                                       for page, links in pages.items()}
    assert local.hits == Counter(hits), local.hits
    assert st["pages"]["fetched"] == sum(hits.values())


@pytest.mark.parametrize("fingerprint", [{"keepFragment": True}, {"ignoreParams": ["utm_*"]}],
                         ids=["keepFragment", "ignoreParams"])
async def test_a_default_job_is_never_answered_with_anothers_rewritten_links(
        stack: Stack, local: Site, fingerprint: dict[str, Any]) -> None:
    """A page's links are stored once per URL: a job whose fingerprint rewrites them (fragments
    kept, parameters dropped) keeps its answers to itself, so a default job crawling the same
    pages just after gets the links as they are, not the other job's."""
    first = await stack.post_spec({"urls": [local.base + "/frag#in"], "depth": 2,
                                   "fingerprint": fingerprint})
    await stack.wait_complete(first)
    job = await stack.post_spec({"urls": [local.base + "/frag"], "depth": 2})
    await stack.wait_complete(job)
    assert await stack.result(job) == {local.base + page: [local.base + u for u in links]
                                       for page, links in DEFAULT_PAGES.items()}
