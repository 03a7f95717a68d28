"""A worker serves the fetcher kinds it is configured for (``workerKinds``), each through its own
fetcher: a job of kind ``static`` (tests/plugins.py, pages from a dict) is completed by a static
worker, and nothing of it goes over HTTP, although a site would answer every one of its URLs."""

from __future__ import annotations

import asyncio
import json

import pytest

from shared.config import Settings
from shared.errors import ConfigError
from tests.e2e.site import TestSite
from tests.e2e.stack import Stack
from tests.plugins import LOG, PAGES
from worker.crawl import run as run_worker

pytestmark = pytest.mark.e2e


@pytest.fixture
def static(settings: Settings) -> Settings:
    return settings.model_copy(update={"fetcher_kinds": ("http", "static"),
                                       "worker_kinds": {"http": 8, "static": 4}})


async def test_a_static_job_is_served_by_the_static_fetcher_only(
        static: Settings, site: TestSite) -> None:
    LOG.clear()
    PAGES.clear()
    root, a, b = site.a + "/static/", site.a + "/static/a", site.a + "/static/b"
    PAGES.update({root: f'<a href="{a}">a</a><a href="{b}">b</a>'.encode(),
                  a: f'<a href="{b}">b</a><a href="/static/missing">m</a>'.encode(),
                  b: b"<p>leaf</p>"})
    stack = await Stack(static).start()
    try:
        assert stack.http
        spec = {"urls": [root], "depth": 2, "fetcher": "static"}
        async with stack.http.post(stack.base + "/", data=json.dumps(spec),
                                   headers={"Content-Type": "application/json"}) as r:
            assert r.status == 200, await r.text()
            job = int((await r.json())["jobId"])
        st = await stack.wait_complete(job, timeout=30)
        assert st["fetcher"] == {"kind": "static", "liveWorkers": 1}
        assert await stack.result(job) == {root: [a, b], a: [b, site.a + "/static/missing"]}
        fetched = sorted(u for step, u in LOG if step == "fetch")
        assert fetched == [root, a, b]  # the missing page is at level 2: a result, not visited
        assert not site.fetched(), "nothing of the static job went over HTTP"
        # The same stack's http worker still serves http jobs.
        other = await stack.post_job([site.b + "/"], depth="1")
        await stack.wait_complete(other)
        assert site.fetched() == {site.b + "/"}
    finally:
        await stack.stop()


async def test_a_kind_without_a_fetcher_is_a_config_error_at_start(settings: Settings) -> None:
    odd = settings.model_copy(update={"worker_kinds": {"carrier-pigeon": 1}})
    with pytest.raises(ConfigError, match="'carrier-pigeon'"):
        await run_worker(odd, asyncio.Event())
