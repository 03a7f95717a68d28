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


async def read_head(content: aiohttp.StreamReader, cap: int) -> bytes:
    """The body's first ``cap`` bytes (all of it if shorter). Not ``content.read(cap)``: that
    returns what has arrived so far, which may be one chunk of a longer body."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in content.iter_chunked(65536):
        chunks.append(chunk[:cap - size])
        size += len(chunks[-1])
        if size >= cap:
            break
    return b"".join(chunks)
