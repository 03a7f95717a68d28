"""Live status over server-sent events (issue 16): one LiveHub per web server process."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import aiohttp
import asyncpg
import pytest

from shared.config import Settings
from shared.db import progress
from tests.e2e.site import TestSite
from tests.e2e.stack import Stack
from web_server.live import LIVE

pytestmark = pytest.mark.e2e


async def read_events(http: aiohttp.ClientSession, url: str) -> list[tuple[str, Any]]:
    """Every event of the stream until the server closes it: (event, data)."""
    events: list[tuple[str, Any]] = []
    async with http.get(url) as r:
        assert r.status == 200 and r.headers["Content-Type"] == "text/event-stream"
        event, data = "", ""
        async for raw in r.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
            elif line == "" and event:
                events.append((event, json.loads(data)))
                event, data = "", ""
    return events


async def test_two_clients_get_status_then_completed_from_one_sample_per_tick(
        settings: Settings, site: TestSite, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[int]] = []
    sample = progress.sample

    async def counting(conn: asyncpg.Connection, watched: Sequence[int]
                       ) -> dict[int, progress.Counters]:
        calls.append(list(watched))
        return await sample(conn, watched)

    monkeypatch.setattr(progress, "sample", counting)
    stack = await Stack(settings.model_copy(update={"live_interval": 0.05})).start()
    try:
        assert stack.runner and stack.http
        hub = stack.runner.app[LIVE]
        job = await stack.post_job([site.a + "/"], depth="3")
        url = f"{stack.base}/status/{job}/events"
        first, second = await asyncio.wait_for(asyncio.gather(
            read_events(stack.http, url), read_events(stack.http, url)), 60)
        st = await stack.status(job)
    finally:
        await stack.stop()
    for events in (first, second):
        names = [e for e, _ in events]
        assert names[-1] == "completed" and names[:-1] and set(names[:-1]) == {"status"}
        assert events[-1][1]["pending"] == 0 and events[-1][1]["state"] == "running"
        assert events[-1][1]["pages"] == st["pages"]
        assert events[-2][1] == events[-1][1]  # the completed event repeats the last status
    # However many clients: one sample query per tick, each for the job once.
    assert calls and len(calls) == hub.ticks
    assert all(w.count(job) <= 1 for w in calls)
    assert any(job in w for w in calls)


async def test_events_of_an_unknown_job_are_404(stack: Stack) -> None:
    status, body, _ = await stack.request("GET", "/status/12345/events")
    assert status == 404 and body["code"] == "NotFound"


async def test_status_has_rates_and_eta(stack: Stack, site: TestSite) -> None:
    job = await stack.post_job([site.a + "/"], depth="3")
    st = await stack.wait_complete(job)
    assert st["eta"] == {"seconds": 0.0, "remainingPages": 0, "method": "levels"}
    assert st["rates"]["pagesPerSecond"] > 0 and set(st["rates"]) == {
        "pagesPerSecond", "fetchedPerSecond", "window"}


async def test_status_reads_levels_and_hosts_once_an_interval(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """/status polled by many clients reads a job's levels and hosts once per liveInterval."""
    calls: list[str] = []
    levels, hosts = progress.levels, progress.hosts

    async def counting_levels(conn: asyncpg.Connection, job_id: int) -> Any:
        calls.append("levels")
        return await levels(conn, job_id)

    async def counting_hosts(conn: asyncpg.Connection, job_id: int, top: int = 10) -> Any:
        calls.append("hosts")
        return await hosts(conn, job_id, top)

    monkeypatch.setattr(progress, "levels", counting_levels)
    monkeypatch.setattr(progress, "hosts", counting_hosts)
    stack = await Stack(settings.model_copy(update={"live_interval": 30.0})).start(
        foremen=0, workers=0)
    try:
        job = await stack.post_job(["http://a.example/"])
        answers = [await stack.status(job) for _ in range(5)]
    finally:
        await stack.stop()
    assert sorted(calls) == ["hosts", "levels"]
    assert all(a["eta"]["remainingPages"] == 1 for a in answers)
