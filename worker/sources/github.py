"""The ``github`` source: GitHub's REST API (``githubBaseUrl``; GitHub Enterprise, a fake in
tests) fetched by the ``github`` fetcher (``worker.fetchers.github``: tokens, shared rate
limits), read by ``worker.extractors.github``, with a retry rule for rate limits
(``GitHubPolicy``): a spent limit defers the visit until it resets, never a counted attempt,
never a failure."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Mapping

from shared.config import Settings
from shared.model import FetchedPage
from worker.extractors import Extractor
from worker.extractors.github import GitHubLinks, is_json
from worker.extractors.lanes import Parser
from worker.retry import RetryDecision, RetryPolicy
from worker.sources import SOURCES

HEADERS: Mapping[str, str] = {"Accept": "application/vnd.github+json",
                              "X-GitHub-Api-Version": "2022-11-28"}
LIMITED = (403, 429)
SECONDARY_WAIT = 60.0  # GitHub's advice for a limit that says nothing of when: a minute


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def says_rate_limit(body: bytes | None) -> bool:
    """Whether a 403/429's JSON message speaks of a rate limit (primary or secondary)."""
    if not body:
        return False
    try:
        message = json.loads(body).get("message", "")
    except (ValueError, UnicodeError, AttributeError):
        return False
    return isinstance(message, str) and "rate limit" in message.lower()


def spent(headers: Mapping[str, str] | None) -> bool:
    """Whether a 403/429's headers say its primary limit is spent (``X-RateLimit-Remaining:
    0``), with or without a usable ``X-RateLimit-Reset``."""
    return headers is not None and headers.get("X-RateLimit-Remaining", "").strip() == "0"


def secondary_wait(page: FetchedPage) -> float | None:
    """For a 403/429 that is not a spent primary limit: its Retry-After, else a minute if its
    message says "rate limit" (it parses the body: ask once per answer); None: no limit."""
    if page.retry_after is not None:
        return page.retry_after
    if says_rate_limit(page.body):
        return SECONDARY_WAIT
    return None


class GitHubPolicy(RetryPolicy):
    """The default retry rule, but a rate limit defers the visit (``RetryDecision.defer``):
    no attempt counted, no failure, no host backoff (the limit is a token's, not the host's).

    A rate limit is: no answer with a ``retry_after`` (the fetcher found no token free, or its
    store unavailable: that long); a 403 or 429 with ``X-RateLimit-Remaining: 0`` (until
    ``X-RateLimit-Reset``, at least a second, plus up to a second of jitter for clock skew;
    without a usable reset, its Retry-After, else a minute); one with a Retry-After (that
    long); one whose message says "rate limit" (a minute)."""

    __slots__ = ()

    def rate_limit(self, page: FetchedPage, now: float | None = None) -> float | None:
        """How long to wait for the limit ``page`` ran into; None: it is no rate limit."""
        if page.status is None:
            return page.retry_after if page.error is not None else None
        if page.status not in LIMITED:
            return None
        headers = page.headers
        if not spent(headers):
            return secondary_wait(page)
        assert headers is not None
        reset = _float(headers.get("X-RateLimit-Reset"))
        if reset is not None:
            now = time.time() if now is None else now
            return max(1.0, reset - now) + random.uniform(0.0, 1.0)
        # No usable reset: the Retry-After, else a minute (the fetcher pauses its token so).
        wait = secondary_wait(page)
        return SECONDARY_WAIT if wait is None else wait

    def decide(self, page: FetchedPage, attempt: int) -> RetryDecision:
        wait = self.rate_limit(page)
        if wait is None:
            return super().decide(page, attempt)
        return RetryDecision(False, 0.0, False, None, defer=wait)


@SOURCES.register("github")
class GitHub:
    name = "github"
    fetcher = "github"
    # An authenticated API client is bound by the API's terms and rate limits (which the
    # fetcher keeps), not robots.txt: octokit and PyGithub never read it (docs/github.md).
    obeys_robots = False

    def __init__(self, settings: Settings, lanes: Parser | None = None) -> None:
        self.policy: RetryPolicy = GitHubPolicy.from_settings(settings)
        self.links = GitHubLinks(settings)

    def request_headers(self, url: str) -> Mapping[str, str]:
        return HEADERS

    def wants_body(self, status: int, mime: str | None) -> bool:
        """JSON answers: 2xx (the graph), 403/429 (the policy reads a limit's message)."""
        return is_json(mime) and (200 <= status < 300 or status in LIMITED)

    def link_extractor(self) -> Extractor:
        return self.links
