"""Completion webhooks (issue 16): the foreman POSTs a signed JSON body to the URL a job named
once the job completes (``shared/db/webhooks.py``), and retries with backoff.

The body is ``{"event": "job.completed", "job": id, "state": "completed|cancelled", "pages":
{...}}``; ``X-Harvester-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`` signs
it, and ``X-Harvester-Delivery`` (the job id) lets a receiver drop a duplicate (delivery is at
least once). The secret is never logged."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
import time
from collections import Counter
from typing import Any

import aiohttp
import asyncpg

from shared import bus, metrics
from shared.config import Settings
from shared.db import jobs, webhooks
from shared.db.pool import RETRYABLE
from shared.netguard import NetGuard, refused

log = logging.getLogger(__name__)

CLAIM = 20  # deliveries claimed at once
INTERVAL = 1.0  # seconds between looks for due deliveries


def sign(secret: str, body: bytes, t: int) -> str:
    """The ``X-Harvester-Signature`` header of ``body`` sent at unix time ``t``."""
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def backoff(settings: Settings, attempts: int) -> float:
    """Seconds until the next try after ``attempts`` failed ones: 2**attempts, capped at
    ``webhook_retry_cap``, ±20 % jitter."""
    return min(settings.webhook_retry_cap, 2.0 ** attempts) * random.uniform(0.8, 1.2)


async def deliver(settings: Settings, pool: asyncpg.Pool, stop: asyncio.Event) -> None:
    """Send due deliveries every ``INTERVAL`` until ``stop``."""
    timeout = aiohttp.ClientTimeout(total=settings.webhook_timeout)
    # through the SSRF guard: a job's webhook URL never reaches an address it refuses
    async with aiohttp.ClientSession(timeout=timeout, connector=guarded_connector(settings),
                                     headers={"User-Agent": settings.user_agent}) as session:
        while not stop.is_set():
            try:
                await deliver_once(settings, pool, session)
            except (*RETRYABLE, *bus.TRANSIENT, asyncpg.PostgresError) as e:
                log.warning("webhooks: %s", e)
            try:
                await asyncio.wait_for(stop.wait(), INTERVAL)
            except TimeoutError:
                pass


def guarded_connector(settings: Settings) -> aiohttp.TCPConnector:
    return NetGuard.from_settings(settings).connector()


async def deliver_once(settings: Settings, pool: asyncpg.Pool,
                       session: aiohttp.ClientSession) -> int:
    """Claim due deliveries (a lease of the request timeout + 20 s) and send them; returns
    how many were claimed."""
    async with pool.acquire() as conn, conn.transaction():
        due = await webhooks.claim_due(conn, CLAIM, settings.webhook_timeout + 20,
                                       settings.webhook_max_attempts)
    if due:
        await asyncio.gather(*(_send(settings, pool, session, d) for d in due))
    return len(due)


async def _pages(pool: asyncpg.Pool, job_id: int) -> dict[str, int]:
    async with pool.acquire() as conn:
        status = await jobs.job_status(conn, job_id)
    pages: Counter[str] = Counter()
    for u in status.urls if status else []:
        pages.update(processed=u.processed, fetched=u.fetched, cached=u.cached,
                     failed=u.failed, blocked=u.blocked)
    return {k: pages[k] for k in ("processed", "fetched", "cached", "failed", "blocked")}


async def _send(settings: Settings, pool: asyncpg.Pool, session: aiohttp.ClientSession,
                d: webhooks.Delivery) -> None:
    payload: dict[str, Any] = {"event": "job.completed", "job": d.job_id, "state": d.state,
                               "pages": await _pages(pool, d.job_id)}
    body = json.dumps(payload, separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json", "X-Harvester-Delivery": str(d.job_id),
               "X-Harvester-Signature": sign(settings.webhook_secret, body, int(time.time()))}
    status: int | None = None
    reason: str | None = None  # the SSRF guard's refusal
    try:
        async with session.post(d.url, data=body, headers=headers, allow_redirects=False) as r:
            status = r.status
            await r.read()
        error = "" if 200 <= status < 300 else f"HTTP {status}"
    except (aiohttp.ClientError, TimeoutError) as e:
        reason = refused(e)
        error = reason or f"{type(e).__name__}: {e}"
    async with pool.acquire() as conn:
        if not error:
            assert status is not None
            await webhooks.mark_sent(conn, d.job_id, status)
            metrics.WEBHOOKS.labels("sent").inc()
            log.info("webhook job=%d sent to %s (attempt %d, %d)", d.job_id, d.url, d.attempts,
                     status, extra={"job": d.job_id, "url": d.url})
            return
        # the guard would refuse the address again: retries end
        retry_in = backoff(settings, d.attempts) if reason is None else 0.0
        await webhooks.mark_failed(conn, d.job_id, status, error, retry_in,
                                   None if reason is None else settings.webhook_max_attempts)
    metrics.WEBHOOKS.labels("failed").inc()
    if reason is not None:
        metrics.count_blocked([reason])
    last = reason is not None or d.attempts >= settings.webhook_max_attempts
    log.warning("webhook job=%d to %s failed (attempt %d: %s); %s", d.job_id, d.url, d.attempts,
                error, "given up" if last else f"next try in {retry_in:.1f}s",
                extra={"job": d.job_id, "url": d.url})
