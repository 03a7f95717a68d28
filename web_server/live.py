"""``LiveHub``: one poller per web server process for live status (issue 16).

Every ``liveInterval`` it runs one ``progress.sample`` for every unfinished job and every job a
client watches, whatever the number of clients; it keeps a minute of samples per job for the
rates, and pushes a watched job's status (the ``/status`` JSON, built once per change, not per
client) to its clients' queues. A queue holds only the latest snapshot: a slow client skips
states, it never makes the hub wait or grow."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
from aiohttp import web

from shared.config import Settings
from shared.db import progress
from shared.db.pool import RETRYABLE
from shared.errors import DependencyUnavailable
from web_server.deps import Deps

log = logging.getLogger(__name__)

WINDOW = 60.0  # seconds of samples the rates are taken over

Status = dict[str, Any]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Rates:
    pages_per_second: float    # processed pages
    fetched_per_second: float
    window: float              # seconds the rates were measured over (at most WINDOW)


@dataclass(frozen=True, slots=True)
class Snapshot:
    status: Status | None  # the /status JSON; None: the job is gone (deleted)
    completed: bool        # the last snapshot of the job: every job URL completed


class Subscription:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[Snapshot] = asyncio.Queue(maxsize=1)

    def offer(self, snap: Snapshot) -> None:
        if self.queue.full():  # only the latest matters
            self.queue.get_nowait()
        self.queue.put_nowait(snap)

    async def get(self, timeout: float) -> Snapshot | None:
        """The next snapshot, or None after ``timeout`` seconds without one."""
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return None


Build = Callable[[asyncpg.Connection, int, "LiveHub"], Awaitable[Status | None]]


# A cached read of a job's levels or hosts is kept at least this many times what it took.
CACHE_COST_SHARE = 50


class LiveHub:
    def __init__(self, deps: Deps, settings: Settings, build: Build) -> None:
        self.deps = deps
        self.interval = settings.live_interval
        self.build = build
        self.ticks = 0  # sample queries run (one per tick)
        self._subs: dict[int, set[Subscription]] = {}
        self._sent: dict[int, tuple[progress.Counters | None, Snapshot]] = {}
        self._history: dict[int, deque[tuple[float, int, int]]] = {}
        self._wake = asyncio.Event()
        self._cache: dict[tuple[str, int], tuple[float, Any]] = {}  # (until, value)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.tick()
            except (*RETRYABLE, DependencyUnavailable, asyncpg.PostgresError, OSError) as e:
                log.warning("live status: sample failed: %s", e)
            except Exception:  # a bug: logged, and the poller goes on
                log.exception("live status: tick failed")
            self._wake.clear()
            waits = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())}
            _, left = await asyncio.wait(waits, timeout=self.interval,
                                         return_when=asyncio.FIRST_COMPLETED)
            for w in left:
                w.cancel()

    async def tick(self) -> None:
        watched = list(self._subs)
        async with self.deps.acquire() as conn:
            counters = await progress.sample(conn, watched)
            self.ticks += 1
            now = asyncio.get_running_loop().time()
            for job_id, c in counters.items():
                hist = self._history.setdefault(job_id, deque())
                hist.append((now, c.processed, c.fetched))
                while len(hist) > 2 and hist[1][0] <= now - WINDOW:
                    hist.popleft()
            for job_id in set(self._history) - set(counters):
                del self._history[job_id]
            for key in [k for k, (until, _) in self._cache.items() if until <= now]:
                del self._cache[key]
            for job_id in watched:
                cur = counters.get(job_id)
                sent = self._sent.get(job_id)
                if sent is not None and sent[0] == cur:
                    continue  # nothing changed
                status = None if cur is None else await self.build(conn, job_id, self)
                snap = Snapshot(status, status is None or (cur is not None and cur.completed))
                self._sent[job_id] = (cur, snap)
                for sub in self._subs.get(job_id, ()):
                    sub.offer(snap)

    @contextmanager
    def subscribe(self, job_id: int) -> Iterator[Subscription]:
        """A subscription to the job's snapshots: the last one at once if there is one, then
        each change (the first within a tick)."""
        sub = Subscription()
        self._subs.setdefault(job_id, set()).add(sub)
        if (sent := self._sent.get(job_id)) is not None:
            sub.offer(sent[1])
        else:
            self._wake.set()
        try:
            yield sub
        finally:
            subs = self._subs[job_id]
            subs.discard(sub)
            if not subs:
                del self._subs[job_id]
                self._sent.pop(job_id, None)

    async def cached(self, name: str, job_id: int, fetch: Callable[[], Awaitable[T]]) -> T:
        """``fetch()``'s value, kept for ``liveInterval``, or ``CACHE_COST_SHARE`` times what
        it took when that is longer: /status polled often by many clients reads a job's levels
        and hosts (queries as large as its frontier) once an interval, and a big job's (30 ms
        at 50,000 pages, seconds at millions) no more than a small share of the time."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        hit = self._cache.get((name, job_id))
        if hit is not None and now < hit[0]:
            value: T = hit[1]
            return value
        value = await fetch()
        took = loop.time() - now
        self._cache[(name, job_id)] = (now + max(self.interval, CACHE_COST_SHARE * took), value)
        return value

    def rates(self, job_id: int) -> Rates | None:
        """Pages/s over the last minute of samples; None before two samples."""
        hist = self._history.get(job_id)
        if not hist or len(hist) < 2:
            return None
        (t0, p0, f0), (t1, p1, f1) = hist[0], hist[-1]
        if t1 <= t0:
            return None
        return Rates((p1 - p0) / (t1 - t0), (f1 - f0) / (t1 - t0), t1 - t0)

    def last(self, job_id: int) -> Snapshot | None:
        sent = self._sent.get(job_id)
        return None if sent is None else sent[1]


LIVE = web.AppKey("live", LiveHub)
