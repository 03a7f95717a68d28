"""The task outbox and its watchdog: tasks committed queued by ``POST /tasks`` (or by a task's
follow-ups, or due again after ``RetryLater``) are published to their kind's task queue
(``bus.task_subject``) by the foremen's task feeders; tasks whose message was lost, or whose
worker died with its deliveries used up, are unpublished by the watchdog, to be published
again. A task runs at least once (``worker.taskrun``)."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

import asyncpg
from nats.js import JetStreamContext

from shared import bus
from shared.config import Settings
from shared.db import tasks, workers
from shared.db.pool import RETRYABLE

log = logging.getLogger(__name__)

FEED_BATCH = 1000  # tasks claimed per feeder transaction
IDLE_MAX = 0.2  # seconds: the longest wait of an idle task feeder (a new task's extra latency)
WATCH_BATCH = 1000  # tasks unpublished per watchdog round


async def feed_tasks(settings: Settings, pool: asyncpg.Pool, js: JetStreamContext,
                     limit: int = FEED_BATCH) -> int:
    """Publish up to ``limit`` due, unpublished queued tasks to their kinds' queues; returns
    how many were stored. The rows are marked in a transaction that commits only after
    JetStream stored the messages; those not stored are unmarked, so they are tried again."""
    async with pool.acquire() as conn, conn.transaction():
        claimed = await tasks.claim_unpublished(conn, limit)
        if not claimed:
            return 0
        by_kind: dict[str, list[int]] = defaultdict(list)
        for id, kind in claimed:
            by_kind[kind].append(id)
        unsent: list[int] = []
        for kind, ids in by_kind.items():
            unsent += await bus.publish_tasks(js, bus.task_subject(settings, kind), ids)
        if unsent:
            await tasks.unclaim(conn, unsent)
        return len(claimed) - len(unsent)


async def task_feeder(settings: Settings, pool: asyncpg.Pool, js: JetStreamContext,
                      stop: asyncio.Event) -> None:
    """``feed_tasks`` until ``stop``: at once again while there were tasks to publish; else
    after ``feedInterval``, doubling while there are none up to ``IDLE_MAX``, so a cluster
    without tasks (most crawls) pays a few cheap queries a second, not one per
    ``feedInterval``."""
    idle = settings.feed_interval
    while not stop.is_set():
        try:
            sent = await feed_tasks(settings, pool, js)
        except (*RETRYABLE, *bus.TRANSIENT, asyncpg.PostgresError) as e:
            log.warning("task feeder: %s; retrying", e)
            sent = 0
        if sent:
            idle = settings.feed_interval
        else:
            await _sleep_unless(stop, idle)
            idle = min(idle * 2, max(IDLE_MAX, settings.feed_interval))


async def task_watch_once(settings: Settings, pool: asyncpg.Pool,
                          limit: int = WATCH_BATCH) -> int:
    """One watchdog round over the tasks of the kinds a live worker serves (the others wait
    for one, as visits do): unpublish those queued and published more than ``staleAfter`` ago
    (a lost message), or running and started more than ``taskTimeout + staleAfter`` ago (their
    worker died and the deliveries ran out). How many; the feeder publishes them again."""
    async with pool.acquire() as conn, conn.transaction():
        served = await workers.live_kinds(conn, settings.worker_timeout)
        if not served:
            return 0
        n = await tasks.requeue_stale(conn, settings.stale_after, settings.task_timeout,
                                      served, limit)
    if n:
        log.warning("task watchdog: %d stale tasks published again", n)
    return n


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
