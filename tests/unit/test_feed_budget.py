"""The feeder's feed-ahead budget (foreman/schedule.py ``FeedBudget``), the frontier's recent
service per (host, job) (``DueFrontier.served``) and their keys."""

from __future__ import annotations

import json
import math
from pathlib import Path

from foreman.schedule import FEED_FLOOR, LEAD_MAX, FeedBudget, max_feed_wait, transit
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


def test_foremen_share_one_budget_from_the_url_streams_published_count() -> None:
    # Two foremen's feeders take turns at the claim; the URL stream's last_seq counts both.
    # Each one's budget is feed_ahead seconds of the cluster's rate, not of its own half.
    a, b = FeedBudget(1.0, now=0.0), FeedBudget(1.0, now=0.0)
    a.published(5_000, now=0.0)  # the first read only marks where the stream is
    b.published(5_000, now=0.0)
    assert a.rate() == b.rate() == 0.0
    seq = 5_000
    for t in range(1, 101):  # 1,000 rows per second for 10 s, half of them each one's
        seq += 100
        a.published(seq, now=t / 10)
        b.published(seq, now=t / 10)
    assert 950 <= a.rate() <= 1100 and 950 <= b.rate() <= 1100
    assert a.budget() == math.ceil(a.rate())
    before = a.rate()
    a.published(10, now=10.0)  # the stream started again (restored): nothing counted ...
    assert a.rate() == before
    a.published(110, now=10.0)  # ... and it counts on from there
    assert a.rate() == before + 100


def test_feed_ahead_key(tmp_path: Path) -> None:
    assert Settings().feed_ahead == 0.3
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


def test_the_lead_is_the_undelivered_queue_over_the_rate() -> None:
    """How long a visit published now waits before a worker takes it (``transit``): what
    waits in front of it over the rate the workers take visits; nothing without either, and
    ``LEAD_MAX`` at most (a stalled crawl's queue over a rate near 0)."""
    assert transit(150, 500.0) == 0.3
    assert transit(0, 500.0) == 0.0
    assert transit(150, 0.0) == 0.0
    assert transit(10**6, 1.0) == LEAD_MAX


def test_the_claims_come_at_least_as_often_as_a_polite_hosts_start_window() -> None:
    # a claim publishes the starts due within hostStartWindow of a host's next: a longer gap
    # between claims would lose turns; a shorter window makes the claims more frequent, never
    # a tight loop
    assert max_feed_wait(Settings()) == 0.1
    assert max_feed_wait(Settings(host_start_window=0.07)) == 0.07
    assert max_feed_wait(Settings(host_start_window=0.0)) == 0.05
    assert max_feed_wait(Settings(host_start_window=2.0)) == 0.1
