"""Services start in any order: tiers started before NATS wait for it, then work."""

from __future__ import annotations

import asyncio
from pathlib import Path

from shared.config import Settings
from shared.embedded import EmbeddedNats, free_port
from tests.e2e.site import TestSite
from tests.e2e.stack import Stack


async def test_tiers_wait_for_nats(settings: Settings, tmp_path: Path) -> None:
    port = free_port()
    late = settings.model_copy(update={"nats_url": f"nats://127.0.0.1:{port}"})
    stack = Stack(late)
    stack.add(__import__("foreman.schedule", fromlist=["run"]).run)
    stack.add(__import__("worker.crawl", fromlist=["run"]).run)
    await asyncio.sleep(1.0)  # the tiers are retrying their connection now
    assert all(not t.done() for _, t in stack.tasks), "a tier gave up instead of waiting"
    nats = EmbeddedNats(tmp_path / "nats", port)
    await asyncio.to_thread(nats.start)
    site = await TestSite().start()
    try:
        await stack.start(foremen=0, workers=0)  # the web server, now that NATS is up
        job = await stack.post_job([site.a + "/b.html"], depth="1")
        await stack.wait_complete(job, timeout=60)
        assert await stack.result(job) == site.expected_result(site.a + "/b.html", 1)
    finally:
        await stack.stop()
        await site.stop()
        await asyncio.to_thread(nats.stop)
