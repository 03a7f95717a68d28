"""The web server's dependencies as they are right now: the pool, a connection of its own for
``/healthz``, and JetStream once connected."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
from aiohttp import web
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from shared.config import Settings
from shared.db.pool import RETRYABLE, SERVER_SETTINGS
from shared.errors import DependencyUnavailable

# How long a request waits for a pooled connection before it is answered 503: a pool held by
# slow work (or a database that stopped answering) must not queue requests without end.
ACQUIRE_TIMEOUT = 5.0
# Creating a job waits longer: a burst of large POSTs on a busy service queues for the pool, and
# a 503 there would refuse work PostgreSQL can do. Only a database that does not answer within
# this request deadline (or refuses connections, at once) makes it a 503.
WRITE_ACQUIRE_TIMEOUT = 60.0
PING_TIMEOUT = 5.0


class Deps:
    """PostgreSQL pool and JetStream context, as available right now."""

    def __init__(self, pool: asyncpg.Pool, database_url: str = "",
                 acquire_timeout: float | None = None,
                 write_acquire_timeout: float | None = None) -> None:
        self.pool = pool
        self.nc: NATS | None = None
        self.jetstream: JetStreamContext | None = None  # set once the streams are there
        self._database_url = database_url
        self._acquire_timeout = ACQUIRE_TIMEOUT if acquire_timeout is None else acquire_timeout
        self.write_acquire_timeout = (WRITE_ACQUIRE_TIMEOUT if write_acquire_timeout is None
                                      else write_acquire_timeout)
        self._ping_conn: asyncpg.Connection | None = None
        self._ping_lock = asyncio.Lock()

    @property
    def js(self) -> JetStreamContext:
        """JetStream, or DependencyUnavailable while NATS is not connected."""
        if self.jetstream is None or self.nc is None or not self.nc.is_connected:
            raise DependencyUnavailable("NATS")
        return self.jetstream

    def check_nats(self) -> None:
        self.js  # noqa: B018 - the property raises when NATS is away

    @contextlib.asynccontextmanager
    async def acquire(self, timeout: float | None = None) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection, or DependencyUnavailable after ``timeout`` (by default
        ``acquire_timeout``)."""
        wait = self._acquire_timeout if timeout is None else max(0.0, timeout)
        try:
            conn = await self.pool.acquire(timeout=wait)
        except TimeoutError:
            raise DependencyUnavailable(
                "PostgreSQL", f"no free connection within {wait:g}s") from None
        try:
            yield conn
        finally:
            await self.pool.release(conn)

    async def ping_postgres(self) -> None:
        """``SELECT 1`` on a connection of its own, outside the pool: ``/healthz`` answers even
        when every pooled connection is busy. DependencyUnavailable when PostgreSQL does not."""
        try:
            async with asyncio.timeout(PING_TIMEOUT), self._ping_lock:
                if self._ping_conn is None or self._ping_conn.is_closed():
                    self._ping_conn = await asyncpg.connect(self._database_url,
                                                            server_settings=SERVER_SETTINGS)
                await self._ping_conn.fetchval("SELECT 1")
        except (*RETRYABLE, asyncpg.PostgresError) as e:
            await self.close()  # a connection that failed once is not trusted again
            raise DependencyUnavailable("PostgreSQL", str(e) or type(e).__name__) from None

    async def close(self) -> None:
        conn, self._ping_conn = self._ping_conn, None
        if conn is not None:
            conn.terminate()


# The app's settings and dependencies (routes.py re-exports both).
SETTINGS = web.AppKey("settings", Settings)
DEPS = web.AppKey("deps", Deps)
