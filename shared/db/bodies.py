"""Bodies saved by the ``db`` output (``body``): one row per SHA-256 digest of the payload.

Written outside the commit of the visit (an output writes before it): a row whose visit never
committed is an orphan nothing refers to, harmless, and the same body saved again (another
page, another job, a redelivery) is the same row."""

from __future__ import annotations

import asyncpg


async def put_body(conn: asyncpg.Connection, digest: bytes, data: bytes) -> None:
    """Store ``data`` under its ``digest`` (the caller's SHA-256 of it) unless it is there."""
    await conn.execute("INSERT INTO body (digest, data) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                       digest, data)


async def get_body(conn: asyncpg.Connection, digest: bytes) -> bytes | None:
    """The body stored under ``digest``, or None."""
    data: bytes | None = await conn.fetchval("SELECT data FROM body WHERE digest = $1", digest)
    return data
