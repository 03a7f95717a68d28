"""The browser's SSRF guard (issue 17): a SOCKS5 relay Chromium sends every connection through.

Playwright's route sees a page's requests, but not its redirects, nor the address a name
resolves to when Chromium connects (DNS rebinding), and a routed check per sub-resource would
cost a round trip each. So the browser is launched with ``socks5://127.0.0.1:<port>`` of a
``SocksGuard`` as its proxy (loopback included: ``<-loopback>``): Chromium resolves nothing
itself and sends each connection's host name and port here, and the relay connects through
``NetGuard.open_connection`` (resolved, filtered and connected through the guard's socket
factory, as the http fetcher's connector does). A refused address answers reply 0x02
("connection not allowed by ruleset") and records ``refused[(host, port)] = reason``; another failure
answers its SOCKS code and records Chromium's name for it (``errors[(host, port)]``), since Chromium
reports every SOCKS failure as ``net::ERR_SOCKS_CONNECTION_FAILED``. The fetcher reads both
when a navigation fails (``BrowserFetcher._error_page``).

RFC 1928, the part Chromium uses: no authentication, CONNECT only (BIND and UDP ASSOCIATE are
refused: 0x07), IPv4, IPv6 and domain addresses. Bound to 127.0.0.1 on a free port; the
greeting and request must arrive within ``handshake_timeout``; at most ``max_clients``
connections at once (more are closed at once); both records keep the newest ``RECORDS``
hosts. Each connection costs one accept and two pipe tasks; there is no per-request cost
beyond the relay (Chromium keeps connections alive). See docs/browser.md."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import struct
from collections import OrderedDict
from contextlib import suppress
from typing import Self

from shared.netguard import AddressBlocked, NetGuard, parse_ip

log = logging.getLogger(__name__)

HANDSHAKE = 5.0       # seconds for the greeting and the request
MAX_CLIENTS = 512     # connections at once (Chromium keeps ≤ 32 per proxy, plus websockets)
RECORDS = 1024        # hosts remembered in ``refused`` and ``errors``
BUFFER = 64 * 1024

VERSION = 5
NO_AUTH, NO_METHOD = 0x00, 0xFF
CONNECT = 0x01
IPV4, DOMAIN, IPV6 = 0x01, 0x03, 0x04
# Replies (RFC 1928 §6)
SUCCEEDED, FAILURE, NOT_ALLOWED, NET_UNREACHABLE, HOST_UNREACHABLE = 0x00, 0x01, 0x02, 0x03, 0x04
CONN_REFUSED, CMD_UNSUPPORTED, ATYP_UNSUPPORTED = 0x05, 0x07, 0x08


def endpoint(host: str, port: int) -> tuple[str, int]:
    """The key a connection's failure is recorded under: the host in lower case without a
    trailing dot, an IP address in its canonical form (a URL's ``[::1]`` and a SOCKS
    request's ``::1`` meet), and the port."""
    ip = parse_ip(host)
    return (str(ip) if ip is not None else host.lower().rstrip("."), port)


def _failure(e: BaseException) -> tuple[int, str]:
    """A failed connection's SOCKS reply and the name Chromium gives that failure without a
    proxy."""
    if isinstance(e, TimeoutError):
        return HOST_UNREACHABLE, "net::ERR_CONNECTION_TIMED_OUT"
    if isinstance(e, socket.gaierror):
        return HOST_UNREACHABLE, "net::ERR_NAME_NOT_RESOLVED"
    if isinstance(e, OSError):
        if e.errno == errno.ECONNREFUSED:
            return CONN_REFUSED, "net::ERR_CONNECTION_REFUSED"
        if e.errno == errno.ENETUNREACH:
            return NET_UNREACHABLE, "net::ERR_ADDRESS_UNREACHABLE"
        if e.errno == errno.EHOSTUNREACH:
            return HOST_UNREACHABLE, "net::ERR_ADDRESS_UNREACHABLE"
        if e.errno == errno.ETIMEDOUT:
            return HOST_UNREACHABLE, "net::ERR_CONNECTION_TIMED_OUT"
    return FAILURE, "net::ERR_CONNECTION_FAILED"


def _remember(records: OrderedDict[tuple[str, int], str], key: tuple[str, int],
              why: str) -> None:
    records[key] = why
    records.move_to_end(key)
    if len(records) > RECORDS:
        records.popitem(last=False)


class SocksGuard:
    """The relay: ``async with SocksGuard(guard, connect_timeout) as relay``, then
    ``relay.port``; ``failure(host, port)`` says why the last connection there failed."""

    def __init__(self, guard: NetGuard, connect_timeout: float, *,
                 handshake_timeout: float = HANDSHAKE, max_clients: int = MAX_CLIENTS) -> None:
        self.guard = guard
        self.connect_timeout = connect_timeout
        self.handshake_timeout = handshake_timeout
        self.max_clients = max_clients
        self.port = 0
        # (host, port) -> why its last connection failed: the guard's "blocked: ..." reason,
        # or the name Chromium gives the failure without a proxy ("net::ERR_...")
        self.refused: OrderedDict[tuple[str, int], str] = OrderedDict()
        self.errors: OrderedDict[tuple[str, int], str] = OrderedDict()
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()
        self._closing = False

    @property
    def server(self) -> str:
        """The proxy, as Chromium's ``--proxy-server`` takes it."""
        return f"socks5://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0,
                                                  limit=BUFFER, backlog=128)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing = True
        if self._server is not None:
            self._server.close()
        for task in list(self._clients):
            task.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)
        if self._server is not None:
            with suppress(Exception):
                await self._server.wait_closed()
        self._server = None

    def failure(self, host: str, port: int) -> str | None:
        """Why the last connection to ``host:port`` failed (the guard's ``blocked: ...``
        reason, or Chromium's name of the failure), None if it did not (or is forgotten)."""
        key = endpoint(host, port)
        return self.refused.get(key) or self.errors.get(key)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None or len(self._clients) >= self.max_clients:
            writer.close()
            return
        self._clients.add(task)
        upstream: asyncio.StreamWriter | None = None
        try:
            try:
                async with asyncio.timeout(self.handshake_timeout):
                    target = await self._handshake(reader, writer)
            except (TimeoutError, asyncio.IncompleteReadError, ValueError, OSError):
                return  # slow, cut short or malformed: closed without a word
            if target is None:
                return
            host, port = target
            key = endpoint(host, port)
            try:
                async with asyncio.timeout(self.connect_timeout):
                    up_reader, upstream = await self.guard.open_connection(host, port)
            except AddressBlocked as e:
                _remember(self.refused, key, e.reason)
                await _reply(writer, NOT_ALLOWED)
                return
            except (OSError, TimeoutError) as e:
                code, name = _failure(e)
                _remember(self.errors, key, name)
                await _reply(writer, code)
                return
            if self.refused:
                self.refused.pop(key, None)
            if self.errors:
                self.errors.pop(key, None)
            await _reply(writer, SUCCEEDED)
            await asyncio.gather(_pipe(reader, upstream, writer, False),
                                 _pipe(up_reader, writer, upstream, True))
        except (OSError, asyncio.IncompleteReadError):
            pass  # either side gone
        except asyncio.CancelledError:
            if not self._closing:
                raise
            # cancelled by __aexit__: ended here (asyncio's server would log it otherwise)
        finally:
            self._clients.discard(task)
            for w in (writer, upstream):
                if w is not None:
                    w.close()

    async def _handshake(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> tuple[str, int] | None:
        """The greeting and the CONNECT request: (host, port), or None once refused."""
        version, count = await reader.readexactly(2)
        if version != VERSION:
            raise ValueError("not SOCKS5")
        methods = await reader.readexactly(count)
        if NO_AUTH not in methods:
            writer.write(bytes((VERSION, NO_METHOD)))
            await writer.drain()
            return None
        writer.write(bytes((VERSION, NO_AUTH)))
        await writer.drain()
        version, command, _, kind = await reader.readexactly(4)
        if version != VERSION:
            raise ValueError("not SOCKS5")
        if kind == IPV4:
            host = str(ipaddress.IPv4Address(await reader.readexactly(4)))
        elif kind == IPV6:
            host = str(ipaddress.IPv6Address(await reader.readexactly(16)))
        elif kind == DOMAIN:
            (length,) = await reader.readexactly(1)
            host = (await reader.readexactly(length)).decode("ascii")  # IDNA: ASCII already
        else:
            await _reply(writer, ATYP_UNSUPPORTED)
            return None
        (port,) = struct.unpack("!H", await reader.readexactly(2))
        if command != CONNECT:  # BIND, UDP ASSOCIATE: nothing a page needs
            await _reply(writer, CMD_UNSUPPORTED)
            return None
        return host, port


async def _reply(writer: asyncio.StreamWriter, code: int) -> None:
    # BND.ADDR and BND.PORT zero: Chromium does not use them.
    writer.write(bytes((VERSION, code, 0, IPV4, 0, 0, 0, 0, 0, 0)))
    await writer.drain()


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                own: asyncio.StreamWriter, half_close: bool) -> None:
    """Copy ``src`` to ``dst`` until its end: passed on as a half close (``half_close``: the
    server's end, Chromium closes its side on it) or closing both (Chromium's end: it never
    half-closes, and a server may not close on one). On an error both are closed (``own`` is
    ``src``'s connection), which ends the other direction too."""
    try:
        while data := await src.read(BUFFER):
            dst.write(data)
            await dst.drain()
        if half_close and dst.can_write_eof() and not dst.is_closing():
            dst.write_eof()
            return
    except OSError:
        pass
    dst.close()
    own.close()
