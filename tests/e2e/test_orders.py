"""Queue orders through the tiers (issue 14, SZ-T1): with both queue limits and the worker's
concurrency at 1 the crawl is strictly sequential, so the order the site sees the requests in
is the claim's: fifo A, B, C; lifo C, B, A; priority (A = 1, B = C = 5) B, C, A."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

import pytest
from aiohttp import web

from shared.config import Settings
from tests.e2e.stack import Stack
from tests.servers import serve

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(("order", "extra", "expected"), [
    ("fifo", {}, "abc"),
    ("lifo", {}, "cba"),
    ("priority", {"priorities": [{"pattern": "/a$", "priority": 1},
                                 {"pattern": "/[bc]$", "priority": 5}]}, "bca"),
])
async def test_a_jobs_urls_are_fetched_in_its_order(
        settings: Settings, order: str, extra: dict[str, Any], expected: str) -> None:
    log: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        log.append(request.path.rsplit("/", 1)[1])
        return web.Response(text="", content_type="text/html")

    sequential = settings.model_copy(update={"url_queue_limit": 1, "work_queue_limit": 1,
                                             "concurrency": 1})
    async with AsyncExitStack() as cleanup:
        runner, base = await serve(handle)
        cleanup.push_async_callback(runner.cleanup)
        stack = await Stack(sequential).start(foremen=1, workers=1)
        cleanup.push_async_callback(stack.stop)
        job = await stack.post_spec({"urls": [f"{base}/{order}/{p}" for p in "abc"],
                                     "depth": 0, "order": order, **extra})
        st = await stack.wait_complete(job, timeout=30)
    assert st["pages"]["fetched"] == 3
    assert "".join(log) == expected
