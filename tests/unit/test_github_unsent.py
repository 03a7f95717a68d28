"""A page the github fetcher returns without sending a request (no token free, the token store
down) is no fetch: it counts neither as a failure of the worker's health window nor in its
stats (review 13, H1). A real failure (no answer) still counts."""

from __future__ import annotations

import asyncio
from typing import Any

from shared.config import Settings
from shared.model import FetchedPage
from worker.fetchers import FetchRequest
from worker.fetchers.github import GitHubFetcher
from worker.health import HealthMonitor
from worker.pipeline import Pipeline
from worker.sources.github import GitHubPolicy
from worker.stats import WorkerStats


class Returns:
    kind = "github"

    def __init__(self, page: FetchedPage) -> None:
        self.page = page

    async def fetch(self, req: FetchRequest, hops: Any) -> FetchedPage:
        return self.page


def pipeline(settings: Settings) -> tuple[Pipeline, HealthMonitor, WorkerStats]:
    stats = WorkerStats()
    p = Pipeline(settings, None, None, None, None, asyncio.Semaphore(1), stats)  # type: ignore[arg-type]
    health = HealthMonitor(settings.model_copy(update={"worker_max_error_rate": 0.5,
                                                       "worker_health_window": 50}))
    p.health = health
    return p, health, stats


async def test_unsent_pages_are_not_fetches(settings: Settings) -> None:
    p, health, stats = pipeline(settings)
    fetcher = GitHubFetcher(settings)  # not entered: _later sends nothing
    req = FetchRequest(1, "http://127.0.0.1:1/users", None, {}, lambda s, m: True, False,
                       GitHubPolicy.from_settings(settings))
    for why in ("no GitHub token free (core)", "GitHub token store unavailable"):
        later = fetcher._later(req, why, 1.0)
        assert not later.sent
        for _ in range(30):
            page = await p._fetch(Returns(later), req, True)  # type: ignore[arg-type]
            assert page.error == why
    assert health.reason is None and stats.fetched == 0 and not stats.by_kind
    assert stats.snapshot()["errorRate"] == 0.0
    lost = FetchedPage(1, None, None, "timeout", cacheable=False)  # sent, no answer: counts
    for _ in range(50):
        await p._fetch(Returns(lost), req, True)  # type: ignore[arg-type]
    assert stats.fetched == 50 and health.reason is not None
