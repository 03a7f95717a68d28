"""The feeder (foreman/schedule.py ``feeder``, foreman/feeder.py ``feed``) on a real PostgreSQL
and NATS: what it keeps published and unfinished stays within its feed-ahead budget however big
the backlog, and the backlog is still all served; with every host at its cap it does not poll
in a tight loop. Its claim plans each visit as ``visits.plan`` does, leaves out the kinds whose
work queue is full, and a visit to fetch goes straight to its kind's work queue, any other to
the URL queue; a failed publish leaves its rows unpublished."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Container, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import nats
import nats.errors
import pytest
from nats.js import JetStreamContext

from foreman import schedule
from foreman.feeder import feed
from foreman.rooms import KindRooms
from foreman.route import JobTraps, route
from foreman.schedule import feeder
from shared import bus
from shared.config import Settings
from shared.db import visits
from shared.db.frontier import DueFrontier
from shared.db.pool import open_pool
from shared.db.visits import Key, Planned
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

    async def claim_planned(self, conn: asyncpg.Connection, limit: int, *,
                            cache_max_age: float, known_traps: Container[int] = (),
                            full_kinds: Collection[str] = (), lead: float = 0.0,
                            ) -> list[Planned]:
        self.claims += 1
        return await super().claim_planned(conn, limit, cache_max_age=cache_max_age,
                                           known_traps=known_traps, full_kinds=full_kinds,
                                           lead=lead)


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
        sub = await bus.pull_subscription(js, s, s.work_topic, "test-consumer")

        async def sample() -> None:
            out.append(await db.fetchval(
                "SELECT count(*) FROM job_pending WHERE published_on IS NOT NULL"))
        await serve_all(db, sub, len(ids), sample)
    assert await db.fetchval("SELECT count(*) FROM job_pending WHERE job_id = $1", job) == 0
    assert max(out) <= schedule.FEED_FLOOR, max(out)
    assert max(out) >= schedule.FEED_FLOOR // 2  # the floor is used: the workers are fed


async def test_an_idle_feeder_looks_less_often_and_a_new_job_still_goes_out_soon(
        settings: Settings, db: asyncpg.Connection) -> None:
    # Nothing pending anywhere: each look (two JetStream reads and a claim) that finds nothing
    # doubles the pause before the next, up to half max_feed_wait (every feed_interval, 5 ms
    # here, before). A job made meanwhile is still published within about that pause.
    frontier = Counting(settings)
    pause = schedule.max_feed_wait(settings) / 2
    async with running_feeder(settings, frontier) as (_, js):
        await until(lambda: frontier.claims > 0, what="the first claim")
        await asyncio.sleep(0.5)  # the pauses have grown to their longest
        claims, t0 = frontier.claims, time.monotonic()
        await asyncio.sleep(1.0)
        claims, elapsed = frontier.claims - claims, time.monotonic() - t0
        assert elapsed / pause / 2 <= claims <= elapsed / pause + 2, claims  # looking, slowly
        sub = await bus.pull_subscription(js, settings, settings.work_topic, "test-consumer")
        await new_job(db, ["http://idle.example/first"])
        t0 = time.monotonic()
        msgs = await bus.pull(sub, 1, 5.0)
        took = time.monotonic() - t0
        assert [m.subject for m in msgs] == [bus.work_subject(settings, bus.HTTP)], msgs
        assert took < pause + 0.5, took


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
        assert claims <= elapsed / schedule.max_feed_wait(s) + 2, claims
        # nothing is stuck: as visits finish, the rest go out, until all are done
        sub = await bus.pull_subscription(js, s, s.work_topic, "test-consumer")
        await serve_all(db, sub, 100)
    assert await db.fetchval("SELECT count(*) FROM job_pending WHERE job_id = $1", job) == 0


# -- the planning claim and the routes (issue 15: one queue hop) ------------------------------

UNCAPPED = Settings(host_delay=0)


async def _pending(db: asyncpg.Connection, job: int) -> list[Key]:
    return [(job, r["url_id"]) for r in await db.fetch(
        "SELECT url_id FROM job_pending WHERE job_id = $1 ORDER BY rank", job)]


async def _claim_planned(db: asyncpg.Connection, limit: int = 100, **kw: Any) -> list[Planned]:
    async with db.transaction():
        return await DueFrontier(UNCAPPED).claim_planned(
            db, limit, cache_max_age=kw.pop("cache_max_age", 3600), **kw)


async def test_claim_planned_equals_plan(db: asyncpg.Connection) -> None:
    # Every case a plan decides: fresh (cached), expired with validators (etag), a type never
    # fetched (skip-MIME), a re-expansion, a trap link, a plain one; a paused job's, a job's
    # whose deny list refuses a URL now. The claim plans each exactly as visits.plan does.
    h = "http://plan.example"
    job, (fresh, expired, image, again, trap, plain) = await new_job(
        db, [f"{h}/fresh", f"{h}/expired", f"{h}/a.png", f"{h}/again", f"{h}/" + "x/" * 40,
             f"{h}/plain"], traps={"maxPathDepth": 8})
    paused, _ = await new_job(db, [f"{h}/paused"])
    denying, _ = await new_job(db, [f"{h}/denied", f"{h}/kept"])
    await db.execute("UPDATE url SET crawled_on = now(), etag = 'e1' WHERE id = $1", fresh)
    await db.execute("UPDATE url SET crawled_on = now() - interval '2 hours', etag = 'e2', "
                     "last_modified = 'yesterday', version = 3 WHERE id = $1", expired)
    await db.execute("UPDATE url SET mime = 'image/png' WHERE id = $1", image)
    await db.execute("UPDATE job_pending SET reexpand = true, attempts = 2 "
                     "WHERE job_id = $1 AND url_id = $2", job, again)
    await db.execute("UPDATE job_visit SET level = 1 WHERE job_id = $1 AND url_id = ANY($2)",
                     job, [trap, plain])
    await db.execute("UPDATE job SET state = 'paused' WHERE id = $1", paused)
    await db.execute("UPDATE job SET deny = '{\"/denied\"}' WHERE id = $1", denying)
    keys = await _pending(db, job) + await _pending(db, paused) + await _pending(db, denying)
    assert len(keys) == 9

    want = set(await visits.plan(db, keys, 3600, known_traps={paused}))
    got = await _claim_planned(db, known_traps={paused})
    assert len(got) == len(keys) and set(got) == want
    traps = JobTraps(UNCAPPED)
    known = traps.known()
    traps.learn(known, got)
    routes = {(p.job_id, p.url_id): route(p, known[p.job_id]).to for p in got}
    assert routes[job, fresh] == routes[job, image] == routes[job, again] == "store"
    assert routes[job, expired] == routes[job, plain] == "fetch"
    assert routes[job, trap] == "trap"
    assert set(routes.values()) == {"store", "fetch", "trap", "hold", "drop"}
    by_key = {(p.job_id, p.url_id): p for p in got}
    assert (by_key[job, expired].etag, by_key[job, expired].last_modified,
            by_key[job, expired].version) == ("e2", "yesterday", 3)
    assert by_key[job, again].attempts == 2 and by_key[job, again].reexpand
    assert by_key[paused, keys[6][1]].traps is None  # known: its spec's traps not read
    assert by_key[job, trap].traps is not None


async def test_claim_planned_of_one_job_on_one_host_plans_in_rank_order(
        db: asyncpg.Connection) -> None:
    # The one-pair claim (_CLAIM_ONE): the same plans, in rank order.
    job, _ = await new_job(db, [f"http://one.example/{i}" for i in range(5)])
    keys = await _pending(db, job)
    await db.execute("UPDATE url SET crawled_on = now() WHERE id = $1", keys[2][1])
    want = {(p.job_id, p.url_id): p for p in await visits.plan(db, keys, 3600)}
    got = await _claim_planned(db, limit=4)
    assert got == [want[k] for k in keys[:4]]
    assert got[2].cached and not got[0].cached


async def test_a_full_kind_is_not_claimed_and_others_are(db: asyncpg.Connection) -> None:
    static, _ = await new_job(db, [f"http://s.example/{i}" for i in range(3)], fetcher="static")
    http, _ = await new_job(db, [f"http://s.example/h{i}" for i in range(3)])
    got = await _claim_planned(db, full_kinds={"static"})
    assert {p.job_id for p in got} == {http} and len(got) == 3
    assert await db.fetchval("SELECT count(*) FROM job_pending WHERE job_id = $1 "
                             "AND published_on IS NULL", static) == 3
    # once it has room again, its visits are claimed
    got = await _claim_planned(db)
    assert {p.job_id for p in got} == {static} and {p.fetcher for p in got} == {"static"}


@asynccontextmanager
async def nats_js(settings: Settings) -> AsyncIterator[JetStreamContext]:
    async with bus.connect(settings.nats_url, "test-feed") as nc:
        js = nc.jetstream()
        await bus.ensure_streams(js, settings)
        yield js


async def queued(js: JetStreamContext, settings: Settings, topic: str) -> list[Key]:
    """The visits on a queue, in order (taken off it)."""
    sub = await bus.pull_subscription(js, settings, topic, "test-reader")
    got: list[Key] = []
    while msgs := await bus.pull(sub, 100, 0.5):
        got += list(await bus.group_visits(msgs))
        for m in msgs:
            await m.ack()
    return got


async def test_fetch_work_goes_to_its_kinds_queue_and_store_answers_to_the_url_queue(
        settings: Settings, db: asyncpg.Connection) -> None:
    s = settings.model_copy(update={"fetcher_kinds": ("http", "static")})
    job, (a, b, c) = await new_job(db, ["http://k.example/a", "http://k.example/b",
                                        "http://k.example/c"])
    static, (d,) = await new_job(db, ["http://k.example/d"], fetcher="static")
    await db.execute("UPDATE url SET crawled_on = now() WHERE id = $1", b)  # fresh: stored
    async with open_pool(s.database_url, min_size=1, max_size=2) as pool, nats_js(s) as js:
        traps = JobTraps(s)
        got = await feed(s, pool, js, 100, DueFrontier(UNCAPPED), traps, KindRooms(s, js))
        assert got == (1, 3)  # (to the URL queue, to the work queues)
        assert await queued(js, s, s.work_topic) == [(job, a), (job, c)]  # in claim order
        assert await queued(js, s, bus.work_subject(s, "static")) == [(static, d)]
        assert await queued(js, s, s.url_topic) == [(job, b)]
        assert set(traps.known()) == {job, static}  # the limits the foreman reuses
    assert await db.fetchval("SELECT count(*) FROM job_pending WHERE published_on IS NULL") == 0


async def test_a_failed_work_publish_leaves_its_rows_unpublished(
        settings: Settings, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    job, (a, b) = await new_job(db, ["http://f.example/a", "http://f.example/b"])
    await db.execute("UPDATE url SET crawled_on = now() WHERE id = $1", b)  # to the URL queue
    publish = bus._publish

    async def refusing(js: JetStreamContext, subject: str, items: Sequence[Any],
                       encode: Any) -> tuple[list[Any], BaseException | None]:
        if subject == settings.work_topic:  # the work stream refuses (NATS away, say)
            return list(items), nats.errors.TimeoutError()
        return await publish(js, subject, items, encode)

    monkeypatch.setattr(bus, "_publish", refusing)
    async with open_pool(settings.database_url, min_size=1, max_size=2) as pool, \
            nats_js(settings) as js:
        got = await feed(settings, pool, js, 100, DueFrontier(UNCAPPED), JobTraps(settings),
                         KindRooms(settings, js))
        assert got == (1, 0)
        assert await queued(js, settings, settings.url_topic) == [(job, b)]
        assert await queued(js, settings, settings.work_topic) == []
    rows = {r["url_id"]: r["published_on"] for r in await db.fetch(
        "SELECT url_id, published_on FROM job_pending WHERE job_id = $1", job)}
    assert rows[a] is None and rows[b] is not None  # a is claimed again, b went out


async def test_the_queue_a_new_visit_waits_behind_is_the_undelivered_visits(
        settings: Settings, db: asyncpg.Connection) -> None:
    """``KindRooms.waiting``: the work queue's visits no worker has taken yet, not those the
    workers hold (delivered, not acked); 0 before any worker bound the queue's consumer."""
    keys = [(1, i) for i in range(10)]
    async with nats_js(settings) as js:
        rooms = KindRooms(settings, js)
        assert await rooms.waiting(bus.HTTP) == 0  # no consumer yet
        sub = await bus.pull_subscription(js, settings, settings.work_topic,
                                          bus.worker_consumer(bus.HTTP))
        assert await bus.publish_visits(js, settings.work_topic, keys) == []
        assert await rooms.waiting(bus.HTTP) == 10
        held = await bus.pull(sub, 4, 1.0)  # a worker holds 4, unacked
        assert len(held) == 4
        assert await rooms.waiting(bus.HTTP) == 6
