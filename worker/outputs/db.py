"""The ``db`` output: each 2xx body as received in PostgreSQL's ``body`` table, one row per
SHA-256 digest (``shared.db.bodies``), on one small pool per process shared by every job's
``db`` output (at most 2 connections, opened at the first write, closed by ``close_pools``
when the worker stops: ``JobPlans.aclose``). Written before the visit's commit: a row no
committed ref names is an orphan, harmless; the same bytes again are the same row."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from contextlib import AsyncExitStack
from typing import Any

import asyncpg

from shared.config import Settings
from shared.db import bodies
from shared.db.pool import open_pool
from shared.model import Extraction, FetchedPage, Yield
from worker.outputs import OUTPUTS, iso_now
from worker.tasks import Context

_POOLS: dict[tuple[str, int], asyncio.Task[tuple[AsyncExitStack, asyncpg.Pool]]] = {}


async def _open(dsn: str) -> tuple[AsyncExitStack, asyncpg.Pool]:
    stack = AsyncExitStack()
    pool = await stack.enter_async_context(open_pool(dsn, min_size=0, max_size=2, retry_for=10))
    return stack, pool


async def shared_pool(dsn: str) -> asyncpg.Pool:
    """The process's pool for the ``db`` outputs of every job (one per event loop)."""
    key = (dsn, id(asyncio.get_running_loop()))
    task = _POOLS.get(key)
    if task is None:
        task = _POOLS[key] = asyncio.ensure_future(_open(dsn))
    try:
        return (await asyncio.shield(task))[1]
    except Exception:
        if _POOLS.get(key) is task:
            del _POOLS[key]  # the next write tries again
        raise


async def close_pools() -> None:
    """Close the shared pools of this event loop (the worker stopping)."""
    loop = id(asyncio.get_running_loop())
    for key in [k for k in _POOLS if k[1] == loop]:
        task = _POOLS.pop(key)
        if task.done() and not task.cancelled() and task.exception() is None:
            await task.result()[0].aclose()
        elif not task.done():
            task.cancel()


@OUTPUTS.register("db")
class Db:
    """Yields ``Yield("body", {"output": "db", "file": None, "offset": None, "length",
    "digest": "sha256:<hex>", "status", "mime", "date", "headers": [[name, value], ...]})``:
    the headers as received, so the body (still in its Content-Encoding) can be served again."""
    name = "db"
    needs_raw = True

    def __init__(self, settings: Settings, options: Mapping[str, Any]) -> None:
        self.dsn = settings.database_url

    async def write(self, ctx: Context, page: FetchedPage, ex: Extraction) -> tuple[Yield, ...]:
        if page.status is None or not 200 <= page.status < 300:
            return ()
        if page.raw is not None:
            data = page.raw.body
            headers = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in page.raw.headers]
        elif page.body is not None:  # a fetcher that keeps no raw answer: the decoded body
            data = page.body
            headers = [["Content-Type", page.mime]] if page.mime else []
        else:
            return ()
        digest = hashlib.sha256(data).digest()
        pool = await shared_pool(self.dsn)
        async with pool.acquire() as conn:
            await bodies.put_body(conn, digest, data)
        return (Yield("body", {"output": "db", "file": None, "offset": None,
                               "length": len(data), "digest": f"sha256:{digest.hex()}",
                               "status": page.status, "mime": page.mime, "date": iso_now(),
                               "headers": headers}),)

