"""Reading an HTTP body with a size cap, for requests (web server) and responses (worker)."""

from __future__ import annotations

import aiohttp


async def read_capped(content: aiohttp.StreamReader, cap: int) -> bytes | None:
    """The whole body, or None as soon as it grows past ``cap`` bytes (decompressed, for a
    response: the cap holds against compression bombs)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in content.iter_chunked(65536):
        size += len(chunk)
        if size > cap:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
