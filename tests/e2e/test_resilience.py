"""Retries, the watchdog, backpressure and outages, against real PostgreSQL and NATS."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Self

import asyncpg
import nats
import pytest
from aiohttp import web

from foreman.schedule import run as run_foreman
from shared.config import Settings, stream_name
from shared.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from tests.chaos.procs import GraphSite
from tests.e2e.stack import Stack
from tests.servers import serve
from worker.crawl import run as run_worker

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
        stack.add(run_foreman)  # no worker: nothing could process it anyway
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
