"""The task loader (worker/loader.py) through the real host gate (PostgreSQL, robots.txt of a
local site): a disallowed URL is refused before any request, an allowed one is fetched in a
host slot that is given back after the answer; a worker without pages lends none."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

from shared.config import Settings
from shared.db.pool import open_pool
from tests.browser_site import JsSite
from worker.fetchers.http import HttpFetcher
from worker.gate import HostGate
from worker.loader import Loader, LoadRefused


@pytest.fixture
async def site() -> AsyncIterator[JsSite]:
    s = await JsSite(pages=3).start()
    yield s
    await s.stop()


@pytest.fixture
async def loader(settings: Settings) -> AsyncIterator[Loader]:
    polite = settings.model_copy(update={"robots": True, "host_concurrency": 1})
    async with open_pool(polite.database_url, max_size=4) as pool, \
            HttpFetcher(polite) as fetcher:
        gate = HostGate(polite, pool, fetcher.session)
        releases = asyncio.create_task(gate.run_releases())
        try:
            yield Loader(polite, gate, fetcher)
        finally:
            await gate.close()
            releases.cancel()
            await asyncio.gather(releases, return_exceptions=True)


async def leases(db: asyncpg.Connection, host: str) -> list[object]:
    return list(await db.fetchval("SELECT leases FROM host WHERE host = $1", host) or [])


async def test_the_loader_goes_through_the_gate(site: JsSite, loader: Loader,
                                                db: asyncpg.Connection) -> None:
    with pytest.raises(LoadRefused) as refused:
        await loader.fetch(site.base + "/private/report")
    assert refused.value.why == "blocked by robots.txt"
    assert site.hits["/robots.txt"] == 1 and site.hits["/private/report"] == 0

    page = await loader.fetch(site.url(1))
    assert (page.status, page.error, page.mime) == (200, None, "text/html")
    assert "<title>Page 1</title>" in page.text and page.final_url == site.url(1)
    # The slot is given back: no lease left on the host (host concurrency 1).
    deadline = time.monotonic() + 10
    while await leases(db, site.base):
        assert time.monotonic() < deadline, "the slot was never released"
        await asyncio.sleep(0.02)
    missing = await loader.fetch(site.base + "/p/9")
    assert (missing.status, missing.error, missing.body) == (404, "HTTP 404 Not Found", None)


async def test_an_http_loader_lends_no_page(loader: Loader) -> None:
    with pytest.raises(TypeError, match="http worker has no browser pages"):
        loader.page()
