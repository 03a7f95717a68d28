"""bench/frontier_scale.py grows a real frontier and times the frontier's statements on it."""

from __future__ import annotations

import asyncpg

from bench import frontier_scale


async def test_it_grows_the_frontier_and_times_each_statement(database_url: str) -> None:
    rows = await frontier_scale.measure(database_url, [3000, 6000], hosts=20, calls=2)
    assert [r["pending"] for r in rows] == [3000, 6000]
    for r in rows:
        for name in ("claim 1,000 (planned)", "defer 1,000", "unclaim 1,000", "plan 100",
                     "requeue_stale"):
            median, low, high = r[name]
            assert 0 < low <= median <= high
    conn = await asyncpg.connect(database_url)
    try:  # every call was rolled back: the frontier is the grown one, none published
        assert await conn.fetchval("SELECT count(*) FROM job_pending") == 6001
        assert await conn.fetchval(
            "SELECT count(*) FROM job_pending WHERE published_on IS NOT NULL") == 0
        assert await conn.fetchval("SELECT count(DISTINCT host) FROM job_pending") == 20
    finally:
        await conn.close()
    assert "| 6,000 |" in frontier_scale.render(rows)
