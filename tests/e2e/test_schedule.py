"""``POST /`` accepts every job it commits: a job larger than the URL queue's room, and many jobs
at once, get their ids, and the feeder publishes their visits as the queue makes room."""

from __future__ import annotations

import asyncio
import random
import time

import asyncpg
import pytest

from foreman.schedule import run as run_foreman
from shared.config import Settings
from tests.e2e.stack import Stack
from tests.e2e.test_result_readers import lock_waiters

pytestmark = pytest.mark.e2e


async def cache_pages(db: asyncpg.Connection, urls: list[str]) -> None:
    """Store the pages as freshly fetched (200, no links): their visits complete from the store,
    no request leaves the machine."""
    await db.execute("""
        INSERT INTO url (url, mime, status, crawled_on, fetched_on)
        SELECT u, 'text/html', 200, now(), now() FROM unnest($1::text[]) u""", urls)


async def test_a_job_larger_than_the_queue_is_accepted_and_completes(
        settings: Settings, db: asyncpg.Connection) -> None:
    """10,000 URLs (the documented maximum) on a URL queue whose hard cap is 1,150 messages."""
    urls = [f"http://cached.example/{i}" for i in range(10_000)]
    await cache_pages(db, urls)
    small = settings.model_copy(update={"url_queue_limit": 100, "work_queue_limit": 100})
    stack = await Stack(small).start(foremen=1, workers=0)
    try:
        job = await stack.post_job(urls)
        st = await stack.wait_complete(job, timeout=240)
        assert (st["completed"], st["pages"]["cached"], st["pages"]["failed"]) == (10_000, 10_000, 0)
    finally:
        await stack.stop()


async def test_concurrent_jobs_on_a_busy_service_all_get_ids(settings: Settings,
                                                             db: asyncpg.Connection) -> None:
    """A backlog fills the URL queue (no foreman is consuming yet); then 50 POSTs of 20 URLs at
    once, overlapping and in different orders: every one is accepted, and once a foreman runs
    every job completes."""
    backlog = [f"http://backlog.example/{i}" for i in range(1_100)]
    urls = [f"http://cached.example/{i}" for i in range(200)]
    await cache_pages(db, backlog + urls)
    stack = await Stack(settings.model_copy(update={"url_queue_limit": 100,
                                                    "max_job_urls": 2_000})).start(0, 0)
    try:
        first = await stack.post_job(backlog)
        rnd = random.Random(9)
        bodies = [rnd.sample(urls, 20) for _ in range(50)]
        answers = await asyncio.gather(*(stack.request("POST", "/", "\n".join(b)) for b in bodies))
        assert [status for status, _, _ in answers] == [200] * 50, answers
        jobs = [body["jobId"] for _, body, _ in answers]
        assert len({first, *jobs}) == 51
        stack.add(run_foreman)
        assert (await stack.wait_complete(first, timeout=120))["completed"] == 1_100
        for job in jobs:
            assert (await stack.wait_complete(job, timeout=60))["completed"] == 20
    finally:
        await stack.stop()


async def test_a_deadlocked_create_is_tried_again(settings: Settings,
                                                  db: asyncpg.Connection) -> None:
    """Another transaction and the job's creation wait for each other: PostgreSQL aborts the
    creation (its deadlock check runs first), and the web server runs it again."""
    await cache_pages(db, ["http://locked.example/"])
    stack = await Stack(settings).start(foremen=0, workers=0)
    try:
        async with db.transaction():
            await db.execute("SET LOCAL deadlock_timeout = '60s'")  # the creation detects it
            await db.execute("SELECT FROM url WHERE url = 'http://locked.example/' FOR UPDATE")
            post = asyncio.create_task(stack.request("POST", "/", "http://locked.example/"))
            deadline = time.monotonic() + 30
            while not await lock_waiters(db):
                assert time.monotonic() < deadline, "the creation did not wait for the lock"
                await asyncio.sleep(0.02)
            # The creation holds its new job row; wait for it, closing the cycle.
            await db.execute("INSERT INTO job (id, max_level) VALUES ($1, 1)",
                             await db.fetchval("SELECT last_value FROM job_id_seq"))
        status, body, _ = await asyncio.wait_for(post, 30)
        assert status == 200, body
        assert await db.fetchval("SELECT count(*) FROM job_url WHERE job_id = $1",
                                 body["jobId"]) == 1
    finally:
        await stack.stop()
