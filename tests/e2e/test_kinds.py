"""Routing by fetcher kind, end to end: each kind has its own work queue, a job whose kind no
live worker serves says so in /status (and waits), and a full queue of one kind does not stop
another. The stack knows two kinds, http and static; its worker serves http only."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import nats
import pytest
from nats.js import JetStreamContext

from shared import bus
from shared.config import Settings, stream_name
from shared.db.pool import open_pool
from tests.e2e.site import TestSite
from tests.e2e.stack import Stack
from worker.heartbeat import heartbeat

pytestmark = pytest.mark.e2e
T = TypeVar("T")

NO_STATIC_WORKER = "no live worker serves fetcher kind 'static'; the job waits until one starts"


@pytest.fixture
def kinds(settings: Settings) -> Settings:
    return settings.model_copy(update={"fetcher_kinds": ("http", "static")})


@pytest.fixture
async def js(kinds: Settings) -> AsyncIterator[JetStreamContext]:
    nc = await nats.connect(kinds.nats_url)
    yield nc.jetstream()
    await nc.close()


async def _eventually(op: Callable[[], Awaitable[T]], ok: Callable[[T], bool],
                      timeout: float = 30.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        answer = await op()
        if ok(answer) or time.monotonic() > deadline:
            assert ok(answer), f"still {answer!r} after {timeout}s"
            return answer
        await asyncio.sleep(0.05)


async def depth(js: JetStreamContext, settings: Settings, kind: str) -> int:
    return await bus.stream_depth(js, bus.work_subject(settings, kind))


async def test_a_job_of_a_kind_no_worker_serves_says_so(
        kinds: Settings, site: TestSite, js: JetStreamContext) -> None:
    stack = await Stack(kinds).start()
    try:
        job = await stack.post_spec({"urls": [site.a + "/"], "fetcher": "static"})
        # Forwarded by the foreman to the static queue, where it sits: no worker takes it.
        await _eventually(lambda: depth(js, kinds, "static"), lambda n: n == 1)
        st = await stack.status(job)
        assert st["pending"] == 1 and st["pages"]["fetched"] == 0
        assert st["fetcher"] == {"kind": "static", "liveWorkers": 0}
        assert st["warnings"] == [NO_STATIC_WORKER]
        assert list(st)[-7:] == ["spec", "fetcher", "state", "rates", "eta", "hosts", "warnings"], "appended after the old keys"
        assert st["spec"]["fetcher"] == "static"
        # An http job in the same stack is fetched meanwhile, and its status has no warning.
        other = await stack.post_job([site.b + "/"], depth="1")
        done = await stack.wait_complete(other)
        assert done["fetcher"] == {"kind": "http", "liveWorkers": 1} and "warnings" not in done
        assert site.fetched() == {site.b + "/"}, "nothing of the static job was fetched"
        assert await depth(js, kinds, "http") == 0
        assert await depth(js, kinds, "static") == 1
        assert (await stack.status(job))["pending"] == 1
        # A process beating for static counts as a live static worker (it takes nothing: the
        # status only reads the registry), until it stops.
        async with open_pool(kinds.database_url, max_size=2) as pool:
            stop = asyncio.Event()
            beating = asyncio.create_task(heartbeat(kinds, pool, ["static"], stop))
            st = await _eventually(lambda: stack.status(job),
                                   lambda st: st["fetcher"]["liveWorkers"] == 1)
            assert "warnings" not in st and st["pending"] == 1
            stop.set()
            await beating
        st = await stack.status(job)
        assert st["fetcher"]["liveWorkers"] == 0 and st["warnings"] == [NO_STATIC_WORKER]
    finally:
        await stack.stop()


async def test_a_full_queue_of_one_kind_does_not_stop_another(
        kinds: Settings, site: TestSite, js: JetStreamContext) -> None:
    limit = 3
    small = kinds.model_copy(update={"work_queue_limit": limit, "batch_size": 8})
    stack = await Stack(small).start()
    try:
        static = [f"{site.b}/static/{i}" for i in range(20)]
        job = await stack.post_spec({"urls": static, "fetcher": "static"})
        await _eventually(lambda: depth(js, small, "static"), lambda n: n == limit)
        http = await stack.post_job([site.a + "/"], depth="3")
        await stack.wait_complete(http)
        assert await stack.result(http) == site.expected_result(site.a + "/", 3)
        assert await depth(js, small, "static") == limit, "the static queue kept its limit"
        st = await stack.status(job)
        assert st["pending"] == len(static) and st["warnings"] == [NO_STATIC_WORKER]
        assert not any(url.startswith(f"{site.b}/static/") for url in site.fetched())
        assert stream_name(bus.work_subject(small, "static")).endswith("_STATIC")
    finally:
        await stack.stop()


async def test_a_backlog_of_one_kind_does_not_clog_the_url_queue(
        kinds: Settings, site: TestSite, js: JetStreamContext) -> None:
    """More static visits than the URL queue holds, posted first (so first in the frontier):
    the ones the full static queue cannot take must leave the URL queue at once, not sit there
    being redelivered, or the http job behind them would wait until they used up maxDeliver."""
    small = kinds.model_copy(update={"work_queue_limit": 2, "url_queue_limit": 4,
                                     "batch_size": 4})
    stack = await Stack(small).start()
    try:
        job = await stack.post_spec({"urls": [f"{site.b}/static/{i}" for i in range(40)],
                                     "fetcher": "static"})
        await _eventually(lambda: depth(js, small, "static"), lambda n: n == 2)
        http = await stack.post_job([site.a + "/"], depth="2")
        await stack.wait_complete(http, timeout=30)
        assert await stack.result(http) == site.expected_result(site.a + "/", 2)
        st = await stack.status(job)
        assert st["pending"] == 40 and st["pages"]["processed"] == 0
        assert await depth(js, small, "static") == 2
    finally:
        await stack.stop()


async def test_get_workers_lists_the_live_workers_with_their_kinds(kinds: Settings) -> None:
    stack = await Stack(kinds).start(workers=0)
    try:
        async with open_pool(kinds.database_url, max_size=2) as pool:
            stop = asyncio.Event()
            beating = asyncio.create_task(heartbeat(kinds, pool, ["http", "static"], stop))
            status, body, _ = await _eventually(lambda: stack.request("GET", "/workers"),
                                                lambda r: bool(r[1]["workers"]))
            assert status == 200
            (w,) = body["workers"]
            assert (w["kinds"], w["pid"], w["hostname"]) == (["http", "static"], os.getpid(),
                                                             socket.gethostname())
            assert set(w) == {"id", "kinds", "hostname", "pid", "version", "startedOn", "seenOn",
                              "health", "stats"}
            assert w["health"] is None
            assert w["startedOn"] <= w["seenOn"] and w["seenOn"].endswith("Z")
            stop.set()
            await beating
        assert (await stack.request("GET", "/workers"))[:2] == (200, {"workers": [],
                                                                       "apiTokens": []})
    finally:
        await stack.stop()
