"""The embedded PostgreSQL of ``harvester up`` is sized from the machine's memory."""

from __future__ import annotations

import os
from pathlib import Path

import asyncpg
import pytest

from harvester_ops.embedded import EmbeddedPostgres, machine_settings, memory_limit

GiB = 1 << 30


def settings(ram: int) -> dict[str, str]:
    return dict(s.split("=", 1) for s in machine_settings(ram))


def test_a_quarter_of_the_memory_for_shared_buffers_within_bounds() -> None:
    assert settings(24 * GiB)["shared_buffers"] == "6144MB"
    assert settings(24 * GiB)["effective_cache_size"] == "18432MB"
    assert settings(24 * GiB)["work_mem"] == "20MB"
    assert settings(64 * GiB)["shared_buffers"] == "8192MB"       # at most 8 GiB
    assert settings(64 * GiB)["maintenance_work_mem"] == "2048MB"  # at most 2 GiB
    assert settings(256 << 20)["shared_buffers"] == "128MB"        # never below the default
    assert settings(256 << 20)["work_mem"] == "4MB"
    assert settings(24 * GiB)["max_wal_size"] == "4GB"


def test_the_memory_limit_is_the_machines_or_less() -> None:
    assert 0 < memory_limit() <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


async def test_a_sized_server_runs_with_them_and_the_environment_overrides(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    want = settings(memory_limit())
    monkeypatch.setenv("HARVESTER_PG_SETTINGS", "work_mem=7MB")
    with EmbeddedPostgres(tmp_path / "pg", fsync=False, sized=True) as pg:
        conn = await asyncpg.connect(pg.dsn)
        try:
            shown = {name: await conn.fetchval(f"SHOW {name}")
                     for name in ("shared_buffers", "max_wal_size", "work_mem")}
        finally:
            await conn.close()
    # PostgreSQL shows a size in its largest exact unit: compare in MB
    mb = {"shared_buffers": shown["shared_buffers"], "max_wal_size": shown["max_wal_size"]}
    as_mb = {k: int(v[:-2]) * (1024 if v.endswith("GB") else 1) for k, v in mb.items()}
    assert as_mb["shared_buffers"] == int(want["shared_buffers"][:-2])
    assert as_mb["max_wal_size"] == 4096
    assert shown["work_mem"] == "7MB"


async def test_a_server_not_sized_keeps_the_small_fixed_settings(tmp_path: Path) -> None:
    with EmbeddedPostgres(tmp_path / "pg", fsync=False) as pg:
        conn = await asyncpg.connect(pg.dsn)
        try:
            assert await conn.fetchval("SHOW shared_buffers") == "128MB"
        finally:
            await conn.close()
