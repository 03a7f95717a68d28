"""The worker health monitor (CC-4): a window of the last outcomes per kind, judged only once
full, against an error rate and a median latency; both thresholds off by default."""

from __future__ import annotations

import asyncio

import pytest

from shared.config import Settings
from worker.health import HealthMonitor, Window, WorkerDegraded


def test_window_counts_only_its_last_outcomes() -> None:
    w = Window(4)
    for failed in (True, True, False, False):
        w.add(failed, 1.0)
    assert (w.full, w.error_rate()) == (True, 0.5)
    w.add(False, 1.0)  # the oldest failure leaves the window
    w.add(False, 1.0)
    assert w.error_rate() == 0.0
    w.add(True, 1.0)
    assert w.failures == 1 and w.error_rate() == 0.25


def test_window_is_judged_only_once_full() -> None:
    w = Window(3)
    w.add(True, 9.0)
    w.add(True, 9.0)
    assert w.verdict(0.5, 1.0) is None
    w.add(True, 9.0)
    assert "error rate 100%" in (w.verdict(0.5, 1.0) or "")


def test_error_rate_must_pass_the_threshold_not_reach_it() -> None:
    w = Window(4)
    for failed in (False, False, True, True):
        w.add(failed, 0.1)
    assert w.verdict(0.5, 0) is None
    w.add(True, 0.1)  # 3 of the last 4
    assert "75%" in (w.verdict(0.5, 0) or "")


def test_latency_is_the_median_so_one_slow_outcome_is_not_enough() -> None:
    w = Window(5)
    for s in (0.1, 0.1, 0.1, 0.1, 60.0):
        w.add(False, s)
    assert w.verdict(0, 2.0) is None
    for s in (3.0, 3.0, 3.0):
        w.add(False, s)
    assert "median time 3.00s" in (w.verdict(0, 2.0) or "")


def test_thresholds_off_by_default_record_nothing() -> None:
    m = HealthMonitor(Settings())
    assert not m.enabled
    for _ in range(500):
        m.record("http", True, 100.0)
    assert m.reason is None and not m._windows


async def test_watch_raises_once_a_kind_is_degraded_and_kinds_are_apart() -> None:
    m = HealthMonitor(Settings(worker_max_error_rate=0.5, worker_health_window=10))
    watching = asyncio.create_task(m.watch())
    for i in range(10):
        m.record("http", False, 0.1)
        m.record("browser", i % 3 != 0, 0.1)  # 6 failures in 10
    await asyncio.sleep(0)
    assert not watching.done() or isinstance(watching.exception(), WorkerDegraded)
    with pytest.raises(WorkerDegraded, match=r"browser: error rate 60%"):
        await asyncio.wait_for(watching, 5)
    assert m.reason is not None and m.reason.startswith("browser:")


async def test_a_healthy_worker_is_never_degraded() -> None:
    m = HealthMonitor(Settings(worker_max_error_rate=0.5, worker_max_latency=5.0,
                               worker_health_window=10))
    for i in range(1000):
        m.record("http", i % 4 == 0, 1.0)  # 25% errors, 1 s
    watching = asyncio.create_task(m.watch())
    await asyncio.sleep(0)
    assert not watching.done() and m.reason is None
    watching.cancel()
