"""Sessions on a worker (a job's ``sessions``): which session each request carries
(``SessionBroker.take``, one lease a request from ``shared.db.sessions``), what it sends
(``headers``: the ``Cookie`` of that one session, its headers, its User-Agent), whether an
answer is a block signal (``blocked``) and the leases given back in batches. ``SessionStore``
is what a task gets to write sessions (``worker.logins``)."""

from __future__ import annotations

import asyncio
import json
import logging
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

import asyncpg

from shared import patterns
from shared.config import Settings
from shared.db import sessions
from shared.db.pool import RETRYABLE
from shared.db.sessions import Lease, Release
from shared.jobspec import SessionsSpec
from shared.model import MASK, FetchedPage, mask_request_headers
from shared.patterns import Regex
from shared.urls import host_key

log = logging.getLogger(__name__)

PATTERN_BYTES = 64 * 1024  # block patterns look at the start of a read body only


@dataclass(frozen=True, slots=True)
class SessionRules:
    """A job's ``sessions`` (``shared.jobspec.SessionsSpec``), ready to use."""
    pool: str
    block_status: frozenset[int]
    block_patterns: tuple[Regex, ...]  # RE2 (shared.patterns)
    bench: float
    concurrency: int

    @classmethod
    def from_stored(cls, spec: Mapping[str, Any]) -> SessionRules | None:
        """The job's rules from its stored spec; None without ``sessions`` (no cost)."""
        stored = spec.get("sessions")
        if not stored:
            return None
        s = SessionsSpec.model_validate_json(json.dumps(stored))
        # A pattern stored before patterns ran on RE2 and refused by it matches nothing.
        return cls(s.pool, frozenset(s.block_status),
                   tuple(rx for p in s.block_patterns if (rx := patterns.stored(p)) is not None),
                   float(s.bench), s.concurrency)


def cookie_header(cookies: Mapping[str, str]) -> str:
    """One session's cookies as a ``Cookie`` header."""
    return "; ".join(f"{k}={v}" for k, v in cookies.items())


class SessionBroker:
    """Leases sessions for a worker's requests and gives them back: a lease per attempt
    (``take``), given back as soon as its answer is in (``give_back``), the releases written
    in one statement per batch (those that came in while the last was written)."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool) -> None:
        self.settings = settings
        self.pool = pool
        # A lease covers the wait for the slot's start and the whole fetch; a worker killed
        # meanwhile leaves one that ends on its own.
        self.lease_s = settings.fetch_lease + settings.politeness_horizon
        self._releases: list[Release] = []
        self._flushing: asyncio.Task[None] | None = None

    async def take(self, rules: SessionRules, url: str) -> Lease | datetime | None:
        """A session of the job's pool for ``url``'s host; else when one may be free; None when
        the pool has none for the host (the request goes without cookies). Raises what the
        database raises."""
        async with self.pool.acquire() as conn:
            return await sessions.lease(conn, rules.pool, host_key(url), self.lease_s,
                                        rules.concurrency)

    def headers(self, lease: Lease) -> dict[str, str]:
        """What a request with this session sends (to the page's own host only, see
        ``worker.fetchers.http.fetch``): its headers, the ``Cookie`` of its cookies, and its
        User-Agent: its own, else one of ``userAgents`` chosen by its name (a session keeps
        one), else ``userAgent``."""
        out = dict(lease.headers)
        if lease.cookies:
            out["Cookie"] = cookie_header(lease.cookies)
        out["User-Agent"] = lease.user_agent or self.user_agent(lease.name)
        return out

    def user_agent(self, name: str) -> str:
        pool = self.settings.user_agents
        if not pool:
            return self.settings.user_agent
        return pool[zlib.crc32(name.encode()) % len(pool)]

    @staticmethod
    def redact(page: FetchedPage, lease: Lease) -> FetchedPage:
        """The page without the session's secrets in its raw answer's request headers (an
        output such as WARC records them): its ``Cookie`` and its own headers' values."""
        if page.raw is None:
            return page
        secret = {"cookie", *(k.lower() for k in lease.headers)}
        raw = mask_request_headers(page.raw, lambda k, _: MASK if k.lower() in secret else None)
        return replace(page, raw=raw)

    @staticmethod
    def blocked(page: FetchedPage, rules: SessionRules) -> str | None:
        """Why ``page`` is a block signal for its session (a status of ``blockStatus``, a read
        body whose first 64 KiB match one of ``blockPatterns``), or None."""
        if page.status is not None and page.status in rules.block_status:
            return f"HTTP {page.status}"
        if rules.block_patterns and page.body is not None:
            try:
                text = page.body[:PATTERN_BYTES].decode(page.charset or "utf-8", "replace")
            except LookupError:  # a charset Python does not know
                text = page.body[:PATTERN_BYTES].decode("utf-8", "replace")
            for p in rules.block_patterns:
                if p.search(text):
                    return f"matched {p.pattern!r}"
        return None

    def give_back(self, lease: Lease, *, used: bool = True, bench: float | None = None,
                  reason: str | None = None) -> None:
        """Give a lease back (``shared.db.sessions.release``), written soon, in a batch."""
        self._releases.append(Release(lease, used, bench, reason))
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush(), name="session releases")

    async def _flush(self) -> None:
        while self._releases:
            batch, self._releases = self._releases, []
            try:
                async with self.pool.acquire() as conn:
                    await sessions.release(conn, batch)
            except (*RETRYABLE, asyncpg.PostgresError, OSError) as e:
                # Not retried: the leases end on their own; the uses stay counted, the
                # benches are lost (the next block benches the session again).
                log.warning("cannot give %d session leases back (%s)", len(batch), e)

    async def aclose(self) -> None:
        """Write the releases still waiting."""
        if self._flushing is not None:
            await asyncio.gather(self._flushing, return_exceptions=True)


class SessionStore:
    """What a task gets as ``sessions`` (``worker.taskrun``): it writes sessions of a pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def put(self, pool: str, name: str, *, cookies: Mapping[str, str],
                  headers: Mapping[str, str] | None = None, user_agent: str | None = None,
                  host: str | None = None,
                  max_uses: int | None = None) -> Literal["new", "updated"]:
        """Create or replace session ``name`` of ``pool`` (``shared.db.sessions.put``)."""
        async with self.pool.acquire() as conn:
            return await sessions.put(conn, pool, name, cookies=cookies, headers=headers,
                                      user_agent=user_agent, host=host, max_uses=max_uses)
