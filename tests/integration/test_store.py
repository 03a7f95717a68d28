"""The store against PostgreSQL: upsert_urls (known, new and concurrently inserted URLs), delete_job."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg

from shared.db import jobs
from shared.db.pages import upsert_urls


async def test_upsert_returns_existing_ids_and_inserts_the_rest(db: asyncpg.Connection) -> None:
    known = await db.fetchval(
        "INSERT INTO url (url, mime) VALUES ('http://h/known', 'text/html') RETURNING id")
    ids = await upsert_urls(db, {"http://h/known": "image/png", "http://h/new.css": "text/css"})
    assert ids["http://h/known"] == known
    rows = dict(await db.fetch("SELECT url, mime FROM url ORDER BY url"))
    # the known row keeps its type; the new one gets the guessed type
    assert rows == {"http://h/known": "text/html", "http://h/new.css": "text/css"}
    assert ids["http://h/new.css"] == await db.fetchval(
        "SELECT id FROM url WHERE url = 'http://h/new.css'")
    assert await upsert_urls(db, {"http://h/known": "", "http://h/new.css": ""}) == ids


async def test_upsert_waits_for_a_concurrent_insert_of_the_same_url(database_url: str) -> None:
    first = await asyncpg.connect(database_url)
    second = await asyncpg.connect(database_url)
    try:
        tx = first.transaction()
        await tx.start()
        theirs = await upsert_urls(first, {"http://h/a": "text/html", "http://h/b": "text/html"})
        waiting = asyncio.ensure_future(
            upsert_urls(second, {"http://h/b": "text/html", "http://h/c": "text/html"}))
        # It waits on the uncommitted http://h/b: a lock wait PostgreSQL reports (to a third
        # session: pg_stat_activity is a snapshot within a transaction).
        observer = await asyncpg.connect(database_url)
        try:
            assert await waits_on_a_lock(observer, second.get_server_pid(), waiting)
        finally:
            await observer.close()
        assert not waiting.done()
        await tx.commit()
        ours = await asyncio.wait_for(waiting, 10)
        assert ours["http://h/b"] == theirs["http://h/b"]
        assert await second.fetchval("SELECT count(*) FROM url") == 3
    finally:
        await first.close()
        await second.close()


async def waits_on_a_lock(observer: asyncpg.Connection, pid: int,
                         statement: asyncio.Future[Any], timeout: float = 10.0) -> bool:
    """True once PostgreSQL reports backend ``pid`` waiting on a lock (a row or transaction
    lock); False if its statement finished first, without waiting, or ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    while not statement.done() and time.monotonic() < deadline:
        if await observer.fetchval(
                "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid):
            return True
        await asyncio.sleep(0.01)
    return False


async def test_delete_job_removes_its_results_and_no_other(db: asyncpg.Connection) -> None:
    async with db.transaction():
        gone, (page,) = await jobs.create_job(db, ["http://h/"], 2, False)
        kept, _ = await jobs.create_job(db, ["http://h/"], 2, False)
    link = (await upsert_urls(db, {"http://h/x": "text/html"}))["http://h/x"]
    for job_id in (gone, kept):
        await db.execute("INSERT INTO job_result (job_id, refer_id, url_id) VALUES ($1, $2, $3)",
                         job_id, page, link)
        await db.execute("INSERT INTO job_yield (job_id, url_id, kind, seq, value) "
                         "VALUES ($1, $2, 'item', 0, '{}')", job_id, page)
    await jobs.delete_job(db, gone)
    assert await db.fetch("SELECT job_id FROM job_result") == [(kept,)]
    assert await db.fetch("SELECT job_id FROM job_yield") == [(kept,)]
    assert await db.fetchval("SELECT count(*) FROM job_pending WHERE job_id = $1", gone) == 0
    assert await db.fetchval("SELECT count(*) FROM job WHERE id = $1", kept) == 1


async def test_skip_mime_sql_agrees_with_is_skip_mime(db: asyncpg.Connection) -> None:
    from shared.db.visits import SKIP_MIME_SQL
    from shared.mime import is_skip_mime
    mimes = ["image/png", "image/svg+xml", "text/css", "text/javascript", "application/javascript",
             "application/x-javascript", "text/html", "application/pdf", "", "imagex/png"]
    rows = await db.fetch(f"SELECT u.mime, {SKIP_MIME_SQL} AS skip "
                          "FROM unnest($1::text[]) AS u(mime)", mimes)
    assert {r["mime"]: r["skip"] for r in rows} == {m: is_skip_mime(m) for m in mimes}
