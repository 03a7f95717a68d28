"""WorkerStats: what a worker reports with each heartbeat (worker_process.stats)."""

from __future__ import annotations

import json

from worker.stats import WorkerStats


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_new_worker_reports_zeros_and_no_latency() -> None:
    s = WorkerStats(clock=Clock())
    assert s.snapshot() == {"inFlight": 0, "fetched": 0, "fetchedByKind": {},
                            "pagesPerSecond": 0.0, "errorRate": 0.0,
                            "latencyP50": None, "latencyP95": None}


def test_counts_in_flight_fetched_by_kind_rate_errors_and_percentiles() -> None:
    clock = Clock()
    s = WorkerStats(window=60.0, clock=clock)
    s.enter()
    s.enter()
    s.leave()
    for i in range(100):
        clock.now += 0.1
        s.record("github" if i % 4 == 0 else "http", failed=i < 10, seconds=(i + 1) / 100)
    snap = s.snapshot()
    assert snap["inFlight"] == 1
    assert snap["fetched"] == 100
    assert snap["fetchedByKind"] == {"github": 25, "http": 75}
    assert snap["pagesPerSecond"] == 10.0  # 100 fetches in the 10 s since the stats began
    assert snap["errorRate"] == 0.1
    assert snap["latencyP50"] == 0.5
    assert snap["latencyP95"] == 0.95
    json.dumps(snap)  # stored as jsonb


def test_rate_errors_and_latency_are_of_the_window_totals_of_all_time() -> None:
    clock = Clock()
    s = WorkerStats(window=10.0, clock=clock)
    for _ in range(20):
        s.record("http", failed=True, seconds=5.0)
    clock.now += 30.0
    for _ in range(5):
        clock.now += 1.0
        s.record("http", failed=False, seconds=0.25)
    snap = s.snapshot()
    assert snap["fetched"] == 25 and snap["fetchedByKind"] == {"http": 25}
    assert snap["errorRate"] == 0.0  # the failures left the window
    assert snap["latencyP50"] == snap["latencyP95"] == 0.25
    assert snap["pagesPerSecond"] == 0.5  # 5 in the last 10 s
    clock.now += 60.0
    idle = s.snapshot()
    assert idle["pagesPerSecond"] == 0.0 and idle["latencyP50"] is None
    assert idle["fetched"] == 25
