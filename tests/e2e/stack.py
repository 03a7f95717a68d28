"""Harvester's three tiers run in-process (real PostgreSQL and NATS), plus an HTTP client."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import nats
from aiohttp import web

from foreman.schedule import run as run_foreman
from shared.config import Settings, stream_name
from web_server.app import runner
from worker.crawl import run as run_worker


class Stack:
    """``token``: the API bearer token its HTTP client sends (a stack with ``authTokens``)."""

    def __init__(self, settings: Settings, token: str | None = None) -> None:
        self.settings = settings
        self.token = token
        self.tasks: list[tuple[asyncio.Event, asyncio.Task[None]]] = []
        self.runner: web.AppRunner | None = None
        self.base = ""
        self.http: aiohttp.ClientSession | None = None
        self.last_job = 0

    async def start(self, foremen: int = 1, workers: int = 1) -> Stack:
        self.runner = runner(self.settings)  # as web_server runs it
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base = f"http://127.0.0.1:{port}"
        self.http = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {self.token}"} if self.token else None)
        await self.wait_ready()
        for _ in range(foremen):
            self.add(run_foreman)
        for _ in range(workers):
            self.add(run_worker)
        return self

    async def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, _, _ = await self.request("GET", "/healthz")
            if status == 200:
                return
            await asyncio.sleep(0.02)
        raise AssertionError("web server not ready")

    def add(self, run: Any, settings: Settings | None = None) -> asyncio.Task[None]:
        """Start one more tier (``run(settings, stop)``), with its own settings if given (a
        slow worker, other tokens); its task, to cancel it as a crash would end it."""
        stop = asyncio.Event()
        task = asyncio.create_task(run(settings or self.settings, stop))
        self.tasks.append((stop, task))
        return task

    async def stop(self) -> None:
        for stop, _ in self.tasks:
            stop.set()
        results = await asyncio.gather(*(t for _, t in self.tasks), return_exceptions=True)
        if self.http:
            await self.http.close()
        if self.runner:
            await self.runner.cleanup()
        errors = [r for r in results if isinstance(r, BaseException)
                  and not isinstance(r, asyncio.CancelledError)]  # one a test cancelled
        assert not errors, f"a tier failed: {errors!r}"

    async def request(self, method: str, path: str, data: str | bytes | None = None,
                      **params: str) -> tuple[int, Any, aiohttp.typedefs.LooseHeaders]:
        assert self.http
        async with self.http.request(method, self.base + path, data=data, params=params) as r:
            text = await r.text()
            try:
                body = json.loads(text)
            except ValueError:
                body = text
            return r.status, body, r.headers

    async def post_job(self, urls: list[str], **params: str) -> int:
        status, body, _ = await self.request("POST", "/", "\n".join(urls), **params)
        assert status == 200, body
        self.last_job = int(body["jobId"])
        return self.last_job

    async def post_json(self, body: Any, path: str = "/", content_type: str = "application/json",
                        **headers: str) -> tuple[int, Any]:
        """POST ``body`` as JSON; the status and the answer's JSON."""
        assert self.http
        async with self.http.post(self.base + path, data=json.dumps(body),
                                  headers={"Content-Type": content_type, **headers}) as r:
            return r.status, await r.json(content_type=None)

    async def post_spec(self, spec: dict[str, Any]) -> int:
        """POST a JSON job spec, which must be accepted; its job id."""
        status, body = await self.post_json(spec)
        assert status == 200, body
        self.last_job = int(body["jobId"])
        return self.last_job

    async def status(self, job_id: int) -> dict[str, Any]:
        status, body, _ = await self.request("GET", f"/status/{job_id}")
        assert status == 200, body
        return body

    async def result(self, job_id: int, **params: str) -> dict[str, list[str]]:
        status, body, _ = await self.request("GET", f"/result/{job_id}", **params)
        assert status == 200, body
        return body

    async def wait_complete(self, job_id: int, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = await self.status(job_id)
            if st["pending"] == 0:
                return st
            await asyncio.sleep(0.05)
        raise AssertionError(f"job {job_id} not complete after {timeout}s: {st}")

    async def wait_idle(self, timeout: float = 30) -> None:
        """Until both streams are empty and no message is unacknowledged (nothing in flight)."""
        nc = await nats.connect(self.settings.nats_url)
        try:
            js = nc.jetstream()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                busy = 0
                for topic, durable in ((self.settings.url_topic, "foreman"),
                                       (self.settings.work_topic, "worker")):
                    info = await js.consumer_info(stream_name(topic), durable)
                    busy += info.num_pending + info.num_ack_pending
                if busy == 0:
                    return
                await asyncio.sleep(0.05)
            raise AssertionError("queues did not drain")
        finally:
            await nc.close()
