"""The per-job tables partitioned by ranges of job ids (issue 18, migration 0024) on a real
PostgreSQL: a job's rows land in its range's partitions, which are made ahead of the ids handed
out; purging every job of a range drops its partitions (and the link sets only they used)
instead of deleting rows; a range with a live job, or with an id handed out to a job not yet
committed, keeps its partitions."""

from __future__ import annotations

import asyncio

import asyncpg

from foreman.housekeeping import purge_once
from shared.config import Settings
from shared.db import jobs
from tests.integration.test_complete import fetched, new_job, process
from tests.integration.test_job_state import all_rows

H = "http://part.example"


async def partitions(db: asyncpg.Connection) -> dict[str, list[str]]:
    """Each partitioned table's partitions, by name."""
    rows = await db.fetch("""
        SELECT p.relname AS parent, c.relname AS part FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
        WHERE c.relkind = 'r' ORDER BY 1, 2""")
    found: dict[str, list[str]] = {}
    for r in rows:
        found.setdefault(r["parent"], []).append(r["part"])
    return found


async def next_job_id(db: asyncpg.Connection, n: int) -> None:
    await db.execute("SELECT setval('job_id_seq', $1, false)", n)


async def test_every_job_table_is_partitioned_and_a_jobs_rows_land_in_its_range(
        db: asyncpg.Connection) -> None:
    assert set(await db.fetchval(
        "SELECT array_agg(partrelid::regclass::text) FROM pg_partitioned_table")) == set(
        jobs.PARTITIONED)
    await next_job_id(db, 1234)
    job, _ = await new_job(db, f"{H}/")
    await fetched(db, f"{H}/", f"{H}/a")
    await process(db, job, f"{H}/")
    assert job == 1234
    counts = {t: await db.fetchval(f"SELECT count(*) FROM {t}_r1") for t in
              ("job_url", "job_visit", "job_pending", "job_page")}
    assert counts == {"job_url": 1, "job_visit": 2, "job_pending": 1, "job_page": 1}
    assert await db.fetchval("SELECT count(*) FROM job_visit_r0") == 0
    # The planner reads one partition for one job: the others are pruned.
    plan = await db.fetchval("EXPLAIN (FORMAT JSON) SELECT * FROM job_visit WHERE job_id = $1",
                             job)
    assert "job_visit_r1" in str(plan) and "job_visit_r0" not in str(plan)


async def test_partitions_are_made_ahead_of_the_ids_handed_out(db: asyncpg.Connection) -> None:
    made = await partitions(db)
    assert all(made[t] == [f"{t}_r0"] for t in jobs.PARTITIONED)  # the first id's range only
    await next_job_id(db, 4999)  # a range's last id: its range and the next are made before it
    job, _ = await new_job(db, f"{H}/")
    assert job == 4999
    made = await partitions(db)
    assert all(made[t] == [f"{t}_r{r}" for r in (0, 4, 5)] for t in jobs.PARTITIONED)
    assert await jobs.make_partitions_ahead(db) == 0  # the next id, 5000, has its range
    await next_job_id(db, 5899)
    assert await jobs.make_partitions_ahead(db) == 0  # 101 ids before the range's end: not yet
    await next_job_id(db, 5900)
    assert await jobs.make_partitions_ahead(db) == len(jobs.PARTITIONED)  # 100: range 6 now
    assert await jobs.make_partitions_ahead(db) == 0
    # A partition has its parent's indexes, named after them.
    assert "job_pending_frontier_r6" in await db.fetchval(
        "SELECT array_agg(indexrelid::regclass::text) FROM pg_index "
        "WHERE indrelid = 'job_pending_r6'::regclass")


async def test_purging_every_job_of_a_range_drops_its_partitions(
        db: asyncpg.Connection, settings: Settings) -> None:
    gone, _ = await new_job(db, f"{H}/")
    await fetched(db, f"{H}/", f"{H}/a", f"{H}/b")
    await process(db, gone, f"{H}/")
    old, _ = await new_job(db, f"{H}/z", max_level=1)
    await fetched(db, f"{H}/z")
    await process(db, old, f"{H}/z")
    await fetched(db, f"{H}/", f"{H}/c")  # fetched again: the gone job's link set is old now
    await next_job_id(db, 1000)
    kept, _ = await new_job(db, f"{H}/")
    await process(db, kept, f"{H}/")
    root = await db.fetchval("SELECT id FROM url WHERE url = $1", f"{H}/")
    assert await db.fetchval("SELECT array_agg(version ORDER BY version) FROM url_links "
                             "WHERE url_id = $1", root) == [1, 2]
    kept_rows = await all_rows(db, kept)
    await db.execute("UPDATE job SET created_on = now() - interval '2 days' WHERE id = $1", old)
    await jobs.mark_deleted(db, gone)
    s = settings.model_copy(update={"job_retention": 3600.0})
    assert await jobs.purgeable_ranges(db, s.job_retention) == [0]
    assert await purge_once(s, db) == 2
    made = await partitions(db)
    assert all(f"{t}_r0" not in made[t] for t in jobs.PARTITIONED), made
    for job in (gone, old):
        assert set((await all_rows(db, job)).values()) == {0}, job
    assert await all_rows(db, kept) == kept_rows
    # The link set only the purged range used goes; the current one (the cache's) stays.
    assert await db.fetchval("SELECT array_agg(version) FROM url_links WHERE url_id = $1",
                             root) == [2]
    assert await jobs.purgeable_ranges(db, s.job_retention) == []


async def test_a_range_with_a_live_job_keeps_its_partitions_and_purges_row_by_row(
        db: asyncpg.Connection, settings: Settings) -> None:
    gone, _ = await new_job(db, f"{H}/")
    await fetched(db, f"{H}/", f"{H}/a")
    await process(db, gone, f"{H}/")
    running, _ = await new_job(db, f"{H}/")
    await next_job_id(db, 1000)
    await new_job(db, f"{H}/")
    running_rows = await all_rows(db, running)
    await jobs.mark_deleted(db, gone)
    assert await jobs.purgeable_ranges(db, settings.job_retention) == []
    assert await purge_once(settings, db) == 1
    assert "job_visit_r0" in (await partitions(db))["job_visit"]
    assert set((await all_rows(db, gone)).values()) == {0}
    assert await all_rows(db, running) == running_rows


async def test_an_id_handed_out_to_a_job_not_yet_committed_keeps_its_range(
        db: asyncpg.Connection, settings: Settings) -> None:
    """The range's last id is handed out in a transaction still open: the drop waits for it
    (a SHARE lock on ``job``), gives up after its lock timeout, and once the job is committed
    the range is no longer purgeable."""
    gone, _ = await new_job(db, f"{H}/")
    await jobs.mark_deleted(db, gone)
    await next_job_id(db, 999)
    other = await asyncpg.connect(settings.database_url)
    try:
        tx = other.transaction()
        await tx.start()
        late, _ = await jobs.create_job(other, [f"{H}/late"], 1, False)
        assert late == 999
        # Not committed: the range looks purgeable, but its drop cannot judge it yet.
        assert await jobs.purgeable_ranges(db, settings.job_retention) == [0]
        assert await asyncio.wait_for(
            jobs.drop_job_range(db, 0, settings.job_retention), 10) is None
        await tx.commit()
    finally:
        await other.close()
    assert await jobs.purgeable_ranges(db, settings.job_retention) == []
    assert await jobs.drop_job_range(db, 0, settings.job_retention) is None
    assert "job_visit_r0" in (await partitions(db))["job_visit"]
    assert await db.fetchval("SELECT count(*) FROM job_visit WHERE job_id = $1", late) == 1


async def test_a_busy_range_waits_for_its_drop_and_is_not_purged_row_by_row(
        db: asyncpg.Connection, settings: Settings) -> None:
    """A reader holds job_visit (an open transaction that read it): the drop gives up after its
    lock timeout, and the round leaves the range's jobs for the drop instead of deleting their
    rows; once the reader is gone, the next round drops the range."""
    gone, _ = await new_job(db, f"{H}/")
    await jobs.mark_deleted(db, gone)
    await next_job_id(db, 1000)
    await new_job(db, f"{H}/")
    reader = await asyncpg.connect(settings.database_url)
    try:
        async with reader.transaction():
            await reader.fetchval("SELECT count(*) FROM job_visit")
            assert await purge_once(settings, db) == 0
            assert await db.fetchval("SELECT count(*) FROM job WHERE id = $1", gone) == 1
            assert await db.fetchval("SELECT count(*) FROM job_url WHERE job_id = $1", gone) == 1
    finally:
        await reader.close()
    assert await purge_once(settings, db) == 1
    assert "job_visit_r0" not in (await partitions(db))["job_visit"]


async def test_a_detached_page_partition_left_by_a_dead_housekeeper_is_collected(
        db: asyncpg.Connection, settings: Settings) -> None:
    """The drop's last step (collecting the link sets of the detached job_page partition) cut
    short: the next round deletes the link sets no job uses and drops the table."""
    job, _ = await new_job(db, f"{H}/")
    await fetched(db, f"{H}/", f"{H}/a")
    await process(db, job, f"{H}/")
    await fetched(db, f"{H}/", f"{H}/b")  # version 2: the job's version 1 is old
    root = await db.fetchval("SELECT id FROM url WHERE url = $1", f"{H}/")
    await db.execute("CREATE TABLE job_page_gone_r7 AS SELECT url_id, version FROM job_page")
    await db.execute("DELETE FROM job_page")  # as if its range's partitions were dropped
    assert await purge_once(settings, db) == 0
    assert await db.fetchval("SELECT to_regclass('job_page_gone_r7')") is None
    assert await db.fetchval("SELECT array_agg(version) FROM url_links WHERE url_id = $1",
                             root) == [2]


async def test_a_finished_ranges_pending_partition_is_dropped_and_the_range_purged_later(
        db: asyncpg.Connection, settings: Settings) -> None:
    """Every job of range 0 finished (none purgeable: kept forever): its job_pending partition
    goes, so the statements reading job_pending across jobs open one partition fewer; range 1
    has a running job and keeps its own. Deleted later, range 0 is dropped whole."""
    done, _ = await new_job(db, f"{H}/", max_level=0)
    await process(db, done, f"{H}/")
    await next_job_id(db, 1000)
    running, _ = await new_job(db, f"{H}/r")
    await next_job_id(db, 2000)
    await new_job(db, f"{H}/s")
    assert await jobs.drop_finished_pending(db) == [0]
    assert await jobs.drop_finished_pending(db) == []
    made = await partitions(db)
    assert made["job_pending"] == ["job_pending_r1", "job_pending_r2"]
    assert "job_visit_r0" in made["job_visit"]  # the finished jobs' other rows stay
    assert await db.fetchval("SELECT count(*) FROM job_visit WHERE job_id = $1", done) == 1
    # The feeder's claim over every job still works with the partition gone.
    assert await db.fetchval("SELECT count(*) FROM job_pending") == 2
    await jobs.mark_deleted(db, done)
    assert await purge_once(settings, db) == 1
    made = await partitions(db)
    assert all(f"{t}_r0" not in made[t] for t in jobs.PARTITIONED), made
    assert await db.fetchval("SELECT count(*) FROM job_pending WHERE job_id = $1", running) == 1
