"""The live worker registry (issue 13; reference-seed-systems.md HD-3, HD-4): every worker is
listed with its numbers; one killed mid-crawl (SIGKILL: no clean stop) drops out after
workerTimeout while the others stay, nothing evicted by IP, and the crawl completes exactly;
a slow worker ends up with fewer visits than fast ones (pull-based dispatch ranks them)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from shared.config import Settings
from tests.e2e.stack import Stack
from tests.e2e.test_github import TOKENS, github_settings
from tests.fake_github import FakeGitHub
from worker.crawl import run as run_worker

pytestmark = pytest.mark.e2e


async def listed(stack: Stack) -> list[dict[str, Any]]:
    status, body, _ = await stack.request("GET", "/workers")
    assert status == 200, body
    return list(body["workers"])


async def until(stack: Stack, ok: Any, what: str, timeout: float = 20) -> list[dict[str, Any]]:
    """Poll /workers until ``ok(workers)``; its last answer."""
    deadline = time.monotonic() + timeout
    while True:
        workers = await listed(stack)
        if ok(workers):
            return workers
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: {workers}")
        await asyncio.sleep(0.05)


def worker_process(settings: Settings, tmp: Path) -> subprocess.Popen[bytes]:
    """A worker as a process of its own (the github kind), so that it can be SIGKILLed."""
    config = tmp / "worker.json"
    config.write_text(json.dumps({
        "databaseURL": settings.database_url, "natsURL": settings.nats_url,
        "fetcherKinds": ["http", "github"], "githubBaseUrl": settings.github_base_url,
        "githubPerPage": settings.github_per_page, "heartbeatInterval": "200ms",
        "workerTimeout": "1s", "ackWait": "2s", "batchWait": "5ms", "retryBase": "50ms",
        "hostConcurrency": 16, "hostDelay": "0s", "robots": False}))
    env = dict(os.environ, HARVESTER_URL_TOPIC=settings.url_topic,
               HARVESTER_WORK_TOPIC=settings.work_topic, HARVESTER_TASK_TOPIC=settings.task_topic,
               HARVESTER_GITHUB_TOKENS=",".join(TOKENS), HARVESTER_LOG_LEVEL="WARNING")
    with open(tmp / "worker.log", "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "worker", "-config", str(config),
                                 "-kind", "github=4"], env=env, stdout=log,
                                stderr=subprocess.STDOUT)


async def test_registry_live_and_dropout(settings: Settings, tmp_path: Path) -> None:
    async with FakeGitHub() as fake:
        s = github_settings(settings, fake, worker_timeout=1.0, ack_wait=2.0)
        stack = await Stack(s).start(workers=2)
        proc = worker_process(s, tmp_path)
        try:
            workers = await until(stack, lambda w: len(w) == 3, "3 workers listed")
            here = [w for w in workers if w["pid"] == os.getpid()]
            assert len(here) == 2 and len({w["hostname"] for w in workers}) == 1  # one host
            other = next(w for w in workers if w["pid"] == proc.pid)
            assert "github" in other["kinds"]
            fake.delay["*"] = 0.03  # a crawl long enough to kill a worker in the middle of it
            crawl = asyncio.create_task(stack.request(
                "GET", "/contributors", user="hub", depth="2"))
            await until(stack, lambda w: any(
                x["id"] == other["id"] and ((x.get("stats") or {}).get("fetched") or 0) >= 3
                for x in w), "the process worker fetched", 60)
            proc.send_signal(signal.SIGKILL)  # no clean stop: its row stays until the timeout
            await asyncio.to_thread(proc.wait, 30)
            left = await until(stack, lambda w: len(w) == 2, "the killed worker dropped out")
            assert {w["id"] for w in left} == {w["id"] for w in here}  # the others stayed
            status, body, _ = await crawl
            assert status == 200, body
            assert set(body["close_contributors"]) == fake.graph.closure("hub", 2)
            assert body["failed"] == []
            assert {w["id"] for w in await listed(stack)} == {w["id"] for w in here}
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            await stack.stop()


async def test_slow_worker_gets_less(settings: Settings) -> None:
    async with FakeGitHub() as fake:
        s = github_settings(settings, fake, worker_kinds={"github": 2})
        stack = await Stack(s).start(workers=2)
        # The slow one serves http too: its kinds tell it apart in /workers (same host, pid).
        stack.add(run_worker, s.model_copy(update={"work_delay": 0.4,
                                                   "worker_kinds": {"github": 2, "http": 1}}))
        try:
            await until(stack, lambda w: len(w) == 3, "3 workers listed")
            status, body, _ = await stack.request("GET", "/contributors", user="hub", depth="2")
            assert status == 200, body
            assert set(body["close_contributors"]) == fake.graph.closure("hub", 2)
            total = sum(fake.hits.values())
            workers = await until(stack, lambda w: sum(
                (x.get("stats") or {}).get("fetched", 0) for x in w) == total,
                "every fetch reported by a heartbeat")
            slow = next(x["stats"]["fetched"] for x in workers if "http" in x["kinds"])
            fast = [x["stats"]["fetched"] for x in workers if "http" not in x["kinds"]]
            assert len(fast) == 2 and all(slow < n for n in fast), workers
            assert slow > 0  # deprioritised by its own pace, not evicted
        finally:
            await stack.stop()
