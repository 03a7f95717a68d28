"""worker/sources/github.py ``GitHubPolicy``: a rate limit (primary: Remaining 0 until Reset;
secondary: Retry-After or its message; the fetcher's "no token free") defers the visit, never a
counted attempt, a failure or a host pause; anything else follows the default rule. And the
source's headers and which bodies it reads."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from shared.config import Settings
from shared.model import FetchedPage
from worker.fetchers.github import _reset_at
from worker.retry import RetryDecision, RetryPolicy
from worker.sources import SOURCES
from worker.sources.github import GitHub, GitHubPolicy

POLICY = GitHubPolicy(retries=3, base=1.0, cap=60.0, max_pause=120.0)
DEFAULT = RetryPolicy(retries=3, base=1.0, cap=60.0, max_pause=120.0)
RATE_MESSAGE = {"message": "API rate limit exceeded for 127.0.0.1. (But here's the good news: "
                "Authenticated requests get a higher rate limit.)"}


def page(status: int | None, error: str | None = None, *, retry_after: float | None = None,
         headers: dict[str, str] | None = None, body: object = None) -> FetchedPage:
    if error is None and status is not None and status >= 400:
        error = f"HTTP {status}"
    return FetchedPage(1, status, "application/json" if body is not None else None, error,
                       cacheable=status is not None, retry_after=retry_after,
                       headers=CIMultiDictProxy(CIMultiDict(headers or {})),
                       body=json.dumps(body).encode() if body is not None else None)


@pytest.mark.parametrize("status", [403, 429])
def test_a_spent_primary_limit_defers_until_its_reset(status: int) -> None:
    now = time.time()
    limited = page(status, headers={"x-ratelimit-remaining": "0",
                                    "X-RateLimit-Reset": str(int(now) + 60)}, body=RATE_MESSAGE)
    for attempt in (1, 4, 99):  # past the retries too: waiting is no attempt
        d = POLICY.decide(limited, attempt)
        assert (d.retry, d.trouble, d.pause) == (False, False, None)  # no host pause
        assert d.defer is not None and 57 <= d.defer <= 62
    wait = POLICY.rate_limit(limited, now=now + 100)  # a reset already past: at least 1 s
    assert wait is not None and 1 <= wait <= 2


def test_secondary_limits_wait_their_retry_after_or_a_minute() -> None:
    d = POLICY.decide(page(429, retry_after=7.0), 1)
    assert d == RetryDecision(False, 0.0, False, None, defer=7.0)
    assert POLICY.decide(page(403, retry_after=3.0), 5).defer == 3.0
    secondary = {"message": "You have exceeded a secondary rate limit. Please wait."}
    assert POLICY.decide(page(403, body=secondary), 1).defer == 60.0
    assert POLICY.decide(page(429, body=RATE_MESSAGE), 1).defer == 60.0
    # Remaining 0 without a Reset: the Retry-After, else the message's minute.
    assert POLICY.decide(page(403, headers={"X-RateLimit-Remaining": "0"},
                              body=RATE_MESSAGE), 1).defer == 60.0


@pytest.mark.parametrize("headers", [{"X-RateLimit-Remaining": "0"},
                                     {"X-RateLimit-Remaining": " 0", "X-RateLimit-Reset": "soon"}])
def test_a_spent_limit_without_a_usable_reset_waits_a_minute(headers: dict[str, str]) -> None:
    # No Reset, no Retry-After, no message: still a spent limit, as the fetcher counts it (it
    # switches token and pauses this one a minute), never a plain 403.
    limited = page(403, headers=headers)
    assert POLICY.rate_limit(limited) == 60.0
    assert POLICY.decide(limited, 4) == RetryDecision(False, 0.0, False, None, defer=60.0)
    assert POLICY.decide(page(403, retry_after=9.0, headers=headers), 1).defer == 9.0


def test_no_token_free_defers_for_the_fetchers_wait() -> None:
    d = POLICY.decide(page(None, "no GitHub token free (core)", retry_after=42.0), 3)
    assert d == RetryDecision(False, 0.0, False, None, defer=42.0)
    d = POLICY.decide(page(None, "GitHub token store unavailable", retry_after=5.0), 1)
    assert d.defer == 5.0


@pytest.mark.parametrize("p", [
    page(200), page(304), page(404), page(401),
    page(403),                                              # a plain refusal
    page(403, headers={"X-RateLimit-Remaining": "12"}, body={"message": "Forbidden"}),
    page(429),                                              # no word of a limit: the default
    page(500), page(502), page(503, retry_after=30.0),
    page(None, "timeout"), page(None, "invalid JSON (cut short?)"),
])
def test_anything_else_follows_the_default_rule(p: FetchedPage) -> None:
    for attempt in (1, 4):
        d = POLICY.decide(p, attempt)  # the delay's jitter aside
        ref = DEFAULT.decide(p, attempt)
        assert (d.retry, d.trouble, d.pause, d.defer) == (ref.retry, ref.trouble, ref.pause, None)


def test_the_source() -> None:
    s = SOURCES.create("github", Settings(), None)
    assert isinstance(s, GitHub) and s.fetcher == "github" and isinstance(s.policy, GitHubPolicy)
    assert s.request_headers("https://api.github.com/users") == {
        "Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}
    assert s.wants_body(200, "application/json")
    assert s.wants_body(200, "application/vnd.github+json")
    assert s.wants_body(403, "application/json") and s.wants_body(429, "application/json")
    assert not s.wants_body(404, "application/json")
    assert not s.wants_body(200, "text/html") and not s.wants_body(204, None)
    assert s.link_extractor().name == "github"


def test_a_rate_limit_reset_that_is_no_time_is_none() -> None:
    """A huge or malformed X-RateLimit-Reset: unknown, not an exception in the fetch's
    ``finally`` (which would leave the token's lease out)."""
    assert _reset_at("1700000000") == datetime.fromtimestamp(1700000000, UTC)
    for value in ("9" * 30, "-99999999999999", "soon", None):
        assert _reset_at(value) is None
