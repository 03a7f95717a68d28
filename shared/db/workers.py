"""The live worker registry (``worker_process``): each worker process beats its row every
``heartbeatInterval`` with the fetcher kinds it serves; a row seen within ``workerTimeout`` is a
live worker. The web server counts them for ``/status``. A worker that cannot work (a failed init
function) beats with no kinds and says why in ``health`` (NULL: healthy). Times are PostgreSQL's
``now()``, so the hosts' clocks never matter."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

PRUNE_AFTER = "1 day"  # a row unseen this long is deleted by the next beat of any worker


@dataclass(frozen=True, slots=True)
class WorkerProcess:
    id: uuid.UUID
    kinds: list[str]
    hostname: str
    pid: int
    version: str
    started_on: datetime
    seen_on: datetime
    health: str | None = None
    # What the worker reported at its last beat (worker.stats.WorkerStats.snapshot: inFlight,
    # fetched, fetchedByKind, pagesPerSecond, errorRate, latencyP50, latencyP95); None before.
    stats: dict[str, Any] | None = None


async def beat(conn: asyncpg.Connection, id: uuid.UUID, kinds: Sequence[str], hostname: str,
               pid: int, version: str, health: str | None = None,
               stats: Mapping[str, Any] | None = None, timeout: float = 15.0) -> int:
    """Say that worker ``id`` is alive now (its row is made on the first beat) with its kinds,
    ``health`` (None: healthy, else why not) and ``stats`` (None: none reported), and delete
    the rows of other workers unseen for a day (killed without a clean stop), in one
    statement. Returns how many live workers (seen within ``timeout`` seconds) serve one of
    its kinds, this one included (none if it serves none)."""
    others: int = await conn.fetchval(f"""
        WITH pruned AS (
            DELETE FROM worker_process
            WHERE seen_on < now() - interval '{PRUNE_AFTER}' AND id <> $1),
        beaten AS (
            INSERT INTO worker_process (id, kinds, hostname, pid, version, health, stats)
            VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)
            ON CONFLICT (id) DO UPDATE SET kinds = EXCLUDED.kinds, health = EXCLUDED.health,
                                           stats = EXCLUDED.stats, seen_on = now())
        SELECT count(*) FROM worker_process
        WHERE id <> $1 AND seen_on > now() - make_interval(secs => $8)
          AND kinds && $2::text[]""",
        id, list(kinds), hostname, pid, version, health,
        None if stats is None else json.dumps(stats, separators=(",", ":")), float(timeout))
    return int(others) + 1 if kinds else 0


async def forget(conn: asyncpg.Connection, id: uuid.UUID) -> None:
    """A worker stopping cleanly: no longer live at once, without waiting out the timeout."""
    await conn.execute("DELETE FROM worker_process WHERE id = $1", id)


async def live(conn: asyncpg.Connection, kind: str, timeout: float) -> int:
    """How many workers serving ``kind`` were seen within the last ``timeout`` seconds."""
    return int(await conn.fetchval("""
        SELECT count(*) FROM worker_process
        WHERE seen_on > now() - make_interval(secs => $2) AND $1 = ANY (kinds)""",
        kind, timeout))


async def live_kinds(conn: asyncpg.Connection, timeout: float) -> list[str]:
    """The fetcher kinds at least one worker seen within the last ``timeout`` seconds serves."""
    return [r[0] for r in await conn.fetch("""
        SELECT DISTINCT unnest(kinds) FROM worker_process
        WHERE seen_on > now() - make_interval(secs => $1) ORDER BY 1""", timeout)]


async def live_workers(conn: asyncpg.Connection, timeout: float) -> list[WorkerProcess]:
    """The workers seen within the last ``timeout`` seconds, longest running first."""
    rows = await conn.fetch("""
        SELECT id, kinds, hostname, pid, version, started_on, seen_on, health, stats
        FROM worker_process
        WHERE seen_on > now() - make_interval(secs => $1)
        ORDER BY started_on, id""", timeout)
    return [WorkerProcess(**{**dict(r), "stats": None if r["stats"] is None
                             else json.loads(r["stats"])}) for r in rows]
