"""The completion transaction (shared/db/visits.py ``complete`` and its helpers) on a real
PostgreSQL: results, children at the next level, re-expansion of a page reached again by a shorter
path, failures, counters and completion, the ``maxPages`` cap and its counter, and concurrent
transactions of one capped job."""

from __future__ import annotations

import asyncio
import time

import asyncpg

from shared.db import jobs, pages, visits
from shared.model import Extraction, FetchedPage

Key = tuple[int, int]
H = "http://h.example"


async def new_job(db: asyncpg.Connection, *urls: str, max_level: int = 3,
                  max_pages: int | None = None) -> tuple[int, list[int]]:
    async with db.transaction():
        return await jobs.create_job(db, list(urls), max_level, False, max_pages=max_pages)


async def ids(db: asyncpg.Connection, *urls: str) -> list[int]:
    found = await pages.upsert_urls(db, {u: "" for u in urls})
    return [found[u] for u in urls]


async def fetched(db: asyncpg.Connection, url: str, *links: str, status: int = 200) -> int:
    """Record a fetch of ``url`` that found ``links``; returns its id."""
    (url_id,) = await ids(db, url)
    error = f"HTTP {status}" if status >= 400 else None
    await pages.record_fetches(db, [(
        FetchedPage(url_id, status, "text/html", error, cacheable=True),
        Extraction(tuple((u, "image/png" if u.endswith(".png") else "text/html") for u in links)))])
    return url_id


async def process(db: asyncpg.Connection, job: int, *urls: str,
                  outcome: visits.Outcome = "fetched", reason: str | None = None,
                  conn: asyncpg.Connection | None = None) -> list[Key]:
    """One completion transaction for these visits of the job; returns the visits queued."""
    conn = conn or db
    keys = [(job, u) for u in await ids(conn, *urls)]
    async with conn.transaction():
        locked = await visits.lock_pending(conn, keys)
        return await visits.complete(conn, locked, {k: outcome for k in keys},
                                     attempts={k: 1 for k in keys},
                                     reasons={k: reason for k in keys} if reason else None)


async def levels(db: asyncpg.Connection, job: int) -> dict[str, int]:
    return {r["url"]: r["level"] for r in await db.fetch(
        "SELECT u.url, v.level FROM job_visit v JOIN url u ON u.id = v.url_id WHERE v.job_id = $1",
        job)}


async def pending(db: asyncpg.Connection, job: int) -> dict[str, bool]:
    """Pending visits: URL -> re-expansion?"""
    return {r["url"]: r["reexpand"] for r in await db.fetch(
        "SELECT u.url, p.reexpand FROM job_pending p JOIN url u ON u.id = p.url_id "
        "WHERE p.job_id = $1", job)}


async def counters(db: asyncpg.Connection, job: int) -> dict[str, int | bool]:
    row = await db.fetchrow("""
        SELECT sum(pending) AS pending, sum(processed) AS processed, sum(fetched) AS fetched,
               sum(cached) AS cached, sum(failed) AS failed, sum(blocked) AS blocked,
               bool_and(completed_on IS NOT NULL) AS completed
        FROM job_url WHERE job_id = $1""", job)
    assert row is not None
    return dict(row)


# A job's (page, link) pairs: its pages' link sets at the versions it used (job_page, url_links),
# and for a job made before migration 0023 its job_result rows.
RESULT_SQL = """
    SELECT p.url AS page, u.url AS link FROM job_page jp
    JOIN url_links l ON l.url_id = jp.url_id AND l.version = jp.version
    CROSS JOIN LATERAL unnest(l.links) AS k(id)
    JOIN url p ON p.id = jp.url_id JOIN url u ON u.id = k.id
    WHERE jp.job_id = $1
    UNION
    SELECT p.url, u.url FROM job_result jr
    JOIN url p ON p.id = jr.refer_id JOIN url u ON u.id = jr.url_id
    WHERE jr.job_id = $1
    ORDER BY 1, 2"""


async def result(db: asyncpg.Connection, job: int) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for r in await db.fetch(RESULT_SQL, job):
        out.setdefault(r["page"], []).append(r["link"])
    return out


async def test_a_page_lists_its_links_and_queues_new_ones_at_the_next_level(
        db: asyncpg.Connection) -> None:
    job, _ = await new_job(db, f"{H}/")
    await fetched(db, f"{H}/", f"{H}/a", f"{H}/b", f"{H}/i.png", f"{H}/")
    queued = await process(db, job, f"{H}/")
    assert sorted(queued) == [(job, u) for u in sorted(await ids(db, f"{H}/a", f"{H}/b"))]
    assert await result(db, job) == {f"{H}/": sorted([f"{H}/", f"{H}/a", f"{H}/b", f"{H}/i.png"])}
    assert await levels(db, job) == {f"{H}/": 0, f"{H}/a": 1, f"{H}/b": 1}  # images: not visited
    assert await pending(db, job) == {f"{H}/a": False, f"{H}/b": False}
    assert await counters(db, job) == {"pending": 2, "processed": 1, "fetched": 1, "cached": 0,
                                       "failed": 0, "blocked": 0, "completed": False}
    await fetched(db, f"{H}/a", f"{H}/b")
    await fetched(db, f"{H}/b")
    assert await process(db, job, f"{H}/a", f"{H}/b") == []  # b: already visited
    assert await counters(db, job) == {"pending": 0, "processed": 3, "fetched": 3, "cached": 0,
                                       "failed": 0, "blocked": 0, "completed": True}


async def test_a_visit_processed_twice_changes_nothing_the_second_time(
        db: asyncpg.Connection) -> None:
    job, _ = await new_job(db, f"{H}/")
    await fetched(db, f"{H}/", f"{H}/a")
    await process(db, job, f"{H}/")
    before = (await counters(db, job), await result(db, job), await levels(db, job))
    assert await process(db, job, f"{H}/") == []
    assert (await counters(db, job), await result(db, job), await levels(db, job)) == before


async def test_links_of_the_last_level_are_listed_not_followed(db: asyncpg.Connection) -> None:
    job, _ = await new_job(db, f"{H}/", max_level=1)
    await fetched(db, f"{H}/", f"{H}/a")
    assert await process(db, job, f"{H}/") == []
    assert await result(db, job) == {f"{H}/": [f"{H}/a"]}
    assert (await counters(db, job))["completed"] is True


async def chain_with_a_shortcut(db: asyncpg.Connection) -> int:
    """A job (max_level 4) over / -> a -> b -> c -> d and / -> s -> c, with /, a, b and c
    processed (c at level 3, so d is listed, not followed): s is left to process."""
    job, _ = await new_job(db, f"{H}/", max_level=4)
    await fetched(db, f"{H}/", f"{H}/a", f"{H}/s")
    await fetched(db, f"{H}/a", f"{H}/b")
    await fetched(db, f"{H}/b", f"{H}/c")
    await fetched(db, f"{H}/c", f"{H}/d")
    await fetched(db, f"{H}/s", f"{H}/c")
    for url in ("/", "/a", "/b", "/c"):
        await process(db, job, H + url)
    return job


async def test_a_shorter_path_lowers_a_processed_page_and_expands_it_again(
        db: asyncpg.Connection) -> None:
    # / -> a -> b -> c (level 3: its links are not followed at max_level 4); / -> s -> c later.
    job = await chain_with_a_shortcut(db)
    assert (await levels(db, job))[f"{H}/c"] == 3 and f"{H}/d" not in await levels(db, job)
    assert await process(db, job, f"{H}/s") == [(job, (await ids(db, f"{H}/c"))[0])]
    assert (await levels(db, job))[f"{H}/c"] == 2
    assert await pending(db, job) == {f"{H}/c": True}  # expand again, not a new page
    assert await process(db, job, f"{H}/c", outcome="cached") == [
        (job, (await ids(db, f"{H}/d"))[0])]
    assert (await levels(db, job))[f"{H}/d"] == 3
    counted = await counters(db, job)
    assert (counted["processed"], counted["fetched"], counted["cached"]) == (5, 5, 0)
    assert counted["pending"] == 1


async def test_failures_come_from_the_fetch_or_a_reason_and_blocked_ones_apart(
        db: asyncpg.Connection) -> None:
    job, _ = await new_job(db, f"{H}/", f"{H}/gone", f"{H}/boom", f"{H}/robots")
    await fetched(db, f"{H}/gone", status=404)
    await process(db, job, f"{H}/gone")
    await process(db, job, f"{H}/boom", outcome="abandoned", reason="RuntimeError: boom")
    await process(db, job, f"{H}/robots", outcome="blocked", reason="blocked by robots.txt")
    rows = await db.fetch("""SELECT u.url, f.status, f.reason, f.attempts FROM job_failure f
                             JOIN url u ON u.id = f.url_id WHERE f.job_id = $1 ORDER BY 1""", job)
    assert [tuple(r) for r in rows] == [(f"{H}/boom", None, "RuntimeError: boom", 1),
                                        (f"{H}/gone", 404, "HTTP 404", 1),
                                        (f"{H}/robots", None, "blocked by robots.txt", 1)]
    assert await result(db, job) == {}  # an error page's links are not its result
    assert await pending(db, job) == {f"{H}/": False}
    assert await counters(db, job) == {"pending": 1, "processed": 3, "fetched": 1, "cached": 0,
                                       "failed": 2, "blocked": 1, "completed": False}


async def test_max_pages_caps_new_visits_and_counts_them(db: asyncpg.Connection) -> None:
    job, _ = await new_job(db, f"{H}/", max_pages=3, max_level=5)
    await fetched(db, f"{H}/", *(f"{H}/p{i}" for i in range(5)))
    assert len(await process(db, job, f"{H}/")) == 2
    assert len(await levels(db, job)) == 3
    assert await db.fetchval("SELECT visits FROM job WHERE id = $1", job) == 3
    # Links beyond the cap are listed, not followed; a link to a visited page adds no page.
    visited = sorted(u for u in await levels(db, job) if u != f"{H}/")
    await fetched(db, visited[0], f"{H}/new", f"{H}/", visited[1])
    assert await process(db, job, visited[0]) == []
    assert await result(db, job) == {
        f"{H}/": sorted(f"{H}/p{i}" for i in range(5)),
        visited[0]: sorted([f"{H}/new", f"{H}/", visited[1]])}
    assert await db.fetchval("SELECT visits FROM job WHERE id = $1", job) == 3


async def test_the_visit_counter_of_a_capped_job_is_its_visited_set(
        db: asyncpg.Connection) -> None:
    job, _ = await new_job(db, f"{H}/", f"{H}/2", max_pages=50, max_level=4)
    await fetched(db, f"{H}/", *(f"{H}/a{i}" for i in range(10)))
    await fetched(db, f"{H}/2", *(f"{H}/a{i}" for i in range(5, 15)))
    await process(db, job, f"{H}/", f"{H}/2")
    for i in range(15):
        await fetched(db, f"{H}/a{i}", *(f"{H}/b{i}-{j}" for j in range(4)), f"{H}/")
    await process(db, job, *(f"{H}/a{i}" for i in range(15)))
    n = await db.fetchval("SELECT count(*) FROM job_visit WHERE job_id = $1", job)
    assert n == 2 + 15 + 33  # two job URLs, 15 pages at level 1, then as many as fit
    assert await db.fetchval("SELECT visits FROM job WHERE id = $1", job) == n
    uncapped, _ = await new_job(db, f"{H}/free")
    assert await db.fetchval("SELECT visits FROM job WHERE id = $1", uncapped) is None


async def test_a_capped_job_commits_beside_a_level_update_without_deadlock(
        database_url: str, db: asyncpg.Connection) -> None:
    # Transaction B processes x (level 3), whose page links a new page y. Transaction A
    # processes p (level 1), which links x: x is lowered to level 2, and A must wait for B's
    # lock on x's visit. A must not hold the job's row meanwhile, which B needs to count y.
    job, _ = await new_job(db, f"{H}/", max_pages=100, max_level=5)
    await fetched(db, f"{H}/", f"{H}/p", f"{H}/q")
    await fetched(db, f"{H}/q", f"{H}/r")
    await fetched(db, f"{H}/r", f"{H}/x")
    for url in ("/", "/q", "/r"):
        await process(db, job, H + url)
    assert (await levels(db, job))[f"{H}/x"] == 3
    await fetched(db, f"{H}/p", f"{H}/x")
    await fetched(db, f"{H}/x", f"{H}/y")
    (x,) = await ids(db, f"{H}/x")
    a, b = await asyncpg.connect(database_url), await asyncpg.connect(database_url)
    try:
        b_tx = b.transaction()
        await b_tx.start()
        locked_x = await visits.lock_pending(b, [(job, x)])
        a_done = asyncio.create_task(process(db, job, f"{H}/p", conn=a))
        await waiting_on_a_lock(db, a)
        try:
            await visits.complete(b, locked_x, {(job, x): "fetched"})
            await b_tx.commit()
        except BaseException:
            await b_tx.rollback()
            raise
        finally:
            await asyncio.wait_for(asyncio.shield(a_done), 10)
        assert a_done.result() == [(job, x)]  # x: expanded again from level 2
    finally:
        await a.close()
        await b.close()
    assert await levels(db, job) == {f"{H}/": 0, f"{H}/p": 1, f"{H}/q": 1, f"{H}/r": 2,
                                     f"{H}/x": 2, f"{H}/y": 4}
    assert await db.fetchval("SELECT visits FROM job WHERE id = $1", job) == 6
    assert await pending(db, job) == {f"{H}/x": True, f"{H}/y": False}


async def waiting_on_a_lock(db: asyncpg.Connection, conn: asyncpg.Connection,
                            timeout: float = 10) -> None:
    pid = conn.get_server_pid()
    deadline = time.monotonic() + timeout
    while await db.fetchval("SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1",
                            pid) != "Lock":
        assert time.monotonic() < deadline, "the transaction never waited for a lock"
        await asyncio.sleep(0.01)


async def test_a_page_of_a_job_without_a_cap_lowers_then_inserts_its_links(
        db: asyncpg.Connection) -> None:
    # The hot path: no job row, no cursor; one read of the links and three statements, as
    # before chunking: the visited children lowered first (a wait for another commit must not
    # be taken holding new visits that commit may be inserting too), then the rest inserted.
    job, _ = await new_job(db, f"{H}/")
    await fetched(db, f"{H}/", f"{H}/a", f"{H}/b")
    queries: list[str] = []

    def log(q: asyncpg.connection.LoggedQuery) -> None:
        queries.append(" ".join(q.query.split()))

    keys = [(job, u) for u in await ids(db, f"{H}/")]
    async with db.transaction():
        locked = await visits.lock_pending(db, keys)
        db.add_query_logger(log)
        try:
            assert len(await visits.complete(db, locked, {k: "fetched" for k in keys})) == 2
        finally:
            db.remove_query_logger(log)
    visiting = [q for q in queries if "job_visit" in q and "url_link" not in q]
    assert len(visiting) == 2 and "UPDATE job_visit" in visiting[0], visiting
    assert visiting[1].startswith("INSERT INTO job_visit"), visiting
    assert not any("FOR UPDATE" in q for q in queries if "FROM job " in q)
    assert await levels(db, job) == {f"{H}/": 0, f"{H}/a": 1, f"{H}/b": 1}


async def test_a_reexpansion_uses_the_version_the_job_used(db: asyncpg.Connection) -> None:
    # / -> a -> b -> c, c lists d; c is fetched again (for another job) and lists e now; then
    # / -> s -> c lowers c: expanded again from the store, it follows and lists d, not e.
    job = await chain_with_a_shortcut(db)
    (c,) = await ids(db, f"{H}/c")
    used = await db.fetchval("SELECT version FROM job_page WHERE job_id = $1 AND url_id = $2",
                             job, c)
    await fetched(db, f"{H}/c", f"{H}/e")
    assert await db.fetchval("SELECT version FROM url WHERE id = $1", c) == used + 1
    assert await process(db, job, f"{H}/s") == [(job, c)]
    assert await pending(db, job) == {f"{H}/c": True}
    assert await process(db, job, f"{H}/c", outcome="cached") == [
        (job, (await ids(db, f"{H}/d"))[0])]
    assert (await result(db, job))[f"{H}/c"] == [f"{H}/d"]
    assert await db.fetchval("SELECT version FROM job_page WHERE job_id = $1 AND url_id = $2",
                             job, c) == used


async def test_a_cached_job_writes_one_row_per_page(db: asyncpg.Connection) -> None:
    links = [f"{H}/l{i}" for i in range(20)]
    first, _ = await new_job(db, f"{H}/", max_level=1)
    second, _ = await new_job(db, f"{H}/", max_level=1)
    await fetched(db, f"{H}/", *links)
    await process(db, first, f"{H}/")
    await process(db, second, f"{H}/", outcome="cached")
    assert await result(db, second) == await result(db, first) == {f"{H}/": sorted(links)}
    # One job_page row for the page, nothing per link: the link set is the fetch's, stored once.
    assert await db.fetchval("SELECT count(*) FROM job_page WHERE job_id = $1", second) == 1
    assert await db.fetchval("SELECT count(*) FROM job_result") == 0
    (page,) = await ids(db, f"{H}/")
    assert await db.fetchval("SELECT count(*) FROM url_links WHERE url_id = $1", page) == 1


async def test_a_job_from_before_links_once_still_gets_its_result_rows(
        db: asyncpg.Connection) -> None:
    # A job running across migration 0023 (links_derived false) is read from job_result: the
    # processor writes its rows from the link set, as before.
    job, _ = await new_job(db, f"{H}/", max_level=1)
    await db.execute("UPDATE job SET links_derived = false WHERE id = $1", job)
    await fetched(db, f"{H}/", f"{H}/a", f"{H}/b")
    await process(db, job, f"{H}/", outcome="cached")
    rows = await db.fetch("""SELECT p.url, u.url FROM job_result r JOIN url p ON p.id = r.refer_id
                             JOIN url u ON u.id = r.url_id WHERE r.job_id = $1 ORDER BY 2""", job)
    assert [tuple(r) for r in rows] == [(f"{H}/", f"{H}/a"), (f"{H}/", f"{H}/b")]


async def test_a_store_answer_uses_the_version_it_was_planned_with(
        db: asyncpg.Connection) -> None:
    job, _ = await new_job(db, f"{H}/", max_level=1)
    (page,) = await ids(db, f"{H}/")
    await fetched(db, f"{H}/", f"{H}/old")
    (planned,) = await visits.plan(db, [(job, page)], 3600)
    assert planned.cached
    await fetched(db, f"{H}/", f"{H}/new")  # another job's fetch since the plan
    async with db.transaction():
        locked = await visits.lock_pending(db, [(job, page)])
        await visits.complete(db, locked, {(job, page): "cached"},
                              versions={(job, page): planned.version})
    assert await result(db, job) == {f"{H}/": [f"{H}/old"]}
    # A planned version whose links are gone (collected since) falls back to the current one.
    other, _ = await new_job(db, f"{H}/", max_level=1)
    await db.execute("DELETE FROM url_links WHERE url_id = $1 AND version = $2",
                     page, planned.version)
    async with db.transaction():
        locked = await visits.lock_pending(db, [(other, page)])
        await visits.complete(db, locked, {(other, page): "cached"},
                              versions={(other, page): planned.version})
    assert await result(db, other) == {f"{H}/": [f"{H}/new"]}
