"""A queue cap that never drops (issue 14, SZ-T4): ten times the queue limit of discovered URLs
are all fetched, each once, while the URL and work queues' depths, sampled every 10 ms, never
pass the limit. The rest wait in PostgreSQL (``job_pending``), not in a queue that refuses or
drops them."""

from __future__ import annotations

import asyncio
from collections import Counter
from contextlib import AsyncExitStack

import nats
import pytest
from aiohttp import web

from shared import bus
from shared.config import Settings
from tests.e2e.stack import Stack
from tests.servers import serve

pytestmark = pytest.mark.e2e

K = 100          # both queue limits
LINKS = 10 * K   # discovered URLs, one level below the job URL


async def test_ten_times_the_queue_limit_of_discovered_urls_all_fetched_within_the_cap(
        settings: Settings) -> None:
    hits: Counter[str] = Counter()

    async def handle(request: web.Request) -> web.Response:
        hits[request.path] += 1
        links = "".join(f'<a href="/p{i}">x</a>' for i in range(LINKS)) \
            if request.path == "/" else ""
        return web.Response(text=links, content_type="text/html")

    capped = settings.model_copy(update={"url_queue_limit": K, "work_queue_limit": K})
    depths: dict[str, int] = {"url": 0, "work": 0}
    async with AsyncExitStack() as cleanup:
        runner, base = await serve(handle)
        cleanup.push_async_callback(runner.cleanup)
        stack = await Stack(capped).start(foremen=1, workers=1)
        cleanup.push_async_callback(stack.stop)
        nc = await nats.connect(capped.nats_url)
        cleanup.push_async_callback(nc.close)
        js = nc.jetstream()
        done = asyncio.Event()

        async def sample() -> None:
            while not done.is_set():
                for name, topic in (("url", capped.url_topic),
                                    ("work", bus.work_subject(capped, "http"))):
                    depths[name] = max(depths[name], await bus.stream_depth(js, topic))
                await asyncio.sleep(0.01)

        sampler = asyncio.create_task(sample())
        job = await stack.post_job([base + "/"])
        st = await stack.wait_complete(job, timeout=120)
        done.set()
        await sampler
    print(f"\nlargest depths seen: {depths} (limit {K})")
    assert (st["pages"]["fetched"], st["pages"]["failed"]) == (LINKS + 1, 0)
    assert len(hits) == LINKS + 1 and set(hits.values()) == {1}  # each page once
    assert depths["url"] <= K and depths["work"] <= K, depths
    # the queue was used, not starved: the work queue, where the feeder publishes what it
    # claims to fetch (the URL queue carries only visits answered without a fetch, none here)
    assert depths["work"] > K // 2
