"""A NATS server that comes back without its store (restarted on an empty store directory) in the
middle of a job: the tiers create the streams and consumers again, and the job completes."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from harvester_ops.embedded import EmbeddedNats
from shared.config import Settings
from tests.e2e.site import TestSite
from tests.e2e.stack import Stack

pytestmark = pytest.mark.e2e

DEPTH = 4


def lose_store(server: EmbeddedNats) -> None:
    server.stop()
    shutil.rmtree(server.data_dir)
    server.start()  # same port, empty store: no streams, no consumers, no messages


async def test_a_job_completes_after_nats_loses_its_store(settings: Settings,
                                                          tmp_path: Path) -> None:
    own = EmbeddedNats(tmp_path / "nats")
    await asyncio.to_thread(own.start)
    # Visits whose messages went with the store are published again by the watchdog.
    fast = settings.model_copy(update={"nats_url": own.url, "stale_after": 2.0,
                                       "watchdog_interval": 0.2})
    site = await TestSite().start()
    held = site.a + "/a.html"
    site.gates[held] = asyncio.Event()  # its fetch waits here: work in flight at the fault
    stack = Stack(fast)
    try:
        await stack.start()
        job = await stack.post_job([site.a + "/"], depth=str(DEPTH))
        await _until(lambda: site.hits[held] > 0)
        at_fault = await stack.status(job)
        assert at_fault["pending"] > 0 and not at_fault["completed"]
        await asyncio.to_thread(lose_store, own)
        assert site.hits[held] == 1 and not site.gates[held].is_set(), "the fetch was not in flight"
        site.gates[held].set()
        st = await stack.wait_complete(job, timeout=60)
        assert st["completed"] == 1
        assert await stack.result(job) == site.expected_result(site.a + "/", DEPTH)
        # A new job after the loss: the web server's publish goes to the recreated stream.
        second = await stack.post_job([site.a + "/b.html"], depth="1")
        await stack.wait_complete(second, timeout=30)
        assert await stack.result(second) == site.expected_result(site.a + "/b.html", 1)
    finally:
        try:
            await stack.stop()  # raises if a tier failed
        finally:
            await site.stop()
            await asyncio.to_thread(own.stop)


async def _until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)
