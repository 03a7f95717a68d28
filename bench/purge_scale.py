"""Purging a finished job (issue 18): its rows deleted in batches, as housekeeping purges a job
purged before its range's neighbours, against its range's partitions dropped
(``jobs.drop_job_range``), on a job of 100 thousand and 1 million pages.

    python -m bench.purge_scale [--sizes 100000,1000000]

A fresh embedded PostgreSQL (sized from the machine, as ``harvester up`` runs it, fsync off).
For each size, twice: a job with that many visits, pending visits and pages (``grow``), then
deleted. Once it is purged row by row (``jobs.purge_job``: 5,000 rows a transaction, as
``foreman.housekeeping.purge_once``), once its range is dropped. Time
and WAL written by each (the WAL is what a replica replays and a backup keeps)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import asyncpg

from bench.frontier_scale import grow, on_embedded
from foreman.housekeeping import PURGE_BATCH
from shared.db import jobs
from shared.jobspec import stored_spec
from shared.scope import Scope


async def deleted_job(conn: asyncpg.Connection, size: int) -> int:
    """A deleted job with ``size`` visits, pending visits and pages, the last of its range:
    the next id is the next range's, so the range may be dropped."""
    async with conn.transaction():
        job_id, (origin,) = await jobs.create_job(
            conn, [f"http://h0.example/{size}"], 5, False,
            spec=stored_spec(5, False, False, Scope(), None))
    await grow(conn, job_id, origin, 0, size, 100, prefix=f"j{job_id}")
    await conn.execute("INSERT INTO job_page (job_id, url_id, version) "
                       "SELECT job_id, url_id, 1 FROM job_visit WHERE job_id = $1", job_id)
    # Marked deleted as DELETE /job does (grow's rows bypass the job_url counters, which
    # jobs.mark_deleted would settle).
    await conn.execute("UPDATE job SET deleted_on = now() WHERE id = $1", job_id)
    r = job_id // jobs.JOB_RANGE
    await conn.execute("SELECT setval('job_id_seq', $1, false)", (r + 1) * jobs.JOB_RANGE)
    await jobs.make_partitions_ahead(conn)
    return job_id


async def wal(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn"))


async def by_rows(conn: asyncpg.Connection, job_id: int) -> int:
    return await jobs.purge_job(conn, job_id, PURGE_BATCH)


async def by_range(conn: asyncpg.Connection, job_id: int) -> int:
    went = await jobs.drop_job_range(conn, job_id // jobs.JOB_RANGE, 0.0)
    assert went == 1, f"the range of job {job_id} was not dropped ({went})"
    return went


async def measure(dsn: str, sizes: list[int]) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(dsn)
    out: list[dict[str, Any]] = []
    try:
        for size in sizes:
            row: dict[str, Any] = {"pages": size}
            for name, purge in (("rows", by_rows), ("partitions", by_range)):
                job_id = await deleted_job(conn, size)
                w0, t0 = await wal(conn), time.perf_counter()
                await purge(conn, job_id)
                row[name] = (time.perf_counter() - t0, (await wal(conn)) - w0)
                assert not await conn.fetchval(
                    "SELECT count(*) FROM job_visit WHERE job_id = $1", job_id)
            out.append(row)
            print(render(out), flush=True)
    finally:
        await conn.close()
    return out


def render(rows: list[dict[str, Any]]) -> str:
    out = [("| pages of the job | by rows: s | by rows: WAL MB | by partitions: s "
            "| by partitions: WAL MB |"), "|---:|---:|---:|---:|---:|"]
    for r in rows:
        (rs, rw), (ps, pw) = r["rows"], r["partitions"]
        out.append(f"| {r['pages']:,} | {rs:.2f} | {rw / 1e6:.1f} | {ps:.3f} | {pw / 1e6:.2f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    a = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    a.add_argument("--sizes", default="100000,1000000")
    a.add_argument("--data-dir", type=Path, default=None)
    args = a.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    rows = on_embedded(args.data_dir, lambda dsn: measure(dsn, sizes))
    print("\n" + render(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
