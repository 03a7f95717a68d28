"""The ``db`` output: each 2xx body as received in PostgreSQL's ``body`` table, one row per
SHA-256 digest (``shared.db.bodies``), on the output's own small pool (at most 2 connections,
opened at the first write, closed by ``close``). Written before the visit's commit: a row no
committed ref names is an orphan, harmless; the same bytes again are the same row."""

from __future__ import annotations

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


@OUTPUTS.register("db")
class Db:
    """Yields ``Yield("body", {"output": "db", "file": None, "offset": None, "length",
    "digest": "sha256:<hex>", "status", "mime", "date", "headers": [[name, value], ...]})``:
    the headers as received, so the body (still in its Content-Encoding) can be served again."""
    name = "db"
    needs_raw = True

    def __init__(self, settings: Settings, options: Mapping[str, Any]) -> None:
        self.dsn = settings.database_url
        self._stack = AsyncExitStack()
        self._pool: asyncpg.Pool | None = None

    async def _get_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            self._pool = await self._stack.enter_async_context(
                open_pool(self.dsn, min_size=0, max_size=2, retry_for=10))
        return self._pool

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
        pool = await self._get_pool()
        async with pool.acquire() as conn:
            await bodies.put_body(conn, digest, data)
        return (Yield("body", {"output": "db", "file": None, "offset": None,
                               "length": len(data), "digest": f"sha256:{digest.hex()}",
                               "status": page.status, "mime": page.mime, "date": iso_now(),
                               "headers": headers}),)

    async def close(self) -> None:
        self._pool = None
        await self._stack.aclose()
