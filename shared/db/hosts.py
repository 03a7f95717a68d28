"""Hosts: request slots leased across the cluster, backoff, and the shared robots.txt cache."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg


@dataclass(frozen=True, slots=True)
class Grant:
    host: str
    starts: list[datetime]   # when each granted request may start
    tokens: list[datetime]   # one lease per start, released after the request
    next_free: datetime      # when the host may take another request


@dataclass(frozen=True, slots=True)
class Release:
    host: str
    token: datetime
    trouble: bool = False              # 429, 503 or no answer: slow the host down
    retry_after: float | None = None
    used: bool = True                  # False: given back unused, says nothing of the host


@dataclass(frozen=True, slots=True)
class Robots:
    host: str
    status: int | None
    body: str | None
    fetched_on: datetime | None
    failures: int
    unresolved: str | None = None  # the last fetch failed: the host's name did not resolve


async def acquire(conn: asyncpg.Connection, wants: dict[str, int], caps: dict[str, int],
                  delays: dict[str, float], lease: float,
                  horizon: float) -> tuple[datetime, list[Grant]]:
    """Lease slots; returns the database's clock at the call (starts are on that clock) and
    the grants, in one round trip."""
    hosts = sorted(wants)
    rows = await conn.fetch("""
        SELECT clock_timestamp() AS db_now, a.*
        FROM harvester_acquire($1, $2, $3, $4, $5, $6) AS a""",
        hosts, [wants[h] for h in hosts], [caps[h] for h in hosts],
        [delays[h] for h in hosts], lease, horizon)
    db_now = min((r["db_now"] for r in rows), default=datetime.now().astimezone())
    return db_now, [Grant(r["host"], list(r["starts"]), list(r["tokens"]), r["next_free"])
                    for r in rows]


async def renew(conn: asyncpg.Connection, host: str, token: datetime,
                lease: float) -> datetime | None:
    """Put a new lease, ``lease`` seconds from now, in place of the caller's ``token`` on
    ``host`` (its first copy) (handed on from one request to the next: ``worker.gate``); returns its token. None,
    and nothing changed, if the host is backing off, or the lease has expired (it may be
    another's slot by now). One row, locked alone: no order to keep with other statements."""
    renewed: datetime | None = await conn.fetchval("""
        WITH t AS (SELECT clock_timestamp() + make_interval(secs => $3) AS token)
        UPDATE host h SET leases = h.leases[:array_position(h.leases, $2) - 1] || t.token
                                   || h.leases[array_position(h.leases, $2) + 1:]
        FROM t
        WHERE h.host = $1 AND $2 = ANY(h.leases) AND $2 > clock_timestamp()
          AND NOT t.token = ANY(h.leases)
          AND (h.backoff_until IS NULL OR h.backoff_until <= clock_timestamp())
        RETURNING t.token""", host, token, float(lease))
    return renewed


async def release(conn: asyncpg.Connection, releases: Sequence[Release], backoff_base: float,
                  backoff_cap: float) -> None:
    """Free the leases. A host in trouble backs off (Retry-After, else exponentially), never
    for less than a backoff already running; every answer in trouble counts as a failure, as
    many in one batch as released one at a time; a host that answered well has its failures
    forgotten, but a pause already running (one it may have asked for) is not cut short. The
    host rows are locked in name order, as ``harvester_acquire`` locks them, so the two never
    deadlock."""
    if not releases:
        return
    await conn.execute("""
        WITH r AS (
            SELECT host, array_agg(token) AS tokens, bool_or(trouble) AS trouble,
                   count(*) FILTER (WHERE trouble) AS troubles,
                   max(retry_after) AS retry_after, bool_and(NOT trouble) AND bool_or(used) AS fine
            FROM unnest($1::text[], $2::timestamptz[], $3::bool[], $4::float8[], $7::bool[])
                 AS x(host, token, trouble, retry_after, used)
            GROUP BY host),
        locked AS (  -- ORDER BY comes before the locking: rows are locked in name order
            SELECT host FROM host WHERE host = ANY($1::text[]) ORDER BY host FOR UPDATE)
        UPDATE host h SET
            leases = ARRAY(SELECT l FROM unnest(h.leases) AS l
                           WHERE l > clock_timestamp() AND NOT l = ANY(r.tokens)),
            failures = CASE WHEN r.trouble THEN h.failures + r.troubles WHEN r.fine THEN 0
                            ELSE h.failures END,
            backoff_until = CASE
                WHEN r.trouble THEN greatest(h.backoff_until, clock_timestamp() + make_interval(
                    secs => coalesce(r.retry_after,
                                     least($6::float8, $5::float8
                                           * 2 ^ least(h.failures + r.troubles - 1, 60)))))
                ELSE h.backoff_until END
        FROM r JOIN locked USING (host) WHERE h.host = r.host""",
        [x.host for x in releases], [x.token for x in releases],
        [x.trouble for x in releases], [x.retry_after for x in releases],
        backoff_base, backoff_cap, [x.used for x in releases])


async def paused_until(conn: asyncpg.Connection, starts: Sequence[tuple[str, datetime]],
                       timeout: float | None = None) -> dict[tuple[str, datetime], datetime]:
    """For each (host, start) whose host is backed off past ``start`` (a start granted before
    the backoff was set): until when. One statement for all of them, given up (TimeoutError)
    after ``timeout`` seconds."""
    if not starts:
        return {}
    rows = await conn.fetch("""
        SELECT x.host, x.start, h.backoff_until
        FROM unnest($1::text[], $2::timestamptz[]) AS x(host, start)
        JOIN host h ON h.host = x.host AND h.backoff_until > x.start""",
        [h for h, _ in starts], [t for _, t in starts], timeout=timeout)
    return {(r["host"], r["start"]): r["backoff_until"] for r in rows}


async def robots(conn: asyncpg.Connection, hosts: Sequence[str],
                 known: Mapping[str, datetime] | None = None) -> dict[str, Robots]:
    """The hosts' robots.txt state. ``known`` names copies the caller has parsed already (host
    -> ``fetched_on``): if still current, their bodies (up to 512 KiB) are left out (None)."""
    known = known or {}
    names = sorted(known)
    rows = await conn.fetch("""
        SELECT h.host, h.robots_status, h.robots_fetched_on, h.robots_failures,
               h.robots_unresolved,
               CASE WHEN k.fetched_on = h.robots_fetched_on THEN NULL
                    ELSE h.robots_body END AS robots_body
        FROM host h
        LEFT JOIN unnest($2::text[], $3::timestamptz[]) AS k(host, fetched_on) ON k.host = h.host
        WHERE h.host = ANY($1::text[])""", list(hosts), names, [known[n] for n in names])
    return {r["host"]: Robots(r["host"], r["robots_status"], r["robots_body"],
                              r["robots_fetched_on"], r["robots_failures"],
                              r["robots_unresolved"]) for r in rows}


async def claim_robots_fetches(conn: asyncpg.Connection, hosts: Sequence[str], max_age: float,
                               lease: float) -> set[str]:
    """Take the right to fetch these hosts' robots.txt (one worker in the cluster at a time
    per host); returns the hosts this caller got. One statement for the whole batch."""
    rows = await conn.fetch("""
        INSERT INTO host AS h (host, robots_fetching_until)
        SELECT x, clock_timestamp() + make_interval(secs => $3)
        FROM unnest($1::text[]) AS x ORDER BY x
        ON CONFLICT (host) DO UPDATE SET robots_fetching_until = excluded.robots_fetching_until
        WHERE (h.robots_fetched_on IS NULL
               OR h.robots_fetched_on < clock_timestamp() - make_interval(secs => $2))
          AND (h.robots_fetching_until IS NULL OR h.robots_fetching_until < clock_timestamp())
        RETURNING h.host""", sorted(set(hosts)), max_age, lease)
    return {r["host"] for r in rows}


async def unclaim_robots_fetch(conn: asyncpg.Connection, host: str) -> None:
    """Give back the right to fetch a host's robots.txt without having fetched it."""
    await conn.execute("UPDATE host SET robots_fetching_until = NULL WHERE host = $1", host)


async def store_robots(conn: asyncpg.Connection, host: str, status: int | None,
                       body: str | None, give_up_after: int = 3,
                       retry_given_up: float = 300.0, unresolved: str | None = None) -> None:
    """Keep an answer (2xx or 4xx); count a failure (5xx, no answer; ``unresolved``: the
    resolver's error, when the host's name did not resolve) without losing the last good
    copy, so a host that stops answering is retried and, in the end, treated as disallow.
    Once ``give_up_after`` failures are counted, it is asked again only every
    ``retry_given_up`` seconds. Any body is kept: NULs, which PostgreSQL text cannot hold, are
    dropped."""
    if status is not None and status < 500:
        await conn.execute("""
            UPDATE host SET robots_status = $2, robots_body = $3, robots_fetched_on = now(),
                   robots_failures = 0, robots_fetching_until = NULL, robots_unresolved = NULL
            WHERE host = $1""",
            host, status, body.replace("\x00", "") if body is not None else None)
    else:
        # Nobody tries again before a pause that doubles with each failure (at most a minute),
        # or, once given up, before a long one.
        await conn.execute("""
            UPDATE host SET robots_failures = robots_failures + 1, robots_unresolved = $4,
                   robots_fetching_until = clock_timestamp() + make_interval(secs =>
                       CASE WHEN robots_failures + 1 >= $2 THEN $3
                            ELSE least(60, 2 ^ least(robots_failures, 6)) END)
            WHERE host = $1""", host, give_up_after, float(retry_given_up), unresolved)
