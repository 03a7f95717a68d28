"""The foreman: decides for each queued visit whether to answer it from the store (cached, a type
never fetched, or a page to expand again) or to forward it to the workers of its job's fetcher
kind (each kind its own work queue, ``bus.work_subject``); feeds pending visits
from PostgreSQL to the URL queue as it has room, and queued tasks to their kinds' task queues
(``foreman.tasks``); and watches for work (visits, tasks) that never finishes."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from contextlib import AsyncExitStack
from datetime import datetime, timedelta

import asyncpg
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from foreman import webhooks
from foreman.feeder import feed
from foreman.housekeeping import housekeeping
from foreman.tasks import task_feeder, task_watch_once
from shared import bus, metrics, ops_http
from shared.bus import NatsOptions, Settle, Verdict
from shared.config import Settings, stream_name
from shared.db import visits, workers
from shared.db.frontier import DueFrontier, Frontier
from shared.db.pool import RETRYABLE, in_transaction, open_pool
from shared.scope import denied
from shared.service import sleep_unless
from shared.traps import TrapLimits

log = logging.getLogger(__name__)

LOOPS = 4  # concurrent pull loops: one waits on the database while another publishes
WATCHDOG_LOCK = 0x4A52_5645  # pg advisory lock: one watchdog in the cluster at a time
WATCH_BATCH = 1000  # visits re-queued (and failed) per watchdog transaction
KIND_FULL_WAIT = 1.0  # seconds a visit waits in the frontier when its kind's work queue is full
TRAPS_MAX = 10_000  # jobs whose trap limits the foreman keeps (then it starts afresh)
Key = tuple[int, int]


class Foreman:
    def __init__(self, settings: Settings, pool: asyncpg.Pool, js: JetStreamContext,
                 frontier: Frontier) -> None:
        self.settings = settings
        self.pool = pool
        self.js = js
        self.frontier = frontier
        self._depth_checked = 0.0
        self._depth = 0
        self._reserved = 0  # pulled by a loop of ours and not yet forwarded
        self._depths: dict[str, tuple[float, int]] = {}  # other kinds' queues: (checked, depth)
        self._lock = asyncio.Lock()
        # Each job's trap limits (its spec never changes): ``visits.plan`` reads a job's spec
        # "traps" only while the job is not in here. Only ever added to; when it grows too big
        # it is replaced, not cleared, so a batch planned against the old one still finds there
        # every job plan left out.
        self._traps: dict[int, TrapLimits] = {}

    async def reserve(self, batch: int) -> int:
        """How many visits a loop may pull now so the work queue stays within its limit."""
        async with self._lock:
            now = time.monotonic()
            if now - self._depth_checked > 0.05:
                self._depth = await bus.stream_depth(self.js, self.settings.work_topic)
                metrics.QUEUE_MESSAGES.labels(self.settings.work_topic).set(self._depth)
                self._depth_checked = now
            n = max(0, min(batch, self.settings.work_queue_limit - self._depth - self._reserved))
            self._reserved += n
            return n

    def release(self, reserved: int, forwarded: int) -> None:
        self._reserved -= reserved
        self._depth += forwarded  # until the next check reads the real depth

    async def handle(self, msgs: list[Msg]) -> int:
        """Process one batch; every message is settled exactly once before this returns.
        Returns how many visits were forwarded to the http work queue."""
        by_key = await bus.group_visits(msgs)
        if not by_key:
            return 0
        forwarded = 0
        try:
            outcome, forwarded = await self._process(list(by_key))
        except (*RETRYABLE, *bus.TRANSIENT, asyncpg.PostgresError) as e:
            log.warning("batch of %d visits not processed (%s); will be redelivered", len(by_key), e)
            outcome = {k: Settle(Verdict.RETRY, 1.0) for k in by_key}
        except Exception:  # a bug must not stop the loop: log it, let the visits come back
            log.exception("batch of %d visits not processed; will be redelivered", len(by_key))
            outcome = {k: Settle(Verdict.RETRY, 5.0) for k in by_key}
        for k, ms in by_key.items():
            for m in ms:
                await bus.settle(m, outcome[k])
        return forwarded

    async def _process(self, keys: list[Key]) -> tuple[dict[Key, Settle], int]:
        """Returns each visit's outcome and how many went to the http work queue (the one
        ``reserve`` meters)."""
        s = self.settings
        if len(self._traps) >= TRAPS_MAX:
            self._traps = {}
        limits = self._traps
        async with self.pool.acquire() as conn:
            planned = {(p.job_id, p.url_id): p
                       for p in await visits.plan(conn, keys, s.cache_max_age, limits)}
        for p in planned.values():
            if p.job_id not in limits:  # plan read its traps: its first batch since (re)start
                limits[p.job_id] = TrapLimits.of(p.traps, s)
        work: dict[str, list[Key]] = {}  # by fetcher kind, in one pass: usually http alone
        cached = []
        dropped: list[Key] = []  # a cancelled job's, or a URL its deny list now refuses
        held: list[Key] = []  # a paused job's: back in the frontier, held
        trapped: dict[Key, str] = {}  # a link that is a crawler trap: blocked, never fetched
        for k, p in planned.items():
            if (p.state != "running" or p.deny) and (act := stale(p)):
                (dropped if act == "drop" else held).append(k)
            elif p.level and not p.reexpand and (why := limits[p.job_id].check(p.url, p.level)):
                trapped[k] = why
            elif p.cached:
                cached.append(k)
            else:
                work.setdefault(p.fetcher, []).append(k)
        if dropped or held:
            await settle_stale(self.pool, self.frontier, dropped, held)
        if trapped:
            await block_traps(self.pool, trapped)
        unsent: set[Key] = set()
        waiting: list[Key] = []
        http_sent = 0
        for kind, ks in work.items():
            if kind == bus.HTTP:  # room reserved already (``reserve``)
                failed = await bus.publish_visits(self.js, s.work_topic, ks)
                http_sent = len(ks) - len(failed)
            else:
                room = await self._room(kind, len(ks))
                failed = await bus.publish_visits(self.js, bus.work_subject(s, kind), ks[:room])
                waiting += ks[room:]
            unsent.update(failed)
        if waiting:
            unsent.update(await self._wait(waiting))
        if cached:
            await complete_from_store(self.pool, cached)
            metrics.VISITS_FROM_STORE.inc(len(cached))
        metrics.VISITS_FORWARDED.inc(sum(map(len, work.values())) - len(unsent) - len(waiting))
        log.debug("batch: %d forwarded, %d waiting, %d from store, %d already done",
                  sum(map(len, work.values())) - len(unsent) - len(waiting), len(waiting),
                  len(cached), len(keys) - len(planned))
        # A visit the work queue refused (full, or NATS away) comes back to us later.
        return ({k: Settle(Verdict.RETRY, 0.5) if k in unsent else Settle(Verdict.ACK) for k in keys},
                http_sent)

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

    async def _room(self, kind: str, wanted: int) -> int:
        """How many of ``wanted`` visits the work queue of ``kind`` (not http) takes now: its
        depth, read at most every 50 ms, against ``work_queue_limit``; 0 while it cannot be read."""
        topic = bus.work_subject(self.settings, kind)
        now = time.monotonic()
        checked, depth = self._depths.get(topic, (-math.inf, 0))
        if now - checked > 0.05:
            try:
                depth, checked = await bus.stream_depth(self.js, topic), now
                metrics.QUEUE_MESSAGES.labels(topic).set(depth)
            except bus.TRANSIENT as e:  # tried again in 50 ms, meanwhile full
                bus.warn(f"depth {topic}", "work queue %s unreachable (%s: %s); its visits wait",
                         topic, type(e).__name__, e)
                self._depths[topic] = (now, self.settings.work_queue_limit)
                return 0
        room = max(0, min(wanted, self.settings.work_queue_limit - depth))
        self._depths[topic] = (checked, depth + room)  # until the next check reads the real depth
        return room


def stale(p: visits.Planned) -> str | None:
    """What a visit whose job changed since it was queued gets instead of its work: ``drop``
    (its job cancelled, or its URL refused by the job's deny list now), ``hold`` (its job
    paused), or None (it is worked on). A running job without deny patterns never calls it."""
    if p.state == "cancelled" or (p.deny and denied(p.deny, p.url)):
        return "drop"
    return "hold" if p.state == "paused" else None


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


async def complete_from_store(pool: asyncpg.Pool, keys: list[Key]) -> None:
    """Complete visits whose page is known: results and children from ``url_link``."""
    async def work(conn: asyncpg.Connection) -> None:
        await visits.complete(conn, await visits.lock_pending(conn, keys),
                              {k: "cached" for k in keys})

    await in_transaction(pool, work)


FEED_ASK = 1000  # visits one claim asks for at most
FEED_FLOOR = 256  # the feed-ahead budget at least: 2 x the bench's 128 worker slots, say
FEED_RATE_TIME = 1.0  # seconds: the time constant of the claimed-rows rate
FEED_BATCH = 64  # visits finished since the last claim that are worth a claim at once
FEED_MAX_WAIT = 0.05  # seconds between claims at most while anything is published


class FeedBudget:
    """How many visits may be published and unfinished at once (on the URL queue and the http
    work queue together): ``feed_ahead`` seconds of the rows the feeders claimed per second
    lately (a count decayed with time constant ``FEED_RATE_TIME``, over it), ``FEED_FLOOR``
    at least; None without a budget (``feed_ahead`` 0). The count is the URL stream's
    ``last_seq`` growth (``published``): every foreman's feeder publishes there, and only
    they do, so N foremen, which take turns at the claim, share one budget for the cluster
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
        self._seq: int | None = None  # the URL stream's last_seq at the last look

    def claimed(self, n: int, now: float) -> None:
        self._decayed = self._decayed * math.exp((self._at - now) / FEED_RATE_TIME) + n
        self._at = now

    def published(self, last_seq: int, now: float) -> None:
        """Count the messages published to the URL stream since the last look, by any
        feeder: its ``last_seq`` growth. The first look only marks it; a stream whose
        sequence started again (restored) counts nothing that time."""
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


async def url_stream_state(js: JetStreamContext, topic: str) -> tuple[int, int]:
    """The URL stream's depth (``bus.stream_depth``) and its ``last_seq`` (the messages ever
    published to it: the feeders' claims) from one stream_info, the stream restored if the
    server lost it."""
    stream = stream_name(topic)
    try:
        info = await js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        if not await bus.restore(js, stream):
            raise
        info = await js.stream_info(stream)
    return int(info.state.messages), int(info.state.last_seq)


async def feeder(settings: Settings, pool: asyncpg.Pool, js: JetStreamContext,
                 frontier: Frontier, stop: asyncio.Event) -> None:
    """Keep the URL queue supplied from ``job_pending``, never beyond ``url_queue_limit``, and
    no more visits published and unfinished than the feed-ahead budget (``FeedBudget``). Both
    are read every ``feed_interval`` from JetStream: the depth of the URL queue and of the http
    work queue, together every visit published and not yet committed ("out").

    Paced by the room visits free, not by what a claim costs: a claim is worth making for
    ``FEED_BATCH`` visits, or an eighth of what was out after the last claim, 1 at least (a
    host at its cap gets its freed slot back at once). After a claim that filled its ask (at
    least half of it) the next follows as soon as the room to ask for (the queue's, the
    budget's) is worth it; after a shorter one (hosts at their cap, little due), as soon as
    the visits finished since (out then less out now) are; or once ``FEED_MAX_WAIT`` has
    passed (rows come due, a new job's, another foreman's feeder). So with
    every host at its cap and nothing finishing the feeder claims 20 times a second, not in a
    tight loop, and at 1,000 busy hosts it claims once per batch of freed slots, however long a
    claim takes. With nothing out at all, it claims at once after a full claim, else looks
    again after ``feed_interval`` (or after four times its last claim's time, ``FEED_MAX_WAIT``
    at most): a new job's first visits go out at once."""
    loop = asyncio.get_running_loop()
    budget = FeedBudget(settings.feed_ahead, loop.time())
    last = -math.inf  # when the last claim was made
    after = 0  # out just after it
    took = 0.0  # its time
    full = True  # it filled half its ask or more: the next one at once
    while not stop.is_set():
        ask = sent = 0
        claimed = False
        try:
            depth, last_seq = await url_stream_state(js, settings.url_topic)
            budget.published(last_seq, loop.time())
            out = depth + await bus.stream_depth(js, settings.work_topic)
            ask = min(settings.url_queue_limit - depth, FEED_ASK)
            if (most := budget.budget()) is not None:
                ask = min(ask, most - out)
            waited = loop.time() - last
            worth = max(1, min(FEED_BATCH, after // 8))
            if out == 0:  # all finished: at once after a full claim, else an idle look
                due = full or waited >= min(max(settings.feed_interval, 4 * took), FEED_MAX_WAIT)
            else:  # more rows likely wait (a full claim), or slots freed since, or time
                due = ((ask if full else after - out) >= worth) or waited >= FEED_MAX_WAIT
            if ask > 0 and due:
                t0 = loop.time()
                sent = await feed(pool, js, settings.url_topic, ask, frontier)
                last, took, after = t0, loop.time() - t0, out + sent
                full, claimed = 2 * sent >= ask, True
        except (*RETRYABLE, *bus.TRANSIENT, asyncpg.PostgresError) as e:
            log.warning("feeder: %s; retrying", e)
            await asyncio.sleep(0.5)
        if not (claimed and full):
            await sleep_unless(stop, settings.feed_interval)


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
        nc = await stack.enter_async_context(bus.connect(
            settings.nats_url, "harvester-foreman", options=NatsOptions.from_settings(settings)))
        await stack.enter_async_context(ops_http.serve(settings.metrics_addr,
                                                       ops_http.readiness(pool, nc)))
        js = nc.jetstream()
        await bus.ensure_streams(js, settings)
        await bus.ensure_task_streams(js, settings)
        frontier = DueFrontier(settings)  # the feeder's, the watchdog's and the foreman's
        foreman = Foreman(settings, pool, js, frontier)
        subs = [await bus.pull_subscription(js, settings, settings.url_topic, bus.FOREMAN_CONSUMER)
                for _ in range(LOOPS)]
        log.info("foreman ready: %s -> %s", settings.url_topic,
                 ", ".join(bus.work_subject(settings, k) for k in settings.fetcher_kinds))
        tasks = [asyncio.create_task(_loop(foreman, sub, stop), name=f"pull-{i}")
                 for i, sub in enumerate(subs)]
        tasks.append(asyncio.create_task(feeder(settings, pool, js, frontier, stop),
                                         name="feeder"))
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
    batch = foreman.settings.batch_size
    while not stop.is_set():
        try:
            room = await foreman.reserve(batch)
        except bus.TRANSIENT as e:
            log.warning("work queue unreachable (%s); retrying", e)
            await sleep_unless(stop, 0.5)
            continue
        if room == 0:
            await sleep_unless(stop, 0.02)  # backpressure: the workers are behind
            continue
        forwarded = 0
        try:
            msgs = await bus.pull(sub, room, 1.0)
            if msgs:
                forwarded = await foreman.handle(msgs)
        finally:
            foreman.release(room, forwarded)
