"""Session pools (``crawl_session``): named sessions (cookies, headers, an optional User-Agent),
shared by every worker, each for one host (``scheme://host[:port]``) or any (host NULL). A job
with ``sessions`` leases one per request, as host slots and API tokens are leased (expiring
leases, so a killed worker's requests stop counting on their own): least recently used first,
not benched, under its ``max_uses``, with fewer than the job's ``concurrency`` live leases.
A session that met a block signal is benched (``bench`` seconds, doubling with each bench in a
row, at most an hour); ``put`` (a login task, the API) resets its uses and bench. Cookie and
header values leave this module only in a ``Lease``; ``listing`` shows names. One statement
per call."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import asyncpg

MAX_BENCH = 3600.0  # seconds: a bench doubles in a row up to this
BUSY_WAIT = timedelta(milliseconds=200)  # all at their concurrency: their requests end soon
SPENT_WAIT = timedelta(seconds=60)  # all used up (max_uses): until a login or PUT renews one


@dataclass(frozen=True, slots=True)
class Lease:
    """A session leased for one request: give it back with ``release`` (``Release``)."""
    pool: str
    name: str
    cookies: Mapping[str, str]
    headers: Mapping[str, str]
    user_agent: str | None
    version: int  # a bench applies only to the version that met the block
    lease_until: datetime


@dataclass(frozen=True, slots=True)
class Release:
    """A lease given back. ``used`` False: no request was made with it (its use is given back
    too); ``bench``: the answer was a block signal (``reason``), bench it for that many seconds
    times 2^(benches in a row)."""
    lease: Lease
    used: bool = True
    bench: float | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """A session as listed: names only, never a cookie's or a header's value."""
    pool: str
    name: str
    host: str | None
    cookie_names: tuple[str, ...]
    header_names: tuple[str, ...]
    user_agent: str | None
    max_uses: int | None
    uses: int
    in_flight: int
    last_used: datetime | None
    benched_until: datetime | None
    benches: int
    bench_reason: str | None
    version: int
    updated_on: datetime

    def as_json(self) -> dict[str, Any]:
        return {"pool": self.pool, "name": self.name, "host": self.host,
                "cookies": list(self.cookie_names), "headers": list(self.header_names),
                "userAgent": self.user_agent, "maxUses": self.max_uses, "uses": self.uses,
                "inFlight": self.in_flight,
                "lastUsed": self.last_used.isoformat() if self.last_used else None,
                "benchedUntil": self.benched_until.isoformat() if self.benched_until else None,
                "benches": self.benches, "benchReason": self.bench_reason,
                "version": self.version, "updatedOn": self.updated_on.isoformat()}


async def put(conn: asyncpg.Connection, pool: str, name: str, *, cookies: Mapping[str, str],
              headers: Mapping[str, str] | None = None, user_agent: str | None = None,
              host: str | None = None, max_uses: int | None = None) -> Literal["new", "updated"]:
    """Create or replace a session: "new" or "updated". Replacing one starts it afresh (no
    uses, no bench, the next version); its leases in flight stay counted until they end."""
    inserted = await conn.fetchval("""
        INSERT INTO crawl_session AS s (pool, name, host, cookies, headers, user_agent,
                                        max_uses)
        VALUES ($1, $2, $3, $4::jsonb, $5::jsonb, $6, $7)
        ON CONFLICT (pool, name) DO UPDATE SET
            host = EXCLUDED.host, cookies = EXCLUDED.cookies, headers = EXCLUDED.headers,
            user_agent = EXCLUDED.user_agent, max_uses = EXCLUDED.max_uses, uses = 0,
            benched_until = NULL, benches = 0, bench_reason = NULL,
            version = s.version + 1, updated_on = now()
        RETURNING (xmax = 0)""",
        pool, name, host, json.dumps(dict(cookies)), json.dumps(dict(headers or {})),
        user_agent, max_uses)
    return "new" if inserted else "updated"


async def delete(conn: asyncpg.Connection, pool: str, name: str) -> bool:
    """Remove a session; False: there was none."""
    return await conn.fetchval(
        "DELETE FROM crawl_session WHERE pool = $1 AND name = $2 RETURNING true",
        pool, name) is not None


# The session picked is one of the pool's for the host (or any host), not benched, not used
# up, with fewer than $4 live leases, least recently used first; its lease is appended and its
# use counted now (so max_uses holds with requests in flight). Else, among the others: when
# the first may serve again (a bench's end; at its concurrency: soon; locked by another taker
# this instant: at once; all used up: SPENT_WAIT); NULL when the pool has none for the host.
_LEASE_SQL = """
    WITH n AS MATERIALIZED (SELECT clock_timestamp() AS t),
    pick AS (
        SELECT s.pool, s.name FROM crawl_session s, n
        WHERE s.pool = $1 AND (s.host IS NULL OR s.host = $2)
          AND (s.benched_until IS NULL OR s.benched_until <= n.t)
          AND (s.max_uses IS NULL OR s.uses < s.max_uses)
          AND (SELECT count(*) FROM unnest(s.leases) AS l WHERE l > n.t) < $4
        ORDER BY s.last_used, s.name
        LIMIT 1 FOR UPDATE OF s SKIP LOCKED),
    upd AS (
        UPDATE crawl_session s SET
            leases = ARRAY(SELECT l FROM unnest(s.leases) AS l WHERE l > n.t)
                     || (n.t + make_interval(secs => $3)),
            uses = s.uses + 1, last_used = n.t
        FROM pick, n WHERE s.pool = pick.pool AND s.name = pick.name
        RETURNING s.name, s.cookies, s.headers, s.user_agent, s.version,
                  n.t + make_interval(secs => $3) AS lease_until),
    waits AS (
        SELECT CASE
                   WHEN s.max_uses IS NOT NULL AND s.uses >= s.max_uses THEN n.t + $5
                   ELSE greatest(
                       CASE WHEN s.benched_until > n.t THEN s.benched_until END,
                       CASE WHEN (SELECT count(*) FROM unnest(s.leases) AS l WHERE l > n.t) >= $4
                            THEN n.t + $6 END,
                       n.t + interval '50 milliseconds') END AS free_at
        FROM crawl_session s, n
        WHERE s.pool = $1 AND (s.host IS NULL OR s.host = $2))
    SELECT n.t AS db_now, upd.*, (SELECT min(free_at) FROM waits) AS free_at
    FROM n LEFT JOIN upd ON true"""


async def lease(conn: asyncpg.Connection, pool: str, host: str, lease_s: float,
                concurrency: int) -> Lease | datetime | None:
    """Lease a session of ``pool`` for one request to ``host`` for ``lease_s`` seconds: the
    session (``Lease``); else when one may be free (the database's clock); None when the pool
    has no session for the host (the request goes without one)."""
    row = await conn.fetchrow(_LEASE_SQL, pool, host, float(lease_s), concurrency,
                              SPENT_WAIT, BUSY_WAIT)
    assert row is not None
    if row["name"] is not None:
        return Lease(pool, row["name"], json.loads(row["cookies"]), json.loads(row["headers"]),
                     row["user_agent"], row["version"], row["lease_until"])
    free_at: datetime | None = row["free_at"]
    return free_at


async def release(conn: asyncpg.Connection, releases: Sequence[Release]) -> None:
    """Give leases back, in one statement: each lease dropped, an unused one's use given back;
    a bench (of the version that was leased) starts now for ``bench × 2^benches`` seconds (at
    most ``MAX_BENCH``) and counts one more in a row; a use without one ends the row."""
    if not releases:
        return
    await conn.execute("""
        WITH d AS (
            SELECT pool, name, array_agg(lease_until) AS ended,
                   count(*) FILTER (WHERE NOT used)::int AS unused,
                   max(bench) FILTER (WHERE version_ok) AS bench,
                   max(reason) FILTER (WHERE bench IS NOT NULL AND version_ok) AS reason,
                   bool_or(used AND bench IS NULL AND version_ok) AS good
            FROM (SELECT r.*, r.version = s.version AS version_ok
                  FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::bool[],
                              $5::float8[], $6::text[], $7::int[])
                       AS r(pool, name, lease_until, used, bench, reason, version)
                  JOIN crawl_session s ON s.pool = r.pool AND s.name = r.name) AS r
            GROUP BY pool, name ORDER BY pool, name)
        UPDATE crawl_session s SET
            leases = ARRAY(SELECT l FROM unnest(s.leases) AS l
                           WHERE l > clock_timestamp() AND l <> ALL(d.ended)),
            uses = greatest(0, s.uses - d.unused),
            benched_until = CASE WHEN d.bench IS NULL THEN s.benched_until
                ELSE greatest(s.benched_until, clock_timestamp() + make_interval(
                    secs => least($8, d.bench * 2.0 ^ least(s.benches, 30)))) END,
            benches = CASE WHEN d.bench IS NOT NULL THEN s.benches + 1
                           WHEN d.good THEN 0 ELSE s.benches END,
            bench_reason = CASE WHEN d.bench IS NOT NULL THEN d.reason
                                WHEN d.good THEN NULL ELSE s.bench_reason END
        FROM d WHERE s.pool = d.pool AND s.name = d.name""",
        [r.lease.pool for r in releases], [r.lease.name for r in releases],
        [r.lease.lease_until for r in releases], [r.used for r in releases],
        [r.bench for r in releases], [r.reason for r in releases],
        [r.lease.version for r in releases], MAX_BENCH)


async def listing(conn: asyncpg.Connection, pool: str | None = None) -> list[SessionInfo]:
    """The sessions of ``pool`` (None: every pool), by pool and name, without their values."""
    rows = await conn.fetch("""
        SELECT pool, name, host, user_agent, max_uses, uses, benched_until, benches,
               bench_reason, version, updated_on,
               CASE WHEN last_used = '-infinity' THEN NULL ELSE last_used END AS last_used,
               ARRAY(SELECT jsonb_object_keys(cookies) ORDER BY 1) AS cookie_names,
               ARRAY(SELECT jsonb_object_keys(headers) ORDER BY 1) AS header_names,
               (SELECT count(*) FROM unnest(leases) AS l WHERE l > clock_timestamp())::int
                   AS in_flight
        FROM crawl_session WHERE $1::text IS NULL OR pool = $1 ORDER BY pool, name""", pool)
    return [SessionInfo(r["pool"], r["name"], r["host"], tuple(r["cookie_names"]),
                        tuple(r["header_names"]), r["user_agent"], r["max_uses"], r["uses"],
                        r["in_flight"], r["last_used"], r["benched_until"], r["benches"],
                        r["bench_reason"], r["version"], r["updated_on"]) for r in rows]
