"""Migration 0019 (issue 14): old jobs get the default priority and order without a rewrite,
old pending rows their host and a breadth-first rank (level, then due), the sequence continues
after them; the feeder's index is rebuilt; the downgrade restores ``job_pending_due``."""

from __future__ import annotations

import asyncpg
import pytest

from harvester_ops import migrate
from shared.ordering import rank
from tests.integration.test_migrations import run


async def test_0019_ranks_old_pending_rows_and_keeps_old_jobs(scratch_dsn: str) -> None:
    await run(migrate.upgrade, scratch_dsn, "0018")
    conn = await asyncpg.connect(scratch_dsn)
    try:
        await conn.execute("INSERT INTO job (max_level, force_crawl) VALUES (2, false)")
        await conn.execute("""
            INSERT INTO url (url) VALUES ('http://u:p@a.example:8080/x'), ('https://b.example/y'),
                                         ('http://a.example:8080/z');
            INSERT INTO job_visit (job_id, url_id, level) VALUES (1, 1, 1), (1, 2, 0), (1, 3, 1);
            INSERT INTO job_pending (job_id, url_id, origin_id, due) VALUES
                (1, 1, 2, now() - interval '3 s'), (1, 2, 2, now() - interval '1 s'),
                (1, 3, 2, now() - interval '2 s')""")
        files = "SELECT relfilenode FROM pg_class WHERE relname = 'job'"
        before = await conn.fetchval(files)
        await run(migrate.upgrade, scratch_dsn, "0019")
        assert await conn.fetchval(files) == before  # constant defaults: job not rewritten
        assert await conn.fetchrow(
            "SELECT priority, queue_order, bloom_capacity, bloom_error FROM job") == (
            0, "bfs", None, None)
        rows = {r["url_id"]: (r["host"], r["rank"]) for r in await conn.fetch(
            "SELECT url_id, host, rank FROM job_pending")}
        # Due order: 1, 3, 2 (seq 1, 2, 3); levels 1, 1, 0.
        assert rows == {1: ("http://a.example:8080", rank("bfs", 1, 0, 1)),
                        3: ("http://a.example:8080", rank("bfs", 1, 0, 2)),
                        2: ("https://b.example", rank("bfs", 0, 0, 3))}
        assert await conn.fetchval("SELECT nextval('job_pending_seq')") == 4
        await conn.execute("INSERT INTO url (url) VALUES ('http://c.example/')")
        for columns, values in (("rank", "0"), ("host", "'http://c.example'")):
            # no default left after the backfill: a writer that forgets one fails loudly
            with pytest.raises(asyncpg.NotNullViolationError):
                await conn.execute(f"INSERT INTO job_pending (job_id, url_id, origin_id, {columns})"
                                   f" VALUES (1, 4, 4, {values})")
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("UPDATE job SET queue_order = 'random'")
        await run(migrate.downgrade, scratch_dsn, "0018")
        assert "NOT held" in await conn.fetchval(
            "SELECT pg_get_indexdef('job_pending_due'::regclass)")
        assert await conn.fetchval("SELECT count(*) FROM job_pending") == 3
    finally:
        await conn.close()
