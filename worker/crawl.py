"""The worker: pulls visits from the work queue, fetches many at once, retries what may succeed
later (after a backoff, in the host's next free slot), has the pages' links extracted off the
event loop (``worker.extractors.lanes``), and commits the effects of finished visits in batches: one
transaction for many pages, acked only after it commits."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import aiohttp
import asyncpg
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from shared import bus
from shared.bus import Settle, Verdict
from shared.config import Settings
from shared.db import pages, visits
from shared.db.frontier import DueFrontier, Frontier
from shared.db.pool import RETRYABLE, in_transaction, open_pool
from shared.mime import guess_mime
from shared.model import Extraction, FetchedPage
from shared.urls import host_key
from worker.extractors.lanes import NoLane, ParseFailed, Parser
from worker.fetchers.http import Validators, fetch, open_session
from worker.gate import HostGate, Slot
from worker.retry import RetryDecision, RetryPolicy

log = logging.getLogger(__name__)

Key = tuple[int, int]
NO_LANE_DELAY = timedelta(seconds=30)  # a page no HTML parser process was free for waits this


@dataclass(slots=True)
class Done:
    """A visit ready to commit: fetched (``page`` set) or to answer from the store."""
    key: Key
    msgs: list[Msg]
    page: FetchedPage | None = None
    attempts: int = 0
    reason: str | None = None  # not fetched, and why (robots.txt)
    failure: str | None = None  # not processed: failed for good, and why (an exception)
    extra: tuple[str, ...] = ()  # URLs to follow that are not links on the page (sitemaps)
    settled: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


class Committer:
    """Gathers finished visits and commits them in batches, then settles their messages."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool) -> None:
        self.settings = settings
        self.pool = pool
        self.queue: asyncio.Queue[Done] = asyncio.Queue()

    async def submit(self, done: Done) -> None:
        await self.queue.put(done)
        await done.settled

    async def run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            deadline = time.monotonic() + self.settings.batch_wait
            while len(batch) < self.settings.batch_size:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), timeout))
                except TimeoutError:
                    break
            await self._commit(batch)

    async def _commit(self, batch: list[Done]) -> None:
        """Commit a batch, then settle its messages. A batch that fails with a data error
        (``_data_error``) is committed again in halves, down to the one visit at fault, which
        is recorded as failed with the error: one visit that cannot be stored never holds back
        the others, nor comes back forever. Any other error (PostgreSQL away, a schema older
        than the code, a bug) is no visit's fault: the whole batch is redelivered later."""
        await self._resolve(batch, await self._attempt(batch))

    async def _attempt(self, batch: list[Done]) -> Exception | None:
        try:
            await self._transaction(batch)
        except Exception as e:  # noqa: BLE001 - judged by _resolve
            return e
        return None

    async def _resolve(self, batch: list[Done], error: Exception | None) -> None:
        """Settle a batch whose transaction ended with ``error`` (None: it committed)."""
        if error is None:
            verdict = Settle(Verdict.ACK)
        elif not _data_error(error):
            log.warning("commit of %d visits failed (%s); they will be redelivered",
                        len(batch), _describe(error), exc_info=not _known(error))
            verdict = Settle(Verdict.RETRY, 2.0)
        elif len(batch) == 1:
            verdict = await self._fail(batch[0], error)
        else:
            log.warning("commit of %d visits failed (%s); committing them in halves",
                        len(batch), _describe(error))
            halves = (batch[:len(batch) // 2], batch[len(batch) // 2:])
            errors = [await self._attempt(h) for h in halves]
            if errors[0] is None or errors[1] is None:
                for h, e in zip(halves, errors, strict=True):
                    await self._resolve(h, e)
                return
            # Not one visit's fault (or more than one): splitting further would blame them all.
            log.warning("both halves of %d visits failed (%s); they will be redelivered",
                        len(batch), _describe(errors[1]))
            verdict = Settle(Verdict.RETRY, 2.0)
        await bus.settle_all((d.msgs for d in batch), verdict)
        for d in batch:
            if not d.settled.done():
                d.settled.set_result(None)

    async def _fail(self, done: Done, error: Exception) -> Settle:
        """Record a visit that cannot be committed as failed, with the error as its reason."""
        if isinstance(error, asyncpg.PostgresError):
            log.error("visit %s cannot be stored (%s); recorded as failed", done.key, error)
        else:  # a bug: keep its traceback
            log.error("visit %s cannot be stored; recorded as failed", done.key, exc_info=error)
        failed = replace(done, page=None, extra=(), reason=None,
                         failure=f"not stored: {_describe(error)}")
        try:
            await self._transaction([failed])
        except Exception as e:  # noqa: BLE001 - PostgreSQL away, or worse: the visit comes back
            log.warning("visit %s not recorded as failed either (%s); it will be redelivered",
                        done.key, e)
            return Settle(Verdict.RETRY, 5.0)
        return Settle(Verdict.ACK)

    async def _transaction(self, batch: list[Done]) -> None:
        keys = [d.key for d in batch]
        fetched = {d.key: d.page for d in batch if d.page is not None}
        tries = {d.key: d.attempts for d in batch}
        reasons = {d.key: r for d in batch if (r := d.reason or d.failure)}
        extra_urls = {d.key: d.extra for d in batch if d.extra}
        outcomes: dict[Key, visits.Outcome] = {d.key: _outcome(d) for d in batch}

        async def work(conn: asyncpg.Connection) -> None:
            locked = await visits.lock_pending(conn, keys)
            live = {p.key for p in locked}
            await pages.record_fetches(
                conn, [(pg, Extraction(pg.links)) for k, pg in fetched.items() if k in live])
            extra: dict[Key, list[int]] = {}
            if extra_urls:
                ids = await pages.upsert_urls(
                    conn, {u: guess_mime(u) for us in extra_urls.values() for u in us})
                extra = {k: [ids[u] for u in us] for k, us in extra_urls.items()}
            await visits.complete(conn, locked, outcomes, attempts=tries, reasons=reasons,
                                  extra=extra)

        await in_transaction(self.pool, work)


class Worker:
    def __init__(self, settings: Settings, pool: asyncpg.Pool, session: aiohttp.ClientSession,
                 committer: Committer, gate: HostGate, parser: Parser, frontier: Frontier,
                 policy: RetryPolicy | None = None) -> None:
        self.settings = settings
        self.frontier = frontier
        self.policy = policy if policy is not None else RetryPolicy.from_settings(settings)
        self.pool = pool
        self.session = session
        self.committer = committer
        self.gate = gate
        self.parser = parser
        self.slots = asyncio.Semaphore(settings.concurrency)
        self.tasks: set[asyncio.Task[None]] = set()
        self.retrying: Counter[str] = Counter()  # hosts with a retry waiting for a slot

    async def serve(self, sub: JetStreamContext.PullSubscription, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.slots.acquire()
            free = 1
            while free < self.settings.batch_size and not self.slots.locked():
                await self.slots.acquire()
                free += 1
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
            done = [k for k in by_key if k not in planned]  # a duplicate, or redelivered after a crash
            await bus.settle_all([by_key.pop(k) for k in done], Settle(Verdict.ACK))
            asking = {k: p.url for k, p in planned.items() if not p.cached and k in by_key}
            # A retry waiting here for a slot on the host comes first: a batch of the host's
            # visits, asking the moment a request ends, would otherwise take every freed slot.
            waiting = {k: self._after_retry(u) for k, u in asking.items()
                       if host_key(u) in self.retrying}
            admission = await self.gate.admit({k: u for k, u in asking.items() if k not in waiting})
            admission.deferred.update(waiting)
            if admission.deferred:  # back in the frontier until the host is free
                try:
                    async with self.pool.acquire() as conn:
                        await self.frontier.defer(conn, admission.deferred)
                except BaseException:  # the batch comes back: its slots are not used
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
                self._spawn(self._visit(p, ms, admission.granted[key]))
        return len(by_key)

    async def _commit_only(self, done: Done) -> None:
        try:
            await self.committer.submit(done)
        finally:
            self.slots.release()

    def _spawn(self, coro) -> None:  # type: ignore[no-untyped-def]
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _visit(self, p: visits.Planned, msgs: list[Msg], slot: Slot) -> None:
        """Fetch and commit one visit (or put it back in the frontier). Whatever goes wrong on
        the way is logged once, and the visit is recorded as failed with it: its messages are
        always settled, its slots always given back."""
        key = (p.job_id, p.url_id)
        hold = _Hold(self.slots)
        try:
            try:
                done = await self._fetch(p, msgs, slot, hold)
            except Exception as e:  # a bug, or the parser on hostile HTML: not retried
                log.exception("visit of %s failed", p.url)
                done = Done(key, msgs, attempts=p.attempts + 1, failure=_describe(e))
            if done is not None:
                await self.committer.submit(done)
        finally:
            hold.release()

    async def _fetch(self, p: visits.Planned, msgs: list[Msg], slot: Slot,
                     hold: _Hold) -> Done | None:
        """Fetch in the host slot, and again while a failure may mend (each retry when its log
        line says), then extract the page's links: the visit to commit, or None when it went
        back to the frontier."""
        key, url, attempt = (p.job_id, p.url_id), p.url, p.attempts + 1
        validators = Validators(p.etag, p.last_modified) if p.etag or p.last_modified else None
        sitemaps = p.sitemaps and p.level == 0 and p.max_level > 1
        while True:
            answer = await self._request(key, url, msgs, slot, validators, attempt)
            if answer is None:
                return None
            page, decision = answer
            if not decision.retry:
                break
            log.info("fetch %s failed (%s), attempt %d; retrying in %.2fs",
                     url, page.error or page.status, attempt, decision.delay)
            again = await self._wait_to_retry(key, url, msgs, decision.delay, hold)
            if again is None:
                return None
            slot, attempt = again, attempt + 1
        if page.html is not None:
            try:
                async with _heartbeat(msgs, self.settings.ack_wait / 3):
                    page = await self._links(page, url)
            except NoLane as e:  # not the page's fault: fetched again later, attempt not counted
                log.warning("links of %s not extracted now (%s); back in the frontier", url, e)
                await self._defer(key, msgs, datetime.now().astimezone() + NO_LANE_DELAY)
                return None
        log.info("fetched %s: %s", url, page.error or page.status)
        if self.settings.work_delay:
            await asyncio.sleep(self.settings.work_delay)
        extra: tuple[str, ...] = ()
        if sitemaps and self.settings.robots and not page.failed:
            async with _heartbeat(msgs, self.settings.ack_wait / 3):
                extra = tuple(await self.gate.sitemap_urls(host_key(url)))
        return Done(key, msgs, page, attempt, extra=extra)

    async def _request(self, key: Key, url: str, msgs: list[Msg], slot: Slot,
                       validators: Validators | None,
                       attempt: int) -> tuple[FetchedPage, RetryDecision] | None:
        """Wait for the slot's start, fetch, give the slot back: the page and the retry
        policy's decision on it. None: the host was paused meanwhile, and the visit went back
        to the frontier until the pause ends."""
        try:
            async with _heartbeat(msgs, self.settings.ack_wait / 3):
                paused = await self.gate.wait_start(slot)
                if paused is None:
                    page = await fetch(self.session, self.settings, key[1], url,  # never raises
                                       validators, hops=self.gate, policy=self.policy)
        except BaseException:  # shutting down (or a bug): free the slot for others now
            self.gate.release(slot, trouble=False, retry_after=None)
            raise
        if paused is not None:  # the host was paused while this visit waited (a Retry-After)
            self.gate.give_back(slot)
            await self._defer(key, msgs, paused)
            return None
        # Back the page's host off only for its own answer: after a redirect elsewhere, the
        # other host's trouble was already reported with that hop's slot.
        own = host_key(page.final_url or url) == host_key(url)
        decision = self.policy.decide(page, attempt)
        self.gate.release(slot, own and decision.trouble, decision.pause if own else None)
        return page, decision

    async def _wait_to_retry(self, key: Key, url: str, msgs: list[Msg], delay: float,
                             hold: _Hold) -> Slot | None:
        """Count the failed attempt, wait ``delay`` (giving the worker's concurrency slot to
        others meanwhile), then take the host's next request slot: the retry does not queue
        again behind the host's other visits, so it is made when logged, give or take the time
        to the host's next free start. None: the visit went back to the frontier instead (no
        slot in time, robots.txt now refuses, PostgreSQL away), its message settled."""
        try:
            async with self.pool.acquire() as conn:
                await self.frontier.count_attempt(conn, key)
        except (*RETRYABLE, asyncpg.PostgresError) as e:
            log.warning("cannot count a failed attempt of %s (%s); it will be redelivered",
                        key, e)
            await bus.settle_all([msgs], Settle(Verdict.RETRY, delay))
            return None
        async with _heartbeat(msgs, self.settings.ack_wait / 3):
            hold.release()
            await asyncio.sleep(delay)
            await hold.acquire()
            host = host_key(url)
            self.retrying[host] += 1
            try:
                admitted = await self._retry_slot(url)
            finally:
                self.retrying -= Counter({host: 1})
        if isinstance(admitted, Slot):
            return admitted
        log.info("retry of %s not made now (%s); back in the frontier", url, admitted)
        await self._defer(key, msgs, datetime.now().astimezone())
        return None

    async def _links(self, page: FetchedPage, url: str) -> FetchedPage:
        """The page with its links in place of its HTML, parsed off the event loop within the
        parse deadline; a page whose links cannot be extracted fails for good."""
        assert page.html is not None
        try:
            links = await self.parser.links(page.html, page.final_url or url, page.charset)
        except ParseFailed as e:
            return replace(page, html=None, error=f"links not extracted: {e}", permanent=True)
        return replace(page, html=None, links=tuple(links))

    async def _defer(self, key: Key, msgs: list[Msg], due: datetime) -> None:
        """Back to the frontier until ``due``, the attempt not counted; the message is done with."""
        try:
            async with self.pool.acquire() as conn:
                await self.frontier.defer(conn, {key: due})
            verdict = Settle(Verdict.ACK)
        except (*RETRYABLE, asyncpg.PostgresError) as e:
            log.warning("cannot put %s back (%s); it will be redelivered", key, e)
            verdict = Settle(Verdict.RETRY, 1.0)
        await bus.settle_all([msgs], verdict)

    async def _retry_slot(self, url: str) -> Slot | str | None:
        """A request slot for a retry, ahead of the host's visits not yet granted one: it may
        book past the starts granted so far (they book at most ``politeness_horizon`` ahead),
        and while the host is at its request cap it is asked for every 50 ms, not at the next
        visit's turn. Why not, when there is none within that time (a host paused longer, a
        Crawl-delay, robots.txt now refusing)."""
        ahead = 2 * self.settings.politeness_horizon + self.settings.host_limit(
            host_key(url)).delay
        return await self.gate.admit_hop(url, True, asyncio.get_running_loop().time() + ahead,
                                         horizon=ahead)

    def _after_retry(self, url: str) -> datetime:
        """When a visit held back for a retry on its host asks again: the host's next turn."""
        delay = max(self.settings.host_limit(host_key(url)).delay, 0.05)
        return datetime.now().astimezone() + timedelta(seconds=delay)

    async def drain(self, timeout: float) -> None:
        if self.tasks:
            _, pending = await asyncio.wait(set(self.tasks), timeout=timeout)
            for t in pending:
                t.cancel()  # not acked: redelivered to another worker


# Classes of SQLSTATE for errors in the data stored: data exceptions, integrity constraints,
# program limits exceeded (a value too large for an index, say). Only these are blamed on the
# visits of a batch; the rest (PostgreSQL out of reach, conflicts, a schema older than the
# code, ...) are retried with the whole batch.
_DATA_SQLSTATE = frozenset({"22", "23", "54"})


def _data_error(e: Exception) -> bool:
    """Whether the batch's data is at fault: a PostgreSQL data error, a value asyncpg cannot
    send, or a URL whose MD5 is another stored URL's (no id from ``pages.upsert_urls``)."""
    if isinstance(e, asyncpg.PostgresError):
        return (e.sqlstate or "")[:2] in _DATA_SQLSTATE
    return isinstance(e, asyncpg.exceptions._base.DataError | KeyError)


def _known(e: Exception) -> bool:
    """An error that is not a bug: no traceback in the log."""
    return isinstance(e, (*RETRYABLE, asyncpg.PostgresError))


def _outcome(done: Done) -> visits.Outcome:
    if done.failure:
        return "abandoned"
    return "fetched" if done.page is not None else "blocked" if done.reason else "cached"


def _describe(e: BaseException) -> str:
    """An exception as a failure reason: its type and message, on one bounded line."""
    text = f"{type(e).__name__}: {e}".rstrip(": ").replace("\x00", "\\x00")
    return " ".join(text.split())[:500]


class _Hold:
    """A visit's hold on one of the worker's concurrency slots: given back while it waits
    without a request to make, taken again after, released once at the end."""

    def __init__(self, slots: asyncio.Semaphore) -> None:
        self.slots, self.held = slots, True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.slots.release()

    async def acquire(self) -> None:
        await self.slots.acquire()
        self.held = True


class _heartbeat:
    """Tell JetStream a long fetch is still alive, so its lease does not expire."""

    def __init__(self, msgs: list[Msg], interval: float) -> None:
        self.msgs, self.interval = msgs, interval
        self.task: asyncio.Task[None] | None = None

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            for m in self.msgs:
                with contextlib.suppress(Exception):  # a missed beat only risks a redelivery
                    await m.in_progress()

    async def __aenter__(self) -> None:
        self.task = asyncio.create_task(self._beat())

    async def __aexit__(self, *exc: object) -> None:
        if self.task:
            self.task.cancel()


async def run(settings: Settings, stop: asyncio.Event) -> None:
    """Serve the work queue until ``stop``; finish in-flight visits within the shutdown timeout,
    leave the rest unacked (they are redelivered), and return."""
    async with AsyncExitStack() as stack:
        pool = await stack.enter_async_context(open_pool(settings.database_url, min_size=2, max_size=6))
        nc = await stack.enter_async_context(bus.connect(settings.nats_url, "harvester-worker"))
        session = await stack.enter_async_context(open_session(settings))
        js = nc.jetstream()
        await bus.ensure_streams(js, settings)
        sub = await bus.pull_subscription(js, settings, settings.work_topic, bus.WORKER_CONSUMER)
        # Last: its processes take a moment to start, and NATS and PostgreSQL come first.
        parser = await stack.enter_async_context(Parser(settings.parse_timeout))
        committer = Committer(settings, pool)
        commit_task = asyncio.create_task(committer.run())
        gate = HostGate(settings, pool, session)
        release_task = asyncio.create_task(gate.run_releases(), name="host releases")
        worker = Worker(settings, pool, session, committer, gate, parser, DueFrontier(),
                        RetryPolicy.from_settings(settings))
        log.info("worker ready: %s, concurrency %d", settings.work_topic, settings.concurrency)
        serve = asyncio.create_task(worker.serve(sub, stop), name="serve")
        commit_task.set_name("committer")
        try:
            await bus.supervise([serve, commit_task, release_task], stop)
        finally:
            log.info("worker stopping: finishing %d visits in flight", len(worker.tasks))
            await asyncio.wait([serve], timeout=2)
            serve.cancel()
            await worker.drain(settings.shutdown_timeout)
            await gate.close()  # robots.txt fetches in flight: their claims simply expire
            commit_task.cancel()
            await asyncio.sleep(0.05)  # let the last host leases go back
            release_task.cancel()
            await asyncio.gather(serve, commit_task, release_task, return_exceptions=True)
