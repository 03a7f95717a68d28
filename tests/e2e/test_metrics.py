"""Metrics and health on every tier: the web server's /metrics and /readyz, the foreman's and
the worker's ops ports (metricsAddr), after a crawl of a small local site."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import nats
import pytest

from foreman.schedule import run as run_foreman
from shared import ops_http
from shared.config import Settings
from tests.e2e.site import TestSite
from tests.e2e.stack import Stack
from worker.crawl import run as run_worker

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def ops_stack(settings: Settings) -> AsyncIterator[tuple[Stack, int, int]]:
    foreman_port, worker_port = free_port(), free_port()
    st = await Stack(settings).start(foremen=0, workers=0)
    for port, run in ((foreman_port, run_foreman), (worker_port, run_worker)):
        st.add(run, settings.model_copy(update={"metrics_addr": f"127.0.0.1:{port}",
                                                "housekeeping_interval": 0.05}))
    yield st, foreman_port, worker_port
    await st.stop()


def total(text: str, name: str) -> float:
    """The sum of a metric's samples (every label set)."""
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE))


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with http.get(url) as r:
        return r.status, await r.text()


async def test_metrics_and_readiness(ops_stack: tuple[Stack, int, int], site: TestSite,
                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="worker.pipeline")
    stack, foreman_port, worker_port = ops_stack
    job = await stack.post_job([site.a + "/"], depth="2")
    await stack.wait_complete(job)
    # One log line per visit, carrying its job and URL (the JSON log's "job" and "url").
    visited = [(getattr(r, "job", None), getattr(r, "url", None)) for r in caplog.records
               if r.name == "worker.pipeline" and r.getMessage().startswith(f"job {job} fetched")]
    assert (job, site.a + "/") in visited
    assert len(visited) == len(set(visited))
    async with aiohttp.ClientSession() as http:
        for base in (stack.base, f"http://127.0.0.1:{foreman_port}",
                     f"http://127.0.0.1:{worker_port}"):
            status, text = await get(http, base + "/metrics")
            assert status == 200
            assert total(text, "harvester_fetches_total") > 0
            assert total(text, "harvester_commit_batch_size_count") > 0
            assert total(text, "harvester_pages_parsed_total") > 0
            assert total(text, "harvester_fetch_seconds_count") > 0
            assert 'harvester_fetch_seconds_bucket{kind="http",le="+Inf"}' in text
            assert total(text, "harvester_fetch_bytes_total") > 0
            status, _ = await get(http, base + "/readyz")
            assert status == 200
        # Canonical routes as labels, never the path of one job.
        _, text = await get(http, stack.base + "/metrics")
        assert 'route="/status/{job_id}",status="200"' in text
        assert f"/status/{job}" not in text
        status, text = await get(http, f"http://127.0.0.1:{foreman_port}/metrics")
        assert total(text, "harvester_visits_forwarded_total") > 0
        # The housekeeping sets the job gauges (its interval is 50 ms here).
        deadline = time.monotonic() + 10
        while 'harvester_jobs{state="completed"} 1.0' not in text:
            assert time.monotonic() < deadline, text
            await asyncio.sleep(0.05)
            _, text = await get(http, f"http://127.0.0.1:{foreman_port}/metrics")
        assert total(text, "harvester_pending_visits") == 0
        for port in (foreman_port, worker_port):
            status, _ = await get(http, f"http://127.0.0.1:{port}/healthz")
            assert status == 200


async def test_readyz_503_when_postgres_is_unreachable(settings: Settings) -> None:
    closed = free_port()
    pool = await asyncpg.create_pool(f"postgresql://x@127.0.0.1:{closed}/x", min_size=0)
    nc = await nats.connect(settings.nats_url)
    try:
        async with ops_http.serve("127.0.0.1:0", ops_http.readiness(pool, nc)) as port, \
                aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/readyz") as r:
                assert r.status == 503
                body = await r.json()
            assert set(body) == {"code", "message"} and "PostgreSQL" in body["message"]
            async with http.get(f"http://127.0.0.1:{port}/healthz") as r:
                assert r.status == 200
    finally:
        await nc.close()
        await pool.close()
