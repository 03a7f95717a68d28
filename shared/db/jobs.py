"""Jobs: creation (one transaction), status (counters, not scans) and results in chunks."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from shared.db.progress import REFUSAL_SQL
from shared.db.visits import CHUNK
from shared.errors import BadRequest, JobStateConflict, NotFound
from shared.jobspec import follow_mode, ruleset_of, stored_spec
from shared.ordering import DEFAULT_ORDER, compile_rules, url_priority
from shared.scope import Scope, denied
from shared.urls import host_key


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
    state: str = "running"               # job.state: running, paused, cancelled
    state_on: datetime | None = None     # when the state last changed


async def create_job(conn: asyncpg.Connection, urls: Sequence[str], max_level: int,
                     force_crawl: bool, scope: Scope = Scope(),  # noqa: B008 - frozen
                     max_pages: int | None = None, sitemaps: bool = False,
                     spec: dict[str, Any] | None = None,
                     webhook: str | None = None,
                     owner: str | None = None) -> tuple[int, list[int]]:
    """Insert the job, its URLs and their first pending visits; returns (job id, url ids).
    ``owner``: the name of the API token that created it (None without authentication).

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
    order = spec.get("order", DEFAULT_ORDER)
    bloom = spec.get("bloom")
    await make_partitions_ahead(conn)  # made already (routes._create_job, housekeeping): a lookup
    job_id = await conn.fetchval("""
        INSERT INTO job (max_level, force_crawl, scope, allow, deny, max_pages, sitemaps, visits,
                         spec, fetcher, ruleset, follow, priority, queue_order, bloom_capacity,
                         bloom_error, owner)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10, $11, $12, $13, $14, $15, $16,
                $17)
        RETURNING id""",
        max_level, force_crawl, scope.kind, list(scope.allow), list(scope.deny), max_pages,
        sitemaps, None if max_pages is None else len(set(urls)),  # visits.py: the cap's count
        json.dumps(spec), spec.get("fetcher", "http"), ruleset_of(spec), follow_mode(spec),
        spec.get("priority", 0), order,
        None if bloom is None else bloom.get("capacity", 1_000_000),
        None if bloom is None else bloom.get("errorRate", 0.01), owner)
    ids_by_url = await upsert_urls(conn, {u: "" for u in urls})
    ids = [ids_by_url[u] for u in urls]
    await conn.execute("""
        INSERT INTO job_url (job_id, url_id, pending) SELECT $1, u, 1 FROM unnest($2::bigint[]) u;
        """, job_id, ids)
    await conn.execute(
        "INSERT INTO job_visit (job_id, url_id, level) SELECT $1, u, 0 FROM unnest($2::bigint[]) u",
        job_id, ids)
    # Ranked in the order given (POST order: FIFO); nextval runs after the sort.
    rules = compile_rules(spec.get("priorities")) if order == "priority" else ()
    await conn.execute("""
        INSERT INTO job_pending (job_id, url_id, origin_id, host, rank)
        SELECT $1, u, u, h, harvester_rank($5, 0, p, nextval('job_pending_seq'))
        FROM unnest($2::bigint[], $3::text[], $4::int[]) WITH ORDINALITY AS t(u, h, p, o)
        ORDER BY o""", job_id, ids, [host_key(u) for u in urls],
        [url_priority(rules, u) for u in urls], order)
    if webhook is not None:  # POSTed when the job completes (shared/db/webhooks.py)
        await conn.execute("INSERT INTO job_webhook (job_id, url) VALUES ($1, $2)",
                           job_id, webhook)
    if (known or explored) and ids:
        await idsets.seed_job(conn, job_id, ids[0], id_spec["urlFormat"], known, explored)
    return job_id, ids


async def delete_job(conn: asyncpg.Connection, job_id: int) -> None:
    """Delete a job and all its rows (job_page, job_result and job_yield have no foreign key to
    cascade from), and the link sets only it used (``drop_pages``).

    The job row goes first: its cascade waits for any transaction still processing the job's
    pending visits, and the next statement (a new snapshot) then sees the results they wrote."""
    async with conn.transaction():
        await conn.execute("DELETE FROM job WHERE id = $1", job_id)
        await drop_pages(conn, job_id)
        await conn.execute("DELETE FROM job_result WHERE job_id = $1", job_id)
        await conn.execute("DELETE FROM job_yield WHERE job_id = $1", job_id)


async def drop_pages(conn: asyncpg.Connection, job_id: int, n: int | None = None) -> int:
    """Delete the job's ``job_page`` rows (up to ``n`` of them; all without), and the link sets
    (``url_links``) no other job uses and that are not their page's current version (the
    cache answers from that one); returns how many ``job_page`` rows went. A job has one row
    per page, so another job's row is the only other use of a link set."""
    status = await conn.fetchval("""
        WITH gone AS (  -- a ctid is a row's within its partition: job_id picks the partition
            DELETE FROM job_page WHERE job_id = $1 AND ctid = ANY(ARRAY(
                SELECT ctid FROM job_page WHERE job_id = $1 LIMIT $2))
            RETURNING url_id, version
        ), collected AS (
            DELETE FROM url_links l USING gone g, url u
            WHERE l.url_id = g.url_id AND l.version = g.version
              AND u.id = g.url_id AND l.version < u.version
              AND NOT EXISTS (SELECT FROM job_page jp WHERE jp.url_id = l.url_id
                              AND jp.version = l.version AND jp.job_id <> $1)
        )
        SELECT count(*) FROM gone""", job_id, n)
    return int(status)


async def load_specs(conn: asyncpg.Connection, job_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """The stored specs (``job.spec``, as dicts) of these jobs, by id; a job with no row (purged,
    or never there) is left out, but one only marked deleted (``deleted_on``) is not: a caller
    that must refuse those checks it (``job_exists``)."""
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
               j.max_pages, j.spec::text AS spec, j.state, j.state_on, j.deleted_on,
               extract(epoch FROM (
                   SELECT CASE WHEN count(*) = 0 OR bool_or(completed_on IS NULL) THEN now()
                               ELSE max(completed_on) END
                   FROM job_url WHERE job_id = j.id) - j.created_on)::float8 AS elapsed
        FROM job j WHERE j.id = $1""", job_id)
    if job is None or job["deleted_on"] is not None:  # a deleted job is gone (404)
        return None
    rows = await conn.fetch("""
        SELECT u.url, ju.completed_on IS NOT NULL AS completed, ju.pending, ju.processed,
               ju.fetched, ju.cached, ju.failed, ju.blocked
        FROM job_url ju JOIN url u ON u.id = ju.url_id
        WHERE ju.job_id = $1 ORDER BY u.url""", job_id)
    return JobStatus(job["id"], job["created_on"], job["max_level"], job["force_crawl"],
                     max(0.0, job["elapsed"]), [JobURLState(**dict(r)) for r in rows],
                     Scope(job["scope"], tuple(job["allow"]), tuple(job["deny"])),
                     job["max_pages"], json.loads(job["spec"]), job["state"], job["state_on"])


async def job_state(conn: asyncpg.Connection, job_id: int) -> tuple[str, tuple[str, ...]]:
    """A job's state and deny patterns now (a visit planned earlier is checked against them
    before its fetch: ``worker.crawl``); a job gone reads as cancelled."""
    row = await conn.fetchrow("SELECT state, deny FROM job WHERE id = $1", job_id)
    return ("cancelled", ()) if row is None else (row["state"], tuple(row["deny"] or ()))


async def job_exists(conn: asyncpg.Connection, job_id: int) -> bool:
    """Is there such a job, not deleted (``mark_deleted``)?"""
    return bool(await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM job WHERE id = $1 AND deleted_on IS NULL)", job_id))


async def finished_lsn(conn: asyncpg.Connection, job_id: int) -> str | None:
    """On the primary: its WAL position now if the job is finished (every job URL completed:
    its results no longer change), else None. A replica that has replayed up to that position
    has every row of the job's result (``replayed``). The insert position, not the write
    position: with ``synchronous_commit=off`` (as ``harvester up`` runs it) a commit's record
    may be inserted but not yet written when the job is seen finished."""
    lsn: str | None = await conn.fetchval("""
        SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM job_url
                                     WHERE job_id = $1 AND completed_on IS NULL)
                    THEN pg_current_wal_insert_lsn()::text END""", job_id)
    return lsn


async def replayed(conn: asyncpg.Connection, lsn: str) -> bool:
    """On a replica: has it replayed the primary's WAL up to ``lsn``? (True for a server not
    in recovery: a promoted replica has everything it will have.)"""
    return bool(await conn.fetchval(
        "SELECT NOT pg_is_in_recovery() OR pg_last_wal_replay_lsn() >= $1::text::pg_lsn", lsn))


async def job_owner(conn: asyncpg.Connection, job_id: int) -> tuple[bool, str | None]:
    """Whether the job is there (not deleted) and its owner (None: made without
    authentication); one read by primary key, before every per-job route of a token."""
    row = await conn.fetchrow(
        "SELECT owner FROM job WHERE id = $1 AND deleted_on IS NULL", job_id)
    return (False, None) if row is None else (True, row["owner"])


def escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# The result of a job made before migration 0023 (job.links_derived false): its job_result rows.
RESULT_CHUNK_SQL = """
    SELECT l.refer_id, l.url_id,
           (SELECT u.url FROM url u WHERE u.id = l.url_id) AS url,
           (SELECT r.url FROM url r WHERE r.id = l.refer_id) AS page
    FROM (SELECT jr.refer_id, jr.url_id FROM job_result jr
          WHERE jr.job_id = $1 AND (jr.refer_id, jr.url_id) > ($2, $3) {filter}
          ORDER BY jr.refer_id, jr.url_id
          LIMIT $4) l
    ORDER BY l.refer_id, l.url_id"""
# The result of a derived job: its pages (job_page, in url id order) with the link set of the
# version each used (url_links), unnested a row per link with its position in the array (o) as
# the key's second part: the rows of RESULT_CHUNK_SQL in the same order ((page, link id): a
# link set is ascending), keyed (page id, position). $2, $3 (page, position) is where the last
# chunk stopped: that page from position $3 + 1 (its array sliced), the pages after it whole.
# The links are unnested in the select list (ProjectSet, a row at a time) of a subquery kept in
# page order, so the statement stops at the limit, however many links a page has.
RESULT_CHUNK_DERIVED_SQL = """
    SELECT r.refer_id, r.o AS url_id,
           (SELECT u.url FROM url u WHERE u.id = r.link) AS url,
           (SELECT p.url FROM url p WHERE p.id = r.refer_id) AS page
    FROM (SELECT s.refer_id, unnest(s.links) AS link,
                 generate_series(s.lo + 1, s.lo + cardinality(s.links)) AS o
          FROM (SELECT jp.url_id AS refer_id,
                       CASE WHEN jp.url_id = $2 THEN $3::int ELSE 0 END AS lo,
                       CASE WHEN jp.url_id = $2 THEN l.links[$3::int + 1:] ELSE l.links END
                           AS links
                FROM job_page jp
                CROSS JOIN LATERAL (SELECT x.links FROM url_links x
                                    WHERE x.url_id = jp.url_id AND x.version = jp.version
                                      AND x.n > 0) l
                WHERE jp.job_id = $1 AND jp.url_id >= $2
                ORDER BY jp.url_id) s) r
    {filter}
    LIMIT $4"""
# Subqueries per row, not joins, and these settings for its transaction: the plan then reads
# job_result's (job_page's) index in key order and stops at the limit, whatever the table's
# statistics say (stale while a job runs), instead of reading the whole job to sort it.
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
    # The key to read the next chunk from: (page id, link id), or for a derived job (page id,
    # position in its link set); the caller passes it back as it is.
    after: tuple[int, int]
    continues: bool         # the first entry continues the last page of the chunk before


async def result_chunk(conn: asyncpg.Connection, job_id: int, after: tuple[int, int],
                       mime_prefix: str | None,
                       links: int = RESULT_CHUNK_LINKS) -> ResultChunk | None:
    """The job's result links after the key ``after`` ((0, 0) to start), at most ``links`` of
    them; None when there are no more.

    Links come in the order of ``job_result``'s primary key (``job_id, refer_id, url_id``), or
    for a derived job (``job.links_derived``) of ``job_page``'s (``job_id, url_id``) then of
    each page's link set (ascending ids): the same order, so the same chunks. A chunk reads its
    own rows from the index and nothing else: no call sorts the whole job, each
    chunk is one short statement of at most ``links + 1`` rows, and no snapshot is held between
    chunks. A chunk ends at a page boundary: the page the limit cuts is left for the next chunk,
    so a page of at most ``links`` links comes whole, sorted by code point (Go's sort order).
    Only a page with more links than that fills chunks on its own, its links in url id order.
    ``mime_prefix`` is a case-insensitive prefix of the link's stored MIME type, with LIKE
    wildcards taken literally; a page none of whose links match is left out.
    """
    args: list[object] = [job_id, after[0], after[1], links + 1]
    derived = await conn.fetchval("SELECT links_derived FROM job WHERE id = $1", job_id)
    base, word, link = ((RESULT_CHUNK_DERIVED_SQL, "WHERE", "r.link") if derived
                        else (RESULT_CHUNK_SQL, "AND", "jr.url_id"))
    sql = base.format(filter="")
    if mime_prefix:
        sql = base.format(filter=f"{word} (SELECT u.mime FROM url u WHERE u.id = {link}) "
                                 "LIKE $5 ESCAPE '\\'")
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
    return list(await conn.fetch(f"""
        SELECT u.url, f.status, f.reason, f.attempts
        FROM job_failure f JOIN url u ON u.id = f.url_id
        WHERE f.job_id = $1 AND {REFUSAL_SQL} = $2
        ORDER BY u.url""",
        job_id, blocked))


# Job control (issue 16). A job's state is ``job.state`` (running, paused, cancelled); a job is
# completed when every job URL is (``job_url.completed_on``), cancelled or not.

async def _state_for_update(conn: asyncpg.Connection, job_id: int) -> tuple[str, bool]:
    """The job's state and whether it is completed, its row locked; NotFound for no job (or a
    deleted one)."""
    row = await conn.fetchrow("""
        SELECT state, deleted_on IS NOT NULL AS deleted,
               NOT EXISTS (SELECT FROM job_url u WHERE u.job_id = j.id
                           AND u.completed_on IS NULL) AS completed
        FROM job j WHERE id = $1 FOR UPDATE""", job_id)
    if row is None or row["deleted"]:
        raise NotFound(f"Job {job_id} not found")
    return row["state"], row["completed"]


async def pause_job(conn: asyncpg.Connection, job_id: int) -> str:
    """Pause a running job: its unpublished visits are held (the feeder skips them); visits
    published already are held when their message arrives (``Frontier.hold``), fetches in
    flight finish. Returns the new state; JobStateConflict for a cancelled or completed job."""
    async with conn.transaction():
        state, completed = await _state_for_update(conn, job_id)
        if state == "cancelled" or completed:
            raise JobStateConflict(
                f"Job {job_id} is {'cancelled' if state == 'cancelled' else 'completed'}")
        if state != "paused":
            await conn.execute(
                "UPDATE job SET state = 'paused', state_on = now() WHERE id = $1", job_id)
            await conn.execute("""
                UPDATE job_pending SET held = true
                WHERE job_id = $1 AND published_on IS NULL AND NOT held""", job_id)
    return "paused"


async def resume_job(conn: asyncpg.Connection, job_id: int) -> str:
    """Resume a paused job: its held visits are due now (or when they were due). Returns the
    new state; JobStateConflict for a cancelled job; a running job stays as it is."""
    async with conn.transaction():
        state, _ = await _state_for_update(conn, job_id)
        if state == "cancelled":
            raise JobStateConflict(f"Job {job_id} is cancelled")
        if state == "paused":
            await conn.execute(
                "UPDATE job SET state = 'running', state_on = now() WHERE id = $1", job_id)
            await conn.execute("""
                UPDATE job_pending SET held = false, due = least(due, now())
                WHERE job_id = $1 AND held""", job_id)
    return "running"


async def _end_pending(conn: asyncpg.Connection, job_id: int,
                       url_ids: Sequence[int] | None) -> int:
    """Delete the job's unpublished visits (those of ``url_ids``, or all) and move their
    origins' pending counts, completing an origin at zero; returns how many."""
    rows = await conn.fetch("""
        WITH d AS (
            DELETE FROM job_pending p
            WHERE p.job_id = $1 AND p.published_on IS NULL
              AND ($2::bigint[] IS NULL OR p.url_id = ANY($2::bigint[]))
            RETURNING p.origin_id
        ), n AS (SELECT origin_id, count(*)::int AS n FROM d GROUP BY origin_id)
        UPDATE job_url ju SET pending = ju.pending - n.n,
            completed_on = coalesce(ju.completed_on,
                                    CASE WHEN ju.pending - n.n = 0 THEN now() END)
        FROM n WHERE ju.job_id = $1 AND ju.url_id = n.origin_id
        RETURNING n.n""", job_id, None if url_ids is None else list(url_ids))
    return sum(r["n"] for r in rows)


async def cancel_job(conn: asyncpg.Connection, job_id: int) -> str:
    """Cancel a job: its unpublished visits are dropped now, without a fetch; published ones
    when their message arrives (``visits.plan`` says ``cancelled``: ``visits.drop``), fetches
    in flight finish and are kept, as are the results so far. The job then completes.
    Idempotent; returns the new state."""
    async with conn.transaction():
        await _state_for_update(conn, job_id)
        await conn.execute("""
            UPDATE job SET state = 'cancelled', state_on = now()
            WHERE id = $1 AND state <> 'cancelled'""", job_id)
        await _end_pending(conn, job_id, None)
    return "cancelled"


async def mark_deleted(conn: asyncpg.Connection, job_id: int) -> None:
    """Cancel the job and mark it deleted: gone from every answer (404), purged later by the
    housekeeping (``purge_candidates``)."""
    async with conn.transaction():
        await cancel_job(conn, job_id)
        await conn.execute("UPDATE job SET deleted_on = now() WHERE id = $1", job_id)


async def change_scope(conn: asyncpg.Connection, job_id: int, add_deny: Sequence[str]) -> int:
    """Add deny patterns (checked by the caller: ``scope.check_pattern``) to a job and drop its
    unpublished visits they match (Python regex semantics, as ``Scope``); published ones are
    dropped when their message arrives (``Planned.deny``). Returns how many were dropped."""
    async with conn.transaction():
        await _state_for_update(conn, job_id)
        deny = tuple(await conn.fetchval("""
            UPDATE job SET deny = deny || $2::text[] WHERE id = $1 RETURNING deny""",
            job_id, list(add_deny)))
        matched: list[int] = []
        cursor = await conn.cursor("""
            SELECT p.url_id, u.url FROM job_pending p JOIN url u ON u.id = p.url_id
            WHERE p.job_id = $1 AND p.published_on IS NULL""", job_id)
        while rows := await cursor.fetch(CHUNK):
            matched += [r["url_id"] for r in rows if denied(deny, r["url"])]
            if len(rows) < CHUNK:
                break
        dropped = 0
        for i in range(0, len(matched), CHUNK):
            dropped += await _end_pending(conn, job_id, matched[i:i + CHUNK])
    return dropped


async def unhold_running(conn: asyncpg.Connection) -> int:
    """The housekeeping's safety net: free held visits of jobs that are running (a hold and a
    resume crossed in a way ``Frontier.hold`` could not see); returns how many. Reads the
    held rows only (index ``job_pending_held``)."""
    return int((await conn.fetchval("""
        WITH u AS (
            UPDATE job_pending p SET held = false, due = least(p.due, now())
            FROM job j
            WHERE p.held AND j.id = p.job_id AND j.state = 'running'
            RETURNING 1)
        SELECT count(*) FROM u""")) or 0)


async def job_gauges(conn: asyncpg.Connection) -> tuple[dict[str, int], int]:
    """Jobs by state (``running``, ``paused``, ``cancelled``, and ``completed`` for running
    jobs whose job URLs are all completed: a cancelled job stays ``cancelled``), deleted ones
    left out, and the pending visits of them all: the metrics
    ``JOBS{state}`` and ``PENDING_VISITS``. One statement over ``job`` and ``job_url``."""
    rows = await conn.fetch("""
        SELECT CASE WHEN j.state = 'running' AND coalesce(c.open, 0) = 0 THEN 'completed'
                    ELSE j.state END AS state,
               count(*)::int AS jobs, coalesce(sum(c.pending), 0)::bigint AS pending
        FROM job j
        LEFT JOIN (SELECT job_id, count(*) FILTER (WHERE completed_on IS NULL) AS open,
                          sum(pending) AS pending
                   FROM job_url GROUP BY job_id) c ON c.job_id = j.id
        WHERE j.deleted_on IS NULL
        GROUP BY 1""")
    counts = dict.fromkeys(("running", "paused", "cancelled", "completed"), 0)
    for r in rows:
        counts[r["state"]] = r["jobs"]
    return counts, int(sum(r["pending"] for r in rows))


@dataclass(frozen=True, slots=True)
class JobSummary:
    job_id: int
    created_on: datetime
    state: str            # running, paused or cancelled (job.state)
    completed: bool       # every job URL completed
    urls: int
    pending: int
    processed: int
    fetched: int
    cached: int
    failed: int
    blocked: int


async def list_jobs(conn: asyncpg.Connection, state: str | None, before: int | None,
                    limit: int, owner: str | None = None) -> list[JobSummary]:
    """Jobs newest first (ids below ``before``), at most ``limit``, not deleted, with their
    counters summed over their job URLs. ``state`` filters: running, paused, cancelled (by
    ``job.state``) or completed (running or cancelled with every job URL completed);
    ``owner``, when given, to that token's jobs (index ``job_owner``)."""
    rows = await conn.fetch("""
        SELECT j.id, j.created_on, j.state, c.open = 0 AS completed, c.urls, c.pending,
               c.processed, c.fetched, c.cached, c.failed, c.blocked
        FROM job j
        CROSS JOIN LATERAL (
            SELECT count(*)::int AS urls,
                   count(*) FILTER (WHERE ju.completed_on IS NULL)::int AS open,
                   coalesce(sum(ju.pending), 0)::int AS pending,
                   coalesce(sum(ju.processed), 0)::int AS processed,
                   coalesce(sum(ju.fetched), 0)::int AS fetched,
                   coalesce(sum(ju.cached), 0)::int AS cached,
                   coalesce(sum(ju.failed), 0)::int AS failed,
                   coalesce(sum(ju.blocked), 0)::int AS blocked
            FROM job_url ju WHERE ju.job_id = j.id) c
        WHERE j.deleted_on IS NULL AND ($2::bigint IS NULL OR j.id < $2)
          AND ($1::text IS NULL
               OR ($1 = 'completed' AND j.state <> 'paused' AND c.open = 0)
               OR ($1 <> 'completed' AND j.state = $1))
          AND ($4::text IS NULL OR j.owner = $4)
        ORDER BY j.id DESC LIMIT $3""", state, before, limit, owner)
    return [JobSummary(r["id"], r["created_on"], r["state"], r["completed"], r["urls"],
                       r["pending"], r["processed"], r["fetched"], r["cached"], r["failed"],
                       r["blocked"]) for r in rows]


# Retention (issue 16): the tables holding a job's rows, purged in this order, then ``job``.
# ``url``, ``host`` and the stored pages are shared between jobs and never purged.
# ``job_page`` takes with it the link sets no job uses any more (``drop_pages``).
PURGE_TABLES = ("job_page", "job_result", "job_yield", "job_pending", "job_failure", "job_visit",
                "job_url")


# A purgeable job (``j``; ``$1``: the retention in seconds): deleted, or (retention > 0)
# completed and created more than the retention ago. A running job with open URLs is never one.
_PURGEABLE = """(j.deleted_on IS NOT NULL
           OR ($1 > 0 AND j.created_on < now() - make_interval(secs => $1)
               AND NOT EXISTS (SELECT FROM job_url u
                               WHERE u.job_id = j.id AND u.completed_on IS NULL)))"""


async def purge_candidates(conn: asyncpg.Connection, retention: float, limit: int,
                           skip: Sequence[int] = ()) -> list[int]:
    """Jobs to purge: deleted ones, and (``retention`` > 0) completed ones created more than
    ``retention`` seconds ago; at most ``limit``, their rows locked (SKIP LOCKED: one
    housekeeper each), none of the ranges ``skip`` (ranges to be dropped whole, later).
    Run it in a transaction. A running job with open URLs is never one."""
    rows = await conn.fetch(f"""
        SELECT j.id FROM job j WHERE {_PURGEABLE}
          AND NOT (j.id / {JOB_RANGE} = ANY($3::bigint[]))
        ORDER BY j.id LIMIT $2
        FOR UPDATE SKIP LOCKED""", float(retention), limit, list(skip))
    return [r["id"] for r in rows]


# Partitions (migration 0024): the per-job tables are partitioned by RANGE of job ids,
# JOB_RANGE ids each (``job_visit_r3`` holds jobs 3000-3999). A range whose every job is
# purgeable, and in which no job can still be made, goes whole: ``drop_job_range``.
JOB_RANGE = 1000
PARTITIONED = ("job_url", "job_visit", "job_pending", "job_failure", "job_page", "job_result",
               "job_yield")
# The longest a range's drop waits for a table lock (then it tries next round): below
# PostgreSQL's deadlock_timeout (1 s; the tests' 100 ms), so that a crawl transaction queued
# behind the drop never waits long enough to be the one a deadlock check aborts.
DROP_LOCK_TIMEOUT = "50ms"


@contextlib.asynccontextmanager
async def _bounded(conn: asyncpg.Connection, lock: str | None = None) -> AsyncIterator[None]:
    """A transaction whose lock waits last ``DROP_LOCK_TIMEOUT`` at most (then
    LockNotAvailableError), first taking ``lock`` (``LOCK TABLE <lock>``) if given."""
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = '{DROP_LOCK_TIMEOUT}'")
        if lock is not None:
            await conn.execute(f"LOCK TABLE {lock}")
        yield


async def _wait_for_creators(conn: asyncpg.Connection) -> None:
    """Wait (bounded) for every transaction writing a ``job`` row: a job given an id of a range
    is then committed, and seen by a judgement of the range that follows."""
    async with _bounded(conn, "job IN SHARE MODE"):
        pass


async def make_partitions_ahead(conn: asyncpg.Connection, bounded: bool = False) -> int:
    """Make the partitions of the next job id's range (and of the one after it near a range's
    end), where missing; returns how many partitions it made (0 but at a range's end).
    Housekeeping runs it every round, the web server before each job's transaction and
    ``create_job`` in it, so a job's rows always have their partitions. Run it outside a
    long transaction: ATTACH PARTITION clones ``job_url``'s foreign keys, which locks ``job``
    and ``url`` against writes until the transaction ends. ``bounded``: give up
    (LockNotAvailableError) rather than wait longer than ``DROP_LOCK_TIMEOUT`` for them."""
    async with _bounded(conn) if bounded else contextlib.nullcontext():
        return int(await conn.fetchval("SELECT harvester_job_partitions_ahead()"))


async def purgeable_ranges(conn: asyncpg.Connection, retention: float) -> list[int]:
    """The ranges (``job_id // JOB_RANGE``) that have partitions, whose every id has been
    handed out (no job can be made in them any more) and whose every job there is purgeable
    (or already purged); lowest first."""
    rows = await conn.fetch(_closed_ranges("job_url", f"""
        NOT EXISTS (SELECT FROM job j WHERE j.id >= p.r * {JOB_RANGE}
                    AND j.id < (p.r + 1) * {JOB_RANGE} AND NOT ({_PURGEABLE}))"""),
        float(retention))
    return [r["r"] for r in rows]


def _closed_ranges(parent: str, condition: str) -> str:
    """The ranges (``p.r``) that have a partition of ``parent`` and whose every id has been
    handed out (no job can be made in them any more), and meet ``condition``; lowest first."""
    return f"""
        SELECT r FROM (
            SELECT (regexp_match(c.relname, '_r([0-9]+)$'))[1]::bigint AS r
            FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
            WHERE i.inhparent = '{parent}'::regclass) p,
            (SELECT CASE WHEN is_called THEN last_value + 1 ELSE last_value END AS next
             FROM job_id_seq) s
        WHERE (p.r + 1) * {JOB_RANGE} <= s.next AND {condition}
        ORDER BY r"""


async def drop_job_range(conn: asyncpg.Connection, r: int, retention: float) -> int | None:
    """Purge every job of range ``r`` by dropping its partitions, then its job rows (their
    cascades find nothing left), then the link sets only its jobs used (as ``drop_pages`` does
    row by row). Returns how many jobs went, or None when the range is not purgeable (any more)
    or a lock was not had within ``DROP_LOCK_TIMEOUT`` (try again later).

    The first transaction waits for every transaction that is writing a job row (a SHARE lock
    on ``job``), so that a job made with an id in the range is committed, and visible to the
    check, before the range is judged; no later job can get an id there. The second takes the
    parents' locks (ACCESS EXCLUSIVE, as DROP TABLE of a partition does; not their other
    partitions') with a bounded wait, judges the range and drops its partitions but
    ``job_page``'s, which it detaches as ``job_page_gone_r<r>``: catalog changes only, so the
    crawl waits milliseconds. Last, ``collect_gone_pages`` deletes the link sets that table
    names and no job uses any more, and drops it; a housekeeper that dies before that leaves
    it to the next round's."""
    lo, hi = r * JOB_RANGE, (r + 1) * JOB_RANGE
    try:
        await _wait_for_creators(conn)
        parents = ", ".join(f"ONLY {t}" for t in PARTITIONED)
        async with _bounded(conn, f"{parents} IN ACCESS EXCLUSIVE MODE"):
            if r not in await purgeable_ranges(conn, retention):
                return None
            await conn.execute(f"ALTER TABLE job_page DETACH PARTITION job_page_r{r}; "
                               f"ALTER TABLE job_page_r{r} RENAME TO job_page_gone_r{r}")
            await conn.execute("DROP TABLE IF EXISTS " + ", ".join(  # job_pending's may
                f"{t}_r{r}" for t in PARTITIONED if t != "job_page"))    # be gone already
            status = await conn.execute("DELETE FROM job WHERE id >= $1 AND id < $2", lo, hi)
    except (asyncpg.LockNotAvailableError, asyncpg.DeadlockDetectedError):
        return None
    await collect_gone_pages(conn)
    return int(status.split()[-1])


async def drop_finished_pending(conn: asyncpg.Connection) -> list[int]:
    """Drop the ``job_pending`` partition of every range whose every id has been handed out and
    whose jobs are all finished (no open ``job_url``; a finished job never has a pending visit
    again: children are queued only by processing one of its pending visits). The feeder's
    claim and the watchdog read ``job_pending`` across jobs, so a kept range then costs them
    nothing. Returns the ranges whose partition went; a busy one waits for the next round.
    The same three steps as ``drop_job_range``: wait for job creators, lock the parent (50 ms
    at most), judge again (and the partition must be empty), drop."""
    ranges = await _finished_ranges(conn)
    if not ranges:
        return []
    dropped = []
    try:
        await _wait_for_creators(conn)
        for r in ranges:
            async with _bounded(conn, "ONLY job_pending IN ACCESS EXCLUSIVE MODE"):
                if r not in await _finished_ranges(conn) or await conn.fetchval(
                        f"SELECT EXISTS (SELECT FROM job_pending_r{r})"):
                    continue
                await conn.execute(f"DROP TABLE job_pending_r{r}")
                dropped.append(r)
    except (asyncpg.LockNotAvailableError, asyncpg.DeadlockDetectedError):
        pass
    return dropped


async def _finished_ranges(conn: asyncpg.Connection) -> list[int]:
    """The ranges with a ``job_pending`` partition, every id handed out, no open job."""
    rows = await conn.fetch(_closed_ranges("job_pending", f"""
        NOT EXISTS (SELECT FROM job_url u WHERE u.job_id >= p.r * {JOB_RANGE}
                    AND u.job_id < (p.r + 1) * {JOB_RANGE} AND u.completed_on IS NULL)"""))
    return [r["r"] for r in rows]


async def collect_gone_pages(conn: asyncpg.Connection) -> int:
    """For each ``job_page`` partition a range's drop detached (``job_page_gone_r<r>``): delete
    the link sets it names that no job's ``job_page`` row names and that are not their page's
    current version, then drop it. Returns how many such tables went."""
    gone = [r["name"] for r in await conn.fetch(
        "SELECT relname AS name FROM pg_class WHERE relname ~ '^job_page_gone_r[0-9]+$' "
        "AND relkind = 'r' ORDER BY relname")]
    for name in gone:
        async with conn.transaction():
            await conn.execute(f"""
                DELETE FROM url_links l USING {name} g, url u
                WHERE l.url_id = g.url_id AND l.version = g.version
                  AND u.id = g.url_id AND l.version < u.version
                  AND NOT EXISTS (SELECT FROM job_page jp WHERE jp.url_id = l.url_id
                                  AND jp.version = l.version)""")
            await conn.execute(f"DROP TABLE {name}")
    return len(gone)


async def purge_job(conn: asyncpg.Connection, job_id: int, n: int = 5000) -> int:
    """Purge one job row by row: ``purge_batch`` over each of ``PURGE_TABLES`` until it is
    empty, then the job row; returns how many rows went. Run it outside a transaction: each
    batch is its own, so no transaction holds a big job's rows, and a purge cut short resumes
    (the job row is still there)."""
    rows = 0
    for table in (*PURGE_TABLES, "job"):
        while True:
            async with conn.transaction():
                went = await purge_batch(conn, table, job_id, n)
            rows += went
            if went < n or table == "job":
                break
    return rows


async def purge_batch(conn: asyncpg.Connection, table: str, job_id: int, n: int = 5000) -> int:
    """Delete up to ``n`` of the job's rows of ``table`` (one of ``PURGE_TABLES``, or ``job``
    for the job row itself, last); returns how many. Each call is its own short statement:
    run it until it returns less than ``n``, a transaction each."""
    if table == "job":
        return int((await conn.execute("DELETE FROM job WHERE id = $1", job_id)).split()[-1])
    if table not in PURGE_TABLES:
        raise ValueError(f"not a job table: {table!r}")
    if table == "job_page":
        return await drop_pages(conn, job_id, n)
    # A ctid names a row within one partition: ``job_id = $1`` keeps the delete to the job's.
    status = await conn.execute(f"""
        DELETE FROM {table} WHERE job_id = $1 AND ctid = ANY(ARRAY(
            SELECT ctid FROM {table} WHERE job_id = $1 LIMIT $2))""", job_id, n)
    return int(status.split()[-1])
