"""The asyncpg pool's session settings and its release without a reset round trip."""

from __future__ import annotations

from shared.db.pool import open_pool


async def test_jit_stays_off_across_releases(database_url: str) -> None:
    async with open_pool(database_url, min_size=1, max_size=1) as pool:
        for _ in range(3):
            async with pool.acquire() as conn:
                assert await conn.fetchval("SHOW jit") == "off"


async def test_release_rolls_back_an_abandoned_transaction(database_url: str) -> None:
    async with open_pool(database_url, min_size=1, max_size=1) as pool:
        async with pool.acquire() as conn:
            await conn.execute("CREATE TEMP TABLE IF NOT EXISTS t (x int)")
            tx = conn.transaction()
            await tx.start()
            await conn.execute("INSERT INTO t VALUES (1)")
            # released with the transaction still open: asyncpg rolls it back
        async with pool.acquire() as conn:
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT count(*) FROM t") == 0
