"""The host gate: before a worker fetches, robots.txt must allow the URL and the host must have a
free request slot, for the whole cluster (leases in PostgreSQL). Visits that cannot start within
``politeness_horizon`` are deferred in the frontier until the host is free, not held here, so a
slow or rate-limited host never ties up the worker.

One exception: a host with no delay between starts, at its request cap with leases of this
worker among those holding it. Its next free slot is one of this worker's requests ending, so
as many visits as this worker holds leases on the host wait here for those slots
(``Admission.queued``, ``HostGate.take_queued``), each handed the lease of a request of its host
that ended well (``release``), as Scrapy's downloader keeps a domain's requests in its slot's
queue, rather than going back to the frontier to be claimed, published, pulled and admitted
again 50 ms later (a churn of 15-30 % more visits than pages on a one-host crawl with more
worker slots than host slots)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

import aiohttp
import asyncpg

from shared import metrics
from shared.config import Settings
from shared.db import hosts
from shared.db.hosts import Release
from shared.db.pool import RETRYABLE
from shared.netguard import NetGuard, refused
from shared.robots import (
    BLOCKED,
    UNREACHABLE,
    RobotsCache,
    RobotsRules,
    agent_token,
    decode,
    rules_for,
)
from shared.streams import read_head
from shared.urls import host_key
from worker.extractors.sitemaps import parse_sitemap
from worker.fetchers.http import connect_error, fetch_budget

log = logging.getLogger(__name__)

Key = tuple[int, int]
ROBOTS_MAX_BYTES = 512 * 1024  # RFC 9309: parse at least 500 KiB
SOON = timedelta(seconds=0.05)  # a host at its request cap: ask again shortly
NOT_YET = "robots.txt not fetched yet"
BUSY = "no free slot on the host"
NO_GATE = "host gate unavailable (PostgreSQL)"
FIRST_ROBOTS_WAIT = timedelta(seconds=0.5)  # a host's first robots.txt is being fetched
# A visit waiting this long or longer for its start asks whether its host was paused meanwhile
# (a shorter wait was decided by the gate just now). The visits of a worker starting soon ask
# together: one query per PAUSE_CHECK at most.
PAUSE_CHECK = 0.05
# ... 2 * PAUSE_CHECK before its start, or PAUSE_LEAD before a start at least 2 * PAUSE_LEAD
# away: a lead that a stalled event loop or a slow statement on a loaded machine (hundreds of
# ms, seen in CI) does not use up, since a check not answered by the start lets the grant stand.
# A pause set within the lead is still heard if this worker set it (``_heard_pause``).
PAUSE_LEAD = 0.5
# A lease is handed from a request that ended to a visit queued for its host (``release``) as
# it is for this long after PostgreSQL granted (or renewed) it; older, it is renewed first
# (``hosts.renew``: refused while the host backs off), so a pause another worker set on the host
# (a 429 or 503 it met) is obeyed within this long, and the lease (``fetch_lease``: the fetch
# budget and 5 s) outlives a fetch started before then.
HANDOVER_AGE = 1.0
# Visits queued for a host's slots (``Admission.queued``), while this worker holds a lease on
# it: as many as its requests on the host, at the rate they ended in the last QUEUE_WINDOW
# seconds (or the window before), free in half of ``politeness_horizon``. So a slow host's
# visits, or a host none of whose requests ended lately, are deferred, not left holding the
# worker's slots, while a fast one keeps every slot this worker has busy.
QUEUE_WINDOW = 0.5
# robots.txt bodies this long or longer are parsed and matched in a thread: about 13 ms to parse.
OFF_LOOP_CHARS = 32 * 1024
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Slot:
    host: str
    token: datetime
    wait: float      # seconds to wait before starting the request
    start: datetime  # when it may start, on the database clock
    granted: float = -math.inf  # when PostgreSQL leased it (the event loop's clock)


@dataclass
class Admission:
    granted: dict[Key, Slot] = field(default_factory=dict)
    deferred: dict[Key, datetime] = field(default_factory=dict)  # due, on the database clock
    blocked: dict[Key, str] = field(default_factory=dict)        # reason
    failed: dict[Key, str] = field(default_factory=dict)  # no server to ask (the error)
    # waiting in this worker for the slot of one of its requests on the host (``take_queued``)
    queued: dict[Key, asyncio.Future[Slot | None]] = field(default_factory=dict)
    # how many were deferred, by why (the reasons of ``harvester_visits_deferred_total{why}``)
    why: Counter[str] = field(default_factory=Counter)


@dataclass
class _PauseBatch:
    """Pause checks of slots starting soon, sent together in one query at ``send_at``."""
    done: asyncio.Future[dict[tuple[str, datetime], datetime]]  # (host, start) -> paused until
    send_at: float  # on the loop's clock
    slots: list[tuple[Slot, float]] = field(default_factory=list)  # with its start (loop clock)
    hurry: asyncio.Event = field(default_factory=asyncio.Event)  # send_at moved sooner


@dataclass(frozen=True, slots=True)
class RobotsAnswer:
    """What a robots.txt request got: a status (and the body of a 2xx), or no answer."""
    status: int | None = None
    body: str | None = None
    unresolved: str | None = None  # no answer: the host's name did not resolve (why)

    @property
    def failed(self) -> bool:
        return self.status is None or self.status >= 500


_RENEW = object()  # a queued visit's answer: ask PostgreSQL for a slot


@dataclass(frozen=True, slots=True)
class _Aged:
    """A queued visit's answer: this slot, once its lease is renewed (``HostGate._renew``)."""
    slot: Slot


def _settle(waiting: asyncio.Future[Slot | None], value: Slot | None | object) -> bool:
    """Settle a queued visit's wait, unless it is over; whether it was."""
    if waiting.done():
        return False
    waiting.set_result(value)  # type: ignore[arg-type]
    return True


def _allowed(rules: RobotsRules, urls: list[str], agent: str) -> list[bool]:
    return [rules.allowed(u, agent) for u in urls]


def _parse_rules(status: int | None, body: str | None, host: str, agent: str) -> RobotsRules:
    rules = rules_for(status, body)
    rules.allowed(host + "/", agent)  # protego indexes the agent's rules on first use: now
    return rules


def guard_band(delay: float) -> float:
    """Extra spacing between granted starts, so that a worker sending its request a little late
    (event-loop or CPU scheduling) still leaves at least ``delay`` between arrivals at the host."""
    return min(0.05, delay / 10)


class HostGate:
    def __init__(self, settings: Settings, pool: asyncpg.Pool,
                 session: aiohttp.ClientSession, guard: NetGuard | None = None) -> None:
        self.settings = settings
        self.pool = pool
        self.session = session
        # The SSRF guard at admission (None: none here; the fetchers' sessions still refuse
        # the connection): a blocked host's visits are blocked before its robots.txt is read.
        self.guard = guard
        self.agent = agent_token(settings.user_agent)
        self.releases: asyncio.Queue[Release] = asyncio.Queue()
        self._robots_fetches: set[asyncio.Task[None]] = set()
        self._heard: dict[str, datetime] = {}  # Retry-After pauses this worker was told of
        self._rules = RobotsCache()  # robots.txt copies parsed, by host
        self._pause_batch: _PauseBatch | None = None  # pause checks being gathered
        self._pause_checks: set[asyncio.Task[None]] = set()
        self._held: Counter[str] = Counter()  # leases this worker holds, by host
        # Live workers serving a kind of this one's (the heartbeat's count; 1 until it is
        # known): a no-delay host's cap is shared among them (``_share``).
        self.workers = 1
        self._queued: dict[str, deque[asyncio.Future[Slot | None]]] = {}  # by host, in order
        self._seeking: Counter[str] = Counter()  # hosts a ``_wait_for_slot`` asks a lease of
        # host -> [window's start, requests of this worker on it ended in it, in the one before]
        self._ends: dict[str, list[float]] = {}

    async def admit(self, visits: dict[Key, str], unruled: Collection[Key] = ()) -> Admission:
        """Decide for each (visit -> url): start (after a wait), defer, block (the SSRF guard
        refuses its host's address, before robots.txt is read; robots.txt), or fail (its host
        has no server: the name does not resolve). robots.txt is not read for the ``unruled``
        visits (their source's ``obeys_robots`` is False)."""
        out = Admission()
        by_host: dict[str, list[Key]] = defaultdict(list)
        for key, url in visits.items():
            by_host[host_key(url)].append(key)
        if self.guard is not None:  # IP literals: at once; names: resolved together (cached)
            for host, reason in (await self.guard.refusals(by_host)).items():
                keys = by_host.pop(host)
                out.blocked.update(dict.fromkeys(keys, reason))
                metrics.count_blocked([reason] * len(keys))
        rules: dict[str, RobotsRules] = {}
        if self.settings.robots:
            ruled: dict[str, list[Key]] = by_host
            free: dict[str, list[Key]] | None = None
            if unruled:  # robots.txt only for the others (their hosts' Crawl-delay too)
                ruled, free = defaultdict(list), defaultdict(list)
                for host, ks in by_host.items():
                    for k in ks:
                        (free if k in unruled else ruled)[host].append(k)
            rules = await self._robots(list(ruled), out, ruled)
            for host, host_rules in rules.items():
                keys = ruled[host]
                allowed = await self._off_loop(host_rules.size, _allowed, host_rules,
                                               [visits[k] for k in keys], self.agent)
                for key, ok in zip(list(keys), allowed):
                    if not ok:
                        out.blocked[key] = BLOCKED
                        metrics.ROBOTS_BLOCKED.inc()
                        keys.remove(key)
            if free is not None:
                by_host = {h: ruled[h] + free[h] for h in by_host}
        spacing = {h: self._spacing(h, rules.get(h)) for h, ks in by_host.items() if ks}
        if not spacing:
            return out
        # A no-delay host's slots are asked for up to this worker's share of its cap: the
        # visits past it wait here for the slots its requests free (or are deferred).
        wants = {h: n for h in spacing
                 if (n := len(by_host[h]) if spacing[h] else
                     min(len(by_host[h]), self._share(h) - self._held[h])) > 0}
        if wants:
            db_now, grants = await self._lease(wants, {h: spacing[h] for h in wants})
        else:
            db_now, grants = datetime.now().astimezone(), []
        now = asyncio.get_running_loop().time()
        horizon = timedelta(seconds=self.settings.politeness_horizon)
        granted = {g.host: g for g in grants}
        for host, space in spacing.items():
            keys = by_host[host]
            g = granted.get(host) or hosts.Grant(host, [], [], db_now)  # not asked: its share held
            for key, start, token in zip(keys, g.starts, g.tokens):
                out.granted[key] = Slot(host, token, max(0.0, (start - db_now).total_seconds()),
                                        start, now)
            self._held[host] += len(g.starts)
            rest = keys[len(g.starts):]
            if not rest:
                continue
            why = "delay" if space else "cap"
            if why == "cap" and g.next_free - db_now > horizon:
                why = "paused"  # backing off
            elif why == "cap" and self._held[host] > 0:
                # cap-bound, holding leases there: queued for the slots they free soon
                ending = self._ending(host, now)
                room = max(0, math.floor(ending * self.settings.politeness_horizon / 2
                                         / QUEUE_WINDOW) - len(self._waiting(host)))
                for key in rest[:room]:
                    out.queued[key] = self._queue(host)
                rest = rest[room:]
                why = "cap_queue" if ending else "cap_idle"
            if rest:
                out.why[why] += len(rest)
            # Delay-bound: the i-th waiting visit gets the i-th next start. Cap-bound (no delay):
            # a slot frees when any request ends, so all of them ask again soon.
            gap = timedelta(seconds=space)
            for i, key in enumerate(rest):
                out.deferred[key] = max(g.next_free + i * gap, db_now + SOON)
        return out

    def live_workers(self, n: int) -> None:
        """The heartbeat's count of live workers serving a kind of this one's (this one
        among them)."""
        self.workers = max(1, n)

    def _share(self, host: str) -> int:
        """The leases on ``host`` this worker keeps for its own visits (``admit``, ``release``):
        its cap shared by the live workers (``workers``, from the heartbeat), so one worker
        handing its slots on to its queued visits does not keep the others from the host."""
        return -(-self.settings.host_limit(host).concurrency // self.workers)

    def _waiting(self, host: str) -> deque[asyncio.Future[Slot | None]]:
        """The visits queued for ``host`` still waiting (those done or given up dropped)."""
        q = self._queued.get(host)
        if q is None:
            return deque()
        while q and q[0].done():
            q.popleft()
        if not q:
            del self._queued[host]
        return q

    def _queue(self, host: str) -> asyncio.Future[Slot | None]:
        """A place in ``host``'s queue, given up (None) after ``politeness_horizon``."""
        loop = asyncio.get_running_loop()
        waiting: asyncio.Future[Slot | None] = loop.create_future()
        self._queued.setdefault(host, deque()).append(waiting)
        loop.call_later(self.settings.politeness_horizon, _settle, waiting, None)
        return waiting

    def _wake(self, host: str, value: Slot | None | object, every: bool = False) -> bool:
        """Settle the first visit queued for ``host`` (``every``: all of them) with ``value``;
        whether one was waiting."""
        q = self._waiting(host)
        woken = False
        while q and not (woken and not every):
            woken = _settle(q.popleft(), value) or woken
        return woken

    async def take_queued(self, host: str, waiting: asyncio.Future[Slot | None],
                          deadline: float) -> Slot | None:
        """The slot of a visit queued for ``host`` (``Admission.queued``): handed on by a
        request of this worker that ended (its lease renewed past ``HANDOVER_AGE``), or leased
        anew by ``deadline`` (the event loop's clock) when a retry of this worker asked for one
        first; None: no slot in time, or the host in trouble or paused (the visit goes back to
        the frontier)."""
        try:
            got = await waiting
        except asyncio.CancelledError:
            self.unqueue(waiting)
            raise
        outcome = "handed"
        try:
            if isinstance(got, _Aged):
                got = await self._renew(got.slot)
            elif got is _RENEW:
                outcome = "leased"
                got = await self._wait_for_slot(host, None, deadline)
        except (*RETRYABLE, asyncpg.PostgresError) as e:
            log.warning("no slot on %s for a queued visit (%s)", host, e)
            got = None
        metrics.HOST_QUEUE.labels("back" if got is None else outcome).inc()
        return got

    def unqueue(self, waiting: asyncio.Future[Slot | None]) -> None:
        """Give up a place in a host's queue (its visit is not run): a slot handed on to it
        meanwhile goes back."""
        if not waiting.done():
            waiting.cancel()
            return
        got = None if waiting.cancelled() else waiting.result()
        if isinstance(got, Slot | _Aged):
            self.give_back(got if isinstance(got, Slot) else got.slot)

    async def _renew(self, slot: Slot) -> Slot | None:
        """The lease of ``slot``, handed on past ``HANDOVER_AGE``, renewed: a slot with a new
        token; None (the lease given back) if the host backs off meanwhile or it expired: the
        host's other queued visits then go back to the frontier too."""
        try:
            async with self.pool.acquire() as conn:
                token = await hosts.renew(conn, slot.host, slot.token, self.settings.fetch_lease)
        except BaseException:
            self.give_back(slot)
            raise
        if token is None:
            self._wake(slot.host, None, every=True)
            self.give_back(slot)
            return None
        return Slot(slot.host, token, 0.0, datetime.now().astimezone(),
                    asyncio.get_running_loop().time())

    async def wait_start(self, slot: Slot) -> datetime | None:
        """Wait until the slot's start. None: make the request now. A time: the host was paused
        meanwhile (a 429 or 503 told this or another worker to wait, or a host in trouble)
        until then: do not make the request; ``give_back`` the slot and put the visit back
        in the frontier until then."""
        loop = asyncio.get_running_loop()
        start = loop.time() + slot.wait
        if slot.wait >= PAUSE_CHECK:
            lead = PAUSE_LEAD if slot.wait >= 2 * PAUSE_LEAD else 2 * PAUSE_CHECK
            await asyncio.sleep(max(0.0, slot.wait - lead))
            paused = self._heard_pause(slot) or await self._paused_in_db(slot, start)
            if paused is not None:
                return paused
        await asyncio.sleep(max(0.0, start - loop.time()))
        return self._heard_pause(slot)

    async def _paused_in_db(self, slot: Slot, start: float) -> datetime | None:
        """The host's pause past the slot's start, as PostgreSQL has it, asked together with
        the other slots of this worker starting soon. None too when that cannot be told before
        ``start`` (on the loop's clock): the grant stands, rather than the request leaving
        late."""
        loop = asyncio.get_running_loop()
        batch = self._pause_batch
        if batch is None:
            batch = self._pause_batch = _PauseBatch(loop.create_future(),
                                                    loop.time() + PAUSE_CHECK)
            task = asyncio.create_task(self._check_pauses(batch))
            self._pause_checks.add(task)
            task.add_done_callback(self._pause_checks.discard)
        batch.slots.append((slot, start))
        if start - PAUSE_CHECK / 2 < batch.send_at:  # sooner than the batch would go: hurry
            batch.send_at = start - PAUSE_CHECK / 2
            batch.hurry.set()
        try:
            found = await asyncio.wait_for(asyncio.shield(batch.done),
                                           max(0.0, start - loop.time()))
        except TimeoutError:  # not known by the start
            return None
        return found.get((slot.host, slot.start))

    async def _check_pauses(self, batch: _PauseBatch) -> None:
        """Send a batch of pause checks at its time, in one statement given up when the last
        of its slots starts (each slot stops waiting for it at its own start)."""
        loop = asyncio.get_running_loop()
        found: dict[tuple[str, datetime], datetime] = {}
        try:
            while (early := batch.send_at - loop.time()) > 0:
                batch.hurry.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(batch.hurry.wait(), early)
            if self._pause_batch is batch:
                self._pause_batch = None  # later checks gather in the next batch
            last = max(start for _, start in batch.slots)
            if (left := last - loop.time()) > 0:
                async with self.pool.acquire(timeout=left) as conn:
                    found = await hosts.paused_until(
                        conn, sorted({(s.host, s.start) for s, _ in batch.slots}),
                        timeout=max(0.001, last - loop.time()))
        except TimeoutError:  # no connection, or no answer, before the last start
            pass
        except (*RETRYABLE, asyncpg.PostgresError) as e:
            log.warning("cannot check %d host slots for a pause (%s)", len(batch.slots), e)
        finally:
            if self._pause_batch is batch:
                self._pause_batch = None
            if not batch.done.done():
                batch.done.set_result(found)

    def _heard_pause(self, slot: Slot) -> datetime | None:
        """A pause this worker was told of (perhaps not yet written to the host row), if it
        began after the slot was granted."""
        until = self._heard.get(slot.host)
        if until is None or until <= datetime.now().astimezone():
            self._heard.pop(slot.host, None)
            return None
        return until if until > slot.start else None

    def _spacing(self, host: str, rules: RobotsRules | None) -> float:
        """Seconds between request starts on ``host``, for every kind of request to it: its
        delay, raised by its robots.txt's Crawl-delay (capped), plus the guard band."""
        delay = self.settings.host_limit(host).delay
        crawl_delay = rules.crawl_delay(self.agent) if rules is not None else None
        if crawl_delay is not None:
            delay = max(delay, min(crawl_delay, self.settings.max_crawl_delay))
        return delay + guard_band(delay)

    async def _lease(self, wants: dict[str, int], spacing: dict[str, float],
                     horizon: float | None = None) -> tuple[datetime, list[hosts.Grant]]:
        """Lease up to ``wants[host]`` request slots per host (one round trip; two when slots
        this worker gave back are still to be returned), starting within ``horizon`` seconds
        (None: ``politeness_horizon``)."""
        s = self.settings
        # The slots this worker gave back and the release loop has not returned yet go first,
        # on the same connection: a host whose requests of this worker just ended is seen with
        # those slots free, not at its cap (whose visits would be deferred for nothing).
        async with self.pool.acquire() as conn:
            returning = []
            while not self.releases.empty():
                returning.append(self.releases.get_nowait())
            if returning:
                try:
                    await hosts.release(conn, returning, s.host_backoff_base, s.host_backoff_cap)
                except (*RETRYABLE, asyncpg.PostgresError) as e:
                    log.warning("could not release %d host leases (%s); trying again",
                                len(returning), e)
                    for r in returning:  # the release loop tries them again
                        self.releases.put_nowait(r)
            return await hosts.acquire(
                conn, wants, {h: s.host_limit(h).concurrency for h in wants}, spacing,
                s.fetch_lease, s.politeness_horizon if horizon is None else horizon)

    async def admit_hop(self, url: str, slot: bool, deadline: float, *,
                        horizon: float | None = None, robots: bool = True) -> Slot | str | None:
        """A redirect hop goes through the same gate as a visit: robots.txt must allow ``url``
        and, if ``slot`` (another host than the page's own), its host must give a request slot.
        Both are waited for here, since the fetch is under way, until the fetch's ``deadline``
        (on the event loop's clock). Returns the slot (its wait spent; release it after the
        request), None when no slot was asked for, or why not: the SSRF guard's ``blocked:
        ...`` reason, ``BLOCKED``/``UNREACHABLE`` (final), ``NOT_YET``/``BUSY``. With ``horizon`` (a retry), the slot may be leased that
        far ahead, and is asked for every 50 ms while the host is at its cap: the retry takes
        the host's next free start, before visits not yet granted one. A host whose next free
        start is past the deadline (paused) is not asked again: the answer is ``BUSY`` at
        once. ``robots`` False: robots.txt is not read (a source that does not obey it)."""
        try:
            return await self._admit_hop(url, slot, deadline, horizon, robots)
        except (*RETRYABLE, asyncpg.PostgresError) as e:  # fetch() never raises: try later
            log.warning("redirect to %s not admitted (%s)", url, e)
            return NO_GATE

    async def _admit_hop(self, url: str, slot: bool, deadline: float,
                         horizon: float | None = None, robots: bool = True) -> Slot | str | None:
        host = host_key(url)
        rules = None
        if self.guard is not None:  # a redirect to a blocked host: refused, not connected to
            reason = await self.guard.check_url(url)
            if reason is not None:  # counted with the visit it ends (Pipeline._steps)
                return reason
        if self.settings.robots and robots:
            while True:
                out, key = Admission(), (0, 0)
                rules = (await self._robots([host], out, {host: [key]})).get(host)
                if rules is not None or key in out.blocked or key in out.failed:
                    break
                if asyncio.get_running_loop().time() >= deadline:
                    return NOT_YET
                await asyncio.sleep(0.1)  # being fetched (perhaps by us, in the background)
            if rules is None:
                return out.blocked.get(key) or out.failed[key]
            if not rules.allowed(url, self.agent):
                return BLOCKED
        if not slot:
            return None
        return await self._wait_for_slot(host, rules, deadline, horizon) or BUSY

    async def _wait_for_slot(self, host: str, rules: RobotsRules | None, deadline: float,
                             horizon: float | None = None) -> Slot | None:
        """Lease one request slot on ``host`` and wait until it starts; None at ``deadline``
        (on the event loop's clock), or at once if the host's next free start is later. While
        the host is at its request cap the slot is asked for every 50 ms, else again at the
        next free start. A slot whose host is paused before its start is given back, and the
        wait goes on."""
        self._seeking[host] += 1  # the slots this worker's requests free go back meanwhile
        try:
            return await self._seek_slot(host, rules, deadline, horizon)
        finally:
            self._seeking -= Counter({host: 1})

    async def _seek_slot(self, host: str, rules: RobotsRules | None, deadline: float,
                         horizon: float | None) -> Slot | None:
        loop = asyncio.get_running_loop()
        spacing = {host: self._spacing(host, rules)}
        while True:
            db_now, grants = await self._lease({host: 1}, spacing, horizon)
            grant = next((g for g in grants if g.host == host), None)
            if grant is not None and grant.starts:
                self._held[host] += 1
                wait = max(0.0, (grant.starts[0] - db_now).total_seconds())
                slot = Slot(host, grant.tokens[0], wait, grant.starts[0], loop.time())
                if loop.time() + wait > deadline:  # it would start too late
                    self.give_back(slot)
                    return None
                try:
                    paused = await self.wait_start(slot)
                except asyncio.CancelledError:
                    self.give_back(slot)
                    raise
                if paused is None:
                    return replace(slot, wait=0.0)
                self.give_back(slot)
                continue
            left = deadline - loop.time()
            free_in = (grant.next_free - db_now).total_seconds() if grant is not None else 0.0
            if left <= 0 or free_in > left:  # no start before the deadline (a paused host):
                return None                  # the next free start only ever moves later
            if free_in <= (self.settings.politeness_horizon if horizon is None else horizon):
                # at its request cap: a slot frees when any request ends, so ask again soon
                await asyncio.sleep(SOON.total_seconds())
            else:  # booked or paused until then: nothing to ask for before it
                await asyncio.sleep(free_in)

    async def _robots(self, names: list[str], out: Admission,
                      by_host: dict[str, list[Key]]) -> dict[str, RobotsRules]:
        """Rules for each host whose robots.txt is known; visits of the others are deferred
        (being fetched, or unreachable for now) or blocked (unreachable too many times)."""
        s = self.settings
        now = datetime.now().astimezone()
        parsed = self._rules.known(names)
        async with self.pool.acquire() as conn:
            known = await hosts.robots(conn, names, {h: f for h, (f, _) in parsed.items()})
            stale = [h for h in names if (r := known.get(h)) is None or r.fetched_on is None
                     or (now - r.fetched_on).total_seconds() >= s.robots_max_age]
            mine = await hosts.claim_robots_fetches(
                conn, stale, s.robots_max_age, s.fetch_lease + s.read_timeout) if stale else set()
        for host in sorted(mine):  # fetched in the background: this dispatch does not wait
            task = asyncio.create_task(self._refresh_robots(host), name=f"robots.txt of {host}")
            self._robots_fetches.add(task)
            task.add_done_callback(self._robots_fetches.discard)
        rules: dict[str, RobotsRules] = {}
        for host in names:
            r = known.get(host)
            if r is not None and r.fetched_on is not None:  # fresh, or the last good copy
                rules[host] = await self._parse(r, parsed.get(host))
            elif r is not None and r.failures >= s.robots_max_failures:
                # no server at all (its name does not resolve): nothing to block, the visits fail
                verdict = out.failed if r.unresolved else out.blocked
                for key in by_host[host]:
                    verdict[key] = r.unresolved or UNREACHABLE
                by_host[host] = []
            else:  # being fetched for the first time, or failing for now
                failures = r.failures if r is not None else 0
                due = now + (timedelta(seconds=min(60.0, 2.0 ** failures)) if failures
                             else FIRST_ROBOTS_WAIT)
                for key in by_host[host]:
                    out.deferred[key] = due
                out.why["robots"] += len(by_host[host])
                by_host[host] = []
        return rules

    async def _parse(self, r: hosts.Robots,
                     parsed: tuple[datetime, RobotsRules] | None) -> RobotsRules:
        """The rules of the host's copy ``r``: those parsed already (its body was not read
        again), else parsed now (a big body off the event loop) and kept."""
        assert r.fetched_on is not None
        if parsed is not None and parsed[0] == r.fetched_on:
            return parsed[1]
        rules = await self._off_loop(len(r.body or ""), _parse_rules, r.status, r.body,
                                     r.host, self.agent)
        self._rules.put(r.host, r.fetched_on, rules)
        return rules

    @staticmethod
    async def _off_loop(size: int, work: Callable[..., T], *args: Any) -> T:
        """``work(*args)`` on the event loop if ``size`` (characters of robots.txt) is small,
        else in a thread, so that a big robots.txt never holds up the loop."""
        if size < OFF_LOOP_CHARS:
            return work(*args)
        return await asyncio.to_thread(work, *args)

    async def _refresh_robots(self, host: str) -> None:
        """Fetch and store a host's robots.txt (this worker holds the claim), in one of the
        host's request slots like any request to it. Without a slot in time, the claim is
        given back; a fetch that fails in any way counts as a failure of the host's robots.txt."""
        s = self.settings
        deadline = asyncio.get_running_loop().time() + s.read_timeout
        slot: Slot | None = None
        answer = RobotsAnswer()
        try:
            slot = await self._wait_for_slot(host, None, deadline)  # no Crawl-delay known yet
            if slot is None:
                async with self.pool.acquire() as conn:
                    await hosts.unclaim_robots_fetch(conn, host)
                return
            try:
                answer = await self._fetch_robots(host)
            except Exception:  # a bug must not leave the host waiting on a claim forever
                log.exception("robots.txt of %s: fetch failed", host)
            answer = await self._store_robots(host, answer)
        except (*RETRYABLE, asyncpg.PostgresError) as e:
            log.warning("robots.txt of %s not stored (%s); it will be fetched again", host, e)
        finally:
            if slot is not None:
                self.release(slot, trouble=answer.failed, retry_after=None)

    async def _store_robots(self, host: str, answer: RobotsAnswer) -> RobotsAnswer:
        """Store a robots.txt answer; one that cannot be stored is counted as a failure instead
        (so a host with no good copy is in the end given up on, not waited for forever).
        Returns what was stored."""
        s = self.settings
        try:
            async with self.pool.acquire() as conn:
                await hosts.store_robots(conn, host, answer.status, answer.body,
                                         s.robots_max_failures, unresolved=answer.unresolved)
            return answer
        except (*RETRYABLE, asyncpg.PostgresError) as e:
            if answer.failed:
                raise  # a failure already: nothing else to count it as
            log.warning("robots.txt of %s (HTTP %s) not stored (%s): counted as a failure",
                        host, answer.status, e)
        async with self.pool.acquire() as conn:
            await hosts.store_robots(conn, host, None, None, s.robots_max_failures)
        return RobotsAnswer()

    async def close(self) -> None:
        """Stop the robots.txt fetches in flight (their claims expire; others fetch again)."""
        for task in [*self._robots_fetches, *self._pause_checks]:
            task.cancel()
        await asyncio.gather(*self._robots_fetches, *self._pause_checks, return_exceptions=True)

    def _whole_fetch(self) -> aiohttp.ClientTimeout:
        """One deadline for a whole robots.txt or sitemap request, its redirects and its body
        included (``fetch_budget``: the http fetcher's), whatever the session's own timeouts:
        a server trickling a byte per ``readTimeout`` cannot hold the request past it."""
        s = self.settings
        return aiohttp.ClientTimeout(total=fetch_budget(s), sock_connect=s.connect_timeout,
                                     sock_read=s.read_timeout)

    async def _fetch_robots(self, host: str) -> RobotsAnswer:
        """A host's robots.txt. No answer in time (a timeout, the whole request's deadline
        included) is a failure, as an unreachable server is (``RobotsAnswer.failed``)."""
        try:
            async with self.session.get(host + "/robots.txt", allow_redirects=True,
                                        max_redirects=5, timeout=self._whole_fetch()) as resp:
                text = decode(await read_head(resp.content, ROBOTS_MAX_BYTES), resp.charset)
                log.info("robots.txt of %s: %d", host, resp.status)
                return RobotsAnswer(resp.status, text if resp.status < 300 else None)
        except aiohttp.ClientConnectorDNSError as e:
            log.info("robots.txt of %s: %s", host, e)
            if refused(e) is not None:  # a redirect to a refused address
                return RobotsAnswer()
            return RobotsAnswer(unresolved=connect_error(e))
        except (TimeoutError, aiohttp.ClientError, ValueError) as e:
            log.info("robots.txt of %s unreachable: %s", host, e)
            return RobotsAnswer()

    async def sitemap_urls(self, host: str, limit: int = 50_000, max_sitemaps: int = 10) -> list[str]:
        """Pages listed by the sitemaps that the host's robots.txt names (indexes followed one
        level down); at most ``max_sitemaps`` sitemap requests. Never raises: without
        PostgreSQL, what was read so far."""
        urls: list[str] = []
        try:
            parsed = self._rules.known([host]).get(host)
            async with self.pool.acquire() as conn:
                known = (await hosts.robots(conn, [host], {host: parsed[0]} if parsed else {})
                         ).get(host)
            if known is None or known.fetched_on is None:
                return []
            rules = await self._parse(known, parsed)
            todo = rules.sitemaps()
            for n, where in enumerate(todo):
                if n >= max_sitemaps or len(urls) >= limit:
                    break
                # a sitemap on the page's own host keeps to its Crawl-delay too
                body = await self._fetch_sitemap(where, rules if host_key(where) == host else None)
                if body is None:
                    continue
                found = await parse_sitemap(body, where, self.settings.max_body_bytes)
                urls += found.urls
                if n < 1:  # an index at the top level: read its sitemaps too
                    todo += found.sitemaps
        except (*RETRYABLE, asyncpg.PostgresError) as e:
            log.warning("sitemaps of %s: %s; %d pages read", host, e, len(urls))
        return urls[:limit]

    async def _fetch_sitemap(self, where: str, rules: RobotsRules | None) -> bytes | None:
        """One sitemap, in a request slot of its host (None: not there, blocked by the SSRF
        guard, no slot in time, or not read by the request's deadline)."""
        s = self.settings
        if self.guard is not None:
            reason = await self.guard.check_url(where)
            if reason is not None:
                log.info("sitemap %s skipped: %s", where, reason)
                metrics.count_blocked([reason])
                return None
        slot = await self._wait_for_slot(host_key(where), rules,
                                         asyncio.get_running_loop().time() + s.read_timeout)
        if slot is None:
            log.info("sitemap %s skipped: no free slot on its host", where)
            return None
        trouble = True
        try:
            async with self.session.get(where, allow_redirects=True, max_redirects=5,
                                        timeout=self._whole_fetch()) as resp:
                trouble = resp.status in (429, 503) or resp.status >= 500
                if resp.status != 200:
                    return None
                return await read_head(resp.content, s.max_body_bytes)
        except (TimeoutError, aiohttp.ClientError, ValueError) as e:
            log.info("sitemap %s unreachable: %s", where, e)
            return None
        finally:
            self.release(slot, trouble, retry_after=None)

    def release(self, slot: Slot, trouble: bool, retry_after: float | None) -> None:
        """Give a slot back after its request: ``trouble`` (a 429, a 503, no answer) backs the
        host off, for ``retry_after`` seconds if the host said so; a good answer does not.

        After a good answer the slot goes to the first visit queued for the host
        (``take_queued``), the lease unchanged, if PostgreSQL granted it less than
        ``HANDOVER_AGE`` ago, else once renewed, unless something of this worker is asking
        PostgreSQL for one (a retry, a robots.txt fetch, a redirect hop: they come first):
        then it goes back and that visit asks for a new one. Trouble sends every visit queued for the host back to the
        frontier: it may be backing off."""
        self._end(slot.host)
        over = self._held[slot.host] > self._share(slot.host)  # the others may want it
        if not trouble and not over and self._hand_on(slot):
            return
        self._held -= Counter({slot.host: 1})
        self.releases.put_nowait(Release(slot.host, slot.token, trouble, retry_after))
        if trouble or not over:  # (over its share: the queued visits wait for the next one)
            self._wake(slot.host, None if trouble else _RENEW, every=trouble)
        if trouble:
            metrics.HOST_BACKOFFS.inc()
        if trouble and retry_after:
            now = datetime.now().astimezone()
            if len(self._heard) >= 1024:  # forget the pauses over
                self._heard = {h: t for h, t in self._heard.items() if t > now}
            until = now + timedelta(seconds=retry_after)
            self._heard[slot.host] = max(until, self._heard.get(slot.host, until))

    def give_back(self, slot: Slot) -> None:
        """Give back a slot whose request was never made (it says nothing about the host; it
        may be paused: a visit queued for it asks PostgreSQL for a new one)."""
        self._held -= Counter({slot.host: 1})
        self.releases.put_nowait(Release(slot.host, slot.token, used=False))
        self._wake(slot.host, _RENEW)

    def _end(self, host: str) -> None:
        """Count a request of this worker on ``host`` that ended now (``_ending``)."""
        now = asyncio.get_running_loop().time()
        e = self._ends.get(host)
        if e is None or now - e[0] >= 2 * QUEUE_WINDOW:
            if len(self._ends) >= 4096:  # forget the hosts not heard of lately
                self._ends = {h: x for h, x in self._ends.items()
                              if now - x[0] < 2 * QUEUE_WINDOW}
            self._ends[host] = [now, 1, 0]
        elif now - e[0] >= QUEUE_WINDOW:
            e[:] = [now, 1, e[1]]
        else:
            e[1] += 1

    def _ending(self, host: str, now: float) -> float:
        """Requests of this worker on ``host`` that ended in the last ``QUEUE_WINDOW`` seconds
        (or the window before, the larger): the rate its slots free at."""
        e = self._ends.get(host)
        if e is None or now - e[0] >= 2 * QUEUE_WINDOW:
            return 0
        return e[1] if now - e[0] >= QUEUE_WINDOW else max(e[1], e[2])

    def _hand_on(self, slot: Slot) -> bool:
        """Hand the slot of a request that ended well to the first visit queued for its host
        (``release``); whether it was."""
        if slot.host not in self._queued or self._seeking[slot.host]:
            return False
        if asyncio.get_running_loop().time() - slot.granted >= HANDOVER_AGE:
            return self._wake(slot.host, _Aged(slot))  # renewed by the visit it goes to
        return self._wake(slot.host, replace(slot, wait=0.0, start=datetime.now().astimezone()))

    async def run_releases(self) -> None:
        """Return leases in batches. A batch that cannot be returned is tried again, with what
        arrived meanwhile, after 0.05 s, 0.1 s ... at most 2 s apart, for as long as a lease
        lasts (``fetch_lease``); by then its leases have expired by themselves."""
        loop = asyncio.get_running_loop()
        held: list[Release] = []
        delay = 0.05
        give_up: float | None = None
        while True:
            if not held:
                held.append(await self.releases.get())
                await asyncio.sleep(0.01)
            while not self.releases.empty():
                held.append(self.releases.get_nowait())
            try:
                async with self.pool.acquire() as conn:
                    await hosts.release(conn, held, self.settings.host_backoff_base,
                                        self.settings.host_backoff_cap)
            except (*RETRYABLE, asyncpg.PostgresError) as e:
                if give_up is None:
                    give_up = loop.time() + self.settings.fetch_lease
                    log.warning("could not release %d host leases (%s); trying again",
                                len(held), e)
                if loop.time() < give_up:
                    await asyncio.sleep(delay)
                    delay = min(2.0, delay * 2)
                    continue
                log.warning("gave up releasing %d host leases (%s); they have expired",
                            len(held), e)
            held, delay, give_up = [], 0.05, None
