"""bench/footprint.py measures what a crawl wrote, per page, on real PostgreSQL and NATS."""

from __future__ import annotations

import asyncio

import asyncpg

from bench import footprint
from harvester_ops.embedded import EmbeddedNats
from shared import bus
from shared.config import Settings


async def test_rows_bytes_wal_and_messages_per_page(database_url: str,
                                                    own_nats: EmbeddedNats) -> None:
    # Its own nats-server: the snapshot counts every stream's messages, and the suite's shared
    # server may drop an earlier test's streams between the two snapshots.
    nats_server = own_nats
    settings = Settings(nats_url=nats_server.url, url_topic="fp.url", work_topic="fp.work")
    before = await asyncio.to_thread(footprint.snapshot, database_url, nats_server.url)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("INSERT INTO url (url) SELECT 'http://fp.test/' || g "
                           "FROM generate_series(1, 2000) g")
    finally:
        await conn.close()
    async with bus.connect(nats_server.url, "test-footprint") as nc:
        js = nc.jetstream()
        await bus.ensure_streams(js, settings)
        assert await bus.publish_visits(js, settings.work_topic, [(1, i) for i in range(50)]) == []
    after = await asyncio.to_thread(footprint.snapshot, database_url, nats_server.url)
    f = footprint.footprint(before, after, pages=100, links=400)
    assert f["tables"]["url"]["rows_per_page"] >= 20          # 2,000 url rows over 100 pages
    assert f["tables"]["url"]["bytes_per_page"] > 0
    assert f["rows_written_per_page"] >= 20
    assert f["wal_bytes_per_page"] > 0
    assert f["messages_per_page"] == 0.5                      # 50 messages over 100 pages
    assert f["links"] == 400 and f["pages"] == 100


async def test_a_partitioned_table_counts_its_partitions(database_url: str, db: asyncpg.Connection,
                                                        nats_server: EmbeddedNats) -> None:
    await db.execute("INSERT INTO job_page (job_id, url_id, version) "
                     "SELECT 1, g, 1 FROM generate_series(1, 500) g")
    snap = await asyncio.to_thread(footprint.snapshot, database_url, nats_server.url)
    assert snap["tables"]["job_page"]["rows"] == 500
    assert snap["tables"]["job_page"]["bytes"] > 8192
