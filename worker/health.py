"""A worker's own health (CC-4): the outcomes of its last ``workerHealthWindow`` fetches, per
fetcher kind. Only fetches count, and only a fetch without an answer counts as failed: tasks
(``worker.taskrun``) are not recorded, since a task that raises or runs long is its author's
code, not the worker's fault, and must never make every worker of a kind exit in a loop. When their error rate passes ``workerMaxErrorRate``, or their median
time ``workerMaxLatency``, ``HealthMonitor.watch`` raises ``WorkerDegraded``: run under
``bus.supervise``, it stops the worker (in-flight work drains) and the process exits non-zero,
to be restarted by its supervisor (``harvester up``, systemd). Both thresholds default to 0:
off, so one dead site cannot make every worker flap."""

from __future__ import annotations

import asyncio
import logging
import statistics
from collections import deque

from shared.config import Settings
from shared.errors import HarvesterError

log = logging.getLogger(__name__)


class WorkerDegraded(HarvesterError):
    """This worker's recent error rate or latency passed its threshold."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"worker degraded ({reason})")
        self.reason = reason


class Window:
    """The last ``size`` outcomes of one kind: whether each failed, and how long it took."""

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self.failed: deque[bool] = deque(maxlen=self.size)
        self.seconds: deque[float] = deque(maxlen=self.size)
        self.failures = 0

    def add(self, failed: bool, seconds: float) -> None:
        if len(self.failed) == self.size and self.failed[0]:
            self.failures -= 1
        self.failed.append(failed)
        self.seconds.append(seconds)
        self.failures += failed

    @property
    def full(self) -> bool:
        return len(self.failed) == self.size

    def error_rate(self) -> float:
        return self.failures / len(self.failed) if self.failed else 0.0

    def median(self) -> float:
        return statistics.median(self.seconds) if self.seconds else 0.0

    def verdict(self, max_error_rate: float, max_latency: float) -> str | None:
        """Why this window is degraded (only once it is full), or None."""
        if not self.full:
            return None
        if max_error_rate > 0 and (rate := self.error_rate()) > max_error_rate:
            return (f"error rate {rate:.0%} over the last {self.size} outcomes, "
                    f"above workerMaxErrorRate {max_error_rate:.0%}")
        if max_latency > 0 and (median := self.median()) > max_latency:
            return (f"median time {median:.2f}s over the last {self.size} outcomes, "
                    f"above workerMaxLatency {max_latency:g}s")
        return None


class HealthMonitor:
    """Fed by ``record`` (a fetch in ``Pipeline._fetch``; never a task); ``watch``
    ends the worker once a kind's window is degraded. With both thresholds off, ``record`` does
    nothing."""

    def __init__(self, settings: Settings) -> None:
        self.max_error_rate = settings.worker_max_error_rate
        self.max_latency = settings.worker_max_latency
        self.size = settings.worker_health_window
        self.enabled = self.max_error_rate > 0 or self.max_latency > 0
        self.reason: str | None = None
        self._windows: dict[str, Window] = {}
        self._degraded = asyncio.Event()

    def record(self, kind: str, failed: bool, seconds: float) -> None:
        """One outcome: ``failed`` is an error the worker may be at fault for (no answer, not
        a 404 or a permanent refusal), ``seconds`` how long it took."""
        if not self.enabled or self.reason is not None:
            return
        window = self._windows.get(kind)
        if window is None:
            window = self._windows[kind] = Window(self.size)
        window.add(failed, seconds)
        why = window.verdict(self.max_error_rate, self.max_latency)
        if why is not None:
            self.reason = f"{kind}: {why}"
            self._degraded.set()

    async def watch(self) -> None:
        """Wait until degraded, then raise ``WorkerDegraded`` (logged once here)."""
        await self._degraded.wait()
        assert self.reason is not None
        log.error("worker degraded (%s); exiting to be restarted", self.reason)
        raise WorkerDegraded(self.reason)
