"""The retry rule, in one place: whether a fetch is worth another try, when, and whether its
answer slows its host down. A fetcher or source with other rules subclasses ``RetryPolicy``
(GitHub, say, answers a spent rate limit with a 403 and ``X-RateLimit-Reset``: its policy
defers the visit until then, ``RetryDecision.defer``)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from shared import metrics
from shared.config import Settings
from shared.model import FetchedPage


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """What to do after one attempt. ``retry``: fetch again after ``delay`` seconds (0 when
    not); ``trouble``: the answer backs its host off, host-wide for ``pause`` seconds if set
    (a server's Retry-After, capped), else exponentially (``HostGate``). ``defer``: neither
    retried nor committed, the visit goes back to the frontier for that many seconds, its
    attempt not counted (a spent rate limit, until it resets); the default rule never sets it."""
    retry: bool
    delay: float
    trouble: bool
    pause: float | None
    defer: float | None = None


class RetryPolicy:
    """Today's rules: a fetch with no answer (a timeout, a refused or dropped connection), a
    5xx or a 429 is tried again up to ``retries`` times, after the server's Retry-After (up to
    ``max_pause``) or an exponential backoff with jitter; a permanent failure never is. A 429,
    a 503 or no answer at all backs the host off. Built once per worker (``from_settings``)."""

    __slots__ = ("base", "cap", "max_pause", "retries")

    def __init__(self, retries: int, base: float, cap: float, max_pause: float) -> None:
        self.retries = retries
        self.base = base
        self.cap = cap
        self.max_pause = max_pause

    @classmethod
    def from_settings(cls, s: Settings) -> RetryPolicy:
        return cls(s.retries, s.retry_base, s.retry_cap, s.max_retry_after)

    def retryable(self, page: FetchedPage) -> bool:
        """Worth another try later: no answer at all, a server error, or 429 Too Many Requests."""
        if page.permanent:
            return False
        if page.status is None:
            return page.error is not None
        return page.status >= 500 or page.status == 429

    def trouble(self, page: FetchedPage) -> bool:
        """Whether the answer backs its host off: a 429, a 503, or no answer that may mend."""
        return page.status in (429, 503) or (page.status is None and self.retryable(page))

    def pause(self, page: FetchedPage) -> float | None:
        """How long the whole host should wait, if the server said so (Retry-After on a 429
        or a 503), capped at ``max_pause``; None: it did not."""
        if page.retry_after is None:
            return None
        return min(page.retry_after, self.max_pause)

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter: about base, 2*base, 4*base ... capped (the exponent
        too, so that a huge ``retries`` cannot overflow a float)."""
        return min(self.cap, self.base * 2.0 ** min(max(0, attempt - 1), 60)) * random.uniform(0.5, 1.5)

    def decide(self, page: FetchedPage, attempt: int) -> RetryDecision:
        """The decision after attempt number ``attempt`` (1 for the first) answered ``page``:
        past ``retries`` further tries, the outcome is committed whatever it is."""
        pause = self.pause(page)
        retry = attempt <= self.retries and self.retryable(page)
        delay = (pause if pause is not None else self.backoff(attempt)) if retry else 0.0
        if retry:
            metrics.RETRIES.inc()
        return RetryDecision(retry, delay, self.trouble(page), pause)

    def blocked(self, decision: RetryDecision, attempt: int) -> RetryDecision:
        """The decision after attempt number ``attempt`` answered a page a session's block
        signal turned into a failure (``decision``: :meth:`decide`'s on that page): tried again
        (with another session) within ``retries``, after ``decision``'s delay if it retried, at
        once if not; past ``retries``, committed. A retry is counted once (``decide`` counted
        it already when it retried)."""
        retry = attempt <= self.retries
        if retry and not decision.retry:
            metrics.RETRIES.inc()
        return RetryDecision(retry, decision.delay if decision.retry else 0.0,
                             decision.trouble, decision.pause)
