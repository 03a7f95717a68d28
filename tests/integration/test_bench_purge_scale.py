"""bench/purge_scale.py purges a grown job row by row and by dropping its range's partitions."""

from __future__ import annotations

import asyncpg

from bench import purge_scale


async def test_it_purges_a_job_both_ways_and_reports_time_and_wal(database_url: str) -> None:
    rows = await purge_scale.measure(database_url, [2000])
    (row,) = rows
    (rows_s, rows_wal), (parts_s, parts_wal) = row["rows"], row["partitions"]
    assert rows_s > 0 and parts_s > 0
    assert rows_wal > parts_wal > 0  # deleting 8,000 rows writes more WAL than dropping them
    conn = await asyncpg.connect(database_url)
    try:  # both jobs went, every row of them: the first by rows, the second with its range
        assert await conn.fetchval("SELECT count(*) FROM job") == 0
        assert await conn.fetchval("SELECT count(*) FROM job_visit") == 0
        assert await conn.fetchval("SELECT count(*) FROM job_page") == 0
        assert await conn.fetchval("SELECT to_regclass('job_visit_r1')") is None  # dropped
        assert await conn.fetchval("SELECT to_regclass('job_visit_r0')") is not None
    finally:
        await conn.close()
    assert "| 2,000 |" in purge_scale.render(rows)
