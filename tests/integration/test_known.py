"""What a worker's commits know without asking PostgreSQL (``shared.db.known``, issue 15), against
real PostgreSQL: ``pages.upsert_urls`` takes the URL ids it knows and notes the rest,
``visits.complete`` leaves out the children it knows visited at their level or nearer and notes
the others, and ``where`` tells a transaction's server process and WAL positions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import asyncpg

from shared.db import jobs, pages, visits
from shared.db.known import Known, Server, where
from shared.model import Extraction, FetchedPage

Key = tuple[int, int]


def flushed(known: Known[Any], server: Server) -> None:
    """The next transactions start at ``server``, then with the WAL flushed there: what
    committed before is usable."""
    known.begin(server)
    known.begin(Server(server.backend, server.inserted, server.inserted))


def durable(known: Known[Any], facts: Mapping[Any, int], server: Server) -> None:
    """Facts a committed transaction noted, made usable."""
    known.begin(server)
    known.note(facts)
    known.committed()
    flushed(known, server)


async def test_known_urls_are_taken_from_the_cache_without_a_look_up(
        db: asyncpg.Connection) -> None:
    # The cache's id for a URL that is not in the table comes back as it is, and the URL is
    # not inserted: proof that nothing looked it up. The other URL is inserted and noted.
    known: Known[str] = Known(10)
    server = await where(db)
    durable(known, {"http://cached.example/": 987654321}, server)
    known.begin(server)
    async with db.transaction():
        ids = await pages.upsert_urls(
            db, {"http://cached.example/": "text/html", "http://new.example/": "text/html"},
            known)
    new = await db.fetchval("SELECT id FROM url WHERE url = 'http://new.example/'")
    assert ids == {"http://cached.example/": 987654321, "http://new.example/": new}
    assert await db.fetchval(
        "SELECT count(*) FROM url WHERE url = 'http://cached.example/'") == 0
    known.committed()
    assert known.get("http://new.example/") is None  # committed, not yet known durable
    flushed(known, await where(db))
    assert known.get("http://new.example/") == new
    assert await pages.upsert_urls(db, {"http://new.example/": ""}, known) == {
        "http://new.example/": new}


async def complete(db: asyncpg.Connection, keys: list[Key], known: Known[Key],
                   links: dict[int, list[str]]) -> None:
    """One completion transaction of these visits, each page fetched with its links; what it
    noted made usable."""
    known.begin(await where(db))
    async with db.transaction():
        locked = await visits.lock_pending(db, keys)
        await pages.record_fetches(db, [(
            FetchedPage(u, 200, "text/html", None, cacheable=True),
            Extraction(tuple((x, "text/html") for x in links[u]))) for _, u in keys])
        await visits.complete(db, locked, {k: "fetched" for k in keys},
                              attempts={k: 1 for k in keys}, known=known)
    known.committed()
    flushed(known, await where(db))


async def test_children_known_visited_are_left_out_and_the_rest_noted(
        db: asyncpg.Connection) -> None:
    async with db.transaction():
        job, (a, b) = await jobs.create_job(
            db, ["http://k.example/a", "http://k.example/b"], 3, False)
    ids = await pages.upsert_urls(db, {f"http://k.example/{x}": "text/html" for x in "cde"})
    c, d, e = (ids[f"http://k.example/{x}"] for x in "cde")
    known: Known[Key] = Known(100)
    # The worker believes d visited at level 1 (a fact the database does not have): the link
    # to d, a child at level 1, is left out, as no work; c is a new visit, noted at level 1.
    durable(known, {(job, d): 1}, await where(db))
    await complete(db, [(job, a)], known, {a: ["http://k.example/c", "http://k.example/d"]})
    visited = {r["url_id"]: r["level"] for r in await db.fetch(
        "SELECT url_id, level FROM job_visit WHERE job_id = $1", job)}
    assert visited == {a: 0, b: 0, c: 1}
    assert known.get((job, c)) == 1 and known.get((job, a)) == 0
    # b links to c (known at 1: left out) and e (new): the rows are those without the cache
    await complete(db, [(job, b)], known, {b: ["http://k.example/c", "http://k.example/e"]})
    visited = {r["url_id"]: r["level"] for r in await db.fetch(
        "SELECT url_id, level FROM job_visit WHERE job_id = $1", job)}
    assert visited == {a: 0, b: 0, c: 1, e: 1}
    assert await db.fetchval(
        "SELECT count(*) FROM job_pending WHERE job_id = $1 AND url_id = ANY($2::bigint[])",
        job, [c, e]) == 2


async def test_where_tells_the_server_process_and_the_wal(db: asyncpg.Connection,
                                                          database_url: str) -> None:
    first = await where(db)
    assert first.flushed <= first.inserted
    await db.execute("CREATE TEMP TABLE wal_grows (x int); INSERT INTO wal_grows VALUES (1)")
    second = await where(db)
    assert second.backend == first.backend and second.inserted > first.inserted
    other = await asyncpg.connect(database_url)
    try:
        assert (await where(other)).backend != first.backend
    finally:
        await other.close()
