"""API tokens' rate-limit state, shared by every worker: one ``api_token`` row per (token id,
resource) (GitHub's ``core``, ``search`` ...), as host slots are (``shared.db.hosts``): what the
API last said of the budget (``lim``, ``remaining``, ``reset_at``), a pause (a secondary limit's
Retry-After, a refused token) and expiring leases, one per request in flight, so that a killed
worker's requests stop counting on their own. Only token ids (``worker.github_tokens.token_id``)
are stored, never a token. One statement per call."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

# A spent token is taken again this long after its reset (X-RateLimit-Reset, in whole seconds on
# GitHub's clock), not at once: a worker's or the database's clock ahead of GitHub's would
# otherwise send requests GitHub still refuses.
RESET_SKEW = 2.0


@dataclass(frozen=True, slots=True)
class Taken:
    """A token leased for one request: give it back with its lease (``give_back``)."""
    token_id: str
    lease_until: datetime


@dataclass(frozen=True, slots=True)
class Refused:
    """No token to take: every one was refused (401; ``give_back(refused=True)``), paused
    until ``until`` at the earliest."""
    until: datetime


@dataclass(frozen=True, slots=True)
class TokenState:
    token_id: str
    resource: str
    limit: int | None
    remaining: int | None
    reset_at: datetime | None
    paused_until: datetime | None
    in_flight: int
    seen_on: datetime


async def register(conn: asyncpg.Connection, token_ids: Sequence[str],
                   resources: Sequence[str]) -> None:
    """Make sure a row exists for each (token id, resource); ``seen_on`` says a worker holds
    the token now."""
    await conn.execute("""
        INSERT INTO api_token (token_id, resource)
        SELECT t, r FROM unnest($1::text[]) AS t, unnest($2::text[]) AS r ORDER BY t, r
        ON CONFLICT (token_id, resource) DO UPDATE SET seen_on = now()""",
        sorted(set(token_ids)), sorted(set(resources)))


# The token picked is one not paused, with fewer than $3 live leases and budget left (or its
# window past its reset), most remaining first (unknown first: a fresh token says how much it
# has); its lease is appended and its remaining spent ahead (NULL once its window has reset:
# the answer says; a window is past ``RESET_SKEW`` after its reset). Else: when the first of
# them may free up (a pause's or a window's end; a
# lease full token: soon, its requests end long before their leases; one locked by another
# taker this instant: at once).
_TAKE_SQL = """
    WITH n AS MATERIALIZED (SELECT c.t, c.t - make_interval(secs => $5) AS r
                            FROM (SELECT clock_timestamp() AS t) c),
    pick AS (
        SELECT a.token_id FROM api_token a, n
        WHERE a.token_id = ANY($1::text[]) AND a.resource = $2
          AND (a.paused_until IS NULL OR a.paused_until <= n.t)
          AND (SELECT count(*) FROM unnest(a.leases) AS l WHERE l > n.t) < $3
          AND (a.remaining IS NULL OR a.remaining > 0 OR a.reset_at <= n.r)
        ORDER BY CASE WHEN a.reset_at <= n.r THEN NULL ELSE a.remaining END DESC NULLS FIRST,
                 a.token_id
        LIMIT 1 FOR UPDATE OF a SKIP LOCKED),
    upd AS (
        UPDATE api_token a SET
            leases = ARRAY(SELECT l FROM unnest(a.leases) AS l WHERE l > n.t)
                     || (n.t + make_interval(secs => $4)),
            remaining = CASE WHEN a.reset_at <= n.r THEN NULL ELSE a.remaining - 1 END,
            reset_at = CASE WHEN a.reset_at <= n.r THEN NULL ELSE a.reset_at END
        FROM pick, n WHERE a.token_id = pick.token_id AND a.resource = $2
        RETURNING a.token_id, n.t + make_interval(secs => $4) AS lease_until),
    blocked AS (
        SELECT coalesce(a.lim = 0 AND a.paused_until > n.t, false) AS refused,
               coalesce(greatest(
                   CASE WHEN a.paused_until > n.t THEN a.paused_until END,
                   CASE WHEN a.remaining <= 0 AND a.reset_at > n.r
                        THEN a.reset_at + make_interval(secs => $5) END,
                   CASE WHEN (SELECT count(*) FROM unnest(a.leases) AS l WHERE l > n.t) >= $3
                        THEN n.t + interval '200 milliseconds' END),
                   n.t + interval '50 milliseconds') AS free_at  -- free, but locked by a taker
        FROM api_token a, n
        WHERE a.token_id = ANY($1::text[]) AND a.resource = $2)
    SELECT n.t AS db_now, upd.token_id, upd.lease_until,
           (SELECT min(free_at) FROM blocked) AS free_at,
           (SELECT bool_and(refused) FROM blocked) AS refused
    FROM n LEFT JOIN upd ON true"""


async def take(conn: asyncpg.Connection, token_ids: Sequence[str], resource: str,
               max_inflight: int, lease: float) -> tuple[datetime, Taken | datetime | Refused]:
    """Lease one of ``token_ids`` for a request on ``resource``: the database's clock at the
    call, and the token (``Taken``) or, when none is free, when one may be (at least a moment
    from now: a token locked by another taker, or none registered), or ``Refused`` when every
    one of them was refused."""
    row = await conn.fetchrow(_TAKE_SQL, list(token_ids), resource, max_inflight, float(lease),
                              RESET_SKEW)
    assert row is not None
    now: datetime = row["db_now"]
    if row["token_id"] is not None:
        return now, Taken(row["token_id"], row["lease_until"])
    free_at: datetime | None = row["free_at"]
    if row["refused"] and free_at is not None:
        return now, Refused(free_at)
    if free_at is None or free_at <= now:  # locked by another taker, or not registered
        free_at = now + timedelta(milliseconds=200)
    return now, free_at


async def give_back(conn: asyncpg.Connection, taken: Taken, resource: str, *,
                    remaining: int | None = None, limit: int | None = None,
                    reset_at: datetime | None = None, pause: float | None = None,
                    spent: bool = True, refused: bool = False) -> None:
    """Drop the request's lease and keep what its answer said: a newer window (a later
    ``reset_at``) replaces the budget, the same window keeps the lower remaining (requests
    still in flight were spent ahead); ``spent`` False (a 304, which costs nothing) gives the
    request spent ahead back. ``pause``: no request with this token on this resource for that
    many seconds (never shortening a longer pause). ``refused`` (a 401): the token is marked
    so (``lim`` 0, which no answer of GitHub's has; the next answer with a limit clears it)."""
    await conn.execute("""
        UPDATE api_token a SET
            leases = ARRAY(SELECT l FROM unnest(a.leases) AS l
                           WHERE l > clock_timestamp() AND l <> $3),
            lim = CASE WHEN $9 THEN 0 ELSE coalesce($5, a.lim) END,
            remaining = CASE
                WHEN $4::int IS NOT NULL AND $6::timestamptz IS NOT NULL
                     AND (a.reset_at IS NULL OR $6 > a.reset_at) THEN $4
                WHEN $4::int IS NOT NULL AND $6 = a.reset_at
                    THEN least(a.remaining + CASE WHEN $8 THEN 0 ELSE 1 END, $4)
                ELSE a.remaining + CASE WHEN $8 THEN 0 ELSE 1 END END,
            reset_at = CASE WHEN $6::timestamptz IS NOT NULL
                                 AND (a.reset_at IS NULL OR $6 > a.reset_at) THEN $6
                            ELSE a.reset_at END,
            paused_until = CASE WHEN $7::float8 IS NULL THEN a.paused_until
                                ELSE greatest(a.paused_until,
                                              clock_timestamp() + make_interval(secs => $7)) END
        WHERE a.token_id = $1 AND a.resource = $2""",
        taken.token_id, resource, taken.lease_until, remaining, limit, reset_at, pause, spent,
        refused)


async def states(conn: asyncpg.Connection) -> list[TokenState]:
    """Every (token id, resource) row, with its requests in flight now."""
    rows = await conn.fetch("""
        SELECT token_id, resource, lim, remaining, reset_at, paused_until, seen_on,
               (SELECT count(*) FROM unnest(leases) AS l WHERE l > clock_timestamp())::int
                   AS in_flight
        FROM api_token ORDER BY token_id, resource""")
    return [TokenState(r["token_id"], r["resource"], r["lim"], r["remaining"], r["reset_at"],
                       r["paused_until"], r["in_flight"], r["seen_on"]) for r in rows]
