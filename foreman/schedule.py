"""The foreman: feeds pending visits from PostgreSQL as the queues have room, planned as they
are claimed: a visit to fetch straight to the work queue of its job's fetcher kind (each kind
its own, ``bus.work_subject``), any other to the URL queue (``foreman.feeder``); answers the
URL queue's visits (from the store: cached, a type never fetched, or a page to expand again;
or drops, holds or blocks them; one whose cached copy expired since its claim is forwarded);
feeds queued tasks to their kinds' task queues (``foreman.tasks``); and watches for work
(visits, tasks) that never finishes."""

from __future__ import annotations

import asyncio
import logging
import math
from contextlib import AsyncExitStack
from datetime import datetime, timedelta

import asyncpg
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from foreman import webhooks
from foreman.feeder import feed
from foreman.housekeeping import housekeeping
from foreman.rooms import KindRooms, stream_state
from foreman.route import JobTraps, route
from foreman.tasks import task_feeder, task_watch_once
from shared import bus, metrics, ops_http
from shared.bus import NatsOptions, Settle, Verdict
from shared.config import Settings
from shared.db import visits, workers
from shared.db.frontier import FEEDER_SETTINGS, DueFrontier, Frontier
from shared.db.pool import RETRYABLE, in_transaction, open_pool
from shared.service import sleep_unless

log = logging.getLogger(__name__)

LOOPS = 4  # concurrent pull loops: one waits on the database while another publishes
WATCHDOG_LOCK = 0x4A52_5645  # pg advisory lock: one watchdog in the cluster at a time
WATCH_BATCH = 1000  # visits re-queued (and failed) per watchdog transaction
KIND_FULL_WAIT = 1.0  # seconds a visit waits in the frontier when its kind's work queue is full
Key = tuple[int, int]


class Foreman:
    """The URL queue's consumer. ``traps`` (each job's trap limits) and ``rooms`` (the work
    queues' room) are shared with the foreman's feeder."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool, js: JetStreamContext,
                 frontier: Frontier, traps: JobTraps | None = None,
                 rooms: KindRooms | None = None) -> None:
        self.settings = settings
        self.pool = pool
        self.js = js
        self.frontier = frontier
        self.traps = traps or JobTraps(settings)
        self.rooms = rooms or KindRooms(settings, js)

    async def handle(self, msgs: list[Msg]) -> None:
        """Process one batch; every message is settled exactly once before this returns."""
        by_key = await bus.group_visits(msgs)
        if not by_key:
            return
        try:
            outcome = await self._process(list(by_key))
        except (*RETRYABLE, *bus.TRANSIENT, asyncpg.PostgresError) as e:
            log.warning("batch of %d visits not processed (%s); will be redelivered", len(by_key), e)
            outcome = {k: Settle(Verdict.RETRY, 1.0) for k in by_key}
        except Exception:  # a bug must not stop the loop: log it, let the visits come back
            log.exception("batch of %d visits not processed; will be redelivered", len(by_key))
            outcome = {k: Settle(Verdict.RETRY, 5.0) for k in by_key}
        for k, ms in by_key.items():
            for m in ms:
                await bus.settle(m, outcome[k])

    async def _process(self, keys: list[Key]) -> dict[Key, Settle]:
        """Returns each visit's outcome. The feeder sent the visits to fetch to the work queues
        already: what comes here is mostly answered from the store, dropped, held or blocked
        (``route``); a visit to fetch after all (its cached copy expired since its claim, or a
        message of an older foreman) is forwarded as the work queue of its kind has room."""
        s = self.settings
        limits = self.traps.known()
        async with self.pool.acquire() as conn:
            planned = {(p.job_id, p.url_id): p
                       for p in await visits.plan(conn, keys, s.cache_max_age, limits)}
        self.traps.learn(limits, planned.values())  # plan read their traps: first batch since
        work: dict[str, list[Key]] = {}  # by fetcher kind, in one pass: usually http alone
        cached = []
        dropped: list[Key] = []  # a cancelled job's, or a URL its deny list now refuses
        held: list[Key] = []  # a paused job's: back in the frontier, held
        trapped: dict[Key, str] = {}  # a link that is a crawler trap: blocked, never fetched
        for k, p in planned.items():
            match route(p, limits[p.job_id]):
                case ("drop", _):
                    dropped.append(k)
                case ("hold", _):
                    held.append(k)
                case ("trap", str(why)):
                    trapped[k] = why
                case ("store", _):
                    cached.append(k)
                case ("fetch", _):
                    work.setdefault(p.fetcher, []).append(k)
        if dropped or held:
            await settle_stale(self.pool, self.frontier, dropped, held)
        if trapped:
            await block_traps(self.pool, trapped)
        unsent: set[Key] = set()
        waiting: list[Key] = []
        for kind, ks in work.items():
            room = await self.rooms.take(kind, len(ks))
            failed = await bus.publish_visits(self.js, bus.work_subject(s, kind), ks[:room])
            waiting += ks[room:]
            unsent.update(failed)
        if waiting:
            unsent.update(await self._wait(waiting))
        if cached:
            await complete_from_store(self.pool, cached, {k: planned[k].version for k in cached})
            metrics.VISITS_FROM_STORE.inc(len(cached))
        metrics.VISITS_FORWARDED.inc(sum(map(len, work.values())) - len(unsent) - len(waiting))
        log.debug("batch: %d forwarded, %d waiting, %d from store, %d already done",
                  sum(map(len, work.values())) - len(unsent) - len(waiting), len(waiting),
                  len(cached), len(keys) - len(planned))
        # A visit the work queue refused (full, or NATS away) comes back to us later.
        return {k: Settle(Verdict.RETRY, 0.5) if k in unsent else Settle(Verdict.ACK) for k in keys}

    async def _wait(self, keys: list[Key]) -> list[Key]:
        """Put back in the frontier, for ``KIND_FULL_WAIT``, visits whose kind's work queue is
        full, so their messages leave the URL queue (acked) instead of taking its room from
        other kinds' visits until they use up ``maxDeliver``. Returns the keys not put back (a
        PostgreSQL error): those are nak'ed instead."""
        due = datetime.now().astimezone() + timedelta(seconds=KIND_FULL_WAIT)
        try:
            async with self.pool.acquire() as conn:
                await self.frontier.defer(conn, dict.fromkeys(keys, due))
        except (*RETRYABLE, asyncpg.PostgresError) as e:
            log.warning("%d visits for a full work queue not put back (%s); nak'ed", len(keys), e)
            return keys
        return []


async def block_traps(pool: asyncpg.Pool, trapped: dict[Key, str]) -> None:
    """Record trap visits as blocked, each with its reason (a failure row, no fetch, no
    child), in one transaction; their messages are acked after it commits."""
    await in_transaction(pool, lambda conn: visits.block(conn, trapped))
    metrics.count_blocked(trapped.values())
    log.info("%d visits blocked as crawler traps (e.g. %s)", len(trapped),
             next(iter(trapped.values())))


async def settle_stale(pool: asyncpg.Pool, frontier: Frontier, dropped: list[Key],
                       held: list[Key]) -> None:
    """Answer visits whose job changed since they were queued, in one transaction: drop those
    of a cancelled job or refused by its deny list now (no fetch, no result, no child), and
    put back, held, those of a paused job. Their messages are acked after it commits."""
    async def work(conn: asyncpg.Connection) -> None:
        if dropped:
            await visits.drop(conn, dropped)
        if held:
            await frontier.hold(conn, held)

    await in_transaction(pool, work)
    metrics.VISITS_DROPPED.inc(len(dropped))
    metrics.VISITS_HELD.inc(len(held))
    log.info("%d visits dropped (job cancelled or URL denied), %d held (job paused)",
             len(dropped), len(held))


async def complete_from_store(pool: asyncpg.Pool, keys: list[Key],
                              versions: dict[Key, int] | None = None) -> None:
    """Complete visits whose page is known: results and children from its stored links, at
    the version each was planned with (``versions``: ``Planned.version``)."""
    async def work(conn: asyncpg.Connection) -> None:
        await visits.complete(conn, await visits.lock_pending(conn, keys),
                              {k: "cached" for k in keys}, versions=versions)

    await in_transaction(pool, work)


FEED_ASK = 1000  # visits one claim asks for at most
FEED_FLOOR = 256  # the feed-ahead budget at least: 2 x the bench's 128 worker slots, say
FEED_RATE_TIME = 1.0  # seconds: the time constant of the claimed-rows rate
FEED_BATCH = 128  # visits finished since the last claim that are worth a claim at once
FEED_MAX_WAIT = 0.1  # seconds between claims at most while anything is published, no more
# than host_start_window (a claim publishes the starts due within it of a host's next, plus the
# queue's wait: a longer gap between claims would lose polite hosts' turns), 0.05 at least; at
# 1,000 hosts half the claims of 50 ms (each weighs every (host, job) pair): 6-11 % less wall
FEED_MIN_WAIT = 0.05
LEAD_MAX = 1.0  # seconds of the work queue's wait counted at most (``transit``)


def transit(waiting: int, rate: float) -> float:
    """Seconds a visit published now waits on a work queue with ``waiting`` visits not yet
    delivered to a worker, which the workers take at ``rate`` a second (the rows claimed per
    second lately: what they finish once the feed-ahead budget binds); ``LEAD_MAX`` at most,
    0 with nothing waiting or nothing measured yet. The claim publishes a polite host's visit
    that much earlier, so that it reaches the gate when the host's turn comes (counted from
    the publish alone, a visit behind 0.2 s of queue came after its start, and the host lost
    that much of each turn)."""
    if waiting <= 0 or rate <= 0:
        return 0.0
    return min(waiting / rate, LEAD_MAX)


class FeedBudget:
    """How many visits may be published and unfinished at once (on the URL queue and the http
    work queue together): ``feed_ahead`` seconds of the rows the feeders claimed per second
    lately (a count decayed with time constant ``FEED_RATE_TIME``, over it), ``FEED_FLOOR``
    at least; None without a budget (``feed_ahead`` 0). The count is the growth of the URL
    stream's ``last_seq`` plus the http work stream's (``published``): every foreman's feeder
    publishes there (a visit to fetch straight to the work queue, any other to the URL queue;
    a foreman forwards to the work queue only the rare visit whose cached copy expired since
    its claim), so N foremen, which take turns at the claim, share one budget for the cluster
    (the "out" it bounds is the streams' too), not each 1/N of it.

    Everything published waits in FIFO queues, so whatever is published beyond what the
    workers finish in ``feed_ahead`` is only a wait put in front of every visit published next
    (a new job's, a host's next turn), not more speed. Claimed rows per second is what the
    workers finish once the budget binds, so the budget follows the crawl's throughput; the
    floor is the start, before anything was measured, and what a slow crawl still gets."""

    def __init__(self, feed_ahead: float, now: float) -> None:
        self.feed_ahead = feed_ahead
        self._decayed = 0.0  # claimed rows, each decayed by exp(-age / FEED_RATE_TIME)
        self._at = now
        self._seq: int | None = None  # the streams' last_seq (summed) at the last look

    def claimed(self, n: int, now: float) -> None:
        self._decayed = self._decayed * math.exp((self._at - now) / FEED_RATE_TIME) + n
        self._at = now

    def published(self, last_seq: int, now: float) -> None:
        """Count the messages published to the streams since the last look, by any feeder:
        the growth of their ``last_seq`` (summed). The first look only marks it; a stream
        whose sequence started again (restored) counts nothing that time."""
        n = 0 if self._seq is None else max(0, last_seq - self._seq)
        self._seq = last_seq
        self.claimed(n, now)

    def rate(self) -> float:
        """Claimed rows per second lately."""
        return self._decayed / FEED_RATE_TIME

    def budget(self) -> int | None:
        if self.feed_ahead <= 0:
            return None
        return max(FEED_FLOOR, math.ceil(self.feed_ahead * self.rate()))


def max_feed_wait(settings: Settings) -> float:
    """Seconds between two claims at most while anything is published: ``FEED_MAX_WAIT``, no
    more than ``host_start_window``, ``FEED_MIN_WAIT`` at least."""
    return max(FEED_MIN_WAIT, min(FEED_MAX_WAIT, settings.host_start_window))


async def feeder(settings: Settings, pool: asyncpg.Pool, js: JetStreamContext,
                 frontier: Frontier, stop: asyncio.Event, traps: JobTraps | None = None,
                 rooms: KindRooms | None = None) -> None:
    """Keep the queues supplied from ``job_pending`` (``feed``: a visit to fetch to its kind's
    work queue, any other to the URL queue), never beyond ``url_queue_limit`` nor, for each
    kind's work queue, ``work_queue_limit`` (a kind at its limit is left out of the claim), and
    no more visits published and unfinished than the feed-ahead budget (``FeedBudget``). They
    are read every ``feed_interval`` from JetStream: the depth of the URL queue and of the http
    work queue, together every visit published and not yet committed ("out"), and the other
    kinds' depths (``rooms``, shared with the foreman's pull loops, as ``traps``, each job's
    trap limits, is).

    Paced by the room visits free, not by what a claim costs: a claim is worth making for
    ``FEED_BATCH`` visits, or a quarter of what was out after the last claim, 1 at least (a
    host at its cap gets its freed slot back at once). After a claim that filled its ask (at
    least half of it) the next follows as soon as the room to ask for (the queue's, the
    budget's) is worth it; after a shorter one (hosts at their cap, little due), as soon as
    the visits finished since (out then less out now) are; or once ``max_feed_wait`` has
    passed (rows come due, a new job's, another foreman's feeder). So with
    every host at its cap and nothing finishing the feeder claims 10 times a second, not in a
    tight loop, and at 1,000 busy hosts it claims once per batch of freed slots, however long a
    claim takes. With nothing out at all, it claims at once after a full claim, else looks
    again after ``feed_interval`` (or after four times its last claim's time, ``max_feed_wait``
    at most), and while its looks find nothing, twice as long after each up to half
    ``max_feed_wait``: an idle service looks 20 times a second, not 100 (the whole service's CPU use
    0.20 → 0.09 of a core, nats-server and PostgreSQL included), and a new job's first visits go out
    within 50 ms, a polite host's next start at least 50 ms ahead of its time."""
    loop = asyncio.get_running_loop()
    traps = traps or JobTraps(settings)
    rooms = rooms or KindRooms(settings, js)
    budget = FeedBudget(settings.feed_ahead, loop.time())
    max_wait = max_feed_wait(settings)
    last = -math.inf  # when the last claim was made
    after = 0  # out just after it
    took = 0.0  # its time
    full = True  # it filled half its ask or more: the next one at once
    idle = settings.feed_interval  # between looks while nothing is out and claims come back empty
    while not stop.is_set():
        ask = sent = 0
        claimed = False
        pause = settings.feed_interval
        try:
            depth, last_seq = await stream_state(js, settings.url_topic)
            work, work_seq = await rooms.read(bus.HTTP, max_age=0)  # each round, as the URL's
            budget.published(last_seq + work_seq, loop.time())
            out = depth + work
            ask = min(settings.url_queue_limit - depth, settings.work_queue_limit - work,
                      FEED_ASK)
            if (most := budget.budget()) is not None:
                ask = min(ask, most - out)
            waited = loop.time() - last
            worth = max(1, min(FEED_BATCH, after // 4))
            if out == 0:  # all finished: at once after a full claim, else an idle look
                due = full or waited >= min(max(settings.feed_interval, 4 * took), max_wait)
            else:  # more rows likely wait (a full claim), or slots freed since, or time
                due = ((ask if full else after - out) >= worth) or waited >= max_wait
            if ask > 0 and due:
                full_kinds = frozenset([k for k in settings.fetcher_kinds if k != bus.HTTP
                                        and await rooms.room(k) == 0])
                t0 = loop.time()
                lead = transit(await rooms.waiting(bus.HTTP), budget.rate())
                to_url, to_work = await feed(settings, pool, js, ask, frontier, traps, rooms,
                                             full_kinds, lead)
                sent = to_url + to_work
                last, took, after = t0, loop.time() - t0, out + sent
                full, claimed = 2 * sent >= ask, True
            # Nothing out and nothing claimed: an idle service. Its looks (two JetStream reads
            # and a claim each) space out, doubling to half the longest gap between claims;
            # anything out or claimed brings them back to every feed_interval.
            if out == 0 and sent == 0 and not full:
                pause = idle = min(2 * idle, max_wait / 2)
            else:
                idle = settings.feed_interval
        except (*RETRYABLE, *bus.TRANSIENT, asyncpg.PostgresError) as e:
            log.warning("feeder: %s; retrying", e)
            await asyncio.sleep(0.5)
        if not (claimed and full):
            await sleep_unless(stop, pause)


async def watchdog(settings: Settings, pool: asyncpg.Pool, frontier: Frontier,
                   stop: asyncio.Event, js: JetStreamContext | None = None) -> None:
    """Re-publish visits whose message was lost or gave up (MaxDeliver); after ``max_requeues``
    such rounds, record the visit as failed so its job still completes. Tasks likewise
    (``task_watch_once``, which reads the task streams' depths through ``js``), with no
    limit: a task runs at least once. Each round runs even when the other failed."""
    while not stop.is_set():
        await sleep_unless(stop, settings.watchdog_interval)
        try:
            await watch_once(settings, pool, frontier)
        except (*RETRYABLE, *bus.TRANSIENT, asyncpg.PostgresError) as e:
            log.warning("watchdog: %s", e)
        try:
            await task_watch_once(settings, pool, js)
        except (*RETRYABLE, *bus.TRANSIENT, asyncpg.PostgresError) as e:
            log.warning("task watchdog: %s", e)


async def watch_once(settings: Settings, pool: asyncpg.Pool, frontier: Frontier,
                     batch: int = WATCH_BATCH) -> tuple[int, int]:
    """One round; returns (re-queued, failed). Works through the backlog in transactions of at
    most ``batch`` visits of each kind, so none holds many rows for long. Only one foreman's
    watchdog acts at a time."""
    requeued = failed = 0
    while True:
        done = await _watch_batch(settings, pool, frontier, batch)
        if done is None:  # another foreman's watchdog is at work
            break
        requeued, failed = requeued + done[0], failed + done[1]
        if done[0] < batch and done[1] < batch:
            break
    metrics.WATCHDOG.labels("requeued").inc(requeued)
    metrics.WATCHDOG.labels("abandoned").inc(failed)
    if requeued or failed:
        log.warning("watchdog: re-queued %d stale visits, recorded %d as failed", requeued, failed)
    return requeued, failed


async def _watch_batch(settings: Settings, pool: asyncpg.Pool, frontier: Frontier,
                       batch: int) -> tuple[int, int] | None:
    async with pool.acquire() as conn, conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", WATCHDOG_LOCK):
            return None
        # Visits waiting on a queue no live worker reads are not lost: they wait for one.
        served = await workers.live_kinds(conn, settings.worker_timeout)
        await frontier.hold_unserved(conn, served, settings.stale_after)
        requeued = await frontier.requeue_stale(conn, settings.stale_after,
                                                settings.max_requeues, batch)
        gone = await frontier.abandoned(conn, settings.stale_after, settings.max_requeues, batch)
        if gone:
            keys = [k for k, _ in gone]
            locked = await visits.lock_pending(conn, keys)
            reason = (f"abandoned: still pending {settings.stale_after:g}s after each of "
                      f"{settings.max_requeues + 1} publications")
            await visits.complete(conn, locked, {k: "abandoned" for k in keys},
                                  attempts={k: n + 1 for k, n in gone},
                                  reasons={k: reason for k in keys})
    return requeued, len(gone)


async def run(settings: Settings, stop: asyncio.Event) -> None:
    """Serve the URL queue until ``stop`` is set; then finish the batches in hand and exit."""
    async with AsyncExitStack() as stack:
        pool = await stack.enter_async_context(
            open_pool(settings.database_url, min_size=1, max_size=LOOPS + 6))
        # The feeder's claims on sessions of their own (``FEEDER_SETTINGS``: planned per call)
        feed_pool = await stack.enter_async_context(
            open_pool(settings.database_url, min_size=1, max_size=1,
                      server_settings=FEEDER_SETTINGS))
        nc = await stack.enter_async_context(bus.connect(
            settings.nats_url, "harvester-foreman", options=NatsOptions.from_settings(settings)))
        await stack.enter_async_context(ops_http.serve(settings.metrics_addr,
                                                       ops_http.readiness(pool, nc)))
        js = nc.jetstream()
        await bus.ensure_streams(js, settings)
        await bus.ensure_task_streams(js, settings)
        frontier = DueFrontier(settings)  # the feeder's, the watchdog's and the foreman's
        traps, rooms = JobTraps(settings), KindRooms(settings, js)  # the feeder's and foreman's
        foreman = Foreman(settings, pool, js, frontier, traps, rooms)
        subs = [await bus.pull_subscription(js, settings, settings.url_topic, bus.FOREMAN_CONSUMER)
                for _ in range(LOOPS)]
        log.info("foreman ready: %s -> %s", settings.url_topic,
                 ", ".join(bus.work_subject(settings, k) for k in settings.fetcher_kinds))
        tasks = [asyncio.create_task(_loop(foreman, sub, stop), name=f"pull-{i}")
                 for i, sub in enumerate(subs)]
        tasks.append(asyncio.create_task(feeder(settings, feed_pool, js, frontier, stop, traps,
                                                rooms), name="feeder"))
        tasks.append(asyncio.create_task(task_feeder(settings, pool, js, stop),
                                         name="task feeder"))
        tasks.append(asyncio.create_task(watchdog(settings, pool, frontier, stop, js),
                                         name="watchdog"))
        tasks.append(asyncio.create_task(housekeeping(settings, pool, stop),
                                         name="housekeeping"))
        if settings.webhook_secret:  # no job can name a webhook without it
            tasks.append(asyncio.create_task(webhooks.deliver(settings, pool, stop),
                                             name="webhooks"))
        try:
            await bus.supervise(tasks, stop)
        finally:
            log.info("foreman stopping: finishing batches in hand")
            _, pending = await asyncio.wait(tasks, timeout=settings.shutdown_timeout)
            for t in pending:
                t.cancel()  # their messages are not acked: they come back
            await asyncio.gather(*tasks, return_exceptions=True)


async def _loop(foreman: Foreman, sub: JetStreamContext.PullSubscription, stop: asyncio.Event) -> None:
    """Pull and answer batches of the URL queue. Not gated by the work queues' room: the URL
    queue carries visits answered without a fetch; the rare forward is metered by itself
    (``KindRooms``), and what has no room waits in the frontier (``Foreman._wait``)."""
    batch = foreman.settings.batch_size
    while not stop.is_set():
        msgs = await bus.pull(sub, batch, 1.0)
        if msgs:
            await foreman.handle(msgs)
