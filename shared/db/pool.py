"""The asyncpg pool: opened with retries (services start in any order), closed on exit."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import TypeVar

import asyncpg

from shared.backoff import retrying

log = logging.getLogger(__name__)

T = TypeVar("T")

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


# Short OLTP statements: JIT compilation only costs time here. Set at connection start-up, so
# it is the session's default and survives any RESET ALL.
SERVER_SETTINGS = {"jit": "off"}


async def keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset on release: nothing beyond asyncpg's own rollback of an open transaction.

    asyncpg's default reset runs ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``
    on every release, one more round trip per acquire (1-2% of PostgreSQL's time in the bench).
    Harvester keeps no session state on pooled connections: its advisory lock is transaction-
    scoped, its cursors live inside transactions, it never LISTENs or SETs a session variable.
    """


@asynccontextmanager
async def open_pool(dsn: str, *, min_size: int = 1, max_size: int = 10,
                    retry_for: float | None = None, timeout: float = 10,
                    command_timeout: float = 60,
                    server_settings: Mapping[str, str] | None = None,
                    ) -> AsyncIterator[asyncpg.Pool]:
    """Open a pool, retrying with backoff while PostgreSQL is unreachable (forever by default;
    with ``min_size`` 0 nothing connects until the first use). ``server_settings``: the
    sessions' settings beyond ``SERVER_SETTINGS``."""
    pool = await retrying(
        lambda: asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size,
                                    server_settings={**SERVER_SETTINGS,
                                                     **(server_settings or {})},
                                    reset=keep_session,
                                    timeout=timeout, command_timeout=command_timeout,
                                    max_inactive_connection_lifetime=60),
        "PostgreSQL", RETRYABLE, retry_for)
    try:
        yield pool
    finally:
        try:
            await asyncio.wait_for(pool.close(), 10)
        except (TimeoutError, *RETRYABLE):
            pool.terminate()


async def in_transaction(pool: asyncpg.Pool, work: Callable[[asyncpg.Connection], Awaitable[T]],
                         attempts: int = 5) -> T:
    """``work(conn)`` in one transaction, run again (after 50 ms, 100 ms ...) when it fails in a
    way another try can mend: a deadlock, a serialization failure, a lost connection."""
    for attempt in range(attempts - 1):
        try:
            async with pool.acquire() as conn, conn.transaction():
                return await work(conn)
        except RETRYABLE:
            await asyncio.sleep(0.05 * 2 ** attempt)
    async with pool.acquire() as conn, conn.transaction():  # the last try: its error is raised
        return await work(conn)
