"""Fixtures shared by the integration tests."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest
from aiohttp import web

from harvester_ops.embedded import EmbeddedPostgres
from tests.servers import Handler, serve

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


StartServer = Callable[..., Awaitable[str]]


@pytest.fixture
async def start_server() -> AsyncIterator[StartServer]:
    """``await start_server(handler, host="127.0.0.1")``: serves ``handler`` (``serve``) and
    gives its base URL; every server is stopped at the test's end."""
    runners: list[web.AppRunner] = []

    async def start(handler: Handler, host: str = "127.0.0.1") -> str:
        runner, base = await serve(handler, host)
        runners.append(runner)
        return base

    yield start
    for r in runners:
        await r.cleanup()
