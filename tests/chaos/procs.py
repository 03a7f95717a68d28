"""Harvester's tiers as real processes (so a test can SIGKILL them), and a generated site."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from harvester_ops.embedded import free_port
from shared.config import Settings
from tests.servers import serve


class Tiers:
    """web_server, foreman and workers as subprocesses sharing one configuration."""

    def __init__(self, settings: Settings, logs: Path, host: str = "127.0.0.1") -> None:
        self.host = host  # the web server's address (a "node" of its own: 127.0.0.2 ...)
        self.port = free_port(host)
        self.logs = logs
        self.env = dict(os.environ,
                        HARVESTER_DATABASE_URL=settings.database_url,
                        HARVESTER_NATS_URL=settings.nats_url,
                        HARVESTER_URL_TOPIC=settings.url_topic,
                        HARVESTER_WORK_TOPIC=settings.work_topic,
                        HARVESTER_ACK_WAIT="3", HARVESTER_STALE_AFTER="30",
                        HARVESTER_WATCHDOG_INTERVAL="1", HARVESTER_RETRY_BASE="0.05",
                        HARVESTER_SHUTDOWN_TIMEOUT="10", HARVESTER_CONCURRENCY="16",
                        HARVESTER_LOG_LEVEL="WARNING", HARVESTER_HOST_CONCURRENCY="32",
                        HARVESTER_HOST_DELAY="0", HARVESTER_ROBOTS="0",
                        HARVESTER_ALLOW_NETWORKS="127.0.0.0/8")  # the sites are on loopback
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.http = aiohttp.ClientSession()
        self.base = f"http://{host}:{self.port}"

    def start(self, name: str) -> subprocess.Popen[bytes]:
        module = name.split("-")[0]
        args = [sys.executable, "-m", module]
        if module == "web_server":
            args += ["-addr", f"{self.host}:{self.port}"]
        with open(self.logs / f"{name}.log", "ab") as log:  # the child keeps its own copy
            self.procs[name] = subprocess.Popen(args, env=self.env, stdout=log,
                                                stderr=subprocess.STDOUT)
        return self.procs[name]

    def kill(self, name: str, sig: int = signal.SIGKILL) -> int:
        proc = self.procs.pop(name)
        proc.send_signal(sig)
        return proc.wait(30)

    async def up(self, workers: int = 2) -> Tiers:
        for name in ("web_server", "foreman", *(f"worker-{i}" for i in range(1, workers + 1))):
            self.start(name)
        await self.wait_ready()
        return self

    async def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                async with self.http.get(self.base + "/healthz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        raise AssertionError("web server not ready:\n" + self.tail())

    async def post(self, urls: list[str], **params: str) -> int:
        async with self.http.post(self.base + "/", data="\n".join(urls), params=params) as r:
            body = await r.json()
            assert r.status == 200, body
            return int(body["jobId"])

    async def get(self, path: str, **params: str) -> Any:
        async with self.http.get(self.base + path, params=params) as r:
            assert r.status == 200, await r.text()
            return await r.json()

    def tail(self) -> str:
        out = []
        for f in sorted(self.logs.glob("*.log")):
            out.append(f"--- {f.name}\n" + f.read_text(errors="replace")[-3000:])
        return "\n".join(out)

    async def down(self) -> dict[str, int | None]:
        """SIGTERM every tier; returns their exit codes (None: had to be killed)."""
        codes: dict[str, int | None] = {}
        for name in list(self.procs):
            proc = self.procs.pop(name)
            if proc.poll() is None:
                proc.terminate()
            try:
                codes[name] = await asyncio.to_thread(proc.wait, 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                codes[name] = None
        await self.http.close()
        return codes


@dataclass
class GraphSite:
    """``n`` pages in a 6-ary tree with extra random links (cycles, duplicates, fragments)."""

    n: int = 2200
    delay: float = 0.003
    hits: Counter[int] = field(default_factory=Counter)  # by page number
    agents: Counter[str] = field(default_factory=Counter)  # pages fetched by User-Agent
    base: str = ""
    runner: web.AppRunner | None = None

    def links(self, i: int) -> list[str]:
        rng = random.Random(i)
        out = [f"/p/{c}.html" for c in range(6 * i + 1, min(6 * i + 7, self.n))]
        out += [f"/p/{rng.randrange(self.n)}.html" for _ in range(4)]
        if out:
            out += [out[0], out[0] + "#frag"]
        return out

    def html(self, i: int) -> str:
        body = "".join(f'<a href="{u}">{u}</a>\n' for u in self.links(i))
        return f"<html><body><h1>page {i}</h1>\n{body}<img src='/img/{i % 7}.png'></body></html>"

    def canonical_links(self, i: int) -> list[str]:
        urls = {self.base + u.split("#")[0] for u in self.links(i)} | {f"{self.base}/img/{i % 7}.png"}
        return sorted(urls)

    async def start(self) -> GraphSite:
        self.runner, self.base = await serve(self._page, route="/p/{i}.html")
        return self

    async def _page(self, request: web.Request) -> web.Response:
        i = int(request.match_info["i"])
        self.hits[i] += 1
        self.agents[request.headers.get("User-Agent", "")] += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        return web.Response(text=self.html(i), content_type="text/html")

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()

    def expected(self, depth: int) -> dict[str, list[str]]:
        level = {0: 0}
        queue = [0]
        for i in queue:
            for u in self.links(i):
                j = int(u.split("/")[-1].split(".")[0])
                if j not in level and level[i] + 1 < depth:
                    level[j] = level[i] + 1
                    queue.append(j)
        return {f"{self.base}/p/{i}.html": self.canonical_links(i) for i in level}

    def refetches(self) -> int:
        return sum(n - 1 for n in self.hits.values() if n > 1)
