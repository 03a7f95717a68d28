"""The asyncpg pool: opened with retries (services start in any order), closed on exit."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from shared.backoff import retrying

log = logging.getLogger(__name__)

# Errors after which the same transaction, tried again, can succeed.
RETRYABLE = (
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.InternalClientError,  # a connection broken in the middle of an operation
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.PostgresConnectionError,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
)


async def init_connection(conn: asyncpg.Connection) -> None:
    # Short OLTP statements: JIT compilation only costs time here.
    await conn.execute("SET jit = off")


@asynccontextmanager
async def open_pool(dsn: str, *, min_size: int = 1, max_size: int = 10,
                    retry_for: float | None = None) -> AsyncIterator[asyncpg.Pool]:
    """Open a pool, retrying with backoff while PostgreSQL is unreachable (forever by default)."""
    pool = await retrying(
        lambda: asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size,
                                    init=init_connection, timeout=10, command_timeout=60,
                                    max_inactive_connection_lifetime=60),
        "PostgreSQL", RETRYABLE, retry_for)
    try:
        yield pool
    finally:
        try:
            await asyncio.wait_for(pool.close(), 10)
        except (TimeoutError, *RETRYABLE):
            pool.terminate()
