"""The asyncpg pool's session settings and its release without a reset round trip."""

from __future__ import annotations

from pathlib import Path

import asyncpg

from harvester_ops.embedded import EmbeddedPostgres
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


async def test_local_dsn_goes_through_the_unix_socket(postgres: EmbeddedPostgres) -> None:
    dsn = postgres.local_dsn_for("postgres")
    assert "host=/" in dsn
    conn = await asyncpg.connect(dsn)
    try:
        # no client address: not a TCP connection
        assert await conn.fetchval(
            "SELECT client_addr FROM pg_stat_activity WHERE pid = pg_backend_pid()") is None
    finally:
        await conn.close()


def test_local_dsn_is_tcp_when_the_socket_path_is_too_long(tmp_path: Path) -> None:
    pg = EmbeddedPostgres(tmp_path / ("d" * 120), port=5999)
    assert pg.local_dsn_for("db") == pg.dsn_for("db") == "postgresql://postgres@127.0.0.1:5999/db"
