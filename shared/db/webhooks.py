"""Completion webhooks (``job_webhook``, issue 16): which deliveries are due, and their outcome.

A job created with a ``webhook`` URL has a row. Once every job URL of the job is completed
(cancelled or not), the foreman's sender (``foreman/webhooks.py``) claims it with a lease
(``claim_due``: ``attempts`` + 1, not due again before the lease ends), POSTs, and records the
outcome (``mark_sent``, or ``mark_failed`` with the next try). A sender that dies mid-delivery
leaves the row to be claimed again when its lease ends: delivery is at least once.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg


@dataclass(frozen=True, slots=True)
class Delivery:
    job_id: int
    url: str
    attempts: int    # this one included
    state: str       # how the job ended: completed or cancelled


async def claim_due(conn: asyncpg.Connection, limit: int, lease: float,
                    max_attempts: int) -> list[Delivery]:
    """Claim up to ``limit`` due deliveries of completed jobs tried fewer than
    ``max_attempts`` times: each is counted as an attempt and not due again for ``lease``
    seconds. Rows another sender is claiming are skipped."""
    rows = await conn.fetch("""
        WITH c AS (
            SELECT w.job_id FROM job_webhook w
            WHERE w.sent_on IS NULL AND w.next_attempt <= now() AND w.attempts < $3
              AND NOT EXISTS (SELECT FROM job_url u
                              WHERE u.job_id = w.job_id AND u.completed_on IS NULL)
            ORDER BY w.next_attempt LIMIT $1
            FOR UPDATE OF w SKIP LOCKED)
        UPDATE job_webhook w SET attempts = w.attempts + 1,
                                 next_attempt = now() + make_interval(secs => $2)
        FROM c, job j WHERE w.job_id = c.job_id AND j.id = w.job_id
        RETURNING w.job_id, w.url, w.attempts,
                  CASE WHEN j.state = 'cancelled' THEN 'cancelled' ELSE 'completed' END AS state""",
        limit, float(lease), max_attempts)
    return [Delivery(r["job_id"], r["url"], r["attempts"], r["state"]) for r in rows]


async def mark_sent(conn: asyncpg.Connection, job_id: int, status: int) -> None:
    """The delivery was answered with a 2xx ``status``: done."""
    await conn.execute("""
        UPDATE job_webhook SET sent_on = now(), last_status = $2, last_error = NULL
        WHERE job_id = $1""", job_id, status)


async def mark_failed(conn: asyncpg.Connection, job_id: int, status: int | None, error: str,
                      retry_in: float, give_up: int | None = None) -> None:
    """The delivery failed (``status`` None: no answer); try again in ``retry_in`` seconds
    (while ``attempts`` stays below the maximum). ``give_up``: the maximum, ``attempts``
    raised to it so no try follows (a failure no retry mends, as the SSRF guard's refusal)."""
    await conn.execute("""
        UPDATE job_webhook SET last_status = $2, last_error = $3,
                               next_attempt = now() + make_interval(secs => $4),
                               attempts = greatest(attempts, coalesce($5, attempts))
        WHERE job_id = $1""", job_id, status, error[:1000], float(retry_in), give_up)
