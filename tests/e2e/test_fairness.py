"""Fairness between jobs (issue 14): a job with 200,000 visits queued on one host does not
starve a small job on that host. Before the fair claim, the small job made no progress: the
feeder published the big job's older visits first, the worker's host gate deferred them, and
the small job's visits waited behind thousands of those each trip.

The big job's visits are seeded by SQL (as its root's links would be: level 1, pending), so no
200,000 fetches are made: the host serves a few of them at its politeness (2 in flight, 0.5 s
between starts) while the small job runs."""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack

import asyncpg
import pytest
from aiohttp import web

from foreman.schedule import run as run_foreman
from shared.config import HostLimit, Settings
from tests.e2e.stack import Stack
from tests.servers import serve
from worker.crawl import run as run_worker

pytestmark = pytest.mark.e2e

BIG = 200_000


async def seed_pending(db: asyncpg.Connection, job: int, base: str, n: int) -> None:
    """``n`` visits of ``job`` at level 1 under its job URL, pending and unpublished."""
    async with db.transaction():
        origin = await db.fetchval("SELECT url_id FROM job_url WHERE job_id = $1", job)
        await db.execute("""
            WITH u AS (
                INSERT INTO url (url) SELECT $2 || '/big/' || i FROM generate_series(1, $4) i
                RETURNING id)
            , v AS (INSERT INTO job_visit (job_id, url_id, level) SELECT $1, id, 1 FROM u)
            INSERT INTO job_pending (job_id, url_id, origin_id, refer_id, host, rank)
            SELECT $1, id, $3, $3, $2, harvester_rank('bfs', 1, 0, nextval('job_pending_seq'))
            FROM u""", job, base, origin, n)
        await db.execute("UPDATE job_url SET pending = pending + $2 WHERE job_id = $1", job, n)


async def test_a_small_job_progresses_beside_a_200000_page_job_on_its_host(
        settings: Settings, db: asyncpg.Connection) -> None:
    log: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        log.append(request.path)
        links = "".join(f'<a href="/small/{i}">x</a>' for i in range(4)) \
            if request.path == "/small" else ""
        return web.Response(text=links, content_type="text/html")

    async with AsyncExitStack() as cleanup:
        runner, base = await serve(handle)
        cleanup.push_async_callback(runner.cleanup)
        polite = settings.model_copy(update={"host_limits": {
            base.split("://")[1]: HostLimit(concurrency=2, delay=0.5)}})
        stack = await Stack(polite).start(foremen=0, workers=0)
        cleanup.push_async_callback(stack.stop)
        big = await stack.post_job([f"{base}/big/0"])
        await seed_pending(db, big, base, BIG)
        stack.add(run_foreman)
        stack.add(run_worker)
        deadline = time.monotonic() + 30
        while sum(p.startswith("/big/") for p in log) < 5:  # the big job is crawling
            assert time.monotonic() < deadline, log
            await asyncio.sleep(0.05)

        started = time.monotonic()
        small = await stack.post_job([f"{base}/small"])
        st = await stack.wait_complete(small, timeout=30)
        print(f"\nthe small job took {time.monotonic() - started:.1f}s beside the big one")
        assert (st["pages"]["fetched"], st["pages"]["failed"]) == (5, 0)
        assert sorted(p for p in log if p.startswith("/small")) == [
            "/small", "/small/0", "/small/1", "/small/2", "/small/3"]
        left = await db.fetchval("SELECT count(*) FROM job_pending WHERE job_id = $1", big)
        assert left > BIG - 1_000  # still crawling
