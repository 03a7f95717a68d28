"""Live progress (issue 16): the counters of many jobs in one statement, and a job's levels.

``sample`` is what the web server's LiveHub runs once per tick for every unfinished or watched
job, whatever the number of clients; ``levels`` feeds the ETA (``web_server/eta.py``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from shared.robots import BLOCKED_PREFIX, REFUSALS


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# Whether the job_failure row ``f`` is a refusal (robots.txt, the SSRF guard, a trap, credentials
# in a URL: ``shared.robots.is_refusal``'s reasons), not a failure; a ``blocked: `` reason counts
# only without an HTTP status. The one spelling of it in SQL (job_failures, /status's hosts).
REFUSAL_SQL = (f"(f.reason IN ({', '.join(map(_quoted, REFUSALS))})"
               f" OR (f.status IS NULL AND starts_with(f.reason, {_quoted(BLOCKED_PREFIX)})))")


@dataclass(frozen=True, slots=True)
class Level:
    """A job's visits at one level (``job_visit``) and how many of them are still pending."""
    level: int
    visited: int  # visits of the job at this level
    pending: int  # of which not processed yet


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


@dataclass(frozen=True, slots=True)
class HostSummary:
    host: str                       # scheme://host[:port], the politeness key
    pending: int                    # the job's visits of the host queued or in flight
    in_flight: int                  # requests to the host in flight now (every job's)
    next_start: datetime | None     # no request starts before (None: now)
    backoff_until: datetime | None  # backing off after 429/503/failures (None: not)
    robots: int | None              # HTTP status of its robots.txt (None: not known yet)


async def hosts(conn: asyncpg.Connection, job_id: int,
                top: int = 10) -> tuple[list[HostSummary], list[HostSummary], list[tuple[str, int]]]:
    """The job's hosts: the ``top`` by pending visits, those of them and the rest backing off
    now (at most ``top``), and the hosts whose pages robots.txt blocked, most first."""
    rows = await conn.fetch("""
        WITH p AS (
            SELECT p.host, count(*)::bigint AS pending
            FROM job_pending p WHERE p.job_id = $1 GROUP BY 1)
        SELECT p.host, p.pending,
               (SELECT count(*) FROM unnest(h.leases) e WHERE e > now())::int AS in_flight,
               CASE WHEN h.next_start > now() THEN h.next_start END AS next_start,
               CASE WHEN h.backoff_until > now() THEN h.backoff_until END AS backoff_until,
               h.robots_status AS robots,
               row_number() OVER (ORDER BY p.pending DESC, p.host) AS rank
        FROM p LEFT JOIN host h ON h.host = p.host
        ORDER BY p.pending DESC, p.host""", job_id)
    summaries = [(r["rank"], HostSummary(r["host"], r["pending"], r["in_flight"] or 0,
                                         r["next_start"], r["backoff_until"], r["robots"]))
                 for r in rows]
    blocked = await conn.fetch(f"""
        SELECT harvester_host(u.url) AS host, count(*)::bigint AS n
        FROM job_failure f JOIN url u ON u.id = f.url_id
        WHERE f.job_id = $1 AND {REFUSAL_SQL}
        GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT $2""", job_id, top)
    return ([s for rank, s in summaries if rank <= top],
            [s for _, s in summaries if s.backoff_until is not None][:top],
            [(r["host"], r["n"]) for r in blocked])
