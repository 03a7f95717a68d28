"""Fixtures shared by the integration tests."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import asyncpg
import pytest

from harvester_ops.embedded import EmbeddedPostgres

_names = itertools.count(1)


@pytest.fixture
async def scratch_dsn(postgres: EmbeddedPostgres) -> AsyncIterator[str]:
    """An empty database of its own (not cloned from the migrated template), for migrations."""
    name = f"migrations_{next(_names)}"
    conn = await asyncpg.connect(postgres.dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
        yield postgres.dsn_for(name)
    finally:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()
