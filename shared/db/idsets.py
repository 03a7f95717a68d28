"""Id sets (``id_set``, ``id_set_member``): the ``known`` and ``explored`` ids a job resumes
from (DS-3), uploaded once with ``POST /idsets`` and named by a job's spec (``ids.known``,
``ids.explored``).

An upload is ``create_set``, ``add_members`` per chunk of lines (COPY, each committed on its
own), then ``finish_set``; only a complete set can be named by a job (``usable``), and
``delete_stale`` removes incomplete ones (uploads that failed or died). ``seed_job`` turns a
job's sets into visits when the job is created, a chunk of ids a statement, never the whole set
in memory.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from uuid import UUID

import asyncpg

from shared.db.pages import upsert_urls
from shared.ids import id_url
from shared.mime import guess_mime

log = logging.getLogger(__name__)


async def create_set(conn: asyncpg.Connection) -> UUID:
    """A new, empty and incomplete set; returns its id."""
    set_id = uuid.uuid4()
    await conn.execute("INSERT INTO id_set (id) VALUES ($1)", set_id)
    return set_id


async def add_members(conn: asyncpg.Connection, set_id: UUID, idents: Sequence[str]) -> None:
    """Add these ids (checked by the caller: ``shared.ids.check_id``) to the set; duplicates
    are harmless (read back distinct)."""
    if idents:
        await conn.copy_records_to_table("id_set_member", columns=("set_id", "ident"),
                                         records=[(set_id, i) for i in idents])


async def finish_set(conn: asyncpg.Connection, set_id: UUID, count: int) -> None:
    """Mark the set complete with ``count`` lines read: a job may name it from now on."""
    await conn.execute("UPDATE id_set SET count = $2, complete = true WHERE id = $1",
                       set_id, count)


async def usable(conn: asyncpg.Connection, set_id: UUID) -> bool:
    """Whether the set exists and its upload completed."""
    return bool(await conn.fetchval(
        "SELECT EXISTS (SELECT FROM id_set WHERE id = $1 AND complete)", set_id))


SEED_CHUNK = 5_000  # ids a statement when seeding a job


async def first_url(conn: asyncpg.Connection, url_format: str, known: UUID,
                    explored: UUID | None) -> str | None:
    """The URL of the least known id that is not explored (and makes a URL under the format):
    the job URL of a job given neither URLs nor seeds. None when there is none (every known id
    is explored, or the set is empty): the job has nothing to fetch (DS-3: an explored id is
    never fetched)."""
    cursor = await conn.cursor("""
        SELECT k.ident FROM id_set_member k
        WHERE k.set_id = $1 AND NOT EXISTS (
            SELECT FROM id_set_member e WHERE e.set_id = $2 AND e.ident = k.ident)
        ORDER BY k.ident""", known, explored)
    while (ident := await cursor.fetchrow()) is not None:
        try:
            return id_url(url_format, ident[0])
        except ValueError:
            continue
    return None


async def seed_job(conn: asyncpg.Connection, job_id: int, origin_id: int, url_format: str,
                   known: UUID | None, explored: UUID | None) -> int:
    """Put a new job's id sets into its frontier; returns how many known ids were queued.

    Run it in the transaction creating the job, after its job URLs. Explored ids first: each
    id's URL (``id_url``) becomes a visit at level 0 that is not pending: found again it is
    never queued (a child's level is never below 1, so it is never lowered either), and a
    known id that is explored too is not queued. Then known ids: those not visited yet (a job
    URL, a seed, an explored id) are queued with the job's first URL (``origin_id``) as their
    origin, whose pending counter grows by as many: the job completes when they are done.
    A job with ``maxPages`` counts them in ``job.visits`` and queues no more than room is left.
    Their pending rows get their host and a rank at level 0 in the job's order (priority 0:
    the job's ``priorities`` are Python regexes, not matched here).

    Each set is read through a cursor, ``SEED_CHUNK`` ids at a time and each statement takes at
    most as many: the memory of a chunk, whatever the size of the sets. An id that makes no URL
    under the format is left out, and counted: a warning in the log says how many per set."""
    if explored is not None:
        async for url_ids in _url_ids(conn, job_id, explored, url_format):
            await conn.execute("""
                INSERT INTO job_visit (job_id, url_id, level)
                SELECT $1, u, 0 FROM unnest($2::bigint[]) u ORDER BY 2
                ON CONFLICT DO NOTHING""", job_id, url_ids)
    if known is None:
        return 0
    room: int | None = await conn.fetchval(
        "SELECT max_pages - visits FROM job WHERE id = $1", job_id)
    queued = 0
    async for url_ids in _url_ids(conn, job_id, known, url_format):
        if room is not None and queued >= room:
            break
        queued += await conn.fetchval("""
            WITH added AS (
                INSERT INTO job_visit (job_id, url_id, level)
                SELECT $1, u, 0 FROM unnest($2::bigint[]) u
                WHERE NOT EXISTS (SELECT FROM job_visit v WHERE v.job_id = $1 AND v.url_id = u)
                ORDER BY 2 LIMIT $4
                ON CONFLICT DO NOTHING RETURNING url_id
            ), queued AS (
                INSERT INTO job_pending (job_id, url_id, origin_id, host, rank)
                SELECT $1, a.url_id, $3, harvester_host(u.url),
                       harvester_rank(j.queue_order, 0, 0, nextval('job_pending_seq'))
                FROM added a JOIN url u ON u.id = a.url_id JOIN job j ON j.id = $1
                ORDER BY 2
                ON CONFLICT DO NOTHING RETURNING 1
            )
            SELECT count(*)::int FROM queued""",
            job_id, url_ids, origin_id, None if room is None else room - queued)
    if queued:
        await conn.execute("""
            UPDATE job_url SET pending = pending + $3, completed_on = NULL
            WHERE job_id = $1 AND url_id = $2""", job_id, origin_id, queued)
        await conn.execute("""
            UPDATE job SET visits = visits + $2 WHERE id = $1 AND max_pages IS NOT NULL""",
            job_id, queued)
    return queued


async def _url_ids(conn: asyncpg.Connection, job_id: int, set_id: UUID,
                   url_format: str) -> AsyncIterator[list[int]]:
    """The URL ids of the set's distinct ids under the format (URLs inserted where new), in
    chunks of at most ``SEED_CHUNK``, read through a cursor (call it in a transaction). Ids
    that make no URL are left out and logged (a warning with their count) once read."""
    cursor = await conn.cursor(
        "SELECT DISTINCT ident FROM id_set_member WHERE set_id = $1 ORDER BY ident", set_id)
    dropped = 0
    while True:
        rows = await cursor.fetch(SEED_CHUNK)
        urls: dict[str, str] = {}
        for r in rows:
            try:
                url = id_url(url_format, r["ident"])
            except ValueError:
                dropped += 1
                continue
            urls[url] = guess_mime(url)
        if urls:
            yield sorted(set((await upsert_urls(conn, urls)).values()))
        if len(rows) < SEED_CHUNK:
            break
    if dropped:
        log.warning("job %d: %d ids of set %s make no URL under %s: left out",
                    job_id, dropped, set_id, url_format)


async def delete_stale(conn: asyncpg.Connection, older_than: timedelta,
                       set_id: UUID | None = None) -> int:
    """Delete incomplete sets (an upload that failed or never finished: a job never names one)
    created more than ``older_than`` ago, with their members; with ``set_id``, only that one if
    it is incomplete (a failed upload's own). Returns how many sets went. One statement."""
    return int(await conn.fetchval("""
        WITH stale AS (
            DELETE FROM id_set WHERE NOT complete AND created_on < now() - $1::interval
              AND ($2::uuid IS NULL OR id = $2)
            RETURNING id
        ), members AS (
            DELETE FROM id_set_member m USING stale WHERE m.set_id = stale.id RETURNING 1
        )
        SELECT count(*) FROM stale""", older_than, set_id))
