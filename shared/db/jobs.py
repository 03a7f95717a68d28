"""Jobs: creation (one transaction), status (counters, not scans) and results in chunks."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from shared.errors import BadRequest
from shared.jobspec import follow_mode, ruleset_of, stored_spec
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
    spec: dict[str, Any]  # as stored (shared.jobspec.JobSpec.stored): without the URLs


async def create_job(conn: asyncpg.Connection, urls: Sequence[str], max_level: int,
                     force_crawl: bool, scope: Scope = Scope(),  # noqa: B008 - frozen
                     max_pages: int | None = None, sitemaps: bool = False,
                     spec: dict[str, Any] | None = None) -> tuple[int, list[int]]:
    """Insert the job, its URLs and their first pending visits; returns (job id, url ids).

    ``spec`` is the stored job spec (``JobSpec.stored()``); by default the one these arguments
    make. The columns stay what the hot path reads; ``fetcher``, ``ruleset`` and ``follow``
    come from the spec. An id crawl's id sets (``ids.known``, ``ids.explored``: complete sets,
    checked by the caller) are seeded after the job URLs (``idsets.seed_job``); given no URLs,
    the job starts from the least known id's URL that is not explored, and BadRequest
    ``Invalid ids.known: every known id is explored`` when there is none (nothing to fetch). Run it in a transaction: the job is either
    wholly there or not at all.
    """
    from shared.db import idsets
    from shared.db.pages import upsert_urls
    if spec is None:
        spec = stored_spec(max_level, force_crawl, sitemaps, scope, max_pages)
    id_spec = spec.get("ids") or {}
    known, explored = (UUID(id_spec[k]) if id_spec.get(k) else None for k in ("known", "explored"))
    if not urls and known is not None:
        first = await idsets.first_url(conn, id_spec["urlFormat"], known, explored)
        if first is None:  # DS-3: an explored id is never fetched, so nothing would be
            raise BadRequest("Invalid ids.known: every known id is explored")
        urls = [first]
    job_id = await conn.fetchval("""
        INSERT INTO job (max_level, force_crawl, scope, allow, deny, max_pages, sitemaps, visits,
                         spec, fetcher, ruleset, follow)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10, $11, $12) RETURNING id""",
        max_level, force_crawl, scope.kind, list(scope.allow), list(scope.deny), max_pages,
        sitemaps, None if max_pages is None else len(set(urls)),  # visits.py: the cap's count
        json.dumps(spec), spec.get("fetcher", "http"), ruleset_of(spec), follow_mode(spec))
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
    if (known or explored) and ids:
        await idsets.seed_job(conn, job_id, ids[0], id_spec["urlFormat"], known, explored)
    return job_id, ids


async def delete_job(conn: asyncpg.Connection, job_id: int) -> None:
    """Delete a job and all its rows (job_result and job_yield have no foreign key to cascade
    from).

    The job row goes first: its cascade waits for any transaction still processing the job's
    pending visits, and the next statement (a new snapshot) then sees the results they wrote."""
    async with conn.transaction():
        await conn.execute("DELETE FROM job WHERE id = $1", job_id)
        await conn.execute("DELETE FROM job_result WHERE job_id = $1", job_id)
        await conn.execute("DELETE FROM job_yield WHERE job_id = $1", job_id)


async def load_specs(conn: asyncpg.Connection, job_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """The stored specs (``job.spec``, as dicts) of these jobs, by id; a deleted job is left out."""
    rows = await conn.fetch("SELECT id, spec::text AS spec FROM job WHERE id = ANY($1::bigint[])",
                            list(job_ids))
    return {r["id"]: json.loads(r["spec"]) for r in rows}


@dataclass(frozen=True, slots=True)
class JobYield:
    url: str
    kind: str
    seq: int
    value: dict[str, Any]


async def job_yields(conn: asyncpg.Connection, job_id: int, after: tuple[int, str, int] = (0, "", -1),
                     limit: int = 5000,
                     kind: str | None = None) -> list[tuple[tuple[int, str, int], JobYield]]:
    """The job's yields (besides links) after the key ``after`` ((url id, kind, seq); the
    default starts at the beginning), at most ``limit``, in key order: each page's in document
    order per kind. Each comes with its key, to read on from. With ``kind``, only the yields of
    that kind (``item``, ``link``, ``id``, ``body``), read through the ``job_yield_kind`` index:
    the key's kind is then ignored."""
    if kind is None:
        rows = await conn.fetch("""
            SELECT y.url_id, y.kind, y.seq, y.value::text AS value,
                   (SELECT u.url FROM url u WHERE u.id = y.url_id) AS url
            FROM job_yield y
            WHERE y.job_id = $1 AND (y.url_id, y.kind, y.seq) > ($2, $3, $4)
            ORDER BY y.url_id, y.kind, y.seq LIMIT $5""", job_id, *after, limit)
    else:
        rows = await conn.fetch("""
            SELECT y.url_id, y.kind, y.seq, y.value::text AS value,
                   (SELECT u.url FROM url u WHERE u.id = y.url_id) AS url
            FROM job_yield y
            WHERE y.job_id = $1 AND y.kind = $4 AND (y.url_id, y.seq) > ($2, $3)
            ORDER BY y.job_id, y.kind, y.url_id, y.seq LIMIT $5""",
            job_id, after[0], after[2], kind, limit)
    return [((r["url_id"], r["kind"], r["seq"]),
             JobYield(r["url"], r["kind"], r["seq"], json.loads(r["value"]))) for r in rows]


async def body_ref(conn: asyncpg.Connection, job_id: int, url: str) -> dict[str, Any] | None:
    """Where the job saved the body of the page at ``url`` (canonical): the value of its first
    committed ``body`` yield (an output's ref: output, file, offset, length, digest, ...), or
    None when the job has no saved body for it."""
    value = await conn.fetchval("""
        SELECT y.value::text FROM url u
        JOIN job_yield y ON y.job_id = $1 AND y.kind = 'body' AND y.url_id = u.id
        WHERE md5(u.url)::uuid = md5($2)::uuid AND u.url = $2
        ORDER BY y.seq LIMIT 1""", job_id, url)
    return None if value is None else dict(json.loads(value))


async def job_status(conn: asyncpg.Connection, job_id: int) -> JobStatus | None:
    job = await conn.fetchrow("""
        SELECT j.id, j.created_on, j.max_level, j.force_crawl, j.scope, j.allow, j.deny,
               j.max_pages, j.spec::text AS spec,
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
                     job["max_pages"], json.loads(job["spec"]))


async def job_exists(conn: asyncpg.Connection, job_id: int) -> bool:
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM job WHERE id = $1)", job_id))


def escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


RESULT_CHUNK_SQL = """
    SELECT l.refer_id, l.url_id,
           (SELECT u.url FROM url u WHERE u.id = l.url_id) AS url,
           (SELECT r.url FROM url r WHERE r.id = l.refer_id) AS page
    FROM (SELECT jr.refer_id, jr.url_id FROM job_result jr
          WHERE jr.job_id = $1 AND (jr.refer_id, jr.url_id) > ($2, $3) {filter}
          ORDER BY jr.refer_id, jr.url_id
          LIMIT $4) l
    ORDER BY l.refer_id, l.url_id"""
# Subqueries per row, not joins, and these settings for its transaction: the plan then reads
# job_result's index in key order and stops at the limit, whatever the table's statistics say
# (stale while a job runs), instead of reading the whole job to sort it.
RESULT_CHUNK_SETTINGS = ("SET LOCAL enable_sort = off; SET LOCAL enable_bitmapscan = off; "
                         "SET LOCAL enable_seqscan = off")

# Links read by one chunk's statement at most (plus one to look ahead): a chunk's memory in the
# web server and in PostgreSQL is bounded by it, however many links a page has. A page with at
# most this many links comes whole in one chunk, its links sorted; a larger one is continued
# across chunks in the store's order (url id).
RESULT_CHUNK_LINKS = 5000


@dataclass(frozen=True, slots=True)
class ResultChunk:
    # (page, links): whole pages with their links sorted, or a part of a page of more than
    # ``RESULT_CHUNK_LINKS`` links, in url id order; pages with no links are left out.
    pages: list[tuple[str, list[str]]]
    after: tuple[int, int]  # the key (page id, link id) to read the next chunk from
    continues: bool         # the first entry continues the last page of the chunk before


async def result_chunk(conn: asyncpg.Connection, job_id: int, after: tuple[int, int],
                       mime_prefix: str | None,
                       links: int = RESULT_CHUNK_LINKS) -> ResultChunk | None:
    """The job's result links after the key ``after`` ((0, 0) to start), at most ``links`` of
    them; None when there are no more.

    Links come in the order of ``job_result``'s primary key (``job_id, refer_id, url_id``), so a
    chunk reads its own rows from the index and nothing else: no call sorts the whole job, each
    chunk is one short statement of at most ``links + 1`` rows, and no snapshot is held between
    chunks. A chunk ends at a page boundary: the page the limit cuts is left for the next chunk,
    so a page of at most ``links`` links comes whole, sorted by code point (Go's sort order).
    Only a page with more links than that fills chunks on its own, its links in url id order.
    ``mime_prefix`` is a case-insensitive prefix of the link's stored MIME type, with LIKE
    wildcards taken literally; a page none of whose links match is left out.
    """
    args: list[object] = [job_id, after[0], after[1], links + 1]
    sql = RESULT_CHUNK_SQL.format(filter="")
    if mime_prefix:
        sql = RESULT_CHUNK_SQL.format(filter="AND (SELECT u.mime FROM url u WHERE u.id = jr.url_id) LIKE $5 ESCAPE '\\'")
        args.append(escape_like(mime_prefix.lower()) + "%")
    async with conn.transaction():  # one statement's snapshot, as without it
        await conn.execute(RESULT_CHUNK_SETTINGS)
        rows = await conn.fetch(sql, *args)
    if not rows:
        return None
    continues = rows[0]["refer_id"] == after[0]  # a page of more than ``links`` links, going on
    big = False  # the chunk is the first part of a page of more than ``links`` links
    if len(rows) > links:  # a page goes on past the limit
        cut = rows[links]["refer_id"]
        rows = rows[:links]
        if rows[0]["refer_id"] != cut:  # other pages come first: the cut one goes next time
            rows = [r for r in rows if r["refer_id"] != cut]
        else:
            big = not continues
    pages: list[tuple[str, list[str]]] = []
    for i, r in enumerate(rows):
        if i == 0 or r["refer_id"] != rows[i - 1]["refer_id"]:
            pages.append((r["page"], []))
        pages[-1][1].append(r["url"])
    for i, (_, page_links) in enumerate(pages):
        if not (i == 0 and (continues or big)):
            page_links.sort()
    return ResultChunk(pages, (rows[-1]["refer_id"], rows[-1]["url_id"]), continues)


async def job_failures(conn: asyncpg.Connection, job_id: int,
                       blocked: bool = False) -> list[asyncpg.Record]:
    """The job's failed visits (or, with ``blocked``, those robots.txt kept us from): URL,
    HTTP status (if any), reason, attempts; sorted by URL."""
    return list(await conn.fetch("""
        SELECT u.url, f.status, f.reason, f.attempts
        FROM job_failure f JOIN url u ON u.id = f.url_id
        WHERE f.job_id = $1 AND (f.reason = ANY($2::text[])) = $3 ORDER BY u.url""",
        job_id, list(REFUSALS), blocked))
