"""The foreman's watchdog (foreman/schedule.py ``watch_once``, shared/db/frontier.py
``requeue_stale`` and ``abandoned``) on a real PostgreSQL: stale visits are published again in
bounded batches that skip rows a commit holds, and visits that never finish are failed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from foreman.schedule import watch_once
from shared.config import Settings
from shared.db import jobs, visits
from shared.db.frontier import DueFrontier
from shared.db.pool import open_pool


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    async with open_pool(settings.database_url, min_size=1, max_size=4) as p:
        yield p


async def stale_job(db: asyncpg.Connection, n: int, requeues: int = 0) -> int:
    """A job of ``n`` visits published an hour ago and never processed."""
    async with db.transaction():
        job, _ = await jobs.create_job(db, [f"http://h.example/{i}" for i in range(n)], 2, False)
    await db.execute("""UPDATE job_pending SET published_on = now() - interval '1 hour',
                        requeues = $2 WHERE job_id = $1""", job, requeues)
    return job


async def unpublished(db: asyncpg.Connection, job: int) -> int:
    return int(await db.fetchval(
        "SELECT count(*) FROM job_pending WHERE job_id = $1 AND published_on IS NULL", job))


async def test_stale_visits_are_requeued_at_most_a_batch_a_statement(
        db: asyncpg.Connection) -> None:
    job = await stale_job(db, 50)
    assert await DueFrontier().requeue_stale(db, 60, 3, limit=20) == 20
    assert await unpublished(db, job) == 20
    assert await DueFrontier().requeue_stale(db, 60, 3, limit=20) == 20
    assert await DueFrontier().requeue_stale(db, 60, 3, limit=20) == 10
    assert await DueFrontier().requeue_stale(db, 60, 3, limit=20) == 0
    assert await db.fetchval("SELECT bool_and(requeues = 1 AND due <= now()) FROM job_pending "
                             "WHERE job_id = $1", job)


async def test_requeueing_skips_a_visit_being_committed(db: asyncpg.Connection,
                                                        database_url: str) -> None:
    job = await stale_job(db, 3)
    committer = await asyncpg.connect(database_url)
    try:
        async with committer.transaction():
            held = await visits.lock_pending(committer, [(job, u) for u in await url_ids(db, job)][:1])
            assert len(held) == 1
            requeued = await asyncio.wait_for(DueFrontier().requeue_stale(db, 60, 3, limit=10), 5)
            assert requeued == 2
    finally:
        await committer.close()


async def test_a_round_works_through_any_backlog_in_bounded_transactions(
        settings: Settings, pool: asyncpg.Pool, db: asyncpg.Connection) -> None:
    fast = settings.model_copy(update={"stale_after": 60.0, "max_requeues": 1})
    job = await stale_job(db, 45)
    gone = await stale_job(db, 25, requeues=1)  # published after every requeue: to fail
    assert await watch_once(fast, pool, DueFrontier(), batch=10) == (45, 25)
    assert await unpublished(db, job) == 45
    assert await db.fetchval("SELECT count(*) FROM job_pending WHERE job_id = $1", gone) == 0
    assert await db.fetchval("SELECT count(*) FROM job_failure WHERE job_id = $1 AND "
                             "reason LIKE 'abandoned%'", gone) == 25
    assert await watch_once(fast, pool, DueFrontier(), batch=10) == (0, 0)


async def url_ids(db: asyncpg.Connection, job: int) -> list[int]:
    return [r["url_id"] for r in await db.fetch(
        "SELECT url_id FROM job_pending WHERE job_id = $1 ORDER BY url_id", job)]
