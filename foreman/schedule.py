"""The foreman: decides for each queued visit whether to answer it from the store (cached, or a
type never fetched, or a page to expand again) or to forward it to the workers."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from contextlib import AsyncExitStack

import asyncpg
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from shared import bus
from shared.bus import Settle, Verdict
from shared.config import Settings
from shared.db import visits
from shared.db.pool import RETRYABLE, open_pool
from shared.messages import BadMessage, VisitMessage

log = logging.getLogger(__name__)

LOOPS = 4  # concurrent pull loops: one waits on the database while another publishes


class Foreman:
    def __init__(self, settings: Settings, pool: asyncpg.Pool, js: JetStreamContext) -> None:
        self.settings = settings
        self.pool = pool
        self.js = js

    async def handle(self, msgs: list[Msg]) -> None:
        """Process one batch; every message is settled exactly once before this returns."""
        by_key: dict[tuple[int, int], list[Msg]] = defaultdict(list)
        for m in msgs:
            try:
                by_key[VisitMessage.decode(m.data).key].append(m)
            except BadMessage as e:
                log.error("%s", e)
                await bus.settle(m, Settle(Verdict.TERM))
        if not by_key:
            return
        try:
            outcome = await self._process(list(by_key))
        except (*RETRYABLE, *bus.TRANSIENT) as e:
            log.warning("batch of %d visits not processed (%s); will be redelivered", len(by_key), e)
            outcome = {k: Settle(Verdict.RETRY, bus.retry_delay(by_key[k][0])) for k in by_key}
        for k, ms in by_key.items():
            for m in ms:
                await bus.settle(m, outcome[k])

    async def _process(self, keys: list[tuple[int, int]]) -> dict[tuple[int, int], Settle]:
        s = self.settings
        async with self.pool.acquire() as conn:
            planned = {(p.job_id, p.url_id): p for p in await visits.plan(conn, keys, s.cache_max_age)}
        stale = [k for k in keys if k not in planned]
        work = [k for k, p in planned.items() if not p.cached]
        cached = [k for k, p in planned.items() if p.cached]
        await bus.publish_visits(self.js, s.work_topic, work)
        children: list[tuple[int, int]] = []
        if cached:
            children += await complete_from_store(self.pool, cached)
        if stale:
            async with self.pool.acquire() as conn:
                children += await visits.pending_children(conn, stale)
        await bus.publish_visits(self.js, s.url_topic, children)
        log.debug("batch: %d forwarded, %d from store, %d stale, %d children queued",
                  len(work), len(cached), len(stale), len(children))
        return {k: Settle(Verdict.ACK) for k in keys}


async def complete_from_store(pool: asyncpg.Pool, keys: list[tuple[int, int]],
                              attempts: int = 5) -> list[tuple[int, int]]:
    """Complete visits whose page is known: results and children from ``url_link``."""
    for attempt in range(attempts):
        try:
            async with pool.acquire() as conn, conn.transaction():
                locked = await visits.lock_pending(conn, keys)
                return await visits.complete(conn, locked, {})
        except RETRYABLE:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.05 * 2 ** attempt)
    return []


async def run(settings: Settings, stop: asyncio.Event) -> None:
    """Serve the URL queue until ``stop`` is set; then finish the batches in hand and exit."""
    async with AsyncExitStack() as stack:
        pool = await stack.enter_async_context(
            open_pool(settings.database_url, min_size=1, max_size=LOOPS + 2))
        nc = await stack.enter_async_context(bus.connect(settings.nats_url, "harvester-foreman"))
        js = nc.jetstream()
        await bus.ensure_streams(js, settings)
        foreman = Foreman(settings, pool, js)
        subs = [await bus.pull_subscription(js, settings, settings.url_topic, bus.FOREMAN_CONSUMER)
                for _ in range(LOOPS)]
        log.info("foreman ready: %s -> %s", settings.url_topic, settings.work_topic)
        loops = [asyncio.create_task(_loop(foreman, sub, stop)) for sub in subs]
        await stop.wait()
        log.info("foreman stopping: finishing batches in hand")
        done, pending = await asyncio.wait(loops, timeout=settings.shutdown_timeout)
        for t in pending:
            t.cancel()  # their messages are not acked: they come back
        await asyncio.gather(*loops, return_exceptions=True)


async def _loop(foreman: Foreman, sub: JetStreamContext.PullSubscription, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            msgs = await bus.pull(sub, foreman.settings.batch_size, 1.0)
        except bus.TRANSIENT as e:
            log.warning("pull failed (%s); retrying", e)
            await asyncio.sleep(0.5)
            continue
        if msgs:
            await foreman.handle(msgs)
