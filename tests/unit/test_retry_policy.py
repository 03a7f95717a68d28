"""worker/retry.py ``RetryPolicy``: the one place that says whether a fetch is tried again, when,
and whether its answer backs its host off (docs/architecture.md#retries); a subclass can
change the rule (a GitHub-style 403 rate limit)."""

from __future__ import annotations

import time

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from shared import metrics
from shared.model import FetchedPage
from worker.retry import RetryDecision, RetryPolicy

POLICY = RetryPolicy(retries=3, base=1.0, cap=60.0, max_pause=120.0)


def page(status: int | None, error: str | None = None, *, permanent: bool = False,
         retry_after: float | None = None, headers: dict[str, str] | None = None) -> FetchedPage:
    if error is None and status is not None and status >= 400:
        error = f"HTTP {status}"
    return FetchedPage(1, status, None, error, cacheable=status is not None,
                       retry_after=retry_after, permanent=permanent,
                       headers=CIMultiDictProxy(CIMultiDict(headers or {})))


# (page, retry at attempt 1, trouble, pause): today's rules, as tests/integration/test_fetch.py
# and docs/architecture.md#retries state them.
TABLE = [
    (page(200), False, False, None),
    (page(304), False, False, None),
    (page(302), False, False, None),  # a redirect refused for good keeps its status
    (page(404), False, False, None),
    (page(403), False, False, None),
    (page(500), True, False, None),
    (page(502), True, False, None),
    (page(503), True, True, None),
    (page(503, retry_after=30.0), True, True, 30.0),
    (page(503, retry_after=600.0), True, True, 120.0),  # capped at maxRetryAfter
    (page(429), True, True, None),
    (page(429, retry_after=0.0), True, True, 0.0),
    (page(None, "timeout"), True, True, None),
    (page(None, "connection failed: refused"), True, True, None),
    (page(None, "redirect to http://b/: host slot not free in time"), True, True, None),
    (page(None, "more than 3 redirects", permanent=True), False, False, None),
    (page(None, "body exceeds the 10-byte limit", permanent=True), False, False, None),
    (page(None, "invalid URL: x", permanent=True), False, False, None),
    (page(200, "links not extracted: too slow", permanent=True), False, False, None),
    (page(None), False, False, None),  # no answer and no error: nothing to mend
]


@pytest.mark.parametrize(("p", "retry", "trouble", "pause"), TABLE)
def test_decisions_match_todays_rules(p: FetchedPage, retry: bool, trouble: bool,
                                      pause: float | None) -> None:
    assert POLICY.retryable(p) is retry
    assert POLICY.trouble(p) is trouble
    assert POLICY.pause(p) == pause
    d = POLICY.decide(p, 1)
    assert (d.retry, d.trouble, d.pause) == (retry, trouble, pause)
    if not retry:
        assert d.delay == 0.0
    elif pause is not None:
        assert d.delay == pause  # Retry-After (capped) is the delay, no jitter
    else:
        assert 0.5 <= d.delay <= 1.5  # attempt 1: base, jittered


def test_backoff_is_capped_and_jittered() -> None:
    policy = RetryPolicy(retries=20, base=0.5, cap=8.0, max_pause=120.0)
    for attempt, nominal in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 8.0), (6, 8.0),
                             (30, 8.0), (2000, 8.0)]:
        delays = [policy.backoff(attempt) for _ in range(300)]
        assert all(0.5 * nominal <= d <= 1.5 * nominal for d in delays), attempt
        assert max(delays) - min(delays) > 0.5 * nominal, attempt  # jittered, not fixed
    assert policy.backoff(0) <= 0.75  # attempt 0 (never asked) is not below 2^0
    delays = [policy.decide(page(500), 9).delay for _ in range(100)]
    assert all(4.0 <= d <= 12.0 for d in delays)  # decide uses the same, capped backoff


def test_the_last_attempt_is_committed_whatever_it_is() -> None:
    retrying = [p for p, retry, _, _ in TABLE if retry]
    assert retrying
    for p in retrying:
        assert [POLICY.decide(p, n).retry for n in (1, 2, 3, 4, 5)] == [
            True, True, True, False, False]
        last = POLICY.decide(p, 4)
        # the host is still told of its trouble: not retrying is no reason to spare it
        assert last == RetryDecision(False, 0.0, POLICY.trouble(p), POLICY.pause(p))
    assert not RetryPolicy(0, 1.0, 60.0, 120.0).decide(page(503), 1).retry  # retries = 0


def retries_counted() -> float:
    return metrics.RETRIES._value.get()  # type: ignore[attr-defined, no-any-return]


def test_a_blocked_session_answer_is_retried_within_retries_and_counted_once() -> None:
    ok = POLICY.decide(page(200), 1)  # a 200 whose body says "blocked"
    before = retries_counted()
    assert POLICY.blocked(ok, 1) == RetryDecision(True, 0.0, False, None)
    assert retries_counted() == before + 1
    assert POLICY.blocked(ok, 4) == RetryDecision(False, 0.0, False, None)  # past retries
    assert retries_counted() == before + 1
    failed = POLICY.decide(page(503, retry_after=30.0), 2)  # counted here already
    before = retries_counted()
    assert POLICY.blocked(failed, 2) == RetryDecision(True, 30.0, True, 30.0)
    assert retries_counted() == before  # not twice


class GitHubPolicy(RetryPolicy):
    """A spent rate limit is a 403 with ``X-RateLimit-Remaining: 0``, and the time it resets
    in ``X-RateLimit-Reset`` (Unix seconds): the visit waits in the frontier till then, no
    attempt counted, and its host is paused as long (capped like a Retry-After)."""

    __slots__ = ()

    def rate_limit(self, page: FetchedPage) -> float | None:
        """Seconds until a spent rate limit resets; None: the page is not rate limited."""
        if page.status != 403 or page.headers is None \
                or page.headers.get("X-RateLimit-Remaining") != "0":
            return None
        return max(0.0, float(page.headers.get("X-RateLimit-Reset", "0")) - time.time())

    def decide(self, page: FetchedPage, attempt: int) -> RetryDecision:
        wait = self.rate_limit(page)
        if wait is None:
            return super().decide(page, attempt)
        return RetryDecision(False, 0.0, True, min(wait, self.max_pause), defer=wait)


def test_a_subclass_can_defer_a_403_rate_limit() -> None:
    github = GitHubPolicy(retries=3, base=1.0, cap=60.0, max_pause=120.0)
    reset = str(int(time.time()) + 60)
    limited = page(403, headers={"x-ratelimit-remaining": "0", "X-RateLimit-Reset": reset})
    for attempt in (1, 4):  # at the last attempt too: waiting for the reset is no attempt
        d = github.decide(limited, attempt)
        assert not d.retry and d.trouble and d.pause is not None and 57 <= d.pause <= 60
        assert d.defer == d.pause  # back in the frontier till the reset, the host paused
    far = page(403, headers={"X-RateLimit-Remaining": "0",
                             "X-RateLimit-Reset": str(int(time.time()) + 3600)})
    d = github.decide(far, 1)
    assert d.pause == 120.0 and d.defer is not None and d.defer > 3500  # pause capped only
    # A plain 403, or one with requests left, is a refusal as before; the rest is unchanged.
    for p in (page(403), page(403, headers={"X-RateLimit-Remaining": "12"})):
        assert github.decide(p, 1) == RetryDecision(False, 0.0, False, None)
    assert POLICY.decide(limited, 1) == RetryDecision(False, 0.0, False, None)  # base unchanged
    for p, retry, trouble, pause in TABLE:
        d = github.decide(p, 1)
        assert (d.retry, d.trouble, d.pause, d.defer) == (retry, trouble, pause, None)


def test_the_default_policy_never_defers() -> None:
    assert all(POLICY.decide(p, n).defer is None for p, *_ in TABLE for n in (1, 4))
