"""A worker process's own numbers, reported with each heartbeat (``worker_process.stats``,
shown by ``GET /workers``): visits in flight, fetches since it started (in all and by fetcher
kind), and over the last ``window`` seconds its fetches per second, the share of them that got
no answer or a 5xx, and their latency's median and 95th percentile.

Fed by the pipeline (``Pipeline._fetch``, ``Pipeline.visit``): an increment and an append per
fetch, in memory; nothing is awaited, looked up or stored per visit. The window's fetches are
kept (at most the fetches of ``window`` seconds) and read at each beat."""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any


class WorkerStats:
    """The process's counters and its last ``window`` seconds of fetches."""

    def __init__(self, window: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.clock = clock
        self.started = clock()
        self.in_flight = 0
        self.fetched = 0
        self.by_kind: Counter[str] = Counter()
        self._recent: deque[tuple[float, bool, float]] = deque()  # (when, failed, seconds)

    def enter(self) -> None:
        """A visit starts."""
        self.in_flight += 1

    def leave(self) -> None:
        """A visit ends (whatever became of it)."""
        self.in_flight -= 1

    def record(self, kind: str, failed: bool, seconds: float) -> None:
        """A fetch by a fetcher of ``kind`` took ``seconds``; ``failed``: no answer or a 5xx."""
        now = self.clock()
        self.fetched += 1
        self.by_kind[kind] += 1
        self._recent.append((now, failed, seconds))
        self._trim(now)

    def snapshot(self) -> dict[str, Any]:
        """The numbers as JSON: ``inFlight``, ``fetched``, ``fetchedByKind``, and of the
        window ``pagesPerSecond``, ``errorRate`` (0 to 1), ``latencyP50`` and ``latencyP95``
        (seconds; None without a fetch in the window)."""
        now = self.clock()
        self._trim(now)
        n = len(self._recent)
        span = min(self.window, now - self.started)
        latencies = sorted(s for _, _, s in self._recent)
        return {
            "inFlight": self.in_flight,
            "fetched": self.fetched,
            "fetchedByKind": dict(sorted(self.by_kind.items())),
            "pagesPerSecond": round(n / span, 3) if n and span > 0 else 0.0,
            "errorRate": round(sum(f for _, f, _ in self._recent) / n, 4) if n else 0.0,
            "latencyP50": _rank(latencies, 0.50),
            "latencyP95": _rank(latencies, 0.95),
        }

    def _trim(self, now: float) -> None:
        since = now - self.window
        recent = self._recent
        while recent and recent[0][0] < since:
            recent.popleft()


def _rank(ordered: list[float], q: float) -> float | None:
    """The nearest-rank ``q`` percentile of ``ordered`` (None if empty), to the microsecond."""
    if not ordered:
        return None
    return round(ordered[max(math.ceil(q * len(ordered)), 1) - 1], 6)
