"""The foreman's housekeeping on a real PostgreSQL (issue 16): a round purges deleted jobs and
completed ones past the retention with every row (in batches, a transaction each) and never a
running job; the sweep frees held visits of running jobs and leaves a paused job's; one
housekeeper at a time; webhook deliveries are claimed with a lease."""

from __future__ import annotations

import asyncpg

from foreman.housekeeping import HOUSEKEEPING_LOCK, housekeep_once, purge_once
from shared.config import Settings
from shared.db import jobs, webhooks
from shared.db.pool import open_pool
from tests.integration.test_complete import fetched, new_job, process
from tests.integration.test_job_state import all_rows, held

H = "http://h.example"


async def test_a_round_purges_every_row_of_deleted_and_expired_jobs_never_a_running_one(
        db: asyncpg.Connection, settings: Settings) -> None:
    gone, _ = await new_job(db, f"{H}/")
    await db.execute("INSERT INTO job_webhook (job_id, url) VALUES ($1, 'http://127.0.0.1/')",
                     gone)
    await fetched(db, f"{H}/", *(f"{H}/{i}" for i in range(7)))
    await process(db, gone, f"{H}/")  # 7 children pending: more than a batch of 3
    running, _ = await new_job(db, f"{H}/")
    await process(db, running, f"{H}/")
    old, _ = await new_job(db, f"{H}/z", max_level=1)
    await fetched(db, f"{H}/z")
    await process(db, old, f"{H}/z")
    await db.execute("UPDATE job SET created_on = now() - interval '2 days'")
    kept = await all_rows(db, running)
    await jobs.mark_deleted(db, gone)
    s = settings.model_copy(update={"job_retention": 3600.0})
    async with open_pool(s.database_url, min_size=1, max_size=2) as pool:
        async with pool.acquire() as conn:
            assert await purge_once(s, conn, batch=3) == 2
        for job in (gone, old):
            assert set((await all_rows(db, job)).values()) == {0}, job
        assert await all_rows(db, running) == kept
        assert await housekeep_once(s, pool) == (0, 0)  # nothing left to do
        # Another foreman's housekeeping holds the lock: this one does nothing.
        await db.execute("SELECT pg_advisory_lock($1)", HOUSEKEEPING_LOCK)
        await jobs.mark_deleted(db, running)  # cancelled too: its queued visits go at once
        kept = await all_rows(db, running)
        assert await housekeep_once(s, pool) is None
        assert await all_rows(db, running) == kept
        await db.execute("SELECT pg_advisory_unlock($1)", HOUSEKEEPING_LOCK)
        assert await housekeep_once(s, pool) == (1, 0)
        assert set((await all_rows(db, running)).values()) == {0}


async def test_the_sweep_frees_held_visits_of_running_jobs_only(
        db: asyncpg.Connection, settings: Settings) -> None:
    running, _ = await new_job(db, f"{H}/a", f"{H}/b")
    paused, _ = await new_job(db, f"{H}/c")
    await jobs.pause_job(db, paused)
    # A hold that crossed a resume: held rows of a job that runs again.
    await db.execute("UPDATE job_pending SET held = true, due = now() + interval '1 hour' "
                     "WHERE job_id = $1", running)
    async with open_pool(settings.database_url, min_size=1, max_size=2) as pool:
        assert await housekeep_once(settings, pool) == (0, 2)
    assert await held(db, running) == [False, False]
    assert await db.fetchval("SELECT bool_and(due <= now()) FROM job_pending WHERE job_id = $1",
                             running)
    assert await held(db, paused) == [True]


async def test_a_claimed_delivery_is_leased_so_a_second_claim_gets_nothing(
        db: asyncpg.Connection) -> None:
    job, _ = await jobs.create_job(db, [f"{H}/a"], 1, False, webhook="http://127.0.0.1:9/h")
    await fetched(db, f"{H}/a")
    await process(db, job, f"{H}/a")  # completed
    (first,) = await webhooks.claim_due(db, 20, 30, 10)
    assert (first.job_id, first.attempts, first.state) == (job, 1, "completed")
    assert await webhooks.claim_due(db, 20, 30, 10) == []
    await db.execute("UPDATE job_webhook SET next_attempt = now()")  # the lease ran out
    (again,) = await webhooks.claim_due(db, 20, 30, 10)
    assert again.attempts == 2
