"""The foreman's watchdog (foreman/schedule.py ``watch_once``, shared/db/frontier.py
``requeue_stale`` and ``abandoned``) on a real PostgreSQL: stale visits are published again in
bounded batches that skip rows a commit holds, and visits that never finish are failed."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from prometheus_client import REGISTRY

from foreman.schedule import watch_once
from shared.config import Settings
from shared.db import jobs, visits, workers
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


def watchdog_count(action: str) -> float:
    return REGISTRY.get_sample_value("harvester_watchdog_total", {"action": action}) or 0.0


async def beating(db: asyncpg.Connection, *kinds: str) -> uuid.UUID:
    """A live worker process serving ``kinds`` (its heartbeat row)."""
    me = uuid.uuid4()
    await workers.beat(db, me, kinds, "test", 1, "test")
    return me


async def test_a_round_works_through_any_backlog_in_bounded_transactions(
        settings: Settings, pool: asyncpg.Pool, db: asyncpg.Connection) -> None:
    fast = settings.model_copy(update={"stale_after": 60.0, "max_requeues": 1})
    await beating(db, "http")
    job = await stale_job(db, 45)
    gone = await stale_job(db, 25, requeues=1)  # published after every requeue: to fail
    before = {a: watchdog_count(a) for a in ("requeued", "abandoned")}
    assert await watch_once(fast, pool, DueFrontier(), batch=10) == (45, 25)
    assert watchdog_count("requeued") - before["requeued"] == 45  # /metrics counts them
    assert watchdog_count("abandoned") - before["abandoned"] == 25
    assert await unpublished(db, job) == 45
    assert await db.fetchval("SELECT count(*) FROM job_pending WHERE job_id = $1", gone) == 0
    assert await db.fetchval("SELECT count(*) FROM job_failure WHERE job_id = $1 AND "
                             "reason LIKE 'abandoned%'", gone) == 25
    assert await watch_once(fast, pool, DueFrontier(), batch=10) == (0, 0)


async def url_ids(db: asyncpg.Connection, job: int) -> list[int]:
    return [r["url_id"] for r in await db.fetch(
        "SELECT url_id FROM job_pending WHERE job_id = $1 ORDER BY url_id", job)]


async def test_visits_no_live_worker_serves_wait_for_one_instead_of_failing(
        settings: Settings, pool: asyncpg.Pool, db: asyncpg.Connection) -> None:
    """A job of a kind no live worker serves is waiting, not lost: the watchdog neither
    publishes its visits again nor fails them, and counts no requeue; once a worker of the kind
    beats, stale visits are handled as usual again."""
    fast = settings.model_copy(update={"stale_after": 60.0, "max_requeues": 1})
    await beating(db, "http")
    static = await stale_job(db, 5, requeues=1)  # would be failed if a worker had lost them
    await db.execute("UPDATE job SET fetcher = 'static' WHERE id = $1", static)
    web = await stale_job(db, 3)
    assert await watch_once(fast, pool, DueFrontier()) == (3, 0)  # the http job's only
    assert await db.fetchval("""SELECT count(*) FROM job_pending WHERE job_id = $1
                                AND requeues = 1 AND published_on > now() - interval '1 minute'""",
                             static) == 5
    assert await unpublished(db, web) == 3
    await beating(db, "static")
    await db.execute("UPDATE job_pending SET published_on = now() - interval '1 hour' "
                     "WHERE job_id = $1", static)
    assert await watch_once(fast, pool, DueFrontier()) == (0, 5)


async def test_with_no_live_worker_at_all_nothing_is_requeued_or_failed(
        settings: Settings, pool: asyncpg.Pool, db: asyncpg.Connection) -> None:
    """Every worker down (or not started yet): the queues keep their messages for the workers
    to come, so the watchdog waits too."""
    fast = settings.model_copy(update={"stale_after": 60.0, "max_requeues": 1})
    job = await stale_job(db, 4, requeues=1)
    assert await watch_once(fast, pool, DueFrontier()) == (0, 0)
    assert await db.fetchval("SELECT count(*) FROM job_pending WHERE job_id = $1", job) == 4
    stopped = await beating(db, "http")
    await db.execute("UPDATE worker_process SET seen_on = now() - interval '1 hour' WHERE id = $1",
                     stopped)
    await db.execute("UPDATE job_pending SET published_on = now() - interval '1 hour' "
                     "WHERE job_id = $1", job)
    assert await watch_once(fast, pool, DueFrontier()) == (0, 0)  # its heartbeat is too old
