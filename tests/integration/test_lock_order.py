"""Multi-row updates of the commit lock their rows in key order (issue 15, step 7): an ``UPDATE
… FROM unnest`` alone locks rows in whatever order its plan reads them, so two commits sharing
rows could each hold one the other waits for. Here the plan is made to read the rows out of key
order (a sequential scan over a heap where the smaller key's row comes last); while the
statement waits for the smaller key, held by another transaction, it must hold no lock on the
larger one. And a commit that lowers a page whose own commit is running waits for it holding
nothing that commit needs (the worker's whole commit, two at a time, paused in between)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
import pytest

from shared.config import Settings
from shared.db import pages, visits
from shared.db.pool import in_transaction, open_pool
from shared.model import Extraction, FetchedPage
from tests.integration.test_complete import (
    H,
    fetched,
    ids,
    levels,
    new_job,
    pending,
    process,
    waiting_on_a_lock,
)
from worker import commit
from worker.commit import Committer, Done

Key = tuple[int, int]
T = TypeVar("T")

SEQSCAN = "SET enable_indexscan = off; SET enable_bitmapscan = off; SET enable_indexonlyscan = off"


async def holds_no_lock_on(database_url: str, sql: str, *args: object) -> bool:
    """Whether ``sql`` (a ``SELECT … FOR UPDATE NOWAIT``) gets its rows at once."""
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            await conn.execute(sql, *args)
        return True
    except asyncpg.LockNotAvailableError:
        return False
    finally:
        await conn.close()


async def waits_in_key_order(database_url: str, db: asyncpg.Connection, small_lock: str,
                             large_lock: str, args: tuple[object, object],
                             statement: Callable[[asyncpg.Connection], Awaitable[object]]) -> None:
    """Hold the smaller key's row; run ``statement`` (in a transaction, sequential scans only)
    until it waits; the larger key's row must still be free."""
    holder, runner = await asyncpg.connect(database_url), await asyncpg.connect(database_url)
    try:
        tx = holder.transaction()
        await tx.start()
        await holder.execute(small_lock, args[0])

        async def run() -> None:
            async with runner.transaction():
                await runner.execute(SEQSCAN)
                await statement(runner)

        task = asyncio.create_task(run())
        try:
            await waiting_on_a_lock(db, runner)
            assert await holds_no_lock_on(database_url, large_lock.replace(
                "FOR UPDATE", "FOR UPDATE NOWAIT"), args[1])
        finally:
            await tx.rollback()
            await asyncio.wait_for(task, 10)
    finally:
        await holder.close()
        await runner.close()


@pytest.mark.parametrize("not_modified", [False, True], ids=["new version", "304"])
async def test_record_fetches_locks_its_url_rows_in_id_order(
        database_url: str, db: asyncpg.Connection, not_modified: bool) -> None:
    small, large = await ids(db, f"{H}/1", f"{H}/2")
    await db.execute("UPDATE url SET mime = 'text/html' WHERE id = $1", small)  # now last
    lock = "SELECT FROM url WHERE id = $1 FOR UPDATE"

    async def fetch(conn: asyncpg.Connection) -> None:
        await pages.record_fetches(conn, [
            (FetchedPage(u, 304 if not_modified else 200, "text/html", None, cacheable=True),
             Extraction()) for u in (small, large)])

    await waits_in_key_order(database_url, db, lock, lock, (small, large), fetch)


async def test_lowering_levels_locks_the_visits_in_key_order(
        database_url: str, db: asyncpg.Connection) -> None:
    # / links x, y at level 1... visited at level 3 through a longer path; then a page at level 0
    # links both: both are lowered, in one statement (_insert_first).
    job, _ = await new_job(db, f"{H}/", f"{H}/r", max_level=6)
    await fetched(db, f"{H}/r", f"{H}/r1")
    await fetched(db, f"{H}/r1", f"{H}/r2")
    await fetched(db, f"{H}/r2", f"{H}/x", f"{H}/y")
    for url in ("/r", "/r1", "/r2"):
        await process(db, job, H + url)
    small, large = sorted(await ids(db, f"{H}/x", f"{H}/y"))
    await db.execute("UPDATE job_visit SET level = level WHERE job_id = $1 AND url_id = $2",
                     job, small)  # now last in the heap
    await fetched(db, f"{H}/", f"{H}/x", f"{H}/y")
    lock = f"SELECT FROM job_visit WHERE job_id = {job} AND url_id = $1 FOR UPDATE"
    (root,) = await ids(db, f"{H}/")

    async def complete(conn: asyncpg.Connection) -> None:
        locked = await visits.lock_pending(conn, [(job, root)])
        await visits.complete(conn, locked, {(job, root): "fetched"})

    await waits_in_key_order(database_url, db, lock, lock, (small, large), complete)


@pytest.mark.parametrize("url", ["new", "known"])
async def test_a_page_lowered_while_its_own_commit_runs_is_no_deadlock(
        settings: Settings, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch,
        url: str) -> None:
    # Commit B holds x (level 3: its page is being committed) and links c. Commit A, of p
    # (level 1), also links x and c: it lowers x to level 2 and waits for B. Nothing A holds
    # meanwhile may be what B needs next: not a new URL c (upserted before a visit is locked),
    # not a new visit c (inserted after lowering). Each was a deadlock in a crawl.
    job, _ = await new_job(db, f"{H}/", max_level=5)
    await fetched(db, f"{H}/", f"{H}/p", f"{H}/q")
    await fetched(db, f"{H}/q", f"{H}/r")
    await fetched(db, f"{H}/r", f"{H}/x")
    for page in ("/", "/q", "/r"):
        await process(db, job, H + page)
    c = f"{H}/c"
    if url == "known":  # a URL stored already, not a visit of this job yet
        await ids(db, c)
    p, x = await ids(db, f"{H}/p", f"{H}/x")
    held, go = asyncio.Event(), asyncio.Event()
    real = visits.lock_pending

    async def lock_then_wait(conn: asyncpg.Connection, keys: list[Key]) -> list[visits.Pending]:
        locked = await real(conn, keys)
        if keys == [(job, x)]:
            held.set()
            await go.wait()
        return locked

    async def once(pool: asyncpg.Pool, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        return await in_transaction(pool, work, attempts=1)  # a deadlock raises

    monkeypatch.setattr(commit.visits, "lock_pending", lock_then_wait)
    monkeypatch.setattr(commit, "in_transaction", once)

    def page(url_id: int, *links: str) -> Done:
        return Done((job, url_id), [], FetchedPage(url_id, 200, "text/html", None, cacheable=True),
                    1, extraction=Extraction(tuple((u, "text/html") for u in links)))

    async with open_pool(settings.database_url, min_size=1, max_size=2) as pool:
        b = asyncio.create_task(Committer(settings, pool)._transaction([page(x, c)]))
        await asyncio.wait_for(held.wait(), 10)
        a = asyncio.create_task(Committer(settings, pool)._transaction([page(p, f"{H}/x", c)]))
        try:
            await some_commit_waits(db)
        finally:
            go.set()
            done = await asyncio.gather(a, b, return_exceptions=True)
    assert done == [None, None]
    assert (await levels(db, job))[f"{H}/x"] == 2 and (await levels(db, job))[c] == 2
    assert await pending(db, job) == {f"{H}/x": True, c: False}  # x: expanded again


async def some_commit_waits(db: asyncpg.Connection, timeout: float = 10) -> None:
    """Until a transaction of this database waits for a lock."""
    deadline = time.monotonic() + timeout
    while not await db.fetchval("""SELECT count(*) FROM pg_stat_activity
                                   WHERE datname = current_database()
                                     AND wait_event_type = 'Lock'"""):
        assert time.monotonic() < deadline, "no transaction waited for a lock"
        await asyncio.sleep(0.01)
