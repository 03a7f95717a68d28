"""SZ-T3 in the completion transaction (shared/db/visits.py ``_insert_first`` with
shared/seen.py): a 2·10^4-URL graph (the rate at 10^5: tests/unit/test_seen.py) crawled
by jobs with a right-sized Bloom filter, a saturated one (capacity 1000: nearly every link
"maybe seen") and none. Each reaches every URL, processes each page once and gives every URL
the same level: a false positive costs a lookup, never a visit, and the filter never adds one."""

from __future__ import annotations

import json

import asyncpg

from shared.db import jobs, visits
from shared.seen import SeenFilter

N = 20_000
BATCH = 1000


async def graph(db: asyncpg.Connection) -> int:
    """N pages on 50 hosts: page i links to 2i+1, 2i+2 (a tree: every page reachable from
    page 0), 7i+3 and i/2 (mod N: links back and across). Returns page 0's id."""
    await db.execute("""
        CREATE TEMP TABLE g AS
        WITH u AS (
            INSERT INTO url (url, mime)
            SELECT format('http://h%s.example/p%s', i % 50, i), 'text/html'
            FROM generate_series(0, $1 - 1) i
            RETURNING id, url)
        SELECT substring(url FROM '/p(\\d+)$')::int AS i, id FROM u""", N)
    await db.execute("""
        INSERT INTO url_links (url_id, version, n, links)
        SELECT a.id, 0, count(DISTINCT b.id), array_agg(DISTINCT b.id ORDER BY b.id)
        FROM g a CROSS JOIN LATERAL (VALUES (2 * a.i + 1), (2 * a.i + 2),
                                            ((7 * a.i + 3) % $1), (a.i / 2)) t(j)
        JOIN g b ON b.i = t.j
        WHERE t.j < $1 AND t.j <> a.i
        GROUP BY a.id""", N)
    await db.execute("UPDATE url SET crawled_on = now(), fetched_on = now(), status = 200")
    return int(await db.fetchval("SELECT id FROM g WHERE i = 0"))


async def crawl(db: asyncpg.Connection, root: int, bloom: dict[str, float] | None,
                seen: SeenFilter | None) -> int:
    """A job from page 0 (depth unbounded), completed in batches of pending visits in rank
    order (bfs: levels exact), as a worker's commits would; returns the job's id."""
    async with db.transaction():
        job, _ = await jobs.create_job(db, ["http://h0.example/p0"], 10**6, False)
        if bloom:
            await db.execute("""
                UPDATE job SET bloom_capacity = $2, bloom_error = $3,
                               spec = spec || jsonb_build_object('bloom', $4::jsonb)
                WHERE id = $1""", job, int(bloom["capacity"]), bloom["errorRate"],
                json.dumps(bloom))
    while keys := [(job, r["url_id"]) for r in await db.fetch(
            "SELECT url_id FROM job_pending WHERE job_id = $1 ORDER BY rank LIMIT $2",
            job, BATCH)]:
        async with db.transaction():
            locked = await visits.lock_pending(db, keys)
            assert all((p.bloom is not None) == bool(bloom) for p in locked)
            await visits.complete(db, locked, {k: "cached" for k in keys}, seen=seen)
    return job


async def test_a_bloom_filter_never_loses_nor_adds_a_visit(db: asyncpg.Connection) -> None:
    root = await graph(db)
    seen = SeenFilter()
    plain = await crawl(db, root, None, seen)
    assert seen.jobs() == []  # a job without bloom never touches the filters
    sized = await crawl(db, root, {"capacity": 2 * N, "errorRate": 0.01}, seen)
    saturated = await crawl(db, root, {"capacity": 1000, "errorRate": 0.01}, seen)
    assert seen.jobs() == [sized, saturated]
    levels = {}
    for job in (plain, sized, saturated):
        row = await db.fetchrow("""
            SELECT sum(pending) AS pending, sum(processed) AS processed,
                   bool_and(completed_on IS NOT NULL) AS done FROM job_url WHERE job_id = $1""",
            job)
        assert dict(row) == {"pending": 0, "processed": N, "done": True}, job
        assert await db.fetchval("SELECT count(*) FROM job_visit WHERE job_id = $1", job) == N
        levels[job] = dict(await db.fetch(
            "SELECT url_id, level FROM job_visit WHERE job_id = $1", job))
    assert levels[sized] == levels[plain]
    assert levels[saturated] == levels[plain]
    assert max(levels[plain].values()) > 10
