"""Crawlee for Python, PlaywrightCrawler on Debian's Chromium:
``python -m bench.crawlee_crawl --start URL --max-depth D --pages C --out FEED``.

The crawler drives the same ``/usr/bin/chromium`` as Harvester's browser workers (through its
executable path: no browser is downloaded, ``PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1``), headless,
with ``C`` pages at once (``ConcurrencySettings`` min = desired = max), no fingerprint
generator, in-memory storage. The request handler reads the rendered page's links (Crawlee's
``extract_links``: ``<a href>``, same hostname), writes one JSON line per page with them and
enqueues them (``add_requests``: what ``enqueue_links`` does), up to ``max_crawl_depth``.

At the end it prints one JSON line with the crawl's own figures. The window starts when the
first page is about to navigate (the browser is launched by then: start-up excluded, as
Harvester's is) and ends when the last request handler returns. CPU over the window: this
process and all its descendants (the Playwright driver, Chromium and its renderers), each one's
own CPU plus its reaped children's, as ``bench/procs.py`` counts Harvester's tree, from a
sampler thread (every 0.2 s, interpolated to the window's ends) whose own CPU is taken off.
Not ``getrusage``: Chromium's processes that outlive their parent at shutdown are never reaped
by this process, so its children's times miss them (``cpu_rusage``, reported beside).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import threading
import time
from datetime import timedelta
from typing import Any, TextIO

os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")

import psutil
from crawlee import ConcurrencySettings
from crawlee.crawlers import (
    PlaywrightCrawler,
    PlaywrightCrawlingContext,
    PlaywrightPreNavCrawlingContext,
)
from crawlee.storage_clients import MemoryStorageClient


def tree_cpu() -> float:
    """CPU seconds of this process and every descendant alive, reaped children included."""
    me = psutil.Process()
    total = 0.0
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


class CpuSampler(threading.Thread):
    """``(t, tree CPU, this thread's CPU)`` every ``interval`` seconds."""

    def __init__(self, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.samples: list[tuple[float, float, float]] = []
        self.halt = threading.Event()

    def sample(self) -> None:
        cpu = tree_cpu()
        self.samples.append((time.monotonic(), cpu, time.thread_time()))

    def run(self) -> None:
        self.sample()
        while not self.halt.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self.halt.set()
        self.join(5)

    def at(self, t: float) -> float:
        """The tree's CPU at ``t`` less the sampler's own, interpolated between samples."""
        points = [(ts, cpu - own) for ts, cpu, own in self.samples]
        before = [p for p in points if p[0] <= t] or points[:1]
        after = [p for p in points if p[0] >= t] or points[-1:]
        (t0, c0), (t1, c1) = before[-1], after[0]
        return c0 if t1 <= t0 else c0 + (c1 - c0) * (t - t0) / (t1 - t0)


def own_and_reaped_cpu() -> float:
    """CPU of this process and its reaped descendants (when none is left alive)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


async def crawl(a: argparse.Namespace, feed: TextIO) -> dict[str, Any]:
    crawler = PlaywrightCrawler(
        browser_type="chromium", headless=True,
        browser_launch_options={"executable_path": a.chromium, "chromium_sandbox": False},
        fingerprint_generator=None,
        concurrency_settings=ConcurrencySettings(min_concurrency=a.pages,
                                                 desired_concurrency=a.pages,
                                                 max_concurrency=a.pages),
        max_crawl_depth=a.max_depth, storage_client=MemoryStorageClient(),
        configure_logging=False, request_handler_timeout=timedelta(seconds=a.page_timeout),
        navigation_timeout=timedelta(seconds=a.page_timeout))
    stats: dict[str, Any] = {"pages": 0, "links": 0, "t_last": 0.0}

    async def first(context: PlaywrightPreNavCrawlingContext) -> None:
        if "t0" not in stats:
            stats["t0"], stats["rusage0"] = time.monotonic(), tree_cpu()

    async def handle(context: PlaywrightCrawlingContext) -> None:
        requests = await context.extract_links(strategy="same-hostname")
        await context.add_requests(requests)
        links = [r.url for r in requests]
        feed.write(json.dumps({"url": context.request.loaded_url or context.request.url,
                               "links": links}) + "\n")
        stats["pages"] += 1
        stats["links"] += len(links)
        stats["t_last"] = time.monotonic()

    crawler.pre_navigation_hook(first)
    crawler.router.default_handler(handle)
    sampler = CpuSampler()
    sampler.start()
    try:
        result = await crawler.run([a.start])
    finally:
        stats["t_run_end"] = time.monotonic()
        await asyncio.sleep(2.5 * sampler.interval)  # a sample after the last handler's end
        sampler.stop()
    if "t0" in stats:
        stats["cpu"] = sampler.at(stats["t_last"]) - sampler.at(stats["t0"])
        stats["samples"] = len(sampler.samples)
    stats["cpu_alive_at_end"] = tree_cpu()  # anything still running (should be nothing)
    stats["result"] = {"requests_finished": result.requests_finished,
                       "requests_failed": result.requests_failed,
                       "retry_histogram": result.retry_histogram}
    return stats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--start", required=True)
    p.add_argument("--max-depth", type=int, required=True,
                   help="Crawlee's max_crawl_depth (the root is depth 0)")
    p.add_argument("--pages", type=int, default=4, help="browser pages at once (4)")
    p.add_argument("--out", required=True, help="JSON lines feed: one object per page")
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--page-timeout", type=float, default=60.0)
    a = p.parse_args()
    with open(a.out, "w") as feed:
        stats = asyncio.run(crawl(a, feed))
    cpu_end = own_and_reaped_cpu()
    alive = [c.pid for c in psutil.Process().children(recursive=True)]
    t0 = stats.get("t0")
    info: dict[str, Any] = {
        "responses": stats["pages"], "links_seen": stats["links"], **stats["result"],
        "alive_children_at_end": alive,
    }
    if t0 is not None:
        info.update({"wall": stats["t_last"] - t0, "wall_run": stats["t_run_end"] - t0,
                     "cpu": stats["cpu"], "cpu_samples": stats["samples"],
                     # to the end of the process's work, through getrusage (see above)
                     "cpu_rusage": (stats["cpu_alive_at_end"] if alive else cpu_end)
                     - stats["rusage0"]})
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                info["vmhwm_crawler_mb"] = round(int(line.split()[1]) / 1024, 1)
    print(json.dumps(info), flush=True)


if __name__ == "__main__":
    main()
