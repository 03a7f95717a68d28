"""The frontier: which pending visits (``job_pending`` rows) go on the URL queue, and when.

A ``job_pending`` row is published (``published_on`` set) when a feeder claims it, and put back
(``published_on`` NULL) when its publish failed, when a worker defers it to a later ``due``, or
when the watchdog finds it published long ago and still pending. ``Frontier`` is that interface:
the feeder (``foreman/feeder.py`` ``feed``), the watchdog (``foreman/schedule.py``) and the worker
(deferrals, attempts) each use one instance passed down from their service's ``run()``, so an
ordering or a priority is decided here, in one place. ``DueFrontier`` is the one implementation:
oldest ``due`` first.

Adding rows is not the frontier's: children become pending inside the completion transaction
(``visits.complete``), and so does deleting a processed row. Every method takes the caller's
connection, so the caller owns the transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Protocol

import asyncpg

from shared.db.visits import Key


class Frontier(Protocol):
    async def claim(self, conn: asyncpg.Connection, limit: int,
                    job_id: int | None = None) -> list[Key]:
        """Mark up to ``limit`` unpublished visits that are due as published and return them."""

    async def unclaim(self, conn: asyncpg.Connection, keys: Sequence[Key]) -> None:
        """Mark claimed visits as unpublished again (their publish failed)."""

    async def defer(self, conn: asyncpg.Connection, due: Mapping[Key, datetime]) -> None:
        """Put visits back, unpublished, not to be claimed before ``due``."""

    async def hold(self, conn: asyncpg.Connection, keys: Sequence[Key]) -> None:
        """Put back, unpublished, visits of a paused job (held while it stays paused)."""

    async def count_attempt(self, conn: asyncpg.Connection, key: Key) -> None:
        """Count a failed fetch attempt on a published visit, which stays published."""

    async def requeue_stale(self, conn: asyncpg.Connection, stale_after: float,
                            max_requeues: int, limit: int = 1000) -> int:
        """Put back visits published ``stale_after`` seconds ago or more and requeued fewer
        than ``max_requeues`` times, at most ``limit``; returns how many."""

    async def abandoned(self, conn: asyncpg.Connection, stale_after: float, max_requeues: int,
                        limit: int = 500) -> list[tuple[Key, int]]:
        """Visits stale after ``max_requeues`` requeues or more, at most ``limit``:
        (key, requeues)."""

    async def hold_unserved(self, conn: asyncpg.Connection, served: Sequence[str],
                            stale_after: float) -> int:
        """Restart the staleness clock of published visits of jobs whose fetcher kind is not
        in ``served`` (no live worker serves it); returns how many."""


class DueFrontier:
    """Visits in ``due`` order (partial index ``job_pending_due``, without held rows: a paused
    job's visits), rows held by another transaction skipped."""

    async def claim(self, conn: asyncpg.Connection, limit: int,
                    job_id: int | None = None) -> list[Key]:
        """Mark up to ``limit`` unpublished visits as published and return them, oldest first.

        Run it in a transaction and publish the rows before committing: a crash in between
        rolls the marks back, so the rows are published again (a duplicate, which processing
        ignores), never lost. SKIP LOCKED lets several foremen feed at once without publishing
        a row twice. For one job's rows (``job_id``) it waits for a feeder holding some of them
        instead, so that afterwards every row is either published or truly unpublished.
        """
        lock = "FOR UPDATE SKIP LOCKED" if job_id is None else "FOR UPDATE"
        rows = await conn.fetch(f"""
            WITH c AS (
                SELECT job_id, url_id FROM job_pending
                WHERE published_on IS NULL AND NOT held AND due <= now()
                  AND ($2::bigint IS NULL OR job_id = $2)
                ORDER BY due
                LIMIT $1
                {lock})
            UPDATE job_pending p SET published_on = now()
            FROM c WHERE p.job_id = c.job_id AND p.url_id = c.url_id
            RETURNING p.job_id, p.url_id""", limit, job_id)
        return [(r["job_id"], r["url_id"]) for r in rows]

    async def unclaim(self, conn: asyncpg.Connection, keys: Sequence[Key]) -> None:
        """Mark claimed visits unpublished (their publish failed): claimed again soon, due as
        they were."""
        await conn.execute("""
            UPDATE job_pending SET published_on = NULL
            FROM unnest($1::bigint[], $2::bigint[]) AS u(job_id, url_id)
            WHERE job_pending.job_id = u.job_id AND job_pending.url_id = u.url_id""",
            [k[0] for k in keys], [k[1] for k in keys])

    async def defer(self, conn: asyncpg.Connection, due: Mapping[Key, datetime]) -> None:
        """Put visits back in the frontier until ``due`` (the feeder publishes them then)."""
        keys = sorted(due)
        await conn.execute("""
            UPDATE job_pending p SET published_on = NULL, due = d.due
            FROM unnest($1::bigint[], $2::bigint[], $3::timestamptz[]) AS d(job_id, url_id, due)
            WHERE p.job_id = d.job_id AND p.url_id = d.url_id""",
            [k[0] for k in keys], [k[1] for k in keys], [due[k] for k in keys])

    async def hold(self, conn: asyncpg.Connection, keys: Sequence[Key]) -> None:
        """Put back, unpublished, visits of a paused job whose message arrived: held (never
        claimed) while the job is paused. ``held`` follows the job's state as this statement
        sees it, so a resume that committed after the visits were planned leaves them due."""
        await conn.execute("""
            UPDATE job_pending p SET published_on = NULL, held = (j.state = 'paused')
            FROM unnest($1::bigint[], $2::bigint[]) AS u(job_id, url_id), job j
            WHERE p.job_id = u.job_id AND p.url_id = u.url_id AND j.id = p.job_id""",
            [k[0] for k in keys], [k[1] for k in keys])

    async def count_attempt(self, conn: asyncpg.Connection, key: Key) -> None:
        """Count a failed fetch attempt on the visit. Counting here, not in JetStream's delivery
        count, keeps the count across re-publications, deferrals and redeliveries. The retry
        that follows is a fresh claim: ``published_on`` restarts, so the watchdog
        (``requeue_stale``) does not take a visit in the middle of its retries for a lost one
        and publish it again."""
        await conn.execute("""
            UPDATE job_pending SET attempts = attempts + 1, published_on = now()
            WHERE job_id = $1 AND url_id = $2""",
            key[0], key[1])

    async def requeue_stale(self, conn: asyncpg.Connection, stale_after: float,
                            max_requeues: int, limit: int = 1000) -> int:
        """Publish again visits that were published long ago and are still pending (a lost or
        undeliverable message), at most ``limit`` of them, oldest first; returns how many.
        Rows a transaction holds (a commit in progress) are skipped, not waited for."""
        return int((await conn.fetchval("""
            WITH s AS (
                SELECT job_id, url_id FROM job_pending
                WHERE published_on < now() - make_interval(secs => $1) AND requeues < $2
                ORDER BY published_on
                LIMIT $3
                FOR UPDATE SKIP LOCKED
            ), r AS (
                UPDATE job_pending p SET published_on = NULL, requeues = p.requeues + 1,
                                         due = now()
                FROM s WHERE p.job_id = s.job_id AND p.url_id = s.url_id
                RETURNING 1)
            SELECT count(*) FROM r""", float(stale_after), max_requeues, limit)) or 0)

    async def abandoned(self, conn: asyncpg.Connection, stale_after: float, max_requeues: int,
                        limit: int = 500) -> list[tuple[Key, int]]:
        """Visits still pending after every requeue: (key, requeues), to be recorded as
        failed."""
        rows = await conn.fetch("""
            SELECT job_id, url_id, requeues FROM job_pending
            WHERE published_on < now() - make_interval(secs => $1) AND requeues >= $2
            ORDER BY job_id, url_id LIMIT $3""", float(stale_after), max_requeues, limit)
        return [((r["job_id"], r["url_id"]), r["requeues"]) for r in rows]

    async def hold_unserved(self, conn: asyncpg.Connection, served: Sequence[str],
                            stale_after: float) -> int:
        """Restart the staleness clock (``published_on``) of stale published visits of jobs
        whose fetcher kind no live worker serves (not in ``served``), without counting a
        requeue: their messages wait on a queue nobody reads yet, which is not a lost message.
        Re-publishing them would only pile copies on that queue and, after ``max_requeues``
        rounds, fail the visits of a job that is merely waiting for its worker (``/status``
        says so). Once a worker of the kind beats, the clock runs again from the last hold."""
        return int((await conn.fetchval("""
            WITH h AS (
                UPDATE job_pending p SET published_on = now()
                FROM job j
                WHERE j.id = p.job_id AND j.fetcher <> ALL($1::text[])
                  AND p.published_on < now() - make_interval(secs => $2)
                RETURNING 1)
            SELECT count(*) FROM h""", list(served), float(stale_after))) or 0)
