"""The ``browser`` fetcher: pages rendered by one headless Chromium per worker process
(Playwright, the browser at ``Settings.browser_path``), in ``concurrency`` reusable tabs.
See docs/browser.md."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Self

from shared.config import Settings
from shared.model import FetchedPage
from worker.fetchers import FETCHERS, FetchRequest, HopGate


@FETCHERS.register("browser")
class BrowserFetcher:
    """One Chromium and its tabs (a tab: a browser context and its one page, reused)."""
    kind = "browser"

    def __init__(self, settings: Settings, concurrency: int | None = None) -> None:
        self.settings = settings
        self.concurrency = concurrency or 1
        self.relaunches = 0  # how many times the browser was launched again (CC-7)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    async def fetch(self, req: FetchRequest, hops: HopGate | None) -> FetchedPage:
        return FetchedPage(req.url_id, None, None, "browser fetcher not built yet",
                           cacheable=False, fetcher="browser")

    @asynccontextmanager
    async def lease(self, timeout: float | None = None) -> AsyncIterator[Any]:
        """A tab's Playwright ``Page``, lent to a task until the block ends (reclaimed after
        ``browserPageLease`` seconds)."""
        raise NotImplementedError("browser fetcher not built yet")
        yield None  # pragma: no cover
