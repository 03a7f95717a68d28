"""The frontier's statements as the frontier grows (issue 18): time per call of the feeder's
claim (planned), ``defer``, ``unclaim``, the watchdog's ``requeue_stale`` and ``visits.plan``,
with 10 thousand, 1 million and 10 million pending visits.

    python -m bench.frontier_scale [--sizes 10000,1000000,10000000] [--hosts 1000] [--calls 15]

A fresh embedded PostgreSQL (sized from the machine, as ``harvester up`` runs it, fsync off)
gets one job whose pending visits are spread over ``--hosts`` hosts, grown set-based to each
size in turn (ANALYZE after each). Every call runs in a transaction that is rolled back, so
each sees the same frontier; the figure is the median over ``--calls`` calls (and the min–max).
Each claim asks for 1,000 visits under the default politeness (2 in flight per host).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from harvester_ops import migrate
from harvester_ops.embedded import EmbeddedPostgres
from shared.config import Settings
from shared.db import jobs, visits
from shared.db.frontier import DueFrontier
from shared.jobspec import stored_spec
from shared.scope import Scope

CHUNK = 1_000_000


async def grow(conn: asyncpg.Connection, job_id: int, origin: int, have: int, size: int,
               hosts: int, prefix: str = "h") -> None:
    """Pending visits ``have + 1 .. size`` of the job, level 2, on ``hosts`` hosts (named
    ``<prefix><n>.example``)."""
    for a in range(have + 1, size + 1, CHUNK):
        b = min(a + CHUNK - 1, size)
        await conn.execute("""
            WITH ins AS (
                INSERT INTO url (url)
                SELECT 'http://' || $6 || (g % $3) || '.example/p/' || g
                FROM generate_series($1::bigint, $2::bigint) g
                RETURNING id, url),
            v AS (INSERT INTO job_visit (job_id, url_id, level) SELECT $4, id, 2 FROM ins)
            INSERT INTO job_pending (job_id, url_id, origin_id, host, rank)
            SELECT $4, id, $5, split_part(url, '/p/', 1),
                   harvester_rank('bfs', 2, 0, nextval('job_pending_seq'))
            FROM ins""", a, b, hosts, job_id, origin, prefix)
    await conn.execute("ANALYZE url; ANALYZE job_visit; ANALYZE job_pending")


async def timed(conn: asyncpg.Connection, calls: int,
                op: Callable[[asyncpg.Connection], Awaitable[Any]]) -> list[float]:
    """ms per call of ``op``, each in a transaction rolled back."""
    out = []
    for _ in range(calls):
        tr = conn.transaction()
        await tr.start()
        try:
            t0 = time.perf_counter()
            await op(conn)
            out.append((time.perf_counter() - t0) * 1000)
        finally:
            await tr.rollback()
    return out


async def measure(dsn: str, sizes: list[int], hosts: int, calls: int) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(dsn)
    rows: list[dict[str, Any]] = []
    try:
        async with conn.transaction():
            job_id, (origin,) = await jobs.create_job(
                conn, ["http://h0.example/"], 5, False,
                spec=stored_spec(5, False, False, Scope(), None))
        settings = Settings()
        have = 0
        rng = random.Random(1)
        for size in sizes:
            t0 = time.perf_counter()
            await grow(conn, job_id, origin, have, size, hosts)
            have = size
            grown_s = time.perf_counter() - t0
            ids = [r["url_id"] for r in await conn.fetch(
                "SELECT url_id FROM job_pending WHERE job_id = $1 "
                "AND url_id > (SELECT max(url_id) - $2 FROM job_pending WHERE job_id = $1)",
                job_id, min(size, 100_000))]
            frontier = DueFrontier(settings)

            async def claim(c: asyncpg.Connection, f: DueFrontier = frontier) -> Any:
                got = await f.claim_planned(c, 1000, cache_max_age=86400.0,
                                            known_traps={job_id})
                assert got, "the claim found nothing"
                return got

            keys = [(job_id, u) for u in rng.sample(ids, 1000)]
            later = datetime.now(UTC) + timedelta(seconds=30)

            async def defer(c: asyncpg.Connection, f: DueFrontier = frontier,
                            k: list[tuple[int, int]] = keys, at: datetime = later) -> None:
                await f.defer(c, dict.fromkeys(k, at))

            async def unclaim(c: asyncpg.Connection, f: DueFrontier = frontier,
                              k: list[tuple[int, int]] = keys) -> None:
                await c.execute("UPDATE job_pending SET published_on = now() "
                                "WHERE job_id = $1 AND url_id = ANY($2::bigint[])",
                                job_id, [u for _, u in k])
                await f.unclaim(c, k)

            async def plan(c: asyncpg.Connection, some: list[int] = ids) -> None:
                got = await visits.plan(c, [(job_id, u) for u in rng.sample(some, 100)], 86400.0)
                assert len(got) == 100

            async def stale(c: asyncpg.Connection, f: DueFrontier = frontier) -> None:
                await f.requeue_stale(c, 300.0, 1000)

            row: dict[str, Any] = {"pending": size, "grow_s": round(grown_s, 1)}
            for name, op in (("claim 1,000 (planned)", claim), ("defer 1,000", defer),
                             ("unclaim 1,000", unclaim), ("plan 100", plan),
                             ("requeue_stale", stale)):
                await timed(conn, 2, op)  # warm the cache and the prepared statements
                ms = await timed(conn, calls, op)
                row[name] = (statistics.median(ms), min(ms), max(ms))
            rows.append(row)
            print(render(rows), flush=True)
    finally:
        await conn.close()
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    names = [k for k in rows[0] if k not in ("pending", "grow_s")]
    out = ["| pending visits | " + " | ".join(f"{n}, ms" for n in names) + " |",
           "|---:|" + "---:|" * len(names)]
    for r in rows:
        out.append(f"| {r['pending']:,} | " + " | ".join(
            f"{r[n][0]:.2f} ({r[n][1]:.2f}–{r[n][2]:.2f})" for n in names) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    a = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    a.add_argument("--sizes", default="10000,1000000,10000000")
    a.add_argument("--hosts", type=int, default=1000)
    a.add_argument("--calls", type=int, default=15)
    a.add_argument("--data-dir", type=Path, default=None)
    args = a.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    rows = on_embedded(args.data_dir, lambda dsn: measure(dsn, sizes, args.hosts, args.calls))
    print("\n" + render(rows))
    return 0


def on_embedded(data_dir: Path | None,
                run: Callable[[str], Awaitable[list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """``run(dsn)`` on a fresh embedded PostgreSQL (under ``data_dir``; sized from the machine,
    as ``harvester up`` runs it, fsync off) migrated to the head; what it returns."""
    with tempfile.TemporaryDirectory(dir=data_dir) as tmp, \
            EmbeddedPostgres(Path(tmp) / "pg", fsync=False, sized=True) as pg:
        migrate.upgrade(pg.dsn_for("postgres"))
        return asyncio.run(run(pg.dsn_for("postgres")))


if __name__ == "__main__":
    raise SystemExit(main())
