"""The visit pipeline (worker/pipeline.py) on real PostgreSQL and NATS, with the test plug-ins
of tests/plugins.py: a job's steps run in order (fetch, extract, task, outputs, then the commit),
an output that fails fails its visit only, a task asking to retry puts the visit back in the
frontier, and a job's extractors come from its stored spec; what a worker cannot serve waits
for another, a rule set's extractor or a yield that fails fails the visit only, a fetcher that
raises is retried, a rate limit defers the visit. A job's follow rules, ids, items and outputs
come from its spec (yields and body refs committed, non-HTML bodies read for its rules, its
outputs kept for the process and closed by JobPlans.aclose); a default job's plan is as before."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import asyncpg
import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from nats.js import JetStreamContext

from shared import bus
from shared.config import Settings, stream_name
from shared.db import jobs, visits
from shared.db.frontier import DueFrontier
from shared.db.pool import open_pool
from shared.jobspec import ruleset_of, stored_spec
from shared.model import Extraction, FetchedPage, Yield
from shared.scope import Scope
from tests.plugins import LOG, PAGES, Files, Record, StaticFetcher, Title
from tests.results import JOB_RESULT, URL_LINK
from tests.unit.test_retry_policy import GitHubPolicy
from worker.commit import Committer
from worker.crawl import Worker
from worker.extractors import EXTRACTORS, ExtractFailed
from worker.extractors.lanes import Parser
from worker.fetchers import FetchRequest, HopGate
from worker.fetchers.http import open_session
from worker.gate import HostGate
from worker.outputs import OUTPUTS, Output
from worker.pipeline import JobPlan, JobPlans
from worker.retry import RetryPolicy
from worker.stats import WorkerStats
from worker.tasks import Context, Task

Key = tuple[int, int]
SITE = "http://static.test"
TITLED = {"extract": [{"kind": "test-title"}]}


@dataclass
class Rig:
    """A worker serving the http work queue with the static fetcher (no network)."""
    settings: Settings
    pool: asyncpg.Pool
    js: JetStreamContext
    plans: JobPlans
    fetcher: StaticFetcher
    stats: WorkerStats

    async def job(self, db: asyncpg.Connection, urls: list[str],
                  spec: Mapping[str, Any] | None = None, depth: int = 1) -> list[Key]:
        stored = {**stored_spec(depth, False, False, Scope(), None), **(spec or {})}
        job, ids = await jobs.create_job(db, urls, depth, False, spec=stored)
        return [(job, i) for i in ids]

    def plan(self, keys: list[Key], *, task: Task | None = None,
             outputs: tuple[Output, ...] = (), ruleset: int = 0) -> None:
        """Plan the job of ``keys`` with the title extractor, ``task`` and ``outputs``."""
        web = self.plans.web
        self.plans.put(JobPlan(keys[0][0], self.fetcher, web,
                               (web.link_extractor(), Title(self.settings, {}, self.plans.lanes)),
                               task, outputs, web.policy, ruleset,
                               any(o.needs_raw for o in outputs)))

    async def publish(self, keys: list[Key]) -> None:
        assert await bus.publish_visits(self.js, self.settings.work_topic, keys) == []

    async def unsettled(self) -> int:
        info = await self.js.consumer_info(stream_name(self.settings.work_topic),
                                           bus.WORKER_CONSUMER)
        return int(info.num_ack_pending + info.num_pending)


@pytest.fixture
async def rig(settings: Settings) -> AsyncIterator[Rig]:
    LOG.clear()
    PAGES.clear()
    async with AsyncExitStack() as stack:
        pool = await stack.enter_async_context(open_pool(settings.database_url, max_size=4))
        nc = await stack.enter_async_context(bus.connect(settings.nats_url, "test-pipeline"))
        js = nc.jetstream()
        await bus.ensure_streams(js, settings)
        sub = await bus.pull_subscription(js, settings, settings.work_topic, bus.WORKER_CONSUMER)
        session = await stack.enter_async_context(open_session(settings))
        lanes = await stack.enter_async_context(Parser(settings.parse_timeout, lanes=1))
        fetcher = await stack.enter_async_context(StaticFetcher(settings, concurrency=1))
        committer = Committer(settings, pool)
        gate = HostGate(settings, pool, session)
        plans = JobPlans(settings, lanes, {"http": fetcher})
        stats = WorkerStats()
        worker = Worker(settings, pool, committer, gate, plans, DueFrontier(), stats=stats)
        stop = asyncio.Event()
        tasks = [asyncio.create_task(committer.run()), asyncio.create_task(gate.run_releases()),
                 asyncio.create_task(worker.serve(sub, stop))]
        try:
            yield Rig(settings, pool, js, plans, fetcher, stats)
        finally:
            stop.set()
            await worker.drain(2)
            await gate.close()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 15, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        await asyncio.sleep(0.02)


async def pending(db: asyncpg.Connection, key: Key) -> asyncpg.Record | None:
    return await db.fetchrow("SELECT attempts, due, published_on FROM job_pending "
                             "WHERE job_id = $1 AND url_id = $2", *key)


async def done(db: asyncpg.Connection, keys: list[Key]) -> bool:
    return all([await pending(db, k) is None for k in keys])


async def test_steps_run_in_order_fetch_extract_task_outputs_commit(
        rig: Rig, db: asyncpg.Connection, tmp_path: Path) -> None:
    url = SITE + "/a"
    PAGES[url] = b"<title>Hello</title><a href='/b'>b</a>"
    keys = await rig.job(db, [url], TITLED)
    seen_pending: list[bool] = []

    class Watched(Files):
        async def write(self, ctx: Context, page: FetchedPage,
                        ex: Extraction) -> tuple[Yield, ...]:
            async with rig.pool.acquire() as conn:  # not committed yet: its row still pending
                seen_pending.append(await pending(conn, keys[0]) is not None)
            assert ex.links == ((SITE + "/b", "text/html"),)  # the extractors ran before
            return await super().write(ctx, page, ex)

    ruleset = ruleset_of(TITLED)
    rig.plan(keys, task=Record(rig.settings, {}),
             outputs=(Watched(rig.settings, {"dir": str(tmp_path)}),), ruleset=ruleset)
    await rig.publish(keys)
    await until(lambda: done(db, keys), what="visit committed")
    assert LOG == [("fetch", url), ("extract", url), ("task", url), ("output", url)]
    assert seen_pending == [True]
    assert [(y.kind, y.value) for _, y in await jobs.job_yields(db, keys[0][0])] == [
        ("body", {"sha256": next(tmp_path.iterdir()).name, "bytes": len(PAGES[url])}),
        ("item", {"title": "Hello"}), ("item", {"status": 200})]
    assert (tmp_path / next(tmp_path.iterdir()).name).read_bytes() == PAGES[url]
    assert await db.fetchval(f"SELECT count(*) FROM {JOB_RESULT} WHERE job_id = $1",
                             keys[0][0]) == 1
    await until(lambda: zero(rig.unsettled()), what="message acked")


async def test_an_output_failure_fails_that_visit_only(
        rig: Rig, db: asyncpg.Connection, tmp_path: Path) -> None:
    urls = [f"{SITE}/{i}" for i in range(4)]
    for u in urls:
        PAGES[u] = b"<title>t</title>"
    keys = await rig.job(db, urls)

    class Full(Files):
        async def write(self, ctx: Context, page: FetchedPage,
                        ex: Extraction) -> tuple[Yield, ...]:
            if ctx.url.endswith("/2"):
                raise ValueError("a bug")
            return await super().write(ctx, page, ex)

    rig.plan(keys, outputs=(Full(rig.settings, {"dir": str(tmp_path)}),))
    await rig.publish(keys)
    await until(lambda: done(db, keys), what="visits committed")
    job = keys[0][0]
    failed = await db.fetch("SELECT url_id, reason, attempts FROM job_failure WHERE job_id = $1",
                            job)
    assert [tuple(r) for r in failed] == [  # a bug: failed at once, not retried
        (keys[2][1], "output test-files failed: ValueError: a bug", 1)]
    assert await db.fetchval("SELECT sum(fetched) FROM job_url WHERE job_id = $1", job) == 3
    await until(lambda: zero(rig.unsettled()), what="messages acked")


class _Flaky(Files):
    """Fails its first ``fails`` writes with ``error`` (a full disk, PostgreSQL away)."""
    fails = 0
    calls = 0
    error: BaseException = OSError(28, "No space left on device")

    async def write(self, ctx: Context, page: FetchedPage, ex: Extraction) -> tuple[Yield, ...]:
        self.calls += 1
        if self.fails:
            self.fails -= 1
            raise self.error
        return await super().write(ctx, page, ex)


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"),
                                   asyncpg.exceptions.ConnectionDoesNotExistError("gone")])
async def test_an_output_error_that_may_mend_is_retried_through_the_frontier(
        rig: Rig, db: asyncpg.Connection, tmp_path: Path, error: BaseException) -> None:
    """A full disk or a lost connection is not the page's fault: the attempt is counted and
    the visit deferred with the policy's backoff, like a task's RetryLater; it then commits."""
    url = SITE + "/full"
    PAGES[url] = b"<title>t</title>"
    keys = await rig.job(db, [url])
    out = _Flaky(rig.settings, {"dir": str(tmp_path)})
    out.fails, out.error = 1, error
    web = rig.plans.web
    rig.plans.put(JobPlan(keys[0][0], rig.fetcher, web, (web.link_extractor(),), None, (out,),
                          RetryPolicy(retries=2, base=0.01, cap=0.05, max_pause=1.0), 0, True))
    await db.execute("UPDATE job_pending SET published_on = now() WHERE job_id = $1", keys[0][0])
    await rig.publish(keys)
    await until(lambda: deferred(db, keys[0]), what="visit back in the frontier")
    row = await pending(db, keys[0])
    assert row is not None and row["attempts"] == 1
    assert await db.fetchval("SELECT count(*) FROM job_failure WHERE job_id = $1",
                             keys[0][0]) == 0
    await until(lambda: zero(rig.unsettled()), what="message acked")
    await db.execute("UPDATE job_pending SET published_on = now() WHERE job_id = $1", keys[0][0])
    await rig.publish(keys)  # the foreman's part: the due visit published again
    await until(lambda: done(db, keys), what="visit committed")
    assert await db.fetchval("SELECT count(*) FROM job_failure WHERE job_id = $1",
                             keys[0][0]) == 0
    assert out.calls == 2 and LOG.count(("output", url)) == 1


async def test_an_output_error_past_the_retries_fails_the_visit_with_the_reason(
        rig: Rig, db: asyncpg.Connection, tmp_path: Path) -> None:
    url = SITE + "/full"
    PAGES[url] = b"<title>t</title>"
    keys = await rig.job(db, [url])
    out = _Flaky(rig.settings, {"dir": str(tmp_path)})
    out.fails = 10
    web = rig.plans.web
    rig.plans.put(JobPlan(keys[0][0], rig.fetcher, web, (web.link_extractor(),), None, (out,),
                          RetryPolicy(retries=1, base=0.01, cap=0.05, max_pause=1.0), 0, True))
    await db.execute("UPDATE job_pending SET published_on = now() WHERE job_id = $1", keys[0][0])
    await rig.publish(keys)
    # its attempt counted and the visit back in the frontier before it is published again (the
    # consumer's counts alone could read settled before the first delivery was handled)
    await until(lambda: deferred(db, keys[0]), what="visit back in the frontier")
    await until(lambda: zero(rig.unsettled()), what="message settled")
    await db.execute("UPDATE job_pending SET published_on = now() WHERE job_id = $1", keys[0][0])
    await rig.publish(keys)
    await until(lambda: done(db, keys), what="visit failed")
    failed = await db.fetchrow("SELECT reason, attempts FROM job_failure WHERE job_id = $1",
                               keys[0][0])
    reason = ("output test-files failed: OSError: [Errno 28] No space left on device "
              "(gave up after 2 attempts)")
    assert tuple(failed) == (reason, 2)

async def test_a_task_retry_in_goes_back_to_the_frontier(
        rig: Rig, db: asyncpg.Connection) -> None:
    url = SITE + "/later"
    PAGES[url] = b"<title>t</title>"
    keys = await rig.job(db, [url])
    rig.plan(keys, task=Record(rig.settings, {"retry_in": 60}))
    await db.execute("UPDATE job_pending SET published_on = now() WHERE job_id = $1", keys[0][0])
    before = await db.fetchval("SELECT now()")
    await rig.publish(keys)

    async def deferred() -> bool:
        row = await pending(db, keys[0])
        return row is not None and row["published_on"] is None

    await until(deferred, what="visit back in the frontier")
    row = await pending(db, keys[0])
    assert row is not None and row["attempts"] == 1
    assert (row["due"] - before).total_seconds() >= 55  # due later, as the task asked
    assert LOG == [("fetch", url), ("extract", url), ("task", url)]
    await until(lambda: zero(rig.unsettled()), what="message acked")
    assert await db.fetchval("SELECT count(*) FROM job_failure WHERE job_id = $1",
                             keys[0][0]) == 0


async def test_a_jobs_extractors_come_from_its_stored_spec(
        rig: Rig, db: asyncpg.Connection) -> None:
    # No plan put: the job's plan is built from its stored spec (extract: test-title, h1).
    url = SITE + "/spec"
    PAGES[url] = b"<title>no</title><h1>Heading</h1>"
    spec = {"extract": [{"kind": "test-title", "tag": "h1"}]}
    keys = await rig.job(db, [url], spec)
    await rig.publish(keys)
    await until(lambda: done(db, keys), what="visit committed")
    assert [(y.kind, y.value) for _, y in await jobs.job_yields(db, keys[0][0])] == [
        ("item", {"title": "Heading"})]


async def zero(n: Awaitable[int]) -> bool:
    return await n == 0


class NotFoundMayMend(RetryPolicy):
    """A source's own rule: a 404 is tried again (as GitHub's 403 rate limit would be)."""

    def retryable(self, page: FetchedPage) -> bool:
        return page.status == 404 or super().retryable(page)


async def test_the_jobs_retry_policy_decides_its_retries(
        rig: Rig, db: asyncpg.Connection) -> None:
    url = SITE + "/gone"  # not in PAGES: the static fetcher answers 404
    keys = await rig.job(db, [url])
    web = rig.plans.web
    policy = NotFoundMayMend(retries=1, base=0.01, cap=0.05, max_pause=1.0)
    rig.plans.put(JobPlan(keys[0][0], rig.fetcher, web, (web.link_extractor(),), None, (),
                          policy, 0, False))
    await rig.publish(keys)
    await until(lambda: done(db, keys), what="visit committed")
    assert LOG == [("fetch", url), ("fetch", url)]  # retried once, as the policy says
    failed = await db.fetchrow("SELECT status, attempts FROM job_failure WHERE job_id = $1",
                               keys[0][0])
    assert tuple(failed) == (404, 2)


async def deferred(db: asyncpg.Connection, key: Key) -> bool:
    row = await pending(db, key)
    return row is not None and row["published_on"] is None


async def test_a_job_needing_a_plugin_the_worker_lacks_waits_for_another_worker(
        rig: Rig, db: asyncpg.Connection) -> None:
    # Mixed versions in a rolling upgrade: a worker that can serve it will; nothing fails.
    url = SITE + "/x"
    PAGES[url] = b"<title>t</title>"
    keys = await rig.job(db, [url], {"extract": [{"kind": "no-such-extractor"}]})
    await db.execute("UPDATE job_pending SET published_on = now() WHERE job_id = $1", keys[0][0])
    before = await db.fetchval("SELECT now()")
    await rig.publish(keys)
    await until(lambda: deferred(db, keys[0]), what="visit back in the frontier")
    row = await pending(db, keys[0])
    assert row is not None and row["attempts"] == 0
    assert (row["due"] - before).total_seconds() >= 55  # a minute later
    assert LOG == []  # not fetched
    await until(lambda: zero(rig.unsettled()), what="message acked")
    assert await db.fetchval("SELECT count(*) FROM job_failure WHERE job_id = $1",
                             keys[0][0]) == 0


@pytest.fixture
def broken_extractor() -> Iterator[None]:
    """An extractor whose factory raises what a bad option makes it raise (not a ConfigError)."""
    def make(settings: Settings, options: Mapping[str, Any], lanes: Parser) -> Title:
        raise ValueError(f"bad selector: {options.get('tag')!r}")

    EXTRACTORS.register("test-broken")(make)
    try:
        yield
    finally:
        del EXTRACTORS._factories["test-broken"]


async def test_a_plugin_factory_raising_does_not_stop_the_worker(
        rig: Rig, db: asyncpg.Connection, broken_extractor: None) -> None:
    url = SITE + "/broken"
    PAGES[url] = b"<title>t</title>"
    keys = await rig.job(db, [url], {"extract": [{"kind": "test-broken", "tag": "]["}]})
    await db.execute("UPDATE job_pending SET published_on = now() WHERE job_id = $1", keys[0][0])
    await rig.publish(keys)
    await until(lambda: deferred(db, keys[0]), what="visit back in the frontier")
    await until(lambda: zero(rig.unsettled()), what="message acked")
    ok = await rig.job(db, [SITE + "/broken"])  # the worker still serves the next job
    await rig.publish(ok)
    await until(lambda: done(db, ok), what="next job's visit committed")


async def test_only_the_sources_link_extractor_gives_the_links_to_follow(
        rig: Rig, db: asyncpg.Connection) -> None:
    url = SITE + "/l"
    PAGES[url] = b"<title>t</title><a href='/followed'>f</a>"

    class Linky(Title):  # finds a link too: a yield of its own at most, never one to follow
        async def extract(self, page: FetchedPage, base_url: str) -> Extraction:
            found = await super().extract(page, base_url)
            return Extraction((("http://elsewhere.test/", "text/html"),), found.yields)

    keys = await rig.job(db, [url])
    web = rig.plans.web
    rig.plans.put(JobPlan(keys[0][0], rig.fetcher, web,
                          (web.link_extractor(), Linky(rig.settings, {}, rig.plans.lanes)),
                          None, (), web.policy, 0, False))
    await rig.publish(keys)
    await until(lambda: done(db, keys), what="visit committed")
    linked = await db.fetch(f"SELECT u.url FROM {URL_LINK} JOIN url u ON u.id = url_link.url_id "
                            "WHERE url_link.refer_id = $1", keys[0][1])
    assert [r["url"] for r in linked] == [SITE + "/followed"]


async def test_a_rule_sets_extractor_failing_fails_this_visit_and_keeps_the_page(
        rig: Rig, db: asyncpg.Connection) -> None:
    url = SITE + "/unreadable"
    PAGES[url] = b"<title>t</title><a href='/next'>n</a>"

    class Picky(Title):
        async def extract(self, page: FetchedPage, base_url: str) -> Extraction:
            raise ExtractFailed("no such element")

    keys = await rig.job(db, [url], TITLED)
    web = rig.plans.web
    rig.plans.put(JobPlan(keys[0][0], rig.fetcher, web,
                          (web.link_extractor(), Picky(rig.settings, {}, rig.plans.lanes)),
                          Record(rig.settings, {}), (), web.policy, ruleset_of(TITLED), False))
    await rig.publish(keys)
    await until(lambda: done(db, keys), what="visit committed")
    job = keys[0][0]
    failed = await db.fetchrow("SELECT reason, attempts FROM job_failure WHERE job_id = $1", job)
    assert tuple(failed) == ("extract[1] test-title: no such element", 1)
    assert LOG == [("fetch", url)]  # no task after a failed extraction
    # The page is recorded as fetched, its links kept for other jobs; not its rule set.
    page = await db.fetchrow("SELECT status, error, crawled_on IS NOT NULL AS cached FROM url "
                             "WHERE id = $1", keys[0][1])
    assert tuple(page) == (200, None, True)
    linked = await db.fetch(f"SELECT u.url FROM {URL_LINK} JOIN url u ON u.id = url_link.url_id "
                            "WHERE url_link.refer_id = $1", keys[0][1])
    assert [r["url"] for r in linked] == [SITE + "/next"]
    assert await db.fetchval("SELECT count(*) FROM url_extraction WHERE url_id = $1",
                             keys[0][1]) == 0
    assert await db.fetchval(f"SELECT count(*) FROM {JOB_RESULT} WHERE job_id = $1", job) == 0
    assert await db.fetchval("SELECT count(*) FROM job_pending WHERE job_id = $1", job) == 0
    await until(lambda: zero(rig.unsettled()), what="message acked")


class Sets(Record):
    """Adds an item that is not JSON (a set) for the page ``/bad``."""

    async def __call__(self, ctx: Context, page: FetchedPage, ex: Extraction) -> Extraction:
        ex = await super().__call__(ctx, page, ex)
        if ctx.url.endswith("/bad"):
            ex = Extraction(ex.links, (*ex.yields, Yield("item", {"tags": {"a"}})), ex.ruleset)
        return ex


async def test_a_yield_that_is_not_json_fails_its_visit_only(
        rig: Rig, db: asyncpg.Connection) -> None:
    urls = [SITE + "/good", SITE + "/bad"]
    for u in urls:
        PAGES[u] = b"<title>t</title>"
    keys = await rig.job(db, urls, TITLED)
    rig.plan(keys, task=Sets(rig.settings, {}), ruleset=ruleset_of(TITLED))
    await rig.publish(keys)
    await until(lambda: done(db, keys), what="visits committed")
    failed = await db.fetch("SELECT url_id, reason FROM job_failure WHERE job_id = $1",
                            keys[0][0])
    assert [tuple(r) for r in failed] == [
        (keys[1][1], ("yield 2 (item) is not JSON: TypeError: Object of type set is not "
                      "JSON serializable"))]
    assert [y.value for _, y in await jobs.job_yields(db, keys[0][0])] == [
        {"title": "t"}, {"status": 200}]  # the good page's
    await until(lambda: zero(rig.unsettled()), what="messages acked")


class Flaky(StaticFetcher):
    """Raises on its first ``fails`` fetches (a plug-in's bug), then serves ``PAGES``."""

    def __init__(self, settings: Settings, fails: int) -> None:
        super().__init__(settings, concurrency=1)
        self.fails = fails

    async def fetch(self, req: FetchRequest, hops: HopGate | None) -> FetchedPage:
        if self.fails > 0:
            LOG.append(("fetch", req.url))
            self.fails -= 1
            raise RuntimeError("boom")
        return await super().fetch(req, hops)


@pytest.mark.parametrize(("fails", "reason"), [
    (1, None), (5, "fetcher error: RuntimeError: boom")])
async def test_a_fetcher_that_raises_is_retried_as_policy_says(
        rig: Rig, db: asyncpg.Connection, fails: int, reason: str | None) -> None:
    url = SITE + "/flaky"
    PAGES[url] = b"<title>t</title>"
    keys = await rig.job(db, [url])
    web = rig.plans.web
    policy = RetryPolicy(retries=1, base=0.01, cap=0.05, max_pause=1.0)
    rig.plans.put(JobPlan(keys[0][0], Flaky(rig.settings, fails), web, (web.link_extractor(),),
                          None, (), policy, 0, False))
    await rig.publish(keys)
    await until(lambda: done(db, keys), what="visit committed")
    failed = await db.fetchrow("SELECT reason, attempts FROM job_failure WHERE job_id = $1",
                               keys[0][0])
    assert (tuple(failed) if failed else None) == (None if reason is None else (reason, 2))
    assert [step for step, _ in LOG].count("fetch") == 2
    await until(lambda: zero(rig.unsettled()), what="message acked")


class RateLimited(StaticFetcher):
    """Answers like GitHub once its rate limit is spent: 403, remaining 0, reset at ``reset``."""

    def __init__(self, settings: Settings, reset: int) -> None:
        super().__init__(settings, concurrency=1)
        self.reset = reset

    async def fetch(self, req: FetchRequest, hops: HopGate | None) -> FetchedPage:
        LOG.append(("fetch", req.url))
        headers = CIMultiDict({"X-RateLimit-Remaining": "0",
                               "X-RateLimit-Reset": str(self.reset)})
        return FetchedPage(req.url_id, 403, "application/json", "HTTP 403 Forbidden",
                           cacheable=True, headers=CIMultiDictProxy(headers))


async def test_a_rate_limit_defers_the_visit_until_the_reset_without_an_attempt(
        rig: Rig, db: asyncpg.Connection) -> None:
    url = SITE + "/api"
    keys = await rig.job(db, [url])
    reset = int(time.time()) + 90
    web = rig.plans.web
    policy = GitHubPolicy(retries=3, base=0.01, cap=0.05, max_pause=30.0)
    rig.plans.put(JobPlan(keys[0][0], RateLimited(rig.settings, reset), web,
                          (web.link_extractor(),), None, (), policy, 0, False))
    await db.execute("UPDATE job_pending SET published_on = now() WHERE job_id = $1", keys[0][0])
    await rig.publish(keys)
    await until(lambda: deferred(db, keys[0]), what="visit back in the frontier")
    row = await pending(db, keys[0])
    assert row is not None and row["attempts"] == 0  # no attempt counted
    assert abs(row["due"].timestamp() - reset) <= 2  # until the reset, not the host's pause cap
    assert LOG == [("fetch", url)]
    await until(lambda: zero(rig.unsettled()), what="message acked")
    assert await db.fetchval("SELECT count(*) FROM job_failure WHERE job_id = $1",
                             keys[0][0]) == 0


async def test_the_page_carries_the_kind_of_its_fetcher(
        rig: Rig, db: asyncpg.Connection) -> None:
    url = SITE + "/kind"
    PAGES[url] = b"<title>t</title>"
    kinds: list[str] = []

    class Kinds(Record):
        async def __call__(self, ctx: Context, page: FetchedPage, ex: Extraction) -> Extraction:
            kinds.append(page.fetcher)
            return ex

    keys = await rig.job(db, [url])
    rig.plan(keys, task=Kinds(rig.settings, {}))
    await rig.publish(keys)
    await until(lambda: done(db, keys), what="visit committed")
    assert kinds == ["static"]


class Closing(Files):
    """test-files that remembers its instances and whether each was closed."""
    made: ClassVar[list[Closing]] = []

    def __init__(self, settings: Settings, options: Mapping[str, Any]) -> None:
        super().__init__(settings, options)
        self.closed = 0
        Closing.made.append(self)

    async def close(self) -> None:
        self.closed += 1


class Broken(Closing):
    async def close(self) -> None:
        raise OSError("disk gone")


@pytest.fixture
def closing_outputs() -> Iterator[None]:
    Closing.made.clear()
    OUTPUTS.register("test-closing")(Closing)
    OUTPUTS.register("test-broken-close")(Broken)
    try:
        yield
    finally:
        del OUTPUTS._factories["test-closing"], OUTPUTS._factories["test-broken-close"]


def rules_spec(tmp_path: Path) -> dict[str, Any]:
    return {"follow": {"linkRegex": r"(/n/\d+)"},
            "extract": [{"kind": "items", "fields": {"title": {"css": "title"}}}],
            "save": [{"kind": "test-broken-close", "dir": str(tmp_path)},
                     {"kind": "test-closing", "dir": str(tmp_path)}]}


async def test_a_job_with_follow_items_and_outputs_commits_their_yields_and_closes_them(
        rig: Rig, db: asyncpg.Connection, tmp_path: Path, closing_outputs: None) -> None:
    url = SITE + "/rules"
    PAGES[url] = b"<title>Rules</title> /n/1 <a href='/html-only'>h</a>"
    PAGES[SITE + "/n/1"] = b"<title>One</title>"
    rig.plans.size = 1  # other jobs' plans evict theirs: a plan with outputs is never evicted
    spec = rules_spec(tmp_path)
    keys = await rig.job(db, [url], spec, depth=2)
    job = keys[0][0]
    await rig.publish(keys)
    await until(lambda: done(db, keys), what="first page committed")
    children = [(job, r["url_id"]) for r in await db.fetch(
        "SELECT url_id FROM job_pending WHERE job_id = $1", job)]  # no feeder here
    await rig.publish(children)
    await until(lambda: done(db, children), what="children committed")
    PAGES[SITE + "/other"] = b"<title>Other</title>"
    other = await rig.job(db, [SITE + "/other"])  # a default job: its plan comes in
    await rig.publish(other)
    await until(lambda: done(db, other), what="other job done")
    assert [url for step, url in LOG if step == "fetch"] == [url, SITE + "/n/1", SITE + "/other"]
    yields = {(y.url, y.kind, json.dumps(y.value, sort_keys=True))
              for _, y in await jobs.job_yields(db, job)}
    digest = {u: hashlib.sha256(PAGES[u]).hexdigest() for u in (url, SITE + "/n/1")}
    assert yields == {
        (url, "link", json.dumps({"url": SITE + "/n/1"})),
        (url, "item", json.dumps({"title": "Rules"})),
        (SITE + "/n/1", "item", json.dumps({"title": "One"})),
        *((u, "body", json.dumps({"bytes": len(PAGES[u]), "sha256": d}, sort_keys=True))
          for u, d in digest.items() for _ in range(2))}
    assert len(await jobs.job_yields(db, job, kind="body")) == 4  # two outputs, two pages
    visited = await db.fetch("SELECT u.url FROM job_visit v JOIN url u ON u.id = v.url_id "
                             "WHERE v.job_id = $1 ORDER BY 1", job)
    assert [r["url"] for r in visited] == [SITE + "/n/1", url]  # not /html-only
    assert len(Closing.made) == 2  # one plan, one instance of each output, never rebuilt
    assert [o.closed for o in Closing.made] == [0, 0]
    await rig.plans.aclose()  # what crawl.run awaits after the drain
    assert [o.closed for o in Closing.made if not isinstance(o, Broken)] == [1]


class Plain(StaticFetcher):
    """Serves ``PAGES`` as text/plain: read only when the request wants any 2xx body."""

    async def fetch(self, req: FetchRequest, hops: HopGate | None) -> FetchedPage:
        page = await super().fetch(req, hops)
        if page.status != 200:
            return page
        return replace(page, mime="text/plain",
                       body=self.pages[req.url] if req.wants_body(200, "text/plain") else None)


async def test_an_id_job_reads_bodies_that_are_not_html(
        rig: Rig, db: asyncpg.Connection) -> None:
    rig.plans.fetchers = {"http": Plain(rig.settings, concurrency=1)}
    fmt = SITE + "/item?id={}"
    PAGES[SITE + "/item?id=1"] = b"see id:2 and id:3"
    keys = await rig.job(db, [SITE + "/item?id=1"],
                         {"ids": {"regex": r"id:(\d+)", "urlFormat": fmt}})
    await rig.publish(keys)
    await until(lambda: done(db, keys), what="visit committed")
    assert [(y.kind, y.value) for _, y in await jobs.job_yields(db, keys[0][0])] == [
        ("id", {"id": "2", "url": SITE + "/item?id=2"}),
        ("id", {"id": "3", "url": SITE + "/item?id=3"})]


async def test_a_default_job_is_planned_as_before(rig: Rig) -> None:
    p = visits.Planned(1, 2, SITE + "/", False, False)
    plan = (await rig.plans.resolve(None, [p]))[1]  # rule set 0: no query made
    assert isinstance(plan, JobPlan)
    assert plan.extractors == (rig.plans.web.link_extractor(),)
    assert (plan.outputs, plan.task, plan.keep_raw, plan.ruleset) == ((), None, False, 0)
    assert plan.wants_body == rig.plans.web.wants_body


async def test_an_output_kind_the_worker_lacks_waits_for_another_worker(
        rig: Rig, db: asyncpg.Connection) -> None:
    url = SITE + "/saved"
    keys = await rig.job(db, [url], {"save": [{"kind": "no-such-output"}]})
    p = visits.Planned(keys[0][0], keys[0][1], url, False, False, ruleset=7)
    plan = (await rig.plans.resolve(db, [p]))[keys[0][0]]
    assert plan == ("not served by this worker: save[0]: unknown output kind: no-such-output "
                    f"(known: {', '.join(OUTPUTS.names())})")


async def test_a_page_past_the_parse_deadline_fails_that_visit_only(
        rig: Rig, db: asyncpg.Connection) -> None:
    rig.plans.lanes.timeout = 1.0
    urls = [SITE + "/evil", SITE + "/fine", SITE + "/aaa"]
    PAGES[urls[0]] = b"<div>" * 100_000 + b"</div>" * 100_000  # about 30 s of parsing
    PAGES[urls[1]] = b"<title>fine</title> aa"
    PAGES[urls[2]] = b"a" * 100_000 + b"!"  # (a+)+$: for ever in Python's re, linear on RE2
    keys = await rig.job(db, urls, {"follow": {"linkRegex": "(a+)+$", "css": ["a"]}})
    await rig.publish(keys)
    await until(lambda: done(db, keys), what="visits committed")
    failed = await db.fetch("SELECT url_id, reason FROM job_failure WHERE job_id = $1",
                            keys[0][0])
    assert [tuple(r) for r in failed] == [
        (keys[0][1], "links not extracted: parsing took longer than 1s")]
    # all three fetched (the deep one's links not extracted); the run of a's and the fine one
    # extracted by RE2 at once
    assert await db.fetchval("SELECT sum(fetched) FROM job_url WHERE job_id = $1",
                             keys[0][0]) == 3
    await until(lambda: zero(rig.unsettled()), what="messages acked")


async def test_idle_outputs_are_closed_and_the_plan_rebuilt(
        rig: Rig, db: asyncpg.Connection, tmp_path: Path) -> None:
    """A job's outputs no visit went through for outputIdleClose are closed (its tar gets its
    end blocks) and its plan dropped; never while a visit is in; its next page opens anew."""
    import tarfile
    rig.plans.settings = rig.settings.model_copy(
        update={"output_root": tmp_path, "output_idle_close": 0.2})
    urls = [SITE + "/idle/1", SITE + "/idle/2"]
    for u in urls:
        PAGES[u] = b"<title>%s</title>" % u.encode()
    keys = await rig.job(db, urls, {"save": [{"kind": "tar", "pattern": "{urlid}"}]})
    job = keys[0][0]
    await rig.publish(keys[:1])
    await until(lambda: done(db, keys[:1]), what="first page committed")
    plan = rig.plans._saving[job]
    plan.use.enter()  # a visit in: however long, not closed
    since = time.monotonic()
    while time.monotonic() - since < 0.4:
        assert await rig.plans.close_idle() == 0
        await asyncio.sleep(0.05)
    plan.use.leave()

    async def closed() -> bool:
        return await rig.plans.close_idle() == 1

    await until(closed, what="idle outputs closed")
    assert job not in rig.plans._saving
    (first,) = list((tmp_path / f"job-{job}" / "tar").iterdir())
    assert first.read_bytes().endswith(bytes(1024))  # the end-of-archive blocks
    await rig.publish(keys[1:])
    await until(lambda: done(db, keys[1:]), what="second page committed")
    assert rig.plans._saving[job] is not plan  # rebuilt
    await rig.plans.aclose()
    files = sorted((tmp_path / f"job-{job}" / "tar").iterdir())
    assert len(files) == 2
    for f, key in zip(files, keys, strict=True):
        with tarfile.open(f) as t:
            assert [m.name for m in t.getmembers()] == [str(key[1])]
        assert f.read_bytes().endswith(bytes(1024))


async def test_a_jobs_source_comes_from_its_stored_spec_made_once_per_process(
        rig: Rig, db: asyncpg.Connection) -> None:
    a = await rig.job(db, [SITE + "/a"], {"source": "github"})
    b = await rig.job(db, [SITE + "/b"], {"source": "github"})
    web = await rig.job(db, [SITE + "/c"], {"extract": [{"kind": "test-title"}]})
    planned = [visits.Planned(k[0], k[1], SITE, False, False, ruleset=7) for k in (*a, *b, *web)]
    got = await rig.plans.resolve(db, planned)
    pa, pb, pw = got[a[0][0]], got[b[0][0]], got[web[0][0]]
    assert isinstance(pa, JobPlan) and isinstance(pb, JobPlan) and isinstance(pw, JobPlan)
    assert pa.source.name == pb.source.name == "github" and pa.source is pb.source
    assert pa.extractors == (pa.source.link_extractor(),) and pa.policy is pa.source.policy
    assert pa.wants_body == pa.source.wants_body
    assert pw.source is rig.plans.web
    unknown = await rig.job(db, [SITE + "/d"], {"source": "gopher"})
    why = (await rig.plans.resolve(db, [visits.Planned(*unknown[0], SITE, False, False,
                                                       ruleset=7)]))[unknown[0][0]]
    assert isinstance(why, str) and "gopher" in why


async def test_each_fetch_and_visit_is_counted_in_the_workers_stats(
        rig: Rig, db: asyncpg.Connection) -> None:
    urls = [SITE + "/s1", SITE + "/s2", SITE + "/missing"]
    PAGES.update({urls[0]: b"<title>1</title>", urls[1]: b"<title>2</title>"})
    keys = await rig.job(db, urls)
    await rig.publish(keys)
    await until(lambda: done(db, keys), what="visits committed")
    snap = rig.stats.snapshot()
    assert snap["fetchedByKind"] == {"static": 3} and snap["fetched"] == 3
    assert snap["inFlight"] == 0
    assert snap["latencyP50"] is not None and snap["pagesPerSecond"] > 0
