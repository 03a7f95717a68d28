"""Job control on a real PostgreSQL (issue 16): held rows are never claimed; pause holds a job's
unpublished visits and resume frees them; a hold follows the job's state when it commits;
cancel drops the queued visits at once and the published ones at plan time (``visits.drop``:
pending only), so the job ends with its results kept; a scope change drops the queued visits
its deny patterns match; purge leaves no row of a purged job and never takes a running one;
webhook deliveries are claimed with a lease."""

from __future__ import annotations

import asyncpg
import pytest

from shared.config import Settings
from shared.db import jobs, visits, webhooks
from shared.db.frontier import DueFrontier
from shared.errors import JobStateConflict, NotFound
from tests.integration.test_complete import counters, fetched, ids, new_job, pending, process
from tests.results import JOB_RESULT

H = "http://h.example"
UNCAPPED = Settings(host_delay=0)
Key = tuple[int, int]


async def claim(db: asyncpg.Connection, limit: int = 100) -> list[Key]:
    async with db.transaction():
        return sorted(await DueFrontier(UNCAPPED).claim(db, limit))  # caps: test_frontier_fair


async def state(db: asyncpg.Connection, job: int) -> str:
    return str(await db.fetchval("SELECT state FROM job WHERE id = $1", job))


async def held(db: asyncpg.Connection, job: int) -> list[bool]:
    return [r["held"] for r in await db.fetch(
        "SELECT held FROM job_pending WHERE job_id = $1 ORDER BY url_id", job)]


async def plan(db: asyncpg.Connection, keys: list[Key]) -> list[visits.Planned]:
    return await visits.plan(db, keys, 3600)


async def test_claim_skips_held_rows_through_the_feeders_index(db: asyncpg.Connection) -> None:
    job, (a, b) = await new_job(db, f"{H}/a", f"{H}/b")
    await db.execute("UPDATE job_pending SET held = true WHERE job_id = $1 AND url_id = $2",
                     job, a)
    assert await claim(db) == [(job, b)]
    assert await claim(db) == []  # the held row stays unpublished, never claimed
    assert await db.fetchval("SELECT published_on FROM job_pending WHERE url_id = $1", a) is None
    # The claim's condition is the rebuilt partial index's: an index scan, no filter on held.
    async with db.transaction():
        await db.execute("SET LOCAL enable_seqscan = off")
        explained = "\n".join(r[0] for r in await db.fetch("""
            EXPLAIN SELECT job_id, url_id FROM job_pending
            WHERE host = 'http://h.example' AND job_id = 1 AND published_on IS NULL AND NOT held
              AND due <= now() ORDER BY rank LIMIT 10"""))
    assert "job_pending_frontier" in explained and "held" not in explained


async def test_pause_holds_the_queued_visits_and_resume_frees_them(db: asyncpg.Connection) -> None:
    job, urls = await new_job(db, f"{H}/a", f"{H}/b", f"{H}/c")
    (first,) = await claim(db, limit=1)  # published before the pause: its message is out
    assert await jobs.pause_job(db, job) == "paused"
    assert await state(db, job) == "paused"
    assert await jobs.pause_job(db, job) == "paused"  # again: nothing changes
    assert await claim(db) == []
    # The published visit's message arrives: planned as paused, then held.
    (planned,) = await plan(db, [first])
    assert planned.state == "paused"
    await DueFrontier().hold(db, [first])
    assert await held(db, job) == [True, True, True]
    assert await claim(db) == []
    status = await jobs.job_status(db, job)
    assert status is not None and status.state == "paused" and status.state_on is not None
    assert await jobs.resume_job(db, job) == "running"
    assert await held(db, job) == [False, False, False]
    assert await claim(db) == sorted((job, u) for u in urls)
    assert await state(db, job) == "running"


async def test_a_hold_after_a_resume_leaves_the_visit_due(db: asyncpg.Connection) -> None:
    job, (a, _b) = await new_job(db, f"{H}/a", f"{H}/b")
    (key,) = await claim(db, limit=1)
    await jobs.pause_job(db, job)
    (planned,) = await plan(db, [key])  # planned while paused ...
    assert planned.state == "paused"
    await jobs.resume_job(db, job)       # ... resumed before the hold commits
    await DueFrontier().hold(db, [key])
    assert await held(db, job) == [False, False]
    assert await claim(db) == sorted([(job, a), (job, _b)])


async def test_pause_and_resume_refuse_a_cancelled_or_completed_job(
        db: asyncpg.Connection) -> None:
    job, _ = await new_job(db, f"{H}/a")
    await jobs.cancel_job(db, job)
    with pytest.raises(JobStateConflict):
        await jobs.pause_job(db, job)
    with pytest.raises(JobStateConflict):
        await jobs.resume_job(db, job)
    done, _ = await new_job(db, f"{H}/b", max_level=1)
    await fetched(db, f"{H}/b")
    await process(db, done, f"{H}/b")
    with pytest.raises(JobStateConflict) as e:
        await jobs.pause_job(db, done)
    assert e.value.status == 409
    with pytest.raises(NotFound):
        await jobs.pause_job(db, 10_000)


async def test_cancel_drops_queued_visits_keeps_results_and_ends_the_job(
        db: asyncpg.Connection) -> None:
    job, _ = await new_job(db, f"{H}/")
    await fetched(db, f"{H}/", f"{H}/a", f"{H}/b", f"{H}/c")
    await process(db, job, f"{H}/")                     # results, three children queued
    assert len(await claim(db)) == 3
    a, b, c = await ids(db, f"{H}/a", f"{H}/b", f"{H}/c")
    await db.execute("UPDATE job_pending SET published_on = NULL WHERE url_id = ANY($1)", [b, c])
    assert await jobs.cancel_job(db, job) == "cancelled"
    assert await jobs.cancel_job(db, job) == "cancelled"  # idempotent
    assert await pending(db, job) == {f"{H}/a": False}   # the queued two dropped, not claimed
    assert await claim(db) == []
    assert (await counters(db, job))["pending"] == 1
    # The published visit's message arrives: planned as cancelled, dropped without a fetch.
    (planned,) = await plan(db, [(job, a)])
    assert planned.state == "cancelled"
    async with db.transaction():
        await visits.drop(db, [(job, a)])
    assert await counters(db, job) == {"pending": 0, "processed": 1, "fetched": 1, "cached": 0,
                                       "failed": 0, "blocked": 0, "completed": True}
    assert await db.fetchval(f"SELECT count(*) FROM {JOB_RESULT} WHERE job_id = $1", job) == 3
    status = await jobs.job_status(db, job)
    assert status is not None and status.state == "cancelled"
    with pytest.raises(JobStateConflict):
        await jobs.pause_job(db, job)


async def test_a_cancelled_jobs_queued_visits_end_it_at_once(db: asyncpg.Connection) -> None:
    job, _ = await new_job(db, f"{H}/a", f"{H}/b")
    await jobs.cancel_job(db, job)
    assert await counters(db, job) == {"pending": 0, "processed": 0, "fetched": 0, "cached": 0,
                                       "failed": 0, "blocked": 0, "completed": True}
    assert await db.fetchval("SELECT count(*) FROM job_pending WHERE job_id = $1", job) == 0


async def test_drop_moves_pending_only_with_no_results_children_or_failures(
        db: asyncpg.Connection) -> None:
    job, _ = await new_job(db, f"{H}/")
    await fetched(db, f"{H}/", f"{H}/a", f"{H}/b")
    await process(db, job, f"{H}/")
    # /a was fetched already (by another job): failed, with links; dropping it uses none.
    await fetched(db, f"{H}/a", f"{H}/x", status=500)
    a, b = await ids(db, f"{H}/a", f"{H}/b")
    before = await counters(db, job)
    async with db.transaction():
        await visits.drop(db, [(job, a)])
    after = await counters(db, job)
    assert after == {**before, "pending": before["pending"] - 1}
    assert after["completed"] is False
    assert await pending(db, job) == {f"{H}/b": False}   # no child of /a
    assert await db.fetchval(
        f"SELECT count(*) FROM {JOB_RESULT} WHERE job_id = $1 AND refer_id = $2", job, a) == 0
    assert await db.fetchval("SELECT count(*) FROM job_failure WHERE job_id = $1", job) == 0
    async with db.transaction():
        await visits.drop(db, [(job, a), (job, b)])     # a is no longer pending: ignored
    assert await counters(db, job) == {**before, "pending": 0, "completed": True}


async def test_change_scope_drops_the_queued_matches_and_plans_with_the_new_deny(
        db: asyncpg.Connection) -> None:
    job, _ = await new_job(db, f"{H}/")
    await fetched(db, f"{H}/", f"{H}/x/1", f"{H}/x/2", f"{H}/y/1")
    await process(db, job, f"{H}/")
    x1, x2, y1 = await ids(db, f"{H}/x/1", f"{H}/x/2", f"{H}/y/1")
    await db.execute("UPDATE job_pending SET published_on = now() WHERE url_id = $1", x2)
    assert await jobs.change_scope(db, job, ["/x/"]) == 1   # x2 is published: dropped at plan
    assert await pending(db, job) == {f"{H}/x/2": False, f"{H}/y/1": False}
    assert (await counters(db, job))["pending"] == 2
    planned = {p.url_id: p for p in await plan(db, [(job, x2), (job, y1)])}
    assert planned[x2].deny == ("/x/",) == planned[y1].deny
    status = await jobs.job_status(db, job)
    assert status is not None and status.scope.deny == ("/x/",)
    assert await jobs.change_scope(db, job, ["/y/"]) == 1
    assert await pending(db, job) == {f"{H}/x/2": False}
    async with db.transaction():
        await visits.drop(db, [(job, x2)])
    assert (await counters(db, job))["completed"] is True
    assert x1  # dropped from the frontier, never visited again


async def test_list_jobs_newest_first_by_state_without_deleted_ones(
        db: asyncpg.Connection) -> None:
    a, _ = await new_job(db, f"{H}/a")
    b, _ = await new_job(db, f"{H}/b")
    c, _ = await new_job(db, f"{H}/c")
    d, _ = await new_job(db, f"{H}/d")
    await jobs.pause_job(db, b)
    await jobs.cancel_job(db, c)
    await jobs.mark_deleted(db, d)
    assert [j.job_id for j in await jobs.list_jobs(db, None, None, 10)] == [c, b, a]
    assert [j.job_id for j in await jobs.list_jobs(db, None, c, 1)] == [b]
    assert [j.job_id for j in await jobs.list_jobs(db, "paused", None, 10)] == [b]
    assert [j.job_id for j in await jobs.list_jobs(db, "running", None, 10)] == [a]
    assert [j.job_id for j in await jobs.list_jobs(db, "completed", None, 10)] == [c]
    (first,) = await jobs.list_jobs(db, None, b, 10)
    assert (first.job_id, first.state, first.completed, first.urls, first.pending) == (
        a, "running", False, 1, 1)
    assert await jobs.job_status(db, d) is None and not await jobs.job_exists(db, d)


async def all_rows(db: asyncpg.Connection, job: int) -> dict[str, int]:
    found = {}
    for table in (*jobs.PURGE_TABLES, "job_webhook"):
        found[table] = await db.fetchval(f"SELECT count(*) FROM {table} WHERE job_id = $1", job)
    found["job"] = await db.fetchval("SELECT count(*) FROM job WHERE id = $1", job)
    return found


async def purge(db: asyncpg.Connection, job: int) -> None:
    for table in (*jobs.PURGE_TABLES, "job"):
        while await jobs.purge_batch(db, table, job, n=2) == 2:
            pass


async def test_purge_leaves_no_row_of_a_purged_job_and_never_a_running_one(
        db: asyncpg.Connection) -> None:
    gone, _ = await new_job(db, f"{H}/")
    async with db.transaction():
        await db.execute("INSERT INTO job_webhook (job_id, url) VALUES ($1, 'http://127.0.0.1/')",
                         gone)
    await fetched(db, f"{H}/", f"{H}/a", f"{H}/b", f"{H}/c", f"{H}/d", f"{H}/e")
    await process(db, gone, f"{H}/")
    running, _ = await new_job(db, f"{H}/")
    await process(db, running, f"{H}/")
    old, _ = await new_job(db, f"{H}/z", max_level=1)
    await fetched(db, f"{H}/z")
    await process(db, old, f"{H}/z")
    await db.execute("UPDATE job SET created_on = now() - interval '2 days'")
    kept = await all_rows(db, running)
    await jobs.mark_deleted(db, gone)
    async with db.transaction():
        assert await jobs.purge_candidates(db, 0, 10) == [gone]
    async with db.transaction():  # by age: the completed old job, never the running one
        assert await jobs.purge_candidates(db, 3600, 10) == [gone, old]
    for job in (gone, old):
        await purge(db, job)
        assert set((await all_rows(db, job)).values()) == {0}
    assert await all_rows(db, running) == kept
    assert await db.fetchval("SELECT count(*) FROM url WHERE url = $1", f"{H}/a") == 1
    with pytest.raises(ValueError):
        await jobs.purge_batch(db, "url", running)


async def test_a_purge_collects_the_link_sets_no_job_uses_but_never_the_current_one(
        db: asyncpg.Connection) -> None:
    # Page / at versions 1, 2, 3 (its links a, b, c): jobs A and C use 1, B uses 2, D uses 3.
    (page,) = await ids(db, f"{H}/")

    async def versions() -> list[int]:
        return [r["version"] for r in await db.fetch(
            "SELECT version FROM url_links WHERE url_id = $1 ORDER BY 1", page)]

    a, _ = await new_job(db, f"{H}/", max_level=1)
    c, _ = await new_job(db, f"{H}/", max_level=1)
    await fetched(db, f"{H}/", f"{H}/a")
    await process(db, a, f"{H}/")
    async with db.transaction():  # a store answer planned at version 1
        await visits.complete(db, await visits.lock_pending(db, [(c, page)]),
                              {(c, page): "cached"}, versions={(c, page): 1})
    b, _ = await new_job(db, f"{H}/", max_level=1)
    await fetched(db, f"{H}/", f"{H}/b")
    await process(db, b, f"{H}/")
    d, _ = await new_job(db, f"{H}/", max_level=1)
    await fetched(db, f"{H}/", f"{H}/c")
    await process(db, d, f"{H}/")
    assert await versions() == [1, 2, 3]
    await purge(db, a)
    assert await versions() == [1, 2, 3]  # C uses 1 still
    await purge(db, c)
    assert await versions() == [2, 3]
    await jobs.delete_job(db, b)
    assert await versions() == [3]
    await purge(db, d)
    assert await versions() == [3]  # the current version: the cache answers from it
    assert await db.fetchval("SELECT count(*) FROM job_page WHERE url_id = $1", page) == 0


async def test_webhook_deliveries_are_claimed_with_a_lease(db: asyncpg.Connection) -> None:
    async with db.transaction():
        job, _ = await jobs.create_job(db, [f"{H}/a"], 1, False, webhook="http://127.0.0.1:9/h")
    assert await webhooks.claim_due(db, 10, 60, 3) == []  # not completed yet
    await jobs.cancel_job(db, job)
    (first,) = await webhooks.claim_due(db, 10, 60, 3)
    assert first == webhooks.Delivery(job, "http://127.0.0.1:9/h", 1, "cancelled")
    assert await webhooks.claim_due(db, 10, 60, 3) == []  # leased
    await webhooks.mark_failed(db, job, 500, "HTTP 500", 0)
    (second,) = await webhooks.claim_due(db, 10, 60, 3)
    assert second.attempts == 2
    await webhooks.mark_failed(db, job, None, "refused", 0)
    assert await webhooks.claim_due(db, 10, 60, 2) == []  # out of attempts
    await webhooks.mark_sent(db, job, 204)
    assert await webhooks.claim_due(db, 10, 60, 10) == []
    row = await db.fetchrow("SELECT sent_on, last_status, last_error FROM job_webhook")
    assert row is not None and row["sent_on"] is not None and row["last_status"] == 204


async def test_the_sweep_frees_held_visits_of_running_jobs_only(db: asyncpg.Connection) -> None:
    paused, _ = await new_job(db, f"{H}/a")
    running, _ = await new_job(db, f"{H}/b", f"{H}/c")
    await jobs.pause_job(db, paused)
    await db.execute("UPDATE job_pending SET held = true WHERE job_id = $1", running)
    assert await claim(db) == []
    assert await jobs.unhold_running(db) == 2
    assert await held(db, paused) == [True] and await held(db, running) == [False, False]
    assert len(await claim(db)) == 2
    assert await jobs.unhold_running(db) == 0


async def test_job_gauges_count_jobs_by_state_and_their_pending_visits(
        db: asyncpg.Connection) -> None:
    await new_job(db, f"{H}/a", f"{H}/b")
    done, _ = await new_job(db, f"{H}/z", max_level=1)
    await fetched(db, f"{H}/z")
    await process(db, done, f"{H}/z")
    paused, _ = await new_job(db, f"{H}/c")
    cancelled, _ = await new_job(db, f"{H}/d")
    deleted, _ = await new_job(db, f"{H}/e")
    await jobs.pause_job(db, paused)
    await jobs.cancel_job(db, cancelled)
    await jobs.mark_deleted(db, deleted)
    assert await jobs.job_gauges(db) == (
        {"running": 1, "paused": 1, "cancelled": 1, "completed": 1}, 3)
