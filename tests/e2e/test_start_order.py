"""Services start in any order: tiers started before NATS wait for it, then work."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from contextvars import ContextVar
from pathlib import Path

import pytest

from foreman.schedule import run as run_foreman
from harvester_ops.embedded import EmbeddedNats, free_port
from shared import bus
from shared.config import Settings
from tests.e2e.site import TestSite
from tests.e2e.stack import Stack
from worker.crawl import run as run_worker

TIER: ContextVar[str] = ContextVar("tier", default="")


class FailedConnects(logging.Handler):
    """Counts the NATS connection errors shared.bus logs, by the tier whose task logged them
    (``TIER``, set when the tier's task was created: a task runs in a copy of that context)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.by_tier: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("NATS: "):
            self.by_tier[TIER.get()] += 1


async def test_tiers_wait_for_nats(settings: Settings, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bus, "WARN_INTERVAL", 0.0)  # every failed attempt is logged
    port = free_port()
    late = settings.model_copy(update={"nats_url": f"nats://127.0.0.1:{port}"})
    stack = Stack(late)
    failed = FailedConnects()
    bus_log = logging.getLogger("shared.bus")
    bus_log.addHandler(failed)
    for name, run in (("foreman", run_foreman), ("worker", run_worker)):
        token = TIER.set(name)
        stack.add(run)
        TIER.reset(token)
    nats = EmbeddedNats(tmp_path / "nats", port)
    site = await TestSite().start()
    try:
        # Each tier found NATS unreachable, waited and tried again, and is still trying.
        deadline = time.monotonic() + 30
        while min(failed.by_tier["foreman"], failed.by_tier["worker"]) < 3:
            assert all(not t.done() for _, t in stack.tasks), "a tier gave up instead of waiting"
            assert time.monotonic() < deadline, f"tiers did not try again: {failed.by_tier}"
            await asyncio.sleep(0.02)
        assert all(not t.done() for _, t in stack.tasks), "a tier gave up instead of waiting"
        await asyncio.to_thread(nats.start)
        await stack.start(foremen=0, workers=0)  # the web server, now that NATS is up
        job = await stack.post_job([site.a + "/b.html"], depth="1")
        await stack.wait_complete(job, timeout=60)
        assert await stack.result(job) == site.expected_result(site.a + "/b.html", 1)
    finally:
        bus_log.removeHandler(failed)
        try:
            if nats.proc is None:  # a tier still connecting can only stop once it has connected
                await asyncio.to_thread(nats.start)
            await stack.stop()  # raises if a tier failed
        finally:
            await site.stop()
            await asyncio.to_thread(nats.stop)
