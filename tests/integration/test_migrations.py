"""Alembic revisions apply, roll back and apply again on a real PostgreSQL."""

from __future__ import annotations

import asyncpg

from shared.db import migrate
from shared.embedded import EmbeddedPostgres

TABLES = {"url", "url_link", "job", "job_url", "job_visit", "job_pending", "job_result", "host",
          "job_failure"}


async def tables(dsn: str) -> set[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {r["tablename"] for r in rows} - {"alembic_version"}
    finally:
        await conn.close()


async def test_upgrade_downgrade_upgrade(postgres: EmbeddedPostgres) -> None:
    conn = await asyncpg.connect(postgres.dsn)
    await conn.execute('CREATE DATABASE "migrations_check"')
    await conn.close()
    dsn = postgres.dsn_for("migrations_check")
    migrate.upgrade(dsn)
    assert await tables(dsn) == TABLES
    migrate.downgrade(dsn, "base")
    assert await tables(dsn) == set()
    migrate.upgrade(dsn)
    assert await tables(dsn) == TABLES
