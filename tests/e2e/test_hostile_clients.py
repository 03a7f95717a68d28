"""Hostile clients of the web server (issue 17): 200 connections sending their request's headers
one byte a second neither stop others' requests nor stay open past ``httpIdleTimeout`` (aiohttp's
``keepalive_timeout`` is also its deadline for a request's headers: this pins that); a request
body that does not arrive within ``httpBodyTimeout`` is a 408."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import aiohttp
import pytest
import pytest_asyncio

from shared.config import Settings
from tests.e2e.stack import Stack

pytestmark = pytest.mark.e2e

SLOW = 200
NORMAL = 20
HEADERS = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100


@pytest_asyncio.fixture
async def api(settings: Settings) -> AsyncIterator[Stack]:
    s = settings.model_copy(update={"http_idle_timeout": 1.0, "http_body_timeout": 1.0})
    st = await Stack(s).start(foremen=0, workers=0)
    yield st
    await st.stop()


async def _open(st: Stack) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    u = urlsplit(st.base)
    assert u.hostname == "127.0.0.1" and u.port
    return await asyncio.open_connection(u.hostname, u.port)


async def _trickle(writer: asyncio.StreamWriter, closed: asyncio.Event) -> None:
    """One header byte a second (the hostile client's pace, not a wait for the server) until
    the server closes the connection."""
    for byte in HEADERS:
        if closed.is_set():
            return
        with contextlib.suppress(ConnectionError):
            writer.write(bytes([byte]))
            await writer.drain()
        await asyncio.sleep(1)


async def _closed(reader: asyncio.StreamReader, closed: asyncio.Event) -> bytes:
    """Whatever the server sends before it closes the connection."""
    data = b""
    try:
        while chunk := await reader.read(65536):
            data += chunk
    except ConnectionError:
        pass
    closed.set()
    return data


async def test_slow_header_senders_are_closed_and_do_not_block_others(api: Stack) -> None:
    conns = [await _open(api) for _ in range(SLOW)]
    flags = [asyncio.Event() for _ in conns]
    trickles = [asyncio.create_task(_trickle(w, f)) for (_, w), f in zip(conns, flags, strict=True)]
    watching = [asyncio.create_task(_closed(r, f)) for (r, _), f in zip(conns, flags, strict=True)]
    try:
        async def one() -> int:
            timeout = aiohttp.ClientTimeout(total=10)
            async with aiohttp.ClientSession(timeout=timeout) as http, \
                    http.get(api.base + "/healthz") as r:
                return r.status

        # While every slow connection is open and trickling: all of these answer.
        assert not any(f.is_set() for f in flags)
        assert await asyncio.gather(*(one() for _ in range(NORMAL))) == [200] * NORMAL
        # The slow ones are closed after the idle timeout (1 s here; the headers need ~120 s),
        # long before they could finish their headers.
        async with asyncio.timeout(10):
            await asyncio.gather(*watching)
        assert all(f.is_set() for f in flags)
        assert all(not t.done() or t.exception() is None for t in trickles)
    finally:
        for t in (*trickles, *watching):
            t.cancel()
        for _, w in conns:
            w.close()


async def test_a_body_that_does_not_arrive_is_a_408(api: Stack) -> None:
    reader, writer = await _open(api)
    try:
        writer.write(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n"
                     b"Content-Length: 100\r\n\r\nhttp://a.example/\n")
        await writer.drain()
        async with asyncio.timeout(10):
            raw = await reader.read(65536)
            while b"\r\n\r\n" in raw and not raw.rstrip().endswith(b"}"):
                raw += await reader.read(65536)
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 "), head
        assert json.loads(body) == {"code": "RequestTimeout",
                                    "message": "Request body not received within 1s"}
    finally:
        writer.close()
