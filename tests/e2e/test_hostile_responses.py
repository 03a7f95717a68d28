"""Hostile responses end to end (docs/security.md, "Hostile responses"): one job over a hostile
site on 127.0.0.1 (200,000 links, a 30 MB body, 100,000-deep nesting, a bad charset label,
invalid UTF-8, a gzip bomb of GBs, a trickle longer than the fetch deadline, an endless
redirect loop) through the whole stack. The job completes, each URL with its documented
outcome; meanwhile ``/healthz`` answers, a small job on an ordinary site finishes while the
trickle is still being served, and the worker's memory stays bounded."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import struct
import time
import zlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from shared.config import Settings
from tests.e2e.stack import Stack
from tests.integration.test_hostile_html import corpus
from tests.polling import until
from tests.servers import serve
from worker.fetchers.http import TRICKLE

# serial: make test runs it alone (it bounds its own RSS and the web server's answer times)
pytestmark = [pytest.mark.e2e, pytest.mark.serial]

MiB = 1 << 20
READ_TIMEOUT = 1.0      # each read's timeout; the trickle's bytes each come in time
CONNECT_TIMEOUT = 20.0  # so the fetch budget (connect + 2 × read) is 22 s ...
TRICKLE_BYTES = 300     # ... and the trickle, a byte every 0.3 s, would take 90 s
PARSE_TIMEOUT = 5.0
BOMB_GIB = 4            # inflated; about 4 MB on the wire
MAX_PAGES = 30          # the hostile job's cap: 200,000 links make it fetch no more
# Generous: the worker, web server and foreman all run in this process (and it holds what the
# suite's earlier tests left); the bomb read whole would add 4 GiB.
RSS_GROWTH = 1024 * MiB


def gzip_bomb(gib: int) -> tuple[bytes, bytes, int, bytes]:
    """A gzip stream of ``gib`` GiB of zeros, built without inflating it: its header, one
    deflate segment of 1 MiB of zeros (full-flushed: it can be repeated), how many times to
    send it, and the end (an empty last block, CRC-32 and size)."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    segment = c.compress(bytes(MiB)) + c.flush(zlib.Z_FULL_FLUSH)
    end = zlib.compressobj(9, zlib.DEFLATED, -15).flush()
    crc, zeros = 0, bytes(MiB)
    count = gib * 1024
    for _ in range(count):
        crc = zlib.crc32(zeros, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    return header, segment, count, end + struct.pack("<II", crc, (count * MiB) & 0xFFFFFFFF)


@dataclass
class HostileSite:
    """Every hostile answer at its own path; any other path is a small page without links
    (what the job's followed links reach)."""
    base: str = ""
    trickling: int = 0       # trickle answers being served now
    paths: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        pages = {p.name: p for p in corpus()}
        self.html = {"/links": (pages["200,000 links"].body, "utf-8"),
                     "/deep": (pages["100,000 nested divs"].body, "utf-8"),
                     "/bad-label": (pages["an unknown encoding"].body, "x-no-such-encoding"),
                     "/bad-utf8": (pages["invalid UTF-8"].body, "utf-8")}
        self.bomb = gzip_bomb(BOMB_GIB)

    def url(self, path: str) -> str:
        return self.base + path

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.paths.append(path)
        if path in self.html:
            body, charset = self.html[path]
            return web.Response(body=body, headers={
                "Content-Type": f"text/html; charset={charset}"})
        if path == "/huge":  # 30 MB of HTML, chunked (no Content-Length to refuse it by)
            return await stream(request, {}, itertools.repeat(b"<p>" + b"x" * (MiB - 3), 30))
        if path == "/bomb":
            header, segment, count, end = self.bomb
            return await stream(request, {"Content-Encoding": "gzip"},
                                itertools.chain([header], itertools.repeat(segment, count),
                                                [end]))
        if path == "/trickle":
            self.trickling += 1
            try:
                return await stream(request, {}, itertools.repeat(b"<", TRICKLE_BYTES), 0.3)
            finally:
                self.trickling -= 1
        if path.startswith("/loop/"):  # for ever: /loop/1 -> /loop/2 -> ...
            raise web.HTTPFound(f"/loop/{int(path.rsplit('/', 1)[1]) + 1}")
        return web.Response(text="<p>an ordinary page</p>", content_type="text/html")


async def stream(request: web.Request, headers: dict[str, str], parts: Iterable[bytes],
                 pause: float = 0.0) -> web.StreamResponse:
    """An HTML answer sent in ``parts`` (chunked), ``pause`` seconds after each, until all
    are sent or the client hangs up (as the fetcher does when it has had enough)."""
    resp = web.StreamResponse(headers={"Content-Type": "text/html", **headers})
    await resp.prepare(request)
    with contextlib.suppress(ConnectionError):
        for part in parts:
            await resp.write(part)
            if pause:
                await asyncio.sleep(pause)
        await resp.write_eof()
    return resp


@pytest.fixture
async def hostile() -> AsyncIterator[HostileSite]:
    site = HostileSite()
    runner, site.base = await serve(site.handle)
    yield site
    await runner.cleanup()


@pytest.fixture
async def ordinary() -> AsyncIterator[str]:
    """Another host: an ordinary page linking one other."""
    async def handle(request: web.Request) -> web.Response:
        links = "<a href='/next'>next</a>" if request.path == "/" else ""
        return web.Response(text=f"<html><body>{links}</body></html>", content_type="text/html")

    runner, base = await serve(handle, "127.0.0.2")
    yield base
    await runner.cleanup()


@pytest.fixture
async def stack(settings: Settings) -> AsyncIterator[Stack]:
    s = settings.model_copy(update={"read_timeout": READ_TIMEOUT,
                                    "connect_timeout": CONNECT_TIMEOUT,
                                    "parse_timeout": PARSE_TIMEOUT})
    st = await Stack(s).start()
    yield st
    await st.stop()


def peak_rss(reset: bool = False) -> int:
    """This process's peak resident set (the in-process worker's), in bytes, since the last
    reset (Linux: ``clear_refs`` 5 sets the peak to the current RSS)."""
    if reset:
        Path("/proc/self/clear_refs").write_text("5")
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/self/status")


async def healthz(stack: Stack, answers: list[tuple[int, float]], stop: asyncio.Event) -> None:
    """Ask ``/healthz`` until ``stop``: each answer's status (0: none in 30 s) and time."""
    while not stop.is_set():
        t0 = time.monotonic()
        try:
            async with asyncio.timeout(30):
                status, _, _ = await stack.request("GET", "/healthz")
        except TimeoutError:
            status = 0
        answers.append((status, time.monotonic() - t0))
        await asyncio.sleep(0.1)


async def test_a_job_over_hostile_responses(stack: Stack, hostile: HostileSite,
                                            ordinary: str) -> None:
    urls = {path: hostile.url(path) for path in
            ("/links", "/huge", "/deep", "/bad-label", "/bad-utf8", "/bomb", "/trickle",
             "/loop/0")}
    answers: list[tuple[int, float]] = []
    stop = asyncio.Event()
    watcher = asyncio.create_task(healthz(stack, answers, stop))
    before = peak_rss(reset=True)
    try:
        job = await stack.post_spec({"urls": list(urls.values()), "depth": 2,
                                     "scope": {"maxPages": MAX_PAGES}})
        # While the trickle is being served, a small job on another site is crawled (a page
        # and its link) to its end.
        await until(lambda: hostile.trickling > 0, 30, "the trickle started")
        small = await stack.post_spec({"urls": [ordinary + "/"], "depth": 2})
        small_st = await stack.wait_complete(small, timeout=60)
        trickle_served = hostile.trickling > 0
        st = await stack.wait_complete(job, timeout=120)
    finally:
        stop.set()
        await watcher
        peak = peak_rss()

    # Meanwhile memory stayed bounded and the web server answered.
    assert peak - before < RSS_GROWTH, f"RSS grew from {before / MiB:.0f} to {peak / MiB:.0f} MiB"
    assert len(answers) >= 10, answers
    assert all(status == 200 for status, _ in answers), answers
    assert max(t for _, t in answers) < 10, answers
    assert small_st["pages"]["fetched"] == 2 and small_st["pages"]["failed"] == 0, small_st
    assert trickle_served, "the small job finished only after the trickle's deadline"

    failed = await stack.result(job, status="failed")
    result = await stack.result(job)

    # Failed for good, each with its reason, after one attempt.
    cap = f"body exceeds the {10 * MiB}-byte limit"
    expected = {urls["/huge"]: cap, urls["/bomb"]: cap, urls["/trickle"]: TRICKLE,
                urls["/loop/0"]: "more than 10 redirects"}
    deep_failed = urls["/deep"] in failed  # its links in time, or failed by the parse deadline
    if deep_failed:
        assert failed[urls["/deep"]]["reason"].startswith("links not extracted"), failed
        expected[urls["/deep"]] = failed[urls["/deep"]]["reason"]
    assert {u: f["reason"] for u, f in failed.items()} == expected, failed
    statuses = {u: None for u in expected} | ({urls["/deep"]: 200} if deep_failed else {})
    assert {u: (f["status"], f["attempts"]) for u, f in failed.items()} == {
        u: (status, 1) for u, status in statuses.items()}, json.dumps(failed, indent=1)
    assert st["pages"]["failed"] == len(expected), st
    assert st["completed"] == len(urls) and st["pending"] == 0, st

    # Fetched, with their links: all 200,000 listed; the job fetched no more than maxPages.
    assert len(result[urls["/links"]]) == 200_000
    assert hostile.url("/p/199999") in result[urls["/links"]]
    for path in ("/bad-label", "/bad-utf8") + (() if deep_failed else ("/deep",)):
        assert result[urls[path]] == [hostile.url("/after")], (path, result[urls[path]])
    assert st["pages"]["processed"] <= MAX_PAGES, st
    followed = [p for p in hostile.paths if p.startswith("/p/")]
    assert 0 < len(followed) <= MAX_PAGES, followed

