"""Worker init functions (CC-5) and health (CC-4), on an in-process stack (real PostgreSQL and
NATS): the init runs once per process however many tasks it serves, and its value reaches
them; an init that raises leaves the worker up but unhealthy (``/readyz`` 503 with the reason,
registry without kinds and with the reason, no work taken) until a healthy worker comes; a
worker whose error rate passes ``workerMaxErrorRate`` ends with the reason; a browser job's
options reach its plan (its spec is read though its rule set is 0)."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from harvester_ops.embedded import free_port
from shared.config import Settings
from shared.db import jobs, tasks, visits, workers
from shared.jobspec import stored_spec
from shared.scope import Scope
from tests.e2e.stack import Stack
from tests.polling import until
from worker.crawl import run as run_worker
from worker.extractors.lanes import Parser
from worker.fetchers import FETCHERS
from worker.health import WorkerDegraded
from worker.pipeline import JobPlan, JobPlans

RECORD = "tests.init_fixture:record_init"
FAILING = "tests.init_fixture:failing_init"


@pytest.fixture
def init_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "init.log"
    path.touch()
    monkeypatch.setenv("HARVESTER_TEST_INIT_LOG", str(path))
    return path


class Systemd:
    """A fake systemd notify socket: the datagrams the worker sent."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.got: list[str] = []

    async def heard(self, datagram: str) -> bool:
        while True:
            try:
                self.got.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return datagram in self.got


@pytest.fixture
def systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Systemd]:
    fake = Systemd(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    yield fake
    fake.sock.close()


@pytest.fixture
def tasked(settings: Settings) -> Settings:
    n = settings.database_url.rsplit("/", 1)[1]
    return settings.model_copy(update={
        "task_topic": f"{n}.task", "tasks": {"whoami": "tests.init_fixture:whoami"},
        "heartbeat_interval": 0.2, "watchdog_interval": 0.2})


@pytest.fixture
async def stack(tasked: Settings) -> AsyncIterator[Stack]:
    s = Stack(tasked)
    await s.start(foremen=1, workers=0)
    try:
        yield s
    finally:
        await s.stop()


def add_worker(stack: Stack, settings: Settings) -> asyncio.Task[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(run_worker(settings, stop))
    stack.tasks.append((stop, task))
    return task


async def state(db: asyncpg.Connection, ids: list[int]) -> list[str]:
    return [(await tasks.get(db, i)).state for i in ids]  # type: ignore[union-attr]


async def test_init_runs_once_per_process_and_reaches_every_task(
        stack: Stack, tasked: Settings, db: asyncpg.Connection, init_log: Path,
        systemd: Systemd) -> None:
    settings = tasked.model_copy(update={"init": (RECORD, "tests.init_fixture:async_init")})
    add_worker(stack, settings)
    ids = [(await tasks.create(db, "whoami", "http", {}, None))[0] for _ in range(5)]

    async def finished() -> bool:
        return all(s in ("succeeded", "failed") for s in await state(db, ids))
    await until(finished, what="5 tasks finished")
    infos = [await tasks.get(db, i) for i in ids]
    assert {i.state for i in infos if i} == {"succeeded"}
    assert init_log.read_text().split() == [str(os.getpid())]  # once, for 5 tasks
    expected = {RECORD: {"pid": os.getpid(), "topic": settings.work_topic},
                "tests.init_fixture:async_init": "async ready"}
    assert all(i.result == expected for i in infos if i)
    await until(lambda: systemd.heard("READY=1"), what="READY to systemd")
    await until(lambda: systemd.heard("WATCHDOG=1"), what="a watchdog keep-alive")


async def test_a_failing_init_leaves_the_worker_unhealthy_and_idle(
        stack: Stack, tasked: Settings, db: asyncpg.Connection, init_log: Path,
        systemd: Systemd) -> None:
    port = free_port()
    bad = tasked.model_copy(update={"init": (RECORD, FAILING),
                                    "metrics_addr": f"127.0.0.1:{port}"})
    add_worker(stack, bad)
    reason = f"init failed: {FAILING}: ValueError: no model file at /nowhere"

    async def registered() -> bool:
        return bool(await workers.live_workers(db, tasked.worker_timeout))
    await until(registered, what="the unhealthy worker in the registry")
    (row,) = await workers.live_workers(db, tasked.worker_timeout)
    assert (row.kinds, row.health) == ([], reason)
    assert await workers.live_kinds(db, tasked.worker_timeout) == []
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/readyz") as r:
            assert (r.status, (await r.json())["message"]) == (503, reason)
        async with http.get(f"http://127.0.0.1:{port}/healthz") as r:
            assert r.status == 200  # alive: it is not restarted into the same failure
    status, body, _ = await stack.request("GET", "/workers")
    assert status == 200 and [w["health"] for w in body["workers"]] == [reason]
    await until(lambda: systemd.heard(f"READY=1\nSTATUS=unhealthy: {reason}"),
                what="READY with the unhealthy status")
    assert "READY=1" not in systemd.got  # never said to serve

    (task_id, _) = await tasks.create(db, "whoami", "http", {}, None)

    async def published() -> bool:
        return bool(await db.fetchval("SELECT published_on IS NOT NULL FROM task WHERE id = $1",
                                      task_id))
    await until(published, what="the task published")
    since = time.monotonic()
    while time.monotonic() - since < 1.5:  # several heartbeats and watchdog rounds: untouched
        assert await state(db, [task_id]) == ["queued"]
        await asyncio.sleep(0.1)

    add_worker(stack, tasked)  # a healthy worker takes it

    async def succeeded() -> bool:
        return await state(db, [task_id]) == ["succeeded"]
    await until(succeeded, what="the task run by the healthy worker")
    assert len(init_log.read_text().split()) == 1  # the failing worker's first init ran once


async def test_a_worker_past_its_error_rate_ends_with_the_reason(
        stack: Stack, tasked: Settings) -> None:
    settings = tasked.model_copy(update={
        "worker_max_error_rate": 0.5, "worker_health_window": 5, "retries": 0})
    closed = [f"http://127.0.0.1:{free_port()}/{i}" for i in range(5)]  # nothing listens
    worker = asyncio.create_task(run_worker(settings, asyncio.Event()))
    await stack.post_job(closed)
    with pytest.raises(WorkerDegraded, match=r"http: error rate 100% over the last 5 outcomes"):
        await asyncio.wait_for(worker, 30)


async def test_a_browser_jobs_options_reach_its_plan(settings: Settings,
                                                     db: asyncpg.Connection) -> None:
    options = {"wait": "domcontentloaded", "selector": "a.next", "waitMs": 100}
    stored = {**stored_spec(1, False, False, Scope(), None), "fetcher": "browser",
              "browser": options}
    job, (url_id,) = await jobs.create_job(db, ["http://app.test/"], 1, False, spec=stored)
    browser = FETCHERS.create("browser", settings, concurrency=1)
    async with Parser(settings.parse_timeout, lanes=1) as lanes:
        plans = JobPlans(settings, lanes, {"browser": browser})
        p = visits.Planned(job, url_id, "http://app.test/", False, False, fetcher="browser")
        plan = (await plans.resolve(db, [p]))[job]
    assert isinstance(plan, JobPlan)
    assert (plan.ruleset, plan.fetch_options) == (0, options)
    assert plan.fetcher is browser
