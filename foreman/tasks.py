"""The task outbox and its watchdog: tasks committed queued by ``POST /tasks`` (or by a task's
follow-ups, or due again after ``RetryLater``) are published to their kind's task queue
(``bus.task_subject``) by the foremen's task feeders, as their streams have room; tasks whose
message was lost (missing from the stream, not merely waiting in line), or whose worker died
with its deliveries used up, are unpublished by the watchdog, to be published again. A task runs at least once (``worker.taskrun``)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict

import asyncpg
from nats.js import JetStreamContext

from shared import bus
from shared.config import Settings
from shared.db import tasks, workers
from shared.db.pool import RETRYABLE
from shared.service import sleep_unless

log = logging.getLogger(__name__)

FEED_BATCH = 1000  # tasks claimed per feeder transaction
IDLE_MAX = 0.2  # seconds: the longest wait of an idle task feeder (a new task's extra latency)
WATCH_BATCH = 1000  # tasks unpublished per watchdog round
FULL_PAUSE = 1.0  # seconds a kind whose task stream is full is left out of the feeder's claims
TASK_WATCHDOG_LOCK = 0x4A52_5457  # pg advisory lock: one task watchdog in the cluster at a time


async def feed_tasks(settings: Settings, pool: asyncpg.Pool, js: JetStreamContext,
                     limit: int = FEED_BATCH, full: set[str] | None = None) -> int:
    """Publish up to ``limit`` due, unpublished queued tasks to their kinds' queues, never
    beyond ``workQueueLimit`` messages in a kind's task stream (as the URL feeder keeps to
    ``urlQueueLimit``); returns how many were stored. The rows are marked in a transaction
    that commits only after JetStream stored the messages; those not stored (or without room)
    are unmarked, so they are tried again. ``full``: kinds not to claim for (their stream had
    no room); the kinds found full now are added to it."""
    async with pool.acquire() as conn, conn.transaction():
        claimed = await tasks.claim_unpublished(conn, limit, sorted(full or ()))
        if not claimed:
            return 0
        by_kind: dict[str, list[int]] = defaultdict(list)
        for id, kind in claimed:
            by_kind[kind].append(id)
        unsent: list[int] = []
        for kind, ids in by_kind.items():
            subject = bus.task_subject(settings, kind)
            room = max(0, settings.work_queue_limit - await bus.stream_depth(js, subject))
            if room < len(ids) and full is not None:
                full.add(kind)
            unsent += ids[room:]
            if room:
                unsent += await bus.publish_tasks(js, subject, ids[:room])
        if unsent:
            await tasks.unclaim(conn, unsent)
        return len(claimed) - len(unsent)


async def task_feeder(settings: Settings, pool: asyncpg.Pool, js: JetStreamContext,
                      stop: asyncio.Event) -> None:
    """``feed_tasks`` until ``stop``: at once again while there were tasks to publish; else
    after ``feedInterval``, doubling while there are none up to ``IDLE_MAX``, so a cluster
    without tasks (most crawls) pays a few cheap queries a second, not one per
    ``feedInterval``. A kind whose task stream is full is left out of the claims for
    ``FULL_PAUSE`` (its depth is read again then), so a backlog is not claimed and unclaimed
    over and over."""
    idle = settings.feed_interval
    full: set[str] = set()
    full_since = 0.0
    while not stop.is_set():
        if full and time.monotonic() - full_since > max(FULL_PAUSE, settings.feed_interval):
            full.clear()
        before = len(full)
        try:
            sent = await feed_tasks(settings, pool, js, full=full)
        except (*RETRYABLE, *bus.TRANSIENT, asyncpg.PostgresError) as e:
            log.warning("task feeder: %s; retrying", e)
            sent = 0
        if len(full) > before:
            full_since = time.monotonic()
        if sent:
            idle = settings.feed_interval
        else:
            await sleep_unless(stop, idle)
            idle = min(idle * 2, max(IDLE_MAX, settings.feed_interval))


async def task_watch_once(settings: Settings, pool: asyncpg.Pool,
                          js: JetStreamContext | None = None, limit: int = WATCH_BATCH) -> int:
    """One watchdog round over the tasks of the kinds a live worker serves (the others wait
    for one, as visits do): unpublish those whose message is really gone — queued, published
    more than ``staleAfter`` ago and missing from their kind's task stream (its depth, read
    through ``js``, is fewer than the tasks that need a message: one waiting in line is not
    published again) — or running and started more than ``taskTimeout + staleAfter`` ago
    (their worker died and the deliveries ran out). How many; the feeder publishes them
    again. Without ``js`` every stale queued task is taken for lost. Only one foreman's task
    watchdog acts at a time (0 while another does)."""
    async with pool.acquire() as conn:
        served = await workers.live_kinds(conn, settings.worker_timeout)
    if not served:
        return 0
    depths = None
    if js is not None:
        depths = {k: await bus.stream_depth(js, bus.task_subject(settings, k)) for k in served}
    async with pool.acquire() as conn, conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", TASK_WATCHDOG_LOCK):
            return 0  # another foreman's task watchdog is at work
        n = await tasks.requeue_stale(conn, settings.stale_after, settings.task_timeout,
                                      served, limit, depths)
    if n:
        log.warning("task watchdog: %d stale tasks published again", n)
    return n
