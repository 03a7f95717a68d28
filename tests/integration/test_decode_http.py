"""``read_raw`` (worker/fetchers/decode.py) on real HTTP from a local site on 127.0.0.1: the body
as received next to the decoded one, aiohttp's per-request ``auto_decompress=False``, the
response's raw headers as the server sent them (a WARC record is written from them), and the cap
on raw and decoded bytes."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import brotli
import pytest
from aiohttp import web
from multidict import CIMultiDict

from harvester_ops.embedded import free_port
from tests.servers import serve
from worker.fetchers.decode import BodyTooLarge, DecodeError, read_raw

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MiB = 1 << 20
PLAIN = b"".join(b"<li><a href='/item/%d'>item %d</a></li>\n" % (i, i) for i in range(5000))
GZ = gzip.compress(PLAIN)
MIXED = [("X-Mixed-Case", "one"), ("Content-Encoding", "gzip"), ("x-MIXED-case", "two"),
         ("Set-Cookie", "a=1"), ("set-cookie", "b=2")]


async def gzipped(request: web.Request) -> web.StreamResponse:
    return web.Response(body=GZ, headers=CIMultiDict(MIXED), content_type="text/html")


async def chunked_stack(request: web.Request) -> web.StreamResponse:
    """gzip then br, said in two header lines; sent chunked, in pieces, without a length."""
    resp = web.StreamResponse(headers=CIMultiDict([("Content-Encoding", "gzip"),
                                                   ("content-encoding", "br")]))
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    body = brotli.compress(GZ)
    for i in range(0, len(body), 1000):
        await resp.write(body[i:i + 1000])
    await resp.write_eof()
    return resp


async def plain(request: web.Request) -> web.StreamResponse:
    return web.Response(body=PLAIN, content_type="text/html")


async def big_chunked(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse()
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    for _ in range(2 * MiB // 65536 + 1):
        await resp.write(bytes(65536))
    await resp.write_eof()
    return resp


async def bomb(request: web.Request) -> web.StreamResponse:
    return web.Response(body=gzip.compress(bytes(64 * MiB)), headers={"Content-Encoding": "gzip"})


async def corrupt(request: web.Request) -> web.StreamResponse:
    body = bytearray(GZ)
    body[len(body) // 2:len(body) // 2 + 16] = bytes(16)
    return web.Response(body=bytes(body), headers={"Content-Encoding": "gzip"})


async def raw_deflate(request: web.Request) -> web.StreamResponse:
    c = zlib.compressobj(wbits=-15)
    return web.Response(body=c.compress(PLAIN) + c.flush(), headers={"Content-Encoding": "deflate"})


PATHS: dict[str, Handler] = {"/gzipped": gzipped, "/chunked-stack": chunked_stack, "/plain": plain,
                             "/big-chunked": big_chunked, "/bomb": bomb, "/corrupt": corrupt,
                             "/raw-deflate": raw_deflate}


@pytest.fixture
async def base() -> AsyncIterator[str]:
    async def route(request: web.Request) -> web.StreamResponse:
        return await PATHS[request.path](request)

    runner, url = await serve(route)
    yield url
    await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    # decompressing by default, like the fetcher's session: the request turns it off
    async with aiohttp.ClientSession(headers={"Accept-Encoding": "gzip, deflate, br"}) as s:
        yield s


async def fetch_raw(session: aiohttp.ClientSession, url: str, cap: int = MiB
                    ) -> tuple[aiohttp.ClientResponse, bytes, bytes]:
    async with session.get(url, auto_decompress=False) as resp:
        raw, body = await read_raw(resp, cap)
        return resp, raw, body


async def test_the_body_is_kept_as_sent_and_decoded(base: str,
                                                    session: aiohttp.ClientSession) -> None:
    resp, raw, body = await fetch_raw(session, base + "/gzipped")
    assert raw == GZ and body == PLAIN
    sent = {name.lower().encode() for name, _ in MIXED}
    kept = [(k, v) for k, v in resp.raw_headers if k.lower() in sent]
    assert kept == [(k.encode(), v.encode()) for k, v in MIXED]  # the server's case and order
    names = [k for k, _ in resp.raw_headers]
    assert b"Content-Length" in names and b"Date" in names


async def test_auto_decompress_false_is_per_request(base: str,
                                                    session: aiohttp.ClientSession) -> None:
    async with session.get(base + "/gzipped") as resp:
        assert await resp.read() == PLAIN  # the session's default: aiohttp decodes
    async with session.get(base + "/gzipped", auto_decompress=False) as resp:
        assert await resp.read() == GZ


async def test_chunking_is_removed_and_stacked_header_lines_decoded(
        base: str, session: aiohttp.ClientSession) -> None:
    resp, raw, body = await fetch_raw(session, base + "/chunked-stack")
    assert resp.headers["Transfer-Encoding"] == "chunked"
    assert raw == brotli.compress(GZ) and body == PLAIN


async def test_raw_deflate_is_accepted(base: str, session: aiohttp.ClientSession) -> None:
    _, _, body = await fetch_raw(session, base + "/raw-deflate")
    assert body == PLAIN


async def test_an_unencoded_body_is_one_object(base: str, session: aiohttp.ClientSession) -> None:
    _, raw, body = await fetch_raw(session, base + "/plain")
    assert body == PLAIN and raw is body


async def test_the_raw_body_is_capped(base: str, session: aiohttp.ClientSession) -> None:
    with pytest.raises(BodyTooLarge, match=f"body of {len(PLAIN)} bytes exceeds the 1000-byte"):
        await fetch_raw(session, base + "/plain", cap=1000)  # said by Content-Length
    with pytest.raises(BodyTooLarge, match=f"^body exceeds the {MiB}-byte limit$"):
        await fetch_raw(session, base + "/big-chunked")


async def test_a_bomb_stops_at_the_cap(base: str, session: aiohttp.ClientSession) -> None:
    with pytest.raises(BodyTooLarge, match=f"^body exceeds the {MiB}-byte limit$"):
        await fetch_raw(session, base + "/bomb")


async def test_a_corrupt_body_raises_decode_error(base: str,
                                                  session: aiohttp.ClientSession) -> None:
    with pytest.raises(DecodeError, match="Content-Encoding gzip"):
        await fetch_raw(session, base + "/corrupt")


async def test_raw_headers_keep_names_and_values_but_not_spacing() -> None:
    """What aiohttp keeps of a header block sent byte for byte: names' case, order, repeats and
    values; not the spaces around a value (RFC 9112 5: they are not part of it)."""
    head = (b"HTTP/1.1 200 OK\r\nContent-Encoding:gzip\r\nX-Odd:   padded  \r\n"
            b"x-odd: again\r\nContent-Length: %d\r\n\r\n" % len(GZ))

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(head + GZ)
        await writer.drain()
        writer.close()

    port = free_port("127.0.0.1")
    server = await asyncio.start_server(answer, "127.0.0.1", port)
    try:
        async with aiohttp.ClientSession() as s:
            resp, raw, body = await fetch_raw(s, f"http://127.0.0.1:{port}/")
    finally:
        server.close()
        await server.wait_closed()
    assert (raw, body) == (GZ, PLAIN)
    assert resp.raw_headers == ((b"Content-Encoding", b"gzip"), (b"X-Odd", b"padded"),
                                (b"x-odd", b"again"), (b"Content-Length", b"%d" % len(GZ)))
