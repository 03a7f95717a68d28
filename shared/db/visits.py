"""Visits: the per-job visited set (``job_visit``), the pending work (``job_pending``), the pages
a job processed (``job_page``: its results are their links) and completion counters
(``job_url``).

Processing a batch of pending visits is one transaction (see ``complete``): lock the pending rows,
record each page with the version of its links the job used (``job_page``), delete their
pending rows, add their children as new visits (or lower an already-visited page to a shorter
distance and queue it to be expanded again), record failures, and move the origins' counters.
The caller acks only after that transaction has committed, so a crash anywhere leaves either
nothing or everything done, and a redelivered message finds its visit no longer pending.

Children are not published by the processor: the committed ``job_pending`` rows are an outbox that
the foremen's feeder claims (``shared/db/frontier.py``) and puts on the URL queue as its capacity
frees. So no child is lost between a commit and a publish, and the frontier lives in PostgreSQL,
not in memory or in an unbounded queue.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import AsyncIterator, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import asyncpg

from shared.mime import SKIP_EXACT, SKIP_PREFIX
from shared.ordering import compile_rules, url_priority
from shared.patterns import Regex
from shared.scope import Scope
from shared.urls import host_key

if TYPE_CHECKING:
    from shared.db.known import Known
    from shared.seen import SeenFilter

Key = tuple[int, int]  # (job_id, url_id)
CHUNK = 5_000  # children handled a statement: a page may have hundreds of thousands of links
# "dropped": a visit of a cancelled job, or one its deny list now refuses (``drop``): never
# fetched, no results, children or failure; only the origin's pending count moves.
Outcome = Literal["fetched", "cached", "abandoned", "blocked", "dropped"]
# A job's children: its pages' HTML links (url_links, at the version its job_page row names),
# the links and ids its follow rules yield under its rule set (url_yield.target), or both
# (shared.jobspec.follow_mode).
Follow = Literal["html", "rules", "both"]

# is_skip_mime() on u.mime (stored lower-case, without parameters), from the same constants.
SKIP_MIME_SQL = (f"(u.mime LIKE '{SKIP_PREFIX}%' OR u.mime IN "
                 f"({', '.join(repr(m) for m in sorted(SKIP_EXACT))}))")


@dataclass(frozen=True, slots=True)
class Pending:
    job_id: int
    url_id: int
    origin_id: int
    level: int
    max_level: int
    reexpand: bool
    origin_url: str = ""
    scope: Scope = field(default_factory=Scope)
    max_pages: int | None = None
    ruleset: int = 0                  # the job's rule set: its pages' yields go to job_yield
    follow: Follow = "html"           # which links are children (``job.follow``, see _CHILDREN_SQL)
    order: str = "bfs"                # job.queue_order: the rank of its new pending rows
    # The job's URL priorities (order "priority" only; shared.ordering.url_priority).
    priorities: tuple[tuple[Regex, int], ...] = ()
    bloom: tuple[int, float] | None = None  # the job's Bloom filter (capacity, error rate)
    # job.links_derived: the job's results are its job_page rows' link sets; false for a job
    # made before migration 0023, whose results are job_result rows (written for it still).
    links_derived: bool = True

    @property
    def key(self) -> Key:
        return (self.job_id, self.url_id)


@dataclass(frozen=True, slots=True)
class Planned:
    """A pending visit with what the processor needs to decide on it."""
    job_id: int
    url_id: int
    url: str
    reexpand: bool
    cached: bool
    etag: str | None = None           # validators of an expired copy, for a conditional fetch
    last_modified: str | None = None
    level: int = 0
    max_level: int = 0
    sitemaps: bool = False            # the job reads its job URLs' sitemaps
    attempts: int = 0                 # failed fetch attempts so far in this job
    fetcher: str = "http"             # the job's fetcher kind (its work subject)
    ruleset: int = 0                  # the job's rule set (shared.jobspec.JobSpec.ruleset)
    state: str = "running"            # job.state: running, paused or cancelled
    deny: tuple[str, ...] = ()        # the job's deny patterns now (shared.scope.denied)
    traps: str | None = None          # the job's spec "traps" (jsonb text; shared.traps); None
                                      # also when the caller knew them (plan's known_traps)
    version: int = 0                  # url.version when planned (the stored version a store
                                      # answer uses)


def _cols(keys: Iterable[Key]) -> tuple[list[int], list[int]]:
    ks = list(keys)
    return [k[0] for k in ks], [k[1] for k in ks]


def _by_job(keys: Iterable[Key]) -> dict[int, list[int]]:
    """The distinct keys as sorted url ids per job, jobs in order (a batch has one or a few)."""
    out: dict[int, list[int]] = {}
    for job_id, url_id in sorted(set(keys)):
        out.setdefault(job_id, []).append(url_id)
    return out


# The look-ups by key below are written per job, as "job_id = $1 AND url_id = ANY($2)" on each
# keyed table, rather than as a join with unnest(jobs, urls): then every table has its whole key
# as its own index condition, whatever join order the planner picks. With the join, a planner
# without fresh statistics (a new database, or a new job's id) started from ``job`` and read
# ``job_visit``/``job_pending`` by job_id alone: every pending row of the job for each key.


# The stored version answers for the job: the job's fetcher kind made it (``url.fetcher``,
# NULL for http: a default job decides on its first two comparisons), and the job's rule set has
# what the page yields at that version: always for links only (rule set 0, tested first:
# PostgreSQL stops an OR at its first true argument), else when the page was extracted under
# the rule set since its last fetch (any answer but a 304).
EXTRACTED_SQL = """((j.fetcher = 'http' AND u.fetcher IS NULL
         OR coalesce(u.fetcher, 'http') = j.fetcher)
        AND (j.ruleset = 0 OR EXISTS (
        SELECT FROM url_extraction x
        WHERE x.url_id = u.id AND x.ruleset = j.ruleset AND x.version = u.version)))"""


async def plan(conn: asyncpg.Connection, keys: Sequence[Key], cache_max_age: float,
               known_traps: Container[int] = ()) -> list[Planned]:
    """Which of these visits are still pending, and which can be answered from the store.

    A visit is answered from the store when it re-expands a page already processed in the job,
    when its type is never fetched (images, CSS, JS; but a job following rules fetches what
    they found, whatever its type), or when its last cacheable fetch is fresh
    (younger than ``cache_max_age``, or, for a ``forceCrawl`` job, made after the job was
    created), the job's fetcher kind made that version of the page (``url.fetcher``) and the
    job's rule set extracted it. The validators of an expired copy (for a conditional fetch)
    come under the same conditions: a 304 confirms a version, so it must be one the job's
    fetcher made and whose yields the rule set has.

    ``traps`` is the job's spec "traps" only for a job not in ``known_traps`` (None for one
    in it): a job's spec never changes, so a caller that keeps each job's limits pays the jsonb
    read once per job, not per visit (CASE reads ``j.spec`` only when asked).
    """
    rows: list[asyncpg.Record] = []
    for job_id, url_ids in _by_job(keys).items():
        rows += await conn.fetch(f"""
            SELECT {plan_columns("$3", "$4")}
            FROM job_pending p
            JOIN job_visit v ON v.job_id = p.job_id AND v.url_id = p.url_id
            JOIN job j ON j.id = p.job_id
            JOIN url u ON u.id = p.url_id
            WHERE p.job_id = $1 AND p.url_id = ANY($2::bigint[])
              AND v.job_id = $1 AND v.url_id = ANY($2::bigint[]) AND u.id = ANY($2::bigint[])""",
            job_id, url_ids, float(cache_max_age), job_id not in known_traps)
    return [planned(r) for r in rows]


def plan_columns(max_age: str, want_traps: str) -> str:
    """The select list of a plan over ``p`` (a ``job_pending`` row or one with its columns:
    job_id, url_id, reexpand, attempts), ``v`` (``job_visit``), ``j`` (``job``) and ``u``
    (``url``); ``max_age`` and ``want_traps`` are the SQL (parameters) for the cache age in
    seconds and whether to read the spec's traps. One text for :func:`plan` and any statement
    that plans as it claims, so the two can never decide differently; :func:`planned` reads it.
    """
    return f"""p.job_id, p.url_id, u.url, p.reexpand,
                   (p.reexpand OR ({SKIP_MIME_SQL} AND j.follow = 'html') OR
                    (u.crawled_on IS NOT NULL AND u.crawled_on >
                       CASE WHEN j.force_crawl THEN j.created_on
                            ELSE now() - make_interval(secs => {max_age}) END
                     AND {EXTRACTED_SQL})) AS cached,
                   CASE WHEN u.crawled_on IS NOT NULL AND NOT j.force_crawl AND {EXTRACTED_SQL}
                        THEN u.etag END AS etag,
                   CASE WHEN u.crawled_on IS NOT NULL AND NOT j.force_crawl AND {EXTRACTED_SQL}
                        THEN u.last_modified END AS last_modified,
                   v.level, j.max_level, j.sitemaps, p.attempts, j.fetcher, j.ruleset,
                   j.state, j.deny, CASE WHEN {want_traps}::bool THEN j.spec->'traps' END AS traps,
                   u.version"""


def planned(r: asyncpg.Record) -> Planned:
    """The :class:`Planned` of a row selected with :func:`plan_columns`."""
    return Planned(r["job_id"], r["url_id"], r["url"], r["reexpand"], r["cached"], r["etag"],
                   r["last_modified"], r["level"], r["max_level"], r["sitemaps"], r["attempts"],
                   r["fetcher"], r["ruleset"], r["state"], tuple(r["deny"]), r["traps"],
                   r["version"])


async def lock_pending(conn: asyncpg.Connection, keys: Sequence[Key]) -> list[Pending]:
    """Lock the visits that are still pending (others were processed already: duplicates)."""
    rows: list[asyncpg.Record] = []
    for job_id, url_ids in _by_job(keys).items():  # jobs, then urls, in order: no lock cycles
        rows += await conn.fetch("""
            SELECT p.job_id, p.url_id, p.origin_id, p.reexpand, v.level, j.max_level,
                   o.url AS origin_url, j.scope, j.allow, j.deny, j.max_pages, j.ruleset,
                   j.follow, j.queue_order, j.bloom_capacity, j.bloom_error,
                   CASE WHEN j.queue_order = 'priority' THEN j.spec->'priorities' END
                       AS priorities, j.links_derived
            FROM job_pending p
            JOIN job_visit v ON v.job_id = p.job_id AND v.url_id = p.url_id
            JOIN job j ON j.id = p.job_id
            JOIN url o ON o.id = p.origin_id
            WHERE p.job_id = $1 AND p.url_id = ANY($2::bigint[])
              AND v.job_id = $1 AND v.url_id = ANY($2::bigint[])
            ORDER BY p.url_id
            FOR UPDATE OF p FOR SHARE OF v""", job_id, url_ids)
    return [Pending(r["job_id"], r["url_id"], r["origin_id"], r["level"], r["max_level"],
                    r["reexpand"], r["origin_url"],
                    Scope(r["scope"], tuple(r["allow"]), tuple(r["deny"])), r["max_pages"],
                    r["ruleset"], r["follow"], r["queue_order"], _rules(r["priorities"]),
                    None if r["bloom_capacity"] is None
                    else (r["bloom_capacity"], r["bloom_error"]), r["links_derived"])
            for r in rows]


@functools.lru_cache(maxsize=256)
def _rules(priorities: str | None) -> tuple[tuple[Regex, int], ...]:
    """A job's stored ``priorities`` (jsonb text), compiled once per process."""
    return compile_rules(json.loads(priorities)) if priorities else ()


async def drop(conn: asyncpg.Connection, keys: Sequence[Key]) -> None:
    """End visits without processing them (a cancelled job's, or URLs its deny list now
    refuses): their pending rows go, their origins' pending counts go down (completed at
    zero); no fetch, no result, no child, no failure. Visits no longer pending are ignored.
    Run it in a transaction."""
    pending = await lock_pending(conn, keys)
    await complete(conn, pending, {p.key: "dropped" for p in pending})


async def block(conn: asyncpg.Connection, reasons: Mapping[Key, str]) -> None:
    """End visits refused before any fetch (a crawler trap, credentials in the URL:
    ``shared.traps``) as blocked, each with its reason: a failure row, the blocked count, no
    result, no child. Visits no longer pending are ignored. Run it in a transaction."""
    pending = await lock_pending(conn, list(reasons))
    await complete(conn, pending, {p.key: "blocked" for p in pending},
                   reasons={p.key: reasons[p.key] for p in pending})


async def complete(conn: asyncpg.Connection, pages: Sequence[Pending],
                   outcomes: dict[Key, Outcome], attempts: dict[Key, int] | None = None,
                   reasons: dict[Key, str] | None = None,
                   extra: dict[Key, list[int]] | None = None,
                   seen: SeenFilter | None = None,
                   versions: Mapping[Key, int] | None = None,
                   known: Known[Key] | None = None) -> list[Key]:
    """Record locked visits as processed; return the visits newly queued.

    Must run inside the transaction that called ``lock_pending`` (and, for fetched pages, wrote
    their ``url`` and ``url_links`` rows), so links, results, failures, children and counters
    commit together. Each page processed (not abandoned) gets one ``job_page`` row: the version
    of its links the job uses (``versions``: the one a store answer was planned with, if its
    links are still stored; else the page's current version); a page the job processed before
    (a re-expansion) keeps the version it had, so the job lists and follows the same links.
    Nothing is written per link, but for a job made before migration 0023
    (``Pending.links_derived`` false), whose results stay ``job_result`` rows. A page fails if
    its URL's last fetch failed (``url.error``) or if ``reasons`` gives a reason (work
    abandoned); ``attempts`` counts its fetches in this job.
    ``extra`` gives URLs to follow from a page that are not links on it (its sitemaps). A job
    with a rule set also gets the page's yields under it (``job_yield``); for jobs of rule
    set 0 that costs no statement. ``seen``: the worker's Bloom filters, consulted for jobs
    with ``bloom`` (``_insert_first``); a job without one never touches it. ``known``: the
    levels the worker knows its jobs' visits to have at most (``known.Known``): children known
    visited at their level or nearer are no work; the visits processed and queued are noted.
    """
    if not pages:
        return []
    reasons = reasons or {}
    kept = [p for p in pages if outcomes.get(p.key) != "dropped"]
    failed = await _record_failures(conn, [p for p in kept if not p.reexpand],
                                    attempts or {}, reasons)
    # An abandoned visit was never processed in this job: it has no links to list or follow.
    expanding = [p for p in kept if p.key not in reasons]
    await _record_pages(conn, expanding, versions or {})
    await _copy_yields(conn, [p for p in expanding if p.ruleset])
    jobs, urls = _cols(p.key for p in pages)
    await conn.execute("""
        DELETE FROM job_pending p USING unnest($1::bigint[], $2::bigint[]) AS d(job_id, url_id)
        WHERE p.job_id = d.job_id AND p.url_id = d.url_id""", jobs, urls)
    # A page on the last level but one has no children, but one following rules may have a
    # next page (a 0-weight edge, on its own level: _CHILDREN_SQL keeps each job's below
    # max_level).
    parents = [p for p in expanding if p.level + 1 < p.max_level
               or (p.follow != "html" and p.level < p.max_level)]
    if extra:  # URLs that are not links (sitemaps) are a level down: none from the last
        below = {p.key for p in parents if p.level + 1 < p.max_level}
        extra = {k: v for k, v in extra.items() if k in below}
    if known is not None:
        known.note({p.key: p.level for p in pages})
    queued = await _queue_children(conn, parents, extra or {}, seen, known)
    await _count(conn, pages, outcomes, failed, queued)
    return [(j, u) for j, u, _ in queued]


async def _record_pages(conn: asyncpg.Connection, pages: Sequence[Pending],
                        versions: Mapping[Key, int]) -> None:
    """One ``job_page`` row per page (see ``complete``), and for the pages of jobs that are not
    derived their ``job_result`` rows, from the link set the job_page row names."""
    if not pages:
        return
    jobs, urls = _cols(p.key for p in pages)
    await conn.execute("""
        INSERT INTO job_page (job_id, url_id, version)
        SELECT p.job_id, p.url_id,
               CASE WHEN p.version IS NOT NULL AND EXISTS (
                        SELECT FROM url_links l WHERE l.url_id = p.url_id AND l.version = p.version)
                    THEN p.version ELSE u.version END
        FROM unnest($1::bigint[], $2::bigint[], $3::int[]) AS p(job_id, url_id, version)
        JOIN url u ON u.id = p.url_id
        ORDER BY 1, 2
        ON CONFLICT DO NOTHING""", jobs, urls, [versions.get(p.key) for p in pages])
    old = [p for p in pages if not p.links_derived]
    if old:
        jobs, urls = _cols(p.key for p in old)
        await conn.execute("""
            INSERT INTO job_result (job_id, refer_id, url_id)
            SELECT jp.job_id, jp.url_id, k.url_id
            FROM unnest($1::bigint[], $2::bigint[]) AS p(job_id, url_id)
            JOIN job_page jp ON jp.job_id = p.job_id AND jp.url_id = p.url_id
            JOIN url_links l ON l.url_id = jp.url_id AND l.version = jp.version
            CROSS JOIN LATERAL unnest(l.links) AS k(url_id)
            ORDER BY 1, 2, 3
            ON CONFLICT DO NOTHING""", jobs, urls)


async def _copy_yields(conn: asyncpg.Connection, pages: Sequence[Pending]) -> None:
    """The pages' yields under their job's rule set (``url_yield``) become the job's
    (``job_yield``), like their links become its results. Jobs of rule set 0 have none."""
    if not pages:
        return
    await conn.execute("""
        INSERT INTO job_yield (job_id, url_id, kind, seq, value)
        SELECT p.job_id, y.url_id, y.kind, y.seq, y.value
        FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS p(job_id, url_id, ruleset)
        JOIN url_yield y ON y.url_id = p.url_id AND y.ruleset = p.ruleset
        ORDER BY 1, 2, 3, 4
        ON CONFLICT DO NOTHING""",
        [p.job_id for p in pages], [p.url_id for p in pages], [p.ruleset for p in pages])


async def _record_failures(conn: asyncpg.Connection, pages: Sequence[Pending],
                           attempts: dict[Key, int], reasons: dict[Key, str]) -> set[Key]:
    if not pages:
        return set()
    rows = await conn.fetch("""
        INSERT INTO job_failure (job_id, url_id, status, reason, attempts)
        SELECT p.job_id, p.url_id, CASE WHEN p.reason IS NULL THEN u.status END,
               coalesce(p.reason, u.error), p.attempts
        FROM unnest($1::bigint[], $2::bigint[], $3::int[], $4::text[])
             AS p(job_id, url_id, attempts, reason)
        JOIN url u ON u.id = p.url_id
        WHERE coalesce(p.reason, u.error) IS NOT NULL
        ORDER BY 1, 2
        ON CONFLICT DO NOTHING RETURNING job_id, url_id""",
        [p.job_id for p in pages], [p.url_id for p in pages],
        [attempts.get(p.key, 0) for p in pages], [reasons.get(p.key) for p in pages])
    return {(r["job_id"], r["url_id"]) for r in rows}


async def _queue_children(conn: asyncpg.Connection, parents: Sequence[Pending],
                          extra: dict[Key, list[int]],
                          seen: SeenFilter | None = None,
                          known: Known[Key] | None = None) -> list[tuple[int, int, int]]:
    """Add the parents' children (their links, or for a job with follow rules or ids the links
    and ids its rules found: ``_children``; and ``extra`` URLs) as visits at level+1; returns
    (job, url, origin) newly pending.

    Locks are taken in this order: first the visits already in the job (their level lowered
    where this path is shorter, and queued to be expanded again), then, for a job with
    ``max_pages``, the job row (``_cap_pages``), then new rows. The URLs were upserted before
    any visit was locked (``pages.link_ids``). That avoids the common lock cycles (of a page
    lowered while its own commit runs, of a capped job), but not every one: the visits another
    transaction inserted between ``_lower`` and the insert are lowered after it, and a
    transaction holding the job row that inserts
    a visit another has just lowered (``ON CONFLICT DO NOTHING`` waits for it) while that one
    waits for the job row is a deadlock; PostgreSQL detects it after ``deadlock_timeout`` and
    ``in_transaction`` runs the aborted transaction again (about a second lost, no visit).
    Candidates are read and handled ``CHUNK`` at a time: a page with hundreds of thousands of
    links never holds the event loop for long."""
    if not parents:
        return []
    # The common case, in one read and no probe: no job with ``max_pages``, and few enough
    # candidates for one statement each (a read of CHUNK + 1 rows tells).
    if not any(p.max_pages for p in parents) and sum(map(len, extra.values())) < CHUNK:
        sql, args = _children(parents)
        rows = await conn.fetch(f"{sql} LIMIT ${len(args) + 1}", *args, CHUNK + 1)
        if len(rows) <= CHUNK:
            if extra:  # a page a sitemap lists may be a link too: the nearest once
                rows = _nearest(list(rows) + await _extra_children(conn, parents, extra))
            return await _insert_first(conn, _in_scope(parents, rows), parents, seen, known)
    queued: list[tuple[int, int, int]] = []
    fresh: list[asyncpg.Record] = []
    async for children in _candidates(conn, parents, extra):
        visited, lowered = await _lower(conn, children)
        queued += await _add_pending(conn, [c for c in children if _key(c) in lowered], lowered,
                                     parents)
        fresh += [c for c in children if _key(c) not in visited]
    if extra:  # a page a sitemap lists may be a link too: the nearest once
        fresh = _nearest(fresh)
    fresh = await _cap_pages(conn, parents, fresh)
    for i in range(0, len(fresh), CHUNK):
        chunk = fresh[i:i + CHUNK]
        added = await _add_visits(conn, chunk)
        # Visited by a transaction that committed since _lower looked: perhaps by a longer path.
        raced = [c for c in chunk if _key(c) not in added]
        late = (await _lower(conn, raced))[1] if raced else set()
        queued += await _add_pending(
            conn, [c for c in chunk if _key(c) in added or _key(c) in late], late, parents)
    return queued


async def _candidates(conn: asyncpg.Connection, parents: Sequence[Pending],
                      extra: dict[Key, list[int]]) -> AsyncIterator[list[asyncpg.Record]]:
    """The parents' children, each (job, url) once from its nearest parent, then the ``extra``
    URLs, all within their job's scope (never followed: images, CSS, JavaScript), in chunks of
    at most ``CHUNK`` rows (read through a cursor: call it in a transaction)."""
    sql, args = _children(parents)
    cursor = await conn.cursor(sql, *args)
    while True:
        rows = await cursor.fetch(CHUNK)
        if kept := _in_scope(parents, rows):
            yield kept
        if len(rows) < CHUNK:
            break
    if extra:
        rows = await _extra_children(conn, parents, extra)
        for i in range(0, len(rows), CHUNK):
            if kept := _in_scope(parents, rows[i:i + CHUNK]):
                yield kept


# The links of parent p (job_id, url_id) as rows l(url_id): the link set of the version the job
# used (its job_page row, written by complete() before it reads them). A probe per parent: as a
# plain join, the parents' rows (an unnest, estimated at 10) were merge-joined with the job's
# whole job_page partition, read in key order at every batch (its pages so far: 7,000 rows for
# 21 parents half-way through a 20,000-page crawl). LIMIT 1 (the key is unique) keeps the
# subquery from being flattened into such a join.
_PAGE_LINKS = """CROSS JOIN LATERAL (
            SELECT s.links FROM job_page jp
            JOIN url_links s ON s.url_id = jp.url_id AND s.version = jp.version
            WHERE jp.job_id = p.job_id AND jp.url_id = p.url_id
            LIMIT 1) s
        CROSS JOIN LATERAL unnest(s.links) AS l(url_id)"""

# The parents' links, each (job, url) once from its nearest parent (never images, CSS, JS).
_LINKS_SQL = f"""
        SELECT DISTINCT ON (p.job_id, l.url_id)
               p.job_id, l.url_id, p.level + 1 AS level, p.origin_id, p.url_id AS refer_id,
               u.url, p.i
        FROM unnest($1::bigint[], $2::bigint[], $3::int[], $4::bigint[], $5::int[])
             AS p(job_id, url_id, level, origin_id, i)
        {_PAGE_LINKS}
        JOIN url u ON u.id = l.url_id
        WHERE NOT {SKIP_MIME_SQL}
        ORDER BY p.job_id, l.url_id, p.level, p.origin_id"""


# The same for parents of which some follow their rules (job.follow 'rules' or 'both'): the
# page's HTML links for 'html'/'both' (never images, CSS, JS) and, for 'rules'/'both', the URLs
# of the link and id yields of the page under the job's rule set (url_yield.target), of any
# type (a rule asked for them: see plan), each (job, url) once from its nearest parent. A link
# yield with "rel": "next" (a list's next page: the GitHub source's pagination) is a 0-weight
# edge: the page stays on its parent's level, so a list's pages are all one level. Only
# children below their job's max_level are read (complete() also passes parents on the last
# level but one for their next pages). Jobs that follow HTML links only never run it
# (_children): theirs is the statement above.
_CHILDREN_SQL = f"""
        WITH p AS (
            SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::int[], $4::bigint[], $5::int[],
                                 $6::bigint[], $7::text[], $8::int[])
                AS p(job_id, url_id, level, origin_id, i, ruleset, follow, max_level))
        SELECT DISTINCT ON (c.job_id, c.url_id)
               c.job_id, c.url_id, c.level, c.origin_id, c.refer_id, u.url, c.i
        FROM (SELECT p.job_id, l.url_id, p.level + 1 AS level, p.origin_id,
                     p.url_id AS refer_id, p.i, p.max_level
              FROM p {_PAGE_LINKS} JOIN url u ON u.id = l.url_id
              WHERE p.follow <> 'rules' AND NOT {SKIP_MIME_SQL}
              UNION ALL
              SELECT p.job_id, y.target,
                     p.level + CASE WHEN y.kind = 'link' AND y.value->>'rel' = 'next'
                                    THEN 0 ELSE 1 END,
                     p.origin_id, p.url_id, p.i, p.max_level
              FROM p JOIN url_yield y ON y.url_id = p.url_id AND y.ruleset = p.ruleset
              WHERE p.follow <> 'html' AND y.kind IN ('link', 'id') AND y.target IS NOT NULL
             ) c
        JOIN url u ON u.id = c.url_id
        WHERE c.level < c.max_level
        ORDER BY c.job_id, c.url_id, c.level, c.origin_id"""


def _children(parents: Sequence[Pending]) -> tuple[str, list[list[int] | list[str]]]:
    """The statement reading the parents' children, and its arguments."""
    args: list[list[int] | list[str]] = [
        [p.job_id for p in parents], [p.url_id for p in parents], [p.level for p in parents],
        [p.origin_id for p in parents], list(range(len(parents)))]
    if all(p.follow == "html" for p in parents):
        return _LINKS_SQL, args
    return _CHILDREN_SQL, [*args, [p.ruleset for p in parents], [str(p.follow) for p in parents],
                           [p.max_level for p in parents]]


async def _insert_first(conn: asyncpg.Connection, children: Sequence[asyncpg.Record],
                        parents: Sequence[Pending],
                        seen: SeenFilter | None = None,
                        known: Known[Key] | None = None) -> list[tuple[int, int, int]]:
    """Queue the children of jobs without ``max_pages`` (no job row to lock, no counter): lower
    the level of those the job has visited already where this path is shorter (``_lower``),
    insert the others as visits, and queue the new and the lowered ones: three statements (a
    fourth for the children another transaction visited in between).

    Lowering comes first because it may wait: for the commit of the very page it lowers,
    which holds that visit (``lock_pending``). Were this transaction to insert its new visits
    first, that commit could be inserting one of them too, and wait for this one: a deadlock.

    With ``known``, the children known visited at their level or nearer are left out (no
    new visit, no shorter path: nothing to write), and the rest noted at their level: each is
    the job's visit at that level or nearer once this commits.

    With ``seen`` (the worker's Bloom filters), the children of a job with ``bloom`` that its
    filter may have seen are looked up first (``_lower``: exact) and only those the job has
    not visited are inserted; the others (surely unseen) are inserted as without a filter. A
    false positive costs its share of one lookup, never a visit. A job without ``bloom`` (or
    no ``seen``) takes none of this path."""
    if known is not None:
        children = [c for c in children
                    if (at := known.get(_key(c))) is None or at > c["level"]]
        known.note({_key(c): c["level"] for c in children})
    if not children:
        return []
    if seen is not None and any(p.bloom for p in parents):
        insert, lowered = await _filtered(conn, children, parents, seen)
    else:
        visited, lowered = await _lower(conn, children)
        insert = [c for c in children if _key(c) not in visited]
    new = {_key(r) for r in await conn.fetch("""
        INSERT INTO job_visit (job_id, url_id, level)
        SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::int[]) ORDER BY 1, 2
        ON CONFLICT DO NOTHING RETURNING job_id, url_id""",
        [c["job_id"] for c in insert], [c["url_id"] for c in insert],
        [c["level"] for c in insert])} if insert else set()
    if raced := [c for c in insert if _key(c) not in new]:
        # Visited by a transaction that committed since _lower looked: perhaps by a longer path.
        lowered |= (await _lower(conn, raced))[1]
    return await _add_pending(
        conn, [c for c in children if _key(c) in new or _key(c) in lowered], lowered, parents)


async def _filtered(conn: asyncpg.Connection, children: Sequence[asyncpg.Record],
                    parents: Sequence[Pending],
                    seen: SeenFilter) -> tuple[list[asyncpg.Record], set[Key]]:
    """The children to insert as visits, and those lowered, after the Bloom filters of the
    jobs with ``bloom``: a child its job's filter may have seen is looked up (``_lower``),
    inserted only if the job has no visit of it. Every child goes into its job's filter (it is
    the job's visit once this commits; if it does not, the filter only says "maybe")."""
    blooms = {p.job_id: p.bloom for p in parents if p.bloom}
    maybe: set[Key] = set()
    by_job: dict[int, list[int]] = {}
    for c in children:
        if c["job_id"] in blooms:
            by_job.setdefault(c["job_id"], []).append(c["url_id"])
    for job_id, url_ids in by_job.items():
        capacity, error = blooms[job_id]
        maybe.update((job_id, u) for u in seen.split(job_id, capacity, error, url_ids)[0])
        seen.add(job_id, capacity, error, url_ids)
    if not maybe:
        return list(children), set()
    visited, lowered = await _lower(conn, [c for c in children if _key(c) in maybe])
    return [c for c in children if _key(c) not in visited], lowered


def _in_scope(parents: Sequence[Pending], rows: Sequence[asyncpg.Record]) -> list[asyncpg.Record]:
    return [c for c in rows
            if parents[c["i"]].scope.unlimited
            or parents[c["i"]].scope.follows(c["url"], parents[c["i"]].origin_url)]


def _key(row: asyncpg.Record) -> Key:
    return (row["job_id"], row["url_id"])


async def _lower(conn: asyncpg.Connection,
                 children: Sequence[asyncpg.Record]) -> tuple[set[Key], set[Key]]:
    """Of these children, the ones the job has visited already, and those of them whose level
    was lowered (a shorter path: they are to be expanded again)."""
    rows = await conn.fetch(f"""
        WITH c AS (
            SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::int[]) AS c(job_id, url_id, level)
        ), {_LOCK_LOWER}, lowered AS (
            UPDATE job_visit v SET level = c.level
            FROM c JOIN locked k ON k.job_id = c.job_id AND k.url_id = c.url_id
            WHERE v.job_id = c.job_id AND v.url_id = c.url_id AND v.level > c.level
            RETURNING v.job_id, v.url_id
        )
        SELECT v.job_id, v.url_id, l.url_id IS NOT NULL AS lowered
        FROM c JOIN job_visit v ON v.job_id = c.job_id AND v.url_id = c.url_id
        LEFT JOIN lowered l ON l.job_id = c.job_id AND l.url_id = c.url_id""",
        [c["job_id"] for c in children], [c["url_id"] for c in children],
        [c["level"] for c in children])
    return {_key(r) for r in rows}, {_key(r) for r in rows if r["lowered"]}


# The visits of c (job_id, url_id, level) the UPDATE after it lowers, locked in key order: an
# UPDATE ... FROM unnest locks rows in whatever order its join yields them, and two commits
# lowering the same visits, each in its own order, would deadlock.
_LOCK_LOWER = """locked AS MATERIALIZED (
            SELECT v.job_id, v.url_id FROM c
            JOIN job_visit v ON v.job_id = c.job_id AND v.url_id = c.url_id
            WHERE v.level > c.level
            ORDER BY 1, 2 FOR NO KEY UPDATE OF v)"""


async def _add_visits(conn: asyncpg.Connection, children: Sequence[asyncpg.Record]) -> set[Key]:
    """Insert these children into their jobs' visited sets, counting them in ``job.visits``
    for jobs with ``max_pages``; returns those inserted (the others were there already)."""
    if not children:
        return set()
    rows = await conn.fetch("""
        WITH added AS (
            INSERT INTO job_visit (job_id, url_id, level)
            SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::int[]) ORDER BY 1, 2
            ON CONFLICT DO NOTHING RETURNING job_id, url_id
        ), counted AS (
            UPDATE job j SET visits = j.visits + a.n
            FROM (SELECT job_id, count(*)::int AS n FROM added GROUP BY job_id) a
            WHERE j.id = a.job_id AND j.max_pages IS NOT NULL
        )
        SELECT job_id, url_id FROM added""",
        [c["job_id"] for c in children], [c["url_id"] for c in children],
        [c["level"] for c in children])
    return {_key(r) for r in rows}


async def _add_pending(conn: asyncpg.Connection, children: Sequence[asyncpg.Record],
                       reexpand: set[Key],
                       parents: Sequence[Pending]) -> list[tuple[int, int, int]]:
    """Queue these children (those in ``reexpand`` to be expanded again); returns
    (job, url, origin) newly pending (a visit pending already stays as it is). Each row gets
    its URL's host (``host_key``: the feeder's politeness key) and its rank in the job's order
    (SQL ``harvester_rank``, numbered by ``job_pending_seq`` in (job, url) order; a URL's
    priority from the job's ``priorities``, only under order "priority")."""
    if not children:
        return []
    jobs = _jobs(parents)
    orders = [jobs[c["job_id"]].order for c in children]
    prios = [url_priority(p.priorities, c["url"]) if (p := jobs[c["job_id"]]).priorities
             else 0 for c in children]
    rows = await conn.fetch("""
        INSERT INTO job_pending (job_id, url_id, origin_id, refer_id, reexpand, host, rank)
        SELECT c.job_id, c.url_id, c.origin_id, c.refer_id, c.reexpand, c.host,
               harvester_rank(c.ord, c.level, c.prio, nextval('job_pending_seq'))
        FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bool[],
                    $6::text[], $7::text[], $8::int[], $9::int[])
             AS c(job_id, url_id, origin_id, refer_id, reexpand, host, ord, level, prio)
        ORDER BY 1, 2
        ON CONFLICT DO NOTHING RETURNING job_id, url_id, origin_id""",
        [c["job_id"] for c in children], [c["url_id"] for c in children],
        [c["origin_id"] for c in children], [c["refer_id"] for c in children],
        [_key(c) in reexpand for c in children], [host_key(c["url"]) for c in children],
        orders, [c["level"] for c in children], prios)
    return [(r["job_id"], r["url_id"], r["origin_id"]) for r in rows]


def _jobs(parents: Sequence[Pending]) -> Mapping[int, Pending]:
    """A parent of each job (what its children need of the job is the same in all)."""
    return {p.job_id: p for p in parents}


async def _extra_children(conn: asyncpg.Connection, parents: Sequence[Pending],
                          extra: dict[Key, list[int]]) -> list[asyncpg.Record]:
    index = {p.key: i for i, p in enumerate(parents)}
    pairs = [(index[k], u) for k, us in extra.items() if k in index for u in us]
    if not pairs:
        return []
    return list(await conn.fetch(f"""
        SELECT p.job_id, u.id AS url_id, p.level + 1 AS level, p.origin_id,
               p.url_id AS refer_id, u.url, x.i
        FROM unnest($1::int[], $2::bigint[]) AS x(i, url_id)
        JOIN unnest($3::bigint[], $4::bigint[], $5::int[], $6::bigint[], $7::int[])
             AS p(job_id, url_id, level, origin_id, i) ON p.i = x.i
        JOIN url u ON u.id = x.url_id
        WHERE NOT {SKIP_MIME_SQL}""",
        [i for i, _ in pairs], [u for _, u in pairs],
        [p.job_id for p in parents], [p.url_id for p in parents], [p.level for p in parents],
        [p.origin_id for p in parents], list(range(len(parents)))))


def _nearest(rows: list[asyncpg.Record]) -> list[asyncpg.Record]:
    """One candidate per (job, url): the one at the lowest level."""
    best: dict[Key, asyncpg.Record] = {}
    for r in rows:
        k = (r["job_id"], r["url_id"])
        if k not in best or (r["level"], r["origin_id"]) < (best[k]["level"], best[k]["origin_id"]):
            best[k] = r
    return [best[k] for k in sorted(best)]


async def _cap_pages(conn: asyncpg.Connection, parents: Sequence[Pending],
                     fresh: list[asyncpg.Record]) -> list[asyncpg.Record]:
    """Keep a job with ``max_pages`` to that many visits: of the children new to their job,
    those that fit under the cap (lowest level first), from the job's visit counter.

    The job row stays locked until the commit, so concurrent transactions of the job take the
    room one after another; the counter moves in ``_add_visits``, in the same transaction."""
    caps = {p.job_id for p in parents if p.max_pages}
    capped = sorted({c["job_id"] for c in fresh} & caps)
    if not capped:
        return fresh
    room = {r["id"]: r["room"] for r in await conn.fetch("""
        SELECT id, max_pages - visits AS room FROM job WHERE id = ANY($1::bigint[])
        ORDER BY id FOR UPDATE""", capped)}
    kept = []
    for c in sorted(fresh, key=lambda c: c["level"]):  # stable: each level in url order
        left = room.get(c["job_id"])
        if left is None or left > 0:
            kept.append(c)
            if left is not None:
                room[c["job_id"]] = left - 1
    return kept


async def _count(conn: asyncpg.Connection, pages: Sequence[Pending], outcomes: dict[Key, Outcome],
                 failed: set[Key], queued: Sequence[tuple[int, int, int]]) -> None:
    """Move each origin's counters; the one that reaches zero pending is complete, now."""
    delta: dict[tuple[int, int], Counter[str]] = {}
    for p in pages:
        c = delta.setdefault((p.job_id, p.origin_id), Counter())
        c["pending"] -= 1
        if outcomes.get(p.key) == "dropped":  # never processed: pending only
            continue
        if not p.reexpand:  # expanding a page again from a shorter path is not a new page
            c["processed"] += 1
            c[outcomes.get(p.key, "cached")] += 1
        if p.key in failed and outcomes.get(p.key) != "blocked":
            c["failed"] += 1
    for origin, n in Counter((job_id, origin) for job_id, _url, origin in queued).items():
        delta.setdefault(origin, Counter())["pending"] += n
    keys = sorted(delta)
    await conn.execute("""
        WITH d AS (
            SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::int[], $4::int[], $5::int[],
                                 $6::int[], $7::int[], $8::int[])
                AS d(job_id, origin_id, dp, dproc, dfetch, dcache, dfail, dblock)
        ), locked AS MATERIALIZED (  -- in key order: two commits of a job cannot deadlock
            SELECT ju.job_id, ju.url_id FROM job_url ju
            JOIN d ON ju.job_id = d.job_id AND ju.url_id = d.origin_id
            ORDER BY 1, 2 FOR NO KEY UPDATE OF ju)
        UPDATE job_url ju SET
            pending = ju.pending + d.dp, processed = ju.processed + d.dproc,
            fetched = ju.fetched + d.dfetch, cached = ju.cached + d.dcache,
            failed = ju.failed + d.dfail, blocked = ju.blocked + d.dblock,
            completed_on = CASE WHEN ju.pending + d.dp = 0 THEN coalesce(ju.completed_on, now()) END
        FROM d JOIN locked k ON k.job_id = d.job_id AND k.url_id = d.origin_id
        WHERE ju.job_id = d.job_id AND ju.url_id = d.origin_id""",
        [k[0] for k in keys], [k[1] for k in keys],
        [delta[k]["pending"] for k in keys], [delta[k]["processed"] for k in keys],
        [delta[k]["fetched"] for k in keys], [delta[k]["cached"] for k in keys],
        [delta[k]["failed"] for k in keys], [delta[k]["blocked"] for k in keys])
