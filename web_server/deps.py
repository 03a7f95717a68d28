"""The web server's dependencies as they are right now: the pool (and a read replica's, if
``databaseReadURL`` names one), a connection of its own for ``/healthz``, and JetStream once
connected."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

import asyncpg
from aiohttp import web
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from shared.config import Settings
from shared.db import jobs
from shared.db.pool import RETRYABLE, SERVER_SETTINGS
from shared.errors import DependencyUnavailable

log = logging.getLogger(__name__)

# How long a request waits for a pooled connection before it is answered 503: a pool held by
# slow work (or a database that stopped answering) must not queue requests without end.
ACQUIRE_TIMEOUT = 5.0
# Creating a job waits longer: a burst of large POSTs on a busy service queues for the pool, and
# a 503 there would refuse work PostgreSQL can do. Only a database that does not answer within
# this request deadline (or refuses connections, at once) makes it a 503.
WRITE_ACQUIRE_TIMEOUT = 60.0
PING_TIMEOUT = 5.0
# How long GET /result waits for the read replica to replay up to the primary's position before
# reading a finished job's result from the primary instead (streaming replication on one network
# is usually milliseconds behind).
REPLICA_WAIT = 0.2


class Deps:
    """PostgreSQL pool and JetStream context, as available right now."""

    def __init__(self, pool: asyncpg.Pool, database_url: str = "",
                 acquire_timeout: float | None = None,
                 write_acquire_timeout: float | None = None,
                 read_pool: asyncpg.Pool | None = None) -> None:
        self.pool = pool
        self.read_pool = read_pool  # a streaming replica's (``databaseReadURL``), or None
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
        async with _pooled(self.pool, "PostgreSQL", wait) as conn:
            yield conn

    async def result_source(self, job_id: int, wait: float | None = None
                            ) -> Callable[[], AbstractAsyncContextManager[asyncpg.Connection]]:
        """Where to read the job's result from: the replica (``read_pool``) when the job is
        finished and the replica replays the primary's WAL up to where it stood when this saw
        the job finished (within ``wait`` seconds, default ``REPLICA_WAIT``): then it holds
        the whole result, the same as the primary's. Else the primary: a running job, a
        replica further behind, or one that does not answer. A few short statements a
        request, never one per chunk."""
        if self.read_pool is None:
            return self.acquire
        async with self.acquire() as conn:
            lsn = await jobs.finished_lsn(conn, job_id)
        if lsn is None:
            return self.acquire
        try:
            async with (asyncio.timeout(PING_TIMEOUT),
                        _pooled(self.read_pool, "PostgreSQL replica", PING_TIMEOUT) as conn):
                caught_up = await _replays(conn, lsn, REPLICA_WAIT if wait is None else wait)
        except (*RETRYABLE, asyncpg.PostgresError, DependencyUnavailable) as e:
            log.info("the read replica did not answer (%s): the result comes from the primary",
                     str(e) or type(e).__name__)
            return self.acquire
        return self.acquire_read if caught_up else self.acquire

    @contextlib.asynccontextmanager
    async def acquire_read(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection of the replica's pool (DependencyUnavailable as ``acquire``)."""
        assert self.read_pool is not None
        async with _pooled(self.read_pool, "PostgreSQL replica", self._acquire_timeout) as conn:
            yield conn

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


@contextlib.asynccontextmanager
async def _pooled(pool: asyncpg.Pool, what: str, wait: float
                  ) -> AsyncIterator[asyncpg.Connection]:
    """A connection of ``pool``, or DependencyUnavailable (``what``) after ``wait`` seconds."""
    try:
        conn = await pool.acquire(timeout=wait)
    except TimeoutError:
        raise DependencyUnavailable(what, f"no free connection within {wait:g}s") from None
    try:
        yield conn
    finally:
        await pool.release(conn)


async def _replays(conn: asyncpg.Connection, lsn: str, wait: float) -> bool:
    """Whether the replica reaches ``lsn`` within ``wait`` seconds (asked every 10 ms)."""
    deadline = asyncio.get_running_loop().time() + wait
    while not await jobs.replayed(conn, lsn):
        if asyncio.get_running_loop().time() >= deadline:
            return False
        await asyncio.sleep(0.01)
    return True


# The app's settings and dependencies (routes.py re-exports both).
SETTINGS = web.AppKey("settings", Settings)
DEPS = web.AppKey("deps", Deps)
