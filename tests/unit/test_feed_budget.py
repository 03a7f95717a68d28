"""The feeder's feed-ahead budget (foreman/schedule.py ``FeedBudget``), the frontier's recent
service per (host, job) (``DueFrontier.served``) and their keys."""

from __future__ import annotations

import json
import math
from pathlib import Path

from foreman.schedule import FEED_FLOOR, FeedBudget
from shared.config import Settings, load_settings
from shared.db.frontier import DueFrontier


def test_the_budget_is_feed_ahead_seconds_of_the_claimed_rate_above_a_floor() -> None:
    b = FeedBudget(1.0, now=0.0)
    assert b.budget() == FEED_FLOOR  # nothing measured yet
    for t in range(1, 101):  # 1,000 rows claimed per second for 10 s, in 100 claims
        b.claimed(100, now=t / 10)
    assert 950 <= b.rate() <= 1100
    assert b.budget() == math.ceil(b.rate())
    b.claimed(0, now=30.0)  # 20 s without a claim: the rate decays, the floor stays
    assert b.budget() == FEED_FLOOR
    assert FeedBudget(0.0, now=0.0).budget() is None  # feedAhead 0: no budget


def test_feed_ahead_key(tmp_path: Path) -> None:
    assert Settings().feed_ahead == 1.0
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"feedAhead": "500ms", "fairWindow": "1m"}))
    s = load_settings(str(path), env={})
    assert (s.feed_ahead, s.fair_window) == (0.5, 60.0)
    assert Settings().fair_window == 30.0


def test_recent_service_halves_every_fair_window() -> None:
    f = DueFrontier(Settings(fair_window=10))
    f._count({("h", 1): 8}, now=100.0)
    f._count({("h", 1): 2}, now=110.0)  # 8 halved, plus 2
    assert f.served("h", 1, now=110.0) == 6.0
    assert f.served("h", 1, now=130.0) == 1.5
    assert f.served("h", 2, now=130.0) == 0.0
    f._count({}, now=300.0)  # long decayed: forgotten
    assert f._served == {}
