"""The documents of API-source jobs (``GET /users``, ``/contributors``, their ``/result``),
read from the job's yields (``job_yield`` items with a ``_type``): one set-based statement each."""

from __future__ import annotations

import json
from typing import Any

import asyncpg


async def pending(conn: asyncpg.Connection, job_id: int) -> int | None:
    """How many of the job's URLs are not completed yet (0: done); None: no such job (or
    deleted)."""
    value = await conn.fetchval("""
        SELECT (SELECT count(*) FROM job_url ju WHERE ju.job_id = j.id AND ju.completed_on IS NULL)
        FROM job j WHERE j.id = $1 AND j.deleted_on IS NULL""", job_id)
    return None if value is None else int(value)


async def users(conn: asyncpg.Connection, job_id: int, n: int,
                newest: bool = False) -> list[dict[str, Any]]:
    """The first ``n`` distinct users (``_type`` ``user``) of the job by id, ascending (highest
    first with ``newest``), without their ``_type``."""
    order = "DESC" if newest else "ASC"
    rows = await conn.fetch(f"""
        SELECT DISTINCT ON ((y.value->>'id')::bigint) (y.value - '_type')::text AS value
        FROM job_yield y
        WHERE y.job_id = $1 AND y.kind = 'item' AND y.value->>'_type' = 'user'
              AND jsonb_typeof(y.value->'id') = 'number'
        ORDER BY (y.value->>'id')::bigint {order}, y.url_id, y.seq
        LIMIT $2""", job_id, n)
    return [json.loads(r["value"]) for r in rows]


async def contributor_logins(conn: asyncpg.Connection, job_id: int) -> list[str]:
    """The distinct lower-case logins of the job's ``contributor`` items, sorted."""
    rows = await conn.fetch("""
        SELECT DISTINCT lower(y.value->>'login') AS login
        FROM job_yield y
        WHERE y.job_id = $1 AND y.kind = 'item' AND y.value->>'_type' = 'contributor'
              AND y.value->>'login' IS NOT NULL
        ORDER BY 1""", job_id)
    return [r["login"] for r in rows]


async def root_status(conn: asyncpg.Connection, job_id: int) -> int | None:
    """The HTTP status with which a URL of the job itself (its root, level 0) failed, if one
    did (a 404 for an unknown user); None else."""
    status = await conn.fetchval("""
        SELECT f.status FROM job_url ju
        JOIN job_failure f ON f.job_id = ju.job_id AND f.url_id = ju.url_id
        WHERE ju.job_id = $1 ORDER BY f.status NULLS LAST LIMIT 1""", job_id)
    return None if status is None else int(status)
