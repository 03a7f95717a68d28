"""``GET /result`` against slow clients: a reader that stops reading holds neither a pooled
PostgreSQL connection nor a snapshot, so it cannot starve ``/status`` or ``/healthz``; a full pool
is a prompt 503, not a hang."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest

from shared.config import Settings
from shared.db import jobs
from tests.e2e.stack import Stack
from tests.results import write_result
from web_server.app import POOL_SIZE

pytestmark = pytest.mark.e2e

PAGES, LINKS = 400, 400  # 160,000 links, about 9 MB of JSON: more than the socket buffers hold


@pytest.fixture
async def web(settings: Settings) -> AsyncIterator[Stack]:
    st = await Stack(settings).start(foremen=0, workers=0)
    yield st
    await st.stop()


async def make_big_result(db: asyncpg.Connection, job: int, derived: bool = True) -> None:
    """PAGES pages of LINKS links each, written straight into the store (``derived``: as a job
    since migration 0023 has them; else as one made before, in job_result)."""
    await db.execute("""
        INSERT INTO url (url) SELECT 'http://big.example/page/' || p FROM generate_series(1, $1) p
        UNION ALL SELECT 'http://big.example/link/' || l || '/padding-to-make-it-longer'
        FROM generate_series(1, $2) l
        ON CONFLICT DO NOTHING""", PAGES, LINKS)
    await write_result(db, job, derived, """
        SELECT r.id AS refer_id, u.id AS url_id
        FROM url r JOIN url u ON u.url LIKE 'http://big.example/link/%'
        WHERE r.url LIKE 'http://big.example/page/%'""")


async def stalled_reader(port: int, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Send the request, read one byte of the answer, then stop reading (the caller holds it)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: writes block
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=1024)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    await writer.drain()
    assert await asyncio.wait_for(reader.read(1), 15) == b"H"
    return reader, writer


CHUNK_STATEMENT_BOUND = 5.0  # seconds: far longer than one chunk's statement takes


async def open_transactions(db: asyncpg.Connection) -> tuple[int, float]:
    """Backends of this database in a transaction or holding a snapshot, and the age in seconds
    of the oldest such transaction (0 if none)."""
    row = await db.fetchrow("""
        SELECT count(*) AS n,
               coalesce(max(extract(epoch FROM clock_timestamp() - xact_start)), 0)::float8 AS age
        FROM pg_stat_activity
        WHERE datname = current_database() AND pid <> pg_backend_pid()
          AND (state LIKE 'idle in transaction%' OR backend_xmin IS NOT NULL)""")
    assert row is not None
    return int(row["n"]), float(row["age"])


async def until_no_transaction(db: asyncpg.Connection, timeout: float = 60) -> None:
    """Poll until no backend holds a transaction or a snapshot. Readers whose writes are not yet
    blocked may be in a chunk's statement at any one moment (so one look is not enough), but no
    transaction may ever be older than one chunk's statement: a stalled reader holding a snapshot
    would keep one open, ageing, for as long as it stalls."""
    deadline = time.monotonic() + timeout
    while True:
        n, age = await open_transactions(db)
        assert age < CHUNK_STATEMENT_BOUND, f"a transaction open for {age:.1f}s"
        if n == 0:
            return
        assert time.monotonic() < deadline, f"{n} transactions still open"
        await asyncio.sleep(0.05)


async def test_stalled_readers_do_not_block_status_or_healthz(web: Stack,
                                                              db: asyncpg.Connection) -> None:
    job = await web.post_job(["http://big.example/page/1"])
    await make_big_result(db, job)
    port = int(web.base.rsplit(":", 1)[1])
    readers = [await stalled_reader(port, f"/result/{job}") for _ in range(POOL_SIZE + 2)]
    try:
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as s:
            for path in ("/healthz", f"/status/{job}", "/healthz"):
                async with s.get(web.base + path) as r:
                    assert r.status == 200, await r.text()
        # A stalled reader holds no snapshot: nothing keeps vacuum from its work.
        await until_no_transaction(db)
    finally:
        for _, writer in readers:
            writer.close()
    # A reader that reads it all gets every link, each page once, links sorted.
    async with aiohttp.ClientSession() as s, s.get(f"{web.base}/result/{job}") as r:
        result = json.loads(await r.read())
    assert len(result) == PAGES
    links = sorted(f"http://big.example/link/{i}/padding-to-make-it-longer"
                   for i in range(1, LINKS + 1))
    assert all(v == links for v in result.values())


async def test_a_full_pool_is_a_prompt_503(web: Stack, db: asyncpg.Connection) -> None:
    """Every pooled connection stuck behind a lock: the next request waits a bounded time for a
    connection, then answers 503 JSON; /healthz does not need the pool."""
    job = await web.post_job(["http://x.example/"])
    async with db.transaction():
        await db.execute("LOCK TABLE job_url IN ACCESS EXCLUSIVE MODE")
        stuck = [asyncio.create_task(web.request("GET", f"/status/{job}"))
                 for _ in range(POOL_SIZE)]
        deadline = time.monotonic() + 30
        while await lock_waiters(db) < POOL_SIZE:
            assert time.monotonic() < deadline, "the requests did not reach the lock"
            await asyncio.sleep(0.05)
        started = time.monotonic()
        status, body, headers = await asyncio.wait_for(web.request("GET", f"/status/{job}"), 30)
        assert (status, body["code"]) == (503, "Unavailable")
        assert headers["Retry-After"] == "5"
        assert time.monotonic() - started < 15
        status, _, _ = await asyncio.wait_for(web.request("GET", "/healthz"), 10)
        assert status == 200
    for status, _, _ in await asyncio.gather(*stuck):
        assert status == 200


async def lock_waiters(db: asyncpg.Connection) -> int:
    """Backends of this database waiting for a lock (read afresh: inside a transaction,
    pg_stat_activity is otherwise a snapshot taken at its first use)."""
    await db.execute("SELECT pg_stat_clear_snapshot()")
    return int(await db.fetchval("""SELECT count(*) FROM pg_stat_activity
                                     WHERE datname = current_database() AND wait_event_type = 'Lock'
                                     """))


@pytest.mark.parametrize("derived", [True, False], ids=["derived", "job_result"])
async def test_result_pages_cover_the_job_in_index_order(db: asyncpg.Connection,
                                                         derived: bool) -> None:
    """Read in small chunks, the result is every page once, each with its links sorted; no chunk
    reads more than its own rows (no sort of the whole job)."""
    job_id, _ = await jobs.create_job(db, ["http://big.example/page/1"], 2, False)
    await make_big_result(db, job_id, derived)
    seen: list[str] = []
    after = (0, 0)
    while True:
        chunk = await jobs.result_chunk(db, job_id, after, None, links=7 * LINKS)
        if chunk is None:
            break
        seen += [page for page, _ in chunk.pages]
        assert not chunk.continues
        assert all(links == sorted(links) and len(links) == LINKS for _, links in chunk.pages)
        after = chunk.after
    assert len(seen) == len(set(seen)) == PAGES
    assert await chunk_rows_read(db, job_id, (0, 0), 7 * LINKS + 1, derived) <= 7 * LINKS + 1


HUGE = 3 * jobs.RESULT_CHUNK_LINKS + 123  # links on one page: more than a chunk holds


@pytest.mark.parametrize("derived", [True, False], ids=["derived", "job_result"])
async def test_a_page_with_many_links_streams_in_bounded_chunks(web: Stack,
                                                                db: asyncpg.Connection,
                                                                derived: bool) -> None:
    """A page of HUGE links between two small pages: no chunk's statement reads more than
    RESULT_CHUNK_LINKS + 1 rows, and ``/result`` is the whole result: the small pages' links
    sorted, the huge page's links every one once, in the store's (url id) order."""
    job = await web.post_job(["http://huge.example/"])
    pages = ["http://huge.example/a", "http://huge.example/b", "http://huge.example/c"]
    small = [f"http://huge.example/s/{i}" for i in (3, 10, 2, 1)]  # ids not in text order
    huge = [f"http://huge.example/l/{i}" for i in range(HUGE)]
    await db.execute("INSERT INTO url (url) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING",
                     pages + small + huge)
    for page, links in zip(pages, (small, huge, small), strict=True):
        await write_result(db, job, derived, """
            SELECT r.id AS refer_id, u.id AS url_id FROM url r, url u
            WHERE r.url = $2 AND u.url = ANY($3::text[])""", page, links)
    huge_ids = await db.fetch("SELECT url FROM url WHERE url = ANY($1::text[]) ORDER BY id", huge)
    expected = {pages[0]: sorted(small), pages[1]: [r["url"] for r in huge_ids],
                pages[2]: sorted(small)}
    # Every chunk's statement reads a bounded number of rows, the huge page's too.
    after = (0, 0)
    chunks = 0
    while (chunk := await jobs.result_chunk(db, job, after, None)) is not None:
        rows = await chunk_rows_read(db, job, after, jobs.RESULT_CHUNK_LINKS + 1, derived)
        assert rows <= jobs.RESULT_CHUNK_LINKS + 1
        assert sum(len(links) for _, links in chunk.pages) <= jobs.RESULT_CHUNK_LINKS
        after, chunks = chunk.after, chunks + 1
    assert chunks >= 4
    async with aiohttp.ClientSession() as s, s.get(f"{web.base}/result/{job}") as r:
        assert r.status == 200
        body = await r.read()
    assert json.loads(body) == expected
    assert list(json.loads(body)) == pages
    # Go's MarshalIndent layout, across the chunks the huge page spans.
    assert body.decode() == json.dumps(expected, indent=2) + "\n"


async def chunk_rows_read(db: asyncpg.Connection, job: int, after: tuple[int, int],
                          limit: int, derived: bool) -> int:
    """The most rows any node of a chunk's statement produced, run as result_chunk runs it."""
    sql = (jobs.RESULT_CHUNK_DERIVED_SQL if derived else jobs.RESULT_CHUNK_SQL).format(filter="")
    async with db.transaction():
        await db.execute(jobs.RESULT_CHUNK_SETTINGS)
        plan = await db.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}",
                                 job, after[0], after[1], limit)
    return _max_rows(json.loads(plan)[0]["Plan"])


def _max_rows(node: dict[str, Any]) -> int:
    """The most rows any node of a plan produced (per loop)."""
    return max([int(node["Actual Rows"]), *(_max_rows(p) for p in node.get("Plans", []))])


async def test_a_derived_result_reads_byte_for_byte_as_job_result(
        web: Stack, db: asyncpg.Connection) -> None:
    """The same links stored both ways (a job's link sets since migration 0023, job_result rows
    before): ``/result`` is the same bytes in every format, with and without ``?mime=``, a page
    of more links than a chunk (a third of them images: more than a chunk of those too) among
    small ones, one of which has no link of some types."""
    old = await web.post_job(["http://bytes.example/"])
    new = await web.post_job(["http://bytes.example/"])
    pages = [f"http://bytes.example/{p}" for p in "abcd"]
    small = [f"http://bytes.example/s/{i}" for i in (3, 10, 2, 1, 7)]  # ids not in text order
    images = [f"http://bytes.example/i/{i}.png" for i in (2, 1)]
    huge = [f"http://bytes.example/l/{i}" + (".png" if i % 3 == 0 else "") for i in range(HUGE)]
    await db.execute("""
        INSERT INTO url (url, mime)
        SELECT u, CASE WHEN u LIKE '%.png' THEN 'image/png' ELSE 'text/html' END
        FROM unnest($1::text[]) u ON CONFLICT DO NOTHING""", pages + small + images + huge)
    for page, links in zip(pages, (small + images, huge, small, images), strict=True):
        for job, derived in ((old, False), (new, True)):
            await write_result(db, job, derived, """
                SELECT r.id AS refer_id, u.id AS url_id FROM url r, url u
                WHERE r.url = $2 AND u.url = ANY($3::text[])""", page, links)
    assert await db.fetchval("SELECT count(*) FROM job_result WHERE job_id = $1", new) == 0
    for query in ({}, {"mime": "image/"}, {"mime": "text/html"}, {"mime": "IMAGE/PNG"},
                  {"mime": "none/"}):
        for fmt in ("json", "jsonl", "csv"):
            bodies = []
            for job in (old, new):
                async with aiohttp.ClientSession() as s, s.get(
                        f"{web.base}/result/{job}", params={"format": fmt, **query}) as r:
                    assert r.status == 200
                    bodies.append(await r.read())
            assert bodies[0] == bodies[1], (fmt, query)
            if fmt == "jsonl" and not query:  # the huge page comes in parts, as before
                assert sum(1 for line in bodies[1].splitlines()
                           if json.loads(line)["page"] == pages[1]) == 4
