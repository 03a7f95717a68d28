"""The loader a task fetches pages with (``Loader.fetch``): politely, as a visit is, through
the host gate (robots.txt must allow the URL, and its host gives a request slot, waited for up
to a fetch's budget), then with the worker's fetcher of the task's kind; the slot is released
after the answer, which backs the host off as the retry policy says. A redirect to another
host goes through the gate too. ``Loader.page()`` lends a browser tab (browser kinds only):
what a task does with it is not checked against robots.txt or host slots."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

from shared.config import Settings
from shared.model import FetchedPage
from worker.fetchers import Fetcher, FetchRequest, HopGate
from worker.fetchers.http import fetch_budget
from worker.retry import RetryPolicy


class LoadRefused(Exception):
    """The gate refused the URL: robots.txt disallows it (or was unreachable), its host has
    no server, or no slot came free in time. ``why`` says which."""

    def __init__(self, url: str, why: str) -> None:
        super().__init__(f"{url}: {why}")
        self.url = url
        self.why = why


@dataclass(frozen=True, slots=True)
class Loaded:
    """One page a loader fetched: ``error`` is set when there was no usable answer (no
    answer at all, or a status of 400 and above); the body is kept for any 2xx answer."""
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


def any_2xx(status: int, mime: str | None) -> bool:
    return 200 <= status < 300


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
        """Fetch ``url`` once (no retry: the task decides); ``options`` are the fetcher's (a
        browser's ``wait``, ``selector`` ...). Raises ``LoadRefused`` when the gate refuses."""
        deadline = asyncio.get_running_loop().time() + fetch_budget(self.settings)
        admitted = await self.gate.admit_hop(url, True, deadline)
        if isinstance(admitted, str):
            raise LoadRefused(url, admitted)
        req = FetchRequest(0, url, None, {}, any_2xx, False, self.policy, options or {})
        try:
            page = await self.fetcher.fetch(req, self.gate)
        except asyncio.CancelledError:
            if admitted is not None:
                self.gate.give_back(admitted)
            raise
        except Exception as e:  # noqa: BLE001 - as the pipeline takes it: no answer
            page = FetchedPage(0, None, None, f"fetcher error: {e}", cacheable=False)
        if admitted is not None:
            self.gate.release(admitted, self.policy.trouble(page), self.policy.pause(page))
        return Loaded(url, page.final_url or url, page.status, page.mime, page.body,
                      page.error, page.charset)

    def page(self, timeout: float | None = None) -> AbstractAsyncContextManager[Any]:
        """A browser tab (Playwright ``Page``) for the block: ``async with loader.page() as
        page``. TypeError on a worker kind without pages."""
        lease = getattr(self.fetcher, "lease", None)
        if lease is None:
            raise TypeError(f"a {self.fetcher.kind} worker has no browser pages")
        result: AbstractAsyncContextManager[Any] = lease(timeout)
        return result
