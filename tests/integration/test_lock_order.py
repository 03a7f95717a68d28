"""Multi-row updates of the commit lock their rows in key order (issue 15, step 7): an ``UPDATE
… FROM unnest`` alone locks rows in whatever order its plan reads them, so two commits sharing
rows could each hold one the other waits for. Here the plan is made to read the rows out of key
order (a sequential scan over a heap where the smaller key's row comes last); while the
statement waits for the smaller key, held by another transaction, it must hold no lock on the
larger one."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import asyncpg
import pytest

from shared.db import pages, visits
from shared.model import Extraction, FetchedPage
from tests.integration.test_complete import H, fetched, ids, new_job, process, waiting_on_a_lock

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
