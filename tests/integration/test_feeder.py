"""The feeder (foreman/schedule.py ``feeder``) on a real PostgreSQL and NATS: what it keeps
published and unfinished stays within its feed-ahead budget however big the backlog, and the
backlog is still all served; with every host at its cap it does not poll in a tight loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager

import asyncpg
import nats
from nats.js import JetStreamContext

from foreman import schedule
from foreman.schedule import feeder
from shared import bus
from shared.config import Settings
from shared.db.frontier import DueFrontier
from shared.db.pool import open_pool
from tests.integration.test_frontier_fair import new_job
from tests.polling import until


class Counting(DueFrontier):
    """The real frontier, counting its claims."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.claims = 0

    async def claim(self, conn: asyncpg.Connection, limit: int) -> list[tuple[int, int]]:
        self.claims += 1
        return await super().claim(conn, limit)


@asynccontextmanager
async def running_feeder(settings: Settings, frontier: DueFrontier
                         ) -> AsyncIterator[tuple[asyncpg.Pool, nats.js.JetStreamContext]]:
    stop = asyncio.Event()
    async with open_pool(settings.database_url, min_size=1, max_size=4) as pool, \
            bus.connect(settings.nats_url, "test-feeder") as nc:
        js = nc.jetstream()
        await bus.ensure_streams(js, settings)
        task = asyncio.create_task(feeder(settings, pool, js, frontier, stop))
        try:
            yield pool, js
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)


async def finish(db: asyncpg.Connection, keys: Sequence[tuple[int, int]]) -> None:
    """What a commit does to a processed visit's pending row."""
    await db.execute("""
        DELETE FROM job_pending p USING unnest($1::bigint[], $2::bigint[]) u(job_id, url_id)
        WHERE p.job_id = u.job_id AND p.url_id = u.url_id""",
        [k[0] for k in keys], [k[1] for k in keys])


async def serve_all(db: asyncpg.Connection, sub: JetStreamContext.PullSubscription, n: int,
                    each: Callable[[], Awaitable[None]] | None = None) -> None:
    """Serve ``n`` visits as workers would, 50 at a time (``each`` awaited before each pull)."""
    done = 0
    while done < n:
        if each is not None:
            await each()
        msgs = await bus.pull(sub, 50, 1.0)
        keys = list(await bus.group_visits(msgs))
        await finish(db, keys)  # committed before the ack, as a worker does
        for m in msgs:
            await m.ack()
        done += len(keys)


async def test_the_published_and_unfinished_visits_stay_within_the_budget(
        settings: Settings, db: asyncpg.Connection) -> None:
    # 3,000 visits on one uncapped host (the cheap one-pair claim), a URL queue that holds
    # them all: the feeder keeps at most the budget's floor out (feed-ahead 10 ms of a rate
    # far below 25,600/s), and as visits finish it publishes more, until all are done.
    s = settings.model_copy(update={"feed_ahead": 0.01})
    job, ids = await new_job(db, [f"http://one.example/{i}" for i in range(3000)])
    out: list[int] = []
    async with running_feeder(s, DueFrontier(s)) as (_, js):
        sub = await bus.pull_subscription(js, s, s.url_topic, "test-consumer")

        async def sample() -> None:
            out.append(await db.fetchval(
                "SELECT count(*) FROM job_pending WHERE published_on IS NOT NULL"))
        await serve_all(db, sub, len(ids), sample)
    assert await db.fetchval("SELECT count(*) FROM job_pending WHERE job_id = $1", job) == 0
    assert max(out) <= schedule.FEED_FLOOR, max(out)
    assert max(out) >= schedule.FEED_FLOOR // 2  # the floor is used: the workers are fed


async def test_with_every_host_at_its_cap_the_feeder_does_not_spin(
        settings: Settings, db: asyncpg.Connection) -> None:
    # 20 hosts capped at 2, 5 visits each, nobody finishing any: once 40 are out, every claim
    # could only come back empty, and nothing frees room. The feeder still looks now and then
    # (a new job, a row coming due), but not in a tight loop.
    s = settings.model_copy(update={"host_delay": 0.5, "host_concurrency": 2})
    job, _ = await new_job(db, [f"http://h{i}.example/{j}" for i in range(20) for j in range(5)])
    frontier = Counting(s)
    async with running_feeder(s, frontier) as (_, js):
        await until(lambda: frontier.claims > 0, what="the first claim")

        async def at_cap() -> bool:
            return bool(await db.fetchval(
                "SELECT count(*) = 40 FROM job_pending WHERE published_on IS NOT NULL"))
        await until(at_cap, what="every host at its cap")
        claims, t0 = frontier.claims, time.monotonic()
        await asyncio.sleep(1.0)  # the interval claims are counted over
        claims, elapsed = frontier.claims - claims, time.monotonic() - t0
        assert claims <= elapsed / schedule.FEED_MAX_WAIT + 2, claims
        # nothing is stuck: as visits finish, the rest go out, until all are done
        sub = await bus.pull_subscription(js, s, s.url_topic, "test-consumer")
        await serve_all(db, sub, 100)
    assert await db.fetchval("SELECT count(*) FROM job_pending WHERE job_id = $1", job) == 0
