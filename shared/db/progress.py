"""Live progress (issue 16): the counters of many jobs in one statement, and a job's levels.

``sample`` is what the web server's LiveHub runs once per tick for every unfinished or watched
job, whatever the number of clients; ``levels`` feeds the ETA (``shared.eta``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from shared.eta import Level


@dataclass(frozen=True, slots=True)
class Counters:
    job_id: int
    state: str       # job.state: running, paused, cancelled
    urls: int        # job URLs
    open: int        # job URLs not completed
    pending: int
    processed: int
    fetched: int
    cached: int
    failed: int
    blocked: int

    @property
    def completed(self) -> bool:
        return self.open == 0


async def sample(conn: asyncpg.Connection, watched: Sequence[int]) -> dict[int, Counters]:
    """The counters of every job with an open job URL (index ``job_url_open``) and of the
    ``watched`` ones, summed over their job URLs; deleted jobs left out. One statement."""
    rows = await conn.fetch("""
        SELECT j.id, j.state, count(*)::int AS urls,
               count(*) FILTER (WHERE ju.completed_on IS NULL)::int AS open,
               sum(ju.pending)::bigint AS pending, sum(ju.processed)::bigint AS processed,
               sum(ju.fetched)::bigint AS fetched, sum(ju.cached)::bigint AS cached,
               sum(ju.failed)::bigint AS failed, sum(ju.blocked)::bigint AS blocked
        FROM job j JOIN job_url ju ON ju.job_id = j.id
        WHERE j.deleted_on IS NULL
          AND (j.id = ANY($1::bigint[])
               OR j.id IN (SELECT job_id FROM job_url WHERE completed_on IS NULL))
        GROUP BY j.id""", list(watched))
    return {r["id"]: Counters(r["id"], r["state"], r["urls"], r["open"], r["pending"],
                              r["processed"], r["fetched"], r["cached"], r["failed"],
                              r["blocked"]) for r in rows}


async def levels(conn: asyncpg.Connection, job_id: int) -> list[Level]:
    """The job's visits by level, and how many of them are still pending."""
    rows = await conn.fetch("""
        SELECT v.level, count(*)::bigint AS visited, count(p.url_id)::bigint AS pending
        FROM job_visit v LEFT JOIN job_pending p USING (job_id, url_id)
        WHERE v.job_id = $1 GROUP BY 1 ORDER BY 1""", job_id)
    return [Level(r["level"], r["visited"], r["pending"]) for r in rows]
