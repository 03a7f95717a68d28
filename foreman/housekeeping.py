"""The foreman's housekeeping (issue 16), every ``housekeeping_interval`` under an advisory
lock (one foreman of the cluster at a time): purge deleted jobs, and completed jobs older than
``job_retention``, with all their rows; and free held visits of running jobs (the safety net of
``Frontier.hold``)."""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from shared import bus, metrics
from shared.config import Settings
from shared.db import jobs
from shared.db.pool import RETRYABLE

log = logging.getLogger(__name__)

HOUSEKEEPING_LOCK = 0x4A52_484B  # pg advisory lock: one housekeeper in the cluster at a time
PURGE_JOBS = 10  # jobs purged a round at most
PURGE_BATCH = 5000  # rows deleted a transaction


async def housekeeping(settings: Settings, pool: asyncpg.Pool, stop: asyncio.Event) -> None:
    """Run ``housekeep_once`` every ``housekeeping_interval`` until ``stop``."""
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), settings.housekeeping_interval)
        except TimeoutError:
            pass
        if stop.is_set():
            break
        try:
            await housekeep_once(settings, pool)
        except (*RETRYABLE, *bus.TRANSIENT, asyncpg.PostgresError) as e:
            log.warning("housekeeping: %s", e)


async def housekeep_once(settings: Settings, pool: asyncpg.Pool) -> tuple[int, int] | None:
    """One round: (jobs purged, visits unheld), or None when another foreman's housekeeping
    holds the lock. The lock is a session lock, so the purge's many short transactions all
    run under it."""
    async with pool.acquire() as conn:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", HOUSEKEEPING_LOCK):
            return None
        try:
            unheld = await jobs.unhold_running(conn)
            if unheld:
                log.warning("housekeeping: %d held visits of running jobs freed", unheld)
            purged = await purge_once(settings, conn)
            await _gauges(conn)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", HOUSEKEEPING_LOCK)
    return purged, unheld


async def _gauges(conn: asyncpg.Connection) -> None:
    """JOBS{state} and PENDING_VISITS, set by the foreman holding the housekeeping lock. The
    foremen take turns at that try-lock, and each keeps the last values it set, so with 2+
    foremen aggregate them with ``max()``, not ``sum()`` (which would count a job twice)."""
    counts, pending = await jobs.job_gauges(conn)
    for state, n in counts.items():
        metrics.JOBS.labels(state).set(n)
    metrics.PENDING_VISITS.set(pending)


async def purge_once(settings: Settings, conn: asyncpg.Connection,
                     batch: int = PURGE_BATCH) -> int:
    """Purge jobs (deleted, or completed more than ``job_retention`` ago). First every range
    of job ids (``jobs.JOB_RANGE``) whose jobs are all purgeable, by dropping its partitions;
    then up to ``PURGE_JOBS`` jobs one by one (a job purged before its range's neighbours):
    each table's rows in batches of ``batch``, a transaction each, the job row last. Returns
    how many jobs went. A purge cut short resumes next round (the job row is still there).
    The partitions of the next ranges are made ahead first."""
    try:
        await jobs.make_partitions_ahead(conn, bounded=True)
    except asyncpg.LockNotAvailableError:  # the crawl's writers held url or job: next round
        log.info("housekeeping: the next partitions not made this round (busy)")
    await jobs.collect_gone_pages(conn)  # a drop cut short before its last step
    for r in await jobs.drop_finished_pending(conn):
        log.info("jobs %d-%d finished: their job_pending partition dropped",
                 r * jobs.JOB_RANGE, (r + 1) * jobs.JOB_RANGE - 1)
    dropped, busy = 0, []
    for r in await jobs.purgeable_ranges(conn, settings.job_retention):
        went = await jobs.drop_job_range(conn, r, settings.job_retention)
        if went is None:
            log.info("jobs %d-%d: partitions not dropped this round (busy)",
                     r * jobs.JOB_RANGE, (r + 1) * jobs.JOB_RANGE - 1)
            busy.append(r)  # not purged row by row meanwhile: its drop comes
        else:
            log.info("jobs %d-%d purged: %d jobs, partitions dropped",
                     r * jobs.JOB_RANGE, (r + 1) * jobs.JOB_RANGE - 1, went)
            dropped += went
    async with conn.transaction():
        ids = await jobs.purge_candidates(conn, settings.job_retention, PURGE_JOBS, skip=busy)
    for job_id in ids:
        log.info("job %d purged (%d rows)", job_id, await jobs.purge_job(conn, job_id, batch))
    return dropped + len(ids)
