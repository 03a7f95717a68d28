"""Fetchers: how a worker gets a page (``FETCHERS``, by kind). The kind is also the routing key:
the foreman publishes a job's visits to its fetcher kind's work subject, and a worker serves
the kinds it has fetchers for. Built in: ``http`` (``worker.fetchers.http.HttpFetcher``). A
factory takes ``(settings, concurrency=n)``: n fetches of the kind at once in this process
(``Settings.served_kinds``), to size its connections or browser pages by.

Adding one (a fetcher serving pages from a dict, as ``tests/plugins.py`` does)::

    @FETCHERS.register("static")
    class StaticFetcher:
        kind = "static"

        def __init__(self, settings: Settings, concurrency: int) -> None:
            self.pages = PAGES

        async def __aenter__(self) -> Self:
            return self

        async def __aexit__(self, *exc: object) -> None:
            pass

        async def fetch(self, req: FetchRequest, hops: HopGate | None) -> FetchedPage:
            body = self.pages.get(req.url)
            if body is None:
                return FetchedPage(req.url_id, 404, None, "HTTP 404 Not Found", cacheable=True)
            return FetchedPage(req.url_id, 200, "text/html", None, cacheable=True, body=body)

A fetch never raises for a failure of the page (no answer, a bad URL): it returns the outcome
as a ``FetchedPage`` with its ``error``, and ``req.policy`` decides whether it is tried again
(a fetcher that raises anyway is taken for one that got no answer: "fetcher error: ...").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, Self, runtime_checkable

from shared.model import FetchedPage
from shared.robots import BLOCKED_PREFIX, REFUSALS, redirected
from worker.registry import Registry
from worker.retry import RetryPolicy


def refused_hop(url_id: int, url: str, why: str, status: int | None,
                chain: tuple[str, ...] = (), fetcher: str = "http") -> FetchedPage:
    """A redirect hop (or a navigation) to ``url`` the gate refused ``why``: the SSRF guard's
    refusal blocks the visit for good; a final one (robots.txt) keeps the redirect's
    ``status``, if any, and is not tried again; the others are."""
    if why.startswith(BLOCKED_PREFIX):
        return FetchedPage(url_id, None, None, redirected(why, url), cacheable=False,
                           final_url=url, redirects=chain, permanent=True, fetcher=fetcher)
    final = why in REFUSALS
    return FetchedPage(url_id, status if final else None, None, f"redirect to {url}: {why}",
                       cacheable=final, final_url=url, redirects=chain, permanent=final,
                       fetcher=fetcher)


class HopGate(Protocol):
    """What a fetcher needs to follow a redirect to another host politely
    (``worker.gate.HostGate``)."""

    async def admit_hop(self, url: str, slot: bool,
                        deadline: float) -> Any: ...  # a slot, None, or why not

    def release(self, slot: Any, trouble: bool, retry_after: float | None) -> None: ...

    def give_back(self, slot: Any) -> None: ...  # a slot whose answer says nothing of the host


@dataclass(frozen=True, slots=True)
class Validators:
    """What the last answer said about its version, for a conditional re-fetch."""
    etag: str | None = None
    last_modified: str | None = None


@dataclass(frozen=True, slots=True)
class FetchRequest:
    """One fetch to make: the URL (and its id), the stored copy's validators, the source's
    extra headers, which answers to read the body of (``wants_body(status, mime)``), whether
    to keep the raw answer (an output needs it) and the retry rule of its source.
    ``options``: the job's options for its fetcher kind (a browser job's ``browser`` spec, as
    a mapping; empty for others); last, so positional construction elsewhere is unaffected."""
    url_id: int
    url: str
    validators: Validators | None
    headers: Mapping[str, str]
    wants_body: Callable[[int, str | None], bool]
    keep_raw: bool
    policy: RetryPolicy
    options: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class Fetcher(Protocol):
    """An async context manager (its connections, a browser ...) that fetches pages."""
    kind: str

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc: object) -> None: ...

    async def fetch(self, req: FetchRequest, hops: HopGate | None) -> FetchedPage: ...


FETCHERS: Registry[Fetcher] = Registry("fetcher")

from worker.fetchers import browser as _browser  # noqa: F401 - registers "browser"
from worker.fetchers import github as _github  # noqa: F401 - registers "github"
from worker.fetchers import http as _http  # noqa: F401 - registers "http"
