"""End to end: job control answered at plan time (issue 16). A paused job fetches nothing, also
across a restart of every tier, and completes after its resume as an undisturbed run does; a
cancelled job drops its queued visits unfetched, keeps its results so far and completes; a
scope change drops the queued visits its new deny patterns match. The job state changes
through ``shared.db.jobs`` on a database connection (as the web server's routes do)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import asyncpg
import pytest
from aiohttp import web

from shared.config import Settings
from shared.db import jobs
from tests.e2e.stack import Stack
from tests.servers import serve

pytestmark = pytest.mark.e2e


class SlowSite:
    """``/`` links ``/p0`` ... ``/p<n-1>`` (and ``/d0`` ... when ``denied``); each page answers
    after ``delay`` seconds and links nothing. Counts fetches and the ones in flight."""

    def __init__(self, n: int, delay: float, denied: int = 0) -> None:
        self.n, self.delay, self.denied = n, delay, denied
        self.hits: Counter[str] = Counter()
        self.in_flight = 0
        self.base = ""

    async def handle(self, request: web.Request) -> web.Response:
        if request.path == "/":
            links = [f"/p{i}" for i in range(self.n)] + [f"/d{i}" for i in range(self.denied)]
            body = "".join(f'<a href="{u}">x</a>' for u in links)
            return web.Response(text=f"<html><body>{body}</body></html>", content_type="text/html")
        self.in_flight += 1
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        self.hits[request.path] += 1
        return web.Response(text="<html><body>leaf</body></html>", content_type="text/html")

    def fetched(self, prefix: str = "/") -> int:
        return sum(n for p, n in self.hits.items() if p.startswith(prefix))


@pytest.fixture
async def slow() -> AsyncIterator[Callable[..., Awaitable[SlowSite]]]:
    runners: list[web.AppRunner] = []

    async def start(n: int, delay: float, denied: int = 0) -> SlowSite:
        site = SlowSite(n, delay, denied)
        runner, site.base = await serve(site.handle)
        runners.append(runner)
        return site

    yield start
    for r in runners:
        await r.cleanup()


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def processed(stack: Stack, job: int) -> int:
    return int((await stack.status(job))["pages"]["processed"])


def paced(settings: Settings, **more: object) -> Settings:
    """Two requests in flight on the site's host: a job that lasts."""
    return settings.model_copy(update={"host_concurrency": 2, "batch_size": 8, **more})


async def test_a_paused_job_fetches_nothing_across_a_restart_and_completes_after_resume(
        settings: Settings, db: asyncpg.Connection, slow: Callable[..., Awaitable[SlowSite]]
) -> None:
    s = paced(settings)
    site = await slow(30, 0.1)
    stack = await Stack(s).start()
    try:
        job = await stack.post_job([site.base + "/"], depth="2")
        await until(lambda: _ge(processed(stack, job), 4))
        assert await jobs.pause_job(db, job) == "paused"
    finally:
        await stack.stop()  # every tier: in-flight visits finish or come back
    stack = await Stack(s).start()  # the same settings and database
    try:
        before, hits = await processed(stack, job), site.fetched()
        assert before < 31
        deadline = time.monotonic() + 1.5  # a paused job stays put: nothing fetched meanwhile
        while time.monotonic() < deadline:
            assert await processed(stack, job) == before
            assert site.fetched() == hits
            await asyncio.sleep(0.1)
        assert (await stack.status(job))["pending"] > 0
        assert await jobs.resume_job(db, job) == "running"
        st = await stack.wait_complete(job)
        assert st["pages"]["processed"] == 31
        undisturbed = await stack.post_job([site.base + "/"], depth="2")
        await stack.wait_complete(undisturbed)
        assert await stack.result(job) == await stack.result(undisturbed)
    finally:
        await stack.stop()


@asynccontextmanager
async def crawling(s: Settings, site: SlowSite, fetched: int) -> AsyncIterator[tuple[Stack, int]]:
    """A stack crawling ``site`` two levels deep, once it has fetched ``fetched`` pages."""
    stack = await Stack(s).start()
    try:
        job = await stack.post_job([site.base + "/"], depth="2")
        await until(lambda: asyncio.sleep(0, site.fetched() >= fetched))
        yield stack, job
    finally:
        await stack.stop()


async def _ge(value: Awaitable[int], n: int) -> bool:
    return await value >= n


async def test_cancel_drops_queued_visits_unfetched_and_keeps_results(
        settings: Settings, db: asyncpg.Connection, slow: Callable[..., Awaitable[SlowSite]]
) -> None:
    s = paced(settings)
    site = await slow(200, 0.1)
    async with crawling(s, site, fetched=3) as (stack, job):
        assert await jobs.cancel_job(db, job) == "cancelled"
        at_cancel = site.fetched() + site.in_flight
        st = await stack.wait_complete(job)
        assert st["pending"] == 0
        assert await db.fetchval("SELECT state FROM job WHERE id = $1", job) == "cancelled"
        # Fetches in flight finish; at most a batch already handed to the worker follows.
        assert site.fetched() <= at_cancel + s.host_concurrency + s.batch_size, site.hits
        assert site.fetched() < 200
        result = await stack.result(job)
        assert len(result[site.base + "/"]) == 200  # the job URL's result (all its links) kept
        assert st["pages"]["fetched"] >= 3
        await stack.wait_idle()
        assert await db.fetchval("SELECT count(*) FROM job_pending WHERE job_id = $1", job) == 0


async def test_a_scope_change_drops_the_queued_visits_it_denies(
        settings: Settings, db: asyncpg.Connection, slow: Callable[..., Awaitable[SlowSite]]
) -> None:
    s = paced(settings)
    site = await slow(20, 0.05, denied=100)
    async with crawling(s, site, fetched=2) as (stack, job):
        await jobs.change_scope(db, job, [r"/d\d+$"])
        at_change = site.fetched("/d") + site.in_flight
        st = await stack.wait_complete(job)
        assert site.fetched("/p") == 20  # the rest of the job runs as before
        assert site.fetched("/d") <= at_change + s.host_concurrency + s.batch_size, site.hits
        assert st["pages"]["processed"] < 121


async def test_a_cancel_drops_the_visits_queued_at_their_host_in_the_worker(
        settings: Settings, db: asyncpg.Connection, slow: Callable[..., Awaitable[SlowSite]]
) -> None:
    """Visits past their host's cap wait in the worker for its slots (``HostGate.take_queued``),
    planned while the job ran: a cancel meanwhile drops them when their slot comes, unfetched.
    One request in flight on the host, the worker's 8 slots mostly queued visits: after the
    cancel, only what was in flight and what got its slot before the job's state was read
    again (``JOB_STATE_TTL``) is fetched."""
    s = paced(settings, host_concurrency=1, concurrency=8)
    site = await slow(60, 0.2)
    async with crawling(s, site, fetched=4) as (stack, job):
        assert await jobs.cancel_job(db, job) == "cancelled"
        at_cancel = site.fetched() + site.in_flight
        await stack.wait_complete(job)
        await stack.wait_idle()
        assert site.fetched() <= at_cancel + 1, site.hits
        assert await db.fetchval("SELECT count(*) FROM job_pending WHERE job_id = $1", job) == 0
