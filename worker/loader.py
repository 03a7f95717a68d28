"""The loader a task fetches pages with (``Loader.fetch``): through the host gate like a
visit (robots.txt and a host slot), with the worker's fetcher of the task's kind."""

from __future__ import annotations

import json
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

from shared.config import Settings
from worker.fetchers import Fetcher, HopGate
from worker.retry import RetryPolicy


class LoadRefused(Exception):
    """The gate refused the URL (robots.txt, no server, no slot in time): ``why``."""

    def __init__(self, url: str, why: str) -> None:
        super().__init__(f"{url}: {why}")
        self.url = url
        self.why = why


@dataclass(frozen=True, slots=True)
class Loaded:
    """One page a loader fetched."""
    url: str
    final_url: str
    status: int | None
    mime: str | None
    body: bytes | None = field(repr=False)
    error: str | None
    charset: str | None = None

    @property
    def text(self) -> str:
        return (self.body or b"").decode(self.charset or "utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.text)


class Loader:
    """Fetches for tasks: ``fetch(url)`` admits the URL at the gate, fetches it with
    ``fetcher`` and releases the slot; ``page()`` lends a browser tab (browser kinds only)."""

    def __init__(self, settings: Settings, gate: HopGate, fetcher: Fetcher,
                 policy: RetryPolicy | None = None) -> None:
        self.settings = settings
        self.gate = gate
        self.fetcher = fetcher
        self.policy = policy if policy is not None else RetryPolicy.from_settings(settings)

    async def fetch(self, url: str, *, options: Mapping[str, Any] | None = None) -> Loaded:
        raise NotImplementedError("loader not built yet")

    def page(self, timeout: float | None = None) -> AbstractAsyncContextManager[Any]:
        raise TypeError(f"a {self.fetcher.kind} worker has no browser pages")
