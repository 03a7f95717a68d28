"""Retries, the watchdog, backpressure and outages, against real PostgreSQL and NATS."""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Self

import asyncpg
import nats
import pytest
from aiohttp import web

from foreman.schedule import run as run_foreman
from harvester_ops.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from shared.config import Settings, stream_name
from shared.db import workers
from tests.chaos.procs import GraphSite
from tests.e2e.stack import Stack
from tests.polling import until
from tests.servers import serve
from worker.crawl import run as run_worker
from worker.fetchers.http import fetch as fetch_page

pytestmark = pytest.mark.e2e

Handler = Callable[[web.Request, int], Awaitable[web.StreamResponse] | web.StreamResponse]


class Scripted:
    """A site whose pages answer according to how often they were asked (``n`` from 1)."""

    def __init__(self, pages: dict[str, Handler]) -> None:
        self.pages = pages
        self.hits: Counter[str] = Counter()
        self.times: dict[str, list[float]] = defaultdict(list)
        self.base = ""

    async def __aenter__(self) -> Self:
        self.runner, self.base = await serve(self._handle)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.hits[request.path] += 1
        self.times[request.path].append(time.monotonic())
        answer = self.pages[request.path](request, self.hits[request.path])
        return await answer if inspect.isawaitable(answer) else answer


def html(*links: str) -> web.Response:
    return web.Response(text="".join(f'<a href="{u}">x</a>' for u in links), content_type="text/html")


def nested_divs(depth: int) -> bytes:
    return (b"<html><body>" + b"<div>" * depth + b'<a href="/never">x</a>' + b"</div>" * depth
            + b"</body></html>")


@pytest.fixture
async def stack(settings: Settings) -> AsyncIterator[Stack]:
    st = await Stack(settings.model_copy(update={"read_timeout": 0.3})).start()
    yield st
    await st.stop()


async def test_retry_after_is_honoured(stack: Stack) -> None:
    async def busy(_: web.Request, n: int) -> web.StreamResponse:
        if n == 1:
            return web.Response(status=503, headers={"Retry-After": "1"})
        return html("/ok")

    async def limited(_: web.Request, n: int) -> web.StreamResponse:
        return web.Response(status=429, headers={"Retry-After": "1"}) if n == 1 else html()

    async with Scripted({"/": lambda r, n: html("/busy", "/limited"), "/busy": busy,
                         "/limited": limited}) as site:
        job = await stack.post_job([site.base + "/"])
        await stack.wait_complete(job)
        for page in ("/busy", "/limited"):
            assert site.hits[page] == 2
            waited = site.times[page][1] - site.times[page][0]
            assert 0.9 <= waited < 5, f"{page}: retried after {waited:.2f}s, not Retry-After 1s"
        assert await stack.result(job) == {site.base + "/": [site.base + "/busy", site.base + "/limited"],
                                           site.base + "/busy": [site.base + "/ok"]}
        assert await stack.result(job, status="failed") == {}


async def test_server_errors_are_retried_then_recorded(stack: Stack, settings: Settings) -> None:
    async def flaky(_: web.Request, n: int) -> web.StreamResponse:
        return web.Response(status=502) if n <= 2 else html()

    async def broken(_: web.Request, n: int) -> web.StreamResponse:
        return web.Response(status=500, text="<a href='/never'>x</a>", content_type="text/html")

    async with Scripted({"/": lambda r, n: html("/flaky", "/broken"), "/flaky": flaky,
                         "/broken": broken}) as site:
        job = await stack.post_job([site.base + "/"])
        st = await stack.wait_complete(job)
        assert site.hits["/flaky"] == 3
        assert site.hits["/broken"] == settings.retries + 1
        assert "/never" not in site.hits  # an error page is not scraped
        assert await stack.result(job, status="failed") == {site.base + "/broken": {
            "status": 500, "reason": "HTTP 500 Internal Server Error",
            "attempts": settings.retries + 1}}
        assert st["pages"]["failed"] == 1
        # The failed page is still listed under the page that links it.
        assert site.base + "/broken" in (await stack.result(job))[site.base + "/"]


async def test_a_failing_host_still_lets_the_job_finish(settings: Settings) -> None:
    # Every page of the host answers 503: the host backs off, visits are deferred and retried,
    # yet each visit gets exactly 1 + retries attempts, counted across re-publications.
    async def down(_: web.Request, n: int) -> web.StreamResponse:
        return web.Response(status=503)

    pages: dict[str, Handler] = {"/": lambda r, n: html(*(f"/e{i}" for i in range(4)))}
    pages |= {f"/e{i}": down for i in range(4)}
    polite = settings.model_copy(update={"host_concurrency": 1, "host_backoff_base": 0.05,
                                         "host_backoff_cap": 0.4, "retry_base": 0.05})
    async with Scripted(pages) as site:
        stack = await Stack(polite).start()
        try:
            job = await stack.post_job([site.base + "/"])
            st = await stack.wait_complete(job, timeout=60)
            assert st["pages"]["failed"] == 4
            assert all(site.hits[f"/e{i}"] == settings.retries + 1 for i in range(4)), site.hits
        finally:
            await stack.stop()


async def test_timeouts_are_retried_then_recorded(stack: Stack, settings: Settings) -> None:
    closed = f"http://127.0.0.1:{free_port()}/"  # nothing listens there

    async def hang(_: web.Request, n: int) -> web.StreamResponse:
        await asyncio.sleep(2)
        return html()

    async with Scripted({"/": lambda r, n: html("/hang", closed), "/hang": hang}) as site:
        job = await stack.post_job([site.base + "/"])
        await stack.wait_complete(job)
        failures = await stack.result(job, status="failed")
        assert failures[site.base + "/hang"] == {"status": None, "reason": "timeout",
                                                 "attempts": settings.retries + 1}
        assert failures[closed]["reason"].startswith("connection failed")
        assert failures[closed]["attempts"] == settings.retries + 1
        assert site.hits["/hang"] == settings.retries + 1


async def purge(settings: Settings) -> None:
    nc = await nats.connect(settings.nats_url)
    try:
        await nc.jetstream().purge_stream(stream_name(settings.url_topic))
    finally:
        await nc.close()


async def test_watchdog_requeues_lost_messages(settings: Settings) -> None:
    fast = settings.model_copy(update={"stale_after": 0.5, "watchdog_interval": 0.2})
    async with Scripted({"/": lambda r, n: html("/a"), "/a": lambda r, n: html()}) as site:
        stack = await Stack(fast).start(foremen=0, workers=0)
        try:
            job = await stack.post_job([site.base + "/"])
            await purge(fast)  # the job URL's message is lost
            stack.add(run_foreman)
            stack.add(run_worker)
            st = await stack.wait_complete(job, timeout=30)
            assert st["pages"]["failed"] == 0
            assert await stack.result(job) == {site.base + "/": [site.base + "/a"]}
        finally:
            await stack.stop()


async def test_watchdog_fails_what_never_finishes(settings: Settings) -> None:
    fast = settings.model_copy(update={"stale_after": 0.3, "watchdog_interval": 0.1,
                                       "max_requeues": 0})
    stack = await Stack(fast).start(foremen=0, workers=0)
    try:
        job = await stack.post_job(["http://never.example/"])
        await purge(fast)
        # A worker that says it is alive but never processes anything (stuck): with no live
        # worker at all, the watchdog would wait for one instead (test_watchdog.py).
        conn = await asyncpg.connect(fast.database_url)
        try:
            await workers.beat(conn, uuid.uuid4(), ["http"], "stuck", 1, "test")
        finally:
            await conn.close()
        stack.add(run_foreman)
        st = await stack.wait_complete(job, timeout=30)
        assert st["completed"] == 1 and st["pages"]["failed"] == 1
        failure = (await stack.result(job, status="failed"))["http://never.example/"]
        assert failure["reason"].startswith("abandoned") and failure["attempts"] == 1
    finally:
        await stack.stop()


async def test_backpressure_bounds_the_queues(settings: Settings) -> None:
    limit = 30
    small = settings.model_copy(update={"url_queue_limit": limit, "work_queue_limit": limit,
                                        "batch_size": 16})
    site = await GraphSite(delay=0.0).start()
    stack = await Stack(small).start(foremen=1, workers=2)
    nc = await nats.connect(small.nats_url)
    db = await asyncpg.connect(small.database_url)
    peak: Counter[str] = Counter()
    try:
        js = nc.jetstream()
        job = await stack.post_job([site.base + "/p/0.html"], depth="6")
        while (await stack.status(job))["pending"]:
            for topic in (small.url_topic, small.work_topic):
                depth = (await js.stream_info(stream_name(topic))).state.messages
                peak[topic] = max(peak[topic], depth)
            waiting = await db.fetchval(
                "SELECT count(*) FROM job_pending WHERE published_on IS NULL AND job_id = $1", job)
            peak["waiting in PostgreSQL"] = max(peak["waiting in PostgreSQL"], waiting)
            await asyncio.sleep(0.01)
        assert await stack.result(job) == site.expected(6)
        assert site.refetches() == 0
        print(f"\npeak depths with limit {limit}: {dict(peak)}")
        assert peak[small.url_topic] <= limit and peak[small.work_topic] <= limit
        assert peak["waiting in PostgreSQL"] > 10 * limit  # the frontier waited, nothing dropped
    finally:
        await db.close()
        await nc.close()
        await stack.stop()
        await site.stop()


async def test_web_server_answers_503_while_nats_is_down(settings: Settings, tmp_path: Path) -> None:
    own = EmbeddedNats(tmp_path / "nats")
    own.start()
    st = await Stack(settings.model_copy(update={"nats_url": own.url})).start(foremen=0, workers=0)
    try:
        job = await st.post_job(["http://x.example/"])
        await asyncio.to_thread(own.stop)
        t0 = time.monotonic()
        status, body, headers = await st.request("POST", "/", "http://y.example/")
        assert (status, body["code"]) == (503, "Unavailable") and headers["Retry-After"] == "5"
        assert time.monotonic() - t0 < 8, "the web server hung instead of answering 503"
        assert (await st.request("GET", "/healthz"))[0] == 503
        assert (await st.status(job))["pending"] == 1  # reads need only PostgreSQL
        status, body, _ = await st.request("GET", "/status/2")
        assert status == 404, "a job was accepted while NATS was down"
        await asyncio.to_thread(own.start)
        await st.wait_ready()
        assert await st.post_job(["http://y.example/"]) > job
    finally:
        await st.stop()
        own.stop()


async def test_web_server_answers_503_while_postgres_is_down(settings: Settings,
                                                             postgres: EmbeddedPostgres) -> None:
    st = await Stack(settings).start(foremen=0, workers=0)
    try:
        job = await st.post_job(["http://x.example/"])
        await asyncio.to_thread(postgres.stop)
        try:
            for method, path, body in (("POST", "/", "http://y.example/"),
                                       ("GET", f"/status/{job}", None),
                                       ("GET", f"/result/{job}", None), ("GET", "/healthz", None)):
                t0 = time.monotonic()
                status, payload, _ = await st.request(method, path, body)
                assert (status, payload["code"]) == (503, "Unavailable"), (path, payload)
                assert time.monotonic() - t0 < 8
        finally:
            await asyncio.to_thread(postgres.start)
        await st.wait_ready()
        assert (await st.status(job))["pending"] == 1
    finally:
        await st.stop()


async def test_pathological_html_fails_alone_within_the_parse_deadline(settings: Settings) -> None:
    # 100,000 nested <div>s (1.1 MB) take the HTML parser about 30 s. The page fails after the
    # parse deadline, once, with the reason; meanwhile a small job on the same (only) worker
    # completes: the event loop was never blocked.
    deadline = 6.0
    deep = nested_divs(100_000)
    pages: dict[str, Handler] = {
        "/deep": lambda r, n: web.Response(body=deep, content_type="text/html"),
        "/small": lambda r, n: html("/small/2"), "/small/2": lambda r, n: html()}
    async with Scripted(pages) as site:
        stack = await Stack(settings.model_copy(update={"parse_timeout": deadline})).start()
        try:
            job = await stack.post_job([site.base + "/deep"])
            await until(lambda: site.hits["/deep"] == 1, what="the deep page fetched")
            t0 = site.times["/deep"][0]  # the loop may be blocked right after it was served
            small = await stack.post_job([site.base + "/small"])
            await stack.wait_complete(small, timeout=60)
            took = time.monotonic() - t0
            assert took < deadline / 2, f"a small job took {took:.1f}s beside a page being parsed"
            assert (await stack.status(job))["pending"] == 1, "the deep page was not parsed meanwhile"
            st = await stack.wait_complete(job, timeout=60)
            assert time.monotonic() - t0 < deadline + 10
            assert st["pages"]["failed"] == 1
            assert await stack.result(job, status="failed") == {site.base + "/deep": {
                "status": 200, "attempts": 1,
                "reason": f"links not extracted: parsing took longer than {deadline:g}s"}}
            await stack.wait_idle()
            assert site.hits["/deep"] == 1 and site.hits["/never"] == 0
        finally:
            await stack.stop()


async def test_an_exception_in_a_visit_fails_that_visit_and_frees_everything(
        settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        db: asyncpg.Connection) -> None:
    # The fetch raises on one page (a bug) while the visit holds its host slot: like a fetch
    # with no answer, it is retried as the policy says, then recorded as failed with the
    # exception (its traceback logged once), its messages are settled and its host slot given
    # back at once, not after the message's or the slot's lease.
    real = fetch_page

    async def fetch(session: Any, settings: Settings, url_id: int, url: str,
                    *args: Any, **kwargs: Any) -> Any:
        if url.endswith("/bad"):
            raise RuntimeError("the fetcher exploded")
        return await real(session, settings, url_id, url, *args, **kwargs)

    monkeypatch.setattr("worker.fetchers.http.fetch", fetch)
    async with Scripted({"/": lambda r, n: html("/bad", "/good"), "/bad": lambda r, n: html("/x"),
                         "/good": lambda r, n: html()}) as site:
        stack = await Stack(settings).start()
        try:
            job = await stack.post_job([site.base + "/"])
            st = await stack.wait_complete(job, timeout=10)
            assert st["pages"]["failed"] == 1 and st["pages"]["processed"] == 3
            assert await stack.result(job, status="failed") == {site.base + "/bad": {
                "status": None, "reason": "fetcher error: RuntimeError: the fetcher exploded",
                "attempts": settings.retries + 1}}
            assert (await stack.result(job))[site.base + "/"] == [site.base + "/bad",
                                                                  site.base + "/good"]
            await stack.wait_idle(timeout=5)  # every message settled
            await until(lambda: no_leases(db), timeout=2, what="host slots given back")
            assert site.hits["/bad"] == 0 and site.hits["/x"] == 0
            logged = [r for r in caplog.records
                      if r.levelno >= logging.ERROR and "/bad" in r.getMessage()]
            assert len(logged) == 1, logged
        finally:
            await stack.stop()


async def no_leases(db: asyncpg.Connection) -> bool:
    return bool(await db.fetchval("SELECT bool_and(leases = '{}') FROM host"))


async def test_a_retry_comes_when_its_log_says_even_on_a_busy_host(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    # 60 pages at 0.3 s apart keep the host busy for 18 s; /e fails twice among them. Each retry
    # is made when the log said, give or take the time to win the host's next free slot (at
    # most twice the politeness horizon and the host's delay): it does not queue again behind
    # the host's other visits (it did: 5 to 9 s late).
    caplog.set_level(logging.INFO, logger="worker.pipeline")
    busy = settings.model_copy(update={"host_delay": 0.3, "host_concurrency": 2,
                                       "politeness_horizon": 1.0, "retry_base": 1.0})
    slack = 2 * busy.politeness_horizon + busy.host_delay + 0.5
    pages: dict[str, Handler] = {"/": lambda r, n: html(*(f"/p{i}" for i in range(60)), "/e"),
                                 "/e": lambda r, n: web.Response(status=500) if n <= 2 else html()}
    pages |= {f"/p{i}": lambda r, n: html() for i in range(60)}
    async with Scripted(pages) as site:
        stack = await Stack(busy).start()
        try:
            job = await stack.post_job([site.base + "/"])
            st = await stack.wait_complete(job, timeout=60)
            assert st["pages"]["failed"] == 0 and site.hits["/e"] == 3
        finally:
            await stack.stop()
    clock = time.time() - time.monotonic()  # log records carry wall-clock times
    said = [(r.created - clock, float(m[1])) for r in caplog.records
            if (m := re.search(r"/e failed .*retrying in ([0-9.]+)s", r.getMessage()))]
    assert len(said) == 2
    for (logged_at, delay), made_at in zip(said, site.times["/e"][1:]):
        assert delay - 0.05 <= made_at - logged_at <= delay + slack, (
            f"logged 'retrying in {delay:.1f}s', retried after {made_at - logged_at:.1f}s")
