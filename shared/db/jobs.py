"""Jobs: creation (one transaction), status (counters, not scans) and results in chunks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from shared.robots import REFUSALS
from shared.scope import Scope


@dataclass(frozen=True, slots=True)
class JobURLState:
    url: str
    completed: bool
    pending: int
    processed: int
    fetched: int
    cached: int
    failed: int
    blocked: int


@dataclass(frozen=True, slots=True)
class JobStatus:
    job_id: int
    created_on: datetime
    max_level: int
    force_crawl: bool
    elapsed: float  # seconds, measured on the database's clock
    urls: list[JobURLState]
    scope: Scope
    max_pages: int | None


async def create_job(conn: asyncpg.Connection, urls: Sequence[str], max_level: int,
                     force_crawl: bool, scope: Scope = Scope(),  # noqa: B008 - frozen
                     max_pages: int | None = None, sitemaps: bool = False) -> tuple[int, list[int]]:
    """Insert the job, its URLs and their first pending visits; returns (job id, url ids).

    Run it in a transaction: the job is either wholly there or not at all.
    """
    job_id = await conn.fetchval("""
        INSERT INTO job (max_level, force_crawl, scope, allow, deny, max_pages, sitemaps, visits)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id""",
        max_level, force_crawl, scope.kind, list(scope.allow), list(scope.deny), max_pages,
        sitemaps, None if max_pages is None else len(set(urls)))  # visits.py: the cap's count
    from shared.db.pages import upsert_urls
    ids_by_url = await upsert_urls(conn, {u: "" for u in urls})
    ids = [ids_by_url[u] for u in urls]
    await conn.execute("""
        INSERT INTO job_url (job_id, url_id, pending) SELECT $1, u, 1 FROM unnest($2::bigint[]) u;
        """, job_id, ids)
    await conn.execute(
        "INSERT INTO job_visit (job_id, url_id, level) SELECT $1, u, 0 FROM unnest($2::bigint[]) u",
        job_id, ids)
    await conn.execute("""
        INSERT INTO job_pending (job_id, url_id, origin_id)
        SELECT $1, u, u FROM unnest($2::bigint[]) u""", job_id, ids)
    return job_id, ids


async def delete_job(conn: asyncpg.Connection, job_id: int) -> None:
    """Delete a job and all its rows (job_result has no foreign key to cascade from).

    The job row goes first: its cascade waits for any transaction still processing the job's
    pending visits, and the next statement (a new snapshot) then sees the results they wrote."""
    async with conn.transaction():
        await conn.execute("DELETE FROM job WHERE id = $1", job_id)
        await conn.execute("DELETE FROM job_result WHERE job_id = $1", job_id)


async def job_status(conn: asyncpg.Connection, job_id: int) -> JobStatus | None:
    job = await conn.fetchrow("""
        SELECT j.id, j.created_on, j.max_level, j.force_crawl, j.scope, j.allow, j.deny,
               j.max_pages,
               extract(epoch FROM (
                   SELECT CASE WHEN count(*) = 0 OR bool_or(completed_on IS NULL) THEN now()
                               ELSE max(completed_on) END
                   FROM job_url WHERE job_id = j.id) - j.created_on)::float8 AS elapsed
        FROM job j WHERE j.id = $1""", job_id)
    if job is None:
        return None
    rows = await conn.fetch("""
        SELECT u.url, ju.completed_on IS NOT NULL AS completed, ju.pending, ju.processed,
               ju.fetched, ju.cached, ju.failed, ju.blocked
        FROM job_url ju JOIN url u ON u.id = ju.url_id
        WHERE ju.job_id = $1 ORDER BY u.url""", job_id)
    return JobStatus(job["id"], job["created_on"], job["max_level"], job["force_crawl"],
                     max(0.0, job["elapsed"]), [JobURLState(**dict(r)) for r in rows],
                     Scope(job["scope"], tuple(job["allow"]), tuple(job["deny"])),
                     job["max_pages"])


async def job_exists(conn: asyncpg.Connection, job_id: int) -> bool:
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM job WHERE id = $1)", job_id))


def escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


RESULT_CHUNK_SQL = """
    WITH pages AS (
        SELECT DISTINCT refer_id FROM job_result
        WHERE job_id = $1 AND refer_id > $2
        ORDER BY refer_id
        LIMIT $3)
    SELECT p.refer_id, r.url,
           ARRAY(SELECT u.url FROM job_result jr JOIN url u ON u.id = jr.url_id
                 WHERE jr.job_id = $1 AND jr.refer_id = p.refer_id {filter}
                 ORDER BY u.url) AS links
    FROM pages p JOIN url r ON r.id = p.refer_id
    ORDER BY p.refer_id"""


@dataclass(frozen=True, slots=True)
class ResultChunk:
    pages: list[tuple[str, list[str]]]  # (page, its links sorted), pages with no links left out
    after: int                          # the key to read the next chunk from


async def result_chunk(conn: asyncpg.Connection, job_id: int, after: int,
                       mime_prefix: str | None, pages: int = 100) -> ResultChunk | None:
    """The next ``pages`` pages of a job's result after page id ``after`` (0 to start), each
    with its links sorted; None when there are no more.

    Pages come in the order of ``job_result``'s primary key (``job_id, refer_id, url_id``), so
    a chunk reads its own rows from the index and nothing else: no call sorts the whole job,
    and each chunk is one short statement, holding no snapshot between chunks. ``mime_prefix``
    is a case-insensitive prefix of the link's stored MIME type, with LIKE wildcards taken
    literally; a page none of whose links match is skipped.
    """
    if mime_prefix:
        rows = await conn.fetch(
            RESULT_CHUNK_SQL.format(filter="AND u.mime LIKE $4 ESCAPE '\\'"),
            job_id, after, pages, escape_like(mime_prefix.lower()) + "%")
    else:
        rows = await conn.fetch(RESULT_CHUNK_SQL.format(filter=""), job_id, after, pages)
    if not rows:
        return None
    return ResultChunk([(r["url"], r["links"]) for r in rows if r["links"]], rows[-1]["refer_id"])


async def job_failures(conn: asyncpg.Connection, job_id: int,
                       blocked: bool = False) -> list[asyncpg.Record]:
    """The job's failed visits (or, with ``blocked``, those robots.txt kept us from): URL,
    HTTP status (if any), reason, attempts; sorted by URL."""
    return list(await conn.fetch("""
        SELECT u.url, f.status, f.reason, f.attempts
        FROM job_failure f JOIN url u ON u.id = f.url_id
        WHERE f.job_id = $1 AND (f.reason = ANY($2::text[])) = $3 ORDER BY u.url""",
        job_id, list(REFUSALS), blocked))
