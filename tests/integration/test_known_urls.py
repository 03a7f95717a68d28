"""``pages.upsert_urls`` with a worker's ``KnownUrls`` and ``pages.durable_after``, against real
PostgreSQL (issue 15)."""

from __future__ import annotations

import asyncpg

from shared.db import pages


async def test_known_urls_are_taken_from_the_cache_without_a_look_up(
        db: asyncpg.Connection) -> None:
    # The cache's id for a URL that is not in the table comes back as it is, and the URL is
    # not inserted: proof that nothing looked it up. The other URL is inserted as before.
    known = pages.KnownUrls(10, settle=0.0)
    known.committed({"http://cached.example/": 987654321})
    async with db.transaction():
        ids = await pages.upsert_urls(
            db, {"http://cached.example/": "text/html", "http://new.example/": "text/html"},
            known)
    new = await db.fetchval("SELECT id FROM url WHERE url = 'http://new.example/'")
    assert ids == {"http://cached.example/": 987654321, "http://new.example/": new}
    assert await db.fetchval(
        "SELECT count(*) FROM url WHERE url = 'http://cached.example/'") == 0
    # everything known: answered from the cache alone
    known.committed({"http://new.example/": new})
    assert await pages.upsert_urls(db, {"http://new.example/": ""}, known) == {
        "http://new.example/": new}


async def test_durable_after_follows_synchronous_commit(db: asyncpg.Connection) -> None:
    delay = await db.fetchval(
        "SELECT setting::float8 / 1000 FROM pg_settings WHERE name = 'wal_writer_delay'")
    await db.execute("SET synchronous_commit = off")
    assert await pages.durable_after(db) == 3 * delay + 0.1
    await db.execute("SET synchronous_commit = local")
    assert await pages.durable_after(db) == 0.0
    await db.execute("RESET synchronous_commit")
