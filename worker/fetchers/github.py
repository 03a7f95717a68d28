"""The ``github`` fetcher: the ``http`` fetcher's request (``worker.fetchers.http.fetch``) with a
token from the pool (``Authorization: Bearer``), the pool's rate-limit state shared by every
worker through PostgreSQL (``shared.db.api_tokens``: one row per token and resource).

For each fetch: a URL not under ``githubBaseUrl`` fails for good, unasked (a token goes to
the API only). Else a token is leased for the URL's resource (``search`` for ``/search/...``,
else ``core``): the free one with the most budget left, with fewer than
``githubTokenConcurrency`` requests in flight. Its answer's ``X-RateLimit-*`` headers go back to
the store; a spent limit (403/429 with Remaining 0), a secondary limit (Retry-After, or a
"rate limit" message: that long, else a minute) or a refused token (401: an hour, warned by
token id) switch to the next token at once. No token free: no request, the outcome says when
one will be (``retry_after``) and ``GitHubPolicy`` defers the visit till then (no attempt
counted). The store unreachable: the same, 5 s. Every token refused (401, by this or another
worker, within the hour): the page fails for good, "every GitHub token refused (401)". Pages
with no request sent are marked ``sent=False``: not fetches, for the worker's stats and health.

Search answers (``/search/``: a ranking that moves) are not cacheable: a later job asks again.

The token never leaves the request: the raw answer's request headers (a WARC record) carry
``Bearer ***``, errors are scrubbed, and while the fetcher runs the root log handlers blank
every token out (``worker.github_tokens.Redact``). Without tokens, requests go unauthenticated
(one warning; GitHub allows 60 an hour per address), under the id ``anonymous``.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
from contextlib import AsyncExitStack
from dataclasses import replace
from typing import Any, Self
from urllib.parse import urlsplit

import aiohttp
import asyncpg

from shared.config import Settings
from shared.db import api_tokens
from shared.db.pool import RETRYABLE, open_pool
from shared.model import MASK, FetchedPage, RawResponse, mask_request_headers
from shared.netguard import NetGuard
from worker.extractors.github import api_path
from worker.fetchers import FETCHERS, FetchRequest, HopGate
from worker.fetchers.http import fetch, fetch_budget, open_session, retry_after_seconds
from worker.gate import HostGate
from worker.github_tokens import ANONYMOUS, Redact, load_tokens, token_id
from worker.sources.github import LIMITED, SECONDARY_WAIT, secondary_wait, spent

log = logging.getLogger(__name__)

RESOURCES = ("core", "search")
STORE_DOWN_WAIT = 5.0     # the token store unreachable: the visit again in that long
REFUSED_PAUSE = 3600.0    # a token answered with 401: not used again for an hour
LOCAL_WAIT = 1.0          # a token frees within this: wait for it here, not in the frontier
REFUSED = "every GitHub token refused (401)"
SPENT_PAUSE = 2.0         # a 403/429 with Remaining 0: that token not used for at least this
STORE_ERRORS = (asyncpg.PostgresError, *RETRYABLE)


def github_hosts(settings: Settings) -> tuple[str, ...]:
    """The host of ``githubBaseUrl``, allowed by the SSRF guard for GitHub requests."""
    host = urlsplit(settings.github_base_url).hostname
    return (host,) if host else ()


def resource_of(path: str) -> str:
    return "search" if path.startswith("/search/") else "core"


@FETCHERS.register("github")
class GitHubFetcher:
    """The ``github`` fetcher (see the module); owns an aiohttp session and a small pool (at
    most 2 connections) to the token store."""
    kind = "github"

    def __init__(self, settings: Settings, concurrency: int | None = None) -> None:
        self.settings = settings
        self.concurrency = concurrency
        self.lease = settings.fetch_lease
        self.tokens: dict[str, str | None] = {}  # token id -> token (None: anonymous)
        self._session: aiohttp.ClientSession | None = None
        self._pool: asyncpg.Pool | None = None
        self._redact: Redact | None = None
        self._stack = AsyncExitStack()
        self._warn_refused = 0.0  # loop time of the next warning that every token is refused

    async def __aenter__(self) -> Self:
        try:
            tokens = load_tokens(self.settings)
            self.tokens = {token_id(t): t for t in tokens} or {ANONYMOUS: None}
            if not tokens:
                log.warning("no GitHub token (githubTokens, githubTokenFiles): requests go "
                            "unauthenticated, at GitHub's 60 an hour")
            self._redact = Redact(tokens)
            self._redact.install()
            # githubBaseUrl's host is allowed for this fetcher only (a GitHub Enterprise on a
            # private address); every other address goes through the guard as usual
            guard = NetGuard.from_settings(self.settings, extra_hosts=github_hosts(self.settings))
            self._session = await self._stack.enter_async_context(
                open_session(self.settings, self.concurrency, guard))
            pool = await self._stack.enter_async_context(
                open_pool(self.settings.database_url, min_size=0, max_size=2, retry_for=10))
            self._pool = pool
            async with pool.acquire() as conn:
                await api_tokens.register(conn, list(self.tokens), RESOURCES)
            log.info("GitHub tokens: %s", ", ".join(self.tokens))
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._session = self._pool = None
        try:
            await self._stack.aclose()
        finally:
            if self._redact is not None:
                self._redact.uninstall()
                self._redact = None

    async def fetch(self, req: FetchRequest, hops: HopGate | None) -> FetchedPage:
        path = api_path(req.url, self.settings.github_base_url)
        if path is None:
            return FetchedPage(req.url_id, None, None,
                               "not under githubBaseUrl: no request made", cacheable=False,
                               permanent=True, fetcher=self.kind)
        resource = resource_of(path)
        assert self._pool is not None and self._session is not None, "used outside async with"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + fetch_budget(self.settings)
        page: FetchedPage | None = None
        answered: set[str] = set()  # tokens limited or refused in this fetch
        while True:
            try:
                async with self._pool.acquire() as conn:
                    now, got = await api_tokens.take(conn, list(self.tokens), resource,
                                                     self.settings.github_token_concurrency,
                                                     self.lease)
            except STORE_ERRORS as e:
                log.warning("GitHub token store unavailable: %s", type(e).__name__)
                return self._later(req, "GitHub token store unavailable", STORE_DOWN_WAIT)
            if isinstance(got, api_tokens.Refused):  # every token: 401, no use waiting
                if loop.time() >= self._warn_refused:  # once a minute, not once a page
                    self._warn_refused = loop.time() + 60.0
                    log.warning("every GitHub token refused (401): pages fail (%s ...)", req.url)
                return FetchedPage(req.url_id, None, None, REFUSED, cacheable=False,
                                   permanent=True, fetcher=self.kind, sent=False)
            if isinstance(got, datetime.datetime):
                wait = (got - now).total_seconds()
                if wait <= LOCAL_WAIT and loop.time() + wait < deadline:
                    await asyncio.sleep(max(wait, 0.02))  # a request in flight ends soon
                    continue
                return self._later(req, f"no GitHub token free ({resource})", max(wait, 0.1))
            if got.token_id in answered:  # each token said no once: no second round now
                await self._give_back(got, resource, None)
                break
            page, limited = await self._request(req, got, resource, hops)
            if page.status != 401 and limited is None:  # else: the next token, at once
                break
            answered.add(got.token_id)
        assert page is not None
        return page

    async def _request(self, req: FetchRequest, taken: api_tokens.Taken, resource: str,
                       hops: HopGate | None) -> tuple[FetchedPage, float | None]:
        """One request with the leased token, its lease given back with what the answer said;
        the answer and its rate limit's pause (``_limit_wait``; None: none)."""
        token = self.tokens.get(taken.token_id)
        headers = dict(req.headers)
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        wants = req.wants_body

        def wants_body(status: int, mime: str | None) -> bool:  # a limit's message too
            return wants(status, mime) or status in LIMITED

        page = FetchedPage(req.url_id, None, None, "no answer", cacheable=False)
        wait: float | None = None
        try:
            assert self._session is not None
            page = await fetch(self._session, self.settings, req.url_id, req.url,
                               req.validators, _NoRobots(hops) if hops is not None else None,
                               req.policy, wants_body=wants_body,
                               headers=headers, keep_raw=req.keep_raw)
            page = self._clean(page)
            if resource == "search" and page.cacheable:  # a ranking that moves: never reused
                page = replace(page, cacheable=False)
            wait = self._limit_wait(page)
        finally:
            await self._give_back(taken, resource, page, wait)
        return page, wait

    @staticmethod
    def _limit_wait(page: FetchedPage) -> float | None:
        """For a 403/429 that is a rate limit: the pause for its token (0: a spent primary
        limit, which its reset time already covers); None: no rate limit. Parses a 403/429's
        body: once per answer."""
        if page.status not in LIMITED:
            return None
        return 0.0 if spent(page.headers) else secondary_wait(page)

    async def _give_back(self, taken: api_tokens.Taken, resource: str,
                         page: FetchedPage | None, wait: float | None = None) -> None:
        """The lease back with what the answer said (``page`` None: no request was sent;
        ``wait``: its ``_limit_wait``)."""
        h = page.headers if page is not None else None
        remaining = limit = None
        reset_at = None
        if h is not None:
            remaining = _int(h.get("X-RateLimit-Remaining"))
            limit = _int(h.get("X-RateLimit-Limit"))
            reset_at = _reset_at(h.get("X-RateLimit-Reset"))
            if remaining is None or reset_at is None:
                remaining = reset_at = None
        pause = None
        if page is None:
            pass
        elif page.status == 401:
            pause = REFUSED_PAUSE
            log.warning("GitHub token %s refused (401): not used for an hour", taken.token_id)
        elif wait == 0.0:  # spent: its reset may be past here, not yet on GitHub's clock
            pause = (SECONDARY_WAIT if reset_at is None else
                     max(SPENT_PAUSE, (reset_at - _utcnow()).total_seconds() + 1.0))
        else:
            pause = wait
        try:
            assert self._pool is not None
            async with self._pool.acquire() as conn:
                await api_tokens.give_back(conn, taken, resource, remaining=remaining,
                                           limit=limit, reset_at=reset_at, pause=pause,
                                           spent=page is not None and not page.not_modified,
                                           refused=page is not None and page.status == 401)
        except STORE_ERRORS as e:  # its lease runs out on its own
            log.warning("GitHub token %s not given back: %s", taken.token_id, type(e).__name__)

    def _clean(self, page: FetchedPage) -> FetchedPage:
        """No token in what is kept; a 403's Retry-After read; a 2xx JSON body that does not
        parse (cut short?) made a failure worth another try."""
        changes: dict[str, object] = {}
        if page.raw is not None:
            changes["raw"] = _redacted(page.raw)
        if page.error is not None and self._redact is not None:
            changes["error"] = self._redact.scrub(page.error)
        if page.status == 403 and page.retry_after is None and page.headers is not None:
            changes["retry_after"] = retry_after_seconds(page.headers.get("Retry-After"))
        if page.status is not None and 200 <= page.status < 300 and page.body:
            try:
                json.loads(page.body)
            except (ValueError, UnicodeError):
                return FetchedPage(page.url_id, None, None, "invalid JSON (cut short?)",
                                   cacheable=False, final_url=page.final_url,
                                   redirects=page.redirects, fetcher=self.kind,
                                   headers=page.headers)
        if page.fetcher != self.kind:
            changes["fetcher"] = self.kind
        return replace(page, **changes) if changes else page  # type: ignore[arg-type]

    def _later(self, req: FetchRequest, why: str, wait: float) -> FetchedPage:
        return FetchedPage(req.url_id, None, None, why, cacheable=False, retry_after=wait,
                           fetcher=self.kind, sent=False)


class _NoRobots:
    """The gate for this source's redirect hops: host slots as ever, no robots.txt (the
    ``github`` source does not obey it, ``worker.sources.github.GitHub.obeys_robots``)."""
    __slots__ = ("gate",)

    def __init__(self, gate: HopGate) -> None:
        self.gate = gate

    async def admit_hop(self, url: str, slot: bool, deadline: float) -> Any:
        if isinstance(self.gate, HostGate):
            return await self.gate.admit_hop(url, slot, deadline, robots=False)
        return await self.gate.admit_hop(url, slot, deadline)

    def release(self, slot: Any, trouble: bool, retry_after: float | None) -> None:
        self.gate.release(slot, trouble, retry_after)

    def give_back(self, slot: Any) -> None:
        self.gate.give_back(slot)


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _reset_at(value: str | None) -> datetime.datetime | None:
    """``X-RateLimit-Reset`` (epoch seconds) as a time; None if absent or not a time."""
    reset = _int(value)
    if reset is None:
        return None
    try:
        return datetime.datetime.fromtimestamp(reset, datetime.UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _redacted(raw: RawResponse) -> RawResponse:
    """The raw answer with its request's Authorization masked."""
    return mask_request_headers(
        raw, lambda k, _: f"Bearer {MASK}" if k.lower() == "authorization" else None)

