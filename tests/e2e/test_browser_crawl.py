"""Browser jobs end to end (a whole stack in-process, a worker serving ``http`` and
``browser=4``, real Chromium): links only a script builds are found by a browser job and by no
http job, and the WARC keeps the rendered page; a browser killed mid-crawl is relaunched and
the job completes with nothing failed; a page that hangs fails with its timeout after its
retries while the others are fine. Never skipped: without chromium it fails."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from warcio.archiveiterator import ArchiveIterator

from shared.config import Settings
from tests.browser_site import CHROMIUM, JsSite, anchors, chromium_pids, require_chromium
from tests.e2e.stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


@pytest.fixture
def browsing(settings: Settings, tmp_path: Path) -> Settings:
    require_chromium()
    return settings.model_copy(update={
        "fetcher_kinds": ("http", "browser"), "worker_kinds": {"http": 8, "browser": 4},
        "browser_path": CHROMIUM, "retries": 1, "output_root": tmp_path / "out"})


@pytest.fixture
async def stack(browsing: Settings) -> AsyncIterator[Stack]:
    st = await Stack(browsing).start()
    yield st
    await st.stop()


async def test_a_browser_job_finds_the_links_scripts_build(
        stack: Stack, browsing: Settings, db: asyncpg.Connection) -> None:
    site = await JsSite(pages=7).start()
    try:
        http_job = await stack.post_spec({"urls": [site.url(0)], "depth": 3})
        await stack.wait_complete(http_job)
        assert await stack.result(http_job) == {}  # the pages as served have no <a>
        job = await stack.post_spec({"urls": [site.url(0)], "depth": 3, "fetcher": "browser",
                                     "save": [{"kind": "warc"}]})
        st = await stack.wait_complete(job)
        assert st["fetcher"] == {"kind": "browser", "liveWorkers": 1}
        assert await stack.result(job) == site.expected_result(3)
        kinds = await db.fetch("SELECT url, fetcher FROM url WHERE url = ANY($1::text[])",
                               list(site.expected_result(3)))
        assert {r["fetcher"] for r in kinds} == {"browser"} and len(kinds) == 7
        # The WARC's response record for the root holds the rendered page, script-built links.
        files = sorted((browsing.output_root / f"job-{job}" / "warc").glob("*.warc.gz"))
        assert files
        bodies = {}
        for f in files:
            with f.open("rb") as fh:
                for r in ArchiveIterator(fh):
                    if r.rec_type == "response":
                        bodies[r.rec_headers.get_header("WARC-Target-URI")] = \
                            r.content_stream().read()
        assert [site.base + h for h in anchors(bodies[site.url(0)])] == site.links(0)
    finally:
        await site.stop()


async def test_a_killed_browser_is_relaunched_and_the_job_completes(stack: Stack) -> None:
    site = await JsSite(pages=40, delay=0.1).start()
    try:
        job = await stack.post_spec({"urls": [site.url(0)], "depth": 7, "fetcher": "browser"})
        deadline = time.monotonic() + 60
        while site.page_hits() < 5:
            assert time.monotonic() < deadline, "the crawl never started"
            await asyncio.sleep(0.02)
        pids = chromium_pids()
        assert pids
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        await stack.wait_complete(job, timeout=90)
        assert await stack.result(job) == site.expected_result(7)
        assert await stack.result(job, status="failed") == {}
        assert chromium_pids() and not (chromium_pids() & pids)  # a new browser serves
    finally:
        await site.stop()


async def test_a_hanging_page_fails_with_its_timeout_after_its_retries(stack: Stack) -> None:
    site = await JsSite(pages=7, root_links=("/hang",)).start()
    try:
        job = await stack.post_spec({"urls": [site.url(0)], "depth": 3, "fetcher": "browser",
                                     "browser": {"timeout": 2}})
        await stack.wait_complete(job, timeout=60)
        assert await stack.result(job) == site.expected_result(3)
        failed: dict[str, Any] = await stack.result(job, status="failed")
        assert list(failed) == [site.base + "/hang"]
        (why,) = failed.values()
        assert why["status"] is None and why["attempts"] == 2  # retries: 1
        assert str(why["reason"]).startswith("timeout after 2s"), why
        assert site.hits["/hang"] == 2
    finally:
        await site.stop()
