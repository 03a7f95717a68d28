"""The worker: pulls visits from the work queue of each fetcher kind it serves, admits them to
their hosts in batches (``worker.gate``), and runs each through its job's pipeline
(``worker.pipeline``: fetch, extract, task, outputs), many at once; finished visits are
committed in batches (``worker.commit``): one transaction for many pages, acked only after it
commits. It also runs the tasks of each kind it serves (``worker.taskrun``). Its init
functions (``worker.init``) run once first: if one raises, the worker takes no work and says
why (``/readyz``, the worker registry, systemd's status) until it is stopped. Its health
monitor (``worker.health``) ends it when its error rate or latency passes a threshold. Its
numbers (``worker.stats``: in flight, fetched by kind, pages/s, errors, latency) go with each
heartbeat to the worker registry (``GET /workers``)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import datetime, timedelta

import asyncpg
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from shared import bus, metrics, ops_http
from shared.bus import NatsOptions, Settle, Verdict
from shared.config import Settings
from shared.db import jobs, visits
from shared.db.frontier import DueFrontier, Frontier
from shared.db.pool import RETRYABLE, in_transaction, open_pool
from shared.netguard import NetGuard
from shared.scope import denied
from shared.urls import host_key
from worker import logins, sdnotify
from worker.commit import Committer, Done, Key
from worker.extractors.lanes import Parser
from worker.fetchers import FETCHERS, Fetcher
from worker.fetchers.github import github_hosts
from worker.fetchers.http import open_session
from worker.gate import SOON, HostGate, Slot
from worker.health import HealthMonitor, WorkerDegraded
from worker.heartbeat import heartbeat
from worker.init import run_inits
from worker.pipeline import JobPlan, JobPlans, Pipeline, Visit
from worker.stats import WorkerStats
from worker.taskrun import TaskRunner

log = logging.getLogger(__name__)

UNSERVED_DELAY = timedelta(seconds=60)  # a job this worker cannot serve: published again then
# A queued visit's job is read again before its fetch, at most this often per job: a cancel, a
# pause or a narrower scope stops the visits queued at their host within this long.
JOB_STATE_TTL = 0.1


class Worker:
    """Serves one fetcher kind's work queue with its own concurrency (``concurrency`` visits at
    once); the committer, the gate, the pool and the job plans are the process's."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool, committer: Committer,
                 gate: HostGate, plans: JobPlans, frontier: Frontier, kind: str = bus.HTTP,
                 concurrency: int | None = None, health: HealthMonitor | None = None,
                 stats: WorkerStats | None = None) -> None:
        self.settings = settings
        self.kind = kind
        self.frontier = frontier
        self.pool = pool
        self.committer = committer
        self.gate = gate
        self.plans = plans
        self.slots = asyncio.Semaphore(concurrency or settings.concurrency)
        self.pipeline = Pipeline(settings, pool, gate, frontier, committer, self.slots, stats)
        if health is not None and health.enabled:
            self.pipeline.health = health
        self.retrying = self.pipeline.retrying  # hosts with a retry waiting for a slot
        self.tasks: set[asyncio.Task[None]] = set()
        self._warned: dict[int, float] = {}  # job id -> when to warn again of not serving it
        self._job_states = JobStates(self._read_job_state)  # for visits queued at their host

    async def serve(self, sub: JetStreamContext.PullSubscription, stop: asyncio.Event) -> None:
        while not stop.is_set():
            free = await bus.take_free(self.slots, self.settings.batch_size)
            used = 0
            try:
                msgs = await bus.pull(sub, free, 1.0)
                used = await self._dispatch(msgs) if msgs else 0
            finally:
                for _ in range(free - used):
                    self.slots.release()

    async def _dispatch(self, msgs: list[Msg]) -> int:
        """Start a task per distinct visit still pending; returns how many slots they hold."""
        by_key = await bus.group_visits(msgs)
        if not by_key:
            return 0
        try:
            async with self.pool.acquire() as conn:
                planned = {(p.job_id, p.url_id): p for p in
                           await visits.plan(conn, list(by_key), self.settings.cache_max_age)}
                plans = await self.plans.resolve(
                    conn, (p for k, p in planned.items() if not p.cached and k in by_key))
            done = [k for k in by_key if k not in planned]  # a duplicate, or redelivered after a crash
            await bus.settle_all([by_key.pop(k) for k in done], Settle(Verdict.ACK))
            dropped: list[Key] = []  # a cancelled job's, or a URL its deny list now refuses
            held: list[Key] = []  # a paused job's: back in the frontier, held
            for k, p in planned.items():  # its job changed since it was queued
                verdict = _staleness(p.state, p.deny, p.url)
                if verdict is not None:
                    (dropped if verdict == "drop" else held).append(k)
            if dropped or held:  # as the foreman does (services never import each other)
                await in_transaction(self.pool, lambda conn: self._settle_stale(conn, dropped, held))
                await bus.settle_all([by_key.pop(k) for k in (*dropped, *held)],
                                     Settle(Verdict.ACK))
            unserved = {k: plan for k, p in planned.items() if k in by_key and not p.cached
                        and isinstance(plan := plans[p.job_id], str)}
            asking = {k: p.url for k, p in planned.items()
                      if not p.cached and k in by_key and k not in unserved}
            # A retry waiting here for a slot on the host comes first: a batch of the host's
            # visits, asking the moment a request ends, would otherwise take every freed slot.
            waiting = {k: self._after_retry(u) for k, u in asking.items()
                       if host_key(u) in self.retrying}
            unruled = {j for j, plan in plans.items()  # jobs whose source skips robots.txt
                       if isinstance(plan, JobPlan) and not plan.source.obeys_robots}
            admission = await self.gate.admit(
                {k: u for k, u in asking.items() if k not in waiting},
                {k for k in asking if k[0] in unruled} if unruled else ())
            admission.deferred.update(waiting)
            if waiting:
                admission.why["retry"] += len(waiting)
            if unserved:  # another worker (another version, in a rolling upgrade) will serve it
                admission.deferred.update(self._unserved(unserved))
            if admission.deferred:  # back in the frontier until the host is free
                try:
                    async with self.pool.acquire() as conn:
                        await self.frontier.defer(conn, admission.deferred)
                    for why, n in admission.why.items():
                        metrics.VISITS_DEFERRED.labels(why).inc(n)
                except BaseException:  # the batch comes back: its slots are not used
                    for queued in admission.queued.values():
                        self.gate.unqueue(queued)
                    for slot in admission.granted.values():
                        self.gate.give_back(slot)
                    raise
        except (*RETRYABLE, asyncpg.PostgresError) as e:
            log.warning("cannot dispatch %d visits (%s); they will be redelivered", len(by_key), e)
            await bus.settle_all(by_key.values(), Settle(Verdict.RETRY, 1.0))
            return 0
        await bus.settle_all([by_key.pop(k) for k in admission.deferred], Settle(Verdict.ACK))
        for key, ms in by_key.items():
            p = planned[key]
            if key in admission.blocked:
                self._spawn(self._commit_only(Done(key, ms, reason=admission.blocked[key])))
            elif key in admission.failed:  # no server to ask: its name does not resolve
                self._spawn(self._commit_only(Done(key, ms, failure=admission.failed[key])))
            elif p.cached:
                self._spawn(self._commit_only(Done(key, ms)))
            else:
                plan = plans[p.job_id]
                assert isinstance(plan, JobPlan)
                if key in admission.queued:
                    self._spawn(self._when_free(p, ms, plan, admission.queued[key]))
                else:
                    self._spawn(self.pipeline.visit(Visit(p, ms, admission.granted[key], plan)))
        return len(by_key)

    async def _when_free(self, p: visits.Planned, msgs: list[Msg], plan: JobPlan,
                         waiting: asyncio.Future[Slot | None]) -> None:
        """A visit queued for a slot of its host that this worker's requests hold
        (``HostGate.take_queued``): run once it has one; back in the frontier, shortly, if
        none comes within ``politeness_horizon``, or the host is in trouble."""
        deadline = asyncio.get_running_loop().time() + self.settings.politeness_horizon
        try:
            async with bus.KeepAlive(msgs, self.pipeline.beat):
                slot = await self.gate.take_queued(host_key(p.url), waiting, deadline)
        except BaseException:
            self.slots.release()
            raise
        if slot is not None:
            stale = await self._stale_now(p)
            if stale is None:
                await self.pipeline.visit(Visit(p, msgs, slot, plan))
                return
            self.gate.give_back(slot)  # its job was cancelled, paused or narrowed meanwhile
            key = (p.job_id, p.url_id)
            try:
                await in_transaction(self.pool, lambda conn: self._settle_stale(
                    conn, [key] if stale == "drop" else [], [key] if stale == "hold" else []))
                verdict = Settle(Verdict.ACK)
            except (*RETRYABLE, asyncpg.PostgresError) as e:
                log.warning("cannot settle %s (%s); it will be redelivered", key, e)
                verdict = Settle(Verdict.RETRY, 1.0)
            finally:
                self.slots.release()
            await bus.settle_all([msgs], verdict)
            return
        try:
            await self.pipeline.put_back((p.job_id, p.url_id), msgs,
                                         datetime.now().astimezone() + SOON)
        finally:
            self.slots.release()

    async def _stale_now(self, p: visits.Planned) -> str | None:
        """What became of a queued visit's job while it waited (planned as running): "drop"
        (cancelled, or its deny list now refuses the URL), "hold" (paused), or None. The job's
        state is read at most every ``JOB_STATE_TTL`` seconds (``JobStates``); a read that fails
        lets it run."""
        known = await self._job_states.get(p.job_id)
        return None if known is None else _staleness(*known, p.url)

    async def _read_job_state(self, job_id: int) -> JobState | None:
        try:
            async with self.pool.acquire() as conn:
                return await jobs.job_state(conn, job_id)
        except (*RETRYABLE, asyncpg.PostgresError):
            return None

    async def _settle_stale(self, conn: asyncpg.Connection, dropped: list[Key],
                            held: list[Key]) -> None:
        """Drop (no fetch, result or child) the visits of a cancelled job or refused by its
        deny list now; put back, held, those of a paused job. One transaction."""
        if dropped:
            await visits.drop(conn, dropped)
        if held:
            await self.frontier.hold(conn, held)

    def _unserved(self, unserved: dict[Key, str]) -> dict[Key, datetime]:
        """When visits of jobs this worker cannot serve (a plug-in it lacks) are published
        again, their attempt not counted: a worker that can serve them takes them meanwhile.
        A warning per job per ``UNSERVED_DELAY``."""
        now = time.monotonic()
        for job_id, reason in {k[0]: r for k, r in unserved.items()}.items():
            if now >= self._warned.get(job_id, 0.0):
                self._warned[job_id] = now + UNSERVED_DELAY.total_seconds()
                log.warning("job %d: %s; its visits are back in the frontier for another "
                            "worker", job_id, reason)
        if len(self._warned) > 1024:
            self._warned = {j: t for j, t in self._warned.items() if t > now}
        due = datetime.now().astimezone() + UNSERVED_DELAY
        return dict.fromkeys(unserved, due)

    async def _commit_only(self, done: Done) -> None:
        try:
            await self.committer.submit(done)
        finally:
            self.slots.release()

    def _spawn(self, coro) -> None:  # type: ignore[no-untyped-def]
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _after_retry(self, url: str) -> datetime:
        """When a visit held back for a retry on its host asks again: the host's next turn."""
        delay = max(self.settings.host_limit(host_key(url)).delay, 0.05)
        return datetime.now().astimezone() + timedelta(seconds=delay)

    async def drain(self, timeout: float) -> None:
        if self.tasks:
            _, pending = await asyncio.wait(set(self.tasks), timeout=timeout)
            for t in pending:
                t.cancel()  # not acked: redelivered to another worker


async def run(settings: Settings, stop: asyncio.Event) -> None:
    """Run the init functions, then serve the work queue and the task queue of each fetcher
    kind in ``settings.served_kinds`` until ``stop``; finish in-flight visits and tasks within
    the shutdown timeout, leave the rest unacked (they are redelivered), and return. A kind
    with no fetcher is a ConfigError before anything starts. An init function that raises
    leaves the worker unhealthy (``_unhealthy``); a degraded worker raises ``WorkerDegraded``
    once its work in flight is drained."""
    kinds = settings.served_kinds
    fetchers: dict[str, Fetcher] = {k: FETCHERS.create(k, settings, concurrency=n)
                                    for k, n in kinds.items()}
    init = await run_inits(settings)  # before NATS, PostgreSQL and any work
    if init.error is not None:
        await _unhealthy(settings, init.error, stop)
        return
    async with AsyncExitStack() as stack:
        pool = await stack.enter_async_context(open_pool(settings.database_url, min_size=2, max_size=6))
        nc = await stack.enter_async_context(bus.connect(
            settings.nats_url, "harvester-worker", options=NatsOptions.from_settings(settings)))
        await stack.enter_async_context(ops_http.serve(settings.metrics_addr,
                                                       ops_http.readiness(pool, nc)))
        for fetcher in fetchers.values():
            await stack.enter_async_context(fetcher)
        # The gate's SSRF guard: admission, and its session (robots.txt, sitemaps). GitHub
        # visits are admitted to githubBaseUrl's host (its fetcher's own guard allows it).
        guard = NetGuard.from_settings(settings, extra_hosts=github_hosts(settings)
                                       if "github" in kinds else ())
        session = await stack.enter_async_context(open_session(settings, guard=guard))
        logins.use_guard(NetGuard.from_settings(settings))  # the login task's requests
        js = nc.jetstream()
        await bus.ensure_streams(js, settings, list(kinds))
        await bus.ensure_task_streams(js, settings, list(kinds))
        subs = {k: await bus.pull_subscription(js, settings, bus.work_subject(settings, k),
                                               bus.worker_consumer(k)) for k in kinds}
        task_subs = {k: await bus.pull_subscription(js, settings, bus.task_subject(settings, k),
                                                    bus.task_consumer(k)) for k in kinds}
        # Last: its processes take a moment to start, and NATS and PostgreSQL come first.
        parser = await stack.enter_async_context(Parser(
            settings.parse_timeout, memory=settings.parse_memory,
            inline_bytes=settings.parse_inline_bytes))
        committer = Committer(settings, pool)
        commit_task = asyncio.create_task(committer.run(), name="committer")
        gate = HostGate(settings, pool, session, guard)
        release_task = asyncio.create_task(gate.run_releases(), name="host releases")
        plans = JobPlans(settings, parser, fetchers, init=init.values, gate=gate)
        frontier = DueFrontier()
        health = HealthMonitor(settings)
        stats = WorkerStats()  # the process's, all kinds: sent with each heartbeat
        workers = [Worker(settings, pool, committer, gate, plans, frontier, k, n, health, stats)
                   for k, n in kinds.items()]
        runners = [TaskRunner(settings, pool, gate, fetchers[k], k, init.values) for k in kinds]
        log.info("worker ready: %s", ", ".join(
            f"{bus.work_subject(settings, w.kind)} (concurrency {n})"
            for w, n in zip(workers, kinds.values(), strict=True)))
        serves = [asyncio.create_task(w.serve(subs[w.kind], stop), name=f"serve {w.kind}")
                  for w in workers]
        serves += [asyncio.create_task(r.serve(task_subs[k], stop), name=f"tasks {k}")
                   for r, k in zip(runners, kinds, strict=True)]
        beat = asyncio.create_task(heartbeat(settings, pool, list(kinds), stop,
                                             on_beat=sdnotify.watchdog, stats=stats.snapshot,
                                             live=gate.live_workers),
                                   name="heartbeat")
        idle = asyncio.create_task(plans.run_idle_close(), name="output idle close")
        watch = asyncio.create_task(health.watch(), name="health")
        sdnotify.ready()
        try:
            await bus.supervise([*serves, commit_task, release_task, beat, idle, watch], stop)
        except RuntimeError as e:
            if isinstance(e.__cause__, WorkerDegraded):  # logged once by the monitor
                raise e.__cause__ from None
            raise
        finally:
            sdnotify.stopping()
            log.info("worker stopping: finishing %d visits in flight",
                     sum(len(w.tasks) for w in workers))
            await asyncio.wait(serves, timeout=2)
            for s in serves:
                s.cancel()
            watch.cancel()
            await asyncio.gather(*(w.drain(settings.shutdown_timeout) for w in workers),
                                 *(r.drain(settings.shutdown_timeout) for r in runners))
            await asyncio.gather(*(w.pipeline.sessions.aclose() for w in workers))  # benches
            idle.cancel()
            await asyncio.gather(idle, return_exceptions=True)
            await plans.aclose()  # the outputs' open files (tar end blocks ...), each isolated
            await gate.close()  # robots.txt fetches in flight: their claims simply expire
            commit_task.cancel()
            await asyncio.wait([beat], timeout=2)  # forgets this worker on a clean stop
            beat.cancel()
            await asyncio.sleep(0.05)  # let the last host leases go back
            release_task.cancel()
            await asyncio.gather(*serves, commit_task, release_task, beat, watch,
                                 return_exceptions=True)


JobState = tuple[str, tuple[str, ...]]  # a job's state and deny patterns (``jobs.job_state``)


class JobStates:
    """Jobs' states as ``read`` gave them, each read again once ``JOB_STATE_TTL`` old. One read
    per job at a time: the visits that find a job's state due while it is read wait for that
    read. (Up to a worker's 64 queued visits find it due at once; each reading its own cost the
    bench's crawl 5,201 reads where about 250 are due.) A read that gives None (it failed) is
    not kept."""

    def __init__(self, read: Callable[[int], Awaitable[JobState | None]]) -> None:
        self._read = read
        self._known: dict[int, tuple[float, JobState]] = {}  # job id -> (when read, state)
        self._reading: dict[int, asyncio.Future[JobState | None]] = {}

    async def get(self, job_id: int) -> JobState | None:
        known = self._known.get(job_id)
        if known is not None and time.monotonic() - known[0] < JOB_STATE_TTL:
            return known[1]
        reading = self._reading.get(job_id)
        if reading is None:
            reading = self._reading[job_id] = asyncio.ensure_future(self._fresh(job_id))
        return await asyncio.shield(reading)  # one waiter cancelled: the read goes on

    async def _fresh(self, job_id: int) -> JobState | None:
        started = time.monotonic()
        try:
            state = await self._read(job_id)
        finally:
            del self._reading[job_id]
        if state is not None:
            if len(self._known) > 1024:
                self._known.clear()
            self._known[job_id] = (started, state)
        return state


def _staleness(state: str, deny: tuple[str, ...], url: str) -> str | None:
    """What to do with a visit planned while its job ran, given the job's ``state`` and
    ``deny`` patterns now: "drop" (cancelled, or the URL now denied), "hold" (paused), or None
    (fetch it)."""
    if state == "cancelled" or (deny and denied(deny, url)):
        return "drop"
    return "hold" if state == "paused" else None


async def _unhealthy(settings: Settings, why: str, stop: asyncio.Event) -> None:
    """A worker whose init failed: it subscribes to nothing, and says why until ``stop``:
    ``/readyz`` answers 503 with ``why``, its heartbeat serves no kind with ``health`` = why
    (so its kinds' visits wait for a healthy worker, and ``/workers`` shows it), and systemd
    hears READY with the status (its watchdog still fed: restarting would fail the same way)."""
    async with AsyncExitStack() as stack:
        pool = await stack.enter_async_context(open_pool(settings.database_url, min_size=1, max_size=2))
        nc = await stack.enter_async_context(bus.connect(
            settings.nats_url, "harvester-worker", options=NatsOptions.from_settings(settings)))
        await stack.enter_async_context(ops_http.serve(
            settings.metrics_addr, ops_http.readiness(pool, nc, lambda: why)))
        sdnotify.ready(f"unhealthy: {why}")
        beat = asyncio.create_task(heartbeat(settings, pool, [], stop, health=why,
                                             on_beat=sdnotify.watchdog), name="heartbeat")
        try:
            await bus.supervise([beat], stop)
        finally:
            await asyncio.wait([beat], timeout=2)  # forgets this worker on a clean stop
            beat.cancel()
            await asyncio.gather(beat, return_exceptions=True)
